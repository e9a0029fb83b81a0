"""Whole data or none, for real: a real `python app.py` on the embedded store killed with SIGKILL at
several moments of an upload, and a real full disk (a small tmpfs) under the database.  After each,
the restarted service holds all of the upload or none of it, says so in GET /data, and works."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port, stop_process, write_data_dir

ROOT = Path(__file__).resolve().parent.parent
SEEDED_POLLS = 5  # the tiny data set's
BIG_ROWS = 300_000


def big_polls() -> bytes:
    """300,000 polls of 3,000 stores, every one new to the seeded data."""
    lines = [
        f"crash{i % 3000},{'active' if i % 4 else 'inactive'},2023-01-2{i % 5} {i % 24:02d}:{i % 60:02d}:"
        f"{(i // 60) % 60:02d}.{i:06d} UTC"
        for i in range(BIG_ROWS)
    ]
    return ("store_id,status,timestamp_utc\n" + "\n".join(lines) + "\n").encode()


class Server:
    """`python app.py` on a free loopback port over one SQLite file; start again after a kill."""

    def __init__(self, tmp_path: Path, database: Path, **environment: str):
        self.port = free_port()
        self.database = database
        self.log = tmp_path / f"server-{self.port}.log"
        self.env = {key: value for key, value in os.environ.items() if key not in ("MONGO_URI", "API_TOKEN")}
        self.env.update(
            PORT=str(self.port),
            HOST="127.0.0.1",
            EMBEDDED_DB=str(database),
            DATA_DIR=str(write_data_dir(tmp_path / "seed")),
            REPORTS_DIR=str(tmp_path / "reports"),
            **environment,
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "app.py"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.call("GET", "/health")[0] in (200, 503):
                    return self
            except OSError:
                pass
            assert self.process.poll() is None, f"the service exited at start-up:\n{self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def upload(self, name: str, payload: bytes, filename: str = "big.csv"):
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: text/csv\r\n\r\n"
            ).encode()
            + payload
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self.call("POST", "/ingest", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def restart_from_seed(self) -> None:
        """Kill the server, remove its database, and start it again: seeded with the tiny data only."""
        self.kill()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.database}{suffix}").unlink(missing_ok=True)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, grace=20)


def upload_in_background(server: Server, payload: bytes) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def send() -> None:
        try:
            outcome["answer"] = server.upload("store_status", payload)
        except OSError as error:  # the server died under it
            outcome["error"] = error

    thread = threading.Thread(target=send, name="upload", daemon=True)
    thread.start()
    return thread, outcome


def write_lease_held(database: Path) -> bool:
    """True once the server's upload holds the data write lease (it parsed the file and is writing)."""
    import sqlite3

    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        return connection.execute("SELECT 1 FROM leases WHERE mode = 'write'").fetchone() is not None
    finally:
        connection.close()


def assert_all_or_none(server: Server, expect_all: bool | None = None) -> int:
    status, data = server.call("GET", "/data")
    assert status == 200, data
    assert data["polls"] in (SEEDED_POLLS, SEEDED_POLLS + BIG_ROWS), f"partial data: {data['polls']} polls"
    whole = data["polls"] == SEEDED_POLLS + BIG_ROWS
    if expect_all is not None:
        assert whole == expect_all
    big = [upload for upload in data["uploads"] if upload["file"] == "big.csv"]
    assert [u["status"] == "Complete" for u in big].count(True) == (1 if whole else 0)
    assert all(u["written"] in (0, BIG_ROWS) for u in big)
    health = server.call("GET", "/health")
    assert health[0] == 200, health
    return data["polls"]


@pytest.fixture
def payload() -> bytes:
    return big_polls()


def test_an_upload_answered_200_survives_a_kill_9_at_once(tmp_path, payload):
    server = Server(tmp_path, tmp_path / "db" / "store.sqlite3").start()
    try:
        status, body = server.upload("store_status", payload)
        assert status == 200 and body["files"][0]["loaded"] == BIG_ROWS
        server.kill()
        server.start()
        assert_all_or_none(server, expect_all=True)
    finally:
        server.stop()


def test_a_kill_9_at_any_moment_of_an_upload_leaves_all_of_it_or_none(tmp_path, payload):
    """Killed while the upload is received and parsed, as soon as it holds the write lease, and at
    fractions of a measured whole write after that; each restart finds all or none, then a report runs."""
    server = Server(tmp_path, tmp_path / "db" / "store.sqlite3").start()
    outcomes = []
    try:
        # how long one whole upload holds the write lease, measured here, on this machine
        thread, outcome = upload_in_background(server, payload)
        while not write_lease_held(server.database) and thread.is_alive():
            time.sleep(0.002)
        held_from = time.monotonic()
        thread.join()
        writing = time.monotonic() - held_from
        assert outcome["answer"][0] == 200
        server.restart_from_seed()
        for moment in ("receiving", 0.0, 0.3, 0.6, 0.9):
            before = assert_all_or_none(server)
            thread, outcome = upload_in_background(server, payload)
            if moment != "receiving":
                while not write_lease_held(server.database) and thread.is_alive():
                    time.sleep(0.002)
                time.sleep(moment * writing)
            server.kill()
            thread.join()
            server.start()
            after = assert_all_or_none(server)
            outcomes.append((moment, "all" if after > before else "none"))
            if after > before:  # put the seeded state back for the next moment
                server.restart_from_seed()
        status, body = server.call("POST", "/trigger_report", b"")
        assert status == 202
    finally:
        server.stop()
    print("kill -9 moments and what the restart found:", outcomes)
    assert outcomes[0] == ("receiving", "none")


@pytest.fixture
def small_disk(tmp_path):
    """A real 96 MB tmpfs mounted for the test (needs root and mount; skipped with the reason otherwise)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}): the full-disk test needs root"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_answers_507_keeps_nothing_and_the_service_goes_on(tmp_path, small_disk, payload):
    server = Server(tmp_path, small_disk / "store.sqlite3", MIN_FREE_MB="0").start()
    try:
        filler = small_disk / "filler"
        with open(filler, "wb") as out:  # leave about 6 MB: the tiny data fits, 300,000 polls do not
            free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
            out.write(b"\0" * max(0, free - 6 * 1_048_576))
        status, body = server.upload("store_status", payload + payload.replace(b"crash", b"more")[30:])
        assert status == 507, body
        assert "is full" in body["error"] and "nothing of this upload was kept" in body["error"]
        status, data = server.call("GET", "/data")
        assert status == 200 and data["polls"] == SEEDED_POLLS
        assert data["uploads"][0]["status"] == "Failed" or data["uploads"][0]["file"] != "big.csv"
        status, body = server.call("POST", "/trigger_report", b"")
        assert status == 202
        filler.unlink()
        status, body = server.upload("store_status", payload)
        assert status == 200
        assert server.call("GET", "/data")[1]["polls"] == SEEDED_POLLS + BIG_ROWS
    finally:
        server.stop()


def test_health_is_503_when_the_disk_under_the_database_is_nearly_full(tmp_path, small_disk):
    server = Server(tmp_path, small_disk / "store.sqlite3", MIN_FREE_MB="20").start()
    try:
        assert server.call("GET", "/health")[0] == 200
        with open(small_disk / "filler", "wb") as out:  # leave 10 MB, under the 20 MB asked for
            stats = os.statvfs(small_disk)
            out.write(b"\0" * (stats.f_bavail * stats.f_frsize - 10 * 1_048_576))
        status, body = server.call("GET", "/health")
        assert status == 503 and "under MIN_FREE_MB (20 MB)" in body["error"]
    finally:
        server.stop()
