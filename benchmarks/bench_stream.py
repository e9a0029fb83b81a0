"""Memory of streamed reports: a gunicorn worker's resident memory while many clients read a big report.

    python benchmarks/bench_stream.py                       # 100,000 stores, 32 readers of the JSON, then the CSV
    python benchmarks/bench_stream.py --stores 20000 --readers 8 --work /tmp/bench_stream   # keeps its files

It generates `--stores` stores (scripts/generate_data.py, `--polls-per-store` polls each, so the report has
one row per store), loads them into a fresh SQLite file (`python database.py load`), starts the service under
gunicorn with gunicorn.conf.py (one worker, the threads it sets: GUNICORN_THREADS, 8 by default), computes one
report, then, for the unpaged JSON and then the CSV, restarts gunicorn (so the worker that is measured has
never computed a report nor served a report), and starts `--readers` clients at once, each reading the whole
answer as it comes, while it samples the worker's resident memory (VmRSS every few ms, and VmHWM, the kernel's
peak, reset before each round through /proc/<pid>/clear_refs). `--root` runs another checkout (e.g. an older
version, to compare).

Printed per round: the baseline, the peak and the rise (peak - baseline), the memory left after the round,
the wall time, and whether every reader got the same bytes (the JSON is also parsed once and its rows
counted).  Goal (issue 23): the rise at most 100 MB for 32 readers of a 100,000-store report.  Nothing is
asserted; the figures go to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from bench_hostile import free_port, memory_kb  # this folder is first on sys.path

ROOT = Path(__file__).resolve().parent.parent
GOAL_MB = 100.0
SAMPLE_SECONDS = 0.005


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its VmRSS (Linux: "5" to clear_refs); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def prepare_data(root: Path, work: Path, stores: int, polls_per_store: int) -> Path:
    """The SQLite file with the generated stores loaded (made once per --work folder)."""
    database = work / "store.sqlite3"
    if database.exists():
        print(f"using {database} (delete the folder to generate again)")
        return database
    data = work / "data"
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(root / "scripts" / "generate_data.py"),
            "--stores",
            str(stores),
            "--polls-per-store",
            str(polls_per_store),
            "--out",
            str(data),
            "--force",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [sys.executable, str(root / "database.py"), "load", str(data)],
        check=True,
        env={**os.environ, "MONGO_URI": "", "EMBEDDED_DB": str(database)},
        stdout=subprocess.DEVNULL,
        cwd=root,
    )
    print(f"generated and loaded {stores} stores in {time.perf_counter() - started:.1f} s")
    return database


class Service:
    """gunicorn -c gunicorn.conf.py 'app:create_app()' on a free port: one worker, on `database`."""

    def __init__(self, root: Path, work: Path, database: Path, log_name: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "MONGO_URI": "",
            "EMBEDDED_DB": str(database),
            "DATA_DIR": str(work / "data"),
            "REPORTS_DIR": str(work / "reports"),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": "1",
            "API_TOKEN": "",
            "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
        }
        env.pop("BIND", None)
        self.log = open(work / log_name, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never through a proxy from the environment
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited ({self.process.returncode}); see {self.log.name}")
            try:
                if self.session.get(f"{self.base}/health", timeout=5).status_code in (200, 503):
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not answer within 120 s; see {self.log.name}")
            time.sleep(0.2)

    def worker_pid(self) -> int:
        children = (
            Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        )  # the master's children: its one worker
        if len(children) != 1:
            raise SystemExit(f"expected one gunicorn worker, found {children}")
        return int(children[0])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def compute_report(service: Service) -> str:
    started = time.perf_counter()
    report_id = service.session.post(f"{service.base}/trigger_report", timeout=30).json()["report_id"]
    while True:
        state = service.session.get(
            f"{service.base}/get_report", params={"report_id": report_id, "limit": 1}, timeout=30
        ).json()
        if state["status"] != "Running":
            break
        time.sleep(0.5)
    if state["status"] != "Complete":
        raise SystemExit(f"the report did not complete: {state}")
    print(f"report {report_id}: {state['row_count']} rows, computed in {time.perf_counter() - started:.1f} s")
    return report_id


def read_whole(session: requests.Session, url: str, params: dict, keep: bool) -> tuple[str, int, bytes | None]:
    """Read one answer as it comes: its sha256, its length, and the bytes when `keep`."""
    digest, size, kept = hashlib.sha256(), 0, []
    with session.get(url, params=params, stream=True, timeout=600) as response:
        response.raise_for_status()
        for piece in response.iter_content(64 * 1024):
            digest.update(piece)
            size += len(piece)
            if keep:
                kept.append(piece)
    return digest.hexdigest(), size, b"".join(kept) if keep else None


def round_of_readers(service: Service, pid: int, report_id: str, form: str, readers: int) -> dict:
    """`readers` clients at once, each reading the whole report in `form`; the worker's memory meanwhile."""
    params = {"report_id": report_id, "format": form}
    url = f"{service.base}/get_report"
    before = memory_kb(pid)["VmRSS"]  # a worker that has answered /health only: the rise includes everything
    peak_reset = reset_peak(pid)
    sampled = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                sampled.append(memory_kb(pid)["VmRSS"])
            except OSError:
                return
            time.sleep(SAMPLE_SECONDS)

    results: list = [None] * readers
    failures: list[str] = []

    def reader(index: int) -> None:
        session = requests.Session()
        session.trust_env = False
        try:
            results[index] = read_whole(session, url, params, keep=index == 0)
        except Exception as error:  # a benchmark reports every failure and goes on
            failures.append(f"reader {index}: {error}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=reader, args=(index,)) for index in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    after = memory_kb(pid)
    peak = max(max(sampled), after["VmHWM"] if peak_reset else 0)
    got = [result for result in results if result is not None]
    identical = len(got) == readers and len({(digest, size) for digest, size, _ in got}) == 1
    rows = None
    if got and got[0][2] is not None:
        body = got[0][2]
        rows = len(json.loads(body)["data"]) if form == "json" else body.count(b"\n") - 1
    return {
        "form": form,
        "baseline_mb": before / 1024,
        "peak_mb": peak / 1024,
        "rise_mb": (peak - before) / 1024,
        "after_mb": after["VmRSS"] / 1024,
        "wall_s": wall,
        "bytes": got[0][1] if got else 0,
        "identical": identical,
        "rows": rows,
        "failures": failures,
        "peak_source": "VmHWM and samples" if peak_reset else "samples only",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=100_000)
    parser.add_argument("--polls-per-store", type=int, default=6)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument(
        "--work", type=Path, help="folder for the data, database and logs (kept); default a temporary one"
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the checkout to run (another version, to compare); default this one"
    )
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_stream_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        root = args.root.resolve()
        database = prepare_data(root, work, args.stores, args.polls_per_store)
        computing = Service(root, work, database, "gunicorn-compute.log")
        try:
            report_id = compute_report(computing)
        finally:
            computing.stop()
        threads = os.environ.get("GUNICORN_THREADS", "8")
        print(f"gunicorn ({root}): 1 worker, {threads} threads; {args.readers} readers per round")
        outcomes = []
        for form in ("json", "csv"):  # each round on a fresh worker, which never computed a report
            service = Service(root, work, database, f"gunicorn-{form}.log")
            try:
                outcomes.append(round_of_readers(service, service.worker_pid(), report_id, form, args.readers))
            finally:
                service.stop()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    for outcome in outcomes:
        print(
            f"{outcome['form']:4} x{args.readers}: {outcome['bytes'] / 1e6:.1f} MB each, "
            f"{outcome['rows']} rows, identical: {'yes' if outcome['identical'] else 'NO'}; "
            f"worker RSS baseline {outcome['baseline_mb']:.1f} MB, peak {outcome['peak_mb']:.1f} MB "
            f"({outcome['peak_source']}), rise {outcome['rise_mb']:.1f} MB, after {outcome['after_mb']:.1f} MB; "
            f"{outcome['wall_s']:.1f} s"
        )
        for failure in outcome["failures"][:5]:
            print(f"  {failure}")
    worst = max(outcome["rise_mb"] for outcome in outcomes)
    met = worst <= GOAL_MB and all(outcome["identical"] for outcome in outcomes)
    verdict = "met" if met else "NOT met"
    print(f"largest rise {worst:.1f} MB: goal (at most {GOAL_MB:.0f} MB, every reader whole) {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
