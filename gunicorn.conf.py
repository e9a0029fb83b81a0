"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every worker builds its own app (and database connection) after the fork; all
report state lives in the database (the SQLite file by default, or MongoDB), so
any worker answers for any report.  Only `MONGO_URI=mongomock://` (a test
double private to each process) needs one worker (WEB_CONCURRENCY=1).
"""
import os

# loopback by default: nginx (deploy/nginx.conf) faces the network and holds slow clients
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1" if os.environ.get("MONGO_URI", "").startswith("mongomock:") else "2"))
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
