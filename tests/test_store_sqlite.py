"""The embedded SQLite store: one persistent file, shared by processes, seeded once, stopped early by
a DATA_DIR that cannot seed it, and the same report bytes as MongoDB (mongomock) and the CSV files."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app as app_module
import database
import report_csv
import reportGenerator
import utils
from app import create_app
from tests.conftest import FAR_FUTURE_US, TINY_REPORT, free_port, polls_of, stop_process, write_data_dir

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
    loaders = [
        subprocess.Popen(
            [sys.executable, "database.py", "load", str(folder)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
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
    parameters = {"ids": json.dumps(["allday", "worked"]), "since_block": 0, "now_block": 3_000}
    plans = {
        name: _plan(store, getattr(store, name), parameters) for name in ("CHUNK_POLLS", "CHUNK_HOURS", "CHUNK_ZONES")
    }
    for name, plan in plans.items():
        scans = [step for step in plan if step.startswith("SCAN")]
        assert scans == ["SCAN j VIRTUAL TABLE INDEX 1:"], (name, plan)  # the json_each list, nothing else
    assert (
        "SEARCH p USING INDEX sqlite_autoindex_pollBlocks_1 (store_id=? AND block>? AND block<?)"
        in plans["CHUNK_POLLS"]
    )
    assert (
        "SEARCH q USING COVERING INDEX sqlite_autoindex_pollBlocks_1 (store_id=? AND block<?)" in plans["CHUNK_POLLS"]
    )
    assert "SEARCH z USING PRIMARY KEY (store_id=?)" in plans["CHUNK_ZONES"]
    assert "SEARCH h USING INDEX businessHours_store (store_id=?)" in plans["CHUNK_HOURS"]


def test_the_stores_and_the_newest_and_oldest_polls_are_read_from_small_indexes(tmp_path):
    """What /health, the data summary and a report's list of stores ask is answered from the blocks' indexes
    (a seek for the newest poll), never by reading the blocks' arrays."""
    store = database.connect(path=tmp_path / "small.sqlite3")
    database.load_dir(store, write_data_dir(tmp_path / "data"))
    assert any(
        "SEARCH pollBlocks USING COVERING INDEX pollBlocks_span" in step
        for step in _plan(store, "SELECT max(last_us) FROM pollBlocks", ())
    )
    for query in (
        "SELECT count(DISTINCT store_id) FROM pollBlocks",
        "SELECT coalesce(sum(polls), 0) FROM pollBlocks",
        "SELECT min(first_us) FROM pollBlocks",
        "SELECT store_id FROM pollBlocks GROUP BY store_id HAVING min(first_us) <= 5 ORDER BY store_id",
    ):
        assert all("COVERING INDEX" in step for step in _plan(store, query, ()) if step.startswith("SCAN")), query
    database.load_file(
        store, "store_status.csv", b"store_id,status,timestamp_utc\nnewest,active,2023-02-01 00:00:00 UTC\n"
    )
    assert store.latest_poll_us() == 1675209600000000
    assert store.migrate() == []


def test_polls_are_kept_one_row_a_store_and_week_and_read_back_exactly(tmp_path):
    """A block holds one store's polls of one week from the epoch (weeks start on Thursdays 00:00 UTC); a report
    reads the window's polls and each store's last poll before it, however far back, and nothing else."""
    import store_sqlite

    week = store_sqlite.BLOCK_US
    thursday = 2_799 * week  # 2023-08-24 00:00 UTC
    stamps = [thursday - week - 1, thursday - 1, thursday, thursday + 5, thursday + 2 * week + 7]
    frame = pd.DataFrame(
        {"store_id": ["a"] * 5 + ["b"], "timestamp_us": stamps + [thursday + 1], "active": [True, False] * 3}
    )
    store = database.connect(path=tmp_path / "blocks.sqlite3")
    store.load_polls(frame)
    blocks = store._connection().execute(
        "SELECT store_id, block, polls, first_us, last_us FROM pollBlocks ORDER BY 1, 2"
    )
    assert blocks.fetchall() == [
        ("a", 2_797, 1, stamps[0], stamps[0]),
        ("a", 2_798, 1, stamps[1], stamps[1]),
        ("a", 2_799, 2, stamps[2], stamps[3]),
        ("a", 2_801, 1, stamps[4], stamps[4]),
        ("b", 2_799, 1, thursday + 1, thursday + 1),
    ]
    assert _poll_rows(store._connection()) == [
        ("a", stamps[0], "active"),
        ("a", stamps[1], "inactive"),
        ("a", stamps[2], "active"),
        ("a", stamps[3], "inactive"),
        ("a", stamps[4], "active"),
        ("b", thursday + 1, "inactive"),
    ]

    def read(since_us: int, now_us: int) -> list[tuple]:
        polls = store.read_chunk(["b", "a"], since_us, now_us)[0]
        return sorted(zip(polls["store_id"].astype(str), polls["timestamp_us"].tolist(), polls["active"].tolist()))

    # the window from the Thursday: a's last poll before it is in the block before; b has none before
    assert read(thursday, thursday + week) == [
        ("a", stamps[1], False),
        ("a", stamps[2], True),
        ("a", stamps[3], False),
        ("b", thursday + 1, False),
    ]
    # a window weeks later reaches back over an empty week to a's last poll
    assert read(thursday + 2 * week, thursday + 3 * week) == [
        ("a", stamps[3], False),
        ("a", stamps[4], True),
        ("b", thursday + 1, False),
    ]
    # a window inside a block: the poll before it from the same block, none after `now`
    assert read(thursday + 1, thursday + 4) == [("a", stamps[2], True), ("b", thursday + 1, False)]
    assert read(0, stamps[0] - 1) == []


def test_one_load_with_repeated_keys_keeps_the_later_row(tmp_path):
    """Rows are written sorted by key; of two rows with the same key the later in the frame wins."""
    store = database.connect(path=tmp_path / "repeats.sqlite3")
    frame = pd.DataFrame(
        {
            "store_id": ["b", "a", "b", "a", "b"],
            "timestamp_us": [5, 7, 5, 7, 5],
            "active": [True, False, False, True, True],
        }
    )
    assert store.load_polls(frame) == 5
    polls = store.read_chunk(["a", "b"], 0, 10)[0]
    assert sorted(zip(polls["store_id"], polls["timestamp_us"], polls["active"])) == [("a", 7, True), ("b", 5, True)]
    store.load_polls(frame.iloc[[1, 2]])  # into blocks that hold polls at those instants: the upload's win
    polls = store.read_chunk(["a", "b"], 0, 10)[0]
    assert sorted(zip(polls["store_id"], polls["timestamp_us"], polls["active"])) == [("a", 7, False), ("b", 5, False)]


# --------------------------------------------------------------------------- seeding and DATA_DIR


def test_seeding_logs_per_file_and_happens_once(tmp_path, data_dir, caplog):
    config = {
        "MONGO_URI": "",
        "EMBEDDED_DB": str(tmp_path / "db.sqlite3"),
        "DATA_DIR": str(data_dir),
        "REPORTS_DIR": str(tmp_path / "r"),
    }
    with caplog.at_level(logging.INFO, logger="app"):
        first = create_app(config)
    seeded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("seeded")]
    assert seeded == [
        f"seeded {data_dir / 'store_status.csv'}: 5 loaded, 0 rejected",
        f"seeded {data_dir / 'menu_hours.csv'}: 1 loaded, 0 rejected",
        f"seeded {data_dir / 'timezones.csv'}: 1 loaded, 0 rejected",
    ]
    caplog.clear()
    (data_dir / "store_status.csv").write_text("store_id,status,timestamp_utc\nother,active,2023-01-25T00:00:00Z\n")
    with caplog.at_level(logging.INFO, logger="app"):
        second = create_app(config)  # not empty: reused as it is, not seeded again
    assert not [r for r in caplog.records if r.getMessage().startswith("seeded")]
    assert second.extensions["store"].report_store_ids(FAR_FUTURE_US) == ["allday", "late", "worked"]
    for application in (first, second):
        application.extensions["reports"].shutdown(wait=True)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: (tmp / "a-file").write_text("x") and tmp / "a-file", "is not a folder"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "holds none of"),
    ],
)
def test_an_explicit_data_dir_that_cannot_seed_stops_start_up_with_one_line(tmp_path, make, expected):
    data_dir = make(tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "MONGO_URI"}
    env.update(DATA_DIR=str(data_dir), EMBEDDED_DB=str(tmp_path / "db.sqlite3"), PORT="0")
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"error: DATA_DIR {data_dir} {expected}" + (
        " store_status.csv, menu_hours.csv, timezones.csv" if expected == "holds none of" else ""
    )
    assert "Traceback" not in done.stderr


def test_the_default_data_dir_missing_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setitem(app_module.DEFAULTS, "DATA_DIR", str(tmp_path / "no-data-here"))
    application = create_app(
        {"MONGO_URI": "", "EMBEDDED_DB": str(tmp_path / "db.sqlite3"), "REPORTS_DIR": str(tmp_path / "r")}
    )
    assert "does not exist: starting with whatever the database holds" in caplog.text
    assert application.extensions["store"].is_empty()
    application.extensions["reports"].shutdown(wait=True)


# --------------------------------------------------------------------------- a restart keeps everything


def _call(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _start(tmp_path: Path, port: int, data_dir: Path) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in ("MONGO_URI", "API_TOKEN")}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        DATA_DIR=str(data_dir),
        REPORTS_DIR=str(tmp_path / "reports"),
        EMBEDDED_DB=str(tmp_path / "db" / "kept.sqlite3"),
    )
    server = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    upload = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="store_status"; filename="s.csv"\r\n'
        "Content-Type: text/csv\r\n\r\nstore_id,status,timestamp_utc\n"
        "uploaded,inactive,2023-01-24 12:30:00 UTC\n"
        f"\r\n--{boundary}--\r\n"
    ).encode()
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
    lambda s: (
        f"2023-01-{15 + s // 86400:02d} {s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
        f".{s * 7919 % 1000000:06d} UTC"
    )
)
polls = st.lists(st.tuples(store_ids, st.sampled_from(["active", "inactive"]), instants), min_size=1, max_size=40)
hours = st.lists(st.tuples(store_ids, st.integers(0, 6), st.integers(0, 23), st.integers(0, 23)), max_size=12)
zones = st.lists(
    st.tuples(store_ids, st.sampled_from(["America/New_York", "Asia/Kolkata", "UTC", "America/Los_Angeles"])),
    max_size=5,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(polls=polls, hours=hours, zones=zones)
def test_sqlite_mongomock_and_the_csv_files_give_the_same_bytes(tmp_path_factory, polls, hours, zones):
    tmp = tmp_path_factory.mktemp("same")
    data = write_data_dir(
        tmp / "data",
        status="store_id,status,timestamp_utc\n" + "".join(f"{s},{a},{t}\n" for s, a, t in polls),
        hours="store_id,day,start_time_local,end_time_local\n"
        + "".join(f"{s},{d},{a:02d}:00:00,{b:02d}:30:00\n" for s, d, a, b in hours),
        zones="store_id,timezone_str\n" + "".join(f"{s},{z}\n" for s, z in dict(zones).items()),
    )
    expected, _, _ = reportGenerator.report_from_dir(data)
    expected_bytes = report_csv.report_csv_bytes(expected)
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
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
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
    assert [r.getMessage() for r in caplog.records] == ["database ping failed: Cannot operate on a closed database."]


def test_close_closes_the_connection_and_the_store_opens_a_new_one(tmp_path):
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


def test_a_text_of_the_wrong_length_is_refused():
    from store_sqlite import SqliteStore

    assert SqliteStore._numbers("3,-1,9000000000000000000", 3).tolist() == [3, -1, 9_000_000_000_000_000_000]
    assert SqliteStore._numbers(None, 0).tolist() == []
    with pytest.raises(ValueError, match="^expected 3 numbers from the database, read 2$"):
        SqliteStore._numbers("1,2", 3)
    assert SqliteStore._texts("09:00:00,17:30:00", 2) == ["09:00:00", "17:30:00"]
    assert SqliteStore._texts(None, 0) == []
    with pytest.raises(ValueError, match="^expected 1 values from the database, read 2$"):
        SqliteStore._texts("09:00:00,17:30:00", 1)


def test_a_block_whose_arrays_disagree_is_refused(tmp_path):
    """The table refuses a block whose arrays do not hold `polls` values each; a reader refuses arrays that
    disagree with each other."""
    import store_sqlite

    store = database.connect(path=tmp_path / "damaged.sqlite3")
    for stamps, statuses in ((b"\0" * 15, b"\1\1"), (b"\0" * 16, b"\1")):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            store._connection().execute("INSERT INTO pollBlocks VALUES ('a', 0, 2, 0, 0, ?, ?)", (stamps, statuses))
    assert store_sqlite._polls_of_blocks([(0, np.array([5, 6], dtype="<i8").tobytes(), b"\1\0")])[1].tolist() == [5, 6]
    with pytest.raises(ValueError, match="^the database's poll blocks are damaged: 2 instants for 1 statuses$"):
        store_sqlite._polls_of_blocks([(0, np.array([5, 6], dtype="<i8").tobytes(), b"\1")])


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
    row = (
        store._connection()
        .execute(
            "SELECT typeof(created_us), typeof(heartbeat_us), typeof(finished_us), created_us, finished_us FROM reports"
        )
        .fetchone()
    )
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
    connection.execute("DROP INDEX pollBlocks_span")
    connection.execute("CREATE TABLE pollBlocks_span (x)")  # the name is taken: the index cannot be made
    connection.execute("DROP INDEX reports_created")
    connection.execute("CREATE INDEX reports_created ON reports (created_us)")  # an older definition
    connection.execute("DROP INDEX reports_status_heartbeat")  # missing, and declared after the others
    with caplog.at_level(logging.INFO, logger="store_sqlite"):
        assert store.migrate() == ["pollBlocks_span: there is already a table named pollBlocks_span"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "could not create index pollBlocks_span: there is already a table named pollBlocks_span"),
        ("INFO", "index reports_created changed: rebuilding it"),
    ]
    indexes = declared()
    for name in ("businessHours_store", "reports_created", "reports_status_heartbeat"):
        assert indexes[name] == store_sqlite.INDEXES[name]
    assert "pollBlocks_span" not in indexes


# --------------------------------------------------------------------------- helpers of the storage contract

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCHEMA_1_FILE = FIXTURES / "schema_v1.sqlite3"
COMPLETE_V1, FAILED_V1 = "0" * 31 + "1", "0" * 31 + "2"
SCHEMA_2_FILE = FIXTURES / "schema_v2.sqlite3"
COMPLETE_V2, FAILED_V2, EARLIER_V2 = "0" * 31 + "1", "0" * 31 + "2", "0" * 31 + "3"
STEP_2 = (
    "schema 1 -> 2: add the uploads journal, reports.as_of_after_newest_poll, the health probe row and version marks"
)
STEP_3 = (
    "schema 2 -> 3: add reports.trigger, the history of report rows (from every Complete report's stored CSV), the "
    "schedule's ticks and the alert state and deliveries"
)
STEP_4 = "schema 3 -> 4: keep the polls in blocks of one store and week (pollBlocks, from storeStatus's rows)"


def _polls(count: int, prefix: str = "s", stores: int = 100, start_us: int = 1_674_000_000_000_000) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "store_id": [f"{prefix}{i % stores:05d}" for i in range(count)],
            "timestamp_us": start_us + np.arange(count, dtype=np.int64) * 1_000_000,
            "active": np.arange(count) % 3 != 0,
        }
    )


def _hours(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["store_id", "day", "start_s", "end_s"])


def _zones(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["store_id", "timezone_str"])


def _raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, outside the store."""
    return sqlite3.connect(path, isolation_level=None)


def _count(store, table: str = "polls") -> int:
    """The rows of a table; "polls": the polls in every block."""
    query = "SELECT coalesce(sum(polls), 0) FROM pollBlocks" if table == "polls" else f"SELECT count(*) FROM {table}"
    return store._connection().execute(query).fetchone()[0]


def _poll_rows(connection: sqlite3.Connection) -> list[tuple]:
    """Every stored poll as the old storeStatus table held it, (store_id, timestamp_us, status) in key order,
    decoded from pollBlocks; checks each block holds its own week's instants, ascending and distinct."""
    import store_sqlite

    rows = []
    blocks = connection.execute(
        "SELECT store_id, block, polls, first_us, last_us, timestamps, statuses FROM pollBlocks ORDER BY 1, 2"
    )
    for store_id, block, polls, first_us, last_us, stamps, statuses in blocks:
        instants = np.frombuffer(stamps, dtype="<i8").tolist()
        assert len(instants) == polls == len(statuses) and set(statuses) <= {0, 1}
        assert instants == sorted(set(instants)) and (instants[0], instants[-1]) == (first_us, last_us)
        assert {instant // store_sqlite.BLOCK_US for instant in instants} == {block}
        rows += [(store_id, t, "active" if a else "inactive") for t, a in zip(instants, statuses)]
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- one upload: all of it or none


class Stop(RuntimeError):
    pass


def _stop_at_call(number: int):
    calls = []

    def on_rows(rows: int) -> None:
        calls.append(rows)
        if len(calls) == number:
            raise Stop("the lease was lost")

    return on_rows


@pytest.mark.parametrize(
    "writer, frame, table",
    [
        ("load_polls", _polls(9, "new"), "pollBlocks"),
        ("replace_hours", _hours([("new", d, 0, 3600) for d in range(7)] + [("kept", 0, 0, 60)]), "businessHours"),
        ("replace_zones", _zones([(f"new{i}", "UTC") for i in range(5)] + [("kept", "Asia/Kolkata")]), "timezones"),
    ],
)
def test_a_writer_stopped_between_batches_keeps_nothing(tmp_path, monkeypatch, writer, frame, table):
    """on_rows raises after the second batch (a lost lease): no row of the call is visible, the upload is
    not marked Complete, and the staging tables are gone."""
    import store_sqlite

    monkeypatch.setattr(store_sqlite, "WRITE_BATCH_ROWS", 2)
    store = database.connect(path=tmp_path / "stop.sqlite3")
    store.load_polls(_polls(3, "kept"))
    store.replace_hours(_hours([("kept", 1, 0, 60)]))
    store.replace_zones(_zones([("kept", "UTC")]))
    before = store._connection().execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    upload_id = store.begin_upload("f.csv", "store_status.csv", "0" * 64, len(frame), 0)
    with pytest.raises(Stop):
        getattr(store, writer)(frame, _stop_at_call(2), upload_id=upload_id)
    assert store._connection().execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() == before
    assert store._connection().execute("SELECT status, written FROM uploads").fetchall() == [("Running", 0)]
    assert store._connection().execute("SELECT name FROM sqlite_temp_master").fetchall() == []
    assert getattr(store, writer)(frame, upload_id=upload_id) == len(frame)  # the same call, not stopped
    assert store._connection().execute("SELECT status, written FROM uploads").fetchall() == [("Complete", len(frame))]


def test_an_upload_leaves_no_temp_database_behind(tmp_path):
    """The TEMP database an upload of hours staged in is closed after it, not just emptied: kept open it holds
    its file (over 2 GB after 15M polls, when polls were staged too), and the next upload staged on the same
    connection found it "malformed" (seeding 10x data, SQLite 3.40).  Polls are not staged at all."""
    store = database.connect(path=tmp_path / "temp.sqlite3")
    store.load_polls(_polls(200_000))
    assert store._connection().execute("PRAGMA temp.page_count").fetchone()[0] <= 1
    store.replace_hours(_hours([(f"s{i:06d}", i % 7, 0, 3600) for i in range(200_000)]))
    assert store._connection().execute("PRAGMA temp.page_count").fetchone()[0] <= 1
    store.replace_zones(_zones([("s00001", "UTC")]))  # the next upload on the same connection
    assert _count(store) == 200_000 and _count(store, "businessHours") == 200_000


def test_the_wal_file_is_cut_back_after_a_large_upload(tmp_path, monkeypatch):
    """A large upload's transaction grows the WAL file; once checkpointed, the next write cuts it back to
    WAL_KEEP_BYTES instead of keeping it on disk while the service runs."""
    import store_sqlite

    monkeypatch.setattr(store_sqlite, "WAL_KEEP_BYTES", 65_536)
    store = database.connect(path=tmp_path / "wal.sqlite3")
    wal = Path(f"{store.path}-wal")
    store.load_polls(_polls(300_000, stores=3_000))
    grown = wal.stat().st_size
    assert grown > 1_048_576
    assert store._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    store.create_report("a" * 32, None)  # the next write starts the WAL over
    assert wal.stat().st_size <= 65_536 < grown
    assert _count(store) == 300_000


KILLED_LOADER = """
import sys, time
import numpy as np, pandas as pd
import database
store = database.connect(path=sys.argv[1])
count = int(sys.argv[2])
frame = pd.DataFrame({"store_id": [f"k{i % 500:04d}" for i in range(count)],
                      "timestamp_us": 1_700_000_000_000_000 + np.arange(count, dtype=np.int64),
                      "active": np.ones(count, dtype=bool)})
upload_id = store.begin_upload("big.csv", "store_status.csv", "0" * 64, count, 0)
staged = [0]
def on_rows(rows):
    staged[0] += rows
    print(staged[0], flush=True)
store.load_polls(frame, on_rows, upload_id=upload_id)
print("published", flush=True)
"""


def test_a_kill_at_any_moment_leaves_the_whole_upload_or_none_of_it(tmp_path):
    """kill -9 after the first batch of blocks, after the last one (committing) and after: the table holds every
    poll of the upload or none, keeps its indexes, the file is sound, and the journal says Complete exactly
    when the polls are there."""
    path = tmp_path / "killed.sqlite3"
    store = database.connect(path=path)
    store.load_polls(_polls(1_000, "old"))
    count = 300_000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outcomes = []
    # after the first batch written, after the last one (committing), and a little later (committed or not)
    for wait_for, delay in (
        ("first", 0.0),
        (str(count), 0.0),
        (str(count), 0.05),
        (str(count), 0.2),
        ("published", 0.0),
    ):
        loader = subprocess.Popen(
            [sys.executable, "-c", KILLED_LOADER, str(path), str(count)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            for line in loader.stdout:
                if line.strip() == wait_for or wait_for == "first":
                    break
            time.sleep(delay)
        finally:
            loader.kill()
            loader.wait(30)
        polls = _count(store)
        outcomes.append(polls)
        assert polls in (1_000, 1_000 + count), (wait_for, delay, polls)
        indexes = {n for (n,) in store._connection().execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"pollBlocks_span", "pollBlocks_stores"} <= indexes
        assert store._connection().execute("PRAGMA integrity_check").fetchone() == ("ok",)
        newest = store.list_uploads(1)[0]
        assert (newest["status"] == "Complete") == (polls > 1_000), newest
        if newest["status"] != "Complete":
            assert newest["error"] == "the process loading it stopped; nothing of it was kept"
        if polls > 1_000:  # take the upload away again for the next round
            store._connection().execute("DELETE FROM pollBlocks WHERE store_id LIKE 'k%'")
    assert outcomes[0] == 1_000 and outcomes[-1] == 1_000 + count


def test_no_other_connection_ever_sees_part_of_an_upload(tmp_path):
    """Another connection, reading all the while an upload writes its blocks batch by batch, sees the polls
    before it or after it, never some of them."""
    path = tmp_path / "whole.sqlite3"
    store = database.connect(path=path)
    store.load_polls(_polls(1_000, "old"))
    seen, during, done = set(), [], threading.Event()
    reads = threading.Condition()
    state = {"reads": 0, "latest": None}

    def watch():
        watcher = _raw(path)
        while not done.is_set():
            polls = watcher.execute("SELECT coalesce(sum(polls), 0) FROM pollBlocks").fetchone()[0]
            seen.add(polls)
            with reads:
                state["reads"], state["latest"] = state["reads"] + 1, polls
                reads.notify_all()

    def on_rows(rows: int) -> None:  # a batch is written, the transaction still open: wait for a read made now
        with reads:
            before = state["reads"]
            assert reads.wait_for(lambda: state["reads"] > before + 1, timeout=30)
            during.append(state["latest"])

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        store.load_polls(_polls(300_000, stores=3_000), on_rows)
    finally:
        done.set()
        thread.join(30)
    assert len(during) >= 2 and set(during) == {1_000}  # read while the blocks were being written: none of them
    assert seen <= {1_000, 301_000}
    assert _count(store) == 301_000


def test_loading_the_same_polls_twice_changes_nothing_and_a_later_load_wins(tmp_path):
    store = database.connect(path=tmp_path / "again.sqlite3")
    frame = _polls(1_000)
    store.load_polls(frame)
    first = store._connection().execute("SELECT * FROM pollBlocks ORDER BY 1, 2").fetchall()
    store.load_polls(frame)
    assert store._connection().execute("SELECT * FROM pollBlocks ORDER BY 1, 2").fetchall() == first
    flipped = frame.assign(active=~frame["active"]).iloc[:10]
    store.load_polls(flipped)
    polls = store.read_chunk(sorted(set(flipped["store_id"])), 0, FAR_FUTURE_US)[0]
    got = dict(zip(zip(polls["store_id"].astype(str), polls["timestamp_us"]), polls["active"]))
    assert all(got[(s, t)] == a for s, t, a in zip(flipped["store_id"], flipped["timestamp_us"], flipped["active"]))
    assert _count(store) == 1_000


def test_replacing_hours_and_zones_never_touches_another_stores_rows(tmp_path):
    store = database.connect(path=tmp_path / "replace.sqlite3")
    store.replace_hours(_hours([("a", 0, 0, 60), ("a", 1, 0, 60), ("b", 2, 3600, 7200)]))
    store.replace_zones(_zones([("a", "UTC"), ("b", "Asia/Kolkata")]))
    store.replace_hours(_hours([("a", 5, 60, 120), ("c", 6, 0, 0)]))
    store.replace_zones(_zones([("a", "America/New_York"), ("c", "UTC"), ("c", "Europe/Paris")]))  # the later wins
    hours = store._connection().execute("SELECT * FROM businessHours ORDER BY store_id, day").fetchall()
    assert hours == [
        ("a", 5, "00:01:00", "00:02:00"),
        ("b", 2, "01:00:00", "02:00:00"),
        ("c", 6, "00:00:00", "00:00:00"),
    ]
    zones = store._connection().execute("SELECT * FROM timezones ORDER BY store_id").fetchall()
    assert zones == [("a", "America/New_York"), ("b", "Asia/Kolkata"), ("c", "Europe/Paris")]


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs of the test's own (needs root), unmounted at the end."""
    where = tmp_path / "small-disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 3 MB tmpfs to fill (this test needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as file, pytest.raises(OSError) as full:
        while True:
            file.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def test_a_full_disk_keeps_nothing_of_an_upload_or_a_report_and_the_store_goes_on(small_disk):
    path = small_disk / "db.sqlite3"
    store = database.connect(path=path)
    store.load_polls(_polls(2, "kept"))
    store.create_report("a" * 32, None)
    upload_id = store.begin_upload("big.csv", "store_status.csv", "0" * 64, 20_000, 0)
    filler = _fill(small_disk)
    try:
        with pytest.raises(database.DiskFull) as full:
            store.load_polls(_polls(20_000), upload_id=upload_id)
        assert (full.value.where, full.value.what) == (str(path), "upload")
        assert full.value.free_bytes is not None and full.value.free_bytes < 100_000
        assert str(full.value).startswith(f"the disk holding {path} is full")
        with pytest.raises(database.DiskFull) as full:
            store.complete_report("a" * 32, b"x" * 1_000_000, 1)
        assert full.value.what == "report"
        # nothing kept, and reads still answer
        assert store.data_summary()["polls"] == 2 and store.report_store_ids(FAR_FUTURE_US) == [
            "kept00000",
            "kept00001",
        ]
        assert store.find_report("a" * 32)["status"] == "Running"
        assert _count(store, "reportCsv") == 0
        health = store.health(0)
        assert health["write_probe"] == "failed"
        assert f"the disk holding {path} is full: the database cannot be written" in health["problems"]
    finally:
        filler.unlink()
    store.fail_upload(upload_id, str(full.value))
    assert (
        store.load_polls(
            _polls(20_000), upload_id=store.begin_upload("big.csv", "store_status.csv", "0" * 64, 20_000, 0)
        )
        == 20_000
    )
    assert store.complete_report("a" * 32, b"x" * 1_000, 1) is True
    assert [u["status"] for u in store.list_uploads()] == ["Complete", "Failed"]
    assert store.data_summary()["polls"] == 20_002 and store.health(0)["problems"] == []
    store.close()


def test_a_filesystem_enospc_is_a_full_disk_too(tmp_path):
    store = database.connect(path=tmp_path / "enospc.sqlite3")
    with pytest.raises(database.DiskFull) as full, store._disk_full_as("upload"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert full.value.what == "upload" and full.value.where == str(store.path)
    with pytest.raises(sqlite3.OperationalError), store._disk_full_as("write"):
        raise sqlite3.OperationalError("disk I/O error")  # other errors pass through as they are


# --------------------------------------------------------------------------- the file is ours: marks, migration


def test_a_new_file_is_made_at_the_current_schema_with_the_marks(tmp_path):
    path = tmp_path / "new.sqlite3"
    store = database.connect(path=path)
    raw = _raw(path)
    assert raw.execute("PRAGMA application_id").fetchone()[0] == database.APPLICATION_ID
    assert raw.execute("PRAGMA user_version").fetchone()[0] == database.SCHEMA_VERSION == store.schema_version
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.migrations_applied == []
    again = database.connect(path=path)
    assert again.schema_version == 4 and again.migrations_applied == []
    empty = tmp_path / "empty.sqlite3"
    empty.touch()  # an empty file is new too
    assert database.connect(path=empty).schema_version == 4


def _copy_of_schema_1(tmp_path: Path) -> Path:
    path = tmp_path / "v1.sqlite3"
    path.write_bytes(SCHEMA_1_FILE.read_bytes())
    return path


def test_the_previous_releases_file_opens_migrated_with_everything_in_it(tmp_path):
    (tmp_path / "pristine").mkdir()  # a copy to read: even a read-only look at a WAL file leaves -shm and -wal files
    pristine = _raw(_copy_of_schema_1(tmp_path / "pristine"))
    expected_csv = pristine.execute("SELECT data FROM reportCsv WHERE report_id = ?", (COMPLETE_V1,)).fetchone()[0]
    expected_polls = pristine.execute("SELECT * FROM storeStatus ORDER BY 1, 2").fetchall()
    expected_hours = pristine.execute("SELECT * FROM businessHours ORDER BY 1, 2").fetchall()
    expected_zones = pristine.execute("SELECT * FROM timezones ORDER BY 1").fetchall()
    pristine.close()
    path = _copy_of_schema_1(tmp_path)
    assert _raw(path).execute("PRAGMA user_version").fetchone()[0] == 0
    store = database.connect(path=path)
    assert store.schema_version == 4
    assert store.migrations_applied == [STEP_2, STEP_3, STEP_4]
    raw = _raw(path)
    assert raw.execute("PRAGMA application_id").fetchone()[0] == database.APPLICATION_ID
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 4
    assert len(expected_polls) == 120
    assert _poll_rows(raw) == expected_polls
    assert raw.execute("SELECT * FROM businessHours ORDER BY 1, 2").fetchall() == expected_hours
    assert raw.execute("SELECT * FROM timezones ORDER BY 1").fetchall() == expected_zones
    complete = store.find_report(COMPLETE_V1)
    assert complete["status"] == "Complete" and complete["row_count"] == 3
    assert complete["as_of_after_newest_poll"] is False and complete["progress"]["phase"] == "computing"
    assert store.read_report_csv(complete) == bytes(expected_csv)
    assert complete["trigger"] == "api"
    failed = store.find_report(FAILED_V1)
    assert failed["status"] == "Failed" and failed["trigger"] == "api"
    assert failed["error"] == "the server stopped before the report finished; trigger it again"
    assert store.report_store_ids(FAR_FUTURE_US) == ["1481966498820158979", "42", "8419537941919820732"]
    assert _history_by_store(store, [complete]) == _expected_history([(complete, bytes(expected_csv))])
    assert store.list_uploads() == [] and store.health(0)["problems"] == []
    assert database.connect(path=path).migrations_applied == []  # once


def _shape(path: Path) -> dict:
    raw = _raw(path)
    tables = [n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    shape = {
        t: sorted(raw.execute(f"SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{t}')"))
        for t in tables
    }
    shape["indexes"] = sorted(raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
    shape["probe"] = raw.execute("SELECT id FROM healthProbe").fetchall()
    return shape


def test_a_migrated_file_has_the_same_tables_columns_and_indexes_as_a_new_one(tmp_path):
    database.connect(path=_copy_of_schema_1(tmp_path))
    database.connect(path=tmp_path / "new.sqlite3")
    assert _shape(tmp_path / "v1.sqlite3") == _shape(tmp_path / "new.sqlite3")


def test_a_file_of_the_first_release_without_progress_phase_migrates_too(tmp_path):
    path = _copy_of_schema_1(tmp_path)
    _raw(path).execute("ALTER TABLE reports DROP COLUMN progress_phase")  # as the very first release made it
    store = database.connect(path=path)
    assert store.migrations_applied and store.find_report(COMPLETE_V1)["status"] == "Complete"
    assert _shape(path) == _shape(database.connect(path=tmp_path / "new.sqlite3").path)


def _sqlite_file(path: Path, *statements: str) -> Path:
    raw = _raw(path)
    for statement in statements:
        raw.execute(statement)
    raw.close()
    return path


def _schema_1_with(tmp_path: Path, *statements: str) -> Path:
    path = _copy_of_schema_1(tmp_path)
    return _sqlite_file(path, *statements)


FOREIGN = {
    "not SQLite": (
        lambda tmp: (tmp / "f").write_bytes(b"SQLite format 2, or a spreadsheet\n" * 200) and tmp / "f",
        "is not this service's database: it is not a SQLite file (file is not a database)",
    ),
    "another application id": (
        lambda tmp: _sqlite_file(tmp / "f", "PRAGMA application_id = 1234", "CREATE TABLE t (x)"),
        "is not this service's database: its application_id is 0x000004d2, not 0x55505431",
    ),
    "another program's tables": (
        lambda tmp: _sqlite_file(tmp / "f", "CREATE TABLE customers (id, name)"),
        "is not this service's database: it holds tables this service never made (customers)",
    ),
    "schema 1 and one table more": (
        lambda tmp: _schema_1_with(tmp, "CREATE TABLE extra (x)"),
        "is not this service's database: it holds tables this service never made (extra)",
    ),
    "a reports table of another shape": (
        lambda tmp: _schema_1_with(tmp, "ALTER TABLE reports RENAME COLUMN csv_bytes TO size"),
        "is not this service's database: its reports table has other columns than this service's (csv_bytes, size)",
    ),
    "a table missing": (
        lambda tmp: _schema_1_with(tmp, "DROP TABLE leases"),
        "is not this service's database: it lacks tables of this service (leases)",
    ),
    "a user_version and no application id": (
        lambda tmp: _sqlite_file(tmp / "f", "PRAGMA user_version = 7"),
        ("is not this service's database: it has user_version 7 and no application_id"),
    ),
    "a foreign file in WAL mode": (
        lambda tmp: _sqlite_file(
            tmp / "f", "PRAGMA journal_mode=WAL", "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"
        ),
        "is not this service's database: it holds tables this service never made (t)",
    ),
    "a newer version of this service": (
        lambda tmp: _sqlite_file(
            tmp / "f",
            f"PRAGMA application_id = {database.APPLICATION_ID}",
            "PRAGMA user_version = 5",
            "CREATE TABLE storeStatus (x)",
        ),
        "was made by a newer version of this service (schema 5; this code knows up to 4)",
    ),
}


@pytest.mark.parametrize("name", FOREIGN)
def test_a_file_that_is_not_ours_is_refused_untouched(tmp_path, name):
    make, why = FOREIGN[name]
    path = make(tmp_path)
    before = _sha256(path)
    tables = (
        None
        if name == "not SQLite"
        else _raw(f"file:{path}?mode=ro").execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    )
    with pytest.raises(database.DatabaseRefused) as refused:
        database.connect(path=path)
    assert str(refused.value) == f"{path} {why}"
    assert "\n" not in str(refused.value)
    assert _sha256(path) == before
    if tables is not None:
        assert (
            _raw(f"file:{path}?mode=ro").execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
            == tables
        )


def test_a_crash_inside_a_migration_step_leaves_the_old_schema_whole(tmp_path, monkeypatch):
    import store_sqlite

    path = _copy_of_schema_1(tmp_path)
    real_step = store_sqlite.MIGRATIONS[0][2]

    def crashing_step(connection):
        real_step(connection)  # every statement of the step ran ...
        raise sqlite3.OperationalError("the power went")  # ... and then the process died before COMMIT

    monkeypatch.setattr(store_sqlite, "MIGRATIONS", [(2, "step two", crashing_step)])
    with pytest.raises(sqlite3.OperationalError):
        database.connect(path=path)
    raw = _raw(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
    assert raw.execute("PRAGMA application_id").fetchone()[0] == 0
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('uploads', 'healthProbe')").fetchone() == (0,)
    assert "as_of_after_newest_poll" not in {row[1] for row in raw.execute("PRAGMA table_info(reports)")}
    monkeypatch.undo()
    store = database.connect(path=path)
    assert store.schema_version == 4 and store.migrations_applied == [STEP_2, STEP_3, STEP_4]


OPENER = """
import json, sys, time
import database
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
store = database.connect(path=sys.argv[1])
print(json.dumps(store.migrations_applied))
"""


@pytest.mark.parametrize("old", [True, False], ids=["a schema 1 file", "a new file"])
def test_processes_opening_a_file_at_once_make_or_migrate_it_exactly_once(tmp_path, old):
    path = _copy_of_schema_1(tmp_path) if old else tmp_path / "new.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = str(time.time() + 3)  # every process imports first, then they open together
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(path), start],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [opener.communicate(timeout=120) for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * 4, results
    applied = [json.loads(out) for out, _ in results]
    # each step taken by exactly one of them (not always the same one: each step is a transaction of its own)
    assert sorted(step for steps in applied for step in steps) == ([STEP_2, STEP_3, STEP_4] if old else []), applied
    store = database.connect(path=path)
    assert store.schema_version == 4 and _count(store) == (120 if old else 0)
    assert _count(store, "reportHistory") == (3 if old else 0)  # the schema 1 file's Complete report, backfilled once
    assert _count(store, "healthProbe") == 1


def test_migrate_reconciles_the_uploads_index_too(tmp_path):
    store = database.connect(path=tmp_path / "idx.sqlite3")
    store._connection().execute("DROP INDEX uploads_at")
    assert store.migrate() == []
    plan = _plan(store, "SELECT upload_id FROM uploads ORDER BY at_us DESC, upload_id DESC LIMIT 3", ())
    assert any("uploads_at" in step for step in plan), plan


# --------------------------------------------------------------------------- the upload journal


def database_gone() -> str:
    return "the process loading it stopped; nothing of it was kept"


def test_the_upload_journal_records_running_complete_failed_and_dismissed(tmp_path):
    store = database.connect(path=tmp_path / "journal.sqlite3")
    before = database.now_utc()
    first = store.begin_upload("a.csv", "store_status.csv", "1" * 64, 5, 2)
    assert len(first) == 32 and int(first, 16) >= 0
    with store.data_lease("write"):  # a live writer: its upload is Running
        (running,) = store.list_uploads()
        assert (running["status"], running["written"], running["error"]) == ("Running", 0, None)
        store.load_polls(_polls(5), upload_id=first)
    second = store.begin_upload("b.csv", "menu_hours.csv", "2" * 64, 1, 0)
    store.fail_upload(second, "the lease was lost")
    third = store.begin_upload("c.csv", "timezones.csv", "3" * 64, 1, 0)  # its writer is gone: no write lease
    uploads = store.list_uploads()
    assert [u["upload_id"] for u in uploads] == [third, second, first]
    assert set(uploads[0]) == database.UPLOAD_FIELDS
    assert (uploads[0]["status"], uploads[0]["error"]) == ("Failed", database_gone())
    assert (uploads[1]["status"], uploads[1]["error"], uploads[1]["written"]) == ("Failed", "the lease was lost", 0)
    complete = uploads[2]
    assert (complete["file"], complete["kind"], complete["digest"]) == ("a.csv", "store_status.csv", "1" * 64)
    assert (complete["status"], complete["loaded"], complete["rejected"], complete["written"]) == ("Complete", 5, 2, 5)
    assert before <= complete["at"] <= complete["finished_at"] <= database.now_utc()
    assert complete["at"].tzinfo is not None and uploads[0]["finished_at"] is None
    assert [u["upload_id"] for u in store.list_uploads(limit=1)] == [third]
    assert store.dismiss_upload(second) is True and store.dismiss_upload("f" * 32) is False
    assert store.list_uploads()[1]["dismissed"] is True
    assert store.unfinished_upload() is None


def test_load_file_journals_its_upload(tmp_path):
    store = database.connect(path=tmp_path / "load.sqlite3")
    content = b"store_id,status,timestamp_utc\na,active,2023-01-24 10:00:00 UTC\nb,bad,2023-01-24 10:00:00 UTC\n"
    database.load_file(store, "store_status.csv", content, label="mine.csv")
    (upload,) = store.list_uploads()
    assert (upload["file"], upload["status"], upload["loaded"], upload["rejected"], upload["written"]) == (
        "mine.csv",
        "Complete",
        1,
        1,
        1,
    )
    assert upload["digest"] == hashlib.sha256(content).hexdigest()


# --------------------------------------------------------------------------- what is stored


def test_delete_polls_takes_the_bounds_inclusive_and_only_that_stores_polls(tmp_path):
    store = database.connect(path=tmp_path / "delete.sqlite3")
    store.load_polls(
        pd.DataFrame(
            {"store_id": ["a"] * 5 + ["b"] * 5, "timestamp_us": list(range(10, 60, 10)) * 2, "active": [True] * 10}
        )
    )

    def left(store_id):
        return polls_of(store, store_id)["timestamp_us"].tolist()

    assert store.delete_polls("a", 20, 40) == 3
    assert left("a") == [10, 50] and left("b") == [10, 20, 30, 40, 50]
    assert store.delete_polls("b", since_us=40) == 2 and left("b") == [10, 20, 30]
    assert store.delete_polls("b", until_us=10) == 1 and left("b") == [20, 30]
    assert store.delete_polls("nobody") == 0
    assert store.delete_polls("a") == 2 and left("a") == [] and left("b") == [20, 30]


def test_data_summary_says_what_is_stored(tmp_path):
    store = database.connect(path=tmp_path / "summary.sqlite3")
    assert store.data_summary() == {
        "stores": 0,
        "polls": 0,
        "hours_rows": 0,
        "zones": 0,
        "oldest_poll_us": None,
        "newest_poll_us": None,
    }
    store.load_polls(_polls(1_000, stores=37, start_us=5_000_000))
    store.replace_hours(_hours([("s00001", 0, 0, 60), ("s00001", 1, 0, 60), ("other", 2, 0, 60)]))
    store.replace_zones(_zones([("s00002", "UTC")]))
    assert store.data_summary() == {
        "stores": 37,
        "polls": 1_000,
        "hours_rows": 3,
        "zones": 1,
        "oldest_poll_us": 5_000_000,
        "newest_poll_us": 5_000_000 + 999 * 1_000_000,
    }


# --------------------------------------------------------------------------- health


def test_health_when_all_is_well(tmp_path):
    store = database.connect(path=tmp_path / "health.sqlite3")
    store.load_polls(_polls(3, start_us=7_000_000))
    assert store.quick_check_done.wait(30)
    written = _raw(store.path).execute("SELECT written_us FROM healthProbe").fetchone()[0]
    health = store.health(1)
    assert health["problems"] == [] and health["write_probe"] == "ok"
    assert (health["schema_version"], health["newest_poll_us"]) == (4, 9_000_000)
    assert health["free_disk_mb"] == pytest.approx(database.free_bytes(tmp_path) / 1_048_576, abs=50)
    assert _raw(store.path).execute("SELECT written_us FROM healthProbe").fetchone()[0] > written  # a real write


def test_health_is_quick_and_calm_while_another_writer_holds_the_lock(tmp_path):
    store = database.connect(path=tmp_path / "busy.sqlite3")
    other = _raw(store.path)
    other.execute("BEGIN IMMEDIATE")  # a writer publishing an upload
    try:
        started = time.monotonic()
        health = store.health(1)
        assert time.monotonic() - started < 1.0
    finally:
        other.execute("ROLLBACK")
    assert health["write_probe"] == "busy" and health["problems"] == []


def test_health_names_a_disk_under_min_free(tmp_path):
    store = database.connect(path=tmp_path / "low.sqlite3")
    free = database.free_bytes(tmp_path)
    health = store.health(free + 10 * 1_048_576)
    (problem,) = health["problems"]
    assert problem.startswith(f"the disk holding {store.path} has ")
    assert problem.endswith(f" MB free, under MIN_FREE_MB ({(free + 10 * 1_048_576) / 1_048_576:.0f} MB)")


def test_health_reports_a_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.sqlite3"
    store = database.connect(path=path)
    store.load_polls(_polls(20_000))
    store.close()
    raw = _raw(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = raw.execute(
        "SELECT pageno FROM dbstat WHERE name = 'pollBlocks' AND pagetype = 'leaf' ORDER BY pageno LIMIT 1 OFFSET 10"
    ).fetchone()[0]
    raw.close()
    with open(path, "r+b") as file:  # scribble over the middle of one page of polls
        file.seek((page - 1) * 4096 + 200)
        file.write(bytes(range(256)) * 12)
    damaged = database.connect(path=path)
    assert damaged.quick_check_done.wait(30)
    (problem,) = damaged.health(1)["problems"]
    assert problem.startswith(f"{path} is damaged: PRAGMA quick_check found: ")
    assert "\n" not in problem and "*** in database" not in problem


def test_health_reports_a_newer_schema_written_meanwhile(tmp_path):
    store = database.connect(path=tmp_path / "newer.sqlite3")
    _raw(store.path).execute("PRAGMA user_version = 5")  # another process, of a newer release, migrated it
    assert store.health(1)["problems"] == [
        f"{store.path} was migrated by a newer version of this service (schema 5; this code knows up to 4)"
    ]


# --------------------------------------------------------------------------- report life and durability


def test_only_a_running_report_completes(tmp_path):
    store = database.connect(path=tmp_path / "complete.sqlite3")
    store.create_report("a" * 32, None)
    store.fail_report("a" * 32, "shut down")
    assert store.complete_report("a" * 32, b"x,y\n", 1) is False
    assert store.find_report("a" * 32)["status"] == "Failed" and _count(store, "reportCsv") == 0
    assert store.complete_report("b" * 32, b"x,y\n", 1) is False  # unknown
    store.create_report("c" * 32, None)
    assert store.complete_report("c" * 32, b"x,y\n", 1) is True
    assert store.read_report_csv(store.find_report("c" * 32)) == b"x,y\n"
    assert store.complete_report("c" * 32, b"other\n", 1) is False  # already Complete: kept as it was
    assert store.read_report_csv(store.find_report("c" * 32)) == b"x,y\n"


def test_stale_reports_fail_with_the_contracts_error(tmp_path):
    store = database.connect(path=tmp_path / "stale.sqlite3")
    store.create_report("a" * 32, None)
    time.sleep(0.01)
    assert store.fail_stale_reports(dt.timedelta(microseconds=1)) == 1
    assert store.find_report("a" * 32)["error"] == database.STALE_ERROR


def test_as_of_after_newest_poll_is_false_until_the_job_says_otherwise(tmp_path):
    store = database.connect(path=tmp_path / "after.sqlite3")
    store.create_report("a" * 32, None)
    assert store.find_report("a" * 32)["as_of_after_newest_poll"] is False
    store.update_report("a" * 32, as_of_us=5, as_of_after_newest_poll=True)
    assert store.find_report("a" * 32)["as_of_after_newest_poll"] is True
    store.update_report("a" * 32, progress={"done": 1, "total": 2})  # not named: unchanged
    assert store.list_reports()[0]["as_of_after_newest_poll"] is True
    store.update_report("a" * 32, as_of_after_newest_poll=False)
    assert store.find_report("a" * 32)["as_of_after_newest_poll"] is False


def test_uploads_and_completed_reports_commit_with_synchronous_full(tmp_path):
    """The publishing transaction of an upload and complete_report are fsynced (they survive a power loss);
    every other write runs with synchronous=NORMAL."""
    store = database.connect(path=tmp_path / "sync.sqlite3")
    store.create_report("a" * 32, None)
    statements = []
    connection = store._connection()
    connection.set_trace_callback(statements.append)

    def synchronous_at_commits():
        levels, level = [], None
        for statement in statements:
            if statement.startswith("PRAGMA synchronous="):
                level = statement.split("=")[1]
            elif statement == "COMMIT" and level is not None:
                levels.append(level)
        statements.clear()
        return levels

    store.load_polls(_polls(10))
    assert synchronous_at_commits()[-1] == "FULL"
    store.replace_hours(_hours([("a", 0, 0, 60)]))
    assert synchronous_at_commits()[-1] == "FULL"
    store.complete_report("a" * 32, b"x\n", 0)
    assert synchronous_at_commits() == ["FULL"]
    store.begin_upload("f", "store_status.csv", "0" * 64, 1, 0)
    store.create_report("b" * 32, None)
    assert statements[::3] == ["BEGIN IMMEDIATE"] * 2 and statements[2::3] == ["COMMIT"] * 2
    assert not [statement for statement in statements if statement.startswith("PRAGMA")]  # NORMAL, as set at connect
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again
    connection.set_trace_callback(None)


# --------------------------------------------------------------------------- schema 3: the history of report rows


def _expected_history(reports_and_csvs: list[tuple[dict, bytes]]) -> dict[str, list[dict]]:
    """Each store's points as report_csv.history_rows reads the stored CSVs: newest as_of first, then newest created."""
    points: dict[str, list[tuple]] = {}
    for report, payload in reports_and_csvs:
        columns = report_csv.history_rows(payload, report["report_id"])
        for position, store_id in enumerate(columns["store_id"]):
            point = {"report_id": report["report_id"], "as_of_us": report["as_of_us"]}
            point.update({name: columns[name][position] for name in database.HISTORY_FIELDS[2:]})
            points.setdefault(store_id, []).append(
                (report["as_of_us"], report["created_at"], report["report_id"], point)
            )
    return {
        store_id: [point for *_, point in sorted(found, key=lambda item: item[:3], reverse=True)]
        for store_id, found in points.items()
    }


def _history_by_store(store, reports: list[dict]) -> dict[str, list[dict]]:
    store_ids = {
        store_id
        for report in reports
        for store_id in report_csv.history_rows(store.read_report_csv(report), report["report_id"])["store_id"]
    }
    return {store_id: store.store_history(store_id, limit=10_000) for store_id in store_ids}


def _copy_of_schema_2(tmp_path: Path) -> Path:
    path = tmp_path / "v2.sqlite3"
    path.write_bytes(SCHEMA_2_FILE.read_bytes())
    return path


def test_the_schema_2_file_opens_migrated_with_its_reports_and_their_history(tmp_path):
    (tmp_path / "pristine").mkdir()  # read from a copy: even a read-only look at a WAL file leaves -shm and -wal files
    pristine = _raw(_copy_of_schema_2(tmp_path / "pristine"))
    expected_csvs = dict(pristine.execute("SELECT report_id, data FROM reportCsv"))
    expected_polls = pristine.execute("SELECT * FROM storeStatus ORDER BY 1, 2").fetchall()
    expected_hours = pristine.execute("SELECT * FROM businessHours ORDER BY 1, 2, 3").fetchall()
    expected_zones = pristine.execute("SELECT * FROM timezones ORDER BY 1").fetchall()
    expected_reports = pristine.execute(
        "SELECT report_id, status, created_us, as_of_us, row_count, csv_bytes, error FROM reports ORDER BY 1"
    ).fetchall()
    pristine.close()
    assert set(expected_csvs) == {COMPLETE_V2, EARLIER_V2} and len(expected_polls) == 120
    path = _copy_of_schema_2(tmp_path)
    store = database.connect(path=path)
    assert (store.schema_version, store.migrations_applied) == (4, [STEP_3, STEP_4])
    raw = _raw(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 4
    assert _poll_rows(raw) == expected_polls
    assert raw.execute("SELECT * FROM businessHours ORDER BY 1, 2, 3").fetchall() == expected_hours
    assert raw.execute("SELECT * FROM timezones ORDER BY 1").fetchall() == expected_zones
    assert (
        raw.execute(
            "SELECT report_id, status, created_us, as_of_us, row_count, csv_bytes, error FROM reports ORDER BY 1"
        ).fetchall()
        == expected_reports
    )
    reports = {report["report_id"]: report for report in store.list_reports(0, 10)}
    assert sorted(reports) == [COMPLETE_V2, FAILED_V2, EARLIER_V2]
    assert {report["trigger"] for report in reports.values()} == {"api"}
    assert reports[FAILED_V2]["status"] == "Failed"
    assert reports[FAILED_V2]["error"] == "the server stopped before the report finished; trigger it again"
    complete = [reports[COMPLETE_V2], reports[EARLIER_V2]]
    for report in complete:
        assert report["status"] == "Complete" and report["row_count"] == 3
        assert store.read_report_csv(report) == bytes(expected_csvs[report["report_id"]])  # byte for byte
        assert b"".join(store.iter_report_csv(report, 100)) == bytes(expected_csvs[report["report_id"]])
    history = _history_by_store(store, complete)
    assert sorted(history) == ["1481966498820158979", "42", "8419537941919820732"]
    assert history == _expected_history([(report, bytes(expected_csvs[report["report_id"]])) for report in complete])
    assert [point["report_id"] for point in history["42"]] == [COMPLETE_V2, EARLIER_V2]  # the newer as_of first
    assert history["42"][0]["downtime_last_day"] == 4.59 and history["42"][1]["uptime_last_week"] == 24.0
    assert store.previous_complete_report(FAILED_V2)["report_id"] == EARLIER_V2
    assert store.last_tick() is None and store.list_deliveries() == []
    assert store.health(0)["problems"] == []
    assert _shape(path) == _shape(database.connect(path=tmp_path / "new.sqlite3").path)
    assert database.connect(path=path).migrations_applied == []  # once


def test_a_schema_2_file_claiming_schema_5_is_refused_untouched(tmp_path):
    path = _sqlite_file(_copy_of_schema_2(tmp_path), "PRAGMA user_version = 5")
    before = _sha256(path)
    with pytest.raises(database.DatabaseRefused) as refused:
        database.connect(path=path)
    assert str(refused.value) == (
        f"{path} was made by a newer version of this service (schema 5; this code knows up to 4)"
    )
    assert _sha256(path) == before
    assert "reportHistory" not in {n for (n,) in _raw(path).execute("SELECT name FROM sqlite_master")}


def test_a_crash_inside_the_history_backfill_leaves_schema_2_whole(tmp_path, monkeypatch):
    import store_sqlite

    path = _copy_of_schema_2(tmp_path)
    real_step = store_sqlite.MIGRATIONS[1][2]

    def crashing_step(connection):
        real_step(connection)  # the columns, the tables and every backfilled row ...
        assert connection.execute("SELECT count(*) FROM reportHistory").fetchone() == (6,)
        raise sqlite3.OperationalError("the power went")  # ... and then the process died before COMMIT

    monkeypatch.setattr(store_sqlite, "MIGRATIONS", [store_sqlite.MIGRATIONS[0], (3, "step three", crashing_step)])
    with pytest.raises(sqlite3.OperationalError):
        database.connect(path=path)
    raw = _raw(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
    assert {"trigger", "history_key"} & {row[1] for row in raw.execute("PRAGMA table_info(reports)")} == set()
    assert raw.execute(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('reportHistory', 'scheduleTicks', 'alertState', "
        "'alertSeen', 'alertDeliveries')"
    ).fetchone() == (0,)
    monkeypatch.undo()
    store = database.connect(path=path)
    assert (store.schema_version, store.migrations_applied) == (4, [STEP_3, STEP_4])
    assert _count(store, "reportHistory") == 6


def test_a_stored_csv_that_cannot_be_read_keeps_no_history_and_the_migration_goes_on(tmp_path, caplog):
    path = _sqlite_file(
        _copy_of_schema_2(tmp_path),
        f"UPDATE reportCsv SET data = substr(data, 1, 100) WHERE report_id = '{EARLIER_V2}'",  # stored in part
    )
    with caplog.at_level(logging.WARNING, logger="store_sqlite"):
        store = database.connect(path=path)
    assert store.schema_version == 4
    assert [r.getMessage() for r in caplog.records] == [
        f"report {EARLIER_V2}: no history kept of its stored CSV (report {EARLIER_V2}: stored CSV is incomplete)"
    ]
    assert {point["report_id"] for point in store.store_history("42")} == {COMPLETE_V2}


# --------------------------------------------------------------------------- schema 3 -> 4: polls into blocks

SCHEMA_3_FILE = FIXTURES / "schema_v3.sqlite3"
COMPLETE_V3, FAILED_V3, SCHEDULED_V3 = "0" * 31 + "1", "0" * 31 + "2", "0" * 31 + "3"


def _copy_of_schema_3(tmp_path: Path) -> Path:
    path = tmp_path / "v3.sqlite3"
    path.write_bytes(SCHEMA_3_FILE.read_bytes())
    return path


@pytest.mark.parametrize("batch_rows", [500_000, 7], ids=["one batch", "batches that cut stores"])
def test_the_schema_3_file_opens_with_its_polls_in_blocks_and_gives_the_same_reports(tmp_path, monkeypatch, batch_rows):
    """The file the schema-3 code made: every poll lands in its store's block of its week, storeStatus and its
    index go, and reports computed again from the blocks are the bytes that code stored."""
    import store_sqlite

    monkeypatch.setattr(store_sqlite, "MIGRATE_BATCH_ROWS", batch_rows)
    (tmp_path / "pristine").mkdir()  # read from a copy: even a read-only look at a WAL file leaves -shm and -wal files
    pristine = _raw(_copy_of_schema_3(tmp_path / "pristine"))
    expected_polls = pristine.execute("SELECT * FROM storeStatus ORDER BY 1, 2").fetchall()
    expected_csvs = dict(pristine.execute("SELECT report_id, data FROM reportCsv"))
    expected_history = pristine.execute("SELECT * FROM reportHistory ORDER BY 1, 2").fetchall()
    pristine.close()
    assert len(expected_polls) == 264 and set(expected_csvs) == {COMPLETE_V3, SCHEDULED_V3}
    path = _copy_of_schema_3(tmp_path)
    store = database.connect(path=path)
    assert (store.schema_version, store.migrations_applied) == (4, [STEP_4])
    raw = _raw(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 4
    assert _poll_rows(raw) == expected_polls
    assert raw.execute("SELECT store_id, count(*) FROM pollBlocks GROUP BY 1 ORDER BY 1").fetchall() == [
        ("1481966498820158979", 2),  # 2023-01-15 to 01-18, and 01-19 to 01-25
        ("42", 2),
        ("8419537941919820732", 2),
    ]
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'storeStatus%'").fetchone() == (0,)
    assert raw.execute("PRAGMA freelist_count").fetchone() == (0,)  # vacuumed: the old table's pages given back
    assert raw.execute("SELECT * FROM reportHistory ORDER BY 1, 2").fetchall() == expected_history
    assert store.find_report(SCHEDULED_V3)["trigger"] == "schedule"
    assert store.find_report(FAILED_V3)["status"] == "Failed"
    assert _shape(path) == _shape(database.connect(path=tmp_path / "new.sqlite3").path)
    generator = reportGenerator.ReportGenerator(store, tmp_path / "reports")
    try:
        for old, as_of_us in ((COMPLETE_V3, None), (SCHEDULED_V3, 1_674_432_000_000_000)):
            again = uuid.uuid4().hex
            store.create_report(again, as_of_us)
            generator.run(again, as_of_us)
            report = store.find_report(again)
            assert report["status"] == "Complete", report["error"]
            assert report["as_of_us"] == store.find_report(old)["as_of_us"]
            assert store.read_report_csv(report) == bytes(expected_csvs[old])  # byte for byte
    finally:
        generator.shutdown(wait=True)
    assert database.connect(path=path).migrations_applied == []  # once


def test_a_vacuum_that_fails_after_the_step_to_blocks_leaves_the_file_migrated_and_says_how(
    tmp_path, monkeypatch, caplog
):
    import store_sqlite

    real_connection = store_sqlite.SqliteStore._connection

    class FullDiskAtVacuum:
        def __init__(self, connection):
            self.connection = connection

        def execute(self, sql, *parameters):
            if sql == "VACUUM":
                raise sqlite3.OperationalError("database or disk is full")
            return self.connection.execute(sql, *parameters)

        def __getattr__(self, name):
            return getattr(self.connection, name)

    monkeypatch.setattr(store_sqlite.SqliteStore, "_connection", lambda self: FullDiskAtVacuum(real_connection(self)))
    path = _copy_of_schema_3(tmp_path)
    with caplog.at_level(logging.WARNING, logger="store_sqlite"):
        store = database.connect(path=path)
    assert (store.schema_version, store.migrations_applied) == (4, [STEP_4])
    assert _count(store) == 264
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{path} keeps the pages its migration freed (") and "VACUUM" in warning
    assert _raw(path).execute("PRAGMA freelist_count").fetchone()[0] > 0


def test_a_crash_inside_the_step_to_blocks_leaves_schema_3_whole(tmp_path, monkeypatch):
    import store_sqlite

    path = _copy_of_schema_3(tmp_path)
    before = _raw(path).execute("SELECT * FROM storeStatus ORDER BY 1, 2").fetchall()
    real_step = store_sqlite.MIGRATIONS[2][2]

    def crashing_step(connection):
        real_step(connection)  # every block written and storeStatus dropped ...
        assert connection.execute("SELECT sum(polls) FROM pollBlocks").fetchone() == (264,)
        raise sqlite3.OperationalError("the power went")  # ... and then the process died before COMMIT

    monkeypatch.setattr(store_sqlite, "MIGRATIONS", [*store_sqlite.MIGRATIONS[:2], (4, "step four", crashing_step)])
    with pytest.raises(sqlite3.OperationalError):
        database.connect(path=path)
    raw = _raw(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'pollBlocks%'").fetchone() == (0,)
    assert raw.execute("SELECT * FROM storeStatus ORDER BY 1, 2").fetchall() == before
    monkeypatch.undo()
    store = database.connect(path=path)
    assert (store.schema_version, store.migrations_applied) == (4, [STEP_4])
    assert _poll_rows(store._connection()) == before


# --------------------------------------------------------------------------- history rows: how they are kept


def _complete(store, report_id: str, frame: pd.DataFrame, as_of_us: int = 1_700_000_000_000_000) -> bytes:
    payload = report_csv.report_csv_bytes(frame)
    store.create_report(report_id, None)
    store.update_report(report_id, as_of_us=as_of_us)
    assert store.complete_report(report_id, payload, len(frame)) is True
    return payload


def _frame(store_ids: list[str], *figures: list[float]) -> pd.DataFrame:
    columns = {"store_id": store_ids}
    columns.update({name: list(values) for name, values in zip(utils.REPORT_COLUMNS[1:], figures)})
    return pd.DataFrame(columns, columns=utils.REPORT_COLUMNS)


def test_history_figures_are_whole_cents_as_integers_and_anything_else_as_it_is(tmp_path):
    """Each figure reads back as exactly the float report_csv.history_rows reads from the CSV: whole cents
    kept as an INTEGER count of cents (compact), any other value as the REAL itself."""
    store = database.connect(path=tmp_path / "figures.sqlite3")
    odd = [1 / 3, 0.1 + 0.2, 1e-7, 123456.789, 2.0**60, 167.99]
    frame = _frame(
        ["=formula", "a", "b", "c", "d", "e"],
        odd,
        [0.0, 60.0, 0.01, 10.56, 23.99, 24.0],
        [168.0, 0.07, 9.47, 128.95, 0.29, 1.1],
        [0.0] * 6,
        [4.59, 9.05, 0.0, 7.68, 15.08, 16.32],
        list(reversed(odd)),
    )
    payload = _complete(store, "a" * 32, frame)
    report = store.find_report("a" * 32)
    assert store.read_report_csv(report) == payload
    history = _history_by_store(store, [report])
    assert history == _expected_history([(report, payload)])
    assert sorted(history) == ["=formula", "a", "b", "c", "d", "e"]  # the CSV's quote taken off again
    stored = dict(store._connection().execute("SELECT store_id, uptime_last_hour FROM reportHistory"))
    # 1/3, 0.1 + 0.2, 1e-7 and 123456.789 are not whole cents; 2**60 is, but beyond 2**53 cents
    assert {store_id: type(value) for store_id, value in stored.items()} == {
        "=formula": float,
        "a": float,
        "b": float,
        "c": float,
        "d": float,
        "e": int,
    }
    assert stored["e"] == 16799 and stored["d"] == 2.0**60
    assert store._connection().execute("SELECT DISTINCT typeof(uptime_last_day) FROM reportHistory").fetchall() == [
        ("integer",)
    ]


def test_history_rows_take_little_room(tmp_path):
    """Whole cents as small integers: a history row of a 19-digit store id and six figures in about 50 bytes
    (REAL figures would take about 90)."""
    store = database.connect(path=tmp_path / "size.sqlite3")
    ids = [f"{7_000_000_000_000_000_000 + i * 7919:019d}" for i in range(3_000)]
    rng = np.random.default_rng(1)
    for number in range(4):
        figures = [np.round(rng.integers(0, top * 100 + 1, len(ids)) / 100, 2) for top in (60, 24, 168, 60, 24, 168)]
        _complete(store, f"{number:032x}", _frame(ids, *figures), as_of_us=1_700_000_000_000_000 + number)
    assert _count(store, "reportHistory") == 12_000
    used = store._connection().execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'reportHistory'").fetchone()[0]
    assert used / 12_000 < 64, used / 12_000
    assert store._connection().execute("SELECT DISTINCT typeof(downtime_last_week) FROM reportHistory").fetchall() == [
        ("integer",)
    ]


def test_bytes_that_are_not_a_report_csv_keep_no_history_and_a_failed_report_keeps_none(tmp_path):
    store = database.connect(path=tmp_path / "none.sqlite3")
    store.create_report("a" * 32, None)
    assert store.complete_report("a" * 32, b"store_id\nx\n", 1) is True
    assert store.read_report_csv(store.find_report("a" * 32)) == b"store_id\nx\n"
    store.create_report("b" * 32, None)
    store.fail_report("b" * 32, "stopped")
    frame = _frame(["s"], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0])
    assert store.complete_report("b" * 32, report_csv.report_csv_bytes(frame), 1) is False
    assert _count(store, "reportHistory") == 0 and store.store_history("s") == [] and store.store_history("x") == []
    store.create_report("c" * 32, None)
    unreadable = report_csv.report_csv_bytes(frame) + b"t,1.0,2.0,three,4.0,5.0,6.0\n"
    with pytest.raises(ValueError, match=f"^report {'c' * 32}: the rows of its CSV cannot be read: ValueError: "):
        store.complete_report("c" * 32, unreadable, 2)
    assert store.find_report("c" * 32)["status"] == "Running" and _count(store, "reportCsv") == 1


def test_store_history_reads_one_range_of_the_primary_key(tmp_path):
    """No pass over the table and no stored CSV opened: the store's range, each point joined to its report."""
    import store_sqlite

    store = database.connect(path=tmp_path / "plan.sqlite3")
    plan = _plan(store, store_sqlite.SqliteStore.STORE_HISTORY, {"store_id": "a", "since": 1, "until": 2, "limit": 3})
    assert plan[:2] == [
        "SEARCH h USING PRIMARY KEY (store_id=?)",
        "SEARCH r USING INDEX reports_history (history_key=?)",
    ], plan
    assert not [step for step in plan if "reportCsv" in step or step.startswith("SCAN")], plan
    delete = _plan(store, store_sqlite.SqliteStore.DELETE_HISTORY, (json.dumps([1, 2]),))
    assert delete[0] == "SEARCH reportHistory USING PRIMARY KEY (store_id=? AND report_key=?)", delete
    assert not [step for step in delete if step.startswith("SCAN reportHistory")], delete


def test_store_history_bounds_order_and_limit(tmp_path):
    store = database.connect(path=tmp_path / "bounds.sqlite3")
    frame = _frame(["a", "b"], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0], [11.0, 12.0])
    for number, as_of in enumerate([300, 100, 200, 200]):  # two reports at as_of 200: the later created first
        _complete(store, f"{number:032x}", frame.assign(uptime_last_hour=[float(number), 0.0]), as_of_us=as_of)
    ids = [point["report_id"][-1] for point in store.store_history("a")]
    assert ids == ["0", "3", "2", "1"]
    assert [p["uptime_last_hour"] for p in store.store_history("a")] == [0.0, 3.0, 2.0, 1.0]
    assert [p["report_id"][-1] for p in store.store_history("a", since_us=150, until_us=200)] == ["3", "2"]
    assert [p["report_id"][-1] for p in store.store_history("a", since_us=201)] == ["0"]
    assert [p["report_id"][-1] for p in store.store_history("a", until_us=100)] == ["1"]
    assert [p["report_id"][-1] for p in store.store_history("a", limit=2)] == ["0", "3"]
    assert store.store_history("a", limit=0) == [] and store.store_history("a", limit=-1) == []
    assert set(store.store_history("b")[0]) == set(database.HISTORY_FIELDS)


def test_delete_report_and_the_retention_sweep_take_the_history_rows_with_them(tmp_path):
    store = database.connect(path=tmp_path / "delete.sqlite3")
    ids = [f"s{i:04d}" for i in range(500)]
    figures = [[float(i % 60) for i in range(500)]] * 6
    for number in range(4):
        _complete(store, f"{number:032x}", _frame(ids, *figures), as_of_us=1_000 + number)
    store.create_report("r" * 32, None)  # Running: never deleted
    assert _count(store, "reportHistory") == 2_000
    assert store.delete_report("r" * 32) is False and store.find_report("r" * 32)["status"] == "Running"
    assert store.delete_report("n" * 32) is False
    assert store.delete_report(f"{1:032x}") is True
    assert store.find_report(f"{1:032x}") is None and store.delete_report(f"{1:032x}") is False
    assert _count(store, "reportHistory") == 1_500 and _count(store, "reportCsv") == 3
    assert [p["report_id"] for p in store.store_history("s0007")] == [f"{n:032x}" for n in (3, 2, 0)]
    deleted = store.delete_finished_reports(database.now_utc() - dt.timedelta(days=1), keep_newest=1)
    assert deleted == [f"{0:032x}", f"{2:032x}"]
    assert _count(store, "reportHistory") == 500 and _count(store, "reportCsv") == 1
    assert [p["report_id"] for p in store.store_history("s0499")] == [f"{3:032x}"]
    _complete(store, "z" * 32, _frame(ids, *figures), as_of_us=5_000)  # a new key: no old rows come back
    assert [p["report_id"] for p in store.store_history("s0001")] == ["z" * 32, f"{3:032x}"]


def test_previous_complete_report_is_by_creation_then_id(tmp_path, monkeypatch):
    import store_sqlite

    store = database.connect(path=tmp_path / "previous.sqlite3")
    now = [1_000]
    monkeypatch.setattr(store_sqlite, "_now_us", lambda: now[0])
    for report_id, created in (("b" * 32, 1_000), ("a" * 32, 1_000), ("c" * 32, 2_000), ("d" * 32, 3_000)):
        now[0] = created
        store.create_report(report_id, None)
    for report_id in ("a" * 32, "b" * 32):
        store.complete_report(report_id, b"x\n", 0)
    store.fail_report("c" * 32, "stopped")
    assert store.previous_complete_report("d" * 32)["report_id"] == "b" * 32  # c Failed; b's id is after a's
    assert store.previous_complete_report("c" * 32)["report_id"] == "b" * 32
    assert store.previous_complete_report("b" * 32)["report_id"] == "a" * 32
    assert store.previous_complete_report("a" * 32) is None
    assert store.previous_complete_report("n" * 32) is None


# --------------------------------------------------------------------------- the stored CSV, streamed


def _checkpoint_blocked(path: Path) -> bool:
    """True when a reader's snapshot holds the WAL: PRAGMA wal_checkpoint(TRUNCATE) cannot finish."""
    raw = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        return raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 1
    finally:
        raw.close()


def test_the_csv_stream_reads_pieces_on_a_connection_of_its_own_closed_at_the_end(tmp_path):
    store = database.connect(path=tmp_path / "stream.sqlite3")
    payload = _complete(store, "a" * 32, _frame([f"s{i:05d}" for i in range(3_000)], *[[1.5] * 3_000] * 6))
    report = store.find_report("a" * 32)
    store.create_report("b" * 32, None)  # a write after the checkpoint: the stream's snapshot reads the WAL
    assert not _checkpoint_blocked(store.path)
    store.create_report("c" * 32, None)
    stream = store.iter_report_csv(report, 10_000)
    connection = stream._connection
    assert connection is not store._connection()
    assert _checkpoint_blocked(store.path)  # its read transaction is open
    pieces = []
    reader = threading.Thread(target=lambda: pieces.extend(stream))  # a WSGI server's thread, after the view
    reader.start()
    reader.join(60)
    assert b"".join(pieces) == payload and max(map(len, pieces)) == 10_000 and len(pieces) == -(-len(payload) // 10_000)
    assert not _checkpoint_blocked(store.path)  # read to the end: the transaction ended
    with pytest.raises(sqlite3.ProgrammingError):  # and its connection is closed
        connection.execute("SELECT 1")
    store.create_report("d" * 32, None)
    stopped = store.iter_report_csv(report, 1_000)
    assert next(stopped) == payload[:1_000]
    connection = stopped._connection
    assert _checkpoint_blocked(store.path)
    stopped.close()  # a client that went away: the server closes the iterable
    assert not _checkpoint_blocked(store.path)
    with pytest.raises(sqlite3.ProgrammingError):
        connection.execute("SELECT 1")
    assert list(stopped) == []


def test_a_csv_stream_of_the_wrong_length_raises_before_any_piece_and_keeps_nothing_open(tmp_path):
    store = database.connect(path=tmp_path / "short.sqlite3")
    payload = _complete(store, "a" * 32, _frame(["s"], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0]))
    report = store.find_report("a" * 32)
    store.create_report("b" * 32, None)
    with pytest.raises(ValueError, match=f"^report {'a' * 32}: stored CSV is incomplete$"):
        store.iter_report_csv({**report, "csv_bytes": len(payload) + 1})
    assert not _checkpoint_blocked(store.path)
    missing = {**report, "report_id": "n" * 32}
    with pytest.raises(ValueError, match="stored CSV is incomplete"):
        store.iter_report_csv(missing)
    assert list(store.iter_report_csv({**missing, "csv_bytes": 0})) == []
    assert list(store.iter_report_csv(report, 1 << 20)) == [payload]


# --------------------------------------------------------------------------- the schedule's ticks


def _race(count: int, work) -> list:
    """`work(i)` in `count` threads released together; their answers in thread order (errors raised)."""
    barrier = threading.Barrier(count)
    answers: list = [None] * count
    errors: list = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            answers[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - raised below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return answers


def test_two_stores_on_one_file_racing_for_a_tick_start_exactly_one_report(tmp_path):
    path = tmp_path / "ticks.sqlite3"
    stores = [database.connect(path=path), database.connect(path=path)]
    for tick in range(1, 31):
        outcomes = _race(2, lambda i, tick=tick: stores[i].claim_tick(tick * 60_000_000, f"{tick:030d}w{i}"))
        assert sorted(outcomes) == ["started", "taken"], (tick, outcomes)
        winner = outcomes.index("started")
        report = stores[0].find_report(f"{tick:030d}w{winner}")
        assert (report["status"], report["trigger"], report["requested_as_of_us"]) == ("Running", "schedule", None)
        assert stores[1].find_report(f"{tick:030d}w{1 - winner}") is None
        assert stores[1 - winner].last_tick() == {
            "tick_us": tick * 60_000_000,
            "outcome": "started",
            "report_id": f"{tick:030d}w{winner}",
            "claimed_at_us": utils.datetime_to_us(report["created_at"]),  # the same instant
        }
        stores[winner].fail_report(report["report_id"], "done")  # the next tick finds none Running
    assert stores[0].count_reports() == 30
    assert stores[0].claim_tick(60_000_000, "again".ljust(32, "0")) == "taken"  # as after a restart


def test_a_tick_is_skipped_while_a_scheduled_report_runs_and_started_once_it_is_stale(tmp_path, monkeypatch):
    import store_sqlite

    store = database.connect(path=tmp_path / "skip.sqlite3")
    now = [10_000_000_000]
    monkeypatch.setattr(store_sqlite, "_now_us", lambda: now[0])
    assert store.clock_us() == 10_000_000_000 and store.last_tick() is None
    store.create_report("api".ljust(32, "0"), None)  # a report someone asked for does not hold the schedule
    assert store.claim_tick(1, "a" * 32) == "started"
    now[0] += 2 * database.LEASE_SECONDS * 1_000_000  # not prepared: still running until 2 x LEASE_SECONDS old
    assert store.claim_tick(2, "b" * 32) == "skipped"
    assert store.last_tick() == {"tick_us": 2, "outcome": "skipped", "report_id": None, "claimed_at_us": now[0]}
    assert store.find_report("b" * 32) is None
    now[0] += 1
    assert store.claim_tick(3, "c" * 32) == "started"  # "a" is stale (the sweep fails it): a new report starts
    assert store.claim_tick(2, "d" * 32) == "taken"  # skipped is claimed too
    store.prepare(dt.timedelta(seconds=10))  # the service's STALE_AFTER_SECONDS, kept by prepare
    assert store.find_report("a" * 32)["status"] == "Failed" and store.find_report("c" * 32)["status"] == "Running"
    now[0] += 10_000_000
    assert store.claim_tick(4, "e" * 32) == "skipped"
    now[0] += 1
    assert store.claim_tick(5, "f" * 32) == "started"
    assert sorted((r["report_id"][:3], r["trigger"]) for r in store.list_reports(0, 10)) == [
        ("aaa", "schedule"),
        ("api", "api"),
        ("ccc", "schedule"),
        ("fff", "schedule"),
    ]


def test_ticks_are_kept_to_the_newest_thousand_and_an_older_one_counts_as_taken(tmp_path, monkeypatch):
    import store_sqlite

    monkeypatch.setattr(store_sqlite, "TICKS_KEPT", 5)
    store = database.connect(path=tmp_path / "kept.sqlite3")
    assert store.claim_tick(10, "a" * 32) == "started"
    for tick in (20, 30, 40, 50, 60, 70):  # "a" runs: skipped, and recorded
        assert store.claim_tick(tick, "b" * 32) == "skipped"
    assert [t for (t,) in store._connection().execute("SELECT tick_us FROM scheduleTicks ORDER BY 1")] == [
        30,
        40,
        50,
        60,
        70,
    ]
    assert store.claim_tick(10, "c" * 32) == "taken" and store.claim_tick(25, "c" * 32) == "taken"
    assert store.claim_tick(35, "c" * 32) == "skipped"  # within the kept ones: a tick not claimed yet
    assert store.last_tick()["tick_us"] == 70


# --------------------------------------------------------------------------- alerts


def _rows(**down_minutes: float) -> list[dict]:
    return [
        {"store_id": store_id, "downtime_last_hour": minutes, "uptime_last_hour": 60.0 - minutes}
        for store_id, minutes in down_minutes.items()
    ]


def test_two_stores_on_one_file_recording_one_report_make_one_delivery(tmp_path):
    path = tmp_path / "alerts.sqlite3"
    stores = [database.connect(path=path), database.connect(path=path)]
    rows = _rows(a=45.0, b=10.0, c=30.0)
    for _ in range(5):
        deliveries = _race(2, lambda i: stores[i].record_alerts("r" * 32, 1_000, rows, 30))
        assert deliveries[0] == deliveries[1]
    (delivery,) = stores[0].list_deliveries()
    assert delivery == {**deliveries[0], "body": None}  # a listing leaves the body out
    assert deliveries[0]["body"] == database.alert_body(
        "r" * 32,
        1_000,
        [
            {"store_id": "a", "event": "store_down", "downtime_last_hour": 45.0, "uptime_last_hour": 15.0},
            {"store_id": "c", "event": "store_down", "downtime_last_hour": 30.0, "uptime_last_hour": 30.0},
        ],
    )
    assert (delivery["status"], delivery["events"], delivery["attempts"]) == ("Pending", 2, 0)
    assert sorted(stores[1]._connection().execute("SELECT store_id, as_of_us FROM alertState")) == [
        ("a", 1_000),
        ("c", 1_000),
    ]
    # the next report: "a" still down (no event), "c" back up
    racing = _race(2, lambda i: stores[i].record_alerts("s" * 32, 2_000, _rows(a=60.0, b=0.0, c=29.99), 30))
    assert racing[0] == racing[1] and json.loads(racing[0]["body"])["events"] == [
        {"store_id": "c", "event": "store_recovered", "downtime_last_hour": 29.99, "uptime_last_hour": 30.01}
    ]
    assert [d["report_id"] for d in stores[0].list_deliveries()] == ["s" * 32, "r" * 32]
    assert stores[0]._connection().execute("SELECT store_id, as_of_us FROM alertState").fetchall() == [("a", 2_000)]


def test_an_older_report_recorded_late_changes_no_store(tmp_path):
    store = database.connect(path=tmp_path / "late.sqlite3")
    assert store.record_alerts("n" * 32, 3_000, _rows(a=50.0, b=0.0), 30)["events"] == 1  # a down
    assert store.record_alerts("o" * 32, 2_000, _rows(a=0.0, b=50.0, c=50.0), 30) is None  # older: nothing flips
    assert store.record_alerts("p" * 32, 3_000, _rows(b=50.0), 30) is None  # as old as the newest: nothing either
    later = store.record_alerts("q" * 32, 4_000, _rows(a=0.0, b=50.0), 30)
    assert [(e["store_id"], e["event"]) for e in json.loads(later["body"])["events"]] == [
        ("a", "store_recovered"),
        ("b", "store_down"),
    ]
    assert store.record_alerts("q" * 32, 4_000, _rows(a=50.0, b=0.0), 30) == later  # the same report: as it was
    assert store._connection().execute("SELECT store_id FROM alertState").fetchall() == [("b",)]


def test_record_alerts_is_one_transaction(tmp_path, monkeypatch):
    store = database.connect(path=tmp_path / "atomic.sqlite3")

    def broken(*args):
        raise RuntimeError("the body could not be made")

    monkeypatch.setattr(database, "alert_body", broken)
    with pytest.raises(RuntimeError):
        store.record_alerts("r" * 32, 1_000, _rows(a=45.0), 30)
    assert _count(store, "alertState") == 0 and _count(store, "alertSeen") == 0 and store.list_deliveries() == []
    monkeypatch.undo()
    assert store.record_alerts("r" * 32, 1_000, _rows(a=45.0), 30)["events"] == 1


def test_deliveries_are_updated_listed_found_pending_and_kept_bounded(tmp_path, monkeypatch):
    import store_sqlite

    store = database.connect(path=tmp_path / "deliveries.sqlite3")
    now = [1_000_000]
    monkeypatch.setattr(store_sqlite, "_now_us", lambda: now[0])
    monkeypatch.setattr(store_sqlite, "DELIVERIES_KEPT", 3)
    made = []
    for number in range(6):  # "a" down, up, down, ...: one event each
        now[0] += 1_000
        delivery = store.record_alerts(f"{number:032x}", number + 1, _rows(a=45.0 if number % 2 == 0 else 0.0), 30)
        assert set(delivery) == database.ALERT_DELIVERY_FIELDS and len(delivery["delivery_id"]) == 32
        assert delivery["created_at"] == utils.us_to_datetime(now[0]) and delivery["last_attempt_at"] is None
        made.append(delivery)
        if number == 1:
            store.update_delivery(made[0]["delivery_id"], "Delivered", 1, None, 204)
    # kept: the newest three, and the older ones still Pending (never dropped before they are sent)
    assert [d["report_id"][-1] for d in store.list_deliveries()] == ["5", "4", "3", "2", "1"]
    assert [d["report_id"][-1] for d in store.list_deliveries(limit=2)] == ["5", "4"]
    now[0] += 1_000
    store.update_delivery(made[1]["delivery_id"], "Failed", 5, "HTTP 500", 500)
    store.update_delivery(made[2]["delivery_id"], "Pending", 1, "timed out", None)
    tried = now[0]
    listed = {d["report_id"][-1]: d for d in store.list_deliveries()}
    assert (listed["1"]["status"], listed["1"]["attempts"], listed["1"]["error"], listed["1"]["http_status"]) == (
        "Failed",
        5,
        "HTTP 500",
        500,
    )
    assert listed["2"]["last_attempt_at"] == utils.us_to_datetime(tried) and listed["2"]["status"] == "Pending"
    assert [d["report_id"][-1] for d in store.pending_deliveries(tried)] == ["3", "4", "5"]  # "2" was just tried
    assert [d["report_id"][-1] for d in store.pending_deliveries(tried + 1)] == ["2", "3", "4", "5"]
    assert store.pending_deliveries(utils.datetime_to_us(made[3]["created_at"])) == []
    with pytest.raises(ValueError, match="^a delivery's status is one of Pending, Delivered, Failed, not 'Sent'$"):
        store.update_delivery(made[2]["delivery_id"], "Sent", 2, None, 200)


def test_a_full_disk_keeps_nothing_of_a_report_s_history_or_alerts(small_disk):
    path = small_disk / "db.sqlite3"
    store = database.connect(path=path)
    store.create_report("a" * 32, None)
    frame = _frame([f"s{i:05d}" for i in range(2_000)], *[[1.25] * 2_000] * 6)
    filler = _fill(small_disk)
    try:
        with pytest.raises(database.DiskFull) as full:
            store.complete_report("a" * 32, report_csv.report_csv_bytes(frame), 2_000)
        assert full.value.what == "report"
        with pytest.raises(database.DiskFull) as full:
            store.record_alerts("a" * 32, 1_000, _rows(x=50.0), 30)
        assert full.value.what == "alert state"
        with pytest.raises(database.DiskFull):
            store.claim_tick(1, "t" * 32)
        assert _count(store, "reportHistory") == 0 and _count(store, "alertState") == 0
        assert store.find_report("a" * 32)["status"] == "Running" and store.last_tick() is None
    finally:
        filler.unlink()
    assert store.complete_report("a" * 32, report_csv.report_csv_bytes(frame), 2_000) is True
    assert _count(store, "reportHistory") == 2_000
    assert store.record_alerts("a" * 32, 1_000, _rows(x=50.0), 30)["events"] == 1
    store.close()
