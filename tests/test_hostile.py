"""Hostile clients (issue 12): cross-site writes, request bodies, safe CSV cells, security headers, bounded uploads.

The bounded-upload test runs a real `python app.py` on a loopback port and reads
its memory from /proc/<pid>/status; the others use Flask's test client.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

import report_csv
import reportGenerator
from tests.conftest import free_port, polls_of, stop_process, store_config, wait_for_report, write_data_dir

ROOT = Path(__file__).resolve().parent.parent
CSV_HEADER = "store_id,status,timestamp_utc\n"


# --------------------------------------------------------------------------- no cross-site writes


@pytest.mark.parametrize(
    "headers, allowed",
    [
        ({}, True),  # curl, scripts
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, True),  # the service's own page
        ({"Sec-Fetch-Site": "none"}, True),  # typed into the address bar
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),  # a sibling subdomain is another service
        ({"Origin": "http://evil.example"}, False),  # an older browser without Sec-Fetch-Site
        ({"Origin": "null"}, False),  # a sandboxed frame or a data: page
        ({"Origin": "http://localhost:8000"}, False),  # another port is another origin
    ],
)
def test_state_changing_routes_refuse_cross_site_requests(client, store, headers, allowed):
    before = store.count_reports()
    answer = client.post("/trigger_report", headers=headers)
    assert answer.status_code == (202 if allowed else 403)
    if not allowed:
        assert answer.get_json()["status"] == 403 and "refused" in answer.get_json()["error"]
    assert store.count_reports() == before + (1 if allowed else 0)

    upload = {"store_status": (io.BytesIO((CSV_HEADER + "evil,active,2023-01-24 13:30:00 UTC\n").encode()), "x.csv")}
    answer = client.post("/ingest", data=upload, headers=headers, content_type="multipart/form-data")
    assert answer.status_code == (200 if allowed else 403)
    assert len(polls_of(store, "evil")) == (1 if allowed else 0)


def test_reads_are_not_refused_for_cross_site_headers(client):
    answer = client.get("/reports", headers={"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"})
    assert answer.status_code == 200


def test_unknown_host_names_are_refused(tmp_path, data_dir):
    from app import create_app

    config = {**store_config("sqlite", tmp_path), "DATA_DIR": str(data_dir), "REPORTS_DIR": str(tmp_path / "r")}
    app = create_app({**config, "TRUSTED_HOSTS": "reports.example.com"})
    try:
        client = app.test_client()
        assert client.get("/health", headers={"Host": "reports.example.com"}).status_code == 200
        answer = client.get("/health", headers={"Host": "rebound.attacker.example"})
        assert answer.status_code == 400 and answer.get_json()["status"] == 400
        # the default answers to loopback names only; "*" answers to any
        assert (
            create_app({**config, "TRUSTED_HOSTS": "*"})
            .test_client()
            .get("/health", headers={"Host": "anything.example"})
            .status_code
            == 200
        )
    finally:
        app.extensions["reports"].shutdown(wait=True)


def test_default_trusted_hosts_are_the_loopback_names(client):
    assert client.get("/health", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/health", headers={"Host": "evil.example"}).status_code == 400


# --------------------------------------------------------------------------- request bodies


def test_trigger_report_takes_a_json_object_under_any_content_type(client):
    # curl -d sends application/x-www-form-urlencoded
    answer = client.post(
        "/trigger_report", data='{"as_of": "2023-01-24T13:00:00Z"}', content_type="application/x-www-form-urlencoded"
    )
    assert answer.status_code == 202
    body = wait_for_report(client, answer.get_json()["report_id"])
    assert body["as_of"] == "2023-01-24T13:00:00Z"


@pytest.mark.parametrize(
    "data",
    [
        "as_of=2023-01-24",  # what an HTML form sends
        "[" * 100_000 + "]" * 100_000,  # deeply nested: over the size limit
        "[" * 3_000,  # deeply nested and small
        '{"as_of": ' * 1_000 + '"x"' + "}" * 1_000,
        "\xff\xfe",
        "[1, 2]",
    ],
)
def test_malformed_or_oversized_json_is_a_4xx(client, store, data):
    answer = client.post("/trigger_report", data=data.encode("latin-1"), content_type="application/json")
    assert answer.status_code in (400, 413)
    assert answer.get_json()["status"] == answer.status_code
    assert store.count_reports() == 0


def test_a_large_json_body_is_refused_before_it_is_parsed(client, monkeypatch):
    import json

    parsed = []
    monkeypatch.setattr(json, "loads", lambda *a, **k: parsed.append(1))
    answer = client.post("/trigger_report", data=b'{"as_of": "' + b"x" * 5000 + b'"}', content_type="application/json")
    monkeypatch.undo()
    assert answer.status_code == 413 and "4096 bytes" in answer.get_json()["error"]
    assert parsed == []


@pytest.mark.parametrize(
    "as_of, status",
    [
        ("9999-12-31", 400),
        ("9000-12-31T23:59:59.999999Z", 202),
        ("9001-01-01", 400),
        ("1970-01-01T00:00:00Z", 202),
        ("1969-12-31T23:59:59Z", 400),
        ("0001-01-01", 400),
    ],
)
def test_as_of_outside_the_supported_range_is_a_400_at_trigger_time(client, as_of, status):
    answer = client.post("/trigger_report", json={"as_of": as_of})
    assert answer.status_code == status
    if status == 400:
        assert "1970-01-01T00:00:00Z to 9000-12-31" in answer.get_json()["error"]
    else:
        assert wait_for_report(client, answer.get_json()["report_id"])["status"] == "Complete"


# --------------------------------------------------------------------------- safe cells


def test_report_cells_that_look_like_formulas_are_neutralised():
    report = pd.DataFrame(
        {
            "store_id": ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\ry", "42", "a-b"],
            **{c: [1.5] * 8 for c in reportGenerator.utils.REPORT_COLUMNS[1:]},
        }
    )
    text = report_csv.report_csv_bytes(report).decode()
    ids = pd.read_csv(io.StringIO(text), dtype={"store_id": str}, keep_default_na=False)["store_id"]
    assert list(ids) == ["'=1+1", "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\ry", "42", "a-b"]
    assert list(report_csv.store_ids_from_csv(ids)) == list(report["store_id"])


def test_a_store_id_starting_with_a_minus_is_neutralised_in_the_csv_only(client):
    upload = {"store_status": (io.BytesIO((CSV_HEADER + "-2,active,2023-01-24 12:00:00 UTC\n").encode()), "s.csv")}
    assert client.post("/ingest", data=upload, content_type="multipart/form-data").status_code == 200
    report_id = client.post("/trigger_report").get_json()["report_id"]
    body = wait_for_report(client, report_id)
    assert "-2" in [row["store_id"] for row in body["data"]]
    csv_text = client.get(f"/get_report?report_id={report_id}&format=csv").get_data(as_text=True)
    assert "\n'-2," in csv_text and "\n-2," not in csv_text


def test_formula_store_ids_are_rejected_at_ingest(client, store):
    rows = [
        '"=HYPERLINK(""http://x"",""y"")",active,2023-01-24 12:00:00 UTC',
        "+1+1,active,2023-01-24 12:00:00 UTC",
        "@SUM(A1),active,2023-01-24 12:00:00 UTC",
    ]
    upload = {"store_status": (io.BytesIO((CSV_HEADER + "\n".join(rows) + "\n").encode()), "s.csv")}
    answer = client.post("/ingest", data=upload, content_type="multipart/form-data")
    assert answer.status_code == 400
    assert answer.get_json()["files"][0]["rejected"] == 3
    assert all(polls_of(store, store_id).empty for store_id in ('=HYPERLINK("http://x","y")', "+1+1", "@SUM(A1)"))


# --------------------------------------------------------------------------- smaller leaks


@pytest.mark.parametrize("path", ["/", "/health", "/get_report?report_id=nope", "/static/app.js"])
def test_security_headers_on_every_answer(client, path):
    headers = client.get(path).headers
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_ingest_is_a_400_when_nothing_was_loaded(client):
    upload = {"store_status": (io.BytesIO((CSV_HEADER + "1,online,2023-01-24 12:00:00 UTC\n").encode()), "s.csv")}
    answer = client.post("/ingest", data=upload, content_type="multipart/form-data")
    assert answer.status_code == 400
    assert answer.get_json()["files"][0]["rejected"] == 1


def test_a_failed_report_says_what_failed_without_paths_or_class_names(app, client, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    app.extensions["reports"].reports_dir = blocker / "reports"
    body = wait_for_report(client, client.post("/trigger_report").get_json()["report_id"])
    assert body["status"] == "Failed"
    assert "could not be saved" in body["error"]
    assert str(tmp_path) not in body["error"] and "Error" not in body["error"]
    assert "NotADirectoryError" in caplog.text  # the details are in the log


# --------------------------------------------------------------------------- bounded ingest, on a real server


def _memory_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


@pytest.fixture
def server(tmp_path):
    """A real `python app.py` on a free loopback port (embedded store, tiny data); yields (pid, base URL)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to read the server's memory")
    port = free_port()
    env = {
        **os.environ,
        "MONGO_URI": "",
        "EMBEDDED_DB": str(tmp_path / "server.sqlite3"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "API_TOKEN": "",
        "DATA_DIR": str(write_data_dir(tmp_path / "data")),
        "REPORTS_DIR": str(tmp_path / "reports"),
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    session = requests.Session()
    session.trust_env = False  # loopback only
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.get(base + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield process.pid, base, session
    finally:
        stop_process(process, grace=10)


def test_a_hostile_20_mib_upload_is_refused_in_bounded_memory(server):
    pid, base, session = server
    payload = CSV_HEADER.encode() + b"a\n" * (10 * 1024 * 1024)  # 20 MiB of tiny ragged rows
    before = _memory_kb(pid, "VmHWM")
    answer = session.post(base + "/ingest", files={"store_status": ("hostile.csv", payload)}, timeout=120)
    grown_mb = (_memory_kb(pid, "VmHWM") - before) / 1024
    assert answer.status_code == 400
    error = answer.json()["files"][0]["error"]
    assert "stopped reading at line" in error and "nothing from it was loaded" in error
    assert grown_mb < 200, f"the server's peak memory grew by {grown_mb:.0f} MB"
    # a hostile header is refused as promptly, and the server still answers
    wide = (",".join(["store_id", "status", "timestamp_utc"] + [f"c{i}" for i in range(90_000)]) + "\n").encode()
    answer = session.post(base + "/ingest", files={"store_status": ("wide.csv", wide)}, timeout=120)
    assert answer.status_code == 400 and "header" in answer.json()["files"][0]["error"]
    assert session.get(base + "/health", timeout=10).status_code == 200


# --------------------------------------------------------------------------- quotas


@pytest.fixture
def held_reports(tmp_path, data_dir, monkeypatch, store_kind):
    """An app with 1 report worker and at most 2 reports queued or running, whose reports wait for `release`."""
    import threading

    import utils
    from app import create_app

    release = threading.Event()
    real = utils.uptime_report

    def held(*args, **kwargs):
        assert release.wait(60), "the test never released the reports"
        return real(*args, **kwargs)

    monkeypatch.setattr(utils, "uptime_report", held)
    app = create_app(
        {
            **store_config(store_kind, tmp_path),
            "DATA_DIR": str(data_dir),
            "REPORTS_DIR": str(tmp_path / "reports"),
            "REPORT_WORKERS": 1,
            "MAX_QUEUED_REPORTS": 2,
        }
    )
    try:
        yield app, app.test_client(), release
    finally:
        release.set()
        app.extensions["reports"].shutdown(wait=True)


def test_reports_beyond_the_quota_are_429_with_retry_after(held_reports):
    app, client, release = held_reports
    first, second = (client.post("/trigger_report") for _ in range(2))
    assert first.status_code == second.status_code == 202
    assert first.get_json()["report_id"] != second.get_json()["report_id"]
    refused = client.post("/trigger_report")
    assert refused.status_code == 429 and refused.get_json()["status"] == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert app.extensions["store"].count_reports() == 2
    release.set()
    for answer in (first, second):
        assert wait_for_report(client, answer.get_json()["report_id"])["status"] == "Complete"
    assert client.post("/trigger_report").status_code == 202  # room again


def test_a_trigger_for_the_as_of_of_a_running_report_returns_its_id(held_reports):
    app, client, release = held_reports
    first = client.post("/trigger_report", json={"as_of": "2023-01-24T13:00:00Z"})
    again = client.post("/trigger_report", json={"as_of": "2023-01-24 13:00:00+00:00"})  # the same instant
    other = client.post("/trigger_report", json={"as_of": "2023-01-24T12:00:00Z"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.get_json()["report_id"] == first.get_json()["report_id"]
    assert other.get_json()["report_id"] != first.get_json()["report_id"]
    release.set()
    assert wait_for_report(client, first.get_json()["report_id"])["status"] == "Complete"
    # once it has finished, the same as_of starts a new report
    assert (
        client.post("/trigger_report", json={"as_of": "2023-01-24T13:00:00Z"}).get_json()["report_id"]
        != first.get_json()["report_id"]
    )


def test_one_upload_at_a_time_others_get_503_with_retry_after(app, client, store, monkeypatch):
    import api

    monkeypatch.setattr(api, "INGEST_WAIT_SECONDS", 0.01)

    def upload():
        return {"store_status": (io.BytesIO((CSV_HEADER + "9,active,2023-01-24 12:00:00 UTC\n").encode()), "s.csv")}

    slot = app.extensions["ingest_slot"]
    assert slot.acquire(timeout=1)  # another upload is loading
    try:
        answer = client.post("/ingest", data=upload(), content_type="multipart/form-data")
    finally:
        slot.release()
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0
    assert answer.get_json()["status"] == 503
    assert polls_of(store, "9").empty
    assert client.post("/ingest", data=upload(), content_type="multipart/form-data").status_code == 200


# --------------------------------------------------------------------------- retention


def finished_reports(client, count: int) -> list[str]:
    """Run `count` reports to completion, one after another (oldest first)."""
    ids = []
    for _ in range(count):
        ids.append(client.post("/trigger_report").get_json()["report_id"])
        assert wait_for_report(client, ids[-1])["status"] == "Complete"
    return ids


def test_retention_deletes_finished_reports_beyond_the_newest_and_their_files(app, client, store, tmp_path, caplog):
    caplog.set_level("INFO", logger="reportGenerator")
    ids = finished_reports(client, 3)
    store.create_report("a" * 32, None)  # a Running report is never deleted
    files = [tmp_path / "reports" / f"report_{report_id}.csv" for report_id in ids]
    assert all(path.exists() for path in files)
    generator = app.extensions["reports"]
    assert sorted(generator.sweep(retention_days=30, max_reports=1)) == sorted(ids[:2])
    assert [store.find_report(i) is None for i in ids] == [True, True, False]
    assert [path.exists() for path in files] == [False, False, True]
    assert store.find_report("a" * 32)["status"] == "Running"
    assert client.get(f"/get_report?report_id={ids[0]}").status_code == 404
    assert client.get(f"/get_report?report_id={ids[2]}&format=csv").status_code == 200
    assert "retention: deleted 2 finished reports" in caplog.text
    # older than the retention period: everything finished goes, the Running report stays
    assert generator.sweep(retention_days=0, max_reports=1000) == [ids[2]]
    assert store.count_reports() == 1 and not files[2].exists()


def test_the_background_sweep_runs_at_start_up(app, client, store, tmp_path, data_dir, store_kind, monkeypatch):
    from app import create_app
    from reportGenerator import ReportGenerator

    swept, real_sweep = threading.Event(), ReportGenerator.sweep

    def sweep_then_say_so(self, *args, **kwargs):
        try:
            return real_sweep(self, *args, **kwargs)
        finally:
            if threading.current_thread().name == "report-retention":
                swept.set()

    monkeypatch.setattr(ReportGenerator, "sweep", sweep_then_say_so)
    ids = finished_reports(client, 2)
    second = create_app(
        {
            **store_config(store_kind, tmp_path),
            "STORE": store,
            "DATA_DIR": str(data_dir),
            "REPORTS_DIR": str(tmp_path / "reports"),
            "MAX_REPORTS": 1,
        }
    )
    try:
        assert swept.wait(30), "no retention sweep at start-up"
        assert store.find_report(ids[0]) is None and store.find_report(ids[1]) is not None
    finally:
        second.extensions["reports"].shutdown(wait=True)


# --------------------------------------------------------------------------- writers are not starved


def test_an_upload_waits_a_few_seconds_for_running_reports_then_gets_503(held_reports, monkeypatch):
    import api

    app, client, release = held_reports
    store = app.extensions["store"]
    monkeypatch.setattr(api, "INGEST_WAIT_SECONDS", 0.5)
    report_id = client.post("/trigger_report").get_json()["report_id"]
    # the report holds the read lease once it has fixed its now
    deadline = time.monotonic() + 30
    while store.find_report(report_id)["as_of_us"] is None:
        assert time.monotonic() < deadline, "the report never started reading"
        time.sleep(0.02)

    def upload():
        return {"store_status": (io.BytesIO((CSV_HEADER + "w,active,2023-01-24 12:00:00 UTC\n").encode()), "s.csv")}

    answer = client.post("/ingest", data=upload(), content_type="multipart/form-data")
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0
    assert answer.get_json() == {"error": "reports or a load hold the data just now; try again shortly", "status": 503}
    assert polls_of(store, "w").empty
    release.set()
    assert wait_for_report(client, report_id)["status"] == "Complete"
    assert client.post("/ingest", data=upload(), content_type="multipart/form-data").status_code == 200
    assert len(polls_of(store, "w")) == 1


@pytest.mark.parametrize(
    "error, words",
    [
        ("LeaseTimeout", "a data load kept the data busy"),
        ("LeaseLost", "the data changed while the report read it"),
        ("sqlite", "the database did not answer"),
        ("sqlite-permanent", "the database refused a step of the report (a permanent error"),
        ("OSError", "could not be saved on the server"),
        ("RuntimeError", "internal error"),
        ("ReportError", "nothing to report here"),
    ],
)
def test_failure_messages_are_in_user_terms(error, words):
    import sqlite3

    import database

    busy = sqlite3.OperationalError("database is locked: /srv/app/instance/x.sqlite3")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    raised = {
        "LeaseTimeout": database.LeaseTimeout("waited 1800 s for the data read lease"),
        "LeaseLost": database.LeaseLost("lease lost"),
        "sqlite": busy,
        "sqlite-permanent": sqlite3.DatabaseError("database disk image is malformed: /srv/app/instance/x.sqlite3"),
        "OSError": NotADirectoryError(20, "Not a directory", "/srv/app/reports/report_1.csv"),
        "RuntimeError": RuntimeError("year 10000 is out of range"),
        "ReportError": reportGenerator.ReportError("nothing to report here"),
    }[error]
    message = reportGenerator.failure_message(raised)
    assert words in message
    assert "/srv" not in message and "Error" not in message and "10000" not in message
