"""The app factory: settings, the store, the report generator, the request guards and the API.

    python app.py                     # development server on PORT (default 8000)
    gunicorn 'app:create_app()'       # production (see gunicorn.conf.py)

Configuration: defaults, then the environment (MONGO_URI, MONGO_DB, EMBEDDED_DB,
DATA_DIR, REPORTS_DIR, PORT, REPORT_WORKERS, CHUNK_STORES, STALE_AFTER_SECONDS, DASK_SCHEDULER,
REPORT_SCHEDULE, REPORT_EVERY_SECONDS),
then the `config` passed to `create_app` (tests).  With no MONGO_URI the app runs
on the SQLite file EMBEDDED_DB (default instance/store_monitoring.sqlite3),
seeded from DATA_DIR when it is empty.

The rest of the HTTP layer, one job a module: `api.py` (the views, one blueprint), `guards.py` (what
every request passes: cross-site refusal, the token, the database time limit, unknown query parameters,
the security headers) and `errors.py` (the one error body and its handlers).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
from pathlib import Path

from flask import Flask

import alerts
import api
import database
import errors
import guards
import schedule
import sources
from reportGenerator import ReportGenerator

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent

DEFAULTS = {
    "MONGO_URI": "",
    "MONGO_DB": database.DEFAULT_DB,
    "EMBEDDED_DB": str(database.DEFAULT_EMBEDDED_DB),
    "DATA_DIR": str(ROOT / "data"),
    "REPORTS_DIR": str(ROOT / "reports"),
    "PORT": 8000,
    "REPORT_WORKERS": 2,
    "CHUNK_STORES": 5_000,
    "STALE_AFTER_SECONDS": 60,
    "MAX_UPLOAD_MB": 200,
    "API_TOKEN": "",
    "MAX_QUEUED_REPORTS": "",  # reports queued or running per process; unset means 4 x REPORT_WORKERS
    "REPORT_RETENTION_DAYS": 30,  # finished reports older than this are deleted (file and stored CSV)
    "MAX_REPORTS": 1000,  # and so are finished reports beyond the newest MAX_REPORTS
    # Host names the service answers to (Flask's TRUSTED_HOSTS, against DNS rebinding); "*" means any
    "TRUSTED_HOSTS": "localhost,127.0.0.1,::1",
    "DASK_SCHEDULER": "",  # tcp://host:port: reports run as one task per range of stores on that Dask cluster
    "MIN_FREE_MB": 200,  # /health is 503 when the disk holding the database or the reports has less free
    # the schedule (schedule.py, docs/schedule.md): one of the two, or neither (reports start only when asked)
    "REPORT_SCHEDULE": "",  # a five-field cron expression, in UTC
    "REPORT_EVERY_SECONDS": "",  # an interval in whole seconds; ticks on its multiples since the Unix epoch
    # alerts (alerts.py, docs/alerts.md): set by the operator's environment only, never through the API
    "ALERT_WEBHOOK_URL": "",  # http(s) URL that gets a signed POST per report with alert events; unset: off
    "ALERT_SECRET": "",  # the key of the X-Signature-SHA256 HMAC; required with ALERT_WEBHOOK_URL
    "ALERT_DOWNTIME_MINUTES": 30,  # a store is down when its downtime_last_hour reaches this
}
INTEGER_SETTINGS = (
    "PORT",
    "REPORT_WORKERS",
    "CHUNK_STORES",
    "STALE_AFTER_SECONDS",
    "MAX_UPLOAD_MB",
    "MAX_QUEUED_REPORTS",
    "REPORT_RETENTION_DAYS",
    "MAX_REPORTS",
    "MIN_FREE_MB",
)


def load_settings(config: dict | None = None) -> dict:
    """Defaults, overridden by the environment, overridden by `config`."""
    settings = dict(DEFAULTS)
    for key in DEFAULTS:
        if os.environ.get(key) not in (None, ""):
            settings[key] = os.environ[key]
    settings.update(config or {})
    settings["DATA_DIR_EXPLICIT"] = "DATA_DIR" in (config or {}) or os.environ.get("DATA_DIR") not in (None, "")
    if settings["MAX_QUEUED_REPORTS"] in ("", None):
        settings["MAX_QUEUED_REPORTS"] = 4 * int(settings["REPORT_WORKERS"])
    for key in INTEGER_SETTINGS:
        settings[key] = int(settings[key])
    hosts = settings["TRUSTED_HOSTS"]
    if isinstance(hosts, str):
        hosts = [name.strip() for name in hosts.split(",") if name.strip()]
    settings["TRUSTED_HOSTS"] = None if hosts is None or "*" in hosts else list(hosts)
    return settings


def create_app(config: dict | None = None) -> Flask:
    """Build the app: settings, the store (seeded and prepared), the report generator, the guards and the API.

    An explicitly set DATA_DIR that cannot seed the store stops start-up (SystemExit with one line).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config.from_mapping(load_settings(config))
    try:
        sources.max_future_seconds()  # read again for each file; a bad value stops start-up, not an upload
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        app.config.update(alerts.check_settings(app.config))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    try:  # a bad schedule stops start-up, naming the setting
        report_schedule = schedule.parse(app.config["REPORT_SCHEDULE"], app.config["REPORT_EVERY_SECONDS"])
    except schedule.ScheduleError as error:
        raise SystemExit(f"error: {error}") from None
    app.json.sort_keys = False  # keep "status" first and report rows in column order
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPLOAD_MB"] * 1024 * 1024  # larger uploads get 413
    store = _open_store(app)
    app.extensions["store"] = store
    app.extensions["ingest_slot"] = threading.Semaphore(1)  # one upload parsed and loaded at a time per process
    app.extensions["reports"] = _report_generator(app, store)
    app.extensions["schedule"] = report_schedule  # None when neither setting is set
    # its thread claims each tick through the database, and ends with the report generator's shutdown
    app.extensions["scheduler"] = schedule.start(store, app.extensions["reports"], report_schedule)
    app.extensions["alerts"] = _alerts(app, store, app.extensions["reports"])
    _log_access(app)
    errors.init_app(app)
    guards.init_app(app)
    app.register_blueprint(api.bp)
    return app


def _open_store(app: Flask) -> database.Store:
    """The store the settings name, opened, seeded when it seeds itself on start, and prepared.

    STORE in the config is a ready database.Store, so tests can run two apps ("workers") on one database.
    """
    try:
        store = app.config.get("STORE") or database.connect(
            app.config["MONGO_URI"] or None, app.config["MONGO_DB"], app.config["EMBEDDED_DB"]
        )
    except database.DatabaseRefused as error:  # another application's file, or a newer schema: left untouched
        raise SystemExit(f"error: {error}") from None
    except (OSError, sqlite3.Error) as error:  # the embedded file cannot be created or opened
        raise SystemExit(f"error: cannot open the embedded database {app.config['EMBEDDED_DB']}: {error}") from None
    for step in store.migrations_applied:
        log.warning("database migrated: %s", step)
    if store.warning_on_start:
        log.warning("%s", store.warning_on_start)
    if store.seeds_on_start:
        _seed(app, store)
    try:
        stale = store.prepare(dt.timedelta(seconds=app.config["STALE_AFTER_SECONDS"]))
        if stale:
            log.warning("marked %d stale Running reports as Failed", stale)
    except database.DATABASE_ERRORS as error:
        log.error("could not prepare the database: %s", database.describe_error(error))
    return store


def _report_generator(app: Flask, store: database.Store) -> ReportGenerator:
    """The report generator of this process, with its retention sweep started."""
    generator = ReportGenerator(
        store,
        app.config["REPORTS_DIR"],
        chunk_stores=app.config["CHUNK_STORES"],
        workers=app.config["REPORT_WORKERS"],
        heartbeat_seconds=min(10.0, app.config["STALE_AFTER_SECONDS"] / 4),
        max_queued=app.config["MAX_QUEUED_REPORTS"],
        scheduler=app.config["DASK_SCHEDULER"],
    )
    generator.start_retention(app.config["REPORT_RETENTION_DAYS"], app.config["MAX_REPORTS"])
    return generator


def _alerts(app: Flask, store: database.Store, generator: ReportGenerator) -> alerts.Alerts | None:
    """With ALERT_WEBHOOK_URL set, the alerts of this process, hooked to its finished reports, their sweep
    started; None when alerts are off.  ALERT_TIMING (tests only, never from the environment) holds
    `alerts.Alerts` keyword arguments: attempts, waits, timeout, sweep period."""
    if not app.config["ALERT_WEBHOOK_URL"]:
        return None
    sender = alerts.Alerts(
        store,
        app.config["ALERT_WEBHOOK_URL"],
        app.config["ALERT_SECRET"],
        app.config["ALERT_DOWNTIME_MINUTES"],
        **app.config.get("ALERT_TIMING", {}),
    )
    generator.on_complete.append(sender.report_complete)
    sender.start()
    log.info(
        "alerts: reports at the newest data POST their events to %s (a store is down at %g minutes of downtime "
        "in the last hour)",
        alerts.where(app.config["ALERT_WEBHOOK_URL"]),
        app.config["ALERT_DOWNTIME_MINUTES"],
    )
    return sender


def _log_access(app: Flask) -> None:
    """One line on who may call the API, one on the host names it answers to."""
    if app.config["API_TOKEN"]:
        log.info(
            "API_TOKEN is set: every endpoint but /health, /, /static and /openapi.json needs "
            "'Authorization: Bearer <token>'"
        )
    else:
        log.warning("API_TOKEN is not set: the API is open to anyone who can reach it")
    log.info("answering to hosts: %s", ", ".join(app.config["TRUSTED_HOSTS"]) if app.config["TRUSTED_HOSTS"] else "any")


def _seed(app: Flask, store: database.Store) -> None:
    """Seed an empty embedded store from DATA_DIR; an explicit DATA_DIR that cannot seed it stops start-up."""
    data_dir = Path(app.config["DATA_DIR"])
    problem = database.data_dir_problem(data_dir)
    if problem:
        if app.config["DATA_DIR_EXPLICIT"]:
            raise SystemExit(f"error: {problem}")
        log.warning("%s: starting with whatever the database holds", problem)
        return
    for summary in database.seed_if_empty(store, data_dir):
        if summary["notes"] and not summary["loaded"]:
            log.warning("not seeded from %s: %s", summary["file"], "; ".join(summary["notes"]))
        else:
            log.info("seeded %s: %d loaded, %d rejected", summary["file"], summary["loaded"], summary["rejected"])


if __name__ == "__main__":
    application = create_app()
    application.run(host=os.environ.get("HOST", "127.0.0.1"), port=application.config["PORT"], threaded=True)
