"""GET /stores/<store_id>/history on each store: one point per Complete report that has the store, newest
first, each equal to that store's row in GET /get_report of that report; since, until and limit; the 400s."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.conftest import force_report_state, wait_for_report
from tests.test_paging import ALL_STORE_IDS, upload_extra_stores

# The reports made, in this order: their as_of (None: the newest poll, 13:00).  At 12:00 only "worked" and
# the extra stores (polled at 12:00) have a poll; "allday" comes at 12:30 and "late" at 13:00.  The last two
# share 13:00, so the newer (created later) comes first.
AS_OFS = ["2023-01-24T12:00:00Z", "2023-01-24T12:45:00Z", "2023-01-24T13:00:00Z", None]
COLUMNS = [
    "uptime_last_hour",
    "uptime_last_day",
    "uptime_last_week",
    "downtime_last_hour",
    "downtime_last_day",
    "downtime_last_week",
]


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def reports(client) -> list[dict]:
    """The Complete reports of AS_OFS over the tiny data and the extra stores, oldest made first: each as
    GET /get_report answers it."""
    upload_extra_stores(client)
    made = []
    for as_of in AS_OFS:
        response = client.post("/trigger_report", json={"as_of": as_of} if as_of else {})
        body = wait_for_report(client, response.get_json()["report_id"])
        assert body["status"] == "Complete"
        made.append(body)
    assert {row["store_id"] for row in made[0]["data"]} == set(ALL_STORE_IDS) - {"allday", "late"}
    assert made[2]["as_of"] == made[3]["as_of"] == "2023-01-24T13:00:00Z"
    return made


def expected_points(reports: list[dict], store_id: str) -> list[dict]:
    """The store's points worked out from the reports' JSON: newest as_of first, then newest made."""
    ordered = sorted(enumerate(reports), key=lambda pair: (instant(pair[1]["as_of"]), pair[0]), reverse=True)
    return [
        {"report_id": report["report_id"], "as_of": report["as_of"], **{c: row[c] for c in COLUMNS}}
        for _, report in ordered
        for row in report["data"]
        if row["store_id"] == store_id
    ]


def history(client, store_id: str, query: str = ""):
    return client.get(f"/stores/{store_id}/history" + (f"?{query}" if query else ""))


@pytest.mark.parametrize("store_id", ALL_STORE_IDS)
def test_each_point_is_the_stores_row_in_that_report(client, reports, store_id):
    response = history(client, store_id)
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["store_id", "points"]
    assert body["store_id"] == store_id
    assert body["points"] == expected_points(reports, store_id)
    assert len(body["points"]) == {"allday": 3, "late": 2}.get(store_id, 4)


def test_the_order_is_newest_as_of_then_newest_made(client, reports):
    points = history(client, "worked").get_json()["points"]
    assert [point["report_id"] for point in points] == [reports[i]["report_id"] for i in (3, 2, 1, 0)]
    assert [point["as_of"] for point in points] == [
        "2023-01-24T13:00:00Z",
        "2023-01-24T13:00:00Z",
        "2023-01-24T12:45:00Z",
        "2023-01-24T12:00:00Z",
    ]


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        ("since=2023-01-24T12:45:00Z", {1, 2, 3}),  # inclusive
        ("since=2023-01-24T12:45:00.000001Z", {2, 3}),
        ("until=2023-01-24T12:45:00Z", {0, 1}),  # inclusive
        ("until=2023-01-24T12:44:59.999999Z", {0}),
        ("since=2023-01-24T12:00:00Z&until=2023-01-24T12:00:00Z", {0}),
        ("since=2023-01-24T12:01:00Z&until=2023-01-24T12:44:00Z", set()),
        ("since=2023-01-24T12:30:00%2B00:00&until=2023-01-24T14:00:00%2B01:00", {1, 2, 3}),  # offsets
        ("since=2023-01-24", {0, 1, 2, 3}),  # a date is its midnight UTC
        ("until=2023-01-24", set()),
        ("since=2023-01-25", set()),
    ],
)
def test_since_and_until_bound_the_reports_as_of(client, reports, query, kept):
    points = history(client, "worked", query).get_json()["points"]
    assert points == [
        point
        for point in expected_points(reports, "worked")
        if point["report_id"] in {reports[i]["report_id"] for i in kept}
    ]


@pytest.mark.parametrize(("limit", "count"), [(1, 1), (2, 2), (3, 3), (4, 4), (1000, 4)])
def test_limit_keeps_the_newest_points(client, reports, limit, count):
    points = history(client, "worked", f"limit={limit}").get_json()["points"]
    assert points == expected_points(reports, "worked")[:count]


def test_limit_with_bounds(client, reports):
    points = history(client, "worked", "until=2023-01-24T12:59:00Z&limit=1").get_json()["points"]
    assert points == [point for point in expected_points(reports, "worked") if point["as_of"] == "2023-01-24T12:45:00Z"]


def test_only_complete_reports_make_history(client, store, reports):
    force_report_state(store, reports[3]["report_id"], status="Failed", error="boom")
    force_report_state(store, reports[1]["report_id"], status="Running", heartbeat_age=0)
    points = history(client, "worked").get_json()["points"]
    assert points == [
        p
        for p in expected_points(reports, "worked")
        if p["report_id"] in {reports[0]["report_id"], reports[2]["report_id"]}
    ]


@pytest.mark.parametrize("store_id", ["nobody", "1114277559207252776", "a.b:c;d-e_f", "x" * 64])
def test_a_store_no_report_has_is_an_empty_history(client, reports, store_id):
    response = history(client, store_id)
    assert response.status_code == 200
    assert response.get_json() == {"store_id": store_id, "points": []}


def test_no_reports_at_all_is_an_empty_history(client):
    assert history(client, "worked").get_json() == {"store_id": "worked", "points": []}


@pytest.mark.parametrize(
    ("path_id", "shown"), [("a%20b", "a b"), ("x" * 65, "x" * 64), ("caf%C3%A9", "café"), ("a,b", "a,b")]
)
def test_an_id_no_store_can_have_is_400(client, path_id, shown):
    response = client.get(f"/stores/{path_id}/history")
    assert response.status_code == 400
    assert response.get_json() == {
        "error": f"{shown!r} cannot be a store id: store ids are 1 to 64 letters, digits and - _ . : ;",
        "status": 400,
    }


LIMIT_ERROR = "limit must be a whole number from 1 to 1000"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("limit=0", LIMIT_ERROR),
        ("limit=1001", LIMIT_ERROR),
        ("limit=", LIMIT_ERROR),
        ("limit=1.0", LIMIT_ERROR),
        ("limit=%C2%B2", LIMIT_ERROR),
        ("limit=1&limit=2", "give limit at most once"),
        ("since=2023-01-24&since=2023-01-25", "give since at most once"),
        ("until=a&until=b", "give until at most once"),
        (
            "since=2023-01-24T13:00:00Z&until=2023-01-24T12:00:00Z",
            "since is after until: no report could be in between",
        ),
        ("since=2023-02-30", None),
        ("until=yesterday", None),
        ("since=1969-12-31T23:59:59Z", None),
        (
            "from=2023-01-24",
            "unknown query parameter(s) from on /stores/worked/history; this call takes: limit, since, until",
        ),
        ("report_id=" + "a" * 32, None),
    ],
)
def test_bad_query_is_400(client, query, error):
    response = history(client, "worked", query)
    assert response.status_code == 400
    body = response.get_json()
    assert body["status"] == 400 and set(body) == {"error", "status"}
    if error is not None:
        assert body["error"] == error


def test_a_bad_instant_is_named(client):
    body = history(client, "worked", "until=yesterday").get_json()
    assert body["error"].startswith("until 'yesterday' is not an ISO 8601 instant")


def test_history_needs_the_token(locked_client):
    assert locked_client.get("/stores/worked/history").status_code == 401
    answer = locked_client.get("/stores/worked/history", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200 and answer.get_json() == {"store_id": "worked", "points": []}
