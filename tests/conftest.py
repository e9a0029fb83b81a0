"""Shared fixtures: a tiny data folder with hand-worked answers, an app on mongomock, its client and db."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import settings

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
    {"store_id": "allday", "uptime_last_hour": 40.0, "uptime_last_day": 23.67, "uptime_last_week": 167.67,
     "downtime_last_hour": 20.0, "downtime_last_day": 0.33, "downtime_last_week": 0.33},
    {"store_id": "late", "uptime_last_hour": 60.0, "uptime_last_day": 24.0, "uptime_last_week": 168.0,
     "downtime_last_hour": 0.0, "downtime_last_day": 0.0, "downtime_last_week": 0.0},
    {"store_id": "worked", "uptime_last_hour": 0.0, "uptime_last_day": 1.74, "uptime_last_week": 1.74,
     "downtime_last_hour": 0.0, "downtime_last_day": 1.26, "downtime_last_week": 1.26},
]


def write_data_dir(directory: Path, status: str = TINY_STATUS, hours: str = TINY_HOURS, zones: str = TINY_ZONES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "store_status.csv").write_text(status)
    (directory / "menu_hours.csv").write_text(hours)
    (directory / "timezones.csv").write_text(zones)
    return directory


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A folder holding the tiny three-file data set."""
    return write_data_dir(tmp_path / "data")


@pytest.fixture
def app(tmp_path, data_dir):
    """The app on a fresh mongomock seeded from the tiny data set."""
    application = create_app(
        {"MONGO_URI": "", "DATA_DIR": str(data_dir), "REPORTS_DIR": str(tmp_path / "reports"), "TESTING": True}
    )
    yield application
    application.extensions["reports"].shutdown(wait=True)


@pytest.fixture
def client(app):
    """A Flask test client for `app`."""
    return app.test_client()


@pytest.fixture
def db(app):
    """The app's (mongomock) database."""
    return app.extensions["store"].db


def wait_for_report(client, report_id: str, timeout: float = 60.0) -> dict:
    """Poll get_report until the report leaves Running; returns the final JSON."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/get_report?report_id={report_id}").get_json()
        if body["status"] != "Running":
            return body
        time.sleep(0.05)
    raise AssertionError(f"report {report_id} still Running after {timeout} s")
