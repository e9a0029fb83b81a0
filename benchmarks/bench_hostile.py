"""Hostile-upload figures: the server's memory growth and answer time for two hostile /ingest uploads.

    python benchmarks/bench_hostile.py [--mib 20] [--columns 90000] [--timeout 180]

For each case it starts a fresh `python app.py` on a free loopback port (embedded
store, the tiny data set), reads the server's VmHWM/VmRSS from /proc/<pid>/status,
sends the upload, and prints the answer's status, the wall time and how much the
server's peak resident memory (VmHWM) grew.  Cases:

- `bad-rows`: a store_status upload of `--mib` MiB of tiny bad rows (`a\\n` repeated);
- `wide-header`: a header of `--columns` column names (the three real ones first) and one row.

Bounded: every request has `--timeout` seconds; the server is stopped after each case.
Nothing is asserted; the figures go to stdout.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SESSION = requests.Session()
SESSION.trust_env = False  # loopback only: never through a proxy from the environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def start_server(work: Path) -> tuple[subprocess.Popen, str]:
    from tests.conftest import write_data_dir

    data = write_data_dir(work / "data")
    port = free_port()
    env = {
        **os.environ,
        "MONGO_URI": "",
        "EMBEDDED_DB": str(work / "server.sqlite3"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(data),
        "REPORTS_DIR": str(work / "reports"),
        "API_TOKEN": "",
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if SESSION.get(base + "/health", timeout=2).status_code == 200:
                return process, base
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not answer /health within 60 s")


def bad_rows(mib: int) -> bytes:
    header = b"store_id,status,timestamp_utc\n"
    return header + b"a\n" * ((mib * 1024 * 1024 - len(header)) // 2)


def wide_header(columns: int) -> bytes:
    names = ["store_id", "status", "timestamp_utc"] + [f"c{i}" for i in range(3, columns)]
    return (
        ",".join(names) + "\n" + ",".join(["s1", "active", "2023-01-24 10:00:00 UTC"] + [""] * (columns - 3)) + "\n"
    ).encode()


def run_case(name: str, payload: bytes, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as work:
        process, base = start_server(Path(work))
        try:
            before = memory_kb(process.pid)
            started = time.monotonic()
            try:
                response = SESSION.post(
                    base + "/ingest", files={"store_status": ("hostile.csv", payload)}, timeout=timeout
                )
                answer = f"{response.status_code} {response.text[:160]!r}"
            except requests.RequestException as error:
                answer = f"no answer ({type(error).__name__})"
            elapsed = time.monotonic() - started
            after = memory_kb(process.pid)
            print(
                f"{name}: upload {len(payload) / 2**20:.1f} MiB; answer {answer}; {elapsed:.1f} s; "
                f"VmHWM {before['VmHWM'] / 1024:.0f} -> {after['VmHWM'] / 1024:.0f} MB "
                f"(grew {(after['VmHWM'] - before['VmHWM']) / 1024:.0f} MB); "
                f"VmRSS after {after['VmRSS'] / 1024:.0f} MB",
                flush=True,
            )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--columns", type=int, default=90_000)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--cases", default="bad-rows,wide-header")
    args = parser.parse_args()
    cases = {"bad-rows": lambda: bad_rows(args.mib), "wide-header": lambda: wide_header(args.columns)}
    for name in args.cases.split(","):
        run_case(name, cases[name](), args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
