"""Reports on a real Dask cluster (cluster.py): a LocalCluster of 2 worker processes over TCP on 127.0.0.1.

Covers: the command line (--scheduler) and the service (DASK_SCHEDULER) give the
same bytes as the single-process runs, on the sample and on a generated
2,000-store set; a worker process killed while its range runs still ends the
report Complete with the same bytes; an unreachable scheduler ends it Failed
with the reason; /health reports the scheduler.  One cluster for the module.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import distributed
import psutil
import pytest

import cluster
import reportGenerator
import utils
from tests.conftest import SAMPLE_RANGE_STORES, sample_app, thread_path_csv, wait_for_report

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data"
RANGE_STORES = SAMPLE_RANGE_STORES  # the sample's 200 stores make 5 ranges over the 2 workers


@pytest.fixture(scope="module")
def dask_cluster():
    """A LocalCluster of 2 single-threaded worker processes on 127.0.0.1 over TCP."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as local:
        yield local


@pytest.fixture(scope="module")
def dask_client(dask_cluster):
    """A client of the module's cluster (for the test's own events and queues)."""
    with distributed.Client(dask_cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture(scope="module")
def generated_2000(tmp_path_factory) -> Path:
    """A generated 2,000-store data set in a scratch folder (never in data/)."""
    out = tmp_path_factory.mktemp("generated") / "stores_2000"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "generate_data.py"),
            "--stores",
            "2000",
            "--polls-per-store",
            "60",
            "--seed",
            "11",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


def _cli_bytes(data_dir: Path, output: Path, *extra: str) -> bytes:
    assert reportGenerator.main(["--data-dir", str(data_dir), "--output", str(output), *extra]) == 0
    return output.read_bytes()


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("data", ["sample", "generated_2000"])
def test_cli_on_the_cluster_writes_the_single_process_bytes(data, dask_cluster, tmp_path, request):
    data_dir = SAMPLE if data == "sample" else request.getfixturevalue("generated_2000")
    alone = _cli_bytes(data_dir, tmp_path / "alone.csv", "--processes", "1")
    on_cluster = _cli_bytes(
        data_dir,
        tmp_path / "cluster.csv",
        "--chunk-stores",
        "300" if data != "sample" else "40",
        "--scheduler",
        dask_cluster.scheduler_address,
    )
    expected_rows = 200 if data == "sample" else 2000
    assert alone.count(b"\n") == expected_rows + 1
    assert on_cluster == alone


def test_cli_with_an_unreachable_scheduler_says_so(tmp_path, capsys):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    code = reportGenerator.main(
        ["--data-dir", str(SAMPLE), "--output", str(tmp_path / "r.csv"), "--scheduler", address]
    )
    assert code == 2
    assert f"the Dask scheduler at {address} cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def embedded_db(tmp_path_factory) -> Path:
    """One SQLite file seeded from the sample, shared by the module's apps."""
    return tmp_path_factory.mktemp("cluster-db") / "store.sqlite3"


@pytest.fixture(scope="module")
def thread_report(embedded_db, tmp_path_factory) -> bytes:
    """The CSV of the sample's report from the thread path (no scheduler)."""
    return thread_path_csv(embedded_db, tmp_path_factory.mktemp("thread-reports"))


@pytest.fixture
def cluster_app(embedded_db, dask_cluster, tmp_path):
    """An app on the shared SQLite file whose reports run on the module's cluster."""
    app = sample_app(embedded_db, tmp_path / "reports", dask_cluster.scheduler_address)
    yield app
    app.extensions["reports"].shutdown(wait=True)


def test_service_on_the_cluster_stores_the_thread_path_bytes(cluster_app, thread_report, tmp_path):
    web = cluster_app.test_client()
    report_id = web.post("/trigger_report").get_json()["report_id"]
    assert wait_for_report(web, report_id)["status"] == "Complete"
    assert web.get(f"/get_report?report_id={report_id}&format=csv").data == thread_report
    assert (tmp_path / "reports" / f"report_{report_id}.csv").read_bytes() == thread_report
    record = cluster_app.extensions["store"].find_report(report_id)
    assert record["progress"] == {"done": 200, "total": 200, "phase": "computing"}
    assert record["row_count"] == 200


def test_health_reports_the_scheduler_and_its_workers(cluster_app, dask_client):
    dask_client.wait_for_workers(2, timeout=60)
    body = cluster_app.test_client().get("/health").get_json()
    assert {
        key: body[key]
        for key in ("status", "database", "database_ok", "scheduler", "scheduler_ok", "scheduler_workers")
    } == {
        "status": "ok",
        "database": "sqlite",
        "database_ok": True,
        "scheduler": cluster_app.config["DASK_SCHEDULER"],
        "scheduler_ok": True,
        "scheduler_workers": 2,
    }
    schema = json.loads((ROOT / "openapi.json").read_text())["components"]["schemas"]["Health"]
    assert set(body) <= set(schema["properties"]) and schema["additionalProperties"] is False


def blocking_range_ticks(started: str, release: str, spec, store_ids, since_us, now_us):
    """cluster.range_ticks, after saying which worker runs it and waiting for the test's release."""
    worker = distributed.get_worker()
    distributed.Queue(started, client=worker.client).put(worker.address)
    distributed.Event(release, client=worker.client).wait()
    return cluster.range_ticks(spec, store_ids, since_us, now_us)


def test_a_worker_killed_mid_report_still_gives_complete_and_the_same_bytes(
    cluster_app, dask_cluster, dask_client, thread_report, monkeypatch
):
    dask_client.wait_for_workers(2, timeout=60)
    started, release = f"started-{uuid.uuid4().hex}", f"release-{uuid.uuid4().hex}"
    # the task the job submits; the workers, in their own processes, still have the real range_ticks
    monkeypatch.setattr(cluster, "range_ticks", functools.partial(blocking_range_ticks, started, release))
    web = cluster_app.test_client()
    report_id = web.post("/trigger_report").get_json()["report_id"]

    queue = distributed.Queue(started, client=dask_client)
    victim = queue.get(timeout=60)  # a range is running on this worker, and every range waits for the release
    nanny = next(n for n in dask_cluster.workers.values() if n.worker_address == victim)
    process = psutil.Process(nanny.process.pid)
    assert web.get(f"/get_report?report_id={report_id}").get_json()["status"] == "Running"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    distributed.Event(release, client=dask_client).set()

    body = wait_for_report(web, report_id, timeout=120)
    assert body["status"] == "Complete", body
    assert web.get(f"/get_report?report_id={report_id}&format=csv").data == thread_report
    # every range started once, and the killed one a second time on another worker
    assert queue.qsize() == len(utils.store_ranges(200, RANGE_STORES, 2, utils.RANGES_PER_CLUSTER_WORKER))


def test_an_unreachable_scheduler_fails_the_report_with_the_reason(embedded_db, tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    app = sample_app(embedded_db, tmp_path / "reports", address)
    try:
        web = app.test_client()
        report_id = web.post("/trigger_report").get_json()["report_id"]
        body = wait_for_report(web, report_id, timeout=60)
        health = web.get("/health")
    finally:
        app.extensions["reports"].shutdown(wait=True)
    assert body["status"] == "Failed"
    assert f"the Dask scheduler at {address} cannot be reached" in body["error"]
    assert health.status_code == 503  # a scheduler that does not answer cannot run a report (SPEC §4)
    answer = health.get_json()
    assert {
        key: answer[key]
        for key in (
            "status",
            "database",
            "database_ok",
            "scheduler",
            "scheduler_ok",
            "scheduler_workers",
            "scheduler_code_ok",
            "problems",
        )
    } == {
        "status": 503,
        "database": "sqlite",
        "database_ok": False,
        "scheduler": address,
        "scheduler_ok": False,
        "scheduler_workers": 0,
        "scheduler_code_ok": False,
        "problems": [f"the Dask scheduler at {address} does not answer"],
    }
    assert not list((tmp_path / "reports").glob("*.csv"))


def _closed_port() -> int:
    """A loopback port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
