"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every worker builds its own app (and database connection) after the fork; all
report state lives in the database (the SQLite file by default, or MongoDB), so
any worker answers for any report.  Only `MONGO_URI=mongomock://` (a test
double private to each process) needs one worker (WEB_CONCURRENCY=1).
"""

import ipaddress
import os


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
    """Checked before any socket opens, on the addresses gunicorn will really use (also `-b`)."""
    problem = open_bind_problem(server.cfg.bind, os.environ)
    if problem:
        raise SystemExit(f"gunicorn.conf.py: {problem}")
