"""Paging a Complete report through GET /get_report (`limit`, `after`, `store_id`), on each store: every row
exactly once and in store_id order, `next`, one store's row (alone or paged), and the 400s and 404s around
them."""

from __future__ import annotations

import io

import pytest

import api
from tests.conftest import TINY_REPORT, force_report_state, wait_for_report

# Stores added to the tiny data set so that text order differs from number order ("10" < "9"), upper case
# sorts before "_" and lower case, and one id starts like a formula (the CSV holds it as "'-5").
EXTRA_STORES = ["10", "9", "-5", "Zed", "_under", "zz"]
ALL_STORE_IDS = sorted([row["store_id"] for row in TINY_REPORT] + EXTRA_STORES)


def upload_extra_stores(client) -> None:
    body = "store_id,status,timestamp_utc\n" + "".join(
        f"{store_id},active,2023-01-24 12:00:00 UTC\n" for store_id in EXTRA_STORES
    )
    data = {"store_status": (io.BytesIO(body.encode()), "store_status.csv")}
    assert client.post("/ingest", data=data, content_type="multipart/form-data").status_code == 200


@pytest.fixture
def report(client) -> dict:
    """A Complete report of the tiny data set and EXTRA_STORES: its JSON, unpaged."""
    upload_extra_stores(client)
    response = client.post("/trigger_report")
    assert response.status_code == 202
    body = wait_for_report(client, response.get_json()["report_id"])
    assert body["status"] == "Complete"
    assert [row["store_id"] for row in body["data"]] == ALL_STORE_IDS
    return body


def page(client, report_id: str, query: str):
    return client.get(f"/get_report?report_id={report_id}&{query}")


@pytest.mark.parametrize("limit", [1, 2, 3, len(ALL_STORE_IDS), len(ALL_STORE_IDS) + 1, 10_000])
def test_pages_give_every_row_once_in_order(client, report, limit):
    rows, after, pages = [], None, 0
    while True:
        query = f"limit={limit}" + ("" if after is None else f"&after={after}")
        response = page(client, report["report_id"], query)
        assert response.status_code == 200
        body = response.get_json()
        assert {key: body[key] for key in ("status", "report_id", "as_of", "row_count", "columns")} == {
            key: report[key] for key in ("status", "report_id", "as_of", "row_count", "columns")
        }
        assert len(body["data"]) <= limit
        rows += body["data"]
        pages += 1
        more = len(rows) < len(ALL_STORE_IDS)
        assert body["next"] == (body["data"][-1]["store_id"] if more else None)
        if body["next"] is None:
            break
        after = body["next"]
    assert rows == report["data"]
    assert pages == -(-len(ALL_STORE_IDS) // limit)


@pytest.mark.parametrize(
    ("query", "store_ids", "next_id"),
    [
        ("limit=2", ["-5", "10"], "10"),
        ("limit=2&after=10", ["9", "Zed"], "Zed"),
        ("limit=3&after=1", ["10", "9", "Zed"], "Zed"),  # after need not be a store of the report
        ("limit=1&after=worked", ["zz"], None),
        ("limit=5&after=late", ["worked", "zz"], None),
        ("limit=1&after=zz", [], None),
        ("limit=1&after=~", [], None),  # past the end
        ("limit=2&after=", ["-5", "10"], "10"),  # "" sorts before every id
        ("after=worked", ["zz"], None),  # limit is 10000 when only after is given
        ("after=-5", ALL_STORE_IDS[1:], None),
        ("limit=1&store_id=10", ["10"], None),  # store_id keeps one row, which then pages as any
        ("limit=1&after=1&store_id=10", ["10"], None),
        ("limit=1&after=10&store_id=10", [], None),
    ],
)
def test_page_rows_and_next(client, report, query, store_ids, next_id):
    body = page(client, report["report_id"], query).get_json()
    assert [row["store_id"] for row in body["data"]] == store_ids
    assert body["data"] == [row for row in report["data"] if row["store_id"] in store_ids]
    assert body["next"] == next_id


@pytest.mark.parametrize("store_id", ["allday", "-5", "10", "zz"])
def test_store_id_gives_its_one_row(client, report, store_id):
    response = page(client, report["report_id"], f"store_id={store_id}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["data"] == [row for row in report["data"] if row["store_id"] == store_id]
    assert "next" not in body
    assert body["row_count"] == len(ALL_STORE_IDS)


@pytest.mark.parametrize("store_id", ["nope", "'-5", "", "1"])
def test_store_id_the_report_lacks_is_404(client, report, store_id):
    response = page(client, report["report_id"], f"store_id={store_id}")
    assert response.status_code == 404
    assert response.get_json() == {
        "error": f"report {report['report_id']} has no store {store_id!r}",
        "status": 404,
    }


def test_store_id_the_report_lacks_is_404_when_paged_too(client, report):
    response = page(client, report["report_id"], "store_id=nope&limit=5&after=a")
    assert response.status_code == 404
    assert "has no store 'nope'" in response.get_json()["error"]


LIMIT_ERROR = "limit must be a whole number from 1 to 10000"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("limit=0", LIMIT_ERROR),
        ("limit=10001", LIMIT_ERROR),
        ("limit=-1", LIMIT_ERROR),
        ("limit=", LIMIT_ERROR),
        ("limit=two", LIMIT_ERROR),
        ("limit=1.5", LIMIT_ERROR),
        ("limit=%EF%BC%91", LIMIT_ERROR),  # a full-width digit one
        ("limit=1&limit=2", "give limit at most once"),
        ("limit=1&after=a&after=b", "give after at most once"),
        ("store_id=a&store_id=b", "give store_id at most once"),
        ("limit=1&format=csv", "paging is for the JSON answer; the CSV is the whole report"),
        ("store_id=10&format=CSV", "paging is for the JSON answer; the CSV is the whole report"),
        ("limit=1&after=10&format=csv", "paging is for the JSON answer; the CSV is the whole report"),
        ("after=10&format=csv", "paging is for the JSON answer; the CSV is the whole report"),
    ],
)
def test_bad_paging_is_400(client, report, query, error):
    response = page(client, report["report_id"], query)
    assert response.status_code == 400
    assert response.get_json() == {"error": error, "status": 400}


def test_a_page_is_json_whatever_the_accept_header(client, report):
    response = client.get(
        f"/get_report?report_id={report['report_id']}&limit=1&format=json", headers={"Accept": "text/csv"}
    )
    assert response.get_json()["data"] == report["data"][:1]
    response = client.get(f"/get_report?report_id={report['report_id']}&limit=1", headers={"Accept": "text/csv"})
    assert response.mimetype == "application/json"
    assert response.get_json()["next"] == report["data"][0]["store_id"]


@pytest.mark.parametrize("query", ["limit=1", "limit=2&after=10", "store_id=nope"])
@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"status": "Failed", "error": "boom"}, {"status": "Failed", "trigger": "api", "error": "boom"}),
        (
            {"status": "Running", "heartbeat_age": 0, "progress": {"done": 1, "total": 9, "phase": "computing"}},
            {"status": "Running", "trigger": "api", "phase": "computing", "progress": {"done": 1, "total": 9}},
        ),
    ],
)
def test_paging_a_report_not_complete_answers_its_state(client, store, report, query, state, expected):
    force_report_state(store, report["report_id"], **state)
    response = page(client, report["report_id"], query)
    assert response.status_code == 200
    assert response.get_json() == expected


@pytest.mark.parametrize("query", ["limit=1&format=csv", "store_id=10&format=csv"])
def test_paging_with_csv_is_400_in_every_state(client, store, report, query):
    force_report_state(store, report["report_id"], status="Failed", error="boom")
    assert page(client, report["report_id"], query).status_code == 400


def test_paging_an_unknown_report_is_404(client):
    assert page(client, "0" * 32, "limit=1").status_code == 404


def count_pieces_read(store, monkeypatch) -> list[int]:
    """The sizes of the pieces of stored CSV the app reads from now on (the store's own pieces, counted)."""
    read: list[int] = []
    real = store.iter_report_csv

    def counted(report, chunk_bytes=1 << 20):
        for piece in real(report, chunk_bytes):
            read.append(len(piece))
            yield piece

    monkeypatch.setattr(store, "iter_report_csv", counted)
    return read


@pytest.mark.parametrize(
    ("query", "rows_needed"),
    [("limit=1", 2), ("limit=2&after=-5", 4), ("store_id=-5", 1), ("store_id=10&limit=3", 2)],
)
def test_a_page_reads_the_csv_no_further_than_it_needs(client, store, report, monkeypatch, query, rows_needed):
    """Rows are read in order as pieces of the stored CSV: a page stops once it has its rows (and one more
    to know there is a next), so an early page of a big report reads a little of it."""
    payload = client.get(f"/get_report?report_id={report['report_id']}&format=csv").get_data()
    monkeypatch.setattr(api, "STREAM_PIECE_BYTES", 16)
    read = count_pieces_read(store, monkeypatch)
    body = page(client, report["report_id"], query).get_json()
    assert body["data"] and body["data"] == [row for row in report["data"] if row in body["data"]]
    lines = payload.split(b"\n")
    needed = sum(len(line) + 1 for line in lines[: 1 + rows_needed])  # the header and the rows looked at
    assert needed <= sum(read) < needed + 2 * 16
    assert sum(read) < len(payload)


def test_the_last_page_reads_the_whole_csv(client, store, report, monkeypatch):
    payload = client.get(f"/get_report?report_id={report['report_id']}&format=csv").get_data()
    monkeypatch.setattr(api, "STREAM_PIECE_BYTES", 16)
    read = count_pieces_read(store, monkeypatch)
    assert page(client, report["report_id"], "after=worked").get_json()["data"] == report["data"][-1:]
    assert sum(read) == len(payload) and max(read) == 16
