"""The HTTP API (SPEC §4, docs/api.md): the views of one blueprint, thin over database.py and reportGenerator.py.

Each view validates its input, calls the store or the report generator, and answers JSON (or the report's
CSV); errors are raised or `abort`ed and turned into the one error body by `errors.py`.  Beside the views:
which of them are open without the API token, and the query parameters each takes (`guards.py` enforces
both).  Endpoint names are the view names ("api.get_report"); the blueprint has no URL prefix.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import itertools
import json
import logging
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
from flask import Blueprint, Response, abort, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

import database
import metrics as service_metrics  # the module; `metrics` is the view's name (its endpoint)
import sources
import utils
from errors import busy_response, error_response
from report_csv import FORMULA_STARTS, read_report_rows
from reportGenerator import QueueFull
from utils import check_as_of_range, parse_as_of

# The HTTP layer logs under one name, "app", as it did when it was one module (see errors.py).
log = logging.getLogger("app")

bp = Blueprint("api", __name__)

ROOT = Path(__file__).resolve().parent
REPORT_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_JSON_BYTES = 4096  # a JSON request body larger than this is refused (413) before it is parsed
INGEST_WAIT_SECONDS = 5.0  # how long an upload waits for the one ingest slot (or the data lease), then 503
UPLOADS_SHOWN = 10  # GET /data lists this many of the newest uploads
MAX_PAGE_ROWS = 10_000  # the largest `limit` of a page of GET /get_report
PAGING_PARAMETERS = ("limit", "after", "store_id")
HISTORY_POINTS = (100, 1000)  # GET /stores/<id>/history: the default and the largest `limit`
CHANGES_SHOWN = (20, 1000)  # GET /reports/<id>/changes: the default and the largest `limit` of each list
STREAM_PIECE_BYTES = 64 * 1024  # an unpaged report is read from the store and sent in pieces of this size
STREAM_ROWS = 256  # and its JSON rows are written this many at a time
FORMATS = {"csv", "json"}
FIELD_FILES = {
    "store_status": sources.STATUS_FILE,
    "menu_hours": sources.HOURS_FILE,
    "timezones": sources.ZONES_FILE,
}

# the views open without the API token ("static" is Flask's own, for the page's files)
OPEN_ENDPOINTS = {"health", "index", "static", "openapi"}
# the views whose query string is checked (every one but the page and its files)
API_ENDPOINTS = {
    "trigger_report",
    "get_report",
    "store_timeline",
    "reports",
    "ingest",
    "health",
    "data",
    "delete_polls",
    "openapi",
    "metrics",
    "schedule",
    "store_history",
    "report_changes",
    "delete_report",
    "alerts",
}
# the query parameters each view takes; any other is a 400 that names it
QUERY_PARAMETERS = {
    "get_report": {"report_id", "format", *PAGING_PARAMETERS},
    "store_timeline": {"report_id"},
    "reports": {"page", "per_page"},
    "delete_polls": {"since", "until"},
    "store_history": {"since", "until", "limit"},
    "report_changes": {"base", "limit"},
    "alerts": {"limit"},
    "schedule": set(),
}


def _store() -> database.Store:
    return current_app.extensions["store"]


def _stale_after() -> dt.timedelta:
    return dt.timedelta(seconds=current_app.config["STALE_AFTER_SECONDS"])


# --------------------------------------------------------------------------- reports


@bp.post("/trigger_report")
def trigger_report():
    as_of_us = _as_of_of_body(_json_object_body())
    unfinished = _store().unfinished_upload()
    if unfinished is not None:
        raise database.UploadUnfinished(unfinished)
    try:
        report_id = current_app.extensions["reports"].start(as_of_us)
    except QueueFull as error:
        return busy_response(str(error), status=429)
    return jsonify({"report_id": report_id}), 202


@bp.get("/get_report")
def get_report():
    report_id = _report_id_arg("/get_report?report_id=<id from trigger_report>")
    wants_csv = _wants_csv()
    report = _find_report(report_id)
    paging = _paging_args()
    if paging is not None and request.args.get("format", "").lower() == "csv":
        abort(400, description="paging is for the JSON answer; the CSV is the whole report")
    if report["status"] != "Complete" and request.args.get("format") is not None and wants_csv:
        abort(409, description=_not_complete(report_id, report, "CSV"))
    if report["status"] == "Running":
        return jsonify(
            {"status": "Running", "trigger": report["trigger"], **_running_state(report), **_after_newest(report)}
        )
    if report["status"] == "Failed":
        return jsonify(
            {"status": "Failed", "trigger": report["trigger"], "error": report.get("error") or "unknown error"}
        )
    pieces = _report_pieces(report)
    if paging is not None:  # a page is JSON whatever the Accept header says
        with closing(pieces):
            rows, page = _page_of_rows(report_id, report_rows(pieces), paging)
        return jsonify(_complete_report_body(report_id, report, rows, page))
    if wants_csv:  # the stored bytes, streamed as they are read
        headers = {"Content-Disposition": f'attachment; filename="report_{report_id}.csv"'}
        if report.get("csv_bytes") is not None:
            headers["Content-Length"] = str(report["csv_bytes"])
        return Response(pieces, mimetype="text/csv", headers=headers)
    return _streamed_json(report_id, report, pieces)


@bp.get("/stores/<store_id>/timeline")
def store_timeline(store_id: str):
    report_id = _report_id_arg(f"/stores/{store_id[:64]}/timeline?report_id=<id of a Complete report>")
    report = _find_report(report_id)
    if report["status"] != "Complete":
        abort(409, description=_not_complete(report_id, report, "timeline"))
    with closing(_report_pieces(report)) as pieces:
        row = next((row for row in report_rows(pieces) if row["store_id"] == store_id), None)
    if row is None:
        abort(404, description=f"report {report_id} has no store {store_id[:64]!r}")
    now_us = report["as_of_us"] if report.get("as_of_us") is not None else utils.datetime_to_us(report["as_of"])
    polls, hours, zones = _read_store_week(store_id, now_us - utils.WEEK_US, now_us)
    zone = zones["timezone_str"]
    timeline = utils.store_timeline(
        polls["timestamp_us"].to_numpy(),
        polls["active"].to_numpy(),
        hours["day"].to_numpy(),
        hours["start_s"].to_numpy(),
        hours["end_s"].to_numpy(),
        zone.iloc[-1] if len(zone) else None,
        now_us,
    )
    return jsonify(timeline_body(store_id, now_us, timeline, row))


@bp.get("/stores/<store_id>/history")
def store_history(store_id: str):
    """The store's rows in the Complete reports, newest first: read from the store's history index."""
    if not _could_be_a_store(store_id):
        abort(
            400,
            description=f"{store_id[:64]!r} cannot be a store id: store ids are 1 to {sources.MAX_STORE_ID_LENGTH} "
            f"{sources.STORE_ID_CHARACTERS}",
        )
    bounds = {name: _instant_arg(name) for name in ("since", "until")}
    if bounds["since"] is not None and bounds["until"] is not None and bounds["since"] > bounds["until"]:
        abort(400, description="since is after until: no report could be in between")
    limit = _positive_int_arg("limit", *HISTORY_POINTS)
    points = _store().store_history(store_id, bounds["since"], bounds["until"], limit)
    return jsonify({"store_id": store_id, "points": [_history_point(point) for point in points]})


@bp.get("/reports/<report_id>/changes")
def report_changes(report_id: str):
    """How the stores' downtime_last_day moved from a base report (by default the previous Complete one)."""
    _check_report_id(report_id)
    base_given = request.args.getlist("base")
    if len(base_given) > 1:
        abort(400, description="give base at most once")
    if base_given:
        _check_report_id(base_given[0], "base")
    limit = _positive_int_arg("limit", *CHANGES_SHOWN)
    report = _comparable_report(report_id, "")
    if base_given:
        base = _comparable_report(base_given[0], "base ")
    else:
        base = _store().previous_complete_report(report_id)
        if base is None:
            abort(
                404,
                description=f"no Complete report was made before report {report_id}, so there is nothing to "
                "compare it with: give base=<id of a Complete report>",
            )
    rows, base_rows = (read_report_rows(_store().read_report_csv(one)) for one in (report, base))
    return jsonify(
        {
            "report_id": report_id,
            "base_report_id": base["report_id"],
            "as_of": _as_of(report),
            "base_as_of": _as_of(base),
            **report_changes_lists(rows, base_rows, limit),
        }
    )


@bp.delete("/reports/<report_id>")
def delete_report(report_id: str):
    """Delete a finished report: its record, stored CSV, history rows and this host's file of it."""
    _check_report_id(report_id)
    report = _find_report(report_id)
    if report["status"] == "Running":
        abort(
            409,
            description=f"report {report_id} is still Running ({_running_done(report)}): "
            "delete it once it is Complete or Failed",
        )
    if not current_app.extensions["reports"].delete(report_id):
        abort(404, description=f"no report with id {report_id}")  # deleted meanwhile by another request
    log.info("deleted report %s (%s)", report_id, report["status"])
    return jsonify({"deleted": True, "report_id": report_id, "status": report["status"]})


# --------------------------------------------------------------------------- the page and the API's description


@bp.get("/")
def index():
    return current_app.send_static_file("index.html")


@bp.get("/openapi.json")
def openapi():
    return Response((ROOT / "openapi.json").read_bytes(), mimetype="application/json")


@bp.get("/metrics")
def metrics():
    """Prometheus' scrape: every worker's counts summed (see metrics.py)."""
    return Response(service_metrics.scrape(), content_type=service_metrics.CONTENT_TYPE)


# --------------------------------------------------------------------------- listing reports


@bp.get("/reports")
def reports():
    page = _positive_int_arg("page", 1, 1_000_000)
    per_page = _positive_int_arg("per_page", 20, 100)
    store = _store()
    store.fail_stale_reports(_stale_after())
    rows = store.list_reports(skip=(page - 1) * per_page, limit=per_page)
    return jsonify(
        {
            "page": page,
            "per_page": per_page,
            "total": store.count_reports(),
            "reports": [_listed_report(row) for row in rows],
        }
    )


def _listed_report(row: dict) -> dict:
    """One report of GET /reports."""
    return {
        "report_id": row["report_id"],
        "status": row["status"],
        "trigger": row["trigger"],
        "as_of": _as_of(row),
        **_after_newest(row),
        "created_at": _iso(row.get("created_at")),
        "finished_at": _iso(row.get("finished_at")),
        "row_count": row.get("row_count"),
        "error": row.get("error"),
    }


# --------------------------------------------------------------------------- alerts

ALERTS_SHOWN = (50, 200)  # GET /alerts: the default and the largest `limit`


@bp.get("/alerts")
def alerts():
    """The newest deliveries of alerts (alerts.py), newest first; the webhook URL itself is never shown."""
    limit = _positive_int_arg("limit", *ALERTS_SHOWN)
    return jsonify(
        {
            "enabled": current_app.extensions.get("alerts") is not None,
            "downtime_minutes": current_app.config["ALERT_DOWNTIME_MINUTES"],
            "limit": limit,
            "deliveries": [_listed_delivery(row) for row in _store().list_deliveries(limit)],
        }
    )


def _listed_delivery(row: dict) -> dict:
    """One delivery of GET /alerts (without its body)."""
    return {
        "delivery_id": row["delivery_id"],
        "report_id": row["report_id"],
        "as_of": _iso_us(row["as_of_us"]),
        "created_at": _iso(row["created_at"]),
        "last_attempt_at": _iso(row["last_attempt_at"]),
        "status": row["status"],
        "attempts": row["attempts"],
        "http_status": row["http_status"],
        "error": row["error"],
        "events": row["events"],
    }


# --------------------------------------------------------------------------- the data


@bp.post("/ingest")
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
        return error_response(
            507,
            f"the disk holding the server's temporary folder ({tempfile.gettempdir()}) "
            "is full; nothing of this upload was kept",
        )
    finally:
        slot.release()


@bp.get("/health")
def health():
    store = _store()
    if not store.ping():
        return error_response(503, f"the database ({store.kind}) does not answer")
    problems, facts = _health_facts(store)
    if current_app.config["DASK_SCHEDULER"]:
        problems += _cluster_facts(current_app.config["DASK_SCHEDULER"], facts)
    facts["database_ok"] = not problems
    if problems:  # the one error body, with the facts beside it
        return jsonify({"error": "; ".join(problems), "status": 503, "problems": problems, **facts}), 503
    return jsonify({"status": "ok", **facts})


def _cluster_facts(address: str, facts: dict) -> list[str]:
    """The scheduler's state and whether every host can run this version's code, added to `facts`; the
    problems (a scheduler that does not answer cannot run a report either)."""
    import cluster  # Dask only loads when a scheduler is configured

    facts.update(cluster.scheduler_state(address))
    if not facts["scheduler_ok"]:
        code = {"ok": False, "problems": [f"the Dask scheduler at {address} does not answer"]}
    else:
        code = cluster.code_check(address, timeout=cluster.HEALTH_TIMEOUT_SECONDS)
    facts["scheduler_code_ok"] = code["ok"]
    return list(code["problems"])


SERVER_FACTS = ("server_version", "server_wire_version", "server_features")  # a MongoDB server's, once checked


def _health_facts(store: database.Store) -> tuple[list[str], dict]:
    """What /health shows of the database and the reports' disk, and the problems found there."""
    min_free = current_app.config["MIN_FREE_MB"] * 1_048_576
    state = store.health(min_free)
    problems = list(state["problems"])
    reports_free = database.free_bytes(current_app.config["REPORTS_DIR"])
    if reports_free is not None and reports_free < min_free:
        problems.append(
            f"the disk holding the reports folder has {reports_free / 1_048_576:.0f} MB free, "
            f"under MIN_FREE_MB ({current_app.config['MIN_FREE_MB']} MB)"
        )
    facts = {
        "database": store.kind,
        "database_ok": not problems,
        "schema_version": state["schema_version"],
        "free_disk_mb": state["free_disk_mb"],
        "reports_free_disk_mb": None if reports_free is None else round(reports_free / 1_048_576, 1),
        "newest_poll": _iso_us(state.get("newest_poll_us")),
    }
    facts.update({key: state[key] for key in SERVER_FACTS if key in state})
    return problems, facts


@bp.get("/data")
def data():
    store = _store()
    summary = store.data_summary()
    return jsonify(
        {
            "stores": summary["stores"],
            "polls": summary["polls"],
            "hours_rows": summary["hours_rows"],
            "zones": summary["zones"],
            "oldest_poll": _iso_us(summary["oldest_poll_us"]),
            "newest_poll": _iso_us(summary["newest_poll_us"]),
            "uploads": [_listed_upload(upload) for upload in store.list_uploads(UPLOADS_SHOWN)],
        }
    )


def _listed_upload(upload: dict) -> dict:
    """One upload of GET /data."""
    return {
        "upload_id": upload["upload_id"],
        "file": upload["file"],
        "kind": upload["kind"],
        "at": _iso(upload["at"]),
        "finished_at": _iso(upload.get("finished_at")),
        "loaded": upload["loaded"],
        "written": upload["written"],
        "rejected": upload["rejected"],
        "status": upload["status"],
        "error": upload.get("error"),
        "dismissed": bool(upload.get("dismissed")),
    }


@bp.delete("/stores/<store_id>/polls")
def delete_polls(store_id: str):
    bounds = {name: _instant_arg(name) for name in ("since", "until")}
    if bounds["since"] is not None and bounds["until"] is not None and bounds["since"] > bounds["until"]:
        abort(400, description="since is after until: nothing would be deleted")
    deleted = database.delete_polls(
        _store(), store_id, bounds["since"], bounds["until"], lease_wait_seconds=INGEST_WAIT_SECONDS
    )
    log.info(
        "deleted %d polls of store %r (since %s, until %s)", deleted, store_id[:64], bounds["since"], bounds["until"]
    )
    return jsonify({"deleted": deleted, "store_id": store_id})


# --------------------------------------------------------------------------- the schedule

SCHEDULED_SCAN = (100, 1000)  # GET /schedule looks for the last scheduled report 100 at a time, among 1000 at most


@bp.get("/schedule")
def schedule():
    """The schedule (schedule.py), its next tick on the database's clock, the last claimed tick and the last
    report the schedule started; the last two come from the database, so they show even with no schedule set."""
    store = _store()
    setting = current_app.extensions.get("schedule")
    last = store.last_tick()
    return jsonify(
        {
            "schedule": None if setting is None else setting.describe(),
            "next_tick": None if setting is None else _iso_us(setting.next_tick_us(store.clock_us())),
            "last_tick": None
            if last is None
            else {
                "tick": _iso_us(last["tick_us"]),
                "outcome": last["outcome"],
                "report_id": last["report_id"],
                "claimed_at": _iso_us(last["claimed_at_us"]),
            },
            "last_scheduled_report": _last_scheduled_report(store, last),
        }
    )


def _last_scheduled_report(store: database.Store, last: dict | None) -> dict | None:
    """The newest report with trigger "schedule", as GET /reports lists it: the last tick's report, or (after
    a skipped tick, or once that report is deleted) the newest one among the newest SCHEDULED_SCAN[1] reports."""
    report = store.find_report(last["report_id"]) if last is not None and last["report_id"] else None
    page, most = SCHEDULED_SCAN
    for skip in range(0, most, page):
        if report is not None:
            break
        rows = store.list_reports(skip=skip, limit=page)
        report = next((row for row in rows if row["trigger"] == "schedule"), None)
        if len(rows) < page:
            break
    if report is None:
        return None
    if report["status"] == "Running" and _is_stale(report):
        store.fail_stale_reports(_stale_after())
        report = store.find_report(report["report_id"]) or report
    return _listed_report(report)


# --------------------------------------------------------------------------- reading the request


def _ingest():
    """Parse and load each uploaded file, streaming it from werkzeug's temporary file."""
    if not request.files:
        abort(
            400,
            description="upload CSV files as multipart form fields, e.g. "
            "curl -F store_status=@store_status.csv http://host/ingest",
        )
    results = []
    for field, upload in request.files.items(multi=True):
        head = upload.stream.read(4096)
        upload.stream.seek(0)
        kind = FIELD_FILES.get(field) or sources.detect_file(_first_line(head))
        label = upload.filename or field
        if kind is None:
            results.append(
                {
                    "file": label,
                    "error": "not one of the three files: name the field store_status, "
                    "menu_hours or timezones, or give the file its header",
                }
            )
            continue
        try:
            summary = database.load_file(
                _store(), kind, upload.stream, label=label, lease_wait_seconds=INGEST_WAIT_SECONDS
            )
        except sources.HeaderError as error:
            results.append({"file": label, "kind": kind, "error": str(error)})
            continue
        except database.DiskFull as error:
            log.error("disk full during the upload of %s: %s", label, error)
            service_metrics.database_error("disk_full")  # answered here, not by errors.disk_full
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
    refused before this (`guards.refuse_cross_site`).
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


def _as_of_of_body(body: dict | None) -> int | None:
    """The as_of of trigger_report's body in microseconds (None: the newest poll); an empty body means no options."""
    if body is None:
        return None
    unknown = sorted(set(body) - {"as_of"})
    if unknown:
        abort(400, description=f"unknown field(s) {', '.join(map(str, unknown))[:100]}; only as_of is accepted")
    if body.get("as_of") is None:
        return None
    try:
        return check_as_of_range(parse_as_of(body["as_of"]))
    except ValueError as error:
        abort(400, description=str(error))


def _positive_int_arg(name: str, default: int, largest: int) -> int:
    given = request.args.getlist(name)
    if len(given) > 1:
        abort(400, description=f"give {name} at most once")
    text = given[0] if given else None
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= largest:
        abort(400, description=f"{name} must be a whole number from 1 to {largest}")
    return int(text)


def _paging_args() -> dict | None:
    """GET /get_report's `limit`, `after` and `store_id`, each given at most once; None when none is given.

    `limit` (default MAX_PAGE_ROWS) and `after` make a page, which says `next`; `store_id` keeps one row.
    """
    given = {name: request.args.getlist(name) for name in PAGING_PARAMETERS if name in request.args}
    if not given:
        return None
    repeated = [name for name, values in given.items() if len(values) > 1]
    if repeated:
        abort(400, description=f"give {repeated[0]} at most once")
    paged = "limit" in given or "after" in given
    return {
        "limit": _positive_int_arg("limit", MAX_PAGE_ROWS, MAX_PAGE_ROWS) if paged else None,
        "after": request.args.get("after"),
        "store_id": request.args.get("store_id"),
    }


def _instant_arg(name: str) -> int | None:
    """An optional instant of the query string (`since`, `until`) in microseconds, given at most once."""
    given = request.args.getlist(name)
    if len(given) > 1:
        abort(400, description=f"give {name} at most once")
    try:
        return check_as_of_range(parse_as_of(given[0])) if given else None
    except ValueError as error:
        abort(400, description=str(error).replace("as_of", name, 1))


def _report_id_arg(example: str) -> str:
    """The one report_id of the query string, checked before the database is asked (400 otherwise)."""
    given = request.args.getlist("report_id")
    if len(given) != 1 or not given[0]:
        abort(400, description=f"give exactly one report_id, e.g. {example}")
    return _check_report_id(given[0])


def _check_report_id(value: str, name: str = "report_id") -> str:
    """`value` when it has the form of a report id (400 otherwise, before the database is asked)."""
    if not REPORT_ID.fullmatch(value):
        abort(400, description=f"malformed {name}: expected 32 lowercase hex characters")
    return value


def _could_be_a_store(store_id: str) -> bool:
    """Whether `store_id` has the form every loaded store id has (sources checks it at every load)."""
    return len(store_id) <= sources.MAX_STORE_ID_LENGTH and re.fullmatch(sources.STORE_ID_PATTERN, store_id) is not None


def _wants_csv() -> bool:
    """CSV when format=csv, JSON when format=json; otherwise by the Accept header (400 for another format)."""
    given = request.args.get("format")
    if given is not None:
        if given.lower() not in FORMATS:
            abort(400, description=f"unknown format {given[:32]!r}: use format=csv or format=json")
        return given.lower() == "csv"
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv" and request.accept_mimetypes["text/csv"] > request.accept_mimetypes["application/json"]


# --------------------------------------------------------------------------- reports as the API shows them


def _read_store_week(store_id: str, since_us: int, now_us: int):
    """One store's polls (from its last before `since_us` to `now_us`), hour rows and zone rows."""
    return _store().read_chunk([store_id], since_us, now_us)


def _find_report(report_id: str) -> dict:
    """The report (404 when unknown); a Running one whose worker stopped beating is failed first."""
    store = _store()
    report = store.find_report(report_id)
    if report is None:
        abort(404, description=f"no report with id {report_id}")
    if report["status"] == "Running" and _is_stale(report):
        store.fail_stale_reports(_stale_after())
        report = store.find_report(report_id)
    return report


def _complete_report_body(report_id: str, report: dict, rows, page: dict | None = None) -> dict:
    """The JSON of a Complete report with `rows` for "data" (its rows, a page of them with `page`'s "next",
    or ROWS_MARK where they are streamed in)."""
    return {
        "status": "Complete",
        "report_id": report_id,
        "trigger": report["trigger"],
        "as_of": _as_of(report),
        **_after_newest(report),
        "row_count": report.get("row_count"),
        "columns": utils.REPORT_COLUMNS,
        "data": rows,
        **(page or {}),
    }


def _page_of_rows(report_id: str, rows: Iterator[dict], paging: dict) -> tuple[list[dict], dict]:
    """The rows `paging` (`_paging_args`) keeps, and {"next": ...} when it pages them; reads no further
    than it needs.

    `store_id` keeps that store's row (404 when the report lacks it; a report has one row per store).
    A page is the first `limit` rows whose store_id sorts after `after`, compared as text: the report holds
    its rows in store_id order (`Store.report_store_ids`' order, by code point), so these are the next ones.
    """
    if paging["store_id"] is not None:
        row = next((row for row in rows if row["store_id"] == paging["store_id"]), None)
        if row is None:
            abort(404, description=f"report {report_id} has no store {paging['store_id'][:64]!r}")
        rows = iter([row])
    if paging["limit"] is None:
        return list(rows), {}
    page, more = [], False
    for row in rows:
        if paging["after"] is not None and not row["store_id"] > paging["after"]:
            continue
        if len(page) == paging["limit"]:
            more = True
            break
        page.append(row)
    return page, {"next": page[-1]["store_id"] if more else None}


# --------------------------------------------------------------------------- a stored report CSV, piece by piece
# An unpaged report is sent as it is read: the CSV as the store's pieces, the JSON built from them a few
# rows at a time, so a reader holds about one piece (STREAM_PIECE_BYTES) and STREAM_ROWS rows, whatever
# the report's size.  The answer begins after the view returns: a fault before the first piece is the one
# error body (500), one later cuts the answer short (logged; the client sees a short or unfinished body).

ROWS_MARK = "\x00rows\x00"  # stands for the rows in the JSON around them: no other value can hold a NUL
QUOTED_FORMULA_STARTS = tuple("'" + start for start in FORMULA_STARTS)  # how `neutralise_cells` marks an id


def _report_pieces(report: dict) -> Iterator[bytes]:
    """The stored CSV of a Complete report in pieces of STREAM_PIECE_BYTES, read as they are used, each
    within the store's time limit of a request; the first is read now, so that a stored CSV found
    incomplete or unreadable before anything is sent is an error answer, not a cut answer."""
    store = _store()
    pieces = store.iter_report_csv(report, STREAM_PIECE_BYTES)
    try:
        first = next(pieces, None)
    except BaseException:
        _close(pieces)
        raise
    return _pieces_from(store, report["report_id"], first, pieces)


def _pieces_from(store: database.Store, report_id: str, first: bytes | None, pieces: Iterator[bytes]):
    try:
        if first is not None:
            yield first
        while True:
            with store.request_scope():
                piece = next(pieces, None)
            if piece is None:
                return
            yield piece
    except Exception as error:
        log.error("report %s: its answer was cut short: %s", report_id, database.describe_error(error))
        raise
    finally:
        _close(pieces)


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def report_rows(pieces: Iterable[bytes]) -> Iterator[dict]:
    """The rows of a report CSV read from its pieces as they come: dicts of the columns, store ids as
    loaded (the quote `neutralise_cells` put before some taken off, as `store_ids_from_csv` does), the
    figures as floats; the values the whole CSV read by pandas gives."""
    records = csv.reader(_csv_lines(pieces))
    header = next(records, None)
    if header is None:
        return
    if header != utils.REPORT_COLUMNS:
        raise ValueError(f"a stored report CSV begins {','.join(header)[:200]!r}, not with the report's columns")
    figures = header[1:]
    for record in records:
        if not record:
            continue  # a blank line (pandas skips them too)
        if len(record) != len(header):
            raise ValueError(f"a stored report CSV has a line of {len(record)} fields, not {len(header)}")
        store_id = record[0]
        if store_id.startswith(QUOTED_FORMULA_STARTS):
            store_id = store_id[1:]
        row = {"store_id": store_id}
        for name, text in zip(figures, record[1:]):
            row[name] = float(text)
        yield row


def _csv_lines(pieces: Iterable[bytes]) -> Iterator[str]:
    """The lines of a CSV (each with its "\n") from pieces cut anywhere: a line cut by a piece's end is
    carried to the next.  Lines end at "\n" only, so a "\r" (only ever inside a quoted field) stays in its
    line for the csv module; a quoted field holding "\n" spans lines, which the csv module joins."""
    carry = b""
    for piece in pieces:
        data = carry + piece if carry else piece
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            for line in data[:cut].decode("utf-8").split("\n")[:-1]:
                yield line + "\n"
    if carry:
        yield carry.decode("utf-8")


def _streamed_json(report_id: str, report: dict, pieces: Iterator[bytes]) -> Response:
    """The JSON of a Complete report, byte for byte what `jsonify(_complete_report_body(...))` answers,
    streamed.  Flask indents JSON in debug mode; then the answer is built whole, as jsonify would."""
    provider = current_app.json
    if (provider.compact is None and current_app.debug) or provider.compact is False:
        with closing(pieces):
            return jsonify(_complete_report_body(report_id, report, list(report_rows(pieces))))

    def dumps(value) -> str:
        return provider.dumps(value, separators=(",", ":"))  # jsonify's compact form

    body = report_json_pieces(dumps, _complete_report_body(report_id, report, ROWS_MARK), pieces)
    return current_app.response_class(body, mimetype=provider.mimetype)


def report_json_pieces(dumps: Callable[[object], str], fields: dict, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """`dumps(fields)` and a newline (as jsonify writes it), with the rows of the report CSV `pieces` in
    place of ROWS_MARK, as a list: made and given STREAM_ROWS rows at a time."""
    head, tail = dumps(fields).split(dumps(ROWS_MARK))
    yield (head + "[").encode()
    rows, separator = report_rows(pieces), ""
    while batch := list(itertools.islice(rows, STREAM_ROWS)):
        yield (separator + dumps(batch)[1:-1]).encode()
        separator = ","
    yield ("]" + tail + "\n").encode()


# --------------------------------------------------------------------------- history and changes


def _history_point(point: dict) -> dict:
    """One point of GET /stores/<id>/history: the report, its now (as GET /get_report shows it), the row."""
    return {
        "report_id": point["report_id"],
        "as_of": _iso_us(point["as_of_us"]),
        **{column: point[column] for column in utils.REPORT_COLUMNS[1:]},
    }


def _comparable_report(report_id: str, role: str) -> dict:
    """A Complete report to compare (404 when unknown, 409 when not Complete); `role` names it in errors."""
    report = _find_report(report_id)
    if report["status"] == "Running":
        abort(
            409,
            description=f"{role}report {report_id} is still Running ({_running_done(report)}): "
            "compare it once it is Complete",
        )
    if report["status"] != "Complete":
        reason = report.get("error") or "unknown error"
        abort(409, description=f"{role}report {report_id} Failed ({reason}), so it has no rows to compare")
    return report


def report_changes_lists(rows: pd.DataFrame, base_rows: pd.DataFrame, limit: int) -> dict:
    """How downtime_last_day moved between two reports' rows (`read_report_rows` frames): "rose" and "fell"
    (stores in both whose figure changed, largest change first), "new" (only in `rows`, most downtime first)
    and "gone" (only in `base_rows`, most downtime first), each at most `limit`, ties by store_id (by code
    point); "counts" says how many stores each list has in all, and how many stayed "unchanged".  A change
    is the difference rounded to the figures' 2 decimals, so 0.1 + 0.2 - 0.3 is no change."""
    merged = pd.merge(
        rows[["store_id", "downtime_last_day"]],
        base_rows[["store_id", "downtime_last_day"]].rename(columns={"downtime_last_day": "base_downtime_last_day"}),
        on="store_id",
        how="outer",
        indicator=True,
    )
    both = merged[merged["_merge"] == "both"].assign(
        change=lambda frame: (frame["downtime_last_day"] - frame["base_downtime_last_day"]).round(2)
    )
    rose = both[both["change"] > 0].sort_values(["change", "store_id"], ascending=[False, True])
    fell = both[both["change"] < 0].sort_values(["change", "store_id"], ascending=[True, True])
    new = merged[merged["_merge"] == "left_only"]
    new = new.sort_values(["downtime_last_day", "store_id"], ascending=[False, True])
    gone = merged[merged["_merge"] == "right_only"]
    gone = gone.sort_values(["base_downtime_last_day", "store_id"], ascending=[False, True])
    changed = ["store_id", "downtime_last_day", "base_downtime_last_day", "change"]
    return {
        "rose": _records(rose, changed, limit),
        "fell": _records(fell, changed, limit),
        "new": _records(new, ["store_id", "downtime_last_day"], limit),
        "gone": _records(gone, ["store_id", "base_downtime_last_day"], limit),
        "counts": {
            "rose": len(rose),
            "fell": len(fell),
            "unchanged": len(both) - len(rose) - len(fell),
            "new": len(new),
            "gone": len(gone),
        },
    }


def _records(frame: pd.DataFrame, columns: list[str], limit: int) -> list[dict]:
    """The first `limit` rows of `frame` as dicts of `columns`: store ids as str, figures as float."""
    head = frame.iloc[:limit]
    values = {"store_id": [str(value) for value in head["store_id"]]}
    values.update({column: [float(value) for value in head[column]] for column in columns[1:]})
    return [dict(zip(columns, row)) for row in zip(*(values[column] for column in columns))]


def _running_state(report: dict) -> dict:
    """Phase and progress of a Running report; `total` is null until the stores are counted."""
    progress = report.get("progress") or {}
    total = progress.get("total")
    phase = progress.get("phase") or ("computing" if total else "queued")
    return {
        "phase": phase,
        "progress": {
            "done": int(progress.get("done") or 0),
            "total": None if phase in ("queued", "counting") else int(total or 0),
        },
    }


def _running_done(report: dict) -> str:
    """How far a Running report is, in words: "50 of 200 stores", "counting stores" or "waiting for a report worker"."""
    running = _running_state(report)
    progress = running["progress"]
    if progress["total"] is not None:
        return f"{progress['done']} of {progress['total']} stores"
    return "counting stores" if running["phase"] == "counting" else "waiting for a report worker"


def _not_complete(report_id: str, report: dict, what: str) -> str:
    """Why a report that is not Complete has no CSV or timeline yet (a 409's message)."""
    if report["status"] == "Running":
        done = _running_done(report)
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
        "business_hours": [
            {"start": a, "end": b} for a, b in zip(iso(timeline.business_open), iso(timeline.business_close))
        ],
        "polls": [
            {"timestamp": t, "status": "active" if a else "inactive"}
            for t, a in zip(iso(timeline.poll_ticks), timeline.poll_active.tolist())
        ],
        "segments": [
            {"start": a, "end": b, "status": status}
            for a, b, status in zip(iso(timeline.segment_start), iso(timeline.segment_end), statuses)
        ],
        "totals": totals,
    }


def _is_stale(report: dict) -> bool:
    beat = report.get("heartbeat_at")
    if beat is None:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=dt.UTC)
    return database.now_utc() - beat > _stale_after()


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
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat().replace("+00:00", "Z")
