"""The embedded SQLite store: one persistent file, shared by processes, seeded once, stopped early by
a DATA_DIR that cannot seed it, and the same report bytes as MongoDB (mongomock) and the CSV files."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app as app_module
import database
import reportGenerator
from app import create_app
from tests.conftest import FAR_FUTURE_US, TINY_REPORT, free_port, stop_process, write_data_dir

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the file


def test_the_file_is_created_in_wal_mode_and_kept(tmp_path):
    path = tmp_path / "deep" / "folder" / "store.sqlite3"
    store = database.connect(path=path)
    assert path.exists()
    assert store._connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    database.load_dir(store, write_data_dir(tmp_path / "data"))
    store.close()
    again = database.connect(path=path)
    assert again.report_store_ids(FAR_FUTURE_US) == ["allday", "late", "worked"]


def test_two_processes_loading_at_once_both_succeed(tmp_path):
    """Writers in two processes wait for each other (busy timeout, data lease): no 'database is locked'."""
    path = tmp_path / "shared.sqlite3"
    database.connect(path=path)
    folders = []
    for i in range(2):
        polls = "".join(f"p{i}s{n},active,2023-01-24 1{n % 10}:00:00 UTC\n" for n in range(3_000))
        folders.append(write_data_dir(tmp_path / f"data{i}", status="store_id,status,timestamp_utc\n" + polls))
    env = {key: value for key, value in os.environ.items() if key != "MONGO_URI"}
    env["EMBEDDED_DB"] = str(path)
    loaders = [subprocess.Popen([sys.executable, "database.py", "load", str(folder)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for folder in folders]
    results = [loader.communicate(timeout=120) for loader in loaders]
    assert [loader.returncode for loader in loaders] == [0, 0], results
    assert all(b"locked" not in err for _, err in results)
    assert len(database.connect(path=path).report_store_ids(FAR_FUTURE_US)) == 6_000


# --------------------------------------------------------------------------- query plans and bulk loads


def _plan(store, query: str, parameters) -> list[str]:
    return [row[3] for row in store._connection().execute(f"EXPLAIN QUERY PLAN {query}", parameters)]


def test_chunk_queries_use_the_primary_key(tmp_path):
    """Each chunk query scans only the chunk's list of ids and seeks every table by key: no full scan."""
    store = database.connect(path=tmp_path / "plans.sqlite3")
    database.load_dir(store, write_data_dir(tmp_path / "data"))
    parameters = {"ids": json.dumps(["allday", "worked"]), "since": 0, "now": FAR_FUTURE_US}
    plans = {name: _plan(store, getattr(store, name), parameters)
             for name in ("CHUNK_POLLS", "CHUNK_EARLIER_POLLS", "CHUNK_HOURS", "CHUNK_ZONES")}
    for name, plan in plans.items():
        scans = [step for step in plan if step.startswith("SCAN")]
        assert scans == ["SCAN j VIRTUAL TABLE INDEX 1:"], (name, plan)  # the json_each list, nothing else
    assert "SEARCH s USING PRIMARY KEY (store_id=? AND timestamp_us>? AND timestamp_us<?)" in plans["CHUNK_POLLS"]
    assert "SEARCH t USING PRIMARY KEY (store_id=? AND timestamp_us<?)" in plans["CHUNK_EARLIER_POLLS"]
    assert "SEARCH z USING PRIMARY KEY (store_id=?)" in plans["CHUNK_ZONES"]
    assert "SEARCH h USING INDEX businessHours_store (store_id=?)" in plans["CHUNK_HOURS"]


def test_a_bulk_load_into_an_empty_table_rebuilds_the_time_index(tmp_path):
    """The first load builds the time index after the rows; later loads keep it up to date."""
    store = database.connect(path=tmp_path / "bulk.sqlite3")
    database.load_dir(store, write_data_dir(tmp_path / "data"))
    indexes = {name for (name,) in store._connection().execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "storeStatus_time" in indexes
    assert any("USING COVERING INDEX storeStatus_time" in step
               for step in _plan(store, "SELECT max(timestamp_us) FROM storeStatus", ()))
    database.load_file(store, "store_status.csv",
                       b"store_id,status,timestamp_utc\nnewest,active,2023-02-01 00:00:00 UTC\n")
    assert store.latest_poll_us() == 1675209600000000
    assert store.migrate() == []


def test_one_load_with_repeated_keys_keeps_the_later_row(tmp_path):
    """Rows are written sorted by key; of two rows with the same key the later in the frame wins."""
    store = database.connect(path=tmp_path / "repeats.sqlite3")
    frame = pd.DataFrame({"store_id": ["b", "a", "b", "a", "b"], "timestamp_us": [5, 7, 5, 7, 5],
                          "active": [True, False, False, True, True]})
    assert store.load_polls(frame) == 5
    polls = store.read_chunk(["a", "b"], 0, 10)[0]
    assert sorted(zip(polls["store_id"], polls["timestamp_us"], polls["active"])) == [("a", 7, True), ("b", 5, True)]
    store.load_polls(frame.iloc[[1, 2]])  # into a table that is no longer empty: the index is kept up to date
    polls = store.read_chunk(["a", "b"], 0, 10)[0]
    assert sorted(zip(polls["store_id"], polls["timestamp_us"], polls["active"])) == [("a", 7, False), ("b", 5, False)]


# --------------------------------------------------------------------------- seeding and DATA_DIR


def test_seeding_logs_per_file_and_happens_once(tmp_path, data_dir, caplog):
    config = {"MONGO_URI": "", "EMBEDDED_DB": str(tmp_path / "db.sqlite3"), "DATA_DIR": str(data_dir),
              "REPORTS_DIR": str(tmp_path / "r")}
    with caplog.at_level(logging.INFO, logger="app"):
        first = create_app(config)
    seeded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("seeded")]
    assert seeded == [f"seeded {data_dir / 'store_status.csv'}: 5 loaded, 0 rejected",
                      f"seeded {data_dir / 'menu_hours.csv'}: 1 loaded, 0 rejected",
                      f"seeded {data_dir / 'timezones.csv'}: 1 loaded, 0 rejected"]
    caplog.clear()
    (data_dir / "store_status.csv").write_text("store_id,status,timestamp_utc\nother,active,2023-01-25T00:00:00Z\n")
    with caplog.at_level(logging.INFO, logger="app"):
        second = create_app(config)  # not empty: reused as it is, not seeded again
    assert not [r for r in caplog.records if r.getMessage().startswith("seeded")]
    assert second.extensions["store"].report_store_ids(FAR_FUTURE_US) == ["allday", "late", "worked"]
    for application in (first, second):
        application.extensions["reports"].shutdown(wait=True)


@pytest.mark.parametrize("make, expected", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: (tmp / "a-file").write_text("x") and tmp / "a-file", "is not a folder"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "holds none of"),
])
def test_an_explicit_data_dir_that_cannot_seed_stops_start_up_with_one_line(tmp_path, make, expected):
    data_dir = make(tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "MONGO_URI"}
    env.update(DATA_DIR=str(data_dir), EMBEDDED_DB=str(tmp_path / "db.sqlite3"), PORT="0")
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"error: DATA_DIR {data_dir} {expected}" + (
        " store_status.csv, menu_hours.csv, timezones.csv" if expected == "holds none of" else "")
    assert "Traceback" not in done.stderr


def test_the_default_data_dir_missing_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setitem(app_module.DEFAULTS, "DATA_DIR", str(tmp_path / "no-data-here"))
    application = create_app({"MONGO_URI": "", "EMBEDDED_DB": str(tmp_path / "db.sqlite3"),
                              "REPORTS_DIR": str(tmp_path / "r")})
    assert "does not exist: starting with whatever the database holds" in caplog.text
    assert application.extensions["store"].is_empty()
    application.extensions["reports"].shutdown(wait=True)


# --------------------------------------------------------------------------- a restart keeps everything


def _call(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _start(tmp_path: Path, port: int, data_dir: Path) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in ("MONGO_URI", "API_TOKEN")}
    env.update(PORT=str(port), HOST="127.0.0.1", DATA_DIR=str(data_dir), REPORTS_DIR=str(tmp_path / "reports"),
               EMBEDDED_DB=str(tmp_path / "db" / "kept.sqlite3"))
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if _call(f"http://127.0.0.1:{port}/health")[0] == 200:
                return server
        except OSError:
            pass
        assert server.poll() is None, "the service exited at start-up"
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.1)


def test_uploads_and_reports_survive_a_restart(tmp_path, data_dir):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    boundary = uuid.uuid4().hex
    upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"store_status\"; filename=\"s.csv\"\r\n"
              "Content-Type: text/csv\r\n\r\nstore_id,status,timestamp_utc\n"
              "uploaded,inactive,2023-01-24 12:30:00 UTC\n"
              f"\r\n--{boundary}--\r\n").encode()
    server = _start(tmp_path, port, data_dir)
    try:
        status, body = _call(base + "/ingest", upload, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 200 and body["files"][0]["loaded"] == 1
        status, body = _call(base + "/trigger_report", b"")
        assert status == 202
        report_id = body["report_id"]
        deadline = time.monotonic() + 60
        while _call(f"{base}/get_report?report_id={report_id}")[1]["status"] == "Running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop_process(server, grace=30)
    server = _start(tmp_path, port, data_dir)
    try:
        status, body = _call(f"{base}/get_report?report_id={report_id}")
        assert status == 200 and body["status"] == "Complete"
        rows = {row["store_id"]: row for row in body["data"]}
        # 'uploaded': open 24/7 (no hours; Chicago), one inactive poll at 12:30, now = 13:00 (the newest poll)
        assert rows["uploaded"]["downtime_last_week"] == 168.0 and rows["uploaded"]["uptime_last_week"] == 0.0
        assert [row for row in body["data"] if row["store_id"] != "uploaded"] == TINY_REPORT
        status, listing = _call(f"{base}/reports")
        assert [r["report_id"] for r in listing["reports"]] == [report_id]
    finally:
        stop_process(server, grace=30)


# --------------------------------------------------------------------------- both stores, the same bytes

store_ids = st.sampled_from(["1001", "1002", "2000000000000000001", "a-store", "z9"])
instants = st.integers(min_value=0, max_value=10 * 24 * 3600 - 1).map(
    lambda s: f"2023-01-{15 + s // 86400:02d} {s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{s * 7919 % 1000000:06d} UTC")
polls = st.lists(st.tuples(store_ids, st.sampled_from(["active", "inactive"]), instants), min_size=1, max_size=40)
hours = st.lists(st.tuples(store_ids, st.integers(0, 6), st.integers(0, 23), st.integers(0, 23)), max_size=12)
zones = st.lists(st.tuples(store_ids, st.sampled_from(["America/New_York", "Asia/Kolkata", "UTC",
                                                        "America/Los_Angeles"])), max_size=5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(polls=polls, hours=hours, zones=zones)
def test_sqlite_mongomock_and_the_csv_files_give_the_same_bytes(tmp_path_factory, polls, hours, zones):
    tmp = tmp_path_factory.mktemp("same")
    data = write_data_dir(
        tmp / "data",
        status="store_id,status,timestamp_utc\n" + "".join(f"{s},{a},{t}\n" for s, a, t in polls),
        hours="store_id,day,start_time_local,end_time_local\n" + "".join(
            f"{s},{d},{a:02d}:00:00,{b:02d}:30:00\n" for s, d, a, b in hours),
        zones="store_id,timezone_str\n" + "".join(f"{s},{z}\n" for s, z in dict(zones).items()),
    )
    expected, _, _ = reportGenerator.report_from_dir(data)
    expected_bytes = reportGenerator.report_csv_bytes(expected)
    for store in (database.connect(path=tmp / "db.sqlite3"), database.connect("mongomock://", "same")):
        database.load_dir(store, data)
        generator = reportGenerator.ReportGenerator(store, tmp / f"reports-{store.kind}")
        store.create_report("e" * 32, None)
        generator.run("e" * 32)
        report = store.find_report("e" * 32)
        assert report["status"] == "Complete", report["error"]
        assert store.read_report_csv(report) == expected_bytes, store.kind
        generator.shutdown(wait=True)


def test_an_embedded_file_that_cannot_be_opened_stops_start_up_with_one_line(tmp_path):
    (tmp_path / "a-file").write_text("x")
    path = tmp_path / "a-file" / "db.sqlite3"  # its folder is a file: it cannot be created
    env = {key: value for key, value in os.environ.items() if key != "MONGO_URI"}
    env.update(EMBEDDED_DB=str(path), DATA_DIR=str(write_data_dir(tmp_path / "data")), PORT="0")
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: cannot open the embedded database {path}: ")
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- pinned by mutation testing


def test_ping_is_false_and_logged_when_the_connection_fails(tmp_path, caplog):
    store = database.connect(path=tmp_path / "ping.sqlite3")
    assert store.ping() is True
    store._connection().close()  # the thread's connection, closed under the store
    with caplog.at_level(logging.WARNING, logger="store_sqlite"):
        assert store.ping() is False
    assert [r.getMessage() for r in caplog.records] == [
        "database ping failed: Cannot operate on a closed database."]


def test_close_closes_the_connection_and_the_store_opens_a_new_one(tmp_path):
    import sqlite3

    import threading

    store = database.connect(path=tmp_path / "close.sqlite3")
    first = store._connection()
    assert store._connection() is first  # one connection per thread, kept
    other = []
    thread = threading.Thread(target=lambda: other.append(store._connection()))
    thread.start()
    thread.join(30)
    assert other and other[0] is not first  # another thread has its own
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")
    assert store.count_reports() == 0  # a new connection, opened on demand
    assert store._connection() is not first
    store.close()
    store.close()  # closing twice is harmless
    errors = []

    def close_in_a_thread_that_never_used_it():
        try:
            store.close()
        except Exception as error:  # noqa: BLE001 - the assertion below shows it
            errors.append(error)

    thread = threading.Thread(target=close_in_a_thread_that_never_used_it)
    thread.start()
    thread.join(30)
    assert errors == []


def test_renewing_a_lease_pushes_its_expiry_a_lease_period_ahead(tmp_path, monkeypatch):
    import store_sqlite

    store = database.connect(path=tmp_path / "renew.sqlite3")
    now = [1_000_000_000]  # µs: taken at 1,000 s, renewed half a second later
    monkeypatch.setattr(store_sqlite, "_now_us", lambda: now[0])

    def expiry():
        return store._connection().execute("SELECT expires_us FROM leases WHERE holder = 'holder'").fetchone()[0]

    assert store._try_lease("read", "holder")
    assert expiry() == 1_060_000_000  # LEASE_SECONDS = 60 later
    now[0] = 1_000_500_000
    assert store._renew_lease("read", "holder") is True
    assert expiry() == 1_060_500_000
    assert store._renew_lease("write", "holder") is False  # not in that mode
    assert store._renew_lease("read", "someone else") is False


def test_a_number_text_of_the_wrong_length_is_refused():
    from store_sqlite import SqliteStore

    assert SqliteStore._numbers("3,-1,9000000000000000000", 3).tolist() == [3, -1, 9_000_000_000_000_000_000]
    assert SqliteStore._numbers(None, 0).tolist() == []
    with pytest.raises(ValueError, match="^expected 3 numbers from the database, read 2$"):
        SqliteStore._numbers("1,2", 3)


def test_polls_read_back_with_the_categories_the_csv_reader_gives(tmp_path):
    """read_chunk's store_id is a categorical over the chunk's sorted ids, of the same type as
    sources.read_store_status gives (so the engine sees one kind of frame from a file or a store)."""
    import sources

    data = write_data_dir(tmp_path / "data")
    store = database.connect(path=tmp_path / "cats.sqlite3")
    database.load_dir(store, data)
    from_store = store.read_chunk(["worked", "allday"], 0, FAR_FUTURE_US)[0]["store_id"].dtype
    from_file = sources.READERS["store_status.csv"](data / "store_status.csv", file="s").frame["store_id"].dtype
    assert list(from_store.categories) == ["allday", "worked"]
    assert from_store.categories.dtype == from_file.categories.dtype


def test_a_load_reports_its_rows_batch_by_batch(tmp_path, monkeypatch):
    import store_sqlite

    monkeypatch.setattr(store_sqlite, "WRITE_BATCH_ROWS", 2)
    store = database.connect(path=tmp_path / "batches.sqlite3")
    frame = pd.DataFrame({"store_id": list("abcde"), "timestamp_us": [1, 2, 3, 4, 5], "active": [True] * 5})
    calls = []
    assert store.load_polls(frame, calls.append) == 5
    assert calls == [2, 2, 1]
    assert store.report_store_ids(10) == list("abcde")


def test_the_spec_opens_the_same_file_in_another_connection(tmp_path):
    store = database.connect(path=tmp_path / "sub" / ".." / "spec.sqlite3")
    store.create_report("a" * 32, None)
    assert store.spec() == {"path": str(tmp_path / "spec.sqlite3")}  # resolved: another process may start elsewhere
    assert database.connect(**store.spec()).find_report("a" * 32)["status"] == "Running"


def test_instants_are_stored_as_integer_microseconds(tmp_path):
    """The file's documented format: every instant an INTEGER count of microseconds (other tools read it)."""
    store = database.connect(path=tmp_path / "types.sqlite3")
    before = time.time_ns() // 1000
    store.create_report("a" * 32, None)
    store.complete_report("a" * 32, b"x\n", 0)
    assert store._try_lease("read", "holder")
    after = time.time_ns() // 1000
    row = store._connection().execute(
        "SELECT typeof(created_us), typeof(heartbeat_us), typeof(finished_us), created_us, finished_us FROM reports"
    ).fetchone()
    assert row[:3] == ("integer", "integer", "integer")
    assert before <= row[3] <= row[4] <= after
    assert store._connection().execute("SELECT typeof(expires_us) FROM leases").fetchone() == ("integer",)


def test_migrate_rebuilds_a_changed_index_recreates_a_missing_one_and_reports_what_fails(tmp_path, caplog):
    import store_sqlite

    store = database.connect(path=tmp_path / "migrate.sqlite3")
    connection = store._connection()

    def declared():
        return dict(connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))

    with caplog.at_level(logging.INFO, logger="store_sqlite"):
        assert store.migrate() == []  # all up to date: nothing rebuilt, nothing said
    assert caplog.records == []
    connection.execute("DROP INDEX storeStatus_time")
    connection.execute("CREATE TABLE storeStatus_time (x)")  # the name is taken: the index cannot be made
    connection.execute("DROP INDEX reports_created")
    connection.execute("CREATE INDEX reports_created ON reports (created_us)")  # an older definition
    connection.execute("DROP INDEX reports_status_heartbeat")  # missing, and declared after the others
    with caplog.at_level(logging.INFO, logger="store_sqlite"):
        assert store.migrate() == ["storeStatus_time: there is already a table named storeStatus_time"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "could not create index storeStatus_time: there is already a table named storeStatus_time"),
        ("INFO", "index reports_created changed: rebuilding it"),
    ]
    indexes = declared()
    for name in ("businessHours_store", "reports_created", "reports_status_heartbeat"):
        assert indexes[name] == store_sqlite.INDEXES[name]
    assert "storeStatus_time" not in indexes
