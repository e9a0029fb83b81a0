"""What every request passes before and after its view (docs/security.md).

In order: the request's clock starts, a state-changing request from another site is refused (403), the
API token is checked (401), the request's database calls get one shared time limit, and unknown query
parameters are refused (400); every answer gets the security headers and is counted, by route and
status, with its latency (metrics.py).  Host names are checked by Flask itself, against the
TRUSTED_HOSTS setting.  Which endpoints are open and which query parameters each takes are declared
beside the views, in `api.py`.
"""

from __future__ import annotations

import hmac
import time
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request

import metrics
from api import API_ENDPOINTS, OPEN_ENDPOINTS, QUERY_PARAMETERS
from errors import error_response

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
# what a browser may do with the page and the API's answers
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
AS_OF_IN_THE_QUERY = (
    'as_of goes in the JSON body, not the query string: curl -X POST -H "Content-Type: '
    'application/json" -d \'{"as_of": "2023-01-25T18:00:00Z"}\' http://host/trigger_report'
)


def view_name() -> str | None:
    """The endpoint of the request without its blueprint ("api.health" -> "health"); None when no route matched."""
    return request.endpoint.rsplit(".", 1)[-1] if request.endpoint else None


def start_clock() -> None:
    """First of the guards, so the latency includes the others (and a refusal is timed too)."""
    g.request_started = time.perf_counter()


def count_answer(response: Response) -> Response:
    """Count the answer by route (the view's name: a bounded set, never the raw path) and status."""
    started = g.get("request_started")
    metrics.request_answered(
        view_name(), response.status_code, None if started is None else time.perf_counter() - started
    )
    return response


def cross_site_refusal() -> str | None:
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


def refuse_cross_site():
    if request.method in STATE_CHANGING:
        reason = cross_site_refusal()
        if reason:
            return error_response(403, reason)
    return None


def require_token():
    token = current_app.config["API_TOKEN"]
    if not token or view_name() in OPEN_ENDPOINTS:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return error_response(401, "missing or wrong API token: send 'Authorization: Bearer <token>'")
    return None


def bound_database_time() -> None:
    """The database calls of a request share one time limit (MongoDB: ~1 s, then 503); /ingest is a job."""
    if view_name() != "ingest":
        g.database_scope = current_app.extensions["store"].request_scope()
        g.database_scope.__enter__()


def end_database_time(error) -> None:
    scope = g.pop("database_scope", None)
    if scope is not None:
        scope.__exit__(None, None, None)


def refuse_unknown_parameters():
    view = view_name()
    if view not in QUERY_PARAMETERS and view not in API_ENDPOINTS:
        return None
    taken = QUERY_PARAMETERS.get(view, set())
    unknown = sorted(set(request.args) - taken)
    if view == "trigger_report" and "as_of" in unknown:
        return error_response(400, AS_OF_IN_THE_QUERY)
    if unknown:
        allowed = ", ".join(sorted(taken)) or "none"
        return error_response(
            400, f"unknown query parameter(s) {', '.join(unknown)[:200]} on {request.path}; this call takes: {allowed}"
        )
    return None


def security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    """Register the guards on every request of `app`, in the order above."""
    for guard in (start_clock, refuse_cross_site, require_token, bound_database_time, refuse_unknown_parameters):
        app.before_request(guard)
    app.after_request(security_headers)
    app.after_request(count_answer)
    app.teardown_request(end_database_time)
