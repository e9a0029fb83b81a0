"""The scripts a user runs by hand: scripts/get_report.sh against a live service (loopback,
in-process), and scripts/generate_data.py's refusal to overwrite a data folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from app import create_app
from tests.conftest import TINY_REPORT

ROOT = Path(__file__).resolve().parent.parent
GET_REPORT = ROOT / "scripts" / "get_report.sh"
GENERATE = ROOT / "scripts" / "generate_data.py"
TOKEN = "script-test-token"


@pytest.fixture
def service(tmp_path, data_dir):
    """The app with API_TOKEN set, served on a free loopback port by werkzeug in a thread; its base URL."""
    application = create_app(
        {"MONGO_URI": "", "DATA_DIR": str(data_dir), "REPORTS_DIR": str(tmp_path / "reports"), "API_TOKEN": TOKEN}
    )
    server = make_server("127.0.0.1", 0, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="script-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        application.extensions["reports"].shutdown(wait=True)


def run_script(*args: str, token: str | None) -> subprocess.CompletedProcess:
    if shutil.which("curl") is None:
        pytest.skip("scripts/get_report.sh needs curl")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("API_TOKEN",) and not key.lower().endswith("_proxy")
    }
    if token is not None:
        env["API_TOKEN"] = token
    return subprocess.run(["bash", str(GET_REPORT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_get_report_saves_the_csv(service, tmp_path):
    output = tmp_path / "report.csv"
    done = run_script(service, str(output), token=TOKEN)
    assert done.returncode == 0, done.stderr
    lines = output.read_text().splitlines()
    assert lines[0].split(",")[0] == "store_id" and len(lines) == 1 + len(TINY_REPORT)
    assert [line.split(",")[0] for line in lines[1:]] == [row["store_id"] for row in TINY_REPORT]
    assert "saved 3 stores" in done.stderr


@pytest.mark.parametrize(
    "token, as_of, message",
    [
        (
            "wrong",
            "",
            "error: HTTP 401 from {base}/trigger_report: missing or wrong API token: "
            "send 'Authorization: Bearer <token>'",
        ),
        (None, "", "HTTP 401"),
        (
            TOKEN,
            "yesterday",
            "error: HTTP 400 from {base}/trigger_report: as_of 'yesterday' is not an ISO 8601 instant",
        ),
    ],
)
def test_get_report_prints_the_servers_message(service, tmp_path, token, as_of, message):
    output = tmp_path / "report.csv"
    done = run_script(service, str(output), as_of, token=token)
    assert done.returncode == 1
    assert message.format(base=service) in done.stderr
    assert not output.exists()


def test_generate_data_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "menu_hours.csv").write_text("keep me\n")
    command = [sys.executable, str(GENERATE), "--stores", "3", "--out", str(out)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "already holds menu_hours.csv" in refused.stderr and "--force" in refused.stderr
    assert (out / "menu_hours.csv").read_text() == "keep me\n"
    assert not (out / "store_status.csv").exists()
    forced = subprocess.run(command + ["--force"], capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert (out / "menu_hours.csv").read_text().startswith("store_id,")
    # the default --out is the committed sample, which is there: refused, untouched
    before = (ROOT / "data" / "store_status.csv").stat().st_mtime_ns
    default = subprocess.run([sys.executable, str(GENERATE)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert default.returncode == 2 and "--force" in default.stderr
    assert (ROOT / "data" / "store_status.csv").stat().st_mtime_ns == before
