"""GET /reports/<report_id>/changes on each store: the stores whose downtime_last_day rose or fell most from
a base report (by default the previous Complete one), the stores new and gone, with exact values, orders,
ties, limits and counts; and the 400s, 404s and 409s around it."""

from __future__ import annotations

import pandas as pd
import pytest

import utils
from report_csv import report_csv_bytes
from tests.conftest import force_report_state, wait_for_report
from tests.test_paging import upload_extra_stores

AS_OF_US = utils.datetime_to_us(pd.Timestamp("2023-01-24T13:00:00Z").to_pydatetime())
OLDEST, BASE, REPORT = "0" * 32, "1" * 32, "2" * 32  # made in this order (ids in the same order, for ties)

# downtime_last_day of each store in the base report and in the report
BASE_DOWNTIME = {
    "s1": 1.0,
    "s2": 2.0,
    "s3": 0.5,
    "s4": 3.0,
    "s5": 1.1,
    "t1": 0.0,
    "t2": 0.0,
    "f1": 2.0,
    "-5": 0.7,  # a formula-like id: its CSV cell is "'-5"
    "g1": 4.0,
    "g2": 4.0,
    "g3": 1.0,
}
REPORT_DOWNTIME = {
    "s1": 2.5,  # +1.5
    "s2": 1.0,  # -1.0
    "s3": 0.5,  # unchanged
    "s4": 0.0,  # -3.0
    "s5": 1.2,  # 1.2 - 1.1 = 0.09999999999999987: +0.1
    "t1": 1.5,  # +1.5, a tie with s1
    "t2": 1.5,  # +1.5
    "f1": 1.0,  # -1.0, a tie with s2
    "-5": 0.3,  # 0.3 - 0.7 = -0.39999999999999997: -0.4
    "n1": 5.0,
    "n2": 0.0,
    "n3": 5.0,
}
ROSE = [
    {"store_id": "s1", "downtime_last_day": 2.5, "base_downtime_last_day": 1.0, "change": 1.5},
    {"store_id": "t1", "downtime_last_day": 1.5, "base_downtime_last_day": 0.0, "change": 1.5},
    {"store_id": "t2", "downtime_last_day": 1.5, "base_downtime_last_day": 0.0, "change": 1.5},
    {"store_id": "s5", "downtime_last_day": 1.2, "base_downtime_last_day": 1.1, "change": 0.1},
]
FELL = [
    {"store_id": "s4", "downtime_last_day": 0.0, "base_downtime_last_day": 3.0, "change": -3.0},
    {"store_id": "f1", "downtime_last_day": 1.0, "base_downtime_last_day": 2.0, "change": -1.0},
    {"store_id": "s2", "downtime_last_day": 1.0, "base_downtime_last_day": 2.0, "change": -1.0},
    {"store_id": "-5", "downtime_last_day": 0.3, "base_downtime_last_day": 0.7, "change": -0.4},
]
NEW = [
    {"store_id": "n1", "downtime_last_day": 5.0},
    {"store_id": "n3", "downtime_last_day": 5.0},
    {"store_id": "n2", "downtime_last_day": 0.0},
]
GONE = [
    {"store_id": "g1", "base_downtime_last_day": 4.0},
    {"store_id": "g2", "base_downtime_last_day": 4.0},
    {"store_id": "g3", "base_downtime_last_day": 1.0},
]
COUNTS = {"rose": 4, "fell": 4, "unchanged": 1, "new": 3, "gone": 3}


def report_payload(downtime: dict[str, float]) -> bytes:
    """A report CSV whose downtime_last_day is `downtime`; the other figures are filler."""
    store_ids = sorted(downtime)
    frame = {"store_id": store_ids}
    for column in utils.REPORT_COLUMNS[1:]:
        frame[column] = [downtime[s] if column == "downtime_last_day" else 1.25 for s in store_ids]
    return report_csv_bytes(pd.DataFrame(frame, columns=utils.REPORT_COLUMNS))


def store_report(store, report_id: str, downtime: dict[str, float], as_of_us: int = AS_OF_US) -> None:
    payload = report_payload(downtime)
    store.create_report(report_id, as_of_us)
    store.update_report(report_id, as_of_us=as_of_us)
    assert store.complete_report(report_id, payload, len(downtime))


@pytest.fixture
def made(store) -> None:
    """Three Complete reports made through the store contract: OLDEST, BASE, then REPORT."""
    store_report(store, OLDEST, {"s1": 9.0, "old": 1.0}, AS_OF_US - 7_200_000_000)
    store_report(store, BASE, BASE_DOWNTIME, AS_OF_US - 3_600_000_000)
    store_report(store, REPORT, REPORT_DOWNTIME)


def changes(client, report_id: str, query: str = ""):
    return client.get(f"/reports/{report_id}/changes" + (f"?{query}" if query else ""))


def test_changes_from_the_previous_report(client, made):
    response = changes(client, REPORT)
    assert response.status_code == 200
    assert response.get_json() == {
        "report_id": REPORT,
        "base_report_id": BASE,
        "as_of": "2023-01-24T13:00:00Z",
        "base_as_of": "2023-01-24T12:00:00Z",
        "rose": ROSE,
        "fell": FELL,
        "new": NEW,
        "gone": GONE,
        "counts": COUNTS,
    }
    assert list(response.get_json()) == [
        "report_id",
        "base_report_id",
        "as_of",
        "base_as_of",
        "rose",
        "fell",
        "new",
        "gone",
        "counts",
    ]


def test_an_explicit_base_is_the_same_as_the_default(client, made):
    assert changes(client, REPORT, f"base={BASE}").get_json() == changes(client, REPORT).get_json()


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 1000])
def test_limit_cuts_each_list_but_not_the_counts(client, made, limit):
    body = changes(client, REPORT, f"limit={limit}").get_json()
    assert (body["rose"], body["fell"], body["new"], body["gone"]) == (
        ROSE[:limit],
        FELL[:limit],
        NEW[:limit],
        GONE[:limit],
    )
    assert body["counts"] == COUNTS


def test_the_other_way_round_swaps_rose_and_fell_and_new_and_gone(client, made):
    body = changes(client, BASE, f"base={REPORT}").get_json()
    assert (body["report_id"], body["base_report_id"]) == (BASE, REPORT)

    def swapped(row):
        return {
            "store_id": row["store_id"],
            "downtime_last_day": row["base_downtime_last_day"],
            "base_downtime_last_day": row["downtime_last_day"],
            "change": -row["change"],
        }

    assert body["rose"] == [swapped(row) for row in sorted(FELL, key=lambda row: (row["change"], row["store_id"]))]
    assert body["fell"] == [swapped(row) for row in sorted(ROSE, key=lambda row: (-row["change"], row["store_id"]))]
    assert body["new"] == [{"store_id": r["store_id"], "downtime_last_day": r["base_downtime_last_day"]} for r in GONE]
    assert body["gone"] == [{"store_id": r["store_id"], "base_downtime_last_day": r["downtime_last_day"]} for r in NEW]
    assert body["counts"] == COUNTS  # four rose and four fell, three new and three gone: the same counts


def test_the_default_base_skips_reports_that_are_not_complete(client, store, made):
    force_report_state(store, BASE, status="Failed", error="boom")
    body = changes(client, REPORT).get_json()
    assert body["base_report_id"] == OLDEST
    assert body["rose"] == []
    assert body["fell"] == [{"store_id": "s1", "downtime_last_day": 2.5, "base_downtime_last_day": 9.0, "change": -6.5}]
    assert body["gone"] == [{"store_id": "old", "base_downtime_last_day": 1.0}]
    assert body["counts"] == {"rose": 0, "fell": 1, "unchanged": 0, "new": len(REPORT_DOWNTIME) - 1, "gone": 1}


def test_a_report_against_itself_is_all_unchanged(client, made):
    body = changes(client, REPORT, f"base={REPORT}").get_json()
    assert (body["rose"], body["fell"], body["new"], body["gone"]) == ([], [], [], [])
    assert body["counts"] == {"rose": 0, "fell": 0, "unchanged": len(REPORT_DOWNTIME), "new": 0, "gone": 0}


def test_the_first_report_has_no_previous_one(client, made):
    response = changes(client, OLDEST)
    assert response.status_code == 404
    assert response.get_json() == {
        "error": f"no Complete report was made before report {OLDEST}, so there is nothing to compare it with: "
        "give base=<id of a Complete report>",
        "status": 404,
    }
    assert changes(client, OLDEST, f"base={REPORT}").status_code == 200  # a later base is fine


def test_changes_of_reports_the_service_computed(client):
    """Two reports of the tiny data and the extra stores (12:45, then 13:00): worked out from their JSON."""
    upload_extra_stores(client)
    bodies = []
    for as_of in ("2023-01-24T12:45:00Z", "2023-01-24T13:00:00Z"):
        report_id = client.post("/trigger_report", json={"as_of": as_of}).get_json()["report_id"]
        bodies.append(wait_for_report(client, report_id))
    base, report = ({row["store_id"]: row["downtime_last_day"] for row in body["data"]} for body in bodies)
    both = sorted(report.keys() & base.keys())
    change = {store_id: round(report[store_id] - base[store_id], 2) for store_id in both}
    rose = sorted((s for s in both if change[s] > 0), key=lambda s: (-change[s], s))
    fell = sorted((s for s in both if change[s] < 0), key=lambda s: (change[s], s))
    new = sorted(report.keys() - base.keys(), key=lambda s: (-report[s], s))
    gone = sorted(base.keys() - report.keys(), key=lambda s: (-base[s], s))
    assert rose and new  # "allday" went down at 12:50; "late" first polled at 13:00

    body = changes(client, bodies[1]["report_id"]).get_json()
    assert body == {
        "report_id": bodies[1]["report_id"],
        "base_report_id": bodies[0]["report_id"],
        "as_of": "2023-01-24T13:00:00Z",
        "base_as_of": "2023-01-24T12:45:00Z",
        "rose": [
            {"store_id": s, "downtime_last_day": report[s], "base_downtime_last_day": base[s], "change": change[s]}
            for s in rose
        ],
        "fell": [
            {"store_id": s, "downtime_last_day": report[s], "base_downtime_last_day": base[s], "change": change[s]}
            for s in fell
        ],
        "new": [{"store_id": s, "downtime_last_day": report[s]} for s in new],
        "gone": [{"store_id": s, "base_downtime_last_day": base[s]} for s in gone],
        "counts": {
            "rose": len(rose),
            "fell": len(fell),
            "unchanged": len(both) - len(rose) - len(fell),
            "new": len(new),
            "gone": len(gone),
        },
    }


# --------------------------------------------------------------------------- errors


def test_a_report_or_base_not_complete_is_409(client, store, made):
    force_report_state(store, REPORT, status="Running", heartbeat_age=0, progress={"done": 1, "total": 9})
    response = changes(client, REPORT)
    assert response.status_code == 409
    assert response.get_json() == {
        "error": f"report {REPORT} is still Running (1 of 9 stores): compare it once it is Complete",
        "status": 409,
    }
    force_report_state(store, BASE, status="Failed", error="boom")
    response = changes(client, OLDEST, f"base={BASE}")
    assert response.status_code == 409
    assert response.get_json() == {
        "error": f"base report {BASE} Failed (boom), so it has no rows to compare",
        "status": 409,
    }


@pytest.mark.parametrize(
    ("report_id", "query", "status", "error"),
    [
        ("f" * 32, "", 404, "no report with id " + "f" * 32),
        (REPORT, "base=" + "f" * 32, 404, "no report with id " + "f" * 32),
        ("F" * 32, "", 400, "malformed report_id: expected 32 lowercase hex characters"),
        ("nope", "", 400, "malformed report_id: expected 32 lowercase hex characters"),
        (REPORT, "base=nope", 400, "malformed base: expected 32 lowercase hex characters"),
        (REPORT, "base=", 400, "malformed base: expected 32 lowercase hex characters"),
        (REPORT, f"base={BASE}&base={OLDEST}", 400, "give base at most once"),
        (REPORT, "limit=0", 400, "limit must be a whole number from 1 to 1000"),
        (REPORT, "limit=1001", 400, "limit must be a whole number from 1 to 1000"),
        (REPORT, "limit=x", 400, "limit must be a whole number from 1 to 1000"),
        (REPORT, "limit=1&limit=1", 400, "give limit at most once"),
        (
            REPORT,
            "since=2023-01-24",
            400,
            f"unknown query parameter(s) since on /reports/{REPORT}/changes; this call takes: base, limit",
        ),
    ],
)
def test_bad_requests(client, made, report_id, query, status, error):
    response = changes(client, report_id, query)
    assert response.status_code == status
    assert response.get_json() == {"error": error, "status": status}


def test_changes_need_the_token(locked_client):
    assert locked_client.get(f"/reports/{REPORT}/changes").status_code == 401
    answer = locked_client.get(f"/reports/{REPORT}/changes", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 404


# --------------------------------------------------------------------------- the description


def test_answers_keep_to_the_openapi_description(app, client, store, made):
    """The answers generated requests rarely reach (points, changes, a deletion, a 409), against openapi.json:
    status, content type, headers and body schema, as tests/test_openapi.py checks them."""
    import schemathesis

    from tests.test_openapi import CONFORMANCE

    described = schemathesis.openapi.from_wsgi("/openapi.json", app)

    def check(path: str, method: str, expected: int, **case):
        operation = described[path][method]
        response = operation.Case(**case).call()
        operation.Case(**case).validate_response(response, checks=CONFORMANCE)
        assert response.status_code == expected, response.text
        return response.json()

    history = "/stores/{store_id}/history"
    assert len(check(history, "GET", 200, path_parameters={"store_id": "s1"})["points"]) == 3
    assert check(history, "GET", 200, path_parameters={"store_id": "-5"}, query={"limit": 1})["points"]
    assert check(history, "GET", 400, path_parameters={"store_id": "a b"})["status"] == 400
    changes_path = "/reports/{report_id}/changes"
    assert check(changes_path, "GET", 200, path_parameters={"report_id": REPORT})["counts"] == COUNTS
    check(changes_path, "GET", 200, path_parameters={"report_id": OLDEST}, query={"base": REPORT, "limit": 1})
    check(changes_path, "GET", 404, path_parameters={"report_id": OLDEST})
    force_report_state(store, BASE, status="Running", heartbeat_age=0)
    check(changes_path, "GET", 409, path_parameters={"report_id": REPORT}, query={"base": BASE})
    delete = "/reports/{report_id}"
    check(delete, "DELETE", 409, path_parameters={"report_id": BASE})
    assert check(delete, "DELETE", 200, path_parameters={"report_id": REPORT})["status"] == "Complete"
    check(delete, "DELETE", 404, path_parameters={"report_id": REPORT})
