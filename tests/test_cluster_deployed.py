"""The cluster as deployed: a real `dask scheduler` and real `dask worker` processes, started as docs/cluster.md says.

tests/test_cluster.py runs an in-process LocalCluster, whose scheduler shares this process's
sys.path and so can import the project; it could not see a scheduler that has none of the
project's code.  Here the scheduler runs from the project's virtualenv with no PYTHONPATH and its
working directory outside the checkout (the docs: it needs nothing of the project's), each worker
with the checkout on PYTHONPATH and its working directory elsewhere, all on 127.0.0.1 at free ports.

Covers: the command line and the service on that cluster give the bytes of their single-process
runs; a worker process killed with SIGKILL while a report runs (after its first range is done)
still ends the report Complete with the same bytes; a worker started without the project on its
path is named by `cluster.code_check` and a report fails at once with that message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import distributed
import psutil
import pytest

import cluster
from tests.conftest import sample_app, thread_path_csv, wait_for_report

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data"
DASK = Path(sys.executable).parent / "dask"  # the project's virtualenv, as on every host
DOCS = (ROOT / "docs" / "cluster.md").read_text()

# the commands of docs/cluster.md, "Starting each part"; the tests run them with these substitutions
DOC_SCHEDULER = "dask scheduler --host 10.0.0.5 --port 8786 --no-dashboard"
DOC_WORKER = (
    "PYTHONPATH=/srv/store-uptime /srv/store-uptime/.venv/bin/dask worker tcp://10.0.0.5:8786 \\\n"
    '    --nworkers 4 --nthreads 1 --memory-limit 4GiB --name "$(hostname)" --no-dashboard'
)
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _until(condition, timeout: float, what: str) -> None:
    """Poll `condition` until it holds, or fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def _environment(pythonpath: str | None) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH" and not key.startswith("DASK_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


class Processes:
    """The processes a fixture starts, each in its own process group, all stopped by `stop`."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], cwd: Path, pythonpath: str | None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=_environment(pythonpath),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.log = log
        self.started.append(process)
        return process

    def log_of(self, process: subprocess.Popen) -> str:
        process.log.flush()
        return Path(process.log.name).read_text(errors="replace")[-3000:]

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM the process group, then SIGKILL what is left of it (a nanny's worker process)."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)
        process.log.close()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


def start_worker(processes: Processes, address: str, name: str, cwd: Path, pythonpath: str | None):
    """One `dask worker` as docs/cluster.md starts it (one worker process here, this host's name given)."""
    argv = [str(DASK), "worker", address, "--nworkers", "1", "--nthreads", "1", "--memory-limit", "4GiB"]
    return processes.start(name, [*argv, "--name", name, "--no-dashboard"], cwd, pythonpath)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A scheduler with none of the project's code and two workers with the checkout on PYTHONPATH."""
    elsewhere = tmp_path_factory.mktemp("hosts")  # every working directory: outside the checkout
    processes = Processes(elsewhere)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    try:
        scheduler = processes.start(
            "scheduler",
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            elsewhere,
            None,
        )
        try:
            client = distributed.Client(address, timeout=START_TIMEOUT, set_as_default=False)
        except OSError as error:
            if scheduler.poll() is not None:
                pytest.skip(f"dask scheduler cannot start here ({error}): {processes.log_of(scheduler)}")
            raise
        workers = [start_worker(processes, address, f"host-{n}", elsewhere, str(ROOT)) for n in "ab"]
        client.wait_for_workers(2, timeout=START_TIMEOUT)
        yield {"address": address, "client": client, "processes": processes, "workers": workers, "cwd": elsewhere}
        client.close()
    finally:
        processes.stop_all()


def test_the_docs_start_the_processes_the_tests_start():
    assert DOC_SCHEDULER in DOCS
    assert DOC_WORKER in DOCS


def test_the_scheduler_has_none_of_the_project_and_the_check_passes(deployed):
    def finds_the_project() -> bool:  # nested, so it is sent by value
        import importlib.util

        return importlib.util.find_spec("cluster") is not None

    assert deployed["client"].run_on_scheduler(finds_the_project) is False
    assert set(deployed["client"].run(finds_the_project).values()) == {True}
    assert cluster.code_check(deployed["address"], max_age=0) == {"ok": True, "problems": []}


# --------------------------------------------------------------------------- command line


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "reportGenerator.py", *args], cwd=cwd, env=_environment(None), capture_output=True, timeout=300
    )


def test_the_command_line_on_the_deployed_cluster_writes_the_single_process_bytes(deployed, tmp_path):
    alone = _cli(ROOT, "--data-dir", "data", "--output", str(tmp_path / "alone.csv"))
    assert alone.returncode == 0, alone.stderr
    on_cluster = _cli(
        ROOT, "--data-dir", "data", "--output", str(tmp_path / "cluster.csv"), "--scheduler", deployed["address"]
    )
    assert on_cluster.returncode == 0, on_cluster.stderr
    expected = (tmp_path / "alone.csv").read_bytes()
    assert expected.count(b"\n") == 201
    assert (tmp_path / "cluster.csv").read_bytes() == expected


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def embedded_db(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deployed-db") / "store.sqlite3"


@pytest.fixture(scope="module")
def thread_report(embedded_db, tmp_path_factory) -> bytes:
    """The sample's report from the thread path (no scheduler), on the module's SQLite file."""
    return thread_path_csv(embedded_db, tmp_path_factory.mktemp("thread-reports"))


@pytest.fixture
def service(deployed, embedded_db, tmp_path, request):
    """An app on the module's SQLite file whose reports run on the deployed cluster (CHUNK_STORES by param)."""
    app = sample_app(embedded_db, tmp_path / "reports", deployed["address"], getattr(request, "param", 40))
    yield app
    app.extensions["reports"].shutdown(wait=True)


def test_the_service_on_the_deployed_cluster_stores_the_thread_path_bytes(service, thread_report):
    web = service.test_client()
    report_id = web.post("/trigger_report").get_json()["report_id"]
    body = wait_for_report(web, report_id, timeout=120)
    assert body["status"] == "Complete", body
    assert web.get(f"/get_report?report_id={report_id}&format=csv").data == thread_report


def _gate(started: str, release: str):
    """What the victim worker runs (`client.run`): its range_ticks says it started, then waits for `release`.

    Nested, so it is sent by value; the tasks name `cluster.range_ticks` and find this one in that process.
    """

    def install() -> None:
        import distributed

        import cluster

        real = cluster.range_ticks

        def gated(*args):
            worker = distributed.get_worker()
            distributed.Queue(started, client=worker.client).put(worker.address)
            distributed.Event(release, client=worker.client).wait()
            return real(*args)

        cluster.range_ticks = gated

    return install


@pytest.mark.parametrize("service", [10], indirect=True)  # 20 ranges of 10 stores
def test_a_worker_killed_mid_report_still_gives_complete_and_the_same_bytes(deployed, service, thread_report):
    client = deployed["client"]
    client.wait_for_workers(2, timeout=START_TIMEOUT)
    victim = sorted(client.scheduler_info(n_workers=-1)["workers"])[0]
    started, release = f"started-{uuid.uuid4().hex}", f"release-{uuid.uuid4().hex}"
    client.run(_gate(started, release), workers=[victim])
    pid = client.run(os.getpid, workers=[victim])[victim]
    store = service.extensions["store"]

    web = service.test_client()
    report_id = web.post("/trigger_report").get_json()["report_id"]
    assert distributed.Queue(started, client=client).get(timeout=60) == victim  # the victim's range runs, held
    _until(  # the survivor has finished a range meanwhile
        lambda: (store.find_report(report_id).get("progress") or {}).get("done", 0) > 0,
        60,
        "no range finished on the survivor",
    )
    record = store.find_report(report_id)
    assert record["status"] == "Running" and record["progress"]["done"] < record["progress"]["total"]
    assert client.processing(workers=[victim])[victim], "the victim holds no range"

    victim_process = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    victim_process.wait(timeout=30)
    distributed.Event(release, client=client).set()

    body = wait_for_report(web, report_id, timeout=120)
    assert body["status"] == "Complete", body
    assert web.get(f"/get_report?report_id={report_id}&format=csv").data == thread_report
    assert store.find_report(report_id)["progress"] == {"done": 200, "total": 200, "phase": "computing"}
    client.wait_for_workers(2, timeout=START_TIMEOUT)  # the nanny has started a fresh worker process


# --------------------------------------------------------------------------- a worker without the project


@pytest.fixture
def worker_without_the_project(deployed):
    """A third worker started from outside the checkout with no PYTHONPATH; stopped, and gone, after."""
    client = deployed["client"]
    process = start_worker(deployed["processes"], deployed["address"], "host-bare", deployed["cwd"], None)
    client.wait_for_workers(3, timeout=START_TIMEOUT)
    yield next(
        address
        for address, info in client.scheduler_info(n_workers=-1)["workers"].items()
        if info["name"] == "host-bare"
    )
    deployed["processes"].stop(process)
    _until(
        lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 2,
        START_TIMEOUT,
        "the scheduler still lists the stopped worker",
    )


def test_a_worker_without_the_project_is_named_and_a_report_fails_at_once(
    deployed, worker_without_the_project, service, tmp_path
):
    named = f"worker {worker_without_the_project} (host-bare) cannot import the project's modules"
    check = cluster.code_check(deployed["address"], max_age=0)
    assert check["ok"] is False
    assert check["problems"] == [f"{named} (ModuleNotFoundError: No module named 'cluster')"]

    web = service.test_client()
    health = web.get("/health")
    assert health.status_code == 503 and health.get_json()["scheduler_code_ok"] is False
    assert f"{named} (ModuleNotFoundError: No module named 'cluster')" in health.get_json()["problems"]
    report_id = web.post("/trigger_report").get_json()["report_id"]
    body = wait_for_report(web, report_id, timeout=60)
    assert body["status"] == "Failed"
    assert body["error"] == (
        f"the Dask cluster at {deployed['address']} cannot run this version of the report: "
        f"{named} (ModuleNotFoundError: No module named 'cluster')"
    )
    assert "internal error" not in body["error"]
    assert service.extensions["store"].find_report(report_id)["progress"]["done"] == 0  # failed at connect
    assert not list((tmp_path / "reports").glob("*.csv"))

    cli = _cli(ROOT, "--data-dir", "data", "--output", str(tmp_path / "r.csv"), "--scheduler", deployed["address"])
    assert cli.returncode == 2
    assert named in cli.stderr.decode()
    assert not (tmp_path / "r.csv").exists()
