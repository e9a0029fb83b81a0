"""The same flows against a real MongoDB: run when MONGO_URI is set, skipped (with the reason) otherwise.

    MONGO_URI=mongodb://localhost:27017 python -m pytest tests/test_integration.py

What only a server shows: query plans (no COLLSCAN, no in-memory SORT for any report
query, the /reports sort, history, the previous report, deliveries), index conflicts
mongomock allows, the server's clock for heartbeats, leases and ticks, raw batches for
the Arrow read path, workers racing for one tick or one report's alerts (real
duplicate-key answers), and the schema 2 -> 3 migration on a server.  Each test works in its
own throw-away database and drops it afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from pymongo import ASCENDING

import database
import report_csv
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


# --------------------------------------------------------------------------- schema 3 on a server


def other_store(real_store):
    """A second store with its own client on the same database: another worker or host."""
    return database.connect(MONGO_URI, real_store.name)


HEADER = (",".join(utils.REPORT_COLUMNS) + "\n").encode()


def complete_one(store, report_id: str, as_of_us: int, payload: bytes) -> None:
    store.create_report(report_id, None)
    store.update_report(report_id, as_of_us=as_of_us)
    assert store.complete_report(report_id, payload, payload.count(b"\n") - 1)


def test_history_changes_deliveries_and_the_orphan_sweep_are_served_by_an_index(real_store):
    assert real_store.migrate() == []
    payload = HEADER + b"a,60.0,20.5,150.25,0.0,3.5,17.75\nb,30.0,10.0,100.0,30.0,14.0,68.0\n"
    for n in range(3):
        complete_one(real_store, f"{n:032x}", 1_674_432_000_000_000 + n, payload)
    real_store.record_alerts(
        "0" * 32, 1_674_432_000_000_000, [dict(store_id="a", downtime_last_hour=40.0, uptime_last_hour=20.0)], 30
    )
    db = real_store.db
    history = db[store_mongo.HISTORY].find({"store_id": "a", "as_of_us": {"$gte": 0, "$lte": 2**62}})
    assert_index_served(history.sort([("as_of_us", -1), ("created_us", -1), ("report_id", -1)]).limit(100).explain())
    assert_index_served(db[database.REPORTS].find({"report_id": {"$in": ["0" * 32]}, "status": "Complete"}).explain())
    newest = real_store.find_report(f"{2:032x}")["created_at"]
    assert_index_served(
        db[database.REPORTS]
        .find({"status": "Complete", "created_at": {"$lte": newest}})
        .sort([("created_at", -1), ("report_id", -1)])
        .explain()
    )
    assert_index_served(db[store_mongo.DELIVERIES].find({}).sort([("created_at", -1), ("seq", -1)]).limit(50).explain())
    assert_index_served(
        db[store_mongo.DELIVERIES]
        .find({"status": "Pending", "touched_at": {"$lt": dt.datetime.now(dt.UTC)}})
        .sort([("created_at", 1), ("seq", 1)])
        .explain()
    )
    assert_index_served(
        db[database.REPORTS]
        .find({"status": "Running", "trigger": "schedule", "heartbeat_at": {"$gt": dt.datetime.now(dt.UTC)}})
        .explain()
    )
    for name in (store_mongo.REPORT_CHUNKS, store_mongo.HISTORY):
        pipeline = [{"$sort": {"report_id": 1}}, {"$group": {"_id": "$report_id"}}]
        assert_index_served(db.command("aggregate", name, pipeline=pipeline, explain=True))
    assert real_store.previous_complete_report(f"{2:032x}")["report_id"] == f"{1:032x}"
    assert [p["report_id"] for p in real_store.store_history("a")] == [f"{n:032x}" for n in (2, 1, 0)]


def test_the_clock_and_a_ticks_claim_are_the_servers(real_store, monkeypatch):
    def ahead():
        return dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)

    monkeypatch.setattr(store_mongo, "now_utc", ahead)  # this host's clock two hours ahead
    server_now = real_store.client.admin.command("hello")["localTime"].replace(tzinfo=dt.UTC)
    assert abs(real_store.clock_us() - utils.datetime_to_us(server_now)) < 30_000_000
    assert real_store.claim_tick(1_700_000_000_000_000, "a" * 32) == "started"
    claimed = real_store.last_tick()["claimed_at_us"]
    assert abs(claimed - utils.datetime_to_us(server_now)) < 30_000_000
    report = real_store.find_report("a" * 32)
    assert abs((report["heartbeat_at"] - server_now).total_seconds()) < 30
    assert real_store.claim_tick(1_700_000_060_000_000, "b" * 32) == "skipped"  # by the server's clock: alive


def test_workers_racing_for_one_tick_start_exactly_one_report(real_store):
    stores = [real_store] + [other_store(real_store) for _ in range(5)]
    try:
        barrier = threading.Barrier(len(stores))

        def claim(index: int) -> str:
            barrier.wait(timeout=30)
            return stores[index].claim_tick(1_700_000_000_000_000, f"{index:032x}")

        with ThreadPoolExecutor(len(stores)) as pool:
            outcomes = list(pool.map(claim, range(len(stores))))
        assert sorted(outcomes) == ["started"] + ["taken"] * (len(stores) - 1)
        winner = outcomes.index("started")
        assert [r["report_id"] for r in real_store.list_reports()] == [f"{winner:032x}"]
        assert real_store.last_tick()["report_id"] == f"{winner:032x}"
    finally:
        for store in stores[1:]:
            store.close()


def test_workers_recording_one_report_at_once_make_one_delivery_of_each_event(real_store):
    stores = [real_store] + [other_store(real_store) for _ in range(3)]
    rows = [dict(store_id=f"s{n}", downtime_last_hour=float(n * 10), uptime_last_hour=60.0 - n * 10) for n in range(7)]
    try:
        barrier = threading.Barrier(len(stores))

        def record(store):
            barrier.wait(timeout=30)
            return store.record_alerts("r" * 32, 1_674_432_000_000_000, rows, 30)

        with ThreadPoolExecutor(len(stores)) as pool:
            deliveries = list(pool.map(record, stores))
        assert len({d["delivery_id"] for d in deliveries}) == 1 and len(real_store.list_deliveries()) == 1
        events = json.loads(deliveries[0]["body"])["events"]
        assert [(e["store_id"], e["event"]) for e in events] == [(f"s{n}", "store_down") for n in (3, 4, 5, 6)]
    finally:
        for store in stores[1:]:
            store.close()


def test_a_schema_2_database_is_migrated_on_a_server(real_store):
    """The schema-2 database of tests/test_mongo_safety.py, copied to the server, opened by a new store."""
    from tests.test_mongo_safety import COMPLETE_2, SCHEMA_2_CSV, schema_2_database

    source = schema_2_database()["test"]
    real_store.client.drop_database(real_store.name)
    target = real_store.client[real_store.name]
    for name in source.list_collection_names():
        documents = list(source[name].find())
        if documents:
            target[name].insert_many(documents)
        for index, info in source[name].index_information().items():
            if index != "_id_":
                target[name].create_index(info["key"], name=index, unique=bool(info.get("unique")))
    store = database.connect(MONGO_URI, real_store.name)
    try:
        assert store.migrate() == []
        assert store.schema_version == database.SCHEMA_VERSION
        assert store.migrations_applied[0].startswith("schema 2 -> 3: ")
        rows = report_csv.read_report_rows(SCHEMA_2_CSV).to_dict("records")
        for row in rows:
            [point] = [p for p in store.store_history(row["store_id"]) if p["report_id"] == COMPLETE_2]
            assert [point[k] for k in utils.REPORT_COLUMNS[1:]] == [row[k] for k in utils.REPORT_COLUMNS[1:]]
    finally:
        store.close()
