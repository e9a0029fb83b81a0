"""The whole stack on one machine, started as docs/deployment.md says (`bash scripts/stack.sh`: honcho runs
the Procfile: a Dask scheduler, two Dask workers, gunicorn with two workers, nginx in front where it is
installed); a report through it gives the command line's bytes, and Ctrl-C stops every process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def call(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def stack(tmp_path):
    """`bash scripts/stack.sh` on free loopback ports over a fresh SQLite file seeded from data/."""
    if shutil.which("honcho", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("honcho is not installed in this environment: pip install -r requirements-dev.txt")
    ports = {"SCHEDULER_PORT": free_port(), "WEB_PORT": free_port(), "PROXY_PORT": free_port()}
    env = {key: value for key, value in os.environ.items() if key not in ("MONGO_URI", "API_TOKEN", "DASK_SCHEDULER")}
    env.update({key: str(value) for key, value in ports.items()})
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        EMBEDDED_DB=str(tmp_path / "stack.sqlite3"),
        REPORTS_DIR=str(tmp_path / "reports"),
        STACK_DIR=str(tmp_path / "nginx"),
        NGINX=NGINX,
        PYTHONUNBUFFERED="1",
    )
    log = open(tmp_path / "stack.log", "wb")
    process = subprocess.Popen(
        ["bash", "scripts/stack.sh"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    front = ports["PROXY_PORT"] if os.access(NGINX, os.X_OK) else ports["WEB_PORT"]
    try:
        deadline = time.monotonic() + 120
        while True:  # healthy means the database answers and both Dask workers can run this code
            try:
                status, body = call(f"http://127.0.0.1:{front}/health")
                if status == 200 and json.loads(body).get("scheduler_workers") == 2:
                    break
            except OSError:
                pass
            assert process.poll() is None, f"the stack stopped:\n{(tmp_path / 'stack.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no healthy stack:\n{(tmp_path / 'stack.log').read_text()[-3000:]}"
            time.sleep(0.2)
        yield {"process": process, "base": f"http://127.0.0.1:{front}", "ports": ports, "log": tmp_path / "stack.log"}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_a_report_through_the_stack_gives_the_command_lines_bytes_and_ctrl_c_stops_it(stack, tmp_path):
    base = stack["base"]
    status, body = call(f"{base}/trigger_report", b"")
    assert status == 202, body
    report_id = json.loads(body)["report_id"]
    deadline = time.monotonic() + 120
    while (state := json.loads(call(f"{base}/get_report?report_id={report_id}")[1]))["status"] == "Running":
        assert time.monotonic() < deadline, "the report did not finish"
        time.sleep(0.2)
    assert state["status"] == "Complete", state
    status, served = call(f"{base}/get_report?report_id={report_id}&format=csv")
    assert status == 200
    output = tmp_path / "cli.csv"
    subprocess.run(
        [sys.executable, "reportGenerator.py", "--data-dir", "data", "--output", str(output)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert served == output.read_bytes()
    assert "Complete" in call(f"{base}/metrics")[1].decode()  # the report counted by the gunicorn workers

    stack["process"].send_signal(signal.SIGINT)  # Ctrl-C
    assert stack["process"].wait(60) in (0, 130, -signal.SIGINT)
    log = stack["log"].read_text()
    names = ["scheduler", "worker1", "worker2", "web"] + (["nginx"] if "nginx.1 started" in log else [])
    assert [name for name in names if f"{name}.1 started" not in log or f"{name}.1 stopped" not in log] == [], log[
        -2000:
    ]
    assert not any(port_open(port) for port in stack["ports"].values()), "a process still listens after Ctrl-C"
