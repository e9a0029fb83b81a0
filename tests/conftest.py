"""Shared fixtures: a tiny data folder with hand-worked answers, an app on each store (SQLite, mongomock),
its client and store."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings

import database
from app import create_app

# Hypothesis profiles. "ci" (chosen when CI is set, as CI sets CI=true) draws the same examples on every
# run, so a CI failure can be re-run and a pass means the same thing each time; "dev" (the default
# elsewhere) draws new examples each run and replays past failures from .hypothesis/, to explore.
# HYPOTHESIS_PROFILE=ci|dev picks one by name. Tests that set max_examples keep their own count.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("dev", derandomize=False, deadline=None)
# "mutation" is "ci" with a tenth of the examples (see `examples`), so a mutmut run fits in ~30 minutes;
# the fixed @example cases still run in full.
settings.register_profile("mutation", parent=settings.get_profile("ci"))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def examples(count: int) -> int:
    """A property test's max_examples: `count`, or a tenth of it (at least 10) in the "mutation" profile."""
    return max(10, count // 10) if settings.get_current_profile_name() == "mutation" else count


@pytest.fixture(autouse=True)
def fresh_memos_under_mutation():
    """Under mutmut, forget utils' memoised zones and transitions before each test: mutmut forks every
    mutant's run from a process that has already run the tests, so a warm memo would hide a mutant in
    the code that fills it."""
    if os.environ.get("MUTANT_UNDER_TEST"):
        import utils

        utils._zone.cache_clear()
        utils.zone_transitions.cache_clear()
    yield


ROOT = Path(__file__).resolve().parent.parent

TINY_STATUS = """store_id,status,timestamp_utc
worked,active,2023-01-24 10:14:00.000000 UTC
worked,inactive,2023-01-24 11:15:00.000000 UTC
allday,active,2023-01-24 12:30:00.000000 UTC
allday,inactive,2023-01-24T12:50:00Z
late,active,2023-01-24 13:00:00 UTC
"""
TINY_HOURS = """store_id,dayOfWeek,start_time_local,end_time_local
worked,1,09:00:00,12:00:00
"""
TINY_ZONES = """store_id,timezone_str
worked,UTC
"""
# The report of the tiny data at its newest poll, 2023-01-24 13:00 UTC, worked out by hand:
# worked: 09:00-12:00 UTC, active until the 10:44:30 midpoint, inactive after;
# allday: open 24/7, active until the 12:40 midpoint, inactive after;
# late: open 24/7, one active poll.
TINY_REPORT = [
    {
        "store_id": "allday",
        "uptime_last_hour": 40.0,
        "uptime_last_day": 23.67,
        "uptime_last_week": 167.67,
        "downtime_last_hour": 20.0,
        "downtime_last_day": 0.33,
        "downtime_last_week": 0.33,
    },
    {
        "store_id": "late",
        "uptime_last_hour": 60.0,
        "uptime_last_day": 24.0,
        "uptime_last_week": 168.0,
        "downtime_last_hour": 0.0,
        "downtime_last_day": 0.0,
        "downtime_last_week": 0.0,
    },
    {
        "store_id": "worked",
        "uptime_last_hour": 0.0,
        "uptime_last_day": 1.74,
        "uptime_last_week": 1.74,
        "downtime_last_hour": 0.0,
        "downtime_last_day": 1.26,
        "downtime_last_week": 1.26,
    },
]


def write_data_dir(
    directory: Path, status: str = TINY_STATUS, hours: str = TINY_HOURS, zones: str = TINY_ZONES
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "store_status.csv").write_text(status)
    (directory / "menu_hours.csv").write_text(hours)
    (directory / "timezones.csv").write_text(zones)
    return directory


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A folder holding the tiny three-file data set."""
    return write_data_dir(tmp_path / "data")


@pytest.fixture(autouse=True)
def scratch_embedded_db(tmp_path_factory, monkeypatch):
    """No test ever touches the real instance/ database: an app built without EMBEDDED_DB gets a fresh
    scratch file of its own test."""
    path = tmp_path_factory.mktemp("embedded") / "default.sqlite3"
    monkeypatch.setenv("EMBEDDED_DB", str(path))
    return path


STORE_KINDS = ["sqlite", "mongomock"]


def store_config(kind: str, tmp_path: Path) -> dict:
    """The settings that put an app on a fresh store of `kind` (an SQLite file in tmp_path, or mongomock)."""
    if kind == "sqlite":
        return {"MONGO_URI": "", "EMBEDDED_DB": str(tmp_path / "db" / "test.sqlite3")}
    return {"MONGO_URI": "mongomock://", "MONGO_DB": "test"}


@pytest.fixture(params=STORE_KINDS)
def store_kind(request) -> str:
    """Each test that uses it runs once per store: SQLite and mongomock (the MongoDB code)."""
    return request.param


@pytest.fixture
def new_store(store_kind, tmp_path):
    """A fresh, empty store of each kind."""
    return database.connect(**_connect_args(store_config(store_kind, tmp_path)))


def _connect_args(config: dict) -> dict:
    if config["MONGO_URI"]:
        return {"uri": config["MONGO_URI"], "name": config["MONGO_DB"]}
    return {"path": config["EMBEDDED_DB"]}


@pytest.fixture
def app(tmp_path, data_dir, store_kind):
    """The app on a fresh store (each kind in turn) seeded from the tiny data set."""
    application = create_app(
        {
            **store_config(store_kind, tmp_path),
            "DATA_DIR": str(data_dir),
            "REPORTS_DIR": str(tmp_path / "reports"),
            "TESTING": True,
        }
    )
    yield application
    application.extensions["reports"].shutdown(wait=True)


@pytest.fixture
def client(app):
    """A Flask test client for `app`."""
    return app.test_client()


@pytest.fixture
def store(app) -> database.Store:
    """The app's store."""
    return app.extensions["store"]


@pytest.fixture
def locked_client(tmp_path, data_dir):
    """A client of an app (embedded store, tiny data) that requires the token 's3cret'."""
    app = create_app(
        {
            "MONGO_URI": "",
            "EMBEDDED_DB": str(tmp_path / "db.sqlite3"),
            "DATA_DIR": str(data_dir),
            "REPORTS_DIR": str(tmp_path / "r"),
            "API_TOKEN": "s3cret",
        }
    )
    yield app.test_client()
    app.extensions["reports"].shutdown(wait=True)


def wait_for_report(client, report_id: str, timeout: float = 60.0) -> dict:
    """Poll get_report until the report leaves Running; returns the final JSON."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/get_report?report_id={report_id}").get_json()
        if body["status"] != "Running":
            return body
        time.sleep(0.05)
    raise AssertionError(f"report {report_id} still Running after {timeout} s")


# --------------------------------------------------------------------------- looking inside a store
# Tests may reach under the contract to set up states the API cannot make (a dead worker's report,
# an empty polls table); these helpers do it for each kind of store.

FAR_FUTURE_US = 2**62


def polls_of(store: database.Store, store_id: str):
    """Every stored poll of one store, as the report reads them."""
    return store.read_chunk([store_id], 0, FAR_FUTURE_US)[0]


def hours_of(store: database.Store, store_id: str):
    return store.read_chunk([store_id], 0, FAR_FUTURE_US)[1]


def wipe_polls(store: database.Store) -> None:
    if store.kind == "sqlite":
        import store_sqlite

        store._connection().execute(f"DELETE FROM {store_sqlite.POLLS}")
    else:
        store.db[database.STATUS].delete_many({})


def force_report_state(
    store: database.Store,
    report_id: str,
    *,
    status: str | None = None,
    heartbeat_age: float | None = None,
    progress: dict | None = None,
    error: str | None = None,
    finished: dt.datetime | None = None,
) -> None:
    """Overwrite a stored report's fields (heartbeat_age: seconds in the past; finished: its finish time)."""
    import utils

    beat = None if heartbeat_age is None else database.now_utc() - dt.timedelta(seconds=heartbeat_age)
    if store.kind == "sqlite":
        sets, values = [], []
        if status is not None:
            sets.append("status = ?"), values.append(status)
        if beat is not None:
            sets.append("heartbeat_us = ?"), values.append(int(beat.timestamp() * 1_000_000))
        if progress is not None:
            sets += ["progress_done = ?", "progress_total = ?", "progress_phase = ?"]
            values += [progress["done"], progress["total"], progress.get("phase")]
        if error is not None:
            sets.append("error = ?"), values.append(error)
        if finished is not None:
            sets.append("finished_us = ?"), values.append(utils.datetime_to_us(finished))
        store._connection().execute(f"UPDATE reports SET {', '.join(sets)} WHERE report_id = ?", (*values, report_id))
        return
    fields = {
        key: value
        for key, value in {
            "status": status,
            "heartbeat_at": beat,
            "progress": progress,
            "error": error,
            "finished_at": finished,
        }.items()
        if value is not None
    }
    store.db[database.REPORTS].update_one({"report_id": report_id}, {"$set": fields})


# --------------------------------------------------------------------------- servers the tests start


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds; always reaped."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_gunicorn(env: dict, access_log: Path, stdout) -> subprocess.Popen:
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` from the checkout, logging each answer as
    "<worker pid> <status> <path>" to `access_log` (tests tell which worker answered by it)."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "--access-logfile",
        str(access_log),
        "--access-logformat",
        "%(p)s %(s)s %(U)s",
        "app:create_app()",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT)


# --------------------------------------------------------------------------- the sample on a cluster

SAMPLE_RANGE_STORES = 40  # the sample's 200 stores make 5 ranges


def sample_app(embedded_db: Path, reports_dir: Path, scheduler: str = "", chunk_stores: int = SAMPLE_RANGE_STORES):
    """An app on `embedded_db` seeded from data/ (the sample), its reports on `scheduler` when one is named."""
    return create_app(
        {
            "MONGO_URI": "",
            "EMBEDDED_DB": str(embedded_db),
            "DATA_DIR": str(ROOT / "data"),
            "REPORTS_DIR": str(reports_dir),
            "CHUNK_STORES": chunk_stores,
            "DASK_SCHEDULER": scheduler,
            "TESTING": True,
        }
    )


def thread_path_csv(embedded_db: Path, reports_dir: Path) -> bytes:
    """The CSV of the sample's report from the thread path (no scheduler), the bytes a cluster must give."""
    app = sample_app(embedded_db, reports_dir)
    try:
        web = app.test_client()
        report_id = web.post("/trigger_report").get_json()["report_id"]
        assert wait_for_report(web, report_id)["status"] == "Complete"
        payload = web.get(f"/get_report?report_id={report_id}&format=csv").data
    finally:
        app.extensions["reports"].shutdown(wait=True)
    assert payload.count(b"\n") == 201
    return payload
