"""MongoStore against faults on the real wire protocol: pymongo talks TCP on loopback to mockupdb servers
that each test scripts (no MongoDB server can be installed here).

The servers are two members of a replica set "rs"; `ReplicaSet.primary` says which one answers `isMaster`
as the primary, so a test can hold an election.  Each store call runs in a thread (`mockupdb.go`) while
the test receives its requests and answers them: a NotWritablePrimary, a dropped connection, a permanent
write error, a server too old.  Nothing sleeps: every wait is `receives(timeout=...)` (or a thread's join).
What only a real server shows (query plans, its clock, real raw batches) is in tests/test_integration.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

import pandas as pd
import pytest
import tenacity
from mockupdb import MockupDB, OpMsg, go
from pymongo import _csot
from pymongo.errors import ServerSelectionTimeoutError, WriteError

import database
import reportGenerator
import store_mongo
import utils
from app import create_app
from store_mongo import MongoStore
from tests.conftest import free_port

WAIT = 10  # seconds a test waits for the next request (or a thread) before it fails
NOT_PRIMARY = {"code": 10107, "errmsg": "not primary"}
INVALID = {"index": 0, "code": 121, "errmsg": "Document failed validation"}
SINCE_US = 1_674_554_400_000_000  # 2023-01-24T10:00:00Z
SERVER_NOW = dt.datetime(2031, 5, 6, 7, 8, 9, 123_000, tzinfo=dt.UTC)  # the servers' clock: not this host's
HOUR_US = 3_600_000_000


def command(name: str, collection: str | None = None) -> OpMsg:
    """The matcher of one command (on one collection)."""
    return OpMsg(name, collection) if collection is not None else OpMsg(name)


def cursor(documents: list[dict], ns: str, cursor_id: int = 0, first: bool = True) -> dict:
    return {"cursor": {"id": cursor_id, "ns": ns, "firstBatch" if first else "nextBatch": documents}}


class ReplicaSet:
    """Two mockupdb members of replica set "rs" reporting one release and wire version."""

    def __init__(self, wire: int = 17, version: str = "6.0.20"):
        self.wire, self.version, self.primary = wire, version, 0
        self.members = [MockupDB(request_timeout=WAIT) for _ in range(2)]
        for member in self.members:
            member.run()
        self.hosts = [member.address_string for member in self.members]
        for index, member in enumerate(self.members):
            member.autoresponds(self._answers_of(index))

    def _answers_of(self, index: int):
        def answer(request) -> bool:
            """What any server answers by itself: the monitors' isMaster, ping, buildInfo, killCursors."""
            name = (request.command_name or "").lower()
            if name in ("ismaster", "hello"):
                return request.ok(
                    ismaster=index == self.primary,
                    secondary=index != self.primary,
                    setName="rs",
                    hosts=self.hosts,
                    primary=self.hosts[self.primary],
                    me=self.hosts[index],
                    minWireVersion=0,
                    maxWireVersion=self.wire,
                    localTime=SERVER_NOW,
                )
            if name == "ping":
                return request.ok()
            if name == "buildinfo":
                return request.ok(version=self.version)
            if name == "killcursors":
                return request.ok(cursorsKilled=[])
            return False

        return answer

    @property
    def uri(self) -> str:
        return f"mongodb://{','.join(self.hosts)}/?replicaSet=rs"

    def answer_start_up(self):
        """Answer the start-up work on an empty database (and retention's look for old reports and for data
        whose record is gone): it passes."""

        def answer(request) -> bool:
            name = (request.command_name or "").lower()
            doc = request.doc
            if name == "listcollections":
                return request.ok(cursor(documents=[], ns="test.$cmd.listCollections"))
            if name == "listindexes":
                return request.command_err(26, "ns does not exist")
            if name == "createindexes":
                return request.ok()
            if name == "update" and doc["update"] == database.META:
                return request.ok(n=1, nModified=0, upserted=[{"index": 0, "_id": store_mongo.SCHEMA_MARK}])
            if name == "update" and doc["update"] == database.REPORTS and "$expr" in doc["updates"][0]["q"]:
                return request.ok(n=0, nModified=0)  # the stale sweep: none
            if name == "find" and doc["find"] == store_mongo.TICKS:
                return request.ok(cursor([], "test.scheduleTicks"))  # the stale sweep's lost starts: none
            if name == "find" and doc["find"] == database.REPORTS and "status" in doc.get("filter", {}):
                return request.ok(cursor([], "test.reports"))  # retention: no finished reports
            if name == "aggregate" and doc["aggregate"] in (store_mongo.REPORT_CHUNKS, store_mongo.HISTORY):
                return request.ok(cursor([], f"test.{doc['aggregate']}"))  # retention: no data without a record
            return False

        return [member.autoresponds(answer) for member in self.members]

    def elect(self, request) -> None:
        """The primary steps down while `request` is on it: it answers NotWritablePrimary, member 1 is elected."""
        self.primary = 1
        request.command_err(**NOT_PRIMARY)

    def stop(self) -> None:
        """Each member waits up to a second for its accept loop to notice: both at once."""
        for stopped in [go(member.stop) for member in self.members]:
            stopped(WAIT)


@contextlib.contextmanager
def started(wire: int = 17, version: str = "6.0.20", start_up: bool = True):
    """A replica set and a store on it whose start-up work (schema check, indexes, stale sweep) has run."""
    replica_set = ReplicaSet(wire, version)
    store = MongoStore(replica_set.uri, "test", server_selection_ms=WAIT * 1000, job_retry_seconds=WAIT)
    store.retry_wait = tenacity.wait_none()
    try:
        if start_up:
            answers = replica_set.answer_start_up()
            store.prepare(dt.timedelta(minutes=5))
            store._maintenance.join(WAIT)
            assert not store._maintenance.is_alive()
            for responder in answers:
                responder.cancel()
        yield replica_set, store
    finally:
        store.close()
        replica_set.stop()


def app_on(store: MongoStore, tmp_path):
    return create_app({"STORE": store, "REPORTS_DIR": str(tmp_path / "reports"), "DATA_DIR": str(tmp_path)})


# --------------------------------------------------------------------------- 1. an election mid-write


def test_a_lease_renewal_answered_not_primary_is_retried_on_the_new_primary():
    with started() as (rs, store):
        renewed = go(store._renew_lease, "write", "holder-1")
        first = rs.members[0].receives(command("update", store_mongo.LOCKS), timeout=WAIT)
        assert first["updates"][0]["q"] == {"_id": "data", "writer.holder": "holder-1"}
        rs.elect(first)
        retry = rs.members[1].receives(command("update", store_mongo.LOCKS), timeout=WAIT)
        assert retry["updates"] == first["updates"]  # the same idempotent write, on the new primary
        retry.ok(n=1, nModified=1)
        assert renewed(WAIT) is True


def test_a_report_heartbeat_answered_not_primary_is_retried_on_the_new_primary():
    with started() as (rs, store):
        beaten = go(store.beat, ["r1", "r2"])
        first = rs.members[0].receives(command("update", database.REPORTS), timeout=WAIT)
        assert first["updates"][0]["q"] == {"report_id": {"$in": ["r1", "r2"]}, "status": "Running"}
        rs.elect(first)
        retry = rs.members[1].receives(command("update", database.REPORTS), timeout=WAIT)
        assert retry["updates"] == first["updates"]
        retry.ok(n=2, nModified=2)
        assert beaten(WAIT) is None


REPORT_CSV = b"store_id,uptime_last_hour,uptime_last_day,uptime_last_week,downtime_last_hour,downtime_last_day,"
REPORT_CSV += b"downtime_last_week\na,60.0,20.5,150.25,0.0,3.5,17.75\n'=b,1.0,2.0,3.0,59.0,22.0,165.0\n"
CREATED = dt.datetime(2023, 1, 25, 9, 0, 0, 123_000, tzinfo=dt.UTC)
RUNNING = {"status": "Running", "as_of_us": SINCE_US, "created_at": CREATED}


def history_documents(report_id: str) -> list[dict]:
    """The history rows of REPORT_CSV as the store must send them: a deterministic _id, the figures as doubles."""
    common = {"report_id": report_id, "as_of_us": SINCE_US, "created_us": utils.datetime_to_us(CREATED)}
    figures = ["uptime_last_hour", "uptime_last_day", "uptime_last_week"]
    figures += ["downtime_last_hour", "downtime_last_day", "downtime_last_week"]
    return [  # in _id order; '=b' is the store the CSV quotes as "'=b"
        {
            "_id": f"{report_id}/=b",
            **common,
            "store_id": "=b",
            **dict(zip(figures, [1.0, 2.0, 3.0, 59.0, 22.0, 165.0])),
        },
        {
            "_id": f"{report_id}/a",
            **common,
            "store_id": "a",
            **dict(zip(figures, [60.0, 20.5, 150.25, 0.0, 3.5, 17.75])),
        },
    ]


def answer_csv_and_history(member, report_id: str) -> list[dict]:
    """Receive one attempt's chunk write, extra-chunk delete and history delete (answered), then its history
    insert (returned unanswered, with its documents)."""
    chunk = member.receives(command("update", store_mongo.REPORT_CHUNKS), timeout=WAIT)
    assert chunk["updates"][0]["u"] == {"report_id": report_id, "n": 0, "data": REPORT_CSV}
    chunk.ok(n=1, nModified=0, upserted=[{"index": 0, "_id": 1}])
    member.receives(command("delete", store_mongo.REPORT_CHUNKS), timeout=WAIT).ok(n=0)
    stale_rows = member.receives(command("delete", store_mongo.HISTORY), timeout=WAIT)
    assert stale_rows["deletes"] == [{"q": {"report_id": report_id}, "limit": 0}]
    assert stale_rows["writeConcern"] == {"w": "majority", "j": True}
    stale_rows.ok(n=0)
    rows = member.receives(command("insert", store_mongo.HISTORY), timeout=WAIT)
    assert rows["ordered"] is False and rows["writeConcern"] == {"w": "majority", "j": True}
    return rows


def test_a_report_csv_chunk_answered_not_primary_is_written_again_on_the_new_primary():
    report_id = "c" * 32
    with started() as (rs, store):
        completed = go(store.complete_report, report_id, REPORT_CSV, 2)
        rs.members[0].receives(command("find", database.REPORTS), timeout=WAIT).ok(cursor([RUNNING], "test.reports"))
        chunk = rs.members[0].receives(command("update", store_mongo.REPORT_CHUNKS), timeout=WAIT)
        assert chunk["writeConcern"] == {"w": "majority", "j": True}
        rs.elect(chunk)
        rs.members[1].receives(command("find", database.REPORTS), timeout=WAIT).ok(cursor([RUNNING], "test.reports"))
        rows = answer_csv_and_history(rs.members[1], report_id)
        assert sorted(rows["documents"], key=lambda d: d["_id"]) == history_documents(report_id)
        assert {type(doc[name]) for doc in rows["documents"] for name in utils.REPORT_COLUMNS[1:]} == {float}
        rows.ok(n=2)
        flip = rs.members[1].receives(command("update", database.REPORTS), timeout=WAIT)
        assert flip["updates"][0]["u"]["$set"]["status"] == "Complete"
        flip.ok(n=1, nModified=1)
        assert completed(WAIT) is True


def test_history_rows_whose_answer_was_lost_are_written_again_and_their_duplicates_skipped():
    """The connection drops after the server took the history rows: the retry sends the same _ids, the server
    answers duplicate keys (they are in), and the report turns Complete with each row once."""
    report_id = "d" * 32
    with started() as (rs, store):
        primary = rs.members[0]
        completed = go(store.complete_report, report_id, REPORT_CSV, 2)
        primary.receives(command("find", database.REPORTS), timeout=WAIT).ok(cursor([RUNNING], "test.reports"))
        first = answer_csv_and_history(primary, report_id)
        first.hangup()  # the rows landed; the answer did not
        primary.receives(command("find", database.REPORTS), timeout=WAIT).ok(cursor([RUNNING], "test.reports"))
        again = answer_csv_and_history(primary, report_id)
        assert again["documents"] == first["documents"]  # the same deterministic _ids
        again.ok(n=0, writeErrors=[{"index": i, "code": 11000, "errmsg": "E11000 duplicate key"} for i in (0, 1)])
        primary.receives(command("update", database.REPORTS), timeout=WAIT).ok(n=1, nModified=1)
        assert completed(WAIT) is True


# --------------------------------------------------------------------------- 2. a connection dropped mid-batch


def poll_docs(docs: list[dict]) -> list[tuple]:
    return sorted((d["store_id"], d["timestamp_us"], d["status"]) for d in docs)


def test_a_connection_dropped_mid_load_retries_that_batch_and_loads_every_poll(monkeypatch):
    monkeypatch.setattr(database, "BATCH_SIZE", 2)  # five polls: three batches
    frame = pd.DataFrame(
        {
            "store_id": ["a", "a", "b", "b", "c"],
            "timestamp_us": [SINCE_US + i * HOUR_US for i in range(5)],
            "active": [True, False, True, True, False],
        }
    )
    with started() as (rs, store):
        primary = rs.members[0]
        loaded = go(store.load_polls, frame)
        primary.receives(command("aggregate", database.STATUS), timeout=WAIT).ok(cursor([], "test.storeStatus"))
        sent = []
        first = primary.receives(command("insert", database.STATUS), timeout=WAIT)
        sent += first["documents"]
        first.ok(n=2)
        second = primary.receives(command("insert", database.STATUS), timeout=WAIT)
        second.hangup()  # mid-batch: the client cannot know whether it landed
        again = primary.receives(command("insert", database.STATUS), timeout=WAIT)
        assert poll_docs(again["documents"]) == poll_docs(second["documents"])
        # it had landed: the retry's inserts are duplicates, so the batch is upserted instead
        again.ok(n=0, writeErrors=[{"index": i, "code": 11000, "errmsg": "E11000 duplicate key"} for i in (0, 1)])
        upserts = primary.receives(command("update", database.STATUS), timeout=WAIT)
        assert sorted(u["q"]["timestamp_us"] for u in upserts["updates"]) == [
            d["timestamp_us"] for d in again["documents"]
        ]
        assert all(u["upsert"] for u in upserts["updates"])
        upserts.ok(n=2, nModified=0)
        sent += again["documents"]
        third = primary.receives(command("insert", database.STATUS), timeout=WAIT)
        sent += third["documents"]
        third.ok(n=1)
        assert loaded(WAIT) == 5
    expected = [("a", SINCE_US, "active"), ("a", SINCE_US + HOUR_US, "inactive")]
    expected += [("b", SINCE_US + 2 * HOUR_US, "active"), ("b", SINCE_US + 3 * HOUR_US, "active")]
    assert poll_docs(sent) == [*expected, ("c", SINCE_US + 4 * HOUR_US, "inactive")]


def test_a_connection_dropped_mid_read_retries_the_read_and_returns_each_poll_once():
    now_us = SINCE_US + utils.WEEK_US
    polls = [
        {"s": "a", "t": SINCE_US - HOUR_US, "a": "active"},  # before the week: no look further back
        {"s": "a", "t": SINCE_US + HOUR_US, "a": "inactive"},
        {"s": "b", "t": SINCE_US - HOUR_US, "a": "inactive"},
        {"s": "b", "t": SINCE_US + 2 * HOUR_US, "a": "active"},
    ]
    with started() as (rs, store):
        primary = rs.members[0]
        read = go(store.read_chunk, ["a", "b"], SINCE_US, now_us)
        find = primary.receives(command("find", database.STATUS), timeout=WAIT)
        assert find["projection"] == store_mongo.RAW_POLL_PROJECTION
        find.ok(cursor(polls[:2], "test.storeStatus", cursor_id=42))
        primary.receives(command("getMore", 42), timeout=WAIT).hangup()  # the second batch is lost on the way
        again = primary.receives(command("find", database.STATUS), timeout=WAIT)
        assert again["filter"] == find["filter"]
        again.ok(cursor(polls, "test.storeStatus"))
        hours = {"store_id": "a", "day": 1, "start_time_local": "09:00:00", "end_time_local": "17:00:00"}
        primary.receives(command("find", database.HOURS), timeout=WAIT).ok(cursor([hours], "test.businessHours"))
        zone = {"store_id": "a", "timezone_str": "America/Chicago"}
        primary.receives(command("find", database.ZONES), timeout=WAIT).ok(cursor([zone], "test.timezones"))
        got_polls, got_hours, got_zones = read(WAIT)
    assert sorted(got_polls.itertuples(index=False, name=None)) == sorted(
        (p["s"], p["t"], p["a"] == "active") for p in polls
    )
    assert got_hours.to_dict("records") == [{"store_id": "a", "day": 1, "start_s": 9 * 3600, "end_s": 17 * 3600}]
    assert got_zones.to_dict("records") == [zone]


# --------------------------------------------------------------------------- 3. a permanent write error


def test_a_permanent_error_storing_a_report_ends_it_failed_with_the_reason_without_a_retry(tmp_path, monkeypatch):
    report_id = "f" * 32
    with started() as (rs, store):
        primary = rs.members[0]
        generator = reportGenerator.ReportGenerator(store, tmp_path)
        empty = pd.DataFrame(columns=utils.REPORT_COLUMNS)
        monkeypatch.setattr(generator, "_compute_and_store", lambda rid, as_of: generator._store_report(rid, empty))
        ran = go(generator.run, report_id)
        primary.receives(command("find", database.REPORTS), timeout=WAIT).ok(
            cursor([{"status": "Running"}], "test.reports")
        )
        primary.receives(command("update", store_mongo.REPORT_CHUNKS), timeout=WAIT).ok(n=0, writeErrors=[INVALID])
        failed = primary.receives(command("update", database.REPORTS), timeout=WAIT)  # next: no retry of the chunk
        assert failed["updates"][0]["q"] == {"report_id": report_id, "status": "Running"}
        reason = reportGenerator.failure_message(WriteError(INVALID["errmsg"], INVALID["code"], INVALID))
        assert failed["updates"][0]["u"]["$set"] == {"status": "Failed", "error": reason}
        failed.ok(n=1, nModified=1)
        ran(WAIT)
        generator.shutdown()
    assert not (tmp_path / f"report_{report_id}.csv").exists()


def test_an_api_call_that_hits_a_permanent_error_is_500_with_one_log_line(tmp_path, caplog):
    with started(start_up=False) as (rs, store):
        rs.answer_start_up()  # kept: the app's own start-up work and retention run in the background
        app = app_on(store, tmp_path)
        store._maintenance.join(WAIT)
        primary = rs.members[0]
        caplog.clear()
        with caplog.at_level(logging.INFO):
            answer = go(app.test_client().post, "/trigger_report")
            primary.receives(command("aggregate", store_mongo.LOCKS), timeout=WAIT).ok(cursor([], "test.locks"))
            primary.receives(command("find", database.UPLOADS), timeout=WAIT).ok(cursor([], "test.uploads"))
            create = primary.receives(command("update", database.REPORTS), timeout=WAIT)
            assert create["updates"][0]["upsert"] is True
            create.ok(n=0, writeErrors=[INVALID])
            response = answer(WAIT)
        app.extensions["reports"].shutdown()
    assert response.status_code == 500 and "Retry-After" not in response.headers
    assert response.get_json()["error"].startswith("the database failed to do this (a permanent error")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].startswith("database error: WriteError: Document failed validation"), errors


# --------------------------------------------------------------------------- 4. a server too old


@pytest.mark.parametrize(
    ("wire", "version", "lacking"),
    [
        (7, "4.0.28", [True, True]),
        (8, "4.2.25", [False, True]),
    ],
)
def test_a_server_too_old_is_refused_at_start_up_and_health_says_so(tmp_path, caplog, wire, version, lacking):
    needed = f"MongoDB 4.4 or newer is needed, found {version} (wire version {wire}"
    with started(wire, version, start_up=False) as (rs, store):
        with caplog.at_level(logging.INFO, logger="store_mongo"):
            app = app_on(store, tmp_path)
            store._maintenance.join(WAIT)
            assert not store._maintenance.is_alive()  # the start-up work stopped for good
        assert [r.getMessage() for r in caplog.records if r.name == "store_mongo" and r.levelno >= logging.ERROR] == [
            f"database start-up work stopped: {store._refusal}"
        ]
        health = store.health(0)
        assert health["problems"] == [str(store._refusal)] and health["problems"][0].startswith(needed)
        assert health["server_version"] == version and health["server_wire_version"] == wire
        assert [not ok for ok in health["server_features"].values()] == lacking
        response = app.test_client().get("/health")
        assert response.status_code == 503 and response.get_json()["problems"] == health["problems"]
        assert response.get_json()["error"].startswith(needed)
        with pytest.raises(database.DatabaseRefused, match=r"MongoDB 4\.4 or newer is needed"):
            store.create_report("a" * 32, None)  # every write refuses, without a word to the server
        with pytest.raises(database.DatabaseRefused):
            store.migrate()
        app.extensions["reports"].shutdown()
        assert not rs.members[0].got(timeout=0)  # nothing but the monitors' and the ping's answered requests


def test_a_server_new_enough_passes_the_check_with_every_feature():
    with started() as (rs, store):
        assert store.schema_version == database.SCHEMA_VERSION
        assert store._server == {
            "server_version": "6.0.20",
            "server_wire_version": 17,
            "server_features": {what: True for what, _, _ in store_mongo.SERVER_FEATURES},
        }


# --------------------------------------------------------------------------- 5. the server away


def test_with_the_server_away_requests_fail_with_a_timeout_inside_the_request_scope(tmp_path, caplog):
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}", "test")  # a closed port
    try:
        with store.request_scope():
            assert 0 < _csot.get_timeout() <= store_mongo.REQUEST_SECONDS <= 1.0
            with pytest.raises(ServerSelectionTimeoutError) as caught:
                store.unfinished_upload()
        assert caught.value.timeout and database.is_transient(caught.value)
        # pymongo names the limit server selection had: what was left of the scope's, not SERVER_SELECTION_MS
        limit = float(str(caught.value).split(", Timeout: ", 1)[1].split("s,", 1)[0])
        assert 0 < limit <= store_mongo.REQUEST_SECONDS < store_mongo.SERVER_SELECTION_MS / 1000
        assert _csot.get_timeout() is None  # outside a request, jobs wait SERVER_SELECTION_MS and retry
        app = app_on(store, tmp_path)
        client = app.test_client()
        health = client.get("/health")
        assert health.status_code == 503 and "does not answer" in health.get_json()["error"]
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="app"):
            trigger = client.post("/trigger_report")
        assert trigger.status_code == 503 and trigger.headers["Retry-After"]
        assert [r.getMessage().split(":")[:2] for r in caplog.records] == [
            ["database error", " ServerSelectionTimeoutError"]
        ]
        # the driver now knows every server is down: the next request fails before it waits for one
        assert store._every_server_down()
        with store.request_scope():
            assert _csot.get_timeout() <= store_mongo.DOWN_REQUEST_SECONDS < store_mongo.REQUEST_SECONDS
        again = client.post("/trigger_report")
        assert again.status_code == 503 and again.headers["Retry-After"]
        assert client.get("/health").status_code == 503
        app.extensions["reports"].shutdown()
    finally:
        store.close()


# --------------------------------------------------------------------------- 6. schema 3: the clock, ticks, streaming


def test_the_clock_is_the_servers_hellos_local_time():
    with started() as (rs, store):
        assert store.clock_us() == utils.datetime_to_us(SERVER_NOW)


def test_a_tick_whose_insert_meets_a_duplicate_key_is_taken_and_nothing_more_is_written():
    """Another host inserted the tick first: the server answers E11000, the store reads the tick (claimed by
    that host) and answers "taken"; no report record, no trim.  The busy check's cutoff is the server's now."""
    report_id = "e" * 32
    with started() as (rs, store):
        primary = rs.members[0]
        claimed = go(store.claim_tick, SINCE_US, report_id)
        newer = primary.receives(command("aggregate", store_mongo.TICKS), timeout=WAIT)
        assert newer["pipeline"][0] == {"$match": {"_id": {"$gt": SINCE_US}}}
        newer.ok(cursor([], "test.scheduleTicks"))
        lost = primary.receives(command("find", store_mongo.TICKS), timeout=WAIT)
        assert lost["filter"]["outcome"] == "started" and "$$NOW" in str(lost["filter"]["$expr"])
        lost.ok(cursor([], "test.scheduleTicks"))
        running = primary.receives(command("aggregate", database.REPORTS), timeout=WAIT)
        # alive: a heartbeat within the stale limit `started` prepared the store with, 5 minutes, before the
        # server's now (mockupdb decodes dates without a zone)
        cutoff = (SERVER_NOW - dt.timedelta(minutes=5)).replace(tzinfo=None)
        assert running["pipeline"][0] == {
            "$match": {"status": "Running", "trigger": "schedule", "heartbeat_at": {"$gt": cutoff}}
        }
        running.ok(cursor([], "test.reports"))
        primary.receives(command("find", store_mongo.TICKS), timeout=WAIT).ok(cursor([], "test.scheduleTicks"))
        insert = primary.receives(command("insert", store_mongo.TICKS), timeout=WAIT)
        assert insert["documents"] == [
            {
                "_id": SINCE_US,
                "outcome": "started",
                "report_id": report_id,
                "claimed_by": report_id,
                "claimed_at": SERVER_NOW.replace(tzinfo=None),
                "claimed_at_us": utils.datetime_to_us(SERVER_NOW),
                "recorded": False,
            }
        ]
        assert insert["writeConcern"] == {"w": "majority", "j": True}
        insert.ok(n=0, writeErrors=[{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error"}])
        theirs = {"_id": SINCE_US, "outcome": "started", "report_id": "f" * 32, "claimed_by": "f" * 32}
        primary.receives(command("find", store_mongo.TICKS), timeout=WAIT).ok(cursor([theirs], "test.scheduleTicks"))
        assert claimed(WAIT) == "taken"
        assert not primary.got(timeout=0)  # nothing more: no report record, no trim


def test_a_stored_csv_is_streamed_one_chunk_document_per_round_trip_as_its_pieces_are_taken():
    report = {"report_id": "s" * 32, "csv_bytes": 10}
    with started() as (rs, store):
        primary = rs.members[0]
        called = go(store.iter_report_csv, report, 4)
        primary.receives(command("find", database.REPORTS), timeout=WAIT).ok(
            cursor([{"csv_chunks": 2}], "test.reports")
        )
        primary.receives(command("aggregate", store_mongo.REPORT_CHUNKS), timeout=WAIT).ok(
            cursor([{"_id": 1, "n": 2}], "test.reportChunks")
        )
        pieces = called(WAIT)
        assert not primary.got(timeout=0)  # the chunks are not read until a piece is taken
        first = go(next, pieces)
        find = primary.receives(command("find", store_mongo.REPORT_CHUNKS), timeout=WAIT)
        assert (find["filter"], find["sort"], find["batchSize"]) == ({"report_id": "s" * 32}, {"n": 1}, 1)
        find.ok(cursor([{"n": 0, "data": b"abcdefgh"}], "test.reportChunks", cursor_id=77))
        assert first(WAIT) == b"abcd"
        assert go(next, pieces)(WAIT) == b"efgh"
        assert not primary.got(timeout=0)  # the second chunk is not asked for while the first still gives pieces
        third = go(next, pieces)
        more = primary.receives(command("getMore", 77), timeout=WAIT)
        assert more["batchSize"] == 1
        more.ok(cursor([{"n": 1, "data": b"ij"}], "test.reportChunks", first=False))
        assert third(WAIT) == b"ij"
        assert go(list, pieces)(WAIT) == []  # 10 bytes, as the record says: no error
