"""The service's Prometheus metrics (SPEC §4, `GET /metrics`): their definitions, the calls that record
them, and the scrape.

Every metric is named `store_uptime_...` and defined once, here, at import.  Under gunicorn each worker
is its own process, so the counts are kept in prometheus_client's multiprocess mode: with
PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it in the master before the workers fork, and wipes
it), every worker writes its values to files there and a scrape, whichever worker answers it, sums the
files of all workers, living and dead.  prometheus_client chooses its mode when it is first imported, so
the variable must be set before that; unset (`python app.py`, the tests), this one process's default
registry is served.  Labels take a few fixed values each (a route is the view's name, never the path).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import REGISTRY

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # "text/plain; version=0.0.4; charset=utf-8", what every Prometheus reads
PREFIX = "store_uptime_"
# read once, as prometheus_client reads it once (at its import, just above): the mode of this process
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
# no `_created` series: multiprocess mode has none, so one process and several answer alike
disable_created_metrics()

# reports run for seconds (tiny data) to minutes (a week of 14,000 stores); requests for milliseconds
REPORT_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))
REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
LEASE_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, float("inf"))

REPORTS_STARTED = Counter(
    PREFIX + "reports_started", "Reports recorded Running and queued, by what triggered them.", ["trigger"]
)
REPORTS_FINISHED = Counter(PREFIX + "reports_finished", "Reports finished, by their end status.", ["status"])
REPORT_DURATION = Histogram(
    PREFIX + "report_duration_seconds",
    "Time a report job ran (from leaving the queue to Complete or Failed), by its end status.",
    ["status"],
    buckets=REPORT_SECONDS_BUCKETS,
)
# per process, summed over the living workers (a dead worker's reports are no longer queued or running)
REPORTS_QUEUED = Gauge(
    PREFIX + "reports_queued", "Reports waiting for a report thread of this service.", multiprocess_mode="livesum"
)
REPORTS_RUNNING = Gauge(
    PREFIX + "reports_running", "Reports being computed by this service now.", multiprocess_mode="livesum"
)
UPLOAD_ROWS_LOADED = Counter(
    PREFIX + "upload_rows_loaded", "Rows written to the database by committed uploads, by file.", ["file"]
)
UPLOAD_ROWS_REJECTED = Counter(
    PREFIX + "upload_rows_rejected", "Rows rejected (with a reason) by committed uploads, by file.", ["file"]
)
HTTP_REQUESTS = Counter(
    PREFIX + "http_requests", "HTTP requests answered, by route (the view's name) and status.", ["route", "status"]
)
HTTP_REQUEST_DURATION = Histogram(
    PREFIX + "http_request_duration_seconds",
    "Time from a request's arrival to its answer being ready (a streamed body not included), by route.",
    ["route"],
    buckets=REQUEST_SECONDS_BUCKETS,
)
DATABASE_ERRORS = Counter(
    PREFIX + "database_errors",
    "Database faults answered to a request, by kind: transient (503), permanent (500), disk_full (507).",
    ["kind"],
)
LEASE_WAITS = Counter(
    PREFIX + "data_lease_waits", "Times the data lease was busy and had to be waited for, by mode.", ["mode"]
)
LEASE_WAIT_SECONDS = Histogram(
    PREFIX + "data_lease_wait_seconds",
    "How long a busy data lease was waited for (until taken, or given up), by mode.",
    ["mode"],
    buckets=LEASE_SECONDS_BUCKETS,
)

UNMATCHED_ROUTE = "unmatched"  # the route label of a request no view answered (an unknown path, a wrong method)


def report_started(trigger: str) -> None:
    REPORTS_STARTED.labels(trigger=trigger).inc()
    REPORTS_QUEUED.inc()


def report_dequeued() -> None:
    """A queued report reached a report thread."""
    REPORTS_QUEUED.dec()


def report_running() -> None:
    REPORTS_RUNNING.inc()


def report_finished(status: str, seconds: float) -> None:
    REPORTS_RUNNING.dec()  # before the finish is counted: a scrape that sees the finish sees this too
    REPORTS_FINISHED.labels(status=status).inc()
    REPORT_DURATION.labels(status=status).observe(seconds)


def upload_committed(file_kind: str, loaded: int, rejected: int) -> None:
    UPLOAD_ROWS_LOADED.labels(file=file_kind).inc(loaded)
    UPLOAD_ROWS_REJECTED.labels(file=file_kind).inc(rejected)


def request_answered(route: str | None, status: int, seconds: float | None) -> None:
    route = route or UNMATCHED_ROUTE
    HTTP_REQUESTS.labels(route=route, status=str(status)).inc()
    if seconds is not None:
        HTTP_REQUEST_DURATION.labels(route=route).observe(seconds)


def database_error(kind: str) -> None:
    """kind: "transient", "permanent" or "disk_full"."""
    DATABASE_ERRORS.labels(kind=kind).inc()


def lease_waited(mode: str, seconds: float) -> None:
    LEASE_WAITS.labels(mode=mode).inc()
    LEASE_WAIT_SECONDS.labels(mode=mode).observe(seconds)


def scrape() -> bytes:
    """Every metric in Prometheus' text format: the sum over all workers' files in multiprocess mode,
    else this process's registry (which also has prometheus_client's process and Python metrics)."""
    if MULTIPROCESS_DIR:
        registry = CollectorRegistry()  # a fresh one per scrape, as prometheus_client's multiprocess docs say
        _multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
