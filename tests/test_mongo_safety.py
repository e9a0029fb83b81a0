"""What the MongoDB store adds for whole data or none, shown on mongomock and on fakes of a server's answers.

The upload journal (`uploads`: written batch by batch, a stopped writer, a dead writer, what finishes or
dismisses an unfinished upload), the schema marks (an empty database marked, a schema-1 database migrated
with everything in it, a migration stopped part-way run again, a foreign or newer database refused
untouched, the check in the start-up thread on a server), removing polls and the data summary, /health's
answer, a full disk, a report's life (never Complete once Failed, and no CSV kept), replacing hours and
zones store by store, and the write concern of upload batches and report completion.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import mongomock
import numpy as np
import pandas as pd
import pytest
import tenacity
from pymongo.errors import AutoReconnect, BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError, WriteError

import database
import report_csv
import store_mongo
import utils
from store_mongo import INDEXES, MongoStore
from tests.conftest import FAR_FUTURE_US, free_port, polls_of

UTC = dt.UTC


@pytest.fixture
def mongo():
    """A MongoStore on a fresh mongomock database."""
    store = MongoStore("mongomock://", "test")
    store.retry_wait = tenacity.wait_none()
    yield store
    store.close()


def open_on(client, monkeypatch, name: str = "test") -> MongoStore:
    """A mongomock store opened on `client`, a database prepared beforehand (as another process left it)."""
    monkeypatch.setattr(mongomock, "MongoClient", lambda **kwargs: client)
    store = MongoStore("mongomock://", name)
    monkeypatch.undo()
    return store


def failing(monkeypatch, method: str, errors: list[Exception], collection: str | None = None):
    """Make mongomock's `method` (on `collection`, or any) raise each of `errors` in turn (None: go through),
    then work; returns the names of the collections it was called on."""
    real = getattr(mongomock.collection.Collection, method)
    calls = []

    def wrapper(self, *args, **kwargs):
        calls.append(self.name)
        if errors and (collection is None or self.name == collection):
            error = errors.pop(0)
            if error is not None:  # None: this call goes through
                raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, method, wrapper)
    return calls


def polls(n: int, store: str = "s", first_us: int = 1_674_554_400_000_000) -> pd.DataFrame:
    return pd.DataFrame(
        {"store_id": [store] * n, "timestamp_us": first_us + np.arange(n, dtype=np.int64) * 1000, "active": [True] * n}
    )


def journal(store: MongoStore, upload_id: str) -> dict:
    return store.db[database.UPLOADS].find_one({"_id": upload_id})


# --------------------------------------------------------------------------- the upload journal


def test_an_upload_is_journaled_as_the_documented_document_and_marked_complete_by_its_writer(mongo):
    upload_id = mongo.begin_upload("polls.csv", "store_status.csv", "d" * 64, 3, 1)
    doc = journal(mongo, upload_id)
    at = doc.pop("at")
    assert at.tzinfo is not None and isinstance(doc.pop("seq"), store_mongo.ObjectId)
    assert doc == {
        "_id": upload_id,
        "upload_id": upload_id,
        "file": "polls.csv",
        "kind": "store_status.csv",
        "digest": "d" * 64,
        "finished_at": None,
        "loaded": 3,
        "rejected": 1,
        "written": 0,
        "sending": 0,
        "status": "Running",
        "error": None,
        "dismissed": False,
    }
    assert mongo.load_polls(polls(3), upload_id=upload_id) == 3
    done = journal(mongo, upload_id)
    assert (done["status"], done["written"], done["sending"]) == ("Complete", 3, 0)
    assert done["finished_at"] >= done["at"]
    assert mongo.migrate() == []
    indexes = mongo.db[database.UPLOADS].index_information()
    assert (list(indexes["at"]["key"]), list(indexes["digest"]["key"])) == ([("at", -1), ("seq", -1)], [("digest", 1)])


@pytest.mark.parametrize("writer", ["load_polls", "replace_hours", "replace_zones"])
def test_an_empty_file_is_a_complete_upload_of_nothing(mongo, writer):
    frames = {
        "load_polls": polls(0),
        "replace_hours": pd.DataFrame(columns=["store_id", "day", "start_s", "end_s"]),
        "replace_zones": pd.DataFrame(columns=["store_id", "timezone_str"]),
    }
    upload_id = mongo.begin_upload("empty.csv", "store_status.csv", "e" * 64, 0, 2)
    assert getattr(mongo, writer)(frames[writer], upload_id=upload_id) == 0
    assert (journal(mongo, upload_id)["status"], journal(mongo, upload_id)["written"]) == ("Complete", 0)


def test_written_grows_after_each_batch_and_a_raising_on_rows_stops_the_writer_there(mongo, monkeypatch):
    monkeypatch.setattr(database, "BATCH_SIZE", 2)
    upload_id = mongo.begin_upload("p.csv", "store_status.csv", "d" * 64, 5, 0)
    seen = []

    def on_rows(rows: int) -> None:
        doc = journal(mongo, upload_id)
        seen.append((rows, doc["written"], doc["sending"], mongo.db[database.STATUS].count_documents({})))
        if len(seen) == 2:
            raise database.LeaseLost("lost")

    with pytest.raises(database.LeaseLost):
        mongo.load_polls(polls(5), on_rows, upload_id=upload_id)
    assert seen == [(2, 2, 0, 2), (2, 4, 0, 4)]  # the journal is ahead of on_rows; the third batch never went
    assert mongo.db[database.STATUS].count_documents({}) == 4
    assert journal(mongo, upload_id)["status"] == "Running"  # until load_file's fail_upload
    mongo.fail_upload(upload_id, "the data write lease was lost")
    [listed] = mongo.list_uploads()
    assert (listed["status"], listed["error"], listed["written"]) == ("Failed", "the data write lease was lost", 4)
    assert mongo.unfinished_upload()["upload_id"] == upload_id


def test_the_batch_in_flight_when_a_writer_fails_counts_as_possibly_written(mongo, monkeypatch):
    monkeypatch.setattr(database, "BATCH_SIZE", 2)
    upload_id = mongo.begin_upload("p.csv", "store_status.csv", "d" * 64, 5, 0)
    real_insert = mongomock.collection.Collection.insert_many

    def half_then_fail(self, documents, *args, **kwargs):  # the second batch: one row lands, then the error
        if self.name == database.STATUS and documents[0]["timestamp_us"] > polls(5)["timestamp_us"][1]:
            real_insert(self, documents[:1])
            raise OperationFailure("interrupted", 11601)
        return real_insert(self, documents, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "insert_many", half_then_fail)
    with pytest.raises(OperationFailure):
        mongo.load_polls(polls(5), upload_id=upload_id)
    doc = journal(mongo, upload_id)
    assert (doc["written"], doc["sending"]) == (2, 2)
    mongo.fail_upload(upload_id, "OperationFailure: interrupted")
    assert mongo.list_uploads()[0]["written"] == 4  # 3 rows are in: the 2 written and up to the 2 sent


def test_a_running_upload_whose_writer_is_gone_shows_failed_and_unfinished(mongo, monkeypatch):
    monkeypatch.setattr(database, "LEASE_SECONDS", 60)
    assert mongo._try_lease("write", "w")
    upload_id = mongo.begin_upload("big.csv", "store_status.csv", "d" * 64, 9, 0)
    mongo._journal(upload_id, {"written": 4, "sending": 2})  # its process died while writing
    [alive] = mongo.list_uploads()
    assert (alive["status"], alive["error"], alive["written"]) == ("Running", None, 4)
    assert mongo.unfinished_upload() is None  # its writer holds the lease: it is still loading
    past = database.now_utc() - dt.timedelta(seconds=1)
    mongo.db["locks"].update_one({"_id": "data"}, {"$set": {"writer.expires": past}})  # the lease lapsed
    [gone] = mongo.list_uploads()
    assert (gone["status"], gone["error"], gone["written"]) == ("Failed", store_mongo.WRITER_GONE, 6)
    assert mongo.unfinished_upload()["upload_id"] == upload_id
    mongo._release_lease("write", "w")
    assert mongo.list_uploads()[0]["status"] == "Failed"  # no lease at all


def _stopped(store: MongoStore, digest: str, written: int = 1, file: str = "x.csv") -> str:
    upload_id = store.begin_upload(file, "store_status.csv", digest, 10, 0)
    store._journal(upload_id, {"written": written})
    store.fail_upload(upload_id, "stopped")
    return upload_id


def _complete(store: MongoStore, digest: str) -> str:
    upload_id = store.begin_upload("x.csv", "store_status.csv", digest, 0, 0)
    store.load_polls(polls(0), upload_id=upload_id)
    return upload_id


def test_what_finishes_an_unfinished_upload_and_what_does_not(mongo):
    assert _stopped(mongo, "a" * 64, written=0) and mongo.unfinished_upload() is None  # nothing of it is in
    _complete(mongo, "b" * 64)
    first = _stopped(mongo, "b" * 64)  # a Complete upload of its bytes *before* it does not finish it
    assert mongo.unfinished_upload()["upload_id"] == first
    _complete(mongo, "c" * 64)  # other bytes do not finish it
    assert mongo.unfinished_upload()["upload_id"] == first
    second = _stopped(mongo, "d" * 64)
    assert mongo.unfinished_upload()["upload_id"] == second  # the newest first
    _complete(mongo, "d" * 64)
    assert mongo.unfinished_upload()["upload_id"] == first  # the same bytes again finished the newest
    assert mongo.dismiss_upload(first) is True
    assert mongo.unfinished_upload() is None
    assert journal(mongo, first)["dismissed"] is True and mongo.dismiss_upload("f" * 32) is False


def test_uploads_begun_in_one_millisecond_keep_their_order(mongo):
    ids = [_complete(mongo, f"{n}" * 64) for n in range(4)]
    same = dt.datetime(2030, 1, 1, tzinfo=UTC)
    mongo.db[database.UPLOADS].update_many({}, {"$set": {"at": same}})
    assert [u["upload_id"] for u in mongo.list_uploads()] == ids[::-1]
    assert [u["upload_id"] for u in mongo.list_uploads(limit=2)] == ids[:1:-1]
    stopped = _stopped(mongo, "3" * 64)  # begun after the Complete one of its bytes, in the same millisecond
    mongo.db[database.UPLOADS].update_one({"_id": stopped}, {"$set": {"at": same}})
    assert mongo.unfinished_upload()["upload_id"] == stopped


def test_listed_uploads_have_the_contracts_keys_and_aware_times(mongo):
    mongo._client = mongomock.MongoClient()  # a client that gives naive dates
    mongo.migrate()
    _complete(mongo, "a" * 64)
    [upload] = mongo.list_uploads()
    assert set(upload) == database.UPLOAD_FIELDS
    assert upload["at"].utcoffset() == upload["finished_at"].utcoffset() == dt.timedelta(0)


# --------------------------------------------------------------------------- schema marks

SCHEMA_1_NOW = dt.datetime(2023, 1, 25, 9, 0, tzinfo=UTC)
SCHEMA_3_REPORT_INDEXES = {"status_created"}  # the index of reports schema 3 adds
REPORT_HEADER = (",".join(utils.REPORT_COLUMNS) + "\n").encode()
# the Complete report's CSV of the schema-1 database, stored in two chunks as any CSV over a chunk was
SCHEMA_1_CSV = REPORT_HEADER + b"1481966498820158979,60.0,20.5,150.25,0.0,3.5,17.75\n42,0.0,0.0,0.0,60.0,24.0,168.0\n"


def schema_1_database(name: str = "test") -> mongomock.MongoClient:
    """A database as the first releases' MongoStore left it (schema 1, commit 7f29bf6): its collections,
    documents and indexes exactly as that code wrote them, no meta document."""
    client = mongomock.MongoClient(tz_aware=True)
    db = client[name]
    for collection, models in INDEXES.items():  # the indexes of schema 1: none added since on its collections
        if collection in store_mongo.SCHEMA_1_COLLECTIONS:
            db[collection].create_indexes([m for m in models if m.document["name"] not in SCHEMA_3_REPORT_INDEXES])
    stamp = 1_674_555_240_000_000  # 2023-01-24 10:14 UTC
    db[database.STATUS].insert_many(
        [
            {
                "store_id": "1481966498820158979",
                "timestamp_us": stamp,
                "status": "active",
                "timestamp_utc": dt.datetime(2023, 1, 24, 10, 14, tzinfo=UTC),
            },
            {
                "store_id": "1481966498820158979",
                "timestamp_us": stamp + 3_661_000_500,
                "status": "inactive",
                "timestamp_utc": dt.datetime(2023, 1, 24, 11, 15, 1, tzinfo=UTC),
            },
            {
                "store_id": "42",
                "timestamp_us": stamp,
                "status": "inactive",
                "timestamp_utc": dt.datetime(2023, 1, 24, 10, 14, tzinfo=UTC),
            },
        ]
    )
    db[database.HOURS].insert_one(
        {"store_id": "1481966498820158979", "day": 1, "start_time_local": "09:00:00", "end_time_local": "12:00:00"}
    )
    db[database.ZONES].insert_one({"store_id": "1481966498820158979", "timezone_str": "America/New_York"})
    for report_id, status, error in (("0" * 31 + "1", "Complete", None), ("0" * 31 + "2", "Failed", "stopped")):
        db[database.REPORTS].insert_one(
            {
                "report_id": report_id,
                "status": status,
                "created_at": SCHEMA_1_NOW,
                "heartbeat_at": SCHEMA_1_NOW,
                "finished_at": SCHEMA_1_NOW,
                "requested_as_of_us": None,
                "as_of_us": stamp + 3_661_000_500,
                "as_of": dt.datetime(2023, 1, 24, 11, 15, 1, tzinfo=UTC),
                "progress": {"done": 2, "total": 2},
                "row_count": 2 if status == "Complete" else None,
                "error": error,
                "csv_chunks": 2 if status == "Complete" else None,
                "csv_bytes": len(SCHEMA_1_CSV) if status == "Complete" else None,
            }
        )
    db[store_mongo.REPORT_CHUNKS].insert_many(
        [
            {"report_id": "0" * 31 + "1", "n": 0, "data": SCHEMA_1_CSV[:100]},
            {"report_id": "0" * 31 + "1", "n": 1, "data": SCHEMA_1_CSV[100:]},
        ]
    )
    db[store_mongo.LOCKS].insert_one({"_id": "data", "writer": None, "readers": [], "waiting": None})
    return client


def everything_in(db) -> dict:
    """Every collection's documents (without _id) and index names: a database's whole state, comparable."""
    return {
        name: (
            [{k: v for k, v in d.items() if k != "_id"} for d in db[name].find()],
            sorted(db[name].index_information()),
        )
        for name in sorted(db.list_collection_names())
    }


def test_an_empty_database_is_marked_at_the_schema_version(mongo):
    assert mongo.db[database.META].find_one({"_id": "schema"}) == {
        "_id": "schema",
        "application": database.APPLICATION_NAME,
        "version": database.SCHEMA_VERSION,
    }
    assert (mongo.schema_version, mongo.migrations_applied) == (database.SCHEMA_VERSION, [])  # made, not migrated


STEP_1 = "schema 1 -> 2: the uploads journal (collection uploads, indexes at and digest)"
STEP_2 = (
    "schema 2 -> 3: report history, schedule ticks and alerts (collections reportHistory, scheduleTicks, "
    "alertState, alertDeliveries; the history backfilled from every Complete report's CSV; reports without a "
    "trigger read as api)"
)
STEP_3 = "schema 3 -> 4: nothing on MongoDB (schema 4 changed how the SQLite store keeps polls)"
# the collections schema 3 adds, empty but for the backfilled history, with their indexes
SCHEMA_3_INDEXES = {
    store_mongo.HISTORY: ["_id_", "report", "store_as_of"],
    store_mongo.TICKS: ["_id_"],
    store_mongo.ALERT_STATE: ["_id_", "report"],
    store_mongo.DELIVERIES: ["_id_", "created", "delivery_id", "pending"],
}


def history_of(report_id: str, as_of_us: int, created: dt.datetime, payload: bytes) -> list[dict]:
    """The history documents of a report's CSV, as schema 3 stores them, in _id order."""
    rows = report_csv.read_report_rows(payload).to_dict("records")
    return sorted(
        (
            {
                "_id": f"{report_id}/{row['store_id']}",
                "report_id": report_id,
                "store_id": row["store_id"],
                "as_of_us": as_of_us,
                "created_us": utils.datetime_to_us(created),
                **{name: row[name] for name in utils.REPORT_COLUMNS[1:]},
            }
            for row in rows
        ),
        key=lambda doc: doc["_id"],
    )


def test_a_schema_1_database_is_migrated_and_opens_with_everything_in_it(monkeypatch, caplog):
    client = schema_1_database()
    before = everything_in(client["test"])
    with caplog.at_level(logging.INFO, logger="store_mongo"):
        store = open_on(client, monkeypatch)
    assert (store.schema_version, store.migrations_applied) == (4, [STEP_1, STEP_2, STEP_3])
    assert [r.getMessage() for r in caplog.records] == [
        f"MongoDB database test migrated: {STEP_1}",
        "schema 2 -> 3: the rows of 1 Complete reports are in the history",
        f"MongoDB database test migrated: {STEP_2}",
        f"MongoDB database test migrated: {STEP_3}",
    ]
    assert store.db[database.META].find_one({"_id": "schema"})["version"] == 4
    after = everything_in(store.db)
    assert {name: after[name] for name in before} == before  # nothing of schema 1 changed
    assert after[database.UPLOADS] == ([], ["_id_", "at", "digest"])
    assert {name: sorted(store.db[name].index_information()) for name in SCHEMA_3_INDEXES} == SCHEMA_3_INDEXES
    stamp = 1_674_555_240_000_000 + 3_661_000_500
    assert sorted(store.db[store_mongo.HISTORY].find(), key=lambda doc: doc["_id"]) == history_of(
        "0" * 31 + "1", stamp, SCHEMA_1_NOW, SCHEMA_1_CSV
    )
    assert store.store_history("42") == [
        {
            "report_id": "0" * 31 + "1",
            "as_of_us": stamp,
            **dict(zip(utils.REPORT_COLUMNS[1:], [0.0] * 3 + [60.0, 24.0, 168.0])),
        }
    ]
    assert [store.find_report(f"{'0' * 31}{n}")["trigger"] for n in (1, 2)] == ["api", "api"]
    assert store.report_store_ids(FAR_FUTURE_US) == ["1481966498820158979", "42"]
    assert list(polls_of(store, "1481966498820158979")["active"]) == [True, False]
    _, hours, zones = store.read_chunk(["1481966498820158979"], 0, FAR_FUTURE_US)
    assert (len(hours), list(zones["timezone_str"])) == (1, ["America/New_York"])
    complete, failed = store.find_report("0" * 31 + "1"), store.find_report("0" * 31 + "2")
    assert complete["as_of_after_newest_poll"] is False and failed["error"] == "stopped"
    assert store.read_report_csv(complete) == SCHEMA_1_CSV
    assert store.list_uploads() == [] and store.unfinished_upload() is None
    assert open_on(client, monkeypatch).migrations_applied == []  # at schema 4 now: nothing to do


def test_a_migration_stopped_part_way_leaves_schema_1_and_runs_again(monkeypatch):
    client = schema_1_database()
    failing(monkeypatch, "update_one", [AutoReconnect("the process died here")], collection=database.META)
    with pytest.raises(AutoReconnect):
        open_on(client, monkeypatch)
    db = client["test"]
    assert database.UPLOADS in db.list_collection_names() and db[database.META].find_one() is None
    store = open_on(client, monkeypatch)  # the step runs again over what it made
    assert store.migrations_applied == [STEP_1, STEP_2, STEP_3]
    assert sorted(store.db[database.UPLOADS].index_information()) == ["_id_", "at", "digest"]


SCHEMA_2_NOW = dt.datetime(2023, 1, 26, 9, 0, 0, 250_000, tzinfo=UTC)
SCHEMA_2_AS_OF = 1_674_637_200_000_000  # 2023-01-25 09:00 UTC
# two stores; a store id a spreadsheet would take for a formula is quoted in the CSV ('=7), as report_csv writes it
SCHEMA_2_CSV = REPORT_HEADER + b"'=7,1.0,2.0,3.0,59.0,22.0,165.0\n42,0.0,0.01,99.99,60.0,23.99,68.01\n"
COMPLETE_2, RUNNING_2, TORN_2 = "a" * 32, "b" * 32, "c" * 32


def schema_2_database(name: str = "test") -> mongomock.MongoClient:
    """A database as the schema-2 MongoStore left it (commit b5e77bb): the schema-1 database migrated (the
    uploads journal and its indexes, the meta mark at 2), one upload, and reports of schema 2
    (as_of_after_newest_poll, no trigger): one more Complete with its CSV in one chunk, one Running, and one
    Complete whose second chunk is missing (its CSV stored in part, as a crash of schema 1 could leave it)."""
    client = schema_1_database(name)
    db = client[name]
    db[database.UPLOADS].create_indexes(INDEXES[database.UPLOADS])
    db[database.UPLOADS].insert_one(
        {
            "_id": "u" * 32,
            "upload_id": "u" * 32,
            "file": "store_status.csv",
            "kind": "store_status.csv",
            "digest": "d" * 64,
            "at": SCHEMA_2_NOW,
            "finished_at": SCHEMA_2_NOW,
            "loaded": 3,
            "rejected": 0,
            "written": 3,
            "sending": 0,
            "status": "Complete",
            "error": None,
            "dismissed": False,
            "seq": store_mongo.ObjectId("65b2f2d0c0ffee0000000001"),
        }
    )
    db[database.META].insert_one({"_id": "schema", "application": database.APPLICATION_NAME, "version": 2})
    for report_id, status, chunks in (
        (COMPLETE_2, "Complete", 1),
        (RUNNING_2, "Running", None),
        (TORN_2, "Complete", 2),
    ):
        done = status == "Complete"
        db[database.REPORTS].insert_one(
            {
                "report_id": report_id,
                "status": status,
                "created_at": SCHEMA_2_NOW,
                "heartbeat_at": SCHEMA_2_NOW,
                "finished_at": SCHEMA_2_NOW if done else None,
                "requested_as_of_us": SCHEMA_2_AS_OF,
                "as_of_us": SCHEMA_2_AS_OF,
                "as_of": utils.us_to_datetime(SCHEMA_2_AS_OF),
                "progress": {"done": 2, "total": 2},
                "row_count": 2 if done else None,
                "error": None,
                "csv_chunks": chunks,
                "csv_bytes": len(SCHEMA_2_CSV) if done else None,
                "as_of_after_newest_poll": report_id == COMPLETE_2,
            }
        )
    db[store_mongo.REPORT_CHUNKS].insert_many(
        [
            {"report_id": COMPLETE_2, "n": 0, "data": SCHEMA_2_CSV},
            {"report_id": TORN_2, "n": 0, "data": SCHEMA_2_CSV[:70]},  # chunk 1 never written
        ]
    )
    return client


def test_a_schema_2_database_is_migrated_with_every_complete_reports_history(monkeypatch, caplog):
    client = schema_2_database()
    before = everything_in(client["test"])
    with caplog.at_level(logging.INFO, logger="store_mongo"):
        store = open_on(client, monkeypatch)
    assert (store.schema_version, store.migrations_applied) == (4, [STEP_2, STEP_3])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"schema 2 -> 3: report {TORN_2} keeps no history: report {TORN_2}: stored CSV is incomplete"),
        ("INFO", "schema 2 -> 3: the rows of 2 Complete reports are in the history"),
        ("INFO", f"MongoDB database test migrated: {STEP_2}"),
        ("INFO", f"MongoDB database test migrated: {STEP_3}"),
    ]
    assert store.db[database.META].find_one({"_id": "schema"})["version"] == 4
    after = everything_in(store.db)
    del before[database.META]  # the mark, at 4 (checked above)
    assert {name: after[name] for name in before} == before  # nothing else of schema 2 changed
    assert {name: sorted(store.db[name].index_information()) for name in SCHEMA_3_INDEXES} == SCHEMA_3_INDEXES
    assert sorted(store.db[store_mongo.HISTORY].find(), key=lambda doc: doc["_id"]) == sorted(
        history_of("0" * 31 + "1", 1_674_555_240_000_000 + 3_661_000_500, SCHEMA_1_NOW, SCHEMA_1_CSV)
        + history_of(COMPLETE_2, SCHEMA_2_AS_OF, SCHEMA_2_NOW, SCHEMA_2_CSV),
        key=lambda doc: doc["_id"],
    )
    for store_id in ("=7", "42"):  # each point equals its report's CSV row, store ids as loaded
        rows = {}
        for report_id, payload in (("0" * 31 + "1", SCHEMA_1_CSV), (COMPLETE_2, SCHEMA_2_CSV)):
            for row in report_csv.read_report_rows(payload).to_dict("records"):
                if row["store_id"] == store_id:
                    rows[report_id] = [row[name] for name in utils.REPORT_COLUMNS[1:]]
        points = store.store_history(store_id)
        assert {p["report_id"]: [p[name] for name in utils.REPORT_COLUMNS[1:]] for p in points} == rows
        assert [p["as_of_us"] for p in points] == sorted((p["as_of_us"] for p in points), reverse=True)
    assert [r["trigger"] for r in store.list_reports(limit=10)] == ["api"] * 5
    assert store.find_report(COMPLETE_2)["as_of_after_newest_poll"] is True
    assert store.list_uploads()[0]["upload_id"] == "u" * 32
    assert open_on(client, monkeypatch).migrations_applied == []  # at schema 4 now: nothing to do


def test_a_backfill_stopped_part_way_leaves_schema_2_and_runs_again_without_duplicates(monkeypatch):
    client = schema_2_database()
    failing(monkeypatch, "insert_many", [None, AutoReconnect("the process died here")], collection=store_mongo.HISTORY)
    with pytest.raises(AutoReconnect):
        open_on(client, monkeypatch)
    db = client["test"]
    assert db[database.META].find_one({"_id": "schema"})["version"] == 2
    assert db[store_mongo.HISTORY].count_documents({}) == 2  # the first report's rows went in
    store = open_on(client, monkeypatch)
    assert store.migrations_applied == [STEP_2, STEP_3]
    history = list(store.db[store_mongo.HISTORY].find())
    assert len(history) == 4 and len({doc["_id"] for doc in history}) == 4
    assert store.db[database.META].find_one({"_id": "schema"})["version"] == 4


@pytest.mark.parametrize(
    "prepare, message",
    [
        (
            lambda db: (db["orders"].insert_one({"n": 1}), db[database.STATUS].insert_one({"x": 1})),
            (
                "MongoDB database test belongs to something else: it holds orders, storeStatus; "
                "point MONGO_DB at this service's database"
            ),
        ),
        (
            lambda db: db[database.META].insert_one({"_id": "schema", "application": "billing", "version": 1}),
            "MongoDB database test belongs to something else: it holds meta; point MONGO_DB at this service's database",
        ),
        (
            lambda db: db[database.META].insert_one({"_id": "version", "v": 7}),
            "MongoDB database test belongs to something else: it holds meta; point MONGO_DB at this service's database",
        ),
        (
            lambda db: db[database.META].insert_one(
                {"_id": "schema", "application": database.APPLICATION_NAME, "version": database.SCHEMA_VERSION + 1}
            ),
            (
                f"MongoDB database test was made by a newer version of this service "
                f"(schema {database.SCHEMA_VERSION + 1}; this one knows up to {database.SCHEMA_VERSION}): "
                "run that version, or point MONGO_DB at another database"
            ),
        ),
    ],
)
def test_a_foreign_or_newer_database_is_refused_untouched(monkeypatch, prepare, message):
    client = mongomock.MongoClient(tz_aware=True)
    prepare(client["test"])
    before = everything_in(client["test"])
    with pytest.raises(database.DatabaseRefused) as refused:
        open_on(client, monkeypatch)
    assert str(refused.value) == message
    assert everything_in(client["test"]) == before


def test_system_collections_do_not_make_a_database_foreign(monkeypatch):
    client = schema_1_database()
    real = mongomock.database.Database.list_collection_names
    monkeypatch.setattr(
        mongomock.database.Database,
        "list_collection_names",
        lambda self, *a, **k: real(self, *a, **k) + ["system.views", "system.profile"],
    )
    store = MongoStore("mongomock://", "x")  # built with the patch in place, on its own empty database
    assert (store.schema_version, store.migrations_applied) == (database.SCHEMA_VERSION, [])
    monkeypatch.setattr(mongomock, "MongoClient", lambda **kwargs: client)
    assert MongoStore("mongomock://", "test").schema_version == database.SCHEMA_VERSION


def server_store_on(client, name: str = "test") -> MongoStore:
    """A store built as for a server (no I/O in the constructor) whose client is the mongomock `client`."""
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}", name)
    store._client = client
    store.server_clock = False  # mongomock has no $$NOW
    store.maintenance_first_pause = 0.01
    return store


def test_on_a_server_a_refusal_is_found_by_the_start_up_thread_once_and_for_good(caplog):
    client = mongomock.MongoClient(tz_aware=True)
    client["test"]["orders"].insert_one({"n": 1})
    before = everything_in(client["test"])
    store = server_store_on(client)
    assert store.schema_version is None and store.migrations_applied == []
    with caplog.at_level(logging.INFO, logger="store_mongo"):
        thread = store._start_maintenance(dt.timedelta(seconds=60))
        thread.join(30)
    assert not thread.is_alive()
    refusal = (
        "MongoDB database test belongs to something else: it holds orders; point MONGO_DB at this service's database"
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"database start-up work stopped: {refusal}")
    ]
    assert store.health(0)["problems"] == [refusal]
    for write in (
        lambda: store.create_report("a" * 32, None),
        lambda: store.load_polls(polls(1)),
        lambda: store.begin_upload("f", "store_status.csv", "d" * 64, 1, 0),
        lambda: store.migrate(),
        lambda: store._try_lease("write", "w"),
        lambda: store.delete_polls("s"),
    ):
        with pytest.raises(database.DatabaseRefused, match="belongs to something else"):
            write()
    assert everything_in(client["test"]) == before


def test_on_a_server_writes_wait_for_the_start_up_thread_and_health_says_why(monkeypatch):
    """Until the start-up thread has checked the schema, writes fail at once as a transient error (503) and
    /health names the reason; after it, they go through."""
    store = MongoStore("mongodb+srv://cluster0.example.invalid/", "test")
    store.maintenance_first_pause = 0.01
    checking, go_on = threading.Event(), threading.Event()
    real_check = store._check_schema

    def slow_check():
        checking.set()
        go_on.wait(30)
        real_check()

    store._check_schema = slow_check
    store._new_client = lambda: mongomock.MongoClient(tz_aware=True)
    try:
        thread = store._start_maintenance(dt.timedelta(seconds=60))
        assert checking.wait(30)
        with pytest.raises(ConnectionFailure, match="not been checked yet"):
            store.create_report("a" * 32, None)
        assert store.health(0) == {
            "schema_version": None,
            "free_disk_mb": None,
            "newest_poll_us": None,
            "problems": [store_mongo.SCHEMA_PENDING],
        }
        assert database.is_transient(ConnectionFailure(store_mongo.SCHEMA_PENDING))
        go_on.set()
        thread.join(30)
        assert store.schema_version == database.SCHEMA_VERSION and store.health(0)["problems"] == []
    finally:
        go_on.set()
        store.close()


def test_without_the_start_up_thread_the_first_write_or_migrate_checks_the_schema():
    """As in `python database.py uploads --dismiss` or `migrate`: no start-up thread, so the store checks itself."""
    client = schema_1_database()
    store = server_store_on(client)
    assert store.dismiss_upload("a" * 32) is False
    assert store.schema_version == database.SCHEMA_VERSION and store.migrations_applied[0].startswith("schema 1 -> 2: ")
    foreign = mongomock.MongoClient(tz_aware=True)
    foreign["test"]["orders"].insert_one({"n": 1})
    with pytest.raises(database.DatabaseRefused):
        server_store_on(foreign).migrate()


# --------------------------------------------------------------------------- removing polls and the summary


def test_delete_polls_bounds_are_inclusive_to_the_microsecond(mongo):
    mongo.load_polls(
        pd.DataFrame(
            {
                "store_id": ["s", "s", "s", "t"],
                "timestamp_us": [1_001, 1_002, 1_003, 1_002],
                "active": [True, False, True, True],
            }
        )
    )
    assert mongo.delete_polls("s", 1_002, 1_002) == 1
    assert list(polls_of(mongo, "s")["timestamp_us"]) == [1_001, 1_003]
    assert mongo.delete_polls("s", since_us=1_002) == 1 and mongo.delete_polls("s", until_us=1_001) == 1
    assert list(polls_of(mongo, "t")["timestamp_us"]) == [1_002]  # another store's poll at the same instant


def test_the_data_summary_counts_stores_without_distinct(mongo, monkeypatch):
    def too_big(self, *args, **kwargs):
        raise OperationFailure("distinct too big, 16mb cap", 17217)

    monkeypatch.setattr(mongomock.collection.Collection, "distinct", too_big)
    mongo.load_polls(
        pd.DataFrame({"store_id": ["b", "a", "b", "c"], "timestamp_us": [30, 10, 20, 40], "active": [True] * 4})
    )
    assert mongo.data_summary() == {
        "stores": 3,
        "polls": 4,
        "hours_rows": 0,
        "zones": 0,
        "oldest_poll_us": 10,
        "newest_poll_us": 40,
    }


# --------------------------------------------------------------------------- health


def test_health_when_all_is_well_writes_a_probe_and_tells_the_newest_poll(mongo):
    mongo.load_polls(polls(2))
    assert mongo.health(10**12) == {
        "schema_version": database.SCHEMA_VERSION,
        "free_disk_mb": None,
        "newest_poll_us": 1_674_554_400_001_000,
        "problems": [],
    }  # mongomock has no disk: nothing to compare
    assert mongo.db[database.META].find_one({"_id": "probe"})["at"].tzinfo is not None


def test_health_compares_the_servers_free_disk_with_the_minimum(mongo, monkeypatch):
    mb = 1_048_576
    monkeypatch.setattr(
        mongomock.database.Database,
        "command",
        lambda self, name, *a, **k: {"ok": 1, "fsTotalSize": 100 * mb, "fsUsedSize": 90 * mb},
        raising=False,
    )
    assert mongo.health(5 * mb)["free_disk_mb"] == 10.0 and mongo.health(5 * mb)["problems"] == []
    assert mongo.health(20 * mb)["problems"] == [
        "the disk holding MongoDB database test has 10 MB free, under MIN_FREE_MB (20 MB)"
    ]


@pytest.mark.parametrize(
    "error, problem",
    [
        (
            OperationFailure("not authorized on test", 13),
            "the database cannot be written: OperationFailure: not authorized on test",
        ),
        (
            WriteError("out of disk space", 14031),
            "the database cannot be written (its disk is full): WriteError: out of disk space",
        ),
    ],
)
def test_health_names_a_write_probe_that_fails(mongo, monkeypatch, error, problem):
    failing(monkeypatch, "update_one", [error])
    assert mongo.health(0)["problems"] == [problem]


def test_health_names_an_unfinished_upload(mongo):
    upload_id = _stopped(mongo, "a" * 64, written=7, file="big.csv")
    [problem] = mongo.health(0)["problems"]
    assert problem.startswith(
        f"upload {upload_id} of big.csv stopped part-way (store_status.csv, 7 of 10 rows "
        f"written): upload the same file again"
    )


def test_health_of_a_server_that_does_not_answer_is_a_problem_within_a_second():
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}", "x", server_selection_ms=600_000)
    try:
        started = time.monotonic()
        answer = store.health(0)
        took = time.monotonic() - started
    finally:
        store.close()
    assert took < 2.0  # about HEALTH_SECONDS (server selection overshoots by up to one heartbeat step)
    [problem] = answer["problems"]
    assert problem.startswith("the database does not answer: ServerSelectionTimeoutError: ")
    assert answer["schema_version"] is None and answer["newest_poll_us"] is None


# --------------------------------------------------------------------------- a full disk

DISK_FULL_ERRORS = [
    OperationFailure("Out of disk space", 14031),
    OperationFailure("quota exceeded", 12501),
    WriteError("Out of disk space", 14031),
    BulkWriteError(
        {
            "writeErrors": [{"index": 0, "code": 14031, "errmsg": "Out of disk space"}],
            "writeConcernErrors": [],
            "nInserted": 0,
        }
    ),
]


@pytest.mark.parametrize("error", DISK_FULL_ERRORS, ids=["OutOfDiskSpace", "quota", "WriteError", "bulk"])
def test_a_full_disk_in_an_upload_is_disk_full_and_the_upload_stays_unfinished_if_rows_may_be_in(
    mongo, monkeypatch, error
):
    monkeypatch.setattr(database, "BATCH_SIZE", 2)
    upload_id = mongo.begin_upload("p.csv", "store_status.csv", "d" * 64, 5, 0)
    failing(monkeypatch, "insert_many", [error], collection=database.STATUS)
    with pytest.raises(database.DiskFull) as full:
        mongo.load_polls(polls(5), upload_id=upload_id)
    assert str(full.value) == "the disk holding MongoDB database test is full; nothing of this upload was kept"
    assert full.value.__cause__ is error
    assert (journal(mongo, upload_id)["written"], journal(mongo, upload_id)["sending"]) == (0, 2)
    monkeypatch.undo()
    monkeypatch.setattr(database, "BATCH_SIZE", 2)
    mongo.load_polls(polls(1, store="seed"))
    upload_id = mongo.begin_upload("p.csv", "store_status.csv", "d" * 64, 5, 0)
    calls = failing(monkeypatch, "bulk_write", [None, error], collection=database.STATUS)  # upserts now
    with pytest.raises(database.DiskFull, match="nothing of this upload after its first 2 rows was kept"):
        mongo.load_polls(polls(5), upload_id=upload_id)
    assert calls.count(database.STATUS) == 2  # the second batch was not retried
    assert (journal(mongo, upload_id)["written"], journal(mongo, upload_id)["sending"]) == (2, 2)
    mongo.fail_upload(upload_id, str(full.value))
    assert mongo.unfinished_upload()["upload_id"] == upload_id


@pytest.mark.parametrize(
    "method, collection",
    [
        ("replace_one", store_mongo.REPORT_CHUNKS),
        ("insert_many", store_mongo.HISTORY),
        ("update_one", database.REPORTS),
    ],
)
def test_a_full_disk_while_storing_a_reports_csv_keeps_no_chunks_and_no_history(mongo, monkeypatch, method, collection):
    mongo.create_report("r" * 32, None)
    failing(monkeypatch, method, [WriteError("Out of disk space", 14031)], collection=collection)
    with pytest.raises(database.DiskFull, match="nothing of this report was kept"):
        mongo.complete_report("r" * 32, SCHEMA_1_CSV, 2)
    assert mongo.db[store_mongo.REPORT_CHUNKS].count_documents({}) == 0
    assert mongo.db[store_mongo.HISTORY].count_documents({}) == 0
    assert mongo.find_report("r" * 32)["status"] == "Running"


def test_a_full_disk_when_a_tick_is_claimed_or_alerts_are_recorded_is_disk_full(mongo, monkeypatch):
    full = WriteError("Out of disk space", 14031)
    failing(monkeypatch, "insert_one", [full], collection=store_mongo.TICKS)
    with pytest.raises(database.DiskFull, match="nothing of this scheduled tick was kept"):
        mongo.claim_tick(1_700_000_000_000_000, "t" * 32)
    assert mongo.last_tick() is None and mongo.count_reports() == 0
    down = [{"store_id": "a", "downtime_last_hour": 60.0, "uptime_last_hour": 0.0}]
    failing(monkeypatch, "bulk_write", [BulkWriteError({"writeErrors": [{"index": 0, "code": 14031}]})])
    with pytest.raises(database.DiskFull, match="nothing of this alert state was kept"):
        mongo.record_alerts("r" * 32, 1_700_000_000_000_000, down, 30)
    assert mongo.list_deliveries() == []
    delivery = mongo.record_alerts("r" * 32, 1_700_000_000_000_000, down, 30)  # the disk has room again
    failing(monkeypatch, "update_one", [full], collection=store_mongo.DELIVERIES)
    with pytest.raises(database.DiskFull, match="nothing of this alert delivery was kept"):
        mongo.update_delivery(delivery["delivery_id"], "Delivered", 1, None, 204)
    assert mongo.list_deliveries()[0]["status"] == "Pending"


def test_a_full_disk_when_an_upload_begins_is_disk_full(mongo, monkeypatch):
    failing(monkeypatch, "update_one", [OperationFailure("Out of disk space", 14031)], collection=database.UPLOADS)
    with pytest.raises(database.DiskFull, match="nothing of this upload was kept"):
        mongo.begin_upload("p.csv", "store_status.csv", "d" * 64, 1, 0)


# --------------------------------------------------------------------------- a report's life


def test_a_report_failed_before_its_csv_is_stored_is_not_completed_and_keeps_no_chunks(mongo):
    mongo.create_report("f" * 32, None)
    mongo.db[store_mongo.REPORT_CHUNKS].insert_one({"report_id": "f" * 32, "n": 0, "data": b"old"})  # a crash's
    mongo.fail_report("f" * 32, database.STALE_ERROR)
    assert mongo.complete_report("f" * 32, b"x\n", 1) is False
    assert mongo.find_report("f" * 32)["status"] == "Failed"
    assert mongo.db[store_mongo.REPORT_CHUNKS].count_documents({}) == 0
    assert mongo.complete_report("n" * 32, b"x\n", 1) is False  # no such report


def test_a_report_failed_while_its_csv_is_stored_stays_failed_and_its_chunks_go(mongo, monkeypatch):
    monkeypatch.setattr(store_mongo, "CSV_CHUNK_BYTES", 2)
    mongo.create_report("m" * 32, None)
    real = mongomock.collection.Collection.replace_one

    def swept_meanwhile(self, query, document, *args, **kwargs):
        if document["n"] == 1:  # a sweep in another process fails the report between two chunks
            mongo.fail_report("m" * 32, database.STALE_ERROR)
        return real(self, query, document, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "replace_one", swept_meanwhile)
    assert mongo.complete_report("m" * 32, b"abcdef", 1) is False
    report = mongo.find_report("m" * 32)
    assert (report["status"], report["error"]) == ("Failed", database.STALE_ERROR)
    assert mongo.db[store_mongo.REPORT_CHUNKS].count_documents({}) == 0


def test_a_completion_whose_answer_was_lost_is_complete_on_its_retry(mongo, monkeypatch):
    mongo.create_report("k" * 32, None)
    real, lost = mongomock.collection.Collection.update_one, []

    def applied_then_lost(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if self.name == database.REPORTS and not lost:
            lost.append(1)
            raise AutoReconnect("connection reset after the write")
        return result

    monkeypatch.setattr(mongomock.collection.Collection, "update_one", applied_then_lost)
    assert mongo.complete_report("k" * 32, b"abc\n", 1) is True
    assert mongo.read_report_csv(mongo.find_report("k" * 32)) == b"abc\n"


def test_the_stale_sweep_uses_the_contracts_message_and_reports_say_if_now_is_after_the_newest_poll(mongo):
    assert not hasattr(store_mongo, "STALE_ERROR")  # one copy, in database
    mongo.create_report("s" * 32, None)
    mongo.update_report("s" * 32, as_of_after_newest_poll=True)
    assert mongo.find_report("s" * 32)["as_of_after_newest_poll"] is True
    mongo.db[database.REPORTS].update_one({}, {"$set": {"heartbeat_at": database.now_utc() - dt.timedelta(hours=1)}})
    assert mongo.fail_stale_reports(dt.timedelta(seconds=60)) == 1
    assert mongo.find_report("s" * 32)["error"] == database.STALE_ERROR
    mongo.update_report("s" * 32, as_of_after_newest_poll=False)  # not Running any more: nothing changes
    assert mongo.find_report("s" * 32)["as_of_after_newest_poll"] is True


# --------------------------------------------------------------------------- replacing hours and zones


@pytest.mark.parametrize(
    "collection, writer, columns",
    [
        (database.HOURS, "replace_hours", {"day": 2, "start_s": 3600, "end_s": 7200}),
        (database.ZONES, "replace_zones", {"timezone_str": "Asia/Tokyo"}),
    ],
)
def test_replacing_touches_only_the_stores_in_the_file(mongo, monkeypatch, collection, writer, columns):
    monkeypatch.setattr(database, "BATCH_SIZE", 2)  # the file's stores span two batches
    first = {"day": 1, "start_s": 0, "end_s": 60} if collection == database.HOURS else {"timezone_str": "UTC"}
    getattr(mongo, writer)(pd.DataFrame([{"store_id": s, **first} for s in ("a", "b", "c", "d", "e")]))
    others = list(mongo.db[collection].find({"store_id": {"$in": ["a", "e"]}}))
    getattr(mongo, writer)(pd.DataFrame([{"store_id": s, **columns} for s in ("b", "c", "d")]))
    assert list(mongo.db[collection].find({"store_id": {"$in": ["a", "e"]}})) == others  # the same documents
    replaced = list(mongo.db[collection].find({"store_id": {"$in": ["b", "c", "d"]}}, {"_id": 0, "store_id": 0}))
    assert len(replaced) == 3 and all(doc == replaced[0] for doc in replaced) and replaced[0] not in others


# --------------------------------------------------------------------------- write concern


def test_upload_batches_the_journal_and_report_completion_wait_for_a_majoritys_journal(mongo, monkeypatch):
    concerns: dict[tuple[str, str], set] = {}
    for method in ("insert_many", "bulk_write", "delete_many", "update_one", "replace_one"):
        real = getattr(mongomock.collection.Collection, method)

        def recorded(self, *args, _real=real, _method=method, **kwargs):
            concerns.setdefault((self.name, _method), set()).add(self.write_concern.document.get("w"))
            if self.write_concern.document.get("w") == "majority":
                assert self.write_concern.document.get("j") is True
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(mongomock.collection.Collection, method, recorded)
    upload_id = mongo.begin_upload("p.csv", "store_status.csv", "d" * 64, 2, 0)
    mongo.load_polls(polls(2), upload_id=upload_id)
    mongo.load_polls(polls(2))  # upserts now
    mongo.replace_zones(pd.DataFrame({"store_id": ["a"], "timezone_str": ["UTC"]}))
    mongo.create_report("r" * 32, None)
    mongo.complete_report("r" * 32, b"x\n", 1)
    for key in [
        (database.STATUS, "insert_many"),
        (database.STATUS, "bulk_write"),
        (database.ZONES, "delete_many"),
        (database.ZONES, "insert_many"),
        (database.UPLOADS, "update_one"),
        (store_mongo.REPORT_CHUNKS, "replace_one"),
    ]:
        assert concerns[key] == {"majority"}, key
    assert "majority" in concerns[(database.REPORTS, "update_one")]  # the flip to Complete


def test_a_non_disk_error_is_not_disk_full():
    assert not store_mongo.is_disk_full(OperationFailure("unauthorized", 13))
    assert not store_mongo.is_disk_full(BulkWriteError({"writeErrors": [{"code": 11000}], "writeConcernErrors": []}))
    assert store_mongo.is_disk_full(BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 14031}]}))
    assert not store_mongo.is_disk_full(PyMongoError("something"))


def test_ticks_history_alert_state_and_deliveries_wait_for_a_majoritys_journal(mongo, monkeypatch):
    """What must survive a power loss or a failover once acknowledged: a claimed tick (else a tick could start
    twice), a report's history rows (before it says Complete), the alert state and the deliveries (else an alert
    could be sent twice or never)."""
    concerns: dict[tuple[str, str], set] = {}
    for method in ("insert_one", "insert_many", "delete_many", "bulk_write", "find_one_and_update", "update_one"):
        real = getattr(mongomock.collection.Collection, method)

        def recorded(self, *args, _real=real, _method=method, **kwargs):
            concerns.setdefault((self.name, _method), set()).add(self.write_concern.document.get("w"))
            if self.write_concern.document.get("w") == "majority":
                assert self.write_concern.document.get("j") is True
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(mongomock.collection.Collection, method, recorded)
    assert mongo.claim_tick(1_700_000_000_000_000, "r" * 32) == "started"
    mongo.update_report("r" * 32, as_of_us=1_700_000_000_000_000)
    mongo.complete_report("r" * 32, SCHEMA_1_CSV, 2)
    delivery = mongo.record_alerts(
        "r" * 32, 1_700_000_000_000_000, [dict(store_id="42", downtime_last_hour=60.0, uptime_last_hour=0.0)], 30
    )
    mongo.update_delivery(delivery["delivery_id"], "Delivered", 1, None, 204)
    for key in [
        (store_mongo.TICKS, "insert_one"),
        (store_mongo.HISTORY, "delete_many"),
        (store_mongo.HISTORY, "insert_many"),
        (store_mongo.ALERT_STATE, "bulk_write"),
        (store_mongo.DELIVERIES, "find_one_and_update"),
        (store_mongo.DELIVERIES, "update_one"),
    ]:
        assert concerns[key] == {"majority"}, key
