"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every worker builds its own app (and database connection) after the fork; all
report state lives in the database (the SQLite file by default, or MongoDB), so
any worker answers for any report.  Only `MONGO_URI=mongomock://` (a test
double private to each process) needs one worker (WEB_CONCURRENCY=1).

Metrics (`GET /metrics`, metrics.py) are summed over the workers by prometheus_client's multiprocess
mode: the master wipes PROMETHEUS_MULTIPROC_DIR at start (or, unset, makes a fresh temporary one and
removes it at exit) and sets it before any worker forks and imports prometheus_client; a dead worker's
live gauges are dropped in `child_exit`.
"""

import ipaddress
import os
import shutil
import tempfile
from pathlib import Path


def bind_from_env(env) -> str:
    """Where to listen: BIND (e.g. "0.0.0.0:8000"), else HOST:PORT, by default 127.0.0.1:8000 (private)."""
    if env.get("BIND"):
        return env["BIND"]
    return f"{env.get('HOST') or '127.0.0.1'}:{env.get('PORT') or '8000'}"


def _is_loopback(address: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1, localhost, a unix socket."""
    if address.startswith(("unix:", "fd://")):
        return True  # a socket file or an inherited descriptor: not on the network
    if address.startswith("["):  # [::1]:8000
        host = address[1:].split("]", 1)[0]
    elif address.count(":") == 1:  # host:port
        host = address.split(":", 1)[0]
    else:  # a host without a port, or a bare IPv6 address
        host = address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or an empty host: it may be reachable from the network


def open_bind_problem(addresses, env) -> str | None:
    """Why starting on `addresses` would serve an open API to the network, or None when it is fine:
    a non-loopback address needs API_TOKEN, unless ALLOW_OPEN=1 says an open API is meant."""
    public = [address for address in addresses if not _is_loopback(address)]
    if not public or env.get("API_TOKEN") or env.get("ALLOW_OPEN") == "1":
        return None
    return (
        f"refusing to listen on {', '.join(public)} without API_TOKEN: set API_TOKEN, "
        "or ALLOW_OPEN=1 to serve an open API on purpose, or bind 127.0.0.1"
    )


# loopback by default: nginx (deploy/nginx.conf) faces the network and holds slow clients
bind = bind_from_env(os.environ)
workers = int(
    os.environ.get("WEB_CONCURRENCY", "1" if os.environ.get("MONGO_URI", "").startswith("mongomock:") else "2")
)
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 60  # requests are short; reports run in background threads, not in requests
graceful_timeout = 30
keepalive = 5
preload_app = False  # build the app (and its MongoDB client) in each worker, after the fork
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
limit_request_line = 8190
limit_request_fields = 100


def worker_exit(server, worker):
    """A stopping worker fails the reports it still owns, so none waits for the stale-heartbeat check."""
    from reportGenerator import LIVE_GENERATORS

    for generator in list(LIVE_GENERATORS):
        generator.abandon(f"gunicorn worker {worker.pid} stopped before the report finished; trigger it again")


def on_starting(server):
    """Checked before any socket opens, on the addresses gunicorn will really use (also `-b`); then the
    metrics folder is made ready, before the first worker forks."""
    problem = open_bind_problem(server.cfg.bind, os.environ)
    if problem:
        raise SystemExit(f"gunicorn.conf.py: {problem}")
    folder, made = prepare_metrics_dir(os.environ)
    # kept on the arbiter, which outlives a reload (HUP reads this file again, and its module state with it)
    server.made_metrics_dir = folder if made else None
    server.log.info("worker metrics are kept in %s (PROMETHEUS_MULTIPROC_DIR)", folder)


def prepare_metrics_dir(env) -> tuple[str, bool]:
    """The folder where the workers keep their metrics, emptied (the last run's values must not count)
    and named in `env` (the master's os.environ, which the workers inherit), and whether it was made here.

    An operator's PROMETHEUS_MULTIPROC_DIR is created when missing and only its metric files (*.db) are
    removed; unset, a fresh temporary folder is made (and removed at exit).  A USR2 re-exec starts from the
    environment gunicorn started with, so the new master makes a folder of its own."""
    folder = env.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        folder = tempfile.mkdtemp(prefix="store-uptime-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = folder
        return folder, True
    Path(folder).mkdir(parents=True, exist_ok=True)
    for stale in Path(folder).glob("*.db"):
        stale.unlink(missing_ok=True)
    return folder, False


def child_exit(server, worker):
    """In the master, after a worker exited: its live gauges (reports queued and running) stop counting;
    its counters and histograms stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """The master is stopping: remove the metrics folder it made."""
    if getattr(server, "made_metrics_dir", None):
        shutil.rmtree(server.made_metrics_dir, ignore_errors=True)
