"""The one error body (SPEC §4) and the handlers that turn every error into it.

`error_response` and `busy_response` build the body; `init_app` registers one handler per kind of error:
HTTP errors (`abort(404, description=...)` in a view), database failures (503 when transient, 500 when
not), the data lease, a full disk (507), a refused database, an unfinished upload (409), and anything
else (500, with the traceback in the log only).  Database failures and a full disk are counted in the
`store_uptime_database_errors_total` metric by kind.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

import database
import metrics

# The HTTP layer logs under one name, "app", as it did when it was one module: log lines and the filters
# that select them stay the same.
log = logging.getLogger("app")

RETRY_AFTER_SECONDS = 10


def error_response(status: int, message: str) -> tuple[Response, int]:
    """The one error body: {"error": message, "status": code}."""
    return jsonify({"error": message, "status": status}), status


def busy_response(message: str, status: int = 503) -> tuple[Response, int]:
    """The error body with Retry-After: the service is busy with something that ends by itself
    (503; 429 when the report queue is full)."""
    response, status = error_response(status, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response, status


def http_error(error: HTTPException):
    """An HTTP error (`abort`, an unknown route, a wrong method) in the one body, with its headers (Allow)."""
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
    """A database failure, without the driver's text: 503 when it goes away by itself, else 500."""
    log.error("database error: %s", database.describe_error(error))
    if database.is_transient(error):
        metrics.database_error("transient")
        return busy_response("the database is not available; try again shortly")
    metrics.database_error("permanent")
    return error_response(500, "the database failed to do this (a permanent error; the server log has the details)")


def data_busy(error):
    log.warning("gave up waiting for the data lease: %s", error)
    return busy_response("reports or a load hold the data just now; try again shortly")


def lease_lost(error):
    log.error("data lease lost: %s", error)
    return busy_response(f"{error}; try again")


def disk_full(error):
    log.error("disk full: %s", error)
    metrics.database_error("disk_full")
    return error_response(507, str(error))


def database_refused(error):
    log.error("database refused: %s", error)
    return error_response(500, str(error))


def upload_unfinished(error):
    return jsonify({"error": str(error), "status": 409, "upload_id": error.upload["upload_id"]}), 409


def unexpected_error(error):
    log.exception("unhandled error")
    return error_response(500, "internal error; the details are in the server log")


def init_app(app: Flask) -> None:
    """Register the handlers (Flask picks the one for the most specific class of the error)."""
    app.register_error_handler(HTTPException, http_error)
    for error_class in database.DATABASE_ERRORS:
        app.register_error_handler(error_class, database_error)
    app.register_error_handler(database.LeaseTimeout, data_busy)
    app.register_error_handler(database.LeaseLost, lease_lost)
    app.register_error_handler(database.DiskFull, disk_full)
    app.register_error_handler(database.DatabaseRefused, database_refused)
    app.register_error_handler(database.UploadUnfinished, upload_unfinished)
    app.register_error_handler(Exception, unexpected_error)
