"""Slow clients (issue 12): deploy/nginx.conf in front of a real gunicorn keeps /health answering.

Starts gunicorn (gunicorn.conf.py, the embedded store, the tiny data set) and
Debian's nginx with deploy/nginx.conf (its ports and paths rewritten for the
test), all on loopback.  Twenty connections then send a request header one
byte a second, as a slowloris attack does; meanwhile /health is asked through
nginx and must answer every time.  Bounded: the slow clients stop after
SLOW_SECONDS, every request has a timeout, and both servers are stopped.
Needs /usr/sbin/nginx (`bash scripts/install_nginx.sh`; CI installs it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, stop_process, write_data_dir

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SLOW_CLIENTS = 20
SLOW_SECONDS = 12
START_TIMEOUT = 60

if not os.access(NGINX, os.X_OK):
    pytest.skip(
        f"the slow-client test needs nginx ({NGINX}): run `bash scripts/install_nginx.sh` "
        "(apt-get install nginx-light)",
        allow_module_level=True,
    )


def wait_until_healthy(session: requests.Session, url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if session.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"no answer from {url}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@contextlib.contextmanager
def started(command: list[str], env: dict, log: Path, cwd: Path = ROOT):
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        yield process
    finally:
        stop_process(process)


def nginx_conf(app_port: int, proxy_port: int) -> str:
    """deploy/nginx.conf with the test's loopback ports."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    text, listens = re.subn(r"\blisten\s+8080;", f"listen 127.0.0.1:{proxy_port};", text)
    text, upstreams = re.subn(r"\bserver\s+127\.0\.0\.1:8000;", f"server 127.0.0.1:{app_port};", text)
    assert listens == upstreams == 1, "deploy/nginx.conf no longer has the listen and upstream lines this test rewrites"
    return text


@pytest.fixture
def behind_nginx(tmp_path):
    """gunicorn behind nginx on loopback; yields nginx's base URL."""
    session = requests.Session()
    session.trust_env = False  # loopback only
    app_port, proxy_port = free_port(), free_port()
    env = {
        **os.environ,
        "MONGO_URI": "",
        "EMBEDDED_DB": str(tmp_path / "server.sqlite3"),
        "API_TOKEN": "",
        "HOST": "127.0.0.1",
        "PORT": str(app_port),
        "WEB_CONCURRENCY": "1",
        "DATA_DIR": str(write_data_dir(tmp_path / "data")),
        "REPORTS_DIR": str(tmp_path / "reports"),
    }
    prefix = tmp_path / "nginx"
    (prefix / "temp").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(nginx_conf(app_port, proxy_port))
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "app:create_app()"]
    nginx = [
        NGINX,
        "-p",
        f"{prefix}/",
        "-c",
        "nginx.conf",
        "-e",
        "stderr",
        "-g",
        f"daemon off; pid {prefix}/nginx.pid;",
    ]
    with started(gunicorn, env, tmp_path / "gunicorn.log") as app_process:
        wait_until_healthy(session, f"http://127.0.0.1:{app_port}/health", app_process, tmp_path / "gunicorn.log")
        with started(nginx, env, tmp_path / "nginx.log") as proxy_process:
            base = f"http://127.0.0.1:{proxy_port}"
            wait_until_healthy(session, base + "/health", proxy_process, tmp_path / "nginx.log")
            yield base, session


def slow_client(port: int, stop: threading.Event, sent: list) -> None:
    """Send a request header one byte a second until `stop` (never finishing it)."""
    header = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for byte in header:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # nginx closed it (client_header_timeout): the attack is over for this one
                return
            sent.append(1)
            if stop.wait(1.0):
                return


def test_slow_clients_do_not_stop_health_answering(behind_nginx):
    base, session = behind_nginx
    port = int(base.rsplit(":", 1)[1])
    stop, sent = threading.Event(), []
    attackers = [
        threading.Thread(target=slow_client, args=(port, stop, sent), name=f"slow-{n}", daemon=True)
        for n in range(SLOW_CLIENTS)
    ]
    for thread in attackers:
        thread.start()
    answers = []
    try:
        end = time.monotonic() + SLOW_SECONDS
        while time.monotonic() < end:
            try:
                answers.append(session.get(base + "/health", timeout=5).status_code)
            except requests.RequestException as error:
                answers.append(type(error).__name__)
            stop.wait(0.5)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(10)
    assert len(sent) >= SLOW_CLIENTS * 5, "the slow clients did not get going"
    assert answers and all(answer == 200 for answer in answers), answers
