"""The HTTP API (SPEC §4, docs/api.md): the views of one blueprint, thin over database.py and reportGenerator.py.

Each view validates its input, calls the store or the report generator, and answers JSON (or the report's
CSV); errors are raised or `abort`ed and turned into the one error body by `errors.py`.  Beside the views:
which of them are open without the API token, and the query parameters each takes (`guards.py` enforces
both).  Endpoint names are the view names ("api.get_report"); the blueprint has no URL prefix.
"""

from __future__ import annotations

import datetime as dt
import errno
import io
import json
import logging
import re
import tempfile
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
from report_csv import store_ids_from_csv
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
}
# the query parameters each view takes; any other is a 400 that names it
QUERY_PARAMETERS = {
    "get_report": {"report_id", "format", *PAGING_PARAMETERS},
    "store_timeline": {"report_id"},
    "reports": {"page", "per_page"},
    "delete_polls": {"since", "until"},
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
        return jsonify({"status": "Running", **_running_state(report), **_after_newest(report)})
    if report["status"] == "Failed":
        return jsonify({"status": "Failed", "error": report.get("error") or "unknown error"})
    payload = _store().read_report_csv(report)
    if paging is not None:  # a page is JSON whatever the Accept header says
        return jsonify(_complete_report_body(report_id, report, payload, paging))
    if wants_csv:
        return Response(
            payload,
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="report_{report_id}.csv"'},
        )
    return jsonify(_complete_report_body(report_id, report, payload))


@bp.get("/stores/<store_id>/timeline")
def store_timeline(store_id: str):
    report_id = _report_id_arg(f"/stores/{store_id[:64]}/timeline?report_id=<id of a Complete report>")
    report = _find_report(report_id)
    if report["status"] != "Complete":
        abort(409, description=_not_complete(report_id, report, "timeline"))
    rows = pd.read_csv(io.BytesIO(_store().read_report_csv(report)), dtype={"store_id": str}, keep_default_na=False)
    row = rows[rows["store_id"] == store_id]
    if row.empty:
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
    return jsonify(timeline_body(store_id, now_us, timeline, row.to_dict("records")[0]))


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
        "as_of": _as_of(row),
        **_after_newest(row),
        "created_at": _iso(row.get("created_at")),
        "finished_at": _iso(row.get("finished_at")),
        "row_count": row.get("row_count"),
        "error": row.get("error"),
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
    text = request.args.get(name)
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
    if not REPORT_ID.fullmatch(given[0]):
        abort(400, description="malformed report_id: expected 32 lowercase hex characters")
    return given[0]


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


def _complete_report_body(report_id: str, report: dict, payload: bytes, paging: dict | None = None) -> dict:
    """The JSON of a Complete report: its rows as the CSV holds them, store ids as they were loaded;
    with `paging` (`_paging_args`) only a page of them, or one store's row."""
    rows = pd.read_csv(io.BytesIO(payload), dtype={"store_id": str}, keep_default_na=False)
    rows["store_id"] = store_ids_from_csv(rows["store_id"])
    page = {}
    if paging is not None:
        rows, page = _page_of_rows(report_id, rows, paging)
    return {
        "status": "Complete",
        "report_id": report_id,
        "as_of": _as_of(report),
        **_after_newest(report),
        "row_count": report.get("row_count"),
        "columns": utils.REPORT_COLUMNS,
        "data": rows.to_dict("records"),
        **page,
    }


def _page_of_rows(report_id: str, rows: pd.DataFrame, paging: dict) -> tuple[pd.DataFrame, dict]:
    """The rows `paging` keeps, and {"next": ...} when it pages them.

    `store_id` keeps that store's row (404 when the report lacks it). The report holds its rows in
    store_id order (`Store.report_store_ids`' order, by code point), so a page is the first `limit`
    rows whose store_id sorts after `after`, compared as text.
    """
    if paging["store_id"] is not None:
        rows = rows[rows["store_id"] == paging["store_id"]]
        if rows.empty:
            abort(404, description=f"report {report_id} has no store {paging['store_id'][:64]!r}")
    if paging["limit"] is None:
        return rows, {}
    if paging["after"] is not None:
        rows = rows[rows["store_id"] > paging["after"]]
    page = rows.iloc[: paging["limit"]]
    more = len(rows) > len(page)
    return page, {"next": page["store_id"].iloc[-1] if more else None}


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


def _not_complete(report_id: str, report: dict, what: str) -> str:
    """Why a report that is not Complete has no CSV or timeline yet (a 409's message)."""
    if report["status"] == "Running":
        running = _running_state(report)
        progress = running["progress"]
        done = (
            f"{progress['done']} of {progress['total']} stores"
            if progress["total"] is not None
            else "counting stores"
            if running["phase"] == "counting"
            else "waiting for a report worker"
        )
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
