"""The same flows against a real MongoDB: run when MONGO_URI is set, skipped (with the reason) otherwise.

    MONGO_URI=mongodb://localhost:27017 python -m pytest tests/test_integration.py

What only a server shows: query plans (no COLLSCAN, no in-memory SORT for any report
query or the /reports sort), index conflicts mongomock allows, the server's clock for
heartbeats and leases, raw batches for the Arrow read path.  Each test works in its
own throw-away database and drops it afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import pytest
from pymongo import ASCENDING

import database
import reportGenerator
import store_mongo
import utils
from tests.conftest import TINY_REPORT, wait_for_report, write_data_dir

MONGO_URI = os.environ.get("MONGO_URI", "")
pytestmark = pytest.mark.skipif(
    not MONGO_URI or MONGO_URI.startswith("mongomock:"),
    reason="MONGO_URI is not set to a server: no MongoDB to test against (none can be installed here); "
    "set MONGO_URI=mongodb://host:27017 to run these",
)


@pytest.fixture
def real_store():
    """A connected real MongoDB with a fresh database, dropped afterwards."""
    name = f"uptime_test_{uuid.uuid4().hex[:12]}"
    store = database.connect(MONGO_URI, name)
    assert store.kind == "mongodb" and store.ping(timeout=10), f"MongoDB at {MONGO_URI} does not answer"
    yield store
    store.client.drop_database(name)
    store.close()


def stages(plan: dict) -> list[str]:
    """Every stage name anywhere in an explain() answer (find or aggregate, any server version)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "stage" in node:
                found.append(node["stage"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(plan.get("queryPlanner", plan))
    return found


def assert_index_served(plan: dict) -> None:
    names = stages(plan)
    assert "COLLSCAN" not in names, names
    assert "SORT" not in names, names  # an in-memory sort (an index gives the order instead)
    assert any(name in ("IXSCAN", "DISTINCT_SCAN", "EXPRESS_IXSCAN", "IDHACK") for name in names), names


def test_load_is_idempotent_and_indexed(real_store, tmp_path):
    directory = write_data_dir(tmp_path)
    first = database.load_dir(real_store, directory)
    second = database.load_dir(real_store, directory)
    assert [s["loaded"] for s in first] == [s["loaded"] for s in second] == [5, 1, 1]
    assert real_store.db[database.STATUS].count_documents({}) == 5
    info = real_store.db[database.STATUS].index_information()
    assert info["store_time_us"]["unique"] is True


def test_sub_millisecond_polls_and_reconciled_indexes(real_store):
    polls = real_store.db[database.STATUS]
    polls.create_index([("store_id", ASCENDING), ("timestamp_utc", ASCENDING)], name="store_time", unique=True)
    polls.create_index([("timestamp_us", -1)], name="by_time")  # declared keys under another name: a server refuses
    assert real_store.migrate() == []
    database.load_file(
        real_store,
        "store_status.csv",
        b"store_id,status,timestamp_utc\n"
        b"s,active,2023-01-24 10:00:00.000100 UTC\ns,inactive,2023-01-24 10:00:00.000600 UTC\n",
    )
    assert polls.count_documents({}) == 2
    assert set(polls.index_information()) == {"_id_", "store_time_us", "time_us"}
    assert real_store.migrate() == []


def test_every_report_query_is_served_by_an_index(real_store, tmp_path):
    database.load_dir(real_store, write_data_dir(tmp_path))
    polls = real_store.db[database.STATUS]
    now_us = real_store.latest_poll_us()
    since_us = now_us - utils.WEEK_US
    reach = since_us - database.LOOKBACK_US
    # latest_poll_us
    assert_index_served(polls.find({}, {"_id": 0, "timestamp_us": 1}).sort("timestamp_us", -1).limit(1).explain())
    # report_store_ids
    assert_index_served(
        real_store.db.command(
            "explain", {"distinct": database.STATUS, "key": "store_id", "query": {"timestamp_us": {"$lte": now_us}}}
        )
    )
    # read_chunk: the window, and each store's last poll before it ($group/$first in the index's reverse order)
    assert_index_served(
        polls.find(
            real_store._window_query(["worked", "late"], reach, now_us), store_mongo.RAW_POLL_PROJECTION
        ).explain()
    )
    pipeline = [
        {"$match": {"store_id": {"$in": ["worked", "late"]}, "timestamp_us": {"$lt": reach}}},
        {"$sort": {"store_id": -1, "timestamp_us": -1}},
        {"$group": {"_id": "$store_id", "timestamp_us": {"$first": "$timestamp_us"}, "status": {"$first": "$status"}}},
    ]
    assert_index_served(real_store.db.command("aggregate", database.STATUS, pipeline=pipeline, explain=True))
    # hours and zones of a chunk
    assert_index_served(real_store.db[database.HOURS].find({"store_id": {"$in": ["worked"]}}).explain())
    assert_index_served(real_store.db[database.ZONES].find({"store_id": {"$in": ["worked"]}}).explain())
    # /reports' sort and the stale sweep
    real_store.create_report("a" * 32, None)
    assert_index_served(
        real_store.db[database.REPORTS].find({}).sort([("created_at", -1), ("_id", -1)]).skip(0).limit(20).explain()
    )
    assert_index_served(real_store.db[database.REPORTS].find({"status": "Running"}).explain())


def test_arrow_read_path_on_a_server(real_store, tmp_path):
    database.load_dir(real_store, write_data_dir(tmp_path))
    now_us = real_store.latest_poll_us()
    by_arrow = real_store.read_chunk(["allday", "late", "worked"], now_us - utils.WEEK_US, now_us)
    report = utils.uptime_report(*by_arrow, now_us)
    assert report.to_dict("records") == TINY_REPORT


def test_heartbeats_and_the_stale_sweep_use_the_server_clock(real_store):
    server_now = real_store.client.admin.command("hello")["localTime"].replace(tzinfo=dt.UTC)
    real_store.create_report("b" * 32, None)
    beat = real_store.find_report("b" * 32)["heartbeat_at"]
    assert abs((beat - server_now).total_seconds()) < 30  # the server's clock, whatever this host's says
    reports = real_store.db[database.REPORTS]
    reports.update_one({"report_id": "b" * 32}, {"$set": {"heartbeat_at": server_now - dt.timedelta(seconds=90)}})
    real_store.create_report("c" * 32, None)
    assert real_store.fail_stale_reports(dt.timedelta(seconds=60)) == 1
    failed = real_store.find_report("b" * 32)
    assert (failed["status"], failed["error"]) == ("Failed", database.STALE_ERROR)
    assert abs((failed["finished_at"] - server_now).total_seconds()) < 30  # set by the server's $$NOW
    assert real_store.find_report("c" * 32)["status"] == "Running"


def test_lease_expiry_is_the_servers(real_store, monkeypatch):
    monkeypatch.setattr(database, "LEASE_SECONDS", 86_400)  # a day, so a wrong unit or factor in the expiry shows
    assert real_store._try_lease("write", "w1")
    lock = real_store.db["locks"].find_one({"_id": "data"})
    server_now = real_store.client.admin.command("hello")["localTime"]
    left = (lock["writer"]["expires"] - server_now).total_seconds()
    assert database.LEASE_SECONDS - 30 < left <= database.LEASE_SECONDS + 1
    assert not real_store._try_lease("read", "r1")  # a live writer, by the server's clock
    real_store.db["locks"].update_one(
        {"_id": "data"}, {"$set": {"writer.expires": server_now - dt.timedelta(seconds=1), "waiting": None}}
    )
    assert real_store._try_lease("read", "r1")  # lapsed by the server's clock
    assert real_store._renew_lease("write", "w1") is False  # cleared by the reader: the writer lost it
    real_store._release_lease("read", "r1")


def test_leases_and_heartbeats_do_not_use_this_hosts_clock(real_store, monkeypatch):
    """This host's clock two hours ahead of the server's: expiries and heartbeats are still the server's, so a
    live writer keeps its lease and a fresh report is not swept as stale."""

    def ahead():
        return dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)

    monkeypatch.setattr(store_mongo, "now_utc", ahead)
    monkeypatch.setattr(database, "now_utc", ahead)
    assert real_store._try_lease("write", "w1")
    server_now = real_store.client.admin.command("hello")["localTime"]
    left = (real_store.db["locks"].find_one({"_id": "data"})["writer"]["expires"] - server_now).total_seconds()
    assert database.LEASE_SECONDS - 30 < left <= database.LEASE_SECONDS + 1
    assert not real_store._try_lease("read", "r1")  # the writer is live by the server's clock
    assert real_store._renew_lease("write", "w1")
    real_store._release_lease("write", "w1")
    real_store.create_report("f" * 32, None)
    assert abs((real_store.find_report("f" * 32)["heartbeat_at"] - server_now).total_seconds()) < 30
    assert real_store.fail_stale_reports(dt.timedelta(seconds=60)) == 0
    assert real_store.find_report("f" * 32)["status"] == "Running"


def test_report_job_on_real_mongodb(real_store, tmp_path):
    database.load_dir(real_store, write_data_dir(tmp_path))
    generator = reportGenerator.ReportGenerator(real_store, tmp_path / "reports", chunk_stores=2)
    real_store.create_report("e" * 32, None)
    generator.run("e" * 32)
    report = real_store.find_report("e" * 32)
    assert report["status"] == "Complete", report.get("error")
    csv_text = real_store.read_report_csv(report).decode()
    assert csv_text.splitlines()[1].startswith("allday,40.0,23.67,167.67,20.0,0.33,0.33")
    assert report["progress"] == {"done": 3, "total": 3}


def test_api_flow_on_real_mongodb(tmp_path):
    from app import create_app

    name = f"uptime_test_{uuid.uuid4().hex[:12]}"
    app = create_app({"MONGO_URI": MONGO_URI, "MONGO_DB": name, "REPORTS_DIR": str(tmp_path / "reports")})
    store = app.extensions["store"]
    try:
        database.load_dir(store, write_data_dir(tmp_path / "data"))
        client = app.test_client()
        assert client.get("/health").get_json()["database"] == "mongodb"
        report_id = client.post("/trigger_report").get_json()["report_id"]
        body = wait_for_report(client, report_id)
        assert body["data"] == TINY_REPORT
        # a second app (another worker) answers for the report the first one ran
        other = create_app({"MONGO_URI": MONGO_URI, "MONGO_DB": name, "REPORTS_DIR": str(tmp_path / "r2")})
        assert other.test_client().get(f"/get_report?report_id={report_id}").get_json()["data"] == TINY_REPORT
        other.extensions["reports"].shutdown(wait=True)
        other.extensions["store"].close()
    finally:
        app.extensions["reports"].shutdown(wait=True)
        store.client.drop_database(name)
        store.close()


def test_the_servers_release_and_features_are_checked_and_shown(real_store):
    """The start-up check against a real server: its buildInfo release and the members' wire versions (a
    server too old is refused: tests/test_mongo_wire.py scripts one)."""
    assert real_store.migrate() == []
    health = real_store.health(0)
    assert health["server_version"] == real_store.client.server_info()["version"]
    assert health["server_wire_version"] >= store_mongo.NEEDED_WIRE_VERSION
    assert list(health["server_features"]) == [what for what, _, _ in store_mongo.SERVER_FEATURES]
    assert all(health["server_features"].values())
