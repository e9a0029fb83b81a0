"""Scheduled reports (docs/schedule.md): the settings refused at start-up, the ticks, one report per tick
across two apps on one database and across a real gunicorn's two workers, a skipped tick, a tick missed
while every worker was down, database errors during a claim, and GET /schedule."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

import database
import schedule
import utils
from app import create_app
from tests.conftest import TINY_REPORT, free_port, start_gunicorn, stop_process, store_config, write_data_dir

US = 1_000_000
TICK_RE = re.compile(r"schedule: tick (\S+) started report ([0-9a-f]{32}) \(pid (\d+)\)")


def us(text: str) -> int:
    return utils.parse_as_of(text)


def wait_until(condition, what: str, timeout: float = 60.0):
    """Poll `condition` until it gives something true, which is returned; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def last_tick_if(store: database.Store, predicate):
    """The store's last claimed tick when `predicate(tick)` holds, else None."""
    last = store.last_tick()
    return last if last is not None and predicate(last) else None


def schedule_as_described(app) -> dict:
    """GET /schedule on `app`, its answer checked against openapi.json by schemathesis; its body."""
    import schemathesis
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    case = schemathesis.openapi.from_wsgi("/openapi.json", app)["/schedule"]["GET"].Case()
    response = case.call()
    case.validate_response(
        response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
    )
    assert response.status_code == 200
    return response.json()


def scheduled_app(tmp_path, config: dict | None = None, **settings):
    """An app seeded with the tiny data set; `config` puts it on a store (STORE, or store_config)."""
    return create_app(
        {
            **(config or store_config("sqlite", tmp_path)),
            "DATA_DIR": str(write_data_dir(tmp_path / "data")),
            "REPORTS_DIR": str(tmp_path / "reports"),
            "TESTING": True,
            **settings,
        }
    )


def stop(app) -> None:
    """Shut the app's report generator down, which ends its scheduler thread; wait for both."""
    app.extensions["reports"].shutdown(wait=True)
    scheduler = app.extensions["scheduler"]
    if scheduler is not None:
        scheduler.thread.join(30)
        assert not scheduler.thread.is_alive(), "the scheduler thread outlived the report generator"


def claimed_ticks(store: database.Store) -> list[dict]:
    """Every tick the database holds as claimed, oldest first (read under the contract, as conftest's helpers do)."""
    if store.kind == "sqlite":
        import store_sqlite

        rows = store._connection().execute(
            f"SELECT tick_us, outcome, report_id FROM {store_sqlite.TICKS} ORDER BY tick_us"
        )
        return [{"tick_us": tick, "outcome": outcome, "report_id": report_id} for tick, outcome, report_id in rows]
    import store_mongo

    return [
        {"tick_us": doc["_id"], "outcome": doc["outcome"], "report_id": doc.get("report_id")}
        for doc in store.db[store_mongo.TICKS].find().sort("_id", 1)
    ]


def scheduled_reports(store: database.Store) -> dict[str, dict]:
    """report_id -> record of every report with trigger "schedule"."""
    return {row["report_id"]: row for row in store.list_reports(limit=10_000) if row["trigger"] == "schedule"}


def assert_one_report_per_started_tick(store: database.Store) -> list[dict]:
    """Each tick claimed "started" names its own report, which exists with trigger "schedule"; no other
    scheduled report exists; a skipped tick names none.  Returns the started ticks."""
    ticks = claimed_ticks(store)
    assert len({tick["tick_us"] for tick in ticks}) == len(ticks)
    started = [tick for tick in ticks if tick["outcome"] == "started"]
    assert {tick["outcome"] for tick in ticks} <= {"started", "skipped"}
    assert all(tick["report_id"] is None for tick in ticks if tick["outcome"] == "skipped")
    reports = scheduled_reports(store)
    assert sorted(tick["report_id"] for tick in started) == sorted(reports)
    assert len(reports) == len(started)
    for report in reports.values():
        assert report["trigger"] == "schedule"
        assert report["status"] in ("Running", "Complete", "Failed")
    return started


# --------------------------------------------------------------------------- the ticks


def test_interval_ticks_are_multiples_of_the_interval_since_the_epoch():
    every = schedule.Schedule(every_seconds=60)
    now = us("2024-01-01T12:07:30.5Z")
    assert every.due_tick_us(now) == us("2024-01-01T12:07:00Z")
    assert every.next_tick_us(now) == us("2024-01-01T12:08:00Z")
    on_a_tick = us("2024-01-01T12:08:00Z")
    assert every.due_tick_us(on_a_tick) == on_a_tick
    assert every.next_tick_us(on_a_tick) == us("2024-01-01T12:09:00Z")
    assert every.next_tick_us(on_a_tick - 1) == on_a_tick
    seven = schedule.Schedule(every_seconds=7)  # not a divisor of a minute: still the epoch's multiples
    assert seven.due_tick_us(us("2024-01-01T00:00:00Z")) == 1_704_067_197 * US
    assert seven.next_tick_us(us("2024-01-01T00:00:00Z")) == 1_704_067_204 * US
    assert every.describe() == {"every_seconds": 60}


def test_cron_ticks_are_in_utc_whatever_the_host_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        quarter = schedule.Schedule(cron="*/15 * * * *")
        assert quarter.due_tick_us(us("2024-01-01T12:07:30.5Z")) == us("2024-01-01T12:00:00Z")
        assert quarter.next_tick_us(us("2024-01-01T12:07:30.5Z")) == us("2024-01-01T12:15:00Z")
        assert quarter.due_tick_us(us("2024-01-01T12:15:00Z")) == us("2024-01-01T12:15:00Z")
        assert quarter.next_tick_us(us("2024-01-01T12:15:00Z")) == us("2024-01-01T12:30:00Z")
        mondays = schedule.Schedule(cron="0 9 * * 1")  # 2024-01-03 is a Wednesday
        assert mondays.due_tick_us(us("2024-01-03T10:00:00Z")) == us("2024-01-01T09:00:00Z")
        assert mondays.next_tick_us(us("2024-01-03T10:00:00Z")) == us("2024-01-08T09:00:00Z")
        assert mondays.describe() == {"cron": "0 9 * * 1"}
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_settings_are_parsed_and_blank_means_unset():
    assert schedule.parse(None, None) is None
    assert schedule.parse("", "  ") is None
    assert schedule.parse("  0  *  * * *  ", "") == schedule.Schedule(cron="0 * * * *")
    assert schedule.parse("", "60") == schedule.Schedule(every_seconds=60)
    assert schedule.parse(None, 3600) == schedule.Schedule(every_seconds=3600)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"REPORT_SCHEDULE": "0 * * * *", "REPORT_EVERY_SECONDS": "60"},
            "error: REPORT_SCHEDULE and REPORT_EVERY_SECONDS are both set: set one of them "
            "(a cron expression, or an interval in seconds)",
        ),
        (
            {"REPORT_EVERY_SECONDS": "-5"},
            "error: REPORT_EVERY_SECONDS must be a whole number of seconds from 1 to 31622400, not '-5'",
        ),
        (
            {"REPORT_EVERY_SECONDS": "0"},
            "error: REPORT_EVERY_SECONDS must be a whole number of seconds from 1 to 31622400, not '0'",
        ),
        (
            {"REPORT_EVERY_SECONDS": "1.5"},
            "error: REPORT_EVERY_SECONDS must be a whole number of seconds from 1 to 31622400, not '1.5'",
        ),
        (
            {"REPORT_EVERY_SECONDS": "hourly"},
            "error: REPORT_EVERY_SECONDS must be a whole number of seconds from 1 to 31622400, not 'hourly'",
        ),
        (
            {"REPORT_EVERY_SECONDS": "31622401"},
            "error: REPORT_EVERY_SECONDS must be a whole number of seconds from 1 to 31622400, not '31622401'",
        ),
        (
            {"REPORT_SCHEDULE": "* * * *"},
            "error: REPORT_SCHEDULE must be a cron expression of five fields (minute hour day-of-month month "
            "day-of-week, evaluated in UTC), e.g. '0 * * * *' for every hour; '* * * *' has 4",
        ),
        (
            {"REPORT_SCHEDULE": "0 * * * * *"},
            "error: REPORT_SCHEDULE must be a cron expression of five fields (minute hour day-of-month month "
            "day-of-week, evaluated in UTC), e.g. '0 * * * *' for every hour; '0 * * * * *' has 6",
        ),
        (
            {"REPORT_SCHEDULE": "@hourly"},
            "error: REPORT_SCHEDULE must be a cron expression of five fields (minute hour day-of-month month "
            "day-of-week, evaluated in UTC), e.g. '0 * * * *' for every hour; '@hourly' has 1",
        ),
        (
            {"REPORT_SCHEDULE": "61 * * * *"},
            "error: REPORT_SCHEDULE '61 * * * *' is not a usable cron expression: "
            "[61 * * * *] is not acceptable, out of range",
        ),
        (
            {"REPORT_SCHEDULE": "0 0 31 2 *"},
            "error: REPORT_SCHEDULE '0 0 31 2 *' is not a usable cron expression: "
            "no date matches it, so it would never start a report",
        ),
    ],
)
def test_a_bad_schedule_stops_start_up_naming_the_setting(tmp_path, settings, message):
    with pytest.raises(SystemExit) as stopped:
        scheduled_app(tmp_path, **settings)
    assert str(stopped.value) == message
    assert not (tmp_path / "db").exists()  # refused before the database was opened


def test_a_bad_schedule_in_the_environment_stops_start_up(tmp_path, monkeypatch):
    monkeypatch.setenv("REPORT_SCHEDULE", "every hour")
    with pytest.raises(SystemExit, match=r"^error: REPORT_SCHEDULE must be a cron expression of five fields"):
        scheduled_app(tmp_path)
    monkeypatch.setenv("REPORT_SCHEDULE", "")
    monkeypatch.setenv("REPORT_EVERY_SECONDS", "-1")
    with pytest.raises(SystemExit, match=r"^error: REPORT_EVERY_SECONDS must be a whole number"):
        scheduled_app(tmp_path)


# --------------------------------------------------------------------------- GET /schedule


def test_no_schedule_no_thread_and_get_schedule_says_so(client, app):
    assert app.extensions["schedule"] is None and app.extensions["scheduler"] is None
    assert not [thread for thread in threading.enumerate() if thread.name == "report-schedule"]
    response = client.get("/schedule")
    assert response.status_code == 200
    assert response.get_json() == {
        "schedule": None,
        "next_tick": None,
        "last_tick": None,
        "last_scheduled_report": None,
    }
    report_id = client.post("/trigger_report").get_json()["report_id"]
    listed = client.get("/reports").get_json()["reports"]
    assert [(row["report_id"], row["trigger"]) for row in listed] == [(report_id, "api")]


def test_get_schedule_refuses_unknown_parameters(client):
    response = client.get("/schedule?verbose=1")
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "unknown query parameter(s) verbose on /schedule; this call takes: none",
        "status": 400,
    }


def test_get_schedule_shows_the_cron_and_its_next_tick(tmp_path, store_kind):
    app = scheduled_app(tmp_path, store_config(store_kind, tmp_path), REPORT_SCHEDULE="0 0 1 1 *")
    try:
        store = app.extensions["store"]
        before = utils.us_to_datetime(store.clock_us()).year
        body = app.test_client().get("/schedule").get_json()
        after = utils.us_to_datetime(store.clock_us()).year
        assert body["schedule"] == {"cron": "0 0 1 1 *"}
        assert body["next_tick"] in {f"{year + 1}-01-01T00:00:00Z" for year in (before, after)}
        assert body["last_tick"] is None and body["last_scheduled_report"] is None
    finally:
        stop(app)


def test_get_schedule_shows_the_interval_and_its_next_tick(tmp_path):
    app = scheduled_app(tmp_path, REPORT_EVERY_SECONDS="86400")
    try:
        store = app.extensions["store"]
        before = store.clock_us()
        body = app.test_client().get("/schedule").get_json()
        after = store.clock_us()
        day = 86_400 * US
        expected = {schedule.iso_us((now // day + 1) * day) for now in (before, after)}
        assert body == {
            "schedule": {"every_seconds": 86400},
            "next_tick": body["next_tick"],
            "last_tick": None,
            "last_scheduled_report": None,
        }
        assert body["next_tick"] in expected and body["next_tick"].endswith("T00:00:00Z")
    finally:
        stop(app)


# --------------------------------------------------------------------------- one report per tick


@pytest.mark.parametrize("kind", ["sqlite", "mongomock"])
def test_two_workers_on_one_database_start_exactly_one_report_per_tick(tmp_path, kind):
    """Two apps on one database (SQLite: one file, a connection each; mongomock: one in-process database
    both use) claim REPORT_EVERY_SECONDS=1 ticks: every started tick has exactly one report, and both
    workers tried the same ticks."""
    if kind == "sqlite":
        path = tmp_path / "db" / "shared.sqlite3"
        path.parent.mkdir()
        stores = [database.connect(path=path), database.connect(path=path)]
    else:
        shared = database.connect(uri="mongomock://", name="schedule_test")
        stores = [shared, shared]
    database.load_dir(stores[0], write_data_dir(tmp_path / "seed"))
    apps = [
        scheduled_app(tmp_path / f"app{n}", {"STORE": store}, REPORT_EVERY_SECONDS=1) for n, store in enumerate(stores)
    ]
    try:
        first = wait_until(stores[0].last_tick, "a first tick claimed")["tick_us"]
        wait_until(lambda: stores[0].last_tick()["tick_us"] >= first + 4 * US, "four more ticks claimed")
        api_report = apps[0].test_client().post("/trigger_report").get_json()["report_id"]
    finally:
        for app in apps:
            stop(app)
    started = assert_one_report_per_started_tick(stores[0])
    assert len(started) >= 4
    tried = [
        {tick: (outcome, report_id) for tick, outcome, report_id in app.extensions["scheduler"].outcomes}
        for app in apps
    ]
    contended = 0
    for tick in claimed_ticks(stores[0]):
        if tick["tick_us"] not in tried[0] or tick["tick_us"] not in tried[1]:
            continue  # the first tick (an app may have started after it), or a tick one app woke too late for
        contended += 1
        outcomes = sorted(tried[n][tick["tick_us"]][0] for n in (0, 1))
        assert outcomes in (["started", "taken"], ["skipped", "taken"])
        winner = next((tried[n][tick["tick_us"]][1] for n in (0, 1) if tried[n][tick["tick_us"]][0] == "started"), None)
        assert winner == tick["report_id"]
    assert contended >= 3, "the two workers claimed the same ticks"
    for n in (0, 1):  # a tick one worker claimed but the database does not hold does not exist
        assert set(tried[n]) <= {tick["tick_us"] for tick in claimed_ticks(stores[0])}
    listed = {row["report_id"]: row for row in apps[1].test_client().get("/reports?per_page=100").get_json()["reports"]}
    assert listed[api_report]["trigger"] == "api"
    for tick in started:
        assert listed[tick["report_id"]]["trigger"] == "schedule"
    complete = [tick["report_id"] for tick in started if listed[tick["report_id"]]["status"] == "Complete"]
    assert complete, "no scheduled report completed"
    described = schedule_as_described(apps[1])
    last = stores[0].last_tick()
    assert described["schedule"] == {"every_seconds": 1}
    assert described["last_tick"] == {
        "tick": schedule.iso_us(last["tick_us"]),
        "outcome": last["outcome"],
        "report_id": last["report_id"],
        "claimed_at": schedule.iso_us(last["claimed_at_us"]),
    }
    newest = max(started, key=lambda tick: tick["tick_us"])["report_id"]
    assert described["last_scheduled_report"] == listed[newest]
    body = apps[1].test_client().get(f"/get_report?report_id={complete[0]}").get_json()
    assert body["trigger"] == "schedule" and body["as_of"] == "2023-01-24T13:00:00Z"  # the newest data
    assert body["data"] == TINY_REPORT


def test_a_real_gunicorn_with_two_workers_starts_one_report_per_tick(tmp_path):
    """`gunicorn -c gunicorn.conf.py` with two workers on one SQLite file, REPORT_EVERY_SECONDS=1: both
    workers run a scheduler; each tick started once, by one of them, and its report is the only one."""
    port = free_port()
    db_path = tmp_path / "db" / "shared.sqlite3"
    env = dict(
        os.environ,
        PORT=str(port),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="2",
        MONGO_URI="",
        DATA_DIR=str(write_data_dir(tmp_path / "data")),
        REPORTS_DIR=str(tmp_path / "reports"),
        EMBEDDED_DB=str(db_path),
        REPORT_EVERY_SECONDS="1",
        REPORT_SCHEDULE="",
    )
    output_path = tmp_path / "gunicorn.out"
    with open(output_path, "wb") as output:
        server = start_gunicorn(env, tmp_path / "access.log", output)
    base = f"http://127.0.0.1:{port}"

    def schedule_state():
        try:
            with urllib.request.urlopen(base + "/schedule", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            assert server.poll() is None, output_path.read_text()
            return None

    def two_schedulers():
        return len(set(re.findall(r"this process \(pid (\d+)\) claims its ticks", output_path.read_text()))) == 2

    try:
        wait_until(two_schedulers, "both workers started a scheduler")
        first = wait_until(lambda: (schedule_state() or {}).get("last_tick"), "a first tick claimed")["tick"]
        first_us = us(first)
        wait_until(
            lambda: us((schedule_state() or {}).get("last_tick", {}).get("tick", first)) >= first_us + 5 * US,
            "five more ticks claimed",
        )
        body = schedule_state()
        assert body["schedule"] == {"every_seconds": 1}
    finally:
        stop_process(server)
    logged = TICK_RE.findall(output_path.read_text())
    store = database.connect(path=db_path)
    try:
        started = assert_one_report_per_started_tick(store)
        assert len(started) >= 5
        # the log of the two workers names the same starts as the database: one worker per tick
        assert sorted((us(tick), report_id) for tick, report_id, _ in logged) == sorted(
            (tick["tick_us"], tick["report_id"]) for tick in started
        )
        assert len({tick for tick, _, _ in logged}) == len(logged)
        reports = scheduled_reports(store)
        assert {report["status"] for report in reports.values()} <= {"Complete", "Failed"}
        assert "Complete" in {report["status"] for report in reports.values()}
    finally:
        store.close()


def test_a_tick_that_finds_the_last_scheduled_report_running_is_skipped_and_logged(
    tmp_path, store_kind, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="schedule")
    release, entered = threading.Event(), threading.Event()
    real_report = utils.uptime_report

    def held_report(*args, **kwargs):
        entered.set()
        assert release.wait(60), "the test never released the report"
        return real_report(*args, **kwargs)

    monkeypatch.setattr(utils, "uptime_report", held_report)
    app = scheduled_app(tmp_path, store_config(store_kind, tmp_path), REPORT_EVERY_SECONDS=1)
    store = app.extensions["store"]
    try:
        held = wait_until(lambda: (store.last_tick() or {}).get("report_id"), "a scheduled report started")
        assert entered.wait(60)
        skipped = wait_until(lambda: last_tick_if(store, lambda last: last["outcome"] == "skipped"), "a tick skipped")
        body = schedule_as_described(app)  # while the report is held, every tick is skipped
        claims = {schedule.iso_us(tick["tick_us"]): tick for tick in claimed_ticks(store)}
        assert body["last_tick"] == {
            "tick": body["last_tick"]["tick"],
            "outcome": "skipped",
            "report_id": None,
            "claimed_at": body["last_tick"]["claimed_at"],
        }
        assert claims[body["last_tick"]["tick"]]["outcome"] == "skipped"
        last_report = body["last_scheduled_report"]
        assert (last_report["report_id"], last_report["status"], last_report["trigger"]) == (
            held,
            "Running",
            "schedule",
        )
        assert last_report["as_of"] == "2023-01-24T13:00:00Z"  # the newest data, fixed before the engine ran
        release.set()
        wait_until(lambda: store.find_report(held)["status"] == "Complete", "the held report completed")
        after = wait_until(
            lambda: last_tick_if(
                store, lambda last: last["outcome"] == "started" and last["tick_us"] > skipped["tick_us"]
            ),
            "a tick started after the report finished",
        )
        assert after["report_id"] != held
    finally:
        release.set()
        stop(app)
    assert_one_report_per_started_tick(store)
    skips = [tick["tick_us"] for tick in claimed_ticks(store) if tick["outcome"] == "skipped"]
    assert skipped["tick_us"] in skips
    logged = [r.getMessage() for r in caplog.records if r.name == "schedule" and r.levelno == logging.WARNING]
    assert logged == [
        f"tick {schedule.iso_us(tick)} skipped: the previous scheduled report is still running" for tick in skips
    ]


# --------------------------------------------------------------------------- restarts


def test_the_tick_missed_while_every_worker_was_down_runs_once_at_restart(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="schedule")
    config = store_config("sqlite", tmp_path)
    first = scheduled_app(tmp_path, config, REPORT_EVERY_SECONDS=1)
    store = first.extensions["store"]
    try:
        assert first.extensions["scheduler"].ready.wait(30)
        assert first.extensions["scheduler"].caught_up_tick_us is None  # nothing claimed before: no catch-up
        last_before = wait_until(store.last_tick, "a first tick claimed")
    finally:
        stop(first)
    last_before = store.last_tick()  # the newest tick the stopped app claimed
    # every worker is down while at least one tick falls
    wait_until(lambda: store.clock_us() >= last_before["tick_us"] + 2 * US, "a tick passed while down")
    second = scheduled_app(tmp_path, config, REPORT_EVERY_SECONDS=1)
    try:
        scheduler = second.extensions["scheduler"]
        assert scheduler.ready.wait(30)
        caught_up = scheduler.caught_up_tick_us
        assert caught_up is not None and caught_up % US == 0
        assert last_before["tick_us"] + US < caught_up <= second.extensions["store"].clock_us()
        claims = {tick["tick_us"]: tick for tick in claimed_ticks(second.extensions["store"])}
        assert claims[caught_up]["outcome"] == "started"
        # only the most recent missed tick, not the backlog between the two runs
        assert [tick for tick in claims if last_before["tick_us"] < tick < caught_up] == []
        assert scheduler.outcomes[0] == (caught_up, "started", claims[caught_up]["report_id"])
        report_id = claims[caught_up]["report_id"]
        wait_until(lambda: second.extensions["store"].find_report(report_id)["status"] == "Complete", "it ran")
    finally:
        stop(second)
    assert_one_report_per_started_tick(second.extensions["store"])
    catch_ups = [
        r.getMessage() for r in caplog.records if r.name == "schedule" and "no worker claimed" in r.getMessage()
    ]
    assert catch_ups == [
        f"the tick {schedule.iso_us(caught_up)} fell while no worker claimed it (the last claimed was "
        f"{schedule.iso_us(last_before['tick_us'])}): claiming it now"
    ]


YEARLY = "0 0 1 1 *"


def test_at_start_a_missed_tick_is_claimed_only_after_an_older_claim(tmp_path, store_kind):
    """With a yearly cron the due tick is this year's 1 January: a fresh schedule (no claim yet) does not
    run it; one whose last claim is older does, once; one that claimed it already does not again."""
    config = store_config(store_kind, tmp_path)
    fresh = scheduled_app(tmp_path, config, REPORT_SCHEDULE=YEARLY)
    store = fresh.extensions["store"]
    try:
        assert fresh.extensions["scheduler"].ready.wait(30)
        assert fresh.extensions["scheduler"].caught_up_tick_us is None
        assert store.last_tick() is None
    finally:
        stop(fresh)
    year = schedule.Schedule(cron=YEARLY)
    due = year.due_tick_us(store.clock_us())
    previous = year.due_tick_us(due - 1)
    assert store.claim_tick(previous, "a" * 32) == "started"  # last year's, by a worker long gone
    store.fail_report("a" * 32, "the test's stand-in for an old scheduled report")
    catching_up = scheduled_app(
        tmp_path, config if store_kind == "sqlite" else {"STORE": store}, REPORT_SCHEDULE=YEARLY
    )
    try:
        scheduler = catching_up.extensions["scheduler"]
        assert scheduler.ready.wait(30)
        assert scheduler.caught_up_tick_us == due
        last = store.last_tick()
        assert (last["tick_us"], last["outcome"]) == (due, "started")
        wait_until(lambda: store.find_report(last["report_id"])["status"] == "Complete", "the caught-up report ran")
    finally:
        stop(catching_up)
    again = scheduled_app(tmp_path, config if store_kind == "sqlite" else {"STORE": store}, REPORT_SCHEDULE=YEARLY)
    try:
        assert again.extensions["scheduler"].ready.wait(30)
        assert again.extensions["scheduler"].caught_up_tick_us is None
        assert list(again.extensions["scheduler"].outcomes) == []
    finally:
        stop(again)
    assert [(tick["tick_us"], tick["outcome"]) for tick in claimed_ticks(store)] == [
        (previous, "started"),
        (due, "started"),
    ]
    assert_one_report_per_started_tick(store)


# --------------------------------------------------------------------------- faults


def test_a_claim_that_fails_is_logged_and_tried_again_until_it_holds(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="schedule")
    config = store_config("sqlite", tmp_path)
    import store_sqlite

    real_claim, calls = store_sqlite.SqliteStore.claim_tick, []

    def flaky_claim(self, tick_us, report_id):
        calls.append((tick_us, report_id))
        if len(calls) <= 2:
            raise sqlite3.OperationalError("disk I/O error")
        if len(calls) == 3:  # the claim is made, but its answer is lost on the way back
            real_claim(self, tick_us, report_id)
            raise sqlite3.OperationalError("disk I/O error")
        return real_claim(self, tick_us, report_id)

    monkeypatch.setattr(store_sqlite.SqliteStore, "claim_tick", flaky_claim)
    app = scheduled_app(tmp_path, config, REPORT_EVERY_SECONDS=5)
    store = app.extensions["store"]
    try:
        scheduler = app.extensions["scheduler"]
        wait_until(lambda: len(scheduler.outcomes) >= 1, "the first tick claimed")
        tick_us, outcome, report_id = scheduler.outcomes[0]
        assert calls[:4] == [(tick_us, report_id)] * 4  # one tick, one report id, tried four times
        assert outcome == "started"  # the fourth try said "taken": the report of the third is ours
        wait_until(lambda: store.find_report(report_id)["status"] == "Complete", "the report ran")
        assert scheduler.thread.is_alive()
    finally:
        stop(app)
    failures = [r.getMessage() for r in caplog.records if r.name == "schedule" and "failed" in r.getMessage()]
    assert (
        failures
        == [
            f"claiming the tick {schedule.iso_us(tick_us)} failed (OperationalError: disk I/O error); "
            "trying again until the next tick"
        ]
        * 3
    )
    assert_one_report_per_started_tick(store)


def test_the_scheduler_thread_outlives_unexpected_errors(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="schedule")
    import store_sqlite

    real_clock, calls = store_sqlite.SqliteStore.clock_us, []

    def broken_then_fine(self):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("a bug")
        return real_clock(self)

    monkeypatch.setattr(store_sqlite.SqliteStore, "clock_us", broken_then_fine)
    app = scheduled_app(tmp_path, REPORT_EVERY_SECONDS=1)
    try:
        scheduler = app.extensions["scheduler"]
        wait_until(lambda: [o for o in scheduler.outcomes if o[1] == "started"], "a tick started after the errors")
    finally:
        stop(app)
    errors = [r for r in caplog.records if r.name == "schedule" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["unexpected error; the schedule goes on"] * 2
    assert all(r.exc_info and str(r.exc_info[1]) == "a bug" for r in errors)


def test_a_claimed_report_that_cannot_be_queued_is_failed_with_the_reason(tmp_path, monkeypatch):
    import reportGenerator

    def full(self, report_id, as_of_us=None, trigger="schedule"):
        raise reportGenerator.QueueFull("4 reports are already queued or running here (at most 4)")

    monkeypatch.setattr(reportGenerator.ReportGenerator, "enqueue", full)
    app = scheduled_app(tmp_path, REPORT_EVERY_SECONDS=1)
    store = app.extensions["store"]
    try:
        report_id = wait_until(lambda: (store.last_tick() or {}).get("report_id"), "a tick started")
        wait_until(lambda: store.find_report(report_id)["status"] == "Failed", "the report failed")
        failed = store.find_report(report_id)
    finally:
        stop(app)
    tick = next(t for t in claimed_ticks(store) if t["report_id"] == report_id)
    assert failed["error"] == (
        f"the scheduled report of {schedule.iso_us(tick['tick_us'])} could not be queued: "
        "4 reports are already queued or running here (at most 4)"
    )


def test_enqueue_keeps_the_quota_of_start(tmp_path, monkeypatch):
    """ReportGenerator.enqueue counts against MAX_QUEUED_REPORTS like start, and runs the report."""
    import reportGenerator

    release = threading.Event()
    real_report = utils.uptime_report

    def held_report(*args, **kwargs):
        assert release.wait(60), "the test never released the report"
        return real_report(*args, **kwargs)

    monkeypatch.setattr(utils, "uptime_report", held_report)
    app = scheduled_app(tmp_path, MAX_QUEUED_REPORTS=1)
    store, generator = app.extensions["store"], app.extensions["reports"]
    try:
        assert store.claim_tick(us("2024-01-01T00:00:00Z"), "b" * 32) == "started"
        generator.enqueue("b" * 32)
        with pytest.raises(reportGenerator.QueueFull):
            generator.start()
        with pytest.raises(reportGenerator.QueueFull):
            generator.enqueue("c" * 32)
        release.set()
        wait_until(lambda: store.find_report("b" * 32)["status"] == "Complete", "the enqueued report ran")
        record = store.find_report("b" * 32)
        assert (record["trigger"], record["row_count"], record["as_of_us"]) == (
            "schedule",
            3,
            us("2023-01-24T13:00:00Z"),
        )
    finally:
        release.set()
        stop(app)
    with pytest.raises(RuntimeError, match="shut down"):
        generator.enqueue("d" * 32)


def test_iso_us_writes_instants_as_the_api_does():
    assert schedule.iso_us(us("2024-01-01T00:00:00Z")) == "2024-01-01T00:00:00Z"
    assert schedule.iso_us(us("2024-01-01T00:00:00.000250Z")) == "2024-01-01T00:00:00.000250Z"
    assert schedule.iso_us(0) == "1970-01-01T00:00:00Z"
