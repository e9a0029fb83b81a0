"""The HTTP API (SPEC §4): an app factory and thin routes over database.py and reportGenerator.py.

    python app.py                     # development server on PORT (default 8000)
    gunicorn 'app:create_app()'       # production (see gunicorn.conf.py)

Configuration: defaults, then the environment (MONGO_URI, MONGO_DB, EMBEDDED_DB,
DATA_DIR, REPORTS_DIR, PORT, REPORT_WORKERS, CHUNK_STORES, STALE_AFTER_SECONDS, DASK_SCHEDULER),
then the `config` passed to `create_app` (tests).  With no MONGO_URI the app runs
on the SQLite file EMBEDDED_DB (default instance/store_monitoring.sqlite3),
seeded from DATA_DIR when it is empty.
"""
from __future__ import annotations

import datetime as dt
import errno
import hmac
import io
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from flask import Flask, Response, abort, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

import database
import sources
import utils
from reportGenerator import QueueFull, ReportGenerator, check_as_of_range, parse_as_of, store_ids_from_csv

log = logging.getLogger(__name__)

REPORT_ID = re.compile(r"^[0-9a-f]{32}$")
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
}
MAX_JSON_BYTES = 4096  # a JSON request body larger than this is refused (413) before it is parsed
INGEST_WAIT_SECONDS = 5.0  # how long an upload waits for the one ingest slot (or the data lease), then 503
RETRY_AFTER_SECONDS = 10
# what a browser may do with the page and the API's answers
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
INTEGER_SETTINGS = ("PORT", "REPORT_WORKERS", "CHUNK_STORES", "STALE_AFTER_SECONDS", "MAX_UPLOAD_MB",
                    "MAX_QUEUED_REPORTS", "REPORT_RETENTION_DAYS", "MAX_REPORTS", "MIN_FREE_MB")
# the query parameters each endpoint takes; any other is a 400 that names it
QUERY_PARAMETERS = {
    "get_report": {"report_id", "format"},
    "store_timeline": {"report_id"},
    "reports": {"page", "per_page"},
    "delete_polls": {"since", "until"},
}


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
    """Build the app: connect, seed an empty embedded store, sweep stale reports, and register routes.

    An explicitly set DATA_DIR that cannot seed the store stops start-up (SystemExit with one line).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config.from_mapping(load_settings(config))
    try:
        sources.max_future_seconds()  # read again for each file; a bad value stops start-up, not an upload
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    app.json.sort_keys = False  # keep "status" first and report rows in column order
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPLOAD_MB"] * 1024 * 1024  # larger uploads get 413

    # STORE: a ready database.Store, so tests can run two apps ("workers") on one database
    try:
        store = app.config.get("STORE") or database.connect(
            app.config["MONGO_URI"] or None, app.config["MONGO_DB"], app.config["EMBEDDED_DB"])
    except database.DatabaseRefused as error:  # another application's file, or a newer schema: left untouched
        raise SystemExit(f"error: {error}") from None
    except (OSError, sqlite3.Error) as error:  # the embedded file cannot be created or opened
        raise SystemExit(f"error: cannot open the embedded database {app.config['EMBEDDED_DB']}: {error}") from None
    for step in store.migrations_applied:
        log.warning("database migrated: %s", step)
    if store.kind == "mongomock":
        log.warning("MONGO_URI=mongomock://: an in-process test double that keeps nothing (tests and demos only)")
    if store.kind in ("sqlite", "mongomock"):
        _seed(app, store)
    if store.kind == "mongodb":
        # index builds and the stale sweep wait for the database in a background thread, never here
        store.start_maintenance(dt.timedelta(seconds=app.config["STALE_AFTER_SECONDS"]))
    else:
        try:
            if store.kind != "sqlite":
                store.migrate()
            stale = store.fail_stale_reports(dt.timedelta(seconds=app.config["STALE_AFTER_SECONDS"]))
            if stale:
                log.warning("marked %d stale Running reports as Failed", stale)
        except database.DATABASE_ERRORS as error:
            log.error("could not prepare the database: %s", database.describe_error(error))

    app.extensions["store"] = store
    app.extensions["ingest_slot"] = threading.Semaphore(1)  # one upload parsed and loaded at a time per process
    app.extensions["reports"] = ReportGenerator(
        store,
        app.config["REPORTS_DIR"],
        chunk_stores=app.config["CHUNK_STORES"],
        workers=app.config["REPORT_WORKERS"],
        heartbeat_seconds=min(10.0, app.config["STALE_AFTER_SECONDS"] / 4),
        max_queued=app.config["MAX_QUEUED_REPORTS"],
        scheduler=app.config["DASK_SCHEDULER"],
    )
    app.extensions["reports"].start_retention(app.config["REPORT_RETENTION_DAYS"], app.config["MAX_REPORTS"])
    if app.config["API_TOKEN"]:
        log.info("API_TOKEN is set: every endpoint but /health, /, /static and /openapi.json needs 'Authorization: Bearer <token>'")
    else:
        log.warning("API_TOKEN is not set: the API is open to anyone who can reach it")
    log.info("answering to hosts: %s", ", ".join(app.config["TRUSTED_HOSTS"]) if app.config["TRUSTED_HOSTS"] else "any")
    register_routes(app)
    return app


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


def _store() -> database.Store:
    return current_app.extensions["store"]


def error_response(status: int, message: str) -> tuple[Response, int]:
    """The one error body: {"error": message, "status": code}."""
    return jsonify({"error": message, "status": status}), status


OPEN_ENDPOINTS = {"health", "index", "static", "openapi"}
# the endpoints whose query string is checked (every one but the page and its files)
API_ENDPOINTS = {"trigger_report", "get_report", "store_timeline", "reports", "ingest", "health", "data",
                 "delete_polls", "openapi"}
UPLOADS_SHOWN = 10  # GET /data lists this many of the newest uploads


def busy_response(message: str) -> tuple[Response, int]:
    """503 with Retry-After: the service is busy with something that ends by itself."""
    response, status = error_response(503, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response, status


STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _cross_site_refusal() -> str | None:
    """Why a state-changing request comes from another site (a browser says so), or None.

    Browsers send `Sec-Fetch-Site` (same-origin, same-site, cross-site or none)
    and `Origin` with every cross-origin POST, even `mode: "no-cors"` ones and
    HTML form posts; scripts like curl send neither.  Only the service's own
    pages (same-origin) and direct requests (none, or no header) may change state.
    """
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if site in ("cross-site", "same-site"):
        return f"refused: a {site} request may not change this service's state"
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin.strip()).netloc.lower() != request.host.lower():
        return "refused: the request's Origin is not this service"
    return None


def register_routes(app: Flask) -> None:
    @app.before_request
    def refuse_cross_site():
        if request.method in STATE_CHANGING:
            reason = _cross_site_refusal()
            if reason:
                return error_response(403, reason)
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.before_request
    def require_token():
        token = current_app.config["API_TOKEN"]
        if not token or request.endpoint in OPEN_ENDPOINTS:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return error_response(401, "missing or wrong API token: send 'Authorization: Bearer <token>'")
        return None

    @app.before_request
    def bound_database_time():
        """The database calls of a request share one time limit (MongoDB: ~1 s, then 503); /ingest is a job."""
        if request.endpoint != "ingest":
            g.database_scope = _store().request_scope()
            g.database_scope.__enter__()

    @app.teardown_request
    def end_database_time(error):
        scope = g.pop("database_scope", None)
        if scope is not None:
            scope.__exit__(None, None, None)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        message = error.description or error.name
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            allowed = [m for m in error.valid_methods if m not in ("HEAD", "OPTIONS")] or error.valid_methods
            message = f"{request.method} is not allowed on {request.path}: use {' or '.join(allowed)}"
        response, status = error_response(error.code or 500, message)
        for name, value in error.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value  # e.g. Allow on 405
        return response, status

    def database_error(error):
        log.error("database error: %s", database.describe_error(error))
        if database.is_transient(error):
            return busy_response("the database is not available; try again shortly")
        return error_response(500, "the database failed to do this (a permanent error; the server log has "
                                   "the details)")

    for error_class in database.DATABASE_ERRORS:
        app.register_error_handler(error_class, database_error)

    @app.errorhandler(database.LeaseTimeout)
    def data_busy(error):
        log.warning("gave up waiting for the data lease: %s", error)
        return busy_response("reports or a load hold the data just now; try again shortly")

    @app.errorhandler(database.LeaseLost)
    def lease_lost(error):
        log.error("data lease lost: %s", error)
        return busy_response(f"{error}; try again")

    @app.errorhandler(database.DiskFull)
    def disk_full(error):
        log.error("disk full: %s", error)
        return error_response(507, str(error))

    @app.errorhandler(database.DatabaseRefused)
    def database_refused(error):
        log.error("database refused: %s", error)
        return error_response(500, str(error))

    @app.errorhandler(database.UploadUnfinished)
    def upload_unfinished(error):
        return jsonify({"error": str(error), "status": 409, "upload_id": error.upload["upload_id"]}), 409

    @app.before_request
    def refuse_unknown_parameters():
        if request.endpoint not in QUERY_PARAMETERS and request.endpoint not in API_ENDPOINTS:
            return None
        unknown = sorted(set(request.args) - QUERY_PARAMETERS.get(request.endpoint, set()))
        if request.endpoint == "trigger_report" and "as_of" in unknown:
            return error_response(400, 'as_of goes in the JSON body, not the query string: '
                                       'curl -X POST -H "Content-Type: application/json" '
                                       '-d \'{"as_of": "2023-01-25T18:00:00Z"}\' http://host/trigger_report')
        if unknown:
            allowed = ", ".join(sorted(QUERY_PARAMETERS.get(request.endpoint, set()))) or "none"
            return error_response(400, f"unknown query parameter(s) {', '.join(unknown)[:200]} on {request.path}; "
                                       f"this call takes: {allowed}")
        return None

    @app.errorhandler(Exception)
    def unexpected_error(error):
        log.exception("unhandled error")
        return error_response(500, "internal error; the details are in the server log")

    @app.post("/trigger_report")
    def trigger_report():
        as_of_us = None
        body = _json_object_body()
        if body is not None:  # an empty body means "no options"
            unknown = sorted(set(body) - {"as_of"})
            if unknown:
                abort(400, description=f"unknown field(s) {', '.join(map(str, unknown))[:100]}; only as_of is accepted")
            if body.get("as_of") is not None:
                try:
                    as_of_us = check_as_of_range(parse_as_of(body["as_of"]))
                except ValueError as error:
                    abort(400, description=str(error))
        unfinished = _store().unfinished_upload()
        if unfinished is not None:
            raise database.UploadUnfinished(unfinished)
        try:
            report_id = current_app.extensions["reports"].start(as_of_us)
        except QueueFull as error:
            response, status = error_response(429, str(error))
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response, status
        return jsonify({"report_id": report_id}), 202

    @app.get("/get_report")
    def get_report():
        report_id = _report_id_arg("/get_report?report_id=<id from trigger_report>")
        wants_csv = _wants_csv()
        store = _store()
        report = _find_report(report_id)
        if report["status"] != "Complete" and request.args.get("format") is not None and wants_csv:
            abort(409, description=_not_complete(report_id, report, "CSV"))
        if report["status"] == "Running":
            return jsonify({"status": "Running", **_running_state(report), **_after_newest(report)})
        if report["status"] == "Failed":
            return jsonify({"status": "Failed", "error": report.get("error") or "unknown error"})
        payload = store.read_report_csv(report)
        if wants_csv:
            return Response(
                payload,
                mimetype="text/csv",
                headers={"Content-Disposition": f'attachment; filename="report_{report_id}.csv"'},
            )
        rows = pd.read_csv(io.BytesIO(payload), dtype={"store_id": str}, keep_default_na=False)
        rows["store_id"] = store_ids_from_csv(rows["store_id"])
        return jsonify(
            {
                "status": "Complete",
                "report_id": report_id,
                "as_of": _as_of(report),
                **_after_newest(report),
                "row_count": report.get("row_count"),
                "columns": utils.REPORT_COLUMNS,
                "data": rows.to_dict("records"),
            }
        )

    @app.get("/stores/<store_id>/timeline")
    def store_timeline(store_id: str):
        report_id = _report_id_arg(f"/stores/{store_id[:64]}/timeline?report_id=<id of a Complete report>")
        report = _find_report(report_id)
        if report["status"] != "Complete":
            abort(409, description=_not_complete(report_id, report, "timeline"))
        rows = pd.read_csv(io.BytesIO(_store().read_report_csv(report)), dtype={"store_id": str},
                           keep_default_na=False)
        row = rows[rows["store_id"] == store_id]
        if row.empty:
            abort(404, description=f"report {report_id} has no store {store_id[:64]!r}")
        now_us = report["as_of_us"] if report.get("as_of_us") is not None else utils.datetime_to_us(report["as_of"])
        polls, hours, zones = _read_store_week(store_id, now_us - utils.WEEK_US, now_us)
        zone = zones["timezone_str"]
        timeline = utils.store_timeline(
            polls["timestamp_us"].to_numpy(), polls["active"].to_numpy(), hours["day"].to_numpy(),
            hours["start_s"].to_numpy(), hours["end_s"].to_numpy(), zone.iloc[-1] if len(zone) else None, now_us,
        )
        return jsonify(timeline_body(store_id, now_us, timeline, row.to_dict("records")[0]))

    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    @app.get("/openapi.json")
    def openapi():
        return Response((ROOT / "openapi.json").read_bytes(), mimetype="application/json")

    @app.get("/reports")
    def reports():
        page = _positive_int_arg("page", 1, 1_000_000)
        per_page = _positive_int_arg("per_page", 20, 100)
        store = _store()
        store.fail_stale_reports(dt.timedelta(seconds=current_app.config["STALE_AFTER_SECONDS"]))
        rows = store.list_reports(skip=(page - 1) * per_page, limit=per_page)
        return jsonify(
            {
                "page": page,
                "per_page": per_page,
                "total": store.count_reports(),
                "reports": [
                    {
                        "report_id": row["report_id"],
                        "status": row["status"],
                        "as_of": _as_of(row),
                        **_after_newest(row),
                        "created_at": _iso(row.get("created_at")),
                        "finished_at": _iso(row.get("finished_at")),
                        "row_count": row.get("row_count"),
                        "error": row.get("error"),
                    }
                    for row in rows
                ],
            }
        )

    @app.post("/ingest")
    def ingest():
        slot = current_app.extensions["ingest_slot"]
        if not slot.acquire(timeout=INGEST_WAIT_SECONDS):
            return busy_response("another upload is being loaded; try again in a few seconds")
        try:
            return _ingest()
        except OSError as error:  # werkzeug spools the upload to a temporary file: that disk may be full
            if error.errno != errno.ENOSPC:
                raise
            log.error("disk full while receiving an upload: %s", error)
            return error_response(507, f"the disk holding the server's temporary folder ({tempfile.gettempdir()}) "
                                       "is full; nothing of this upload was kept")
        finally:
            slot.release()

    @app.get("/health")
    def health():
        store = _store()
        if not store.ping():
            return error_response(503, f"the database ({store.kind}) does not answer")
        min_free = current_app.config["MIN_FREE_MB"] * 1_048_576
        state = store.health(min_free)
        problems = list(state["problems"])
        reports_free = database.free_bytes(current_app.config["REPORTS_DIR"])
        if reports_free is not None and reports_free < min_free:
            problems.append(f"the disk holding the reports folder has {reports_free / 1_048_576:.0f} MB free, "
                            f"under MIN_FREE_MB ({current_app.config['MIN_FREE_MB']} MB)")
        facts = {"database": store.kind, "database_ok": not problems, "schema_version": state["schema_version"],
                 "free_disk_mb": state["free_disk_mb"],
                 "reports_free_disk_mb": None if reports_free is None else round(reports_free / 1_048_576, 1),
                 "newest_poll": _iso_us(state.get("newest_poll_us"))}
        if problems:  # the one error body, with the facts beside it
            return jsonify({"error": "; ".join(problems), "status": 503, "problems": problems, **facts}), 503
        body = {"status": "ok", **facts}
        if current_app.config["DASK_SCHEDULER"]:
            import cluster  # Dask only loads when a scheduler is configured

            body.update(cluster.scheduler_state(current_app.config["DASK_SCHEDULER"]))
        return jsonify(body)

    @app.get("/data")
    def data():
        store = _store()
        summary = store.data_summary()
        return jsonify({
            "stores": summary["stores"], "polls": summary["polls"], "hours_rows": summary["hours_rows"],
            "zones": summary["zones"],
            "oldest_poll": _iso_us(summary["oldest_poll_us"]), "newest_poll": _iso_us(summary["newest_poll_us"]),
            "uploads": [{"upload_id": u["upload_id"], "file": u["file"], "kind": u["kind"], "at": _iso(u["at"]),
                         "finished_at": _iso(u.get("finished_at")), "loaded": u["loaded"], "written": u["written"],
                         "rejected": u["rejected"], "status": u["status"], "error": u.get("error"),
                         "dismissed": bool(u.get("dismissed"))}
                        for u in store.list_uploads(UPLOADS_SHOWN)],
        })

    @app.delete("/stores/<store_id>/polls")
    def delete_polls(store_id: str):
        bounds = {}
        for name in ("since", "until"):
            given = request.args.getlist(name)
            if len(given) > 1:
                abort(400, description=f"give {name} at most once")
            try:
                bounds[name] = check_as_of_range(parse_as_of(given[0])) if given else None
            except ValueError as error:
                abort(400, description=str(error).replace("as_of", name, 1))
        if bounds["since"] is not None and bounds["until"] is not None and bounds["since"] > bounds["until"]:
            abort(400, description="since is after until: nothing would be deleted")
        deleted = database.delete_polls(_store(), store_id, bounds["since"], bounds["until"],
                                        lease_wait_seconds=INGEST_WAIT_SECONDS)
        log.info("deleted %d polls of store %r (since %s, until %s)", deleted, store_id[:64], bounds["since"],
                 bounds["until"])
        return jsonify({"deleted": deleted, "store_id": store_id})


FIELD_FILES = {
    "store_status": sources.STATUS_FILE,
    "menu_hours": sources.HOURS_FILE,
    "timezones": sources.ZONES_FILE,
}


def _ingest():
    """Parse and load each uploaded file, streaming it from werkzeug's temporary file."""
    if not request.files:
        abort(400, description="upload CSV files as multipart form fields, e.g. "
                               "curl -F store_status=@store_status.csv http://host/ingest")
    results = []
    for field, upload in request.files.items(multi=True):
        head = upload.stream.read(4096)
        upload.stream.seek(0)
        kind = FIELD_FILES.get(field) or sources.detect_file(_first_line(head))
        label = upload.filename or field
        if kind is None:
            results.append({"file": label, "error": "not one of the three files: name the field store_status, "
                            "menu_hours or timezones, or give the file its header"})
            continue
        try:
            summary = database.load_file(_store(), kind, upload.stream, label=label,
                                         lease_wait_seconds=INGEST_WAIT_SECONDS)
        except sources.HeaderError as error:
            results.append({"file": label, "kind": kind, "error": str(error)})
            continue
        except database.DiskFull as error:
            log.error("disk full during the upload of %s: %s", label, error)
            return jsonify({"error": f"{label}: {error}", "status": 507, "files": results}), 507
        results.append({"kind": kind, **summary})
    if not sum(result.get("loaded", 0) for result in results):
        return jsonify({"error": "nothing was loaded: see files", "status": 400, "files": results}), 400
    return jsonify({"files": results}), 200


def _first_line(data: bytes) -> str:
    return data[:4096].split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()


def _json_object_body() -> dict | None:
    """The request body as a JSON object, whatever its Content-Type; None when it is empty.

    The body is refused (413) over MAX_JSON_BYTES before anything is parsed;
    malformed or too deeply nested JSON, or JSON that is not an object, is a 400.
    Taking JSON under any Content-Type is safe because cross-site requests are
    refused before this (`refuse_cross_site`).
    """
    request.max_content_length = MAX_JSON_BYTES
    try:
        data = request.get_data(cache=True)
    except RequestEntityTooLarge:
        abort(413, description=f"the body is over {MAX_JSON_BYTES} bytes; this call takes a small JSON object")
    if not data:
        return None
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        body = None
    if not isinstance(body, dict):
        abort(400, description='the body must be a JSON object, e.g. {"as_of": "2023-01-25T18:00:00Z"}')
    return body


def _positive_int_arg(name: str, default: int, largest: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= largest:
        abort(400, description=f"{name} must be a whole number from 1 to {largest}")
    return int(text)


def _read_store_week(store_id: str, since_us: int, now_us: int):
    """One store's polls (from its last before `since_us` to `now_us`), hour rows and zone rows."""
    return _store().read_chunk([store_id], since_us, now_us)


def _report_id_arg(example: str) -> str:
    """The one report_id of the query string, checked before the database is asked (400 otherwise)."""
    given = request.args.getlist("report_id")
    if len(given) != 1 or not given[0]:
        abort(400, description=f"give exactly one report_id, e.g. {example}")
    if not REPORT_ID.fullmatch(given[0]):
        abort(400, description="malformed report_id: expected 32 lowercase hex characters")
    return given[0]


def _find_report(report_id: str) -> dict:
    """The report (404 when unknown); a Running one whose worker stopped beating is failed first."""
    store = _store()
    report = store.find_report(report_id)
    if report is None:
        abort(404, description=f"no report with id {report_id}")
    if report["status"] == "Running" and _is_stale(report):
        store.fail_stale_reports(dt.timedelta(seconds=current_app.config["STALE_AFTER_SECONDS"]))
        report = store.find_report(report_id)
    return report


def _running_state(report: dict) -> dict:
    """Phase and progress of a Running report; `total` is null until the stores are counted."""
    progress = report.get("progress") or {}
    total = progress.get("total")
    phase = progress.get("phase") or ("computing" if total else "queued")
    return {"phase": phase, "progress": {"done": int(progress.get("done") or 0),
                                         "total": None if phase in ("queued", "counting") else int(total or 0)}}


def _not_complete(report_id: str, report: dict, what: str) -> str:
    """Why a report that is not Complete has no CSV or timeline yet (a 409's message)."""
    if report["status"] == "Running":
        running = _running_state(report)
        progress = running["progress"]
        done = (f"{progress['done']} of {progress['total']} stores" if progress["total"] is not None
                else "counting stores" if running["phase"] == "counting" else "waiting for a report worker")
        return f"report {report_id} is still Running ({done}): its {what} is ready when it is Complete; ask again then"
    reason = report.get("error") or "unknown error"
    return f"report {report_id} Failed ({reason}), so it has no {what}: trigger a new report"


def timeline_body(store_id: str, now_us: int, timeline: utils.StoreTimeline, totals: dict) -> dict:
    """The JSON of GET /stores/<id>/timeline: every instant ISO 8601 UTC with microseconds and Z.

    The engine counts half-microseconds; a segment boundary at a half (the midpoint
    of two polls one microsecond apart) is shown at the microsecond before it.
    """
    def iso(ticks) -> list[str]:
        stamps = (np.asarray(ticks, dtype=np.int64) // utils.TICKS_PER_US).astype("datetime64[us]")
        return [text + "Z" for text in np.datetime_as_string(stamps, unit="us")]

    statuses = np.where(timeline.segment_active, "active", "inactive").tolist()
    return {
        "store_id": store_id,
        "timezone": timeline.timezone,
        "as_of": iso([now_us * utils.TICKS_PER_US])[0],
        "windows": {name: iso(bounds) for name, bounds in timeline.windows.items()},
        "business_hours": [{"start": a, "end": b} for a, b in
                           zip(iso(timeline.business_open), iso(timeline.business_close))],
        "polls": [{"timestamp": t, "status": "active" if a else "inactive"} for t, a in
                  zip(iso(timeline.poll_ticks), timeline.poll_active.tolist())],
        "segments": [{"start": a, "end": b, "status": status} for a, b, status in
                     zip(iso(timeline.segment_start), iso(timeline.segment_end), statuses)],
        "totals": totals,
    }


FORMATS = {"csv", "json"}


def _wants_csv() -> bool:
    """CSV when format=csv, JSON when format=json; otherwise by the Accept header (400 for another format)."""
    given = request.args.get("format")
    if given is not None:
        if given.lower() not in FORMATS:
            abort(400, description=f"unknown format {given[:32]!r}: use format=csv or format=json")
        return given.lower() == "csv"
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv" and request.accept_mimetypes["text/csv"] > request.accept_mimetypes["application/json"]


def _is_stale(report: dict) -> bool:
    beat = report.get("heartbeat_at")
    if beat is None:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=dt.timezone.utc)
    return database.now_utc() - beat > dt.timedelta(seconds=current_app.config["STALE_AFTER_SECONDS"])


def _after_newest(report: dict) -> dict:
    """{"as_of_after_newest_poll": true} for a report asked for a now later than the newest poll, else {}."""
    return {"as_of_after_newest_poll": True} if report.get("as_of_after_newest_poll") else {}


def _iso_us(value_us: int | None) -> str | None:
    return None if value_us is None else _iso(utils.us_to_datetime(value_us))


def _as_of(report: dict) -> str | None:
    """The report's now, to the microsecond."""
    if report.get("as_of_us") is not None:
        return _iso(utils.us_to_datetime(report["as_of_us"]))
    return None


def _iso(value) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


if __name__ == "__main__":
    application = create_app()
    application.run(host=os.environ.get("HOST", "127.0.0.1"), port=application.config["PORT"], threaded=True)
