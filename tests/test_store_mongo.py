"""What only the MongoDB store does, shown on mongomock and on fakes of pymongo's failures.

Index reconciliation, unique indexes before the first insert, write errors that must
not be counted as loaded, retries of transient errors (and none inside a request),
the database away (start-up, /health, API calls, `database.py load`), the background
start-up work, the Arrow read path against the dict path on the same documents, and
the CSV chunk size.  What only a real server can show is in test_integration.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import subprocess
import sys
import threading
import types
from pathlib import Path

import bson
import mongomock
import numpy as np
import pandas as pd
import pytest
import tenacity
from pymongo import ASCENDING, IndexModel
from pymongo.errors import AutoReconnect, BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError

import database
import reportGenerator
import sources
import store_mongo
import utils
from app import create_app
from store_mongo import INDEXES, MongoStore
from tests.conftest import FAR_FUTURE_US, TINY_REPORT, free_port, write_data_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mongo():
    store = MongoStore("mongomock://", "test")
    store.retry_wait = tenacity.wait_none()  # retries at once: the tests count attempts, not seconds
    yield store
    store.close()


def declared(collection: str) -> dict:
    return {
        m.document["name"]: (list(m.document["key"].items()), bool(m.document.get("unique")))
        for m in INDEXES[collection]
    }


def present(store: MongoStore, collection: str) -> dict:
    return {
        name: ([(f, int(d)) for f, d in info["key"]], bool(info.get("unique")))
        for name, info in store.db[collection].index_information().items()
        if name != "_id_"
    }


# --------------------------------------------------------------------------- indexes


def test_migrate_creates_every_declared_index(mongo):
    assert mongo.migrate() == []
    for collection in INDEXES:
        assert present(mongo, collection) == declared(collection)
    assert present(mongo, database.STATUS)["store_time_us"] == ([("store_id", 1), ("timestamp_us", 1)], True)


def test_migrate_rebuilds_changed_indexes_and_drops_the_retired_one(mongo, monkeypatch, caplog):
    polls = mongo.db[database.STATUS]
    polls.create_index([("store_id", ASCENDING)], name="store_time_us")  # same name, other keys, not unique
    polls.create_index([("timestamp_us", -1)], name="by_time")  # the declared keys under another name
    polls.create_index([("store_id", 1), ("timestamp_utc", 1)], name="store_time", unique=True)  # the old key
    zones = mongo.db[database.ZONES]
    zones.create_index([("store_id", 1)], name="store")  # same name and keys, but not unique
    with caplog.at_level(logging.INFO, logger="store_mongo"):
        assert mongo.migrate() == []
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "store_mongo"] == [
        ("INFO", "dropped the retired index storeStatus.store_time"),
        (
            "WARNING",
            (
                "rebuilding index storeStatus.store_time_us (declared [('store_id', 1), ('timestamp_us', 1)] "
                "{'unique': True}, found [('store_id', 1)] {})"
            ),
        ),
        (
            "WARNING",
            (
                "rebuilding index storeStatus.time_us (declared [('timestamp_us', -1)] {}, "
                "found [('timestamp_us', -1)] {})"
            ),
        ),
        (
            "WARNING",
            (
                "rebuilding index timezones.store (declared [('store_id', 1)] {'unique': True}, "
                "found [('store_id', 1)] {})"
            ),
        ),
    ]
    assert present(mongo, database.STATUS) == declared(database.STATUS)
    assert present(mongo, database.ZONES) == declared(database.ZONES)
    caplog.clear()
    drops, creations = flaky(monkeypatch, "drop_index", []), flaky(monkeypatch, "create_indexes", [])
    with caplog.at_level(logging.INFO, logger="store_mongo"):
        assert mongo.migrate() == []  # reconciled: a second run changes nothing
    assert (drops["n"], creations["n"], caplog.records) == (0, 0, [])
    assert present(mongo, database.STATUS) == declared(database.STATUS)
    polls.drop_index("time_us")  # the second index of a collection whose first one is right
    assert mongo.migrate() == []
    assert (drops["n"], creations["n"]) == (1, 1)  # (the drop above) and time_us made again
    assert present(mongo, database.STATUS) == declared(database.STATUS)


def test_one_collection_failing_does_not_stop_the_others(mongo, caplog):
    # two polls under one key with no index yet: the unique index cannot be built over them
    mongo.db[database.STATUS].insert_many(
        [
            {"store_id": "s", "timestamp_us": 1, "status": "active"},
            {"store_id": "s", "timestamp_us": 1, "status": "inactive"},
        ]
    )
    with caplog.at_level(logging.ERROR, logger="store_mongo"):
        failed = mongo.migrate()
    assert len(failed) == 1 and failed[0].startswith("storeStatus.store_time_us: DuplicateKeyError: ")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [f"index problem: {failed[0]}"]
    for collection in (database.HOURS, database.ZONES, database.REPORTS, store_mongo.REPORT_CHUNKS):
        assert present(mongo, collection) == declared(collection)


def test_unique_indexes_exist_before_the_first_insert(mongo):
    mongo.kind = "mongodb"  # as on a server (mongomock's own loads skip it: it checks unique indexes by scanning)
    assert mongo.db[database.STATUS].index_information().keys() <= {"_id_"}
    database.load_file(mongo, sources.STATUS_FILE, b"store_id,status,timestamp_utc\ns,active,2023-01-24 10:00:00 UTC\n")
    assert present(mongo, database.STATUS)["store_time_us"][1] is True


def test_polls_under_a_millisecond_apart_keep_the_unique_index(mongo):
    database.load_file(
        mongo,
        sources.STATUS_FILE,
        b"store_id,status,timestamp_utc\n"
        b"s,active,2023-01-24 10:00:00.000100 UTC\ns,inactive,2023-01-24 10:00:00.000600 UTC\n",
    )
    assert mongo.db[database.STATUS].count_documents({}) == 2
    assert mongo.migrate() == []


def test_nothing_is_written_when_the_indexes_cannot_be_made(mongo):
    mongo.kind = "mongodb"
    mongo.db[database.STATUS].insert_many(
        [
            {"store_id": "d", "timestamp_us": 5, "status": "active"},
            {"store_id": "d", "timestamp_us": 5, "status": "inactive"},
        ]
    )
    with pytest.raises(OperationFailure, match="indexes are not right"):
        database.load_file(mongo, sources.ZONES_FILE, b"store_id,timezone_str\nz,UTC\n")
    with pytest.raises(OperationFailure, match="indexes are not right"):  # nor at the next try
        database.load_file(mongo, sources.ZONES_FILE, b"store_id,timezone_str\nz,UTC\n")
    assert mongo.db[database.ZONES].count_documents({}) == 0


def test_loads_on_mongomock_leave_the_indexes_to_migrate(mongo):
    """mongomock checks a unique index by scanning the collection at every insert, so a load there does not
    build the indexes first (on a server it does: test_unique_indexes_exist_before_the_first_insert)."""
    database.load_file(mongo, sources.STATUS_FILE, b"store_id,status,timestamp_utc\ns,active,2023-01-24 10:00:00 UTC\n")
    assert mongo.db[database.STATUS].count_documents({}) == 1
    assert list(mongo.db[database.STATUS].index_information()) == ["_id_"]


def test_indexes_that_cannot_be_listed_or_dropped_are_reported_and_the_rest_is_done(mongo, monkeypatch):
    mongo.db[database.STATUS].create_index([("store_id", 1), ("timestamp_utc", 1)], name="store_time", unique=True)
    flaky(monkeypatch, "index_information", [OperationFailure("not authorized on test", 13)])
    assert mongo.migrate() == ["storeStatus: could not list indexes: OperationFailure: not authorized on test"]
    for collection in (database.HOURS, database.ZONES, database.REPORTS, store_mongo.REPORT_CHUNKS):
        assert present(mongo, collection) == declared(collection)
    flaky(monkeypatch, "drop_index", [OperationFailure("not authorized to drop", 13)])
    assert mongo.migrate() == [
        "storeStatus.store_time: could not drop the retired index: OperationFailure: not authorized to drop"
    ]
    assert present(mongo, database.STATUS) == {
        **declared(database.STATUS),
        "store_time": ([("store_id", 1), ("timestamp_utc", 1)], True),
    }


@pytest.mark.parametrize("flag", ["unique", "sparse"])
def test_an_index_declared_with_a_false_flag_is_the_index_without_it(mongo, monkeypatch, caplog, flag):
    """`unique=False` (or `sparse=False`) is what an index without the flag is: it is not rebuilt at each start-up."""
    collection = mongo.db["scratch"]
    collection.create_index([("t", -1)], name="t")
    drops = flaky(monkeypatch, "drop_index", [])
    with caplog.at_level(logging.INFO, logger="store_mongo"):
        assert store_mongo.reconcile_indexes(collection, [IndexModel([("t", -1)], name="t", **{flag: False})]) == []
    assert (drops["n"], caplog.records) == (0, [])


def test_an_operators_index_with_a_named_direction_does_not_stop_migrate(mongo):
    zones = mongo.db[database.ZONES]
    zones.create_index([("timezone_str", "hashed")], name="zone_hash")  # someone's own index, not declared
    assert mongo.migrate() == []
    information = zones.index_information()
    assert information["zone_hash"]["key"] == [("timezone_str", "hashed")]
    assert (list(information["store"]["key"]), information["store"].get("unique")) == ([("store_id", 1)], True)


# --------------------------------------------------------------------------- write errors and retries


def _polls_frame(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "store_id": [f"s{i}" for i in range(n)],
            "timestamp_us": np.arange(n, dtype=np.int64) * 1000,
            "active": [True] * n,
        }
    )


@pytest.mark.parametrize(
    "details",
    [
        {"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}]},
        {"writeErrors": [{"index": 0, "code": 2, "errmsg": "bad value"}], "writeConcernErrors": []},
    ],
)
def test_bulk_errors_other_than_duplicates_are_raised(mongo, monkeypatch, details):
    def failing_bulk_write(self, operations, ordered=True, **kwargs):
        raise BulkWriteError({"nInserted": 0, "nUpserted": 0, **details})

    monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", failing_bulk_write)
    monkeypatch.setattr(mongomock.collection.Collection, "insert_many", failing_bulk_write)
    with pytest.raises(BulkWriteError):
        mongo.load_polls(_polls_frame())  # into an empty collection (inserts)
    monkeypatch.undo()
    mongo.load_polls(_polls_frame(1))
    monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", failing_bulk_write)
    with pytest.raises(BulkWriteError):
        mongo.load_polls(_polls_frame())  # into a collection with polls (upserts)


def test_duplicate_key_races_are_not_errors(mongo, monkeypatch):
    real_insert_many = mongomock.collection.Collection.insert_many

    def racing_insert_many(self, documents, ordered=True, **kwargs):
        real_insert_many(self, [documents[0], documents[2]])  # the second poll loses a race: it is upserted
        raise BulkWriteError(
            {"writeErrors": [{"index": 1, "code": 11000, "errmsg": "E11000 duplicate key"}], "writeConcernErrors": []}
        )

    monkeypatch.setattr(mongomock.collection.Collection, "insert_many", racing_insert_many)
    assert mongo.load_polls(_polls_frame()) == 3
    assert sorted(d["store_id"] for d in mongo.db[database.STATUS].find()) == ["s0", "s1", "s2"]


def flaky(monkeypatch, method: str, errors: list[Exception]):
    """Make mongomock's `method` raise each of `errors` in turn, then work; returns the call count."""
    real = getattr(mongomock.collection.Collection, method)
    calls = {"n": 0}

    def wrapper(self, *args, **kwargs):
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, method, wrapper)
    return calls


def test_transient_errors_are_retried_and_the_write_lands_once(mongo, monkeypatch):
    mongo.migrate()
    labelled = OperationFailure("not primary", 10107, {"errorLabels": ["RetryableWriteError"]})
    calls = flaky(monkeypatch, "insert_many", [AutoReconnect("connection reset"), labelled])
    assert mongo.load_polls(_polls_frame()) == 3
    assert calls["n"] == 3
    assert mongo.db[database.STATUS].count_documents({}) == 3


def test_a_retried_replacement_and_report_creation_are_idempotent(mongo, monkeypatch):
    mongo.migrate()
    flaky(monkeypatch, "insert_many", [AutoReconnect("reset after the delete")])
    frame = pd.DataFrame({"store_id": ["a", "b"], "timezone_str": ["UTC", "Asia/Tokyo"]})
    assert mongo.replace_zones(frame) == 2
    assert sorted(d["store_id"] for d in mongo.db[database.ZONES].find()) == ["a", "b"]
    calls = flaky(monkeypatch, "update_one", [AutoReconnect("answer lost")])
    mongo.create_report("r" * 32, None)
    mongo.update_report("r" * 32, progress={"done": 1, "total": 2})
    mongo.create_report("r" * 32, None)  # a retry after a lost answer keeps what the first attempt stored
    assert calls["n"] == 4
    assert mongo.db[database.REPORTS].count_documents({}) == 1
    assert mongo.find_report("r" * 32)["progress"] == {"done": 1, "total": 2}


def test_a_retry_is_logged_with_the_call_the_error_and_the_wait(mongo, monkeypatch, caplog):
    slept = []
    monkeypatch.setattr(tenacity.nap, "time", types.SimpleNamespace(sleep=slept.append))  # tenacity's pause only
    mongo.retry_wait = tenacity.wait_fixed(2.5)
    flaky(monkeypatch, "insert_many", [AutoReconnect("connection reset")])
    with caplog.at_level(logging.WARNING, logger="store_mongo"):
        assert mongo.load_polls(_polls_frame()) == 3
    assert [r.getMessage() for r in caplog.records if r.name == "store_mongo"] == [
        "database call _write_polls failed (AutoReconnect: connection reset); retrying in 2.5 s"
    ]
    assert slept == [2.5]


def test_jobs_back_off_from_half_a_second_to_eight_seconds(monkeypatch):
    """The default wait before retry n: 0.5 s x 2**(n-1) plus up to 0.5 s of jitter, at most 8 s
    (jitter at its top here)."""
    store = MongoStore("mongomock://", "test")
    slept = []
    monkeypatch.setattr(tenacity.nap, "time", types.SimpleNamespace(sleep=slept.append))  # tenacity's pause only
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    calls = flaky(monkeypatch, "insert_many", [AutoReconnect(f"reset {n}") for n in range(6)])
    try:
        assert store.load_polls(_polls_frame()) == 3
    finally:
        store.close()
    assert calls["n"] == 7
    assert slept == [1.0, 1.5, 2.5, 4.5, 8.0, 8.0]


def test_a_request_on_a_server_is_not_retried(mongo, monkeypatch):
    mongo.kind = "mongodb"  # as on a server: the store's own request scope
    calls = flaky(monkeypatch, "update_one", [AutoReconnect("gone")])
    with mongo.request_scope(), pytest.raises(AutoReconnect):
        mongo.update_report("r" * 32, progress={"done": 1, "total": 2})
    assert calls["n"] == 1


def test_other_errors_are_not_retried(mongo, monkeypatch):
    calls = flaky(monkeypatch, "find", [OperationFailure("unauthorized", 13)])
    with pytest.raises(OperationFailure):
        mongo.read_chunk(["s"], 0, FAR_FUTURE_US)
    assert calls["n"] == 1


def test_no_retries_inside_a_request(mongo, monkeypatch):
    calls = flaky(monkeypatch, "find", [AutoReconnect("gone")])
    with store_mongo._request_scope(1.0):
        with pytest.raises(AutoReconnect):
            mongo.read_chunk(["s"], 0, FAR_FUTURE_US)
    assert calls["n"] == 1


# --------------------------------------------------------------------------- the lease


def test_a_lost_read_lease_fails_the_report(mongo, monkeypatch, tmp_path):
    """A renewal that matches nothing (a writer took the lease) ends the report Failed, not Complete."""
    monkeypatch.setattr(database, "LEASE_SECONDS", 0.2)
    database.load_dir(mongo, write_data_dir(tmp_path / "data"))
    taken = threading.Event()
    real_read_chunk = MongoStore.read_chunk

    def read_chunk_while_the_lease_goes(self, *args):
        if not taken.is_set():  # between two chunks, another holder takes the lease away
            self.db["locks"].update_one({"_id": "data"}, {"$set": {"readers": []}})
            taken.set()
            deadline = dt.datetime.now() + dt.timedelta(seconds=30)
            while not self._renewal_failed.is_set() and dt.datetime.now() < deadline:
                self._renewal_failed.wait(0.05)
        return real_read_chunk(self, *args)

    mongo._renewal_failed = threading.Event()
    real_renew = MongoStore._renew_lease

    def renew(self, mode, holder):
        ok = real_renew(self, mode, holder)
        if not ok:
            self._renewal_failed.set()
        return ok

    monkeypatch.setattr(MongoStore, "read_chunk", read_chunk_while_the_lease_goes)
    monkeypatch.setattr(MongoStore, "_renew_lease", renew)
    generator = reportGenerator.ReportGenerator(mongo, tmp_path / "reports", chunk_stores=1)
    mongo.create_report("l" * 32, None)
    generator.run("l" * 32)
    report = mongo.find_report("l" * 32)
    assert report["status"] == "Failed"
    assert report["error"] == "the data changed while the report read it; trigger the report again"


def test_reader_clears_a_lapsed_writer_so_it_cannot_renew_back(mongo, monkeypatch):
    monkeypatch.setattr(database, "LEASE_SECONDS", 60)
    assert mongo._try_lease("write", "w")
    past = database.now_utc() - dt.timedelta(seconds=1)
    mongo.db["locks"].update_one({"_id": "data"}, {"$set": {"writer.expires": past}})  # the writer's lease lapsed
    assert mongo._try_lease("read", "r")
    assert mongo._renew_lease("write", "w") is False
    assert mongo._renew_lease("read", "r") is True


def test_a_reader_that_stopped_renewing_does_not_keep_a_writer_out(mongo, monkeypatch):
    monkeypatch.setattr(database, "LEASE_SECONDS", 60)
    assert mongo._try_lease("read", "r")
    assert not mongo._try_lease("write", "w")  # a live reader: the writer waits
    past = database.now_utc() - dt.timedelta(seconds=1)
    mongo.db["locks"].update_one({"_id": "data"}, {"$set": {"readers.0.expires": past}})  # the reader's lease lapsed
    assert mongo._try_lease("write", "w")
    assert mongo._renew_lease("read", "r") is False


# --------------------------------------------------------------------------- the database away


def test_database_away_start_up_health_and_api(tmp_path, caplog):
    """Nothing listens on the port: the app still builds, /health and the API answer 503 in the one
    error shape, and the log has one short line per failure (no topology description)."""
    caplog.set_level(logging.WARNING)
    app = create_app(
        {"MONGO_URI": f"mongodb://127.0.0.1:{free_port()}", "MONGO_DB": "x", "REPORTS_DIR": str(tmp_path / "reports")}
    )
    store = app.extensions["store"]
    try:
        assert store.kind == "mongodb"
        client = app.test_client()
        health = client.get("/health")
        assert health.status_code == 503
        assert health.get_json() == {"error": "the database (mongodb) does not answer", "status": 503}
        for response in (
            client.get("/reports"),
            client.get(f"/get_report?report_id={'a' * 32}"),
            client.post("/trigger_report"),
        ):
            assert response.status_code == 503
            assert response.get_json() == {"error": "the database is not available; try again shortly", "status": 503}
        lines = [record.getMessage() for record in caplog.records]
        assert any("database error: ServerSelectionTimeoutError" in line for line in lines)
        assert not any("Topology Description" in line or "\n" in line for line in lines)
    finally:
        app.extensions["reports"].shutdown(wait=True)
        store.close()


def test_an_unresolvable_srv_address_does_not_stop_start_up(tmp_path):
    app = create_app(
        {
            "MONGO_URI": "mongodb+srv://cluster0.nowhere.invalid/",
            "MONGO_DB": "x",
            "REPORTS_DIR": str(tmp_path / "reports"),
        }
    )
    store = app.extensions["store"]
    try:
        response = app.test_client().get("/health")
        assert response.status_code == 503 and response.get_json()["status"] == 503
        assert app.test_client().get("/reports").status_code == 503
    finally:
        app.extensions["reports"].shutdown(wait=True)
        store.close()


def test_cli_load_with_the_database_away_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MONGO_URI", f"mongodb://127.0.0.1:{free_port()}")
    monkeypatch.setattr(database, "CLI_PING_SECONDS", 0.5)
    assert database.main(["load", str(write_data_dir(tmp_path))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # and nothing else on stderr: one line
    assert captured.err.count("\n") == 1 and captured.err.startswith("database error: MongoDB at MONGO_URI")


class RecordedPauses:
    """Stands in for the start-up thread's stop event: records each pause instead of waiting it out."""

    def __init__(self):
        self.waited = []

    def is_set(self) -> bool:
        return False

    def set(self) -> None:
        pass

    def wait(self, seconds: float) -> bool:
        self.waited.append(seconds)
        return False


@pytest.mark.parametrize("server_selection_ms, limit", [(store_mongo.SERVER_SELECTION_MS, 60.0), (61_500, 61.5)])
def test_the_start_up_ping_waits_a_minute_or_the_server_selection_time_if_longer(
    monkeypatch, server_selection_ms, limit
):
    """The start-up thread gives a server that is still starting at least a minute to answer its ping
    (more when server selection is set longer), not pymongo's default limit."""
    store = MongoStore("mongomock://", "test", server_selection_ms=server_selection_ms)
    limits, real_timeout = [], store_mongo.pymongo.timeout

    def timeout(seconds):
        limits.append(seconds)
        return real_timeout(seconds)

    monkeypatch.setattr(store_mongo.pymongo, "timeout", timeout)
    try:
        thread = store._start_maintenance(dt.timedelta(seconds=60))
        thread.join(timeout=60)  # a bound, not a pause: the work is done in well under a second
        assert not thread.is_alive()
    finally:
        store.close()
    assert limits == [limit]  # the one ping, before the indexes


def test_background_start_up_work_retries_until_the_database_answers(mongo, caplog):
    """Index creation fails seven times (the database is away, then an index cannot be built) and the stale
    sweep once, then they succeed: the pause doubles from the first up to 30 s, and starts again for the sweep."""
    mongo._stop = pauses = RecordedPauses()  # the first pause is the default, 1 s
    mongo.create_report("s" * 32, None)
    mongo.db[database.REPORTS].update_one(
        {"report_id": "s" * 32}, {"$set": {"heartbeat_at": database.now_utc() - dt.timedelta(hours=1)}}
    )
    real_migrate = mongo.migrate
    failures = [AutoReconnect(f"down {n}") for n in range(1, 7)] + [["storeStatus.store_time_us: broken"]]
    real_sweep, sweep_failures = mongo.fail_stale_reports, [AutoReconnect("gone again")]

    def migrate():
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure  # the problems migrate reports
        return real_migrate()

    def fail_stale_reports(older_than):
        if sweep_failures:
            raise sweep_failures.pop(0)
        return real_sweep(older_than)

    mongo.migrate, mongo.fail_stale_reports = migrate, fail_stale_reports
    with caplog.at_level(logging.INFO, logger="store_mongo"):
        thread = mongo._start_maintenance(dt.timedelta(seconds=60))
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert (thread.name, thread.daemon) == ("mongo-maintenance", True)  # named in logs; never holds the process up
    assert present(mongo, database.STATUS) == declared(database.STATUS)
    assert mongo.find_report("s" * 32)["status"] == "Failed"
    assert pauses.waited == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 1.0]
    assert [r.getMessage() for r in caplog.records if r.name == "store_mongo"] == [
        *(
            f"database start-up work (indexes) failed, retrying in {pause} s: AutoReconnect: down {n}"
            for n, pause in zip(range(1, 7), (1, 2, 4, 8, 16, 30))
        ),
        "database start-up work (indexes) failed, retrying in 30 s: RuntimeError: some indexes could not be made "
        "(see above)",
        "database start-up work (stale reports) failed, retrying in 1 s: AutoReconnect: gone again",
        "marked 1 stale Running reports as Failed",
        f"MongoDB ready: schema {database.SCHEMA_VERSION}, indexes reconciled, stale reports swept",
    ]


def test_an_srv_address_is_resolved_once_in_the_background_while_requests_fail_at_once():
    """The client of a `mongodb+srv://` address is built (DNS) by the start-up thread alone: until it is,
    requests fail at once instead of waiting; then they use that client."""
    store = MongoStore("mongodb+srv://cluster0.example.invalid/", "x")
    store.maintenance_first_pause = 0.01
    resolving, resolved, built = threading.Event(), threading.Event(), []

    def resolve_and_build():  # DNS answers when the test says so
        resolving.set()
        resolved.wait(30)
        built.append(mongomock.MongoClient(tz_aware=True))
        return built[-1]

    store._new_client = resolve_and_build
    try:
        thread = store._start_maintenance(dt.timedelta(seconds=60))
        assert resolving.wait(30)
        with pytest.raises(ConnectionFailure, match="not resolved yet"):
            store.find_report("a" * 32)
        resolved.set()
        thread.join(30)
        assert not thread.is_alive()
        assert len(built) == 1 and store.client is built[0]
        assert store.find_report("a" * 32) is None
        assert present(store, database.STATUS) == declared(database.STATUS)
    finally:
        resolved.set()
        store.close()


def test_a_failed_ping_is_logged_unless_quiet(caplog):
    store = MongoStore("mongodb+srv://cluster0.example.invalid/", "x")
    store._resolving_in_background = True  # no client yet: the ping fails at once, with no network
    with caplog.at_level(logging.WARNING, logger="store_mongo"):
        assert store.ping() is False
        assert [r.getMessage() for r in caplog.records] == [
            "database ping failed: ConnectionFailure: the database address of MONGO_URI is not resolved yet"
        ]
        caplog.clear()
        assert store.ping(quiet=True) is False
        assert caplog.records == []


def test_a_ping_and_a_request_wait_no_longer_than_their_own_limits():
    """Nothing listens, and server selection alone would wait ten minutes for a server: the ping's own limit and
    the request scope's (REQUEST_SECONDS) end the waits, so both answer in about a second."""
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}", "x", server_selection_ms=600_000)
    answers = {}

    def ask() -> None:
        answers["ping"] = store.ping(timeout=0.2, quiet=True)
        with store.request_scope():
            try:
                store.count_reports()
            except PyMongoError as error:
                answers["request"] = type(error).__name__

    asking = threading.Thread(target=ask, daemon=True)
    try:
        asking.start()
        asking.join(60)  # a bound, not a pause: without the limits the thread is still waiting here
        assert answers == {"ping": False, "request": "ServerSelectionTimeoutError"}
    finally:
        store.close()


def test_a_server_client_is_built_as_documented():
    """What can be seen of the client without a server: its address, tz-aware dates, the server selection wait,
    the application name servers log, and no connection opened by building it (pymongo's own flag)."""
    port = free_port()
    store = MongoStore(f"mongodb://127.0.0.1:{port}", "x", server_selection_ms=1_234)
    try:
        client = store.client
        assert list(client.topology_description.server_descriptions()) == [("127.0.0.1", port)]
        assert client.codec_options.tz_aware is True
        assert client.options.server_selection_timeout == 1.234
        assert client.options.pool_options.metadata["application"] == {"name": "store-uptime"}
        assert client._topology._opened is False  # connect=False
    finally:
        store.close()


def test_without_the_start_up_thread_an_srv_client_is_built_on_first_use():
    """As in `python database.py load`: no start-up thread resolves the address, so the first call does."""
    store = MongoStore("mongodb+srv://cluster0.example.invalid/", "x")
    store._new_client = lambda: mongomock.MongoClient(tz_aware=True)  # DNS answers at once
    try:
        assert store.find_report("a" * 32) is None
    finally:
        store.close()


def test_requests_do_not_wait_for_an_address_being_resolved():
    store = MongoStore("mongodb+srv://cluster0.nowhere.invalid/", "x")
    store._resolving_in_background = True  # as _start_maintenance sets it while it resolves
    with pytest.raises(ConnectionFailure, match="not resolved yet"):
        store.find_report("a" * 32)
    assert store.ping() is False


# --------------------------------------------------------------------------- reading: Arrow and dicts


def poll_documents(n: int, seed: int = 7) -> list[dict]:
    """Polls exactly as load_polls stores them (with _id and timestamp_utc beside the projected fields)."""
    rng = np.random.default_rng(seed)
    stores = [f"store-{i}" for i in range(50)] + ["ünïcødé", "1114277559207252776", ""]
    stamps = rng.integers(-(10**15), 2 * 10**15, n)
    documents = []
    for i, stamp in enumerate(stamps):
        documents.append(
            {
                "_id": bson.ObjectId(),
                "store_id": stores[i % len(stores)],
                "timestamp_us": int(stamp),
                "status": "active" if rng.random() < 0.7 else "inactive",
                "timestamp_utc": utils.us_to_datetime(int(stamp) // 1000 * 1000),
            }
        )
    return documents


def projected(document: dict, projection: dict) -> dict:
    """The document as a server projects it: fields kept (1), renamed ("$field", omitted when the field
    is missing) or left out (0).  mongomock's find takes no expressions."""
    out = {}
    for key, spec in projection.items():
        if isinstance(spec, str) and spec.startswith("$"):
            if spec[1:] in document:
                out[key] = document[spec[1:]]
        elif spec and key in document:
            out[key] = document[key]
    return out


def raw_batches(
    documents: list[dict], per_batch: int, projection: dict = store_mongo.RAW_POLL_PROJECTION
) -> list[bytes]:
    """Documents as a server sends them for `projection`: concatenated BSON, a batch at a time."""
    return [
        b"".join(bson.encode(projected(d, projection)) for d in documents[i : i + per_batch])
        for i in range(0, len(documents), per_batch)
    ] or []


def test_the_raw_projection_renames_the_poll_fields():
    document = poll_documents(1)[0]
    assert projected(document, store_mongo.RAW_POLL_PROJECTION) == {
        short: document[name] for short, name in store_mongo.RAW_POLL_FIELDS.items()
    }
    assert set(store_mongo.RAW_POLL_FIELDS.values()) == set(store_mongo.POLL_PROJECTION) - {"_id"}


@pytest.mark.parametrize("n, per_batch", [(0, 10), (1, 10), (997, 100), (5_000, 4_096)])
def test_arrow_and_dict_paths_give_identical_engine_input(n, per_batch):
    documents = poll_documents(n)
    by_arrow = store_mongo.polls_from_raw_batches(raw_batches(documents, per_batch))
    by_dicts = store_mongo.polls_from_documents(documents)
    pd.testing.assert_frame_equal(by_arrow, by_dicts, check_exact=True)
    assert list(by_dicts["active"]) == [d["status"] == "active" for d in documents]  # independently derived


def test_arrow_path_numbers_the_store_ids_across_batches():
    """Each batch has its own distinct ids in its own order (and a batch may be empty): one id is one
    Python string in the frame, whichever batches it came in."""
    documents = poll_documents(400)
    batches = raw_batches(documents[::-1][:150], 7) + [b""] + raw_batches(documents[::-1][150:], 61)
    by_arrow = store_mongo.polls_from_raw_batches(batches)
    pd.testing.assert_frame_equal(by_arrow, store_mongo.polls_from_documents(documents[::-1]), check_exact=True)
    strings = {}
    for value in by_arrow["store_id"]:
        assert strings.setdefault(value, value) is value


def test_arrow_path_refuses_a_malformed_poll():
    documents = poll_documents(3)
    del documents[1]["timestamp_us"]
    with pytest.raises(
        ValueError, match=r"^a stored poll lacks store_id, timestamp_us or status \(or has another type\)$"
    ):
        store_mongo.polls_from_raw_batches(raw_batches(documents, 2))


def test_polls_stored_as_32_bit_integers_read_as_int64_microseconds():
    """BSON keeps a small int (a poll less than 36 minutes after the epoch) as int32: the Arrow path reads it
    as int64 all the same, also when every poll of the read is one (a type inferred from the data would be int32)."""
    documents = [
        {"store_id": "a", "timestamp_us": 5, "status": "active"},
        {"store_id": "a", "timestamp_us": 2**31 - 1, "status": "inactive"},
    ]
    assert all(b"\x10timestamp_us\x00" in bson.encode(document) for document in documents)  # 0x10: int32
    by_arrow = store_mongo.polls_from_raw_batches(raw_batches(documents, 2))
    pd.testing.assert_frame_equal(
        by_arrow,
        pd.DataFrame(
            {
                "store_id": pd.Series(["a", "a"], dtype=object),
                "timestamp_us": np.array([5, 2**31 - 1], dtype=np.int64),
                "active": [True, False],
            }
        ),
        check_exact=True,
    )


def test_reading_polls_prints_no_binary_compatibility_warnings():
    """pymongoarrow's wheel warns on import that pyarrow's array structs grew (harmless: they only grew);
    the reader imports it with those warnings silenced.  A fresh interpreter, as the import warns once."""
    store_mongo._arrow_reader()
    code = "import store_mongo; store_mongo._arrow_reader()"
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_read_chunk_on_the_arrow_path_equals_the_dict_path(mongo, monkeypatch, tmp_path):
    """read_chunk as it runs on a server (raw batches decoded by pymongoarrow) gives the same frames and
    the same report as on mongomock's dicts."""
    database.load_dir(mongo, write_data_dir(tmp_path / "data"))
    ids = mongo.report_store_ids(FAR_FUTURE_US)
    now_us = mongo.latest_poll_us()
    by_dicts = mongo.read_chunk(ids, now_us - utils.WEEK_US, now_us)

    def find_raw_batches(self, query, projection, batch_size=2):
        assert projection == store_mongo.RAW_POLL_PROJECTION
        return raw_batches(list(self.find(query)), 2, projection)

    monkeypatch.setattr(mongomock.collection.Collection, "find_raw_batches", find_raw_batches, raising=False)
    mongo.kind = "mongodb"  # read as on a server
    by_arrow = mongo.read_chunk(ids, now_us - utils.WEEK_US, now_us)
    for arrow_frame, dict_frame in zip(by_arrow, by_dicts):
        pd.testing.assert_frame_equal(arrow_frame, dict_frame, check_exact=True)
    report = utils.uptime_report(*by_arrow, now_us)
    assert report.to_dict("records") == TINY_REPORT


# --------------------------------------------------------------------------- stored CSVs and report records


def test_the_report_record_shows_its_as_of_as_a_date_to_the_millisecond(mongo):
    mongo.create_report("m" * 32, None)
    mongo.update_report("m" * 32, as_of_us=1_674_554_400_123_999)  # 2023-01-24 10:00:00.123999 UTC
    record = mongo.db[database.REPORTS].find_one({"report_id": "m" * 32})
    assert record["as_of_us"] == 1_674_554_400_123_999
    assert record["as_of"] == dt.datetime(2023, 1, 24, 10, 0, 0, 123_000, tzinfo=dt.UTC)


def test_report_times_are_aware_even_from_a_client_that_gives_naive_dates(mongo):
    mongo._client = mongomock.MongoClient()  # not tz_aware: its dates come back naive
    mongo.create_report("n" * 32, None)
    mongo.complete_report("n" * 32, b"x\n", 0)
    for record in (mongo.find_report("n" * 32), *mongo.list_reports()):
        for key in ("created_at", "heartbeat_at", "finished_at"):
            assert record[key].utcoffset() == dt.timedelta(0), key


def test_reports_are_listed_and_kept_by_creation_time_not_by_insertion(mongo):
    """Two reports created at once can be inserted in the other order than their creation times (the time is
    taken, then the record written): the creation time decides, for the list and for what is kept."""
    ids = ["1" * 32, "2" * 32, "3" * 32]
    for report_id in ids:
        mongo.create_report(report_id, None)
        mongo.complete_report(report_id, b"x\n", 0)
    now = database.now_utc()
    for report_id, age in zip(ids, (0, 2, 1)):  # the first inserted was created last
        mongo.db[database.REPORTS].update_one(
            {"report_id": report_id}, {"$set": {"created_at": now - dt.timedelta(seconds=age)}}
        )
    assert [r["report_id"] for r in mongo.list_reports()] == ["1" * 32, "3" * 32, "2" * 32]
    assert mongo.delete_finished_reports(now - dt.timedelta(days=1), keep_newest=2) == ["2" * 32]


def test_finished_reports_are_deleted_a_batch_at_a_time(mongo, monkeypatch):
    monkeypatch.setattr(database, "BATCH_SIZE", 2)
    ids = [str(n) * 32 for n in range(1, 6)]
    for report_id in ids:
        mongo.create_report(report_id, None)
        mongo.complete_report(report_id, b"x\n", 0)
    assert mongo.delete_finished_reports(database.now_utc() + dt.timedelta(hours=1), keep_newest=0) == ids
    assert (mongo.count_reports(), mongo.db[store_mongo.REPORT_CHUNKS].count_documents({})) == (0, 0)


def test_csv_chunks_stay_under_the_document_limit(mongo):
    assert store_mongo.CSV_CHUNK_BYTES < store_mongo.BSON_DOCUMENT_LIMIT - 1024
    header = (",".join(utils.REPORT_COLUMNS) + "\n").encode()
    payload = header + b"".join(b"s%07d,60.0,20.5,150.25,0.0,3.5,17.75\n" % n for n in range(14_000))  # 14,000 stores
    mongo.create_report("c" * 32, None)
    mongo.complete_report("c" * 32, payload, 14_000)
    chunks = list(mongo.db[store_mongo.REPORT_CHUNKS].find({"report_id": "c" * 32}))
    assert len(chunks) == -(-len(payload) // store_mongo.CSV_CHUNK_BYTES) == 3
    assert all(len(bson.encode(chunk)) < store_mongo.BSON_DOCUMENT_LIMIT for chunk in chunks)
    assert mongo.read_report_csv(mongo.find_report("c" * 32)) == payload
    assert mongo.db[store_mongo.HISTORY].count_documents({"report_id": "c" * 32}) == 14_000


# --------------------------------------------------------------------------- the decorated methods (mutation run K)


@pytest.fixture
def frozen_clock(monkeypatch):
    """The client's clock (mongomock's stand-in for the server's) held still, moved by hand: clock[0]."""
    clock = [dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)]
    monkeypatch.setattr(store_mongo, "now_utc", lambda: clock[0])
    monkeypatch.setattr(database, "LEASE_SECONDS", 60)
    return clock


def test_renewing_a_lease_pushes_only_that_holders_expiry_a_lease_period_ahead(mongo, frozen_clock):
    start = frozen_clock[0]
    assert mongo._try_lease("read", "r1") and mongo._try_lease("read", "r2")
    frozen_clock[0] = start + dt.timedelta(seconds=30)
    assert mongo._renew_lease("read", "r1") is True
    lock = mongo.db["locks"].find_one({"_id": "data"})
    assert lock["readers"] == [
        {"holder": "r1", "expires": start + dt.timedelta(seconds=90)},
        {"holder": "r2", "expires": start + dt.timedelta(seconds=60)},
    ]
    assert mongo._renew_lease("write", "r1") is False  # not in that mode
    mongo._release_lease("read", "r1")
    mongo._release_lease("read", "r2")
    assert mongo._try_lease("write", "w")
    frozen_clock[0] = start + dt.timedelta(seconds=45)
    assert mongo._renew_lease("write", "w") is True
    assert mongo.db["locks"].find_one({"_id": "data"})["writer"] == {
        "holder": "w",
        "expires": start + dt.timedelta(seconds=105),
    }
    assert mongo._renew_lease("write", "someone else") is False
    assert mongo._renew_lease("read", "w") is False


def test_stored_polls_are_the_documented_documents_on_the_insert_and_the_upsert_path(mongo):
    """{store_id, timestamp_us, timestamp_utc (the BSON date: whole milliseconds, for people), status}."""
    first = pd.DataFrame(
        {
            "store_id": ["a", "b"],
            "timestamp_us": [1_674_554_400_123_999, 1_674_558_000_000_001],
            "active": [True, False],
        }
    )
    mongo.load_polls(first)  # into an empty collection: plain inserts
    later = pd.DataFrame(
        {
            "store_id": ["a", "c"],
            "timestamp_us": [1_674_554_400_123_999, 1_674_561_600_999_500],
            "active": [False, False],
        }
    )
    mongo.load_polls(later)  # into a collection with polls: upserts (one key again, one new)
    stored = sorted(mongo.db[database.STATUS].find({}, {"_id": 0}), key=lambda d: d["store_id"])
    utc = dt.UTC
    assert stored == [
        {
            "store_id": "a",
            "timestamp_us": 1_674_554_400_123_999,
            "status": "inactive",
            "timestamp_utc": dt.datetime(2023, 1, 24, 10, 0, 0, 123_000, tzinfo=utc),
        },
        {
            "store_id": "b",
            "timestamp_us": 1_674_558_000_000_001,
            "status": "inactive",
            "timestamp_utc": dt.datetime(2023, 1, 24, 11, 0, 0, tzinfo=utc),
        },
        {
            "store_id": "c",
            "timestamp_us": 1_674_561_600_999_500,
            "status": "inactive",
            "timestamp_utc": dt.datetime(2023, 1, 24, 12, 0, 0, 999_000, tzinfo=utc),
        },
    ]


def test_a_fresh_load_that_meets_a_racing_load_keeps_every_poll(mongo, monkeypatch):
    """Into an empty collection the polls are inserted unordered: a key another load wrote in the meantime
    fails alone (and is upserted after), the polls after it still land."""
    mongo.migrate()  # the unique key, as on a server
    real_insert_many = mongomock.collection.Collection.insert_many

    def racing_insert_many(self, documents, *args, **kwargs):
        real_insert_many(self, [{**documents[1], "status": "active"}])  # the other load's copy of the second poll
        return real_insert_many(self, documents, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "insert_many", racing_insert_many)
    frame = pd.DataFrame(
        {"store_id": ["s0", "s1", "s2"], "timestamp_us": [1000, 2000, 3000], "active": [False, False, False]}
    )
    assert mongo.load_polls(frame) == 3
    stored = {d["store_id"]: d["status"] for d in mongo.db[database.STATUS].find()}
    assert stored == {"s0": "inactive", "s1": "inactive", "s2": "inactive"}  # this load's status wins


def test_upserts_are_sent_unordered_so_one_racing_key_does_not_stop_the_rest(mongo, monkeypatch):
    """Two loads upserting one new key at once: the server fails one upsert (duplicate key); in an unordered
    bulk write the other operations still run (an ordered one stops at the first error)."""
    mongo.load_polls(_polls_frame(1))  # not empty: the next load upserts
    real_bulk_write = mongomock.collection.Collection.bulk_write

    def racing_bulk_write(self, operations, ordered=True, **kwargs):
        for index, operation in enumerate(operations):
            if index == 1:  # lost the race: the server reports it and goes on only when unordered
                if ordered:
                    break
                continue
            real_bulk_write(self, [operation], ordered=ordered, **kwargs)
        raise BulkWriteError(
            {
                "writeErrors": [{"index": 1, "code": 11000, "errmsg": "E11000 duplicate key"}],
                "writeConcernErrors": [],
                "nInserted": 0,
                "nUpserted": len(operations) - 1,
            }
        )

    monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", racing_bulk_write)
    frame = pd.DataFrame({"store_id": ["n0", "n1", "n2"], "timestamp_us": [5000, 6000, 7000], "active": [True] * 3})
    assert mongo.load_polls(frame) == 3
    assert sorted(d["store_id"] for d in mongo.db[database.STATUS].find({"store_id": {"$in": ["n0", "n2"]}})) == [
        "n0",
        "n2",
    ]


def test_a_retried_completion_leaves_one_copy_of_each_chunk(mongo, monkeypatch):
    monkeypatch.setattr(store_mongo, "CSV_CHUNK_BYTES", 4)
    mongo.create_report("k" * 32, None)
    calls = flaky(monkeypatch, "update_one", [AutoReconnect("answer lost")])  # the final update: all again
    mongo.complete_report("k" * 32, b"abcdefghij", 2)
    assert calls["n"] == 2
    chunks = sorted((d["n"], d["data"]) for d in mongo.db[store_mongo.REPORT_CHUNKS].find({"report_id": "k" * 32}))
    assert chunks == [(0, b"abcd"), (1, b"efgh"), (2, b"ij")]
    record = mongo.db[database.REPORTS].find_one({"report_id": "k" * 32})
    assert (record["csv_chunks"], record["csv_bytes"]) == (3, 10)
    assert mongo.read_report_csv(mongo.find_report("k" * 32)) == b"abcdefghij"


def test_a_completion_after_a_failed_longer_one_drops_the_extra_chunks(mongo, monkeypatch):
    monkeypatch.setattr(store_mongo, "CSV_CHUNK_BYTES", 4)
    mongo.create_report("k" * 32, None)
    flaky(monkeypatch, "update_one", [OperationFailure("unauthorized", 13)])  # not retried: the job fails
    with pytest.raises(OperationFailure):
        mongo.complete_report("k" * 32, b"abcdefghij", 2)  # three chunks stored, the record not updated
    mongo.complete_report("k" * 32, b"abcde", 1)  # the job run again, with a shorter CSV: two chunks
    assert sorted(d["n"] for d in mongo.db[store_mongo.REPORT_CHUNKS].find({"report_id": "k" * 32})) == [0, 1]
    assert mongo.read_report_csv(mongo.find_report("k" * 32)) == b"abcde"


def test_report_store_ids_falls_back_to_a_group_when_distinct_is_too_big(mongo, monkeypatch):
    """A server refuses distinct when its answer passes 16 MB; the $group pipeline gives the same ids."""
    database.load_file(
        mongo,
        sources.STATUS_FILE,
        b"store_id,status,timestamp_utc\n"
        b"b,active,2023-01-24T10:00:00Z\na,active,2023-01-24T11:00:00Z\n"
        b"c,active,2023-01-24T12:00:00Z\nb,inactive,2023-01-24T12:30:00Z\n",
    )
    at_noon = utils.datetime_to_us(dt.datetime(2023, 1, 24, 12, tzinfo=dt.UTC))
    assert mongo.report_store_ids(at_noon - 1) == ["a", "b"]

    def too_big(self, *args, **kwargs):
        raise OperationFailure("distinct too big, 16mb cap", 17217)

    monkeypatch.setattr(mongomock.collection.Collection, "distinct", too_big)
    assert mongo.report_store_ids(at_noon - 1) == ["a", "b"]
    assert mongo.report_store_ids(FAR_FUTURE_US) == ["a", "b", "c"]


def test_the_arrow_path_reads_only_the_chunks_stores_and_window(mongo, monkeypatch):
    database.load_file(
        mongo,
        sources.STATUS_FILE,
        b"store_id,status,timestamp_utc\n"
        b"a,active,2023-01-24T10:00:00Z\nb,active,2023-01-24T11:00:00Z\n"
        b"a,inactive,2023-01-24T12:00:00Z\na,active,2023-01-24T14:00:00Z\n",
    )
    now_us = utils.datetime_to_us(dt.datetime(2023, 1, 24, 13, tzinfo=dt.UTC))
    by_dicts = mongo.read_chunk(["a"], now_us - utils.WEEK_US, now_us)

    def find_raw_batches(self, query, projection, batch_size=2):
        return raw_batches(list(self.find(query)), 2, projection)

    monkeypatch.setattr(mongomock.collection.Collection, "find_raw_batches", find_raw_batches, raising=False)
    mongo.kind = "mongodb"  # read as on a server
    by_arrow = mongo.read_chunk(["a"], now_us - utils.WEEK_US, now_us)
    for arrow_frame, dict_frame in zip(by_arrow, by_dicts):
        pd.testing.assert_frame_equal(arrow_frame, dict_frame, check_exact=True)
    assert list(by_arrow[0]["timestamp_us"]) == [now_us - 3 * 3_600_000_000, now_us - 3_600_000_000]


def test_read_chunk_gives_every_poll_from_the_look_back_on(mongo):
    """Polls from LOOKBACK_US (3 h) before the window on, and none older once a store has one there."""
    database.load_file(
        mongo,
        sources.STATUS_FILE,
        b"store_id,status,timestamp_utc\n"
        b"a,active,2023-01-24T05:00:00Z\na,inactive,2023-01-24T08:00:00Z\n"
        b"a,active,2023-01-24T10:00:00Z\na,inactive,2023-01-24T11:30:00Z\n",
    )
    since = utils.datetime_to_us(dt.datetime(2023, 1, 24, 10, tzinfo=dt.UTC))
    polls = mongo.read_chunk(["a"], since, since + 3 * 3_600_000_000)[0]
    hour = 3_600_000_000
    assert list(polls["timestamp_us"]) == [since - 2 * hour, since, since + hour + hour // 2]


def test_a_new_report_is_stored_as_the_documented_running_document_and_a_retry_changes_nothing(mongo):
    mongo.create_report("r" * 32, 1674555240000000)
    doc = mongo.db["reports"].find_one({"report_id": "r" * 32}, {"_id": 0})
    created = doc.pop("created_at")
    assert isinstance(created, dt.datetime) and doc.pop("heartbeat_at") == created
    assert doc == {
        "report_id": "r" * 32,
        "status": "Running",
        "finished_at": None,
        "requested_as_of_us": 1674555240000000,
        "as_of_us": None,
        "progress": {"done": 0, "total": None},
        "row_count": None,
        "error": None,
        "csv_chunks": None,
        "csv_bytes": None,
        "as_of_after_newest_poll": False,
        "trigger": "api",
    }
    mongo.create_report("r" * 32, None, trigger="schedule")  # a retry after a lost answer
    assert mongo.db["reports"].find_one({"report_id": "r" * 32}, {"_id": 0}) == {
        **doc,
        "created_at": created,
        "heartbeat_at": created,
    }


def test_a_writer_whose_lease_expired_gives_way_to_a_new_writer(mongo):
    assert mongo._try_lease("write", "dead")
    assert not mongo._try_lease("write", "w")  # alive: w waits
    mongo.db["locks"].update_one({"_id": "data"}, {"$set": {"writer.expires": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}})
    assert mongo._try_lease("write", "w")
    assert mongo.db["locks"].find_one({"_id": "data"})["writer"]["holder"] == "w"


def test_a_writers_retry_after_a_lost_answer_finds_its_lease_held(mongo):
    assert mongo._try_lease("write", "w")
    assert mongo._try_lease("write", "w") is True  # the first answer was lost: the retry says yes
    assert mongo.db["locks"].find_one({"_id": "data"})["waiting"] is None


def test_a_writer_that_took_the_lease_leaves_the_waiting_mark_to_the_next_writer(mongo):
    assert mongo._try_lease("read", "r")
    assert not mongo._try_lease("write", "w1")  # marks itself waiting
    mongo._release_lease("read", "r")
    assert mongo._try_lease("write", "w1")  # takes the lease and clears its mark
    assert not mongo._try_lease("write", "w2")  # so w2 can mark itself waiting
    mongo._release_lease("write", "w1")
    assert not mongo._try_lease("read", "r2")  # w2 waits: a new reader is refused
    assert mongo._try_lease("write", "w2")


def test_the_lock_document_starts_with_no_writer_no_readers_and_no_one_waiting(mongo):
    mongo._ensure_lock_doc()
    mongo._ensure_lock_doc()  # a second process: nothing changes
    assert list(mongo.db["locks"].find()) == [{"_id": "data", "writer": None, "readers": [], "waiting": None}]


def test_a_readers_retry_after_a_lost_answer_finds_its_lease_held(mongo):
    """The first attempt took the read lease but its answer was lost: the retry says yes, without a second slot,
    even though a writer has started waiting since."""
    assert mongo._try_lease("read", "r")
    assert not mongo._try_lease("write", "w")  # marks itself waiting: new readers are refused
    assert mongo._try_lease("read", "r") is True
    assert [slot["holder"] for slot in mongo.db["locks"].find_one({"_id": "data"})["readers"]] == ["r"]


def test_a_writer_waiting_first_goes_before_a_writer_that_comes_later(mongo):
    assert mongo._try_lease("read", "r")
    assert not mongo._try_lease("write", "w1")  # marks itself waiting
    mongo._release_lease("read", "r")
    assert not mongo._try_lease("write", "w2")  # the lease is free, but w1 waits (alive) before it
    assert mongo._try_lease("write", "w1")


def test_the_mark_of_a_waiting_writer_that_died_stops_no_one(mongo, frozen_clock):
    assert mongo._try_lease("read", "r1")
    assert not mongo._try_lease("write", "w1")  # marks itself waiting, then stops trying (its process died)
    frozen_clock[0] += dt.timedelta(seconds=61)  # past the mark's expiry (and r1's: it did not renew)
    assert mongo._try_lease("read", "r2")  # a new reader is not held off by the dead mark
    assert [slot["holder"] for slot in mongo.db["locks"].find_one({"_id": "data"})["readers"]] == ["r2"]
    mongo._release_lease("read", "r2")
    assert mongo._try_lease("write", "w2")  # nor is another writer


def test_a_call_still_failing_when_its_retry_time_is_up_raises_its_own_error(mongo):
    mongo.job_retry_seconds = 0  # no time to retry: the first failure is the last
    attempts = []

    def read(self, a, *, b):
        attempts.append((a, b))
        if len(attempts) < 5:
            raise AutoReconnect("down")
        return a + b

    with pytest.raises(AutoReconnect, match="down"):
        store_mongo.retried(read)(mongo, 1, b=2)
    assert attempts == [(1, 2)]


def test_a_retried_call_inside_a_request_gets_its_arguments_and_is_not_retried(mongo):
    attempts = []

    def read(self, a, *, b):
        attempts.append((a, b))
        raise AutoReconnect("down")

    with store_mongo._request_scope(5):
        with pytest.raises(AutoReconnect):
            store_mongo.retried(read)(mongo, 1, b=2)
    assert attempts == [(1, 2)]


# --------------------------------------------------------------------------- schema 3 without transactions
# The schedule's ticks, the history and the alert state are written without multi-document transactions (a
# standalone server has none): what a crash, a lost answer or a second worker between two writes leaves.

TICK = 1_700_000_000_000_000
IDS = [f"{n:032x}" for n in range(1, 9)]
HEADER = (",".join(utils.REPORT_COLUMNS) + "\n").encode()
CSV_A = HEADER + b"a,60.0,20.5,150.25,0.0,3.5,17.75\nb,30.0,10.0,100.0,30.0,14.0,68.0\n"
CSV_B = HEADER + b"a,45.5,21.0,151.0,14.5,3.0,17.0\nb,0.0,0.01,99.99,60.0,23.99,68.01\n"
SECOND_US = 1_000_000


class ProcessDied(BaseException):
    """What a process that stops at this point does: nothing after it runs (no `except Exception` sees it)."""


def worker(mongo: MongoStore) -> MongoStore:
    """Another store on the same database: a second worker or host."""
    other = MongoStore("mongomock://", mongo.name)
    other._client = mongo._client
    other.retry_wait = tenacity.wait_none()
    return other


def completed(mongo: MongoStore, report_id: str, as_of_us: int, payload: bytes) -> None:
    mongo.create_report(report_id, None)
    mongo.update_report(report_id, as_of_us=as_of_us)
    assert mongo.complete_report(report_id, payload, payload.count(b"\n") - 1)


def test_two_workers_claiming_one_tick_start_one_report_and_the_tick_says_which(mongo, frozen_clock):
    other = worker(mongo)
    assert mongo.claim_tick(TICK, IDS[0]) == "started"
    assert other.claim_tick(TICK, IDS[1]) == "taken"
    assert [(r["report_id"], r["status"], r["trigger"]) for r in other.list_reports()] == [
        (IDS[0], "Running", "schedule")
    ]
    claimed_us = utils.datetime_to_us(frozen_clock[0])
    assert mongo.db[store_mongo.TICKS].find_one() == {
        "_id": TICK,
        "outcome": "started",
        "report_id": IDS[0],
        "claimed_by": IDS[0],
        "claimed_at": frozen_clock[0],
        "claimed_at_us": claimed_us,
        "recorded": True,
    }
    assert other.last_tick() == {
        "tick_us": TICK,
        "outcome": "started",
        "report_id": IDS[0],
        "claimed_at_us": claimed_us,
    }


def test_a_claim_whose_answer_was_lost_is_found_again_by_its_retry(mongo, monkeypatch):
    real, lost = mongomock.collection.Collection.insert_one, []

    def applied_then_lost(self, document, *args, **kwargs):
        result = real(self, document, *args, **kwargs)
        if self.name == store_mongo.TICKS and not lost:
            lost.append(document["_id"])
            raise AutoReconnect("connection reset after the write")
        return result

    monkeypatch.setattr(mongomock.collection.Collection, "insert_one", applied_then_lost)
    assert mongo.claim_tick(TICK, IDS[0]) == "started"  # its retry met its own claim: a duplicate key, claimed_by it
    assert lost == [TICK]
    assert [(r["report_id"], r["trigger"]) for r in mongo.list_reports()] == [(IDS[0], "schedule")]
    assert worker(mongo).claim_tick(TICK, IDS[1]) == "taken"


def test_a_claimer_that_died_before_the_report_record_is_a_lost_start_recorded_failed(mongo, frozen_clock, monkeypatch):
    """The tick says started but the record was never made: the next tick is skipped as if the report ran, until
    the claim is older than two lease periods; then the report is recorded Failed and the next tick starts."""
    other = worker(mongo)

    def dies(*args, **kwargs):
        raise ProcessDied

    monkeypatch.setattr(mongo, "create_report", dies)
    with pytest.raises(ProcessDied):
        mongo.claim_tick(TICK, IDS[0])
    claimed = frozen_clock[0]
    assert other.find_report(IDS[0]) is None
    assert other.last_tick()["report_id"] == IDS[0] and other.find_report(IDS[0]) is None  # not yet lost
    frozen_clock[0] = claimed + dt.timedelta(seconds=119)
    assert other.claim_tick(TICK + 60 * SECOND_US, IDS[1]) == "skipped"
    frozen_clock[0] = claimed + dt.timedelta(seconds=121)
    assert other.last_tick()["tick_us"] == TICK + 60 * SECOND_US  # the newest tick: the skipped one
    assert other.claim_tick(TICK + 120 * SECOND_US, IDS[2]) == "started"  # the lost start recorded first
    lost = other.find_report(IDS[0])
    assert (lost["status"], lost["trigger"], lost["error"]) == ("Failed", "schedule", store_mongo.LOST_START_ERROR)
    assert lost["created_at"] == lost["heartbeat_at"] == claimed and lost["finished_at"] == frozen_clock[0]
    assert other.find_report(IDS[1]) is None
    assert other.db[store_mongo.TICKS].count_documents({"recorded": True}) == 3


def test_the_newest_lost_start_is_recorded_by_last_tick_or_by_the_stale_sweep(mongo, frozen_clock, monkeypatch):
    other = worker(mongo)
    monkeypatch.setattr(mongo, "create_report", lambda *args, **kwargs: (_ for _ in ()).throw(ProcessDied))
    with pytest.raises(ProcessDied):
        mongo.claim_tick(TICK, IDS[0])
    frozen_clock[0] += dt.timedelta(seconds=121)
    with pytest.raises(ProcessDied):
        mongo.claim_tick(TICK + 600 * SECOND_US, IDS[1])  # started: it recorded the first lost start, then died
    assert other.find_report(IDS[0])["error"] == store_mongo.LOST_START_ERROR
    assert other.last_tick()["report_id"] == IDS[1] and other.find_report(IDS[1]) is None  # young yet
    frozen_clock[0] += dt.timedelta(seconds=121)
    assert other.last_tick()["report_id"] == IDS[1]
    assert other.find_report(IDS[1])["error"] == store_mongo.LOST_START_ERROR  # last_tick recorded it
    assert other.fail_stale_reports(dt.timedelta(seconds=60)) == 0  # nothing left to record


def test_the_stale_sweep_records_a_lost_start_and_counts_it(mongo, frozen_clock, monkeypatch):
    monkeypatch.setattr(mongo, "create_report", lambda *args, **kwargs: (_ for _ in ()).throw(ProcessDied))
    with pytest.raises(ProcessDied):
        mongo.claim_tick(TICK, IDS[0])
    other = worker(mongo)
    assert other.fail_stale_reports(dt.timedelta(seconds=60)) == 0  # claimed just now
    frozen_clock[0] += dt.timedelta(seconds=61)
    assert other.fail_stale_reports(dt.timedelta(seconds=60)) == 1
    assert other.find_report(IDS[0])["error"] == store_mongo.LOST_START_ERROR
    assert other.fail_stale_reports(dt.timedelta(seconds=60)) == 0


def test_a_claimer_whose_report_record_fails_records_it_failed_at_once_and_raises(mongo, monkeypatch):
    flaky(monkeypatch, "update_one", [OperationFailure("unauthorized", 13)])  # the record's upsert, not retried
    with pytest.raises(OperationFailure, match="unauthorized"):
        mongo.claim_tick(TICK, IDS[0])
    report = mongo.find_report(IDS[0])
    assert (report["status"], report["error"]) == ("Failed", store_mongo.LOST_START_ERROR)
    assert mongo.claim_tick(TICK + 1, IDS[1]) == "started"  # not skipped: that report is not running


def test_a_tick_is_skipped_while_the_scheduled_reports_heartbeat_is_younger_than_two_lease_periods(mongo, frozen_clock):
    start = frozen_clock[0]
    assert mongo.claim_tick(TICK, IDS[0]) == "started"
    frozen_clock[0] = start + dt.timedelta(seconds=119)
    assert mongo.claim_tick(TICK + 1, IDS[1]) == "skipped"
    mongo.beat([IDS[0]])  # mongomock's $currentDate: the real clock, well before the frozen one
    mongo.db[database.REPORTS].update_one({"report_id": IDS[0]}, {"$set": {"heartbeat_at": frozen_clock[0]}})
    frozen_clock[0] += dt.timedelta(seconds=119)
    assert mongo.claim_tick(TICK + 2, IDS[2]) == "skipped"  # a beat pushed it on
    frozen_clock[0] += dt.timedelta(seconds=2)
    assert mongo.claim_tick(TICK + 3, IDS[3]) == "started"  # 121 s without a beat: taken for dead
    assert mongo.find_report(IDS[0])["status"] == "Running"  # left to the stale sweep


def test_once_prepared_a_scheduled_report_counts_as_running_as_long_as_the_stale_sweep_says(mongo, frozen_clock):
    assert mongo.prepare(dt.timedelta(seconds=30)) == 0
    start = frozen_clock[0]
    assert mongo.claim_tick(TICK, IDS[0]) == "started"
    frozen_clock[0] = start + dt.timedelta(seconds=29)
    assert mongo.claim_tick(TICK + 1, IDS[1]) == "skipped"
    frozen_clock[0] = start + dt.timedelta(seconds=31)
    assert mongo.claim_tick(TICK + 2, IDS[2]) == "started"  # the sweep would fail the first one now


def test_only_the_newest_ticks_are_kept_and_an_older_one_is_never_claimed_again(mongo, monkeypatch):
    monkeypatch.setattr(store_mongo, "TICKS_KEPT", 3)
    for n in range(5):
        assert mongo.claim_tick(TICK + n, IDS[n]) == "started"
        mongo.fail_report(IDS[n], "done with")
    assert sorted(d["_id"] for d in mongo.db[store_mongo.TICKS].find()) == [TICK + 2, TICK + 3, TICK + 4]
    assert mongo.claim_tick(TICK, IDS[5]) == "taken"  # forgotten, and older than every kept tick
    assert mongo.claim_tick(TICK + 1, IDS[5]) == "taken"
    assert mongo.find_report(IDS[5]) is None


def test_history_rows_have_deterministic_ids_so_a_retried_completion_keeps_each_once(mongo, monkeypatch):
    mongo.create_report(IDS[0], None)
    mongo.update_report(IDS[0], as_of_us=TICK)
    flaky(monkeypatch, "update_one", [AutoReconnect("the flip's answer lost")])  # all of it again
    assert mongo.complete_report(IDS[0], CSV_A, 2) is True
    rows = sorted(mongo.db[store_mongo.HISTORY].find(), key=lambda doc: doc["_id"])
    assert [doc["_id"] for doc in rows] == [f"{IDS[0]}/a", f"{IDS[0]}/b"]
    created = mongo.find_report(IDS[0])["created_at"]
    assert rows[0] == {
        "_id": f"{IDS[0]}/a",
        "report_id": IDS[0],
        "store_id": "a",
        "as_of_us": TICK,
        "created_us": utils.datetime_to_us(created),
        **dict(zip(utils.REPORT_COLUMNS[1:], [60.0, 20.5, 150.25, 0.0, 3.5, 17.75])),
    }


def test_a_report_csv_whose_rows_cannot_be_read_is_refused_before_anything_is_stored(mongo):
    mongo.create_report(IDS[0], None)
    for payload in (HEADER + b"a,fast,1,1,1,1,1\n", HEADER + b'a,"1\n'):
        with pytest.raises(ValueError, match=f"^report {IDS[0]}: the rows of its CSV cannot be read: "):
            mongo.complete_report(IDS[0], payload, 1)
    assert mongo.find_report(IDS[0])["status"] == "Running"
    assert mongo.db[store_mongo.REPORT_CHUNKS].count_documents({}) == 0
    assert mongo.complete_report(IDS[0], HEADER, 0) is True  # no rows: nothing for the history
    mongo.create_report(IDS[1], None)  # bytes that are not a report CSV (as in the SQLite store): kept, no history
    assert mongo.complete_report(IDS[1], b"store_id,uptime\nx,1.0\n", 1) is True
    assert mongo.db[store_mongo.HISTORY].count_documents({}) == 0


def test_a_report_failed_while_its_history_is_written_keeps_no_rows_and_no_csv(mongo, monkeypatch):
    mongo.create_report(IDS[0], None)
    real = mongomock.collection.Collection.insert_many

    def swept_meanwhile(self, documents, *args, **kwargs):
        if self.name == store_mongo.HISTORY:
            mongo.fail_report(IDS[0], database.STALE_ERROR)  # another process's sweep, between two writes
        return real(self, documents, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "insert_many", swept_meanwhile)
    assert mongo.complete_report(IDS[0], CSV_A, 2) is False
    assert mongo.db[store_mongo.HISTORY].count_documents({}) == 0
    assert mongo.db[store_mongo.REPORT_CHUNKS].count_documents({}) == 0


def test_rows_of_a_report_that_never_turned_complete_are_never_shown_nor_shorten_a_page(mongo, monkeypatch):
    for n, as_of_us in enumerate((TICK, TICK + 1, TICK + 2)):
        completed(mongo, IDS[n], as_of_us, CSV_A)
    for n in (3, 4):  # newer than every Complete one
        mongo.create_report(IDS[n], None)
        mongo.update_report(IDS[n], as_of_us=TICK + 10 + n)
        flaky(monkeypatch, "update_one", [ProcessDied()])  # the flip never happens: the process died after the rows
        with pytest.raises(ProcessDied):
            mongo.complete_report(IDS[n], CSV_B, 2)
        monkeypatch.undo()
    assert mongo.db[store_mongo.HISTORY].count_documents({"store_id": "a"}) == 5
    assert [p["report_id"] for p in mongo.store_history("a", limit=2)] == [IDS[2], IDS[1]]
    assert [p["report_id"] for p in mongo.store_history("a")] == [IDS[2], IDS[1], IDS[0]]
    assert mongo.fail_stale_reports(dt.timedelta(seconds=-1)) == 2  # swept: Failed, still never shown
    assert [p["report_id"] for p in mongo.store_history("a", limit=3)] == [IDS[2], IDS[1], IDS[0]]


def test_a_deletion_stopped_after_the_record_shows_no_history_and_retention_sweeps_its_data(mongo, monkeypatch, caplog):
    completed(mongo, IDS[0], TICK, CSV_A)
    completed(mongo, IDS[1], TICK + 1, CSV_B)
    monkeypatch.setattr(mongo, "_drop_report_data", lambda ids: (_ for _ in ()).throw(ProcessDied))
    with pytest.raises(ProcessDied):
        mongo.delete_report(IDS[0])
    monkeypatch.undo()
    assert mongo.db[store_mongo.HISTORY].count_documents({"report_id": IDS[0]}) == 2  # left behind
    assert [p["report_id"] for p in mongo.store_history("a")] == [IDS[1]]  # and never shown
    with caplog.at_level(logging.WARNING, logger="store_mongo"):
        assert mongo.delete_finished_reports(database.now_utc() - dt.timedelta(days=1), keep_newest=10) == []
    assert [r.getMessage() for r in caplog.records] == [
        f"deleting the stored CSVs and history of 1 reports whose records are gone (a deletion stopped part-way): "
        f"{IDS[0]}"
    ]
    assert {doc["report_id"] for doc in mongo.db[store_mongo.HISTORY].find()} == {IDS[1]}
    assert {doc["report_id"] for doc in mongo.db[store_mongo.REPORT_CHUNKS].find()} == {IDS[1]}


def test_delete_report_answers_false_and_touches_nothing_for_a_running_report(mongo, monkeypatch):
    mongo.create_report(IDS[0], None)
    mongo.db[store_mongo.REPORT_CHUNKS].insert_one({"report_id": IDS[0], "n": 0, "data": b"being stored"})
    assert mongo.delete_report(IDS[0]) is False
    assert mongo.db[store_mongo.REPORT_CHUNKS].count_documents({}) == 1


def test_iter_report_csv_reads_chunks_in_order_and_refuses_missing_ones_before_the_first_piece(mongo, monkeypatch):
    monkeypatch.setattr(store_mongo, "CSV_CHUNK_BYTES", 10)
    completed(mongo, IDS[0], TICK, CSV_A)
    report = mongo.find_report(IDS[0])
    assert mongo.db[store_mongo.REPORT_CHUNKS].count_documents({}) == -(-len(CSV_A) // 10)
    assert list(mongo.iter_report_csv(report, chunk_bytes=4))[:3] == [CSV_A[0:4], CSV_A[4:8], CSV_A[8:10]]
    assert b"".join(mongo.iter_report_csv(report, chunk_bytes=4)) == CSV_A
    mongo.db[store_mongo.REPORT_CHUNKS].delete_one({"report_id": IDS[0], "n": 5})
    with pytest.raises(ValueError, match="stored CSV is incomplete"):
        mongo.iter_report_csv(report)  # at the call: nothing was sent yet
    left = mongo.db[store_mongo.REPORT_CHUNKS].count_documents({})
    mongo.db[store_mongo.REPORTS].update_one({"report_id": IDS[0]}, {"$set": {"csv_chunks": left}})
    pieces = mongo.iter_report_csv(report)  # as many chunks as the record says, but a gap in their numbers
    with pytest.raises(ValueError, match="stored CSV is incomplete"):
        b"".join(pieces)
    with pytest.raises(ValueError, match="chunk_bytes must be at least 1"):
        mongo.iter_report_csv(report, chunk_bytes=0)


def test_iter_report_csv_cuts_the_4_mb_chunks_of_earlier_releases_into_pieces(mongo):
    payload = HEADER + b"".join(b"s%07d,60.0,20.5,150.25,0.0,3.5,17.75\n" % n for n in range(130_000))
    completed(mongo, IDS[0], TICK, HEADER)
    chunks = mongo.db[store_mongo.REPORT_CHUNKS]
    chunks.delete_many({})
    big = 4 * 1024 * 1024
    chunks.insert_many([{"report_id": IDS[0], "n": n, "data": payload[n * big : (n + 1) * big]} for n in range(2)])
    mongo.db[database.REPORTS].update_one({"report_id": IDS[0]}, {"$set": {"csv_chunks": 2, "csv_bytes": len(payload)}})
    pieces = list(mongo.iter_report_csv(mongo.find_report(IDS[0])))
    assert b"".join(pieces) == payload and max(map(len, pieces)) == 1 << 20


# --------------------------------------------------------------------------- alerts without transactions


def rows_of(**downtime_last_hour: float) -> list[dict]:
    return [
        {"store_id": store_id, "downtime_last_hour": down, "uptime_last_hour": 60.0 - down}
        for store_id, down in downtime_last_hour.items()
    ]


def events_of(delivery: dict | None) -> list[tuple[str, str]]:
    import json

    return [] if delivery is None else [(e["store_id"], e["event"]) for e in json.loads(delivery["body"])["events"]]


def test_a_crash_after_some_state_flips_and_a_retry_give_exactly_the_events_of_an_uninterrupted_run(mongo, monkeypatch):
    mongo.record_alerts(IDS[0], TICK, rows_of(a=40.0, b=40.0), 30)  # a and b down
    rows = rows_of(a=0.0, b=45.0, c=50.0, d=31.0, e=0.0)  # a recovers, b stays down, c and d go down
    real = mongomock.collection.Collection.bulk_write

    def three_then_die(self, requests, *args, **kwargs):  # a's recovery, b's still down, c's going down: then d
        real(self, requests[:3], *args, **kwargs)
        raise ProcessDied

    monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", three_then_die)
    with pytest.raises(ProcessDied):
        mongo.record_alerts(IDS[1], TICK + 1, rows, 30)
    monkeypatch.undo()
    assert mongo.db[store_mongo.ALERT_STATE].count_documents({"report_id": IDS[1]}) == 2  # half of it landed
    assert mongo.list_deliveries()[0]["report_id"] == IDS[0]  # and no delivery yet
    retried = worker(mongo).record_alerts(IDS[1], TICK + 1, rows, 30)
    assert events_of(retried) == [("a", "store_recovered"), ("c", "store_down"), ("d", "store_down")]
    assert retried["events"] == 3 and len(mongo.list_deliveries()) == 2


def test_two_workers_recording_one_report_make_one_delivery(mongo, monkeypatch):
    other = worker(mongo)
    real = mongomock.collection.Collection.bulk_write
    raced = []

    def the_other_first(self, requests, *args, **kwargs):  # the other worker does it all between read and write
        if self.name == store_mongo.ALERT_STATE and not raced:
            raced.append(None)
            raced[0] = other.record_alerts(IDS[0], TICK, rows_of(a=40.0, b=50.0, c=0.0), 30)
        return real(self, requests, *args, **kwargs)  # a, b: new stores, made by the other: duplicate keys

    monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", the_other_first)
    mine = mongo.record_alerts(IDS[0], TICK, rows_of(a=40.0, b=50.0, c=0.0), 30)
    assert mine == raced[0] and events_of(mine) == [("a", "store_down"), ("b", "store_down")]
    assert len(mongo.list_deliveries()) == 1
    assert mongo.db[store_mongo.ALERT_STATE].count_documents({}) == 2


def test_a_delivery_upserted_by_another_worker_meanwhile_is_the_answer(mongo, monkeypatch):
    other = worker(mongo)
    real = mongo._upsert_delivery
    raced = []

    def the_other_first(report_id, as_of_us, events):
        raced.append(other.record_alerts(report_id, as_of_us, rows_of(a=40.0), 30))
        return real(report_id, as_of_us, events)

    monkeypatch.setattr(mongo, "_upsert_delivery", the_other_first)
    mine = mongo.record_alerts(IDS[0], TICK, rows_of(a=40.0), 30)
    assert mine["delivery_id"] == raced[0]["delivery_id"] and mine["body"] == raced[0]["body"]
    assert [d["delivery_id"] for d in mongo.list_deliveries()] == [mine["delivery_id"]]


def test_the_state_is_one_document_per_store_that_is_or_was_down_and_the_newest_as_of(mongo):
    mongo.record_alerts(IDS[0], TICK, rows_of(a=40.0, b=0.0, c=35.0), 30)
    mongo.record_alerts(IDS[1], TICK + 2, rows_of(a=0.0, b=0.0, c=50.0), 30)
    assert mongo.record_alerts(IDS[2], TICK + 1, rows_of(a=0.0, b=40.0, c=0.0), 30) is None  # older: no change
    assert sorted(mongo.db[store_mongo.ALERT_STATE].find(), key=lambda doc: doc["_id"]) == [
        {"_id": "a", "down": False, "as_of_us": TICK + 2, "report_id": IDS[1]},
        {"_id": "c", "down": True, "as_of_us": TICK + 2, "report_id": IDS[0]},  # still down as of the second
    ]
    assert mongo.db[database.META].find_one({"_id": "alerts"}) == {"_id": "alerts", "as_of_us": TICK + 2}


def test_only_the_newest_deliveries_are_kept_and_every_pending_one(mongo, monkeypatch):
    monkeypatch.setattr(store_mongo, "DELIVERIES_KEPT", 2)
    for n in range(5):
        delivery = mongo.record_alerts(IDS[n], TICK + n, rows_of(a=40.0 if n % 2 == 0 else 0.0), 30)
        if n != 1:  # the second is never delivered: it stays, however old
            mongo.update_delivery(delivery["delivery_id"], "Delivered", 1, None, 204)
    assert [d["report_id"] for d in mongo.list_deliveries()] == [IDS[4], IDS[3], IDS[1]]


def test_a_delivery_update_checks_its_status_and_says_when_the_delivery_is_gone(mongo, caplog):
    delivery = mongo.record_alerts(IDS[0], TICK, rows_of(a=40.0), 30)
    with pytest.raises(ValueError, match="one of Pending, Delivered, Failed"):
        mongo.update_delivery(delivery["delivery_id"], "Sent", 1, None, 200)
    with caplog.at_level(logging.WARNING, logger="store_mongo"):
        mongo.update_delivery("0" * 32, "Delivered", 1, None, 200)
    assert [r.getMessage() for r in caplog.records] == [
        f"alert delivery {'0' * 32} is not recorded (deleted as one of the oldest?): its Delivered is not kept"
    ]
    assert mongo.list_deliveries()[0]["status"] == "Pending"


def test_a_report_trigger_is_one_of_the_two(mongo):
    with pytest.raises(ValueError, match="one of api, schedule"):
        mongo.create_report(IDS[0], None, trigger="cron")
    assert mongo.find_report(IDS[0]) is None


def test_previous_complete_report_breaks_a_tie_in_creation_time_by_id(mongo):
    for report_id in IDS[:3]:
        completed(mongo, report_id, TICK, CSV_A)
    same = database.now_utc()
    mongo.db[database.REPORTS].update_many({}, {"$set": {"created_at": same}})
    assert mongo.previous_complete_report(IDS[2])["report_id"] == IDS[1]
    assert mongo.previous_complete_report(IDS[1])["report_id"] == IDS[0]
    assert mongo.previous_complete_report(IDS[0]) is None
