"""The unpaged GET /get_report of a Complete report is streamed: the CSV as the store's pieces, the JSON built
from them a few rows at a time, and both byte for byte what the whole answer was before (the JSON of
`jsonify` over pandas' reading of the whole CSV), on each store, for reports with tricky store ids and
figures, whatever the size of the pieces.  Memory is measured in benchmarks/bench_stream.py."""

from __future__ import annotations

import inspect
import io
import json
import uuid
from pathlib import Path

import pandas as pd
import pytest
from flask import jsonify

import api
import utils
from report_csv import report_csv_bytes, store_ids_from_csv
from tests.conftest import force_report_state, wait_for_report

AS_OF_US = utils.datetime_to_us(pd.Timestamp("2023-01-24T13:00:00Z").to_pydatetime())

# Store ids as the loader never lets in (commas, quotes, line ends, non-ASCII, empty), which make the CSV
# writer quote them, and ids a spreadsheet would take for a formula (written with a leading quote).
QUOTED_IDS = ["a,b", 'say "hi"', "line\nbreak", "cr\rid", "x\r\ny", "=1+2,3", "café ☕", "", " spaced "]
FORMULA_IDS = ["-5", "+1", "=SUM(A1)", "@x", "\ttab", "-", "10", "9", "plain"]
# figures that are not whole cents also make the writer use pandas (repr of each float)
ODD_FIGURES = [1 / 3, 0.1 + 0.2, 1e-7, 2.675, 60.0, 0.0, 123456.789, 5e-324, 1.2345678901234567e300]


def report_frame(store_ids: list[str], odd: bool) -> pd.DataFrame:
    """A report of `store_ids` (in code point order, as reports are): cent figures, or odd ones."""
    store_ids = sorted(store_ids)
    frame = {"store_id": store_ids}
    for offset, column in enumerate(utils.REPORT_COLUMNS[1:]):
        if odd:
            frame[column] = [ODD_FIGURES[(i + offset) % len(ODD_FIGURES)] for i in range(len(store_ids))]
        else:
            frame[column] = [round((i * 7 + offset * 3) % 6000 / 100, 2) for i in range(len(store_ids))]
    return pd.DataFrame(frame, columns=utils.REPORT_COLUMNS)


CSVS = {
    "formula ids, cents (pyarrow's writer)": report_csv_bytes(report_frame(FORMULA_IDS, odd=False)),
    "quoted ids, cents (pandas' writer)": report_csv_bytes(report_frame(QUOTED_IDS + FORMULA_IDS, odd=False)),
    "formula ids, odd figures": report_csv_bytes(report_frame(FORMULA_IDS, odd=True)),
    "quoted ids, odd figures": report_csv_bytes(report_frame(QUOTED_IDS, odd=True)),
    "no rows": report_csv_bytes(report_frame([], odd=False)),
}


def test_the_tricky_csvs_are_what_they_claim():
    """The cases reach both writers and every kind of quoting."""
    quoted = CSVS["quoted ids, cents (pandas' writer)"]
    assert b'"a,b"' in quoted and b'"say ""hi"""' in quoted and b'"line\nbreak"' in quoted
    assert b'"\'=1+2,3"' in quoted  # neutralised, then quoted
    assert b"'-5," in CSVS["formula ids, cents (pyarrow's writer)"]
    assert b"0.30000000000000004" in CSVS["formula ids, odd figures"]
    assert CSVS["no rows"].count(b"\n") == 1


def old_rows(payload: bytes) -> list[dict]:
    """The rows as GET /get_report read them before it streamed: pandas over the whole CSV."""
    rows = pd.read_csv(io.BytesIO(payload), dtype={"store_id": str}, keep_default_na=False)
    rows["store_id"] = store_ids_from_csv(rows["store_id"])
    return rows.to_dict("records")


def old_json(app, report_id: str, record: dict, payload: bytes) -> bytes:
    """The whole JSON answer, as GET /get_report built it before it streamed."""
    with app.test_request_context():
        return jsonify(api._complete_report_body(report_id, record, old_rows(payload))).get_data()


def compact_dumps(app):
    """JSON as jsonify writes it (compact)."""
    return lambda value: app.json.dumps(value, separators=(",", ":"))


def cut(payload: bytes, size: int) -> list[bytes]:
    return [payload[start : start + size] for start in range(0, len(payload), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("name", list(CSVS))
def test_rows_read_piece_by_piece_are_pandas_rows(name, size):
    payload = CSVS[name]
    rows = list(api.report_rows(cut(payload, size)))
    assert rows == old_rows(payload)
    assert [type(value) for row in rows for value in row.values()] == [str, *[float] * 6] * len(rows)


@pytest.mark.parametrize("rows_at_a_time", [1, 2, 256])
@pytest.mark.parametrize("size", [1, 5, 1 << 16])
@pytest.mark.parametrize("name", list(CSVS))
def test_json_made_piece_by_piece_is_the_whole_answer_byte_for_byte(app, monkeypatch, name, size, rows_at_a_time):
    monkeypatch.setattr(api, "STREAM_ROWS", rows_at_a_time)
    payload = CSVS[name]
    record = {"report_id": "a" * 32, "trigger": "api", "as_of_us": AS_OF_US, "row_count": payload.count(b"\n") - 1}
    with app.test_request_context():
        fields = api._complete_report_body("a" * 32, record, api.ROWS_MARK)
        pieces = api.report_json_pieces(compact_dumps(app), fields, cut(payload, size))
        assert inspect.isgenerator(pieces)
        streamed = b"".join(pieces)
    assert streamed == old_json(app, "a" * 32, record, payload)


@pytest.mark.parametrize("lines", [b"store_id,uptime_last_hour\nx,1.0\n", b"a,b,c,d,e,f,g\n"])
def test_a_csv_that_is_not_a_report_is_refused(lines):
    with pytest.raises(ValueError, match="not with the report's columns"):
        list(api.report_rows([lines]))


def test_a_row_of_the_wrong_width_is_refused():
    payload = CSVS["formula ids, cents (pyarrow's writer)"] + b"extra,1.0\n"
    with pytest.raises(ValueError, match="a line of 2 fields, not 7"):
        list(api.report_rows(cut(payload, 10)))


# --------------------------------------------------------------------------- through the API, on each store


def store_report(store, payload: bytes) -> str:
    """A Complete report holding `payload`, made through the store contract (the loader cannot make these ids)."""
    report_id = uuid.uuid4().hex
    store.create_report(report_id, AS_OF_US)
    store.update_report(report_id, as_of_us=AS_OF_US)
    assert store.complete_report(report_id, payload, payload.count(b"\n") - 1)
    return report_id


@pytest.mark.parametrize("size", [5, 1 << 16])
@pytest.mark.parametrize("name", list(CSVS))
def test_get_report_streams_the_same_json_and_csv(app, client, store, monkeypatch, name, size):
    monkeypatch.setattr(api, "STREAM_PIECE_BYTES", size)
    monkeypatch.setattr(api, "STREAM_ROWS", 2)
    payload = CSVS[name]
    report_id = store_report(store, payload)

    as_json = client.get(f"/get_report?report_id={report_id}", buffered=False)
    assert as_json.status_code == 200 and as_json.mimetype == "application/json"
    assert as_json.is_streamed
    body = as_json.get_data()
    assert body == old_json(app, report_id, store.find_report(report_id), payload)
    assert json.loads(body)["data"] == old_rows(payload)

    as_csv = client.get(f"/get_report?report_id={report_id}&format=csv", buffered=False)
    assert as_csv.status_code == 200 and as_csv.mimetype == "text/csv"
    assert as_csv.is_streamed
    assert as_csv.headers["Content-Length"] == str(len(payload))
    assert as_csv.headers["Content-Disposition"] == f'attachment; filename="report_{report_id}.csv"'
    assert as_csv.get_data() == payload


def test_the_answer_is_a_generator_of_the_stores_pieces(app, store, monkeypatch):
    """The view returns before anything but the first piece is read: the body is a generator."""
    monkeypatch.setattr(api, "STREAM_PIECE_BYTES", 16)
    payload = CSVS["quoted ids, cents (pandas' writer)"]
    report_id = store_report(store, payload)
    for query in ("", "&format=csv"):
        with app.test_request_context(f"/get_report?report_id={report_id}{query}"):
            response = app.full_dispatch_request()
            assert inspect.isgenerator(response.response)
            first = next(response.response)
            assert 0 < len(first) <= 16 if query else first.startswith(b'{"status":"Complete"')
            rest = b"".join(response.response)
        assert (first + rest) == (payload if query else old_json(app, report_id, store.find_report(report_id), payload))


def test_a_computed_report_streams_what_the_csv_holds(app, client):
    """A report the service computed: the streamed JSON is the old answer for its CSV."""
    report_id = client.post("/trigger_report").get_json()["report_id"]
    assert wait_for_report(client, report_id)["status"] == "Complete"
    payload = client.get(f"/get_report?report_id={report_id}&format=csv").get_data()
    assert payload == (Path(app.config["REPORTS_DIR"]) / f"report_{report_id}.csv").read_bytes()
    body = client.get(f"/get_report?report_id={report_id}").get_data()
    assert body == old_json(app, report_id, app.extensions["store"].find_report(report_id), payload)


def set_csv_bytes(store, report_id: str, csv_bytes: int) -> None:
    """Make the record say its CSV has `csv_bytes` bytes (a CSV stored in part looks like this)."""
    if store.kind == "sqlite":
        store._connection().execute("UPDATE reports SET csv_bytes = ? WHERE report_id = ?", (csv_bytes, report_id))
    else:
        store.db["reports"].update_one({"report_id": report_id}, {"$set": {"csv_bytes": csv_bytes}})


@pytest.mark.parametrize("query", ["", "&format=csv", "&limit=2&after=~"])
def test_a_stored_csv_of_the_wrong_length_is_never_a_whole_answer(client, store, query):
    """A store that finds it before the first piece: the one error body (500); one that finds it only after
    the last (counting the bytes sent): the answer is cut short, with an error, never ended as if whole.  (A
    page that stops reading before the end does not look that far: `after=~` makes it read every row.)"""
    payload = CSVS["formula ids, cents (pyarrow's writer)"]
    report_id = store_report(store, payload)
    set_csv_bytes(store, report_id, len(payload) + 1)
    response = client.get(f"/get_report?report_id={report_id}{query}")
    if response.status_code == 500:
        assert response.get_json() == {"error": "internal error; the details are in the server log", "status": 500}
        return
    assert response.status_code == 200 and response.is_streamed
    with pytest.raises(ValueError, match="stored CSV is incomplete"):
        response.get_data()


def test_a_report_failed_after_the_csv_was_stored_answers_its_state(client, store):
    report_id = store_report(store, CSVS["no rows"])
    force_report_state(store, report_id, status="Failed", error="boom")
    assert client.get(f"/get_report?report_id={report_id}").get_json() == {
        "status": "Failed",
        "trigger": "api",
        "error": "boom",
    }


# --------------------------------------------------------------------------- one row, found by the same reader


@pytest.mark.parametrize("store_id", ["-5", "=SUM(A1)", "a,b", "line\nbreak"])
def test_one_row_by_store_id_unquotes_formula_ids(client, store, store_id):
    payload = CSVS["quoted ids, cents (pandas' writer)"]
    report_id = store_report(store, payload)
    body = client.get("/get_report", query_string={"report_id": report_id, "store_id": store_id}).get_json()
    assert body["data"] == [row for row in old_rows(payload) if row["store_id"] == store_id]
    assert len(body["data"]) == 1


def test_the_timeline_of_a_formula_like_store_id(client):
    """The timeline finds a row by its store id as loaded, also one the CSV holds with a leading quote."""
    polls = b"store_id,status,timestamp_utc\n-5,active,2023-01-24 12:00:00 UTC\n"
    data = {"store_status": (io.BytesIO(polls), "s.csv")}
    assert client.post("/ingest", data=data, content_type="multipart/form-data").status_code == 200
    report_id = client.post("/trigger_report").get_json()["report_id"]
    report = wait_for_report(client, report_id)
    assert b"'-5," in client.get(f"/get_report?report_id={report_id}&format=csv").get_data()
    response = client.get(f"/stores/-5/timeline?report_id={report_id}")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["totals"] == next(row for row in report["data"] if row["store_id"] == "-5")
