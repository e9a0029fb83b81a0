"""The HTTP API (SPEC §4) through Flask's test client, on each store: trigger, poll, data, CSV, errors."""

from __future__ import annotations

import csv
import io
import threading

import pytest

from tests.conftest import TINY_REPORT, force_report_state, hours_of, polls_of, wait_for_report, wipe_polls


def trigger(client, body=None) -> str:
    response = client.post("/trigger_report", json=body) if body is not None else client.post("/trigger_report")
    assert response.status_code == 202
    report_id = response.get_json()["report_id"]
    assert len(report_id) == 32
    return report_id


def test_trigger_then_poll_to_complete_json(client, store):
    report_id = trigger(client)
    body = wait_for_report(client, report_id)
    assert body["status"] == "Complete"
    assert body["data"] == TINY_REPORT
    assert body["as_of"] == "2023-01-24T13:00:00Z"
    stored = store.find_report(report_id)
    assert stored["status"] == "Complete"
    assert stored["row_count"] == 3
    assert stored["finished_at"] is not None


def test_csv_download_by_query_and_by_accept_header(app, client):
    report_id = trigger(client)
    wait_for_report(client, report_id)
    by_query = client.get(f"/get_report?report_id={report_id}&format=csv")
    by_header = client.get(f"/get_report?report_id={report_id}", headers={"Accept": "text/csv"})
    for response in (by_query, by_header):
        assert response.status_code == 200
        assert response.mimetype == "text/csv"
        assert "attachment" in response.headers["Content-Disposition"]
    assert by_query.data == by_header.data
    rows = list(csv.DictReader(io.StringIO(by_query.data.decode())))
    assert [row["store_id"] for row in rows] == ["allday", "late", "worked"]
    assert rows[2]["downtime_last_day"] == "1.26"
    assert by_query.data.decode().splitlines()[0] == (
        "store_id,uptime_last_hour,uptime_last_day,uptime_last_week,"
        "downtime_last_hour,downtime_last_day,downtime_last_week"
    )
    # the same bytes were written under REPORTS_DIR
    written = app.config["REPORTS_DIR"] + f"/report_{report_id}.csv"
    assert open(written, "rb").read() == by_query.data


def test_as_of_moves_now(client):
    report_id = trigger(client, {"as_of": "2023-01-24T12:00:00Z"})
    body = wait_for_report(client, report_id)
    rows = {row["store_id"]: row for row in body["data"]}
    # 'allday' and 'late' have no poll at or before 12:00, so they are not in the report
    assert sorted(rows) == ["worked"]
    # worked: hour window [11:00, 12:00) is all after the 10:44:30 midpoint
    assert rows["worked"]["downtime_last_hour"] == 60.0
    assert body["as_of"] == "2023-01-24T12:00:00Z"


@pytest.mark.parametrize(
    "stored, answer",
    [
        (None, {"phase": "queued", "progress": {"done": 0, "total": None}}),  # as create_report leaves it
        (
            {"done": 0, "total": None, "phase": "counting"},
            {"phase": "counting", "progress": {"done": 0, "total": None}},
        ),
        ({"done": 2, "total": 5, "phase": "computing"}, {"phase": "computing", "progress": {"done": 2, "total": 5}}),
        ({"done": 2, "total": 5}, {"phase": "computing", "progress": {"done": 2, "total": 5}}),  # older records
        ({"done": 0, "total": 0, "phase": "computing"}, {"phase": "computing", "progress": {"done": 0, "total": 0}}),
    ],
)
def test_running_report_shows_phase_and_progress(client, store, stored, answer):
    store.create_report("ab" * 16, None)
    if stored is not None:
        store.update_report("ab" * 16, progress=stored)
    body = client.get("/get_report?report_id=" + "ab" * 16).get_json()
    assert body == {"status": "Running", "trigger": "api", **answer}


def test_the_job_says_it_is_counting_stores_before_it_knows_the_total(client, store, monkeypatch):
    counting, release = threading.Event(), threading.Event()
    real = type(store).report_store_ids

    def slow_count(self, now_us):
        counting.set()
        release.wait(30)
        return real(self, now_us)

    monkeypatch.setattr(type(store), "report_store_ids", slow_count)
    report_id = trigger(client)
    assert counting.wait(30)
    try:
        body = client.get(f"/get_report?report_id={report_id}").get_json()
        assert body == {
            "status": "Running",
            "trigger": "api",
            "phase": "counting",
            "progress": {"done": 0, "total": None},
        }
        refused = client.get(f"/get_report?report_id={report_id}&format=csv")
        assert refused.status_code == 409 and refused.mimetype == "application/json"
        assert refused.get_json() == {
            "status": 409,
            "error": f"report {report_id} is still Running (counting stores): "
            "its CSV is ready when it is Complete; ask again then",
        }
    finally:
        release.set()
    assert wait_for_report(client, report_id)["data"] == TINY_REPORT


def test_the_job_itself_moves_progress_chunk_by_chunk(tmp_path, data_dir, store_kind, monkeypatch):
    """Progress is written by the job as it goes (one store per chunk here: the tiny data's 3 stores
    give 0/3, 1/3, 2/3, 3/3), seen both in the job's own calls and through GET /get_report while the
    job is held inside its second chunk. Nothing in the test writes progress."""
    from app import create_app
    from tests.conftest import store_config

    app = create_app(
        {
            **store_config(store_kind, tmp_path),
            "DATA_DIR": str(data_dir),
            "REPORTS_DIR": str(tmp_path / "reports"),
            "CHUNK_STORES": 1,
        }
    )
    store_class = type(app.extensions["store"])
    written, reads = [], []
    second_read, release = threading.Event(), threading.Event()
    real_update, real_read = store_class.update_report, store_class.read_chunk

    def update_report(self, report_id, **fields):
        if "progress" in fields:
            written.append(dict(fields["progress"]))
        return real_update(self, report_id, **fields)

    def read_chunk(self, store_ids, since_us, now_us):
        reads.append(list(store_ids))
        if len(reads) == 2:
            second_read.set()
            release.wait(30)  # no assert in the job's thread: the test thread checks what it sees
        return real_read(self, store_ids, since_us, now_us)

    monkeypatch.setattr(store_class, "update_report", update_report)
    monkeypatch.setattr(store_class, "read_chunk", read_chunk)
    client = app.test_client()
    report_id = trigger(client)
    try:
        assert second_read.wait(30), "the job never reached its second chunk"
        assert client.get(f"/get_report?report_id={report_id}").get_json() == {
            "status": "Running",
            "trigger": "api",
            "phase": "computing",
            "progress": {"done": 1, "total": 3},
        }
    finally:
        release.set()
    assert wait_for_report(client, report_id)["data"] == TINY_REPORT
    assert reads == [["allday"], ["late"], ["worked"]]
    assert written == [{"done": 0, "total": None, "phase": "counting"}] + [
        {"done": done, "total": 3, "phase": "computing"} for done in range(4)
    ]
    app.extensions["reports"].shutdown(wait=True)


def database_failure(kind: str, transient: bool = True) -> Exception:
    """An error of the store's own driver, with text that must not reach a client: one that goes away
    by itself (busy, no server within the time limit), or a permanent one (an I/O error, a rejected write)."""
    if kind == "sqlite":
        import sqlite3

        if not transient:
            return sqlite3.OperationalError("disk I/O error at /srv/secret/store_monitoring.sqlite3")
        error = sqlite3.OperationalError("database is locked: /srv/secret/store_monitoring.sqlite3 (I/O)")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY
        return error
    from pymongo.errors import ServerSelectionTimeoutError, WriteError

    if not transient:
        return WriteError("not authorized on secret as admin:hunter2@db1.internal (I/O)", code=13)
    return ServerSelectionTimeoutError("mongodb://admin:hunter2@db1.internal:27017 timed out")


@pytest.mark.parametrize(
    "method, path, store_method",
    [
        ("get", "/get_report?report_id=" + "0" * 32, "find_report"),
        ("post", "/trigger_report", "create_report"),
        ("get", "/reports", "list_reports"),
    ],
)
@pytest.mark.parametrize("transient, status", [(True, 503), (False, 500)])
def test_a_database_error_is_503_or_500_without_its_text(
    client, store, monkeypatch, method, path, store_method, transient, status, caplog
):
    def fail(*args, **kwargs):
        raise database_failure(store.kind, transient)

    monkeypatch.setattr(type(store), store_method, fail)
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert ("Retry-After" in response.headers) == transient
    message = (
        "the database is not available; try again shortly"
        if transient
        else "the database failed to do this (a permanent error; the server log has the details)"
    )
    assert response.get_json() == {"error": message, "status": status}
    for secret in ("secret", "hunter2", "internal", "I/O", "Traceback"):
        assert secret not in response.get_data(as_text=True)
    assert len([r for r in caplog.records if r.name == "app" and r.levelname == "ERROR"]) == 1  # one log line


def test_csv_of_a_report_that_is_not_complete_is_409_and_unknown_format_400(client, store):
    store.create_report("cd" * 16, None)
    store.update_report("cd" * 16, progress={"done": 1, "total": 3, "phase": "computing"})
    running = client.get("/get_report?report_id=" + "cd" * 16 + "&format=csv")
    assert running.status_code == 409
    assert running.get_json()["error"].startswith(f"report {'cd' * 16} is still Running (1 of 3 stores)")
    # asked for by the Accept header alone, a Running report still answers its state in JSON
    polled = client.get("/get_report?report_id=" + "cd" * 16, headers={"Accept": "text/csv"})
    assert polled.status_code == 200 and polled.get_json()["status"] == "Running"
    store.fail_report("cd" * 16, "boom")
    failed = client.get("/get_report?report_id=" + "cd" * 16 + "&format=CSV")
    assert failed.status_code == 409
    assert failed.get_json() == {
        "status": 409,
        "error": f"report {'cd' * 16} Failed (boom), so it has no CSV: trigger a new report",
    }
    for value in ("xml", "", "csv "):
        unknown = client.get("/get_report?report_id=" + "cd" * 16 + "&format=" + value)
        assert unknown.status_code == 400
        assert unknown.get_json()["error"] == f"unknown format {value!r}: use format=csv or format=json"
    report_id = trigger(client)
    wait_for_report(client, report_id)
    as_json = client.get(f"/get_report?report_id={report_id}&format=json", headers={"Accept": "text/csv"})
    assert as_json.status_code == 200 and as_json.get_json()["data"] == TINY_REPORT


def test_failed_report_gives_reason(app, client, store):
    wipe_polls(store)
    report_id = trigger(client)
    body = wait_for_report(client, report_id)
    assert body["status"] == "Failed"
    assert "no polls" in body["error"]
    assert "Traceback" not in body["error"]


def test_failure_inside_the_job_is_recorded(app, client, monkeypatch):
    import utils

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(utils, "uptime_report", broken)
    body = wait_for_report(client, trigger(client))
    assert body == {
        "status": "Failed",
        "trigger": "api",
        "error": "the report could not be computed because of an internal error (the server log has the details)",
    }
    # the server keeps serving
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?report_id=",
        "?report_id=xyz",
        "?report_id=" + "A" * 32,
        "?report_id=" + "a" * 33,
        "?report_id=%24ne",
        "?report_id[$ne]=x",
        "?report_id=a&report_id=b",
        "?report_id=" + "é" * 32,
    ],
)
def test_missing_or_malformed_report_id_is_400_json(client, query):
    response = client.get("/get_report" + query)
    assert response.status_code == 400
    body = response.get_json()
    assert body["status"] == 400 and body["error"]


def test_unknown_report_id_is_404_json(client):
    response = client.get("/get_report?report_id=" + "0" * 32)
    assert response.status_code == 404
    assert response.get_json() == {"error": "no report with id " + "0" * 32, "status": 404}


@pytest.mark.parametrize(
    "data, content_type",
    [
        ("{bad json", "application/json"),
        ("[1, 2]", "application/json"),
        ('{"as_of": "yesterday"}', "application/json"),
        ('{"as_of": 12}', "application/json"),
        ('{"as_off": "2023-01-24T12:00:00Z"}', "application/json"),
        ("as_of=2023", "application/x-www-form-urlencoded"),
    ],
)
def test_bad_trigger_bodies_are_400_json(client, data, content_type):
    response = client.post("/trigger_report", data=data, content_type=content_type)
    assert response.status_code == 400
    assert set(response.get_json()) == {"error", "status"}


def test_wrong_method_and_unknown_path_are_json(client):
    assert client.get("/trigger_report").get_json()["error"] == "GET is not allowed on /trigger_report: use POST"
    assert client.put("/get_report").get_json()["error"] == "PUT is not allowed on /get_report: use GET"
    for response, code in ((client.get("/trigger_report"), 405), (client.get("/nowhere"), 404)):
        assert response.status_code == code
        assert response.is_json and response.get_json()["status"] == code


def test_unexpected_error_is_json_without_trace(app, client, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyError("secret internals")

    monkeypatch.setattr(type(app.extensions["store"]), "find_report", explode)
    response = client.get("/get_report?report_id=" + "0" * 32)
    assert response.status_code == 500
    assert "secret" not in response.get_data(as_text=True)
    assert response.get_json()["status"] == 500


def test_health_names_the_database(client, store):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert {key: body[key] for key in ("status", "database", "database_ok", "schema_version", "newest_poll")} == {
        "status": "ok",
        "database": store.kind,
        "database_ok": True,
        "schema_version": 4,
        "newest_poll": "2023-01-24T13:00:00Z",
    }
    assert set(body) == {
        "status",
        "database",
        "database_ok",
        "schema_version",
        "free_disk_mb",
        "reports_free_disk_mb",
        "newest_poll",
    }


def test_stale_running_report_is_failed_when_polled(app, client, store):
    store.create_report("cd" * 16, None)
    force_report_state(store, "cd" * 16, heartbeat_age=7200)
    body = client.get("/get_report?report_id=" + "cd" * 16).get_json()
    assert body["status"] == "Failed"
    assert "heartbeat" in body["error"]


# --------------------------------------------------------------------------- /ingest and /reports


def upload(client, **files):
    data = {field: (io.BytesIO(body), f"{field}.csv") for field, body in files.items()}
    return client.post("/ingest", data=data, content_type="multipart/form-data")


def test_ingest_loads_reports_rejects_and_is_idempotent(client, store):
    body = (
        b"store_id,status,timestamp_utc\nfresh,active,2023-01-24 12:00:00 UTC\nfresh,online,2023-01-24 12:30:00 UTC\n"
    )
    response = upload(client, store_status=body)
    assert response.status_code == 200
    [summary] = response.get_json()["files"]
    assert (summary["kind"], summary["rows_read"], summary["loaded"], summary["rejected"]) == (
        "store_status.csv",
        2,
        1,
        1,
    )
    assert summary["rejects"] == [
        {"file": "store_status.csv", "line": 3, "reason": "unknown status 'online' (expected active or inactive)"}
    ]
    assert len(polls_of(store, "fresh")) == 1
    assert upload(client, store_status=body).status_code == 200
    assert len(polls_of(store, "fresh")) == 1


def test_ingest_knows_a_file_by_its_header_and_replaces_hours(client, store):
    response = upload(client, anything=b"store_id,day,start_time_local,end_time_local\nworked,3,08:00:00,09:00:00\n")
    assert response.get_json()["files"][0]["kind"] == "menu_hours.csv"
    assert list(hours_of(store, "worked")["day"]) == [3]


def test_ingest_errors(client, app):
    assert client.post("/ingest").status_code == 400
    wrong = upload(client, store_status=b"store;status;timestamp_utc\n1;active;x\n")
    assert wrong.status_code == 400
    assert wrong.get_json()["error"] and "wrong header" in wrong.get_json()["files"][0]["error"]
    unknown = upload(client, mystery=b"a,b\n1,2\n")
    assert unknown.status_code == 400 and "not one of the three files" in unknown.get_json()["files"][0]["error"]
    app.config["MAX_CONTENT_LENGTH"] = 1000
    too_big = upload(client, store_status=b"store_id,status,timestamp_utc\n" + b"1,active,2023-01-24T12:00:00Z\n" * 100)
    assert too_big.status_code == 413 and too_big.get_json()["status"] == 413


def test_reports_lists_newest_first_with_pages(client):
    ids = [trigger(client) for _ in range(3)]
    for report_id in ids:
        wait_for_report(client, report_id)
    first = client.get("/reports?per_page=2").get_json()
    assert first["total"] == 3 and first["page"] == 1
    assert [r["report_id"] for r in first["reports"]] == ids[::-1][:2]
    assert first["reports"][0]["status"] == "Complete" and first["reports"][0]["row_count"] == 3
    assert first["reports"][0]["as_of"] == "2023-01-24T13:00:00Z"
    second = client.get("/reports?per_page=2&page=2").get_json()
    assert [r["report_id"] for r in second["reports"]] == [ids[0]]
    for query in ("page=0", "per_page=101", "page=x", "per_page=-1"):
        assert client.get("/reports?" + query).status_code == 400


def test_as_of_is_kept_to_the_microsecond(client):
    report_id = trigger(client, {"as_of": "2023-01-24T12:00:00.123456+00:00"})
    assert wait_for_report(client, report_id)["as_of"] == "2023-01-24T12:00:00.123456Z"
    listed = client.get("/reports").get_json()["reports"][0]
    assert listed["as_of"] == "2023-01-24T12:00:00.123456Z"
