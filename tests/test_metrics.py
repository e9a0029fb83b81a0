"""GET /metrics (metrics.py): exact counts of reports, uploads, requests, database errors and lease waits
in one process (the Flask test client, each store), the token and query rules, gunicorn.conf.py's
metrics folder, and a real two-worker gunicorn whose scrape, from either worker, sums both.

In one process the metrics live in prometheus_client's default registry, shared by every app the tests
build, so the in-process tests compare a scrape before with one after."""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

import database
import sources
from app import create_app
from tests.conftest import TINY_STATUS, free_port, start_gunicorn, store_config, wait_for_report, write_data_dir

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# the tiny polls and one row with an unknown status: 5 loaded, 1 rejected
STATUS_WITH_A_BAD_ROW = TINY_STATUS + "late,sleepy,2023-01-24 12:00:00 UTC\n"


def parse(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label pairs): value} of a scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple, float], name: str, **labels: str) -> float:
    """One sample's value; 0 when the series is absent (nothing counted yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client, **headers) -> dict[tuple, float]:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.headers["Content-Type"] == PROMETHEUS_TEXT
    return parse(answer.get_data(as_text=True))


def changes(before: dict, after: dict, *series: tuple) -> dict:
    """{(name, labels): after - before} for the given (name, {labels}) series."""
    return {
        (name, tuple(sorted(labels.items()))): value(after, name, **labels) - value(before, name, **labels)
        for name, labels in series
    }


def upload(client, content: str):
    return client.post(
        "/ingest",
        data={"store_status": (io.BytesIO(content.encode()), "store_status.csv")},
        content_type="multipart/form-data",
    )


# --------------------------------------------------------------------------- one process


def test_a_report_and_an_upload_are_counted_exactly(app, client):
    before = scrape(client)
    answer = upload(client, STATUS_WITH_A_BAD_ROW)
    assert answer.status_code == 200, answer.get_json()
    summary = answer.get_json()["files"][0]
    assert (summary["loaded"], summary["rejected"]) == (5, 1)
    report_id = client.post("/trigger_report").get_json()["report_id"]
    assert wait_for_report(client, report_id)["status"] == "Complete"
    app.extensions["reports"].shutdown(wait=True)  # the job's last metric calls come after the Complete record
    after = scrape(client)

    file = sources.STATUS_FILE
    assert list(
        changes(
            before,
            after,
            ("store_uptime_upload_rows_loaded_total", {"file": file}),
            ("store_uptime_upload_rows_rejected_total", {"file": file}),
            ("store_uptime_upload_rows_loaded_total", {"file": sources.HOURS_FILE}),
            ("store_uptime_reports_started_total", {"trigger": "api"}),
            ("store_uptime_reports_finished_total", {"status": "Complete"}),
            ("store_uptime_reports_finished_total", {"status": "Failed"}),
            ("store_uptime_report_duration_seconds_count", {"status": "Complete"}),
            ("store_uptime_http_requests_total", {"route": "ingest", "status": "200"}),
            ("store_uptime_http_requests_total", {"route": "trigger_report", "status": "202"}),
            ("store_uptime_http_requests_total", {"route": "metrics", "status": "200"}),
            ("store_uptime_http_request_duration_seconds_count", {"route": "ingest"}),
            ("store_uptime_http_request_duration_seconds_count", {"route": "trigger_report"}),
            ("store_uptime_reports_queued", {}),
            ("store_uptime_reports_running", {}),
        ).values()
    ) == [5, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert value(after, "store_uptime_report_duration_seconds_sum", status="Complete") > value(
        before, "store_uptime_report_duration_seconds_sum", status="Complete"
    )


def test_queued_and_running_reports_are_gauges(tmp_path, data_dir, store_kind, monkeypatch):
    """One report thread: the first report held inside its read is running, the second queued."""
    app = create_app(
        {
            **store_config(store_kind, tmp_path),
            "DATA_DIR": str(data_dir),
            "REPORTS_DIR": str(tmp_path / "reports"),
            "REPORT_WORKERS": 1,
        }
    )
    store, client = app.extensions["store"], app.test_client()
    entered, release = threading.Event(), threading.Event()
    real_read_chunk = store.read_chunk

    def held_read_chunk(*args, **kwargs):
        entered.set()
        assert release.wait(60), "the test never released the report"
        return real_read_chunk(*args, **kwargs)

    monkeypatch.setattr(store, "read_chunk", held_read_chunk)
    try:
        before = scrape(client)
        first = client.post("/trigger_report").get_json()["report_id"]
        assert entered.wait(30), "the first report never started reading"
        second = client.post("/trigger_report").get_json()["report_id"]
        during = scrape(client)
        gauges = [("store_uptime_reports_running", {}), ("store_uptime_reports_queued", {})]
        assert list(changes(before, during, *gauges).values()) == [1, 1]
        assert changes(before, during, ("store_uptime_reports_started_total", {"trigger": "api"})) == {
            ("store_uptime_reports_started_total", (("trigger", "api"),)): 2
        }
        release.set()
        for report_id in (first, second):
            assert wait_for_report(client, report_id)["status"] == "Complete"
        app.extensions["reports"].shutdown(wait=True)
        after = scrape(client)
        assert list(changes(before, after, *gauges).values()) == [0, 0]
        finished = ("store_uptime_reports_finished_total", {"status": "Complete"})
        assert list(changes(before, after, finished).values()) == [2]
    finally:
        release.set()
        app.extensions["reports"].shutdown(wait=True)


def test_a_failed_report_is_counted_failed(app, client, store, monkeypatch):
    def broken_read_chunk(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "read_chunk", broken_read_chunk)
    before = scrape(client)
    report_id = client.post("/trigger_report").get_json()["report_id"]
    assert wait_for_report(client, report_id)["status"] == "Failed"
    app.extensions["reports"].shutdown(wait=True)
    after = scrape(client)
    assert list(
        changes(
            before,
            after,
            ("store_uptime_reports_finished_total", {"status": "Failed"}),
            ("store_uptime_reports_finished_total", {"status": "Complete"}),
            ("store_uptime_report_duration_seconds_count", {"status": "Failed"}),
            ("store_uptime_reports_running", {}),
        ).values()
    ) == [1, 0, 1, 0]


def transient_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = sqlite3.SQLITE_BUSY
    return error


@pytest.mark.parametrize(
    "error, status, kind",
    [
        (transient_error(), 503, "transient"),
        (sqlite3.DatabaseError("database disk image is malformed"), 500, "permanent"),
        (database.DiskFull("the database", 0), 507, "disk_full"),
    ],
)
def test_database_errors_are_counted_by_kind(client, store, monkeypatch, error, status, kind):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(store, "fail_stale_reports", failing)
    before = scrape(client)
    assert client.get("/reports").status_code == status
    after = scrape(client)
    kinds = ("transient", "permanent", "disk_full")
    counted = changes(before, after, *[("store_uptime_database_errors_total", {"kind": k}) for k in kinds])
    assert list(counted.values()) == [int(k == kind) for k in kinds]
    answered = ("store_uptime_http_requests_total", {"route": "reports", "status": str(status)})
    assert list(changes(before, after, answered).values()) == [1]


def test_data_lease_waits_are_counted_with_their_seconds(client, store, monkeypatch):
    """A load that gives up on a busy lease, and one that waits for it and gets it: two waits."""
    refused = threading.Event()
    real_try = store._try_lease

    def watched_try(mode, holder):
        taken = real_try(mode, holder)
        if not taken:
            refused.set()
        return taken

    before = scrape(client)
    loaded: list[dict] = []
    with store.data_lease("write"):
        with pytest.raises(database.LeaseTimeout):
            database.load_file(store, sources.STATUS_FILE, TINY_STATUS.encode(), lease_wait_seconds=0.05)
        monkeypatch.setattr(store, "_try_lease", watched_try)
        waiting = threading.Thread(
            target=lambda: loaded.append(database.load_file(store, sources.STATUS_FILE, TINY_STATUS.encode()))
        )
        waiting.start()
        assert refused.wait(30), "the second load never found the lease busy"
    waiting.join(60)
    assert loaded and loaded[0]["loaded"] == 5
    after = scrape(client)
    assert list(
        changes(
            before,
            after,
            ("store_uptime_data_lease_waits_total", {"mode": "write"}),
            ("store_uptime_data_lease_wait_seconds_count", {"mode": "write"}),
            ("store_uptime_data_lease_waits_total", {"mode": "read"}),
        ).values()
    ) == [2, 2, 0]
    waited = value(after, "store_uptime_data_lease_wait_seconds_sum", mode="write") - value(
        before, "store_uptime_data_lease_wait_seconds_sum", mode="write"
    )
    assert waited >= 0.05  # at least the give-up's wait


def test_routes_are_view_names_never_paths(client):
    before = scrape(client)
    for store_id in ("one", "two", "three"):
        assert client.get(f"/stores/{store_id}/timeline?report_id={'a' * 32}").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    assert client.post("/health").status_code == 405
    after = scrape(client)
    assert list(
        changes(
            before,
            after,
            ("store_uptime_http_requests_total", {"route": "store_timeline", "status": "404"}),
            ("store_uptime_http_requests_total", {"route": "unmatched", "status": "404"}),
            ("store_uptime_http_requests_total", {"route": "unmatched", "status": "405"}),
        ).values()
    ) == [3, 1, 1]
    routes = {dict(labels).get("route") for name, labels in after if name == "store_uptime_http_requests_total"}
    assert not routes & {"one", "two", "three", "/no/such/path"}


def test_metrics_needs_the_token_when_set_and_takes_no_query(locked_client):
    refused = locked_client.get("/metrics")
    assert refused.status_code == 401 and refused.get_json()["status"] == 401
    assert scrape(locked_client, Authorization="Bearer s3cret")
    unknown = locked_client.get("/metrics?name=x", headers={"Authorization": "Bearer s3cret"})
    assert unknown.status_code == 400
    assert unknown.get_json()["error"].startswith("unknown query parameter(s) name on /metrics")


# --------------------------------------------------------------------------- gunicorn.conf.py


def gunicorn_conf():
    spec = importlib.util.spec_from_file_location("gunicorn_conf_for_metrics", ROOT / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gunicorn_makes_a_fresh_metrics_folder_when_unset_and_removes_it_at_exit():
    conf = gunicorn_conf()
    env: dict[str, str] = {}
    folder, made = conf.prepare_metrics_dir(env)
    assert made and env["PROMETHEUS_MULTIPROC_DIR"] == folder
    assert Path(folder).is_dir() and not any(Path(folder).iterdir())
    conf.on_exit(SimpleNamespace(made_metrics_dir=folder))
    assert not Path(folder).exists()


def test_gunicorn_empties_an_operators_metrics_folder_of_metric_files_only(tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_12345.db").write_bytes(b"last run")
    (folder / "README").write_text("not a metric file")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    assert gunicorn_conf().prepare_metrics_dir(env) == (str(folder), False)
    assert sorted(path.name for path in folder.iterdir()) == ["README"]
    gunicorn_conf().on_exit(SimpleNamespace(made_metrics_dir=None))
    assert folder.is_dir()  # an operator's folder stays
    missing = tmp_path / "new" / "prometheus"
    gunicorn_conf().prepare_metrics_dir({"PROMETHEUS_MULTIPROC_DIR": str(missing)})
    assert missing.is_dir()


# --------------------------------------------------------------------------- real gunicorn, two workers


def http(url: str, method: str = "GET", timeout: float = 10) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def pids_that_answered(access_log: Path, path: str) -> set[str]:
    """The worker pids of the access log's 200 answers to `path` (each line: pid status path)."""
    if not access_log.exists():
        return set()
    return {line.split()[0] for line in access_log.read_text().splitlines() if line.split()[1:] == ["200", path]}


def test_two_gunicorn_workers_scrape_the_same_sums(tmp_path):
    """Requests land on both workers; every scrape, whichever worker answers it, counts all of them."""
    port = free_port()
    env = dict(
        os.environ,
        PORT=str(port),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="2",
        MONGO_URI="",
        API_TOKEN="",
        DATA_DIR=str(write_data_dir(tmp_path / "data")),
        REPORTS_DIR=str(tmp_path / "reports"),
        EMBEDDED_DB=str(tmp_path / "db" / "shared.sqlite3"),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes a fresh folder
    access_log, server_log = tmp_path / "access.log", tmp_path / "server.log"
    with open(server_log, "wb") as log_file:
        server = start_gunicorn(env, access_log, log_file)
    base = f"http://127.0.0.1:{port}"
    try:
        health = 0  # /health answers 200, each counted once by whichever worker answered
        deadline = time.monotonic() + 60
        while True:
            try:
                if http(base + "/health", timeout=2)[0] == 200:
                    health += 1
                    break
            except OSError:
                pass  # not listening yet
            assert server.poll() is None, server_log.read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        while len(pids_that_answered(access_log, "/health")) < 2 or health < 20:
            assert http(base + "/health")[0] == 200
            health += 1
            assert health < 2_000, "one worker answered every request"
        status, body = http(base + "/trigger_report", method="POST")
        assert status == 202, body

        scrapes = 0
        while True:
            status, text = http(base + "/metrics")
            assert status == 200, text
            samples = parse(text)
            # exact, whichever worker answered: every /health, every earlier scrape
            assert value(samples, "store_uptime_http_requests_total", route="health", status="200") == health
            assert value(samples, "store_uptime_http_requests_total", route="metrics", status="200") == scrapes
            assert value(samples, "store_uptime_http_request_duration_seconds_count", route="health") == health
            assert value(samples, "store_uptime_reports_started_total", trigger="api") == 1
            assert value(samples, "store_uptime_upload_rows_loaded_total", file=sources.STATUS_FILE) == 5  # seeded once
            scrapes += 1
            finished = value(samples, "store_uptime_reports_finished_total", status="Complete")
            if finished == 1 and len(pids_that_answered(access_log, "/metrics")) == 2:
                break
            assert scrapes < 2_000, "the report never finished, or one worker answered every scrape"
        # A scrape reads the metrics' files one by one while the report's worker writes them: the one that saw
        # the finish may have read the running gauge just before.  The worker lowers it before it counts the
        # finish, so a scrape begun after that finish was seen reads it lowered.
        samples = parse(http(base + "/metrics")[1])
        assert value(samples, "store_uptime_reports_running") == value(samples, "store_uptime_reports_queued") == 0
        assert value(samples, "store_uptime_reports_finished_total", status="Failed") == 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, server_log.read_text()
    logged = [line for line in server_log.read_text().splitlines() if "(PROMETHEUS_MULTIPROC_DIR)" in line]
    assert len(logged) == 1, server_log.read_text()
    folder = Path(logged[0].split("worker metrics are kept in ", 1)[1].split(" (", 1)[0])
    assert folder.name.startswith("store-uptime-metrics-") and not folder.exists()  # removed at exit
