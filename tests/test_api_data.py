"""The API's answers about the data itself, on each store: GET /data, DELETE /stores/<id>/polls, unknown
query parameters, reports refused on partial data, a now after the newest poll, dead reports shown dead
in every listing, the health check's truth, and the status codes of database faults (500, 503, 507)."""

from __future__ import annotations

import sqlite3

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

import database
from tests.conftest import force_report_state, polls_of, wait_for_report


def trigger(client, body=None) -> str:
    response = client.post("/trigger_report", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["report_id"]


# --------------------------------------------------------------------------- what is stored


def test_data_summarises_the_seeded_data_and_its_uploads(client, app):
    body = client.get("/data").get_json()
    assert {k: body[k] for k in ("stores", "polls", "hours_rows", "zones", "oldest_poll", "newest_poll")} == {
        "stores": 3,
        "polls": 5,
        "hours_rows": 1,
        "zones": 1,
        "oldest_poll": "2023-01-24T10:14:00Z",
        "newest_poll": "2023-01-24T13:00:00Z",
    }
    files = [upload["file"].rsplit("/", 1)[-1] for upload in body["uploads"]]
    assert files == ["timezones.csv", "menu_hours.csv", "store_status.csv"]  # newest first
    assert {upload["status"] for upload in body["uploads"]} == {"Complete"}
    assert body["uploads"][2]["loaded"] == 5 and body["uploads"][2]["rejected"] == 0


def test_an_upload_shows_in_data_at_once(client):
    upload = b"store_id,status,timestamp_utc\nnew,active,2023-01-24 13:30:00 UTC\n"
    import io

    response = client.post("/ingest", data={"store_status": (io.BytesIO(upload), "more.csv")})
    assert response.status_code == 200
    body = client.get("/data").get_json()
    assert body["uploads"][0]["file"] == "more.csv" and body["uploads"][0]["status"] == "Complete"
    assert (body["stores"], body["polls"], body["newest_poll"]) == (4, 6, "2023-01-24T13:30:00Z")


# --------------------------------------------------------------------------- removing polls


def test_delete_polls_removes_one_stores_polls_in_the_bounds(client, store):
    response = client.delete("/stores/worked/polls?since=2023-01-24T11:00:00Z&until=2023-01-24T11:15:00Z")
    assert response.status_code == 200
    assert response.get_json() == {"deleted": 1, "store_id": "worked"}
    assert list(polls_of(store, "worked")["timestamp_us"]) == [1674555240000000]
    assert client.delete("/stores/allday/polls").get_json()["deleted"] == 2
    assert client.get("/data").get_json()["polls"] == 2


def test_a_far_future_poll_can_be_removed_so_now_comes_back(client, store):
    import io

    poison = b"store_id,status,timestamp_utc\nworked,active,2023-01-25 00:00:00 UTC\n"
    client.post("/ingest", data={"store_status": (io.BytesIO(poison), "oops.csv")})
    assert client.get("/data").get_json()["newest_poll"] == "2023-01-25T00:00:00Z"
    assert client.delete("/stores/worked/polls?since=2023-01-24T23:00:00Z").get_json()["deleted"] == 1
    body = wait_for_report(client, trigger(client))
    assert body["as_of"] == "2023-01-24T13:00:00Z"


@pytest.mark.parametrize(
    "query, message",
    [
        ("since=yesterday", "since 'yesterday' is not an ISO 8601 instant"),
        ("since=2023-01-25&until=2023-01-24", "since is after until"),
        ("since=2023-01-24&since=2023-01-25", "give since at most once"),
        ("store=worked", "unknown query parameter(s) store"),
    ],
)
def test_delete_polls_refuses_bad_bounds_and_deletes_nothing(client, query, message):
    response = client.delete(f"/stores/worked/polls?{query}")
    assert response.status_code == 400 and message in response.get_json()["error"]
    assert client.get("/data").get_json()["polls"] == 5


def test_delete_polls_follows_the_token_and_same_origin_rules(app, client):
    assert client.delete("/stores/worked/polls", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    app.config["API_TOKEN"] = "s3cret"
    assert client.delete("/stores/worked/polls").status_code == 401
    ok = client.delete("/stores/worked/polls", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.get_json()["deleted"] == 2


# --------------------------------------------------------------------------- nothing silent


@pytest.mark.parametrize(
    "method, path, named",
    [
        ("get", "/get_report?report_id=" + "0" * 32 + "&limt=5", "limt"),
        ("get", "/reports?pages=2", "pages"),
        ("get", "/health?verbose=1", "verbose"),
        ("get", "/data?all=1", "all"),
        ("get", "/stores/worked/timeline?report_id=" + "0" * 32 + "&day=1", "day"),
        ("post", "/trigger_report?force=1", "force"),
    ],
)
def test_unknown_query_parameters_are_refused_by_name(client, method, path, named):
    response = getattr(client, method)(path)
    assert response.status_code == 400
    assert f"unknown query parameter(s) {named}" in response.get_json()["error"]


def test_as_of_in_the_query_string_is_refused_with_the_right_way(client, store):
    response = client.post("/trigger_report?as_of=2023-01-20")
    assert response.status_code == 400
    assert "as_of goes in the JSON body" in response.get_json()["error"]
    assert store.count_reports() == 0


def test_a_report_after_the_newest_poll_says_so_in_every_answer(client):
    later = wait_for_report(client, trigger(client, {"as_of": "2023-01-24T14:00:00Z"}))
    at_newest = wait_for_report(client, trigger(client))
    assert later["as_of_after_newest_poll"] is True and "as_of_after_newest_poll" not in at_newest
    listed = {row["report_id"]: row for row in client.get("/reports").get_json()["reports"]}
    assert listed[later["report_id"]]["as_of_after_newest_poll"] is True


def test_reports_refuse_to_start_on_an_unfinished_upload(client, store, monkeypatch):
    unfinished = {
        "upload_id": "9" * 32,
        "file": "big.csv",
        "kind": "store_status.csv",
        "written": 10_000,
        "loaded": 25_000,
    }
    monkeypatch.setattr(store, "unfinished_upload", lambda: unfinished)
    response = client.post("/trigger_report")
    assert response.status_code == 409
    body = response.get_json()
    assert body["upload_id"] == "9" * 32 and "upload the same file again" in body["error"]
    assert store.count_reports() == 0
    health = client.get("/health")
    if store.kind == "sqlite":  # SQLite never has one: its store.health does not ask; the patch shows the route
        return
    assert health.status_code == 503


# --------------------------------------------------------------------------- dead reports look dead


def test_a_dead_report_is_failed_in_the_listing_without_being_read_by_id(client, store, app):
    store.create_report("d" * 32, None)
    force_report_state(store, "d" * 32, heartbeat_age=app.config["STALE_AFTER_SECONDS"] + 5)
    [row] = [r for r in client.get("/reports").get_json()["reports"] if r["report_id"] == "d" * 32]
    assert row["status"] == "Failed" and row["error"] == database.STALE_ERROR


# --------------------------------------------------------------------------- health and faults


def test_health_tells_the_schema_free_disk_and_newest_poll(client):
    body = client.get("/health").get_json()
    assert body["status"] == "ok" and body["schema_version"] == database.SCHEMA_VERSION
    assert body["newest_poll"] == "2023-01-24T13:00:00Z"
    assert body["reports_free_disk_mb"] > 0


def test_health_is_503_when_free_disk_is_under_min_free_mb(client, app):
    app.config["MIN_FREE_MB"] = 10**12
    response = client.get("/health")
    assert response.status_code == 503
    assert "under MIN_FREE_MB" in response.get_json()["error"]


@pytest.mark.parametrize(
    "error, status",
    [
        (sqlite3.OperationalError("database is locked"), 503),
        (AutoReconnect("connection closed"), 503),
        (sqlite3.DatabaseError("database disk image is malformed"), 500),
        (OperationFailure("Document failed validation", code=121), 500),
        (database.DiskFull("/var/db/x.sqlite3", 3 * 1_048_576, what="write"), 507),
    ],
)
def test_database_faults_are_transient_503_permanent_500_or_disk_full_507(
    client, store, monkeypatch, caplog, error, status
):
    if isinstance(error, sqlite3.OperationalError):
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(store, "data_summary", fail)
    response = client.get("/data")
    assert response.status_code == status
    assert ("Retry-After" in response.headers) == (status == 503)
    body = response.get_json()
    assert "Traceback" not in body["error"] and body["status"] == status
    if status == 507:
        assert body["error"] == "the disk holding /var/db/x.sqlite3 is full: 3 MB free; nothing of this write was kept"
