"""The HTTP API (SPEC §4): an app factory and thin routes over database.py and reportGenerator.py.

    python app.py                     # development server on PORT (default 8000)
    gunicorn 'app:create_app()'       # production (see gunicorn.conf.py)

Configuration: defaults, then the environment (MONGO_URI, MONGO_DB, EMBEDDED_DB,
DATA_DIR, REPORTS_DIR, PORT, REPORT_WORKERS, CHUNK_STORES, STALE_AFTER_SECONDS),
then the `config` passed to `create_app` (tests).  With no MONGO_URI the app runs
on the SQLite file EMBEDDED_DB (default instance/store_monitoring.sqlite3),
seeded from DATA_DIR when it is empty.
"""
from __future__ import annotations

import datetime as dt
import hmac
import io
import logging
import os
import re
from pathlib import Path

import pandas as pd
from flask import Flask, Response, abort, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

import database
import sources
import utils
from reportGenerator import ReportGenerator, parse_as_of

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
}
INTEGER_SETTINGS = ("PORT", "REPORT_WORKERS", "CHUNK_STORES", "STALE_AFTER_SECONDS", "MAX_UPLOAD_MB")


def load_settings(config: dict | None = None) -> dict:
    """Defaults, overridden by the environment, overridden by `config`."""
    settings = dict(DEFAULTS)
    for key in DEFAULTS:
        if os.environ.get(key) not in (None, ""):
            settings[key] = os.environ[key]
    settings.update(config or {})
    settings["DATA_DIR_EXPLICIT"] = "DATA_DIR" in (config or {}) or os.environ.get("DATA_DIR") not in (None, "")
    for key in INTEGER_SETTINGS:
        settings[key] = int(settings[key])
    return settings


def create_app(config: dict | None = None) -> Flask:
    """Build the app: connect, seed an empty embedded store, sweep stale reports, and register routes.

    An explicitly set DATA_DIR that cannot seed the store stops start-up (SystemExit with one line).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config.from_mapping(load_settings(config))
    app.json.sort_keys = False  # keep "status" first and report rows in column order
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPLOAD_MB"] * 1024 * 1024  # larger uploads get 413

    # STORE: a ready database.Store, so tests can run two apps ("workers") on one database
    store = app.config.get("STORE") or database.connect(
        app.config["MONGO_URI"] or None, app.config["MONGO_DB"], app.config["EMBEDDED_DB"])
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
    app.extensions["reports"] = ReportGenerator(
        store,
        app.config["REPORTS_DIR"],
        chunk_stores=app.config["CHUNK_STORES"],
        workers=app.config["REPORT_WORKERS"],
        heartbeat_seconds=min(10.0, app.config["STALE_AFTER_SECONDS"] / 4),
    )
    if app.config["API_TOKEN"]:
        log.info("API_TOKEN is set: every endpoint but /health, /, /static and /openapi.json needs 'Authorization: Bearer <token>'")
    else:
        log.warning("API_TOKEN is not set: the API is open to anyone who can reach it")
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
        log.info("seeded %s: %d loaded, %d rejected", summary["file"], summary["loaded"], summary["rejected"])


def _store() -> database.Store:
    return current_app.extensions["store"]


def error_response(status: int, message: str) -> tuple[Response, int]:
    """The one error body: {"error": message, "status": code}."""
    return jsonify({"error": message, "status": status}), status


OPEN_ENDPOINTS = {"health", "index", "static", "openapi"}


def register_routes(app: Flask) -> None:
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
        response, status = error_response(error.code or 500, error.description or error.name)
        for name, value in error.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value  # e.g. Allow on 405
        return response, status

    def database_error(error):
        log.error("database error: %s", database.describe_error(error))
        return error_response(503, "the database is not available; try again shortly")

    for error_class in database.DATABASE_ERRORS:
        app.register_error_handler(error_class, database_error)

    @app.errorhandler(Exception)
    def unexpected_error(error):
        log.exception("unhandled error")
        return error_response(500, "internal error; the details are in the server log")

    @app.post("/trigger_report")
    def trigger_report():
        as_of_us = None
        if request.get_data(cache=True):  # an empty body means "no options"; anything else must be JSON
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                abort(400, description='the body must be a JSON object, e.g. {"as_of": "2023-01-25T18:00:00Z"}')
            unknown = sorted(set(body) - {"as_of"})
            if unknown:
                abort(400, description=f"unknown field(s) {', '.join(map(str, unknown))[:100]}; only as_of is accepted")
            if body.get("as_of") is not None:
                try:
                    as_of_us = parse_as_of(body["as_of"])
                except ValueError as error:
                    abort(400, description=str(error))
        report_id = current_app.extensions["reports"].start(as_of_us)
        return jsonify({"report_id": report_id}), 202

    @app.get("/get_report")
    def get_report():
        report_id = request.args.getlist("report_id")
        if len(report_id) != 1 or not report_id[0]:
            abort(400, description="give exactly one report_id, e.g. /get_report?report_id=<id from trigger_report>")
        report_id = report_id[0]
        if not REPORT_ID.fullmatch(report_id):
            abort(400, description="malformed report_id: expected 32 lowercase hex characters")
        store = _store()
        report = store.find_report(report_id)
        if report is None:
            abort(404, description=f"no report with id {report_id}")
        if report["status"] == "Running" and _is_stale(report):
            store.fail_stale_reports(dt.timedelta(seconds=current_app.config["STALE_AFTER_SECONDS"]))
            report = store.find_report(report_id)
        if report["status"] == "Running":
            return jsonify({"status": "Running", "progress": report.get("progress") or {"done": 0, "total": 0}})
        if report["status"] == "Failed":
            return jsonify({"status": "Failed", "error": report.get("error") or "unknown error"})
        payload = store.read_report_csv(report)
        if _wants_csv():
            return Response(
                payload,
                mimetype="text/csv",
                headers={"Content-Disposition": f'attachment; filename="report_{report_id}.csv"'},
            )
        rows = pd.read_csv(io.BytesIO(payload), dtype={"store_id": str}, keep_default_na=False)
        return jsonify(
            {
                "status": "Complete",
                "report_id": report_id,
                "as_of": _as_of(report),
                "row_count": report.get("row_count"),
                "columns": utils.REPORT_COLUMNS,
                "data": rows.to_dict("records"),
            }
        )

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
        if not request.files:
            abort(400, description="upload CSV files as multipart form fields, e.g. "
                                   "curl -F store_status=@store_status.csv http://host/ingest")
        results = []
        for field, upload in request.files.items(multi=True):
            data = upload.read()
            kind = FIELD_FILES.get(field) or sources.detect_file(_first_line(data))
            label = upload.filename or field
            if kind is None:
                results.append({"file": label, "error": "not one of the three files: name the field store_status, "
                                "menu_hours or timezones, or give the file its header"})
                continue
            try:
                summary = database.load_file(_store(), kind, data, label=label)
            except sources.HeaderError as error:
                results.append({"file": label, "kind": kind, "error": str(error)})
                continue
            results.append({"kind": kind, **summary})
        if not any("loaded" in r for r in results):
            return jsonify({"error": "nothing was loaded: see files", "status": 400, "files": results}), 400
        return jsonify({"files": results}), 200

    @app.get("/health")
    def health():
        store = _store()
        answers = store.ping()
        if not answers:
            return error_response(503, f"the database ({store.kind}) does not answer")
        return jsonify({"status": "ok", "database": store.kind, "database_ok": True})


FIELD_FILES = {
    "store_status": sources.STATUS_FILE,
    "menu_hours": sources.HOURS_FILE,
    "timezones": sources.ZONES_FILE,
}


def _first_line(data: bytes) -> str:
    return data[:4096].split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()


def _positive_int_arg(name: str, default: int, largest: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= largest:
        abort(400, description=f"{name} must be a whole number from 1 to {largest}")
    return int(text)


def _wants_csv() -> bool:
    if request.args.get("format", "").lower() == "csv":
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv" and request.accept_mimetypes["text/csv"] > request.accept_mimetypes["application/json"]


def _is_stale(report: dict) -> bool:
    beat = report.get("heartbeat_at")
    if beat is None:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=dt.timezone.utc)
    return database.now_utc() - beat > dt.timedelta(seconds=current_app.config["STALE_AFTER_SECONDS"])


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
