"""MongoDB behind the `database.Store` contract (pymongo; mongomock with `MONGO_URI=mongomock://`).

Collections: storeStatus, businessHours, timezones, reports, reportChunks (the
report CSVs in numbered chunks, each well under the 16 MB document limit) and
locks (the data lease).  A poll's key is `(store_id, timestamp_us)`, exact to the
microsecond; `timestamp_utc` beside it is the BSON date (milliseconds) for people.
"""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

import database
import sources
import utils
from database import HOURS, REPORTS, STATUS, ZONES, Progress, _no_progress, now_utc

log = logging.getLogger(__name__)

LOCKS = "locks"
REPORT_CHUNKS = "reportChunks"
CSV_CHUNK_BYTES = 4 * 1024 * 1024  # well under the 16 MB document limit
assert CSV_CHUNK_BYTES < 16 * 1024 * 1024 - 1024
READ_BATCH_SIZE = 50_000
SERVER_TIMEOUT_MS = 5_000

INDEXES = {
    STATUS: [
        IndexModel([("store_id", ASCENDING), ("timestamp_us", ASCENDING)], name="store_time_us", unique=True),
        IndexModel([("timestamp_us", DESCENDING)], name="time_us"),
    ],
    HOURS: [IndexModel([("store_id", ASCENDING)], name="store")],
    ZONES: [IndexModel([("store_id", ASCENDING)], name="store", unique=True)],
    REPORTS: [
        IndexModel([("report_id", ASCENDING)], name="report_id", unique=True),
        IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="created"),
        IndexModel([("status", ASCENDING), ("heartbeat_at", ASCENDING)], name="status_heartbeat"),
    ],
    REPORT_CHUNKS: [IndexModel([("report_id", ASCENDING), ("n", ASCENDING)], name="report_chunk", unique=True)],
}

REPORT_FIELDS = {"_id": 0, "report_id": 1, "status": 1, "created_at": 1, "heartbeat_at": 1, "finished_at": 1,
                 "requested_as_of_us": 1, "as_of_us": 1, "progress": 1, "row_count": 1, "error": 1, "csv_bytes": 1}


def _ms_floor(value_us: int) -> dt.datetime:
    """The instant as BSON stores it: whole milliseconds."""
    return utils.us_to_datetime(int(value_us) // 1000 * 1000)


def _aware(value):
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _raise_unless_duplicates(error: BulkWriteError) -> None:
    """Duplicate keys (11000) are expected on re-loads; any other write or write-concern error is raised."""
    others = [e for e in error.details.get("writeErrors", []) if e.get("code") != 11000]
    if others or error.details.get("writeConcernErrors"):
        raise error


class MongoStore(database.Store):
    def __init__(self, uri: str, name: str = database.DEFAULT_DB):
        self.uri, self.name = uri, name
        if uri.startswith("mongomock://"):
            import mongomock

            self.client = mongomock.MongoClient(tz_aware=True)
            self.kind = "mongomock"
        else:
            self.client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=SERVER_TIMEOUT_MS, tz_aware=True)
            self.kind = "mongodb"
        self.db = self.client[name]

    # ----- lifecycle

    def spec(self) -> dict:
        return {"uri": self.uri, "name": self.name}

    def ping(self) -> bool:
        try:
            self.client.admin.command("ping")
        except PyMongoError as error:
            log.warning("database ping failed: %s", str(error).splitlines()[0][:200])
            return False
        return True

    def migrate(self) -> list[str]:
        failed = []
        for collection, models in INDEXES.items():
            try:
                self.db[collection].create_indexes(models)
            except PyMongoError as error:
                failed.append(f"{collection}: {str(error).splitlines()[0][:300]}")
                log.error("could not create the indexes of %s: %s", collection, failed[-1])
        return failed

    def is_empty(self) -> bool:
        return all(self.db[name].count_documents({}, limit=1) == 0 for name in (STATUS, HOURS, ZONES))

    def close(self) -> None:
        self.client.close()

    # ----- ingest

    def load_polls(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        collection = self.db[STATUS]
        # into an empty collection plain inserts are the fast bulk path (the file holds each key once)
        fresh = collection.count_documents({}, limit=1) == 0
        for start in range(0, len(frame), database.BATCH_SIZE):
            part = frame.iloc[start : start + database.BATCH_SIZE]
            stamps = part["timestamp_us"].to_numpy(dtype=np.int64)
            whole_ms = pd.to_datetime(stamps // 1000 * 1000, unit="us", utc=True).to_pydatetime()
            docs = [
                {"store_id": store_id, "timestamp_us": int(stamp), "timestamp_utc": when,
                 "status": "active" if active else "inactive"}
                for store_id, active, when, stamp in zip(part["store_id"], part["active"], whole_ms, stamps)
            ]
            if fresh:
                try:
                    collection.insert_many(docs, ordered=False)
                    docs = []
                except BulkWriteError as error:
                    _raise_unless_duplicates(error)
                    docs = [docs[e["index"]] for e in error.details["writeErrors"]]  # already there: upsert them
            if docs:
                operations = [
                    UpdateOne({"store_id": d["store_id"], "timestamp_us": d["timestamp_us"]},
                              {"$set": {"status": d["status"], "timestamp_utc": d["timestamp_utc"]}}, upsert=True)
                    for d in docs
                ]
                try:
                    collection.bulk_write(operations, ordered=False)
                except BulkWriteError as error:
                    _raise_unless_duplicates(error)  # two upserts of one new key racing: the row is there
            on_rows(len(part))
        return len(frame)

    def _replace_by_store(self, collection, docs: list[dict], on_rows: Progress) -> None:
        by_store: dict[str, list[dict]] = {}
        for doc in docs:
            by_store.setdefault(doc["store_id"], []).append(doc)
        stores = list(by_store)
        for first in range(0, len(stores), database.BATCH_SIZE):
            store_batch = stores[first : first + database.BATCH_SIZE]
            collection.delete_many({"store_id": {"$in": store_batch}})
            rows = [doc for store_id in store_batch for doc in by_store[store_id]]
            collection.insert_many(rows, ordered=False)
            on_rows(len(rows))

    def replace_hours(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        docs = [
            {"store_id": s, "day": int(d), "start_time_local": sources.hms(a), "end_time_local": sources.hms(b)}
            for s, d, a, b in zip(frame["store_id"], frame["day"], frame["start_s"], frame["end_s"])
        ]
        if docs:
            self._replace_by_store(self.db[HOURS], docs, on_rows)
        return len(docs)

    def replace_zones(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        docs = [{"store_id": s, "timezone_str": z} for s, z in zip(frame["store_id"], frame["timezone_str"])]
        if docs:
            self._replace_by_store(self.db[ZONES], docs, on_rows)
        return len(docs)

    # ----- reading for the report

    def latest_poll_us(self) -> int | None:
        newest = self.db[STATUS].find_one({}, {"_id": 0, "timestamp_us": 1}, sort=[("timestamp_us", DESCENDING)])
        return None if newest is None else int(newest["timestamp_us"])

    def report_store_ids(self, now_us: int) -> list[str]:
        query = {"timestamp_us": {"$lte": int(now_us)}}
        try:
            ids = self.db[STATUS].distinct("store_id", query)
        except OperationFailure:  # distinct answers in one 16 MB document: too many stores
            pipeline = [{"$match": query}, {"$group": {"_id": "$store_id"}}]
            ids = [d["_id"] for d in self.db[STATUS].aggregate(pipeline, allowDiskUse=True, batchSize=READ_BATCH_SIZE)]
        return sorted(str(i) for i in ids)

    def read_chunk(self, store_ids: list[str], since_us: int, now_us: int):
        reach = int(since_us) - database.LOOKBACK_US
        projection = {"_id": 0, "store_id": 1, "status": 1, "timestamp_us": 1}
        # the time condition comes first: the server does not mind, and mongomock tests keys in order
        recent = self.db[STATUS].find(
            {"timestamp_us": {"$gte": reach, "$lte": int(now_us)}, "store_id": {"$in": store_ids}},
            projection,
            batch_size=READ_BATCH_SIZE,
        )
        rows = [(d["store_id"], int(d["timestamp_us"]), d["status"] == "active") for d in recent]
        has_earlier = {store_id for store_id, stamp, _ in rows if stamp < since_us}
        missing = [store_id for store_id in store_ids if store_id not in has_earlier]
        if missing:
            # each store's newest poll before the look-back: sorted in the (store_id, timestamp_us) index's
            # reverse order, so $group's $first takes it from the index without an in-memory sort
            pipeline = [
                {"$match": {"store_id": {"$in": missing}, "timestamp_us": {"$lt": reach}}},
                {"$sort": {"store_id": -1, "timestamp_us": -1}},
                {"$group": {"_id": "$store_id", "timestamp_us": {"$first": "$timestamp_us"},
                            "status": {"$first": "$status"}}},
            ]
            for older in self.db[STATUS].aggregate(pipeline, allowDiskUse=True):
                rows.append((older["_id"], int(older["timestamp_us"]), older["status"] == "active"))
        polls = pd.DataFrame(rows, columns=["store_id", "timestamp_us", "active"])
        polls = polls.astype({"store_id": object, "timestamp_us": np.int64, "active": bool})

        hour_docs = self.db[HOURS].find(
            {"store_id": {"$in": store_ids}},
            {"_id": 0, "store_id": 1, "day": 1, "start_time_local": 1, "end_time_local": 1},
            batch_size=READ_BATCH_SIZE,
        )
        hours = pd.DataFrame(list(hour_docs), columns=["store_id", "day", "start_time_local", "end_time_local"])
        hours = pd.DataFrame(
            {
                "store_id": hours["store_id"].astype(object),
                "day": hours["day"].astype(np.int64),
                "start_s": sources.parse_time_of_day(hours["start_time_local"]).astype(np.int64),
                "end_s": sources.parse_time_of_day(hours["end_time_local"]).astype(np.int64),
            }
        )
        zone_docs = self.db[ZONES].find({"store_id": {"$in": store_ids}}, {"_id": 0, "store_id": 1, "timezone_str": 1})
        zones = pd.DataFrame(list(zone_docs), columns=["store_id", "timezone_str"])
        return polls, hours, zones

    # ----- reports

    def create_report(self, report_id: str, as_of_us: int | None) -> None:
        now = now_utc()
        self.db[REPORTS].insert_one({
            "report_id": report_id,
            "status": "Running",
            "created_at": now,
            "heartbeat_at": now,
            "finished_at": None,
            "requested_as_of_us": as_of_us,
            "as_of_us": None,
            "progress": {"done": 0, "total": None},
            "row_count": None,
            "error": None,
            "csv_chunks": None,
            "csv_bytes": None,
        })

    def update_report(self, report_id: str, *, as_of_us: int | None = None, progress: dict | None = None) -> None:
        fields = {"heartbeat_at": now_utc()}
        if as_of_us is not None:
            fields["as_of_us"] = int(as_of_us)
            fields["as_of"] = _ms_floor(as_of_us)
        if progress is not None:
            fields["progress"] = progress
        self.db[REPORTS].update_one({"report_id": report_id, "status": "Running"}, {"$set": fields})

    def complete_report(self, report_id: str, csv_bytes: bytes, row_count: int) -> None:
        """Store the whole CSV in numbered chunks, then mark the report Complete.

        Readers only look for chunks of Complete reports, so a half-stored CSV is
        never served; chunks left by a crash mid-way are replaced on a retry.
        """
        self.db[REPORT_CHUNKS].delete_many({"report_id": report_id})
        pieces = [csv_bytes[i : i + CSV_CHUNK_BYTES] for i in range(0, len(csv_bytes), CSV_CHUNK_BYTES)] or [b""]
        for n, piece in enumerate(pieces):
            self.db[REPORT_CHUNKS].insert_one({"report_id": report_id, "n": n, "data": piece})
        self.db[REPORTS].update_one(
            {"report_id": report_id, "status": "Running"},
            {"$set": {"status": "Complete", "finished_at": now_utc(), "row_count": row_count,
                      "csv_chunks": len(pieces), "csv_bytes": len(csv_bytes)}},
        )

    def fail_report(self, report_id: str, error: str) -> None:
        self.db[REPORTS].update_one(
            {"report_id": report_id, "status": "Running"},
            {"$set": {"status": "Failed", "finished_at": now_utc(), "error": error}},
        )

    def beat(self, report_ids: list[str]) -> None:
        if report_ids:
            self.db[REPORTS].update_many({"report_id": {"$in": report_ids}, "status": "Running"},
                                         {"$set": {"heartbeat_at": now_utc()}})

    def fail_stale_reports(self, older_than: dt.timedelta) -> int:
        cutoff = now_utc() - older_than
        result = self.db[REPORTS].update_many(
            {"status": "Running", "heartbeat_at": {"$lt": cutoff}},
            {"$set": {"status": "Failed", "finished_at": now_utc(),
                      "error": "the worker running this report stopped (no heartbeat); trigger it again"}},
        )
        return result.modified_count

    def _record(self, doc: dict | None) -> dict | None:
        if doc is None:
            return None
        for key in ("created_at", "heartbeat_at", "finished_at"):
            doc[key] = _aware(doc.get(key))
        return doc

    def find_report(self, report_id: str) -> dict | None:
        return self._record(self.db[REPORTS].find_one({"report_id": report_id}, REPORT_FIELDS))

    def count_reports(self) -> int:
        return self.db[REPORTS].count_documents({})

    def list_reports(self, skip: int = 0, limit: int = 20) -> list[dict]:
        cursor = self.db[REPORTS].find({}, REPORT_FIELDS).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        return [self._record(doc) for doc in cursor.skip(skip).limit(limit)]

    def delete_finished_reports(self, finished_before: dt.datetime, keep_newest: int) -> list[str]:
        finished = {"status": {"$in": ["Complete", "Failed"]}}
        reports = self.db[REPORTS]
        old = reports.find({**finished, "finished_at": {"$lt": finished_before}}, {"_id": 0, "report_id": 1})
        beyond = reports.find(finished, {"_id": 0, "report_id": 1}).sort(
            [("created_at", DESCENDING), ("_id", DESCENDING)]).skip(max(keep_newest, 0))
        ids = sorted({doc["report_id"] for doc in old} | {doc["report_id"] for doc in beyond})
        for start in range(0, len(ids), database.BATCH_SIZE):
            batch = ids[start : start + database.BATCH_SIZE]
            # the record goes first: a report is never listed without its CSV
            reports.delete_many({"report_id": {"$in": batch}, **finished})
            self.db[REPORT_CHUNKS].delete_many({"report_id": {"$in": batch}})
        return ids

    def read_report_csv(self, report: dict) -> bytes:
        chunks = self.db[REPORT_CHUNKS].find({"report_id": report["report_id"]}, {"_id": 0, "n": 1, "data": 1})
        ordered = sorted(chunks, key=lambda chunk: chunk["n"])  # the server promises no order without a sort
        payload = b"".join(bytes(chunk["data"]) for chunk in ordered)
        if report.get("csv_bytes") is not None and len(payload) != report["csv_bytes"]:
            raise ValueError(f"report {report['report_id']}: stored CSV is incomplete")
        return payload

    # ----- the data lease: one document {_id: "data", writer, readers: [...], waiting}

    def _ensure_lock_doc(self) -> None:
        try:
            self.db[LOCKS].update_one({"_id": "data"},
                                      {"$setOnInsert": {"writer": None, "readers": [], "waiting": None}},
                                      upsert=True)
        except DuplicateKeyError:  # another process created it first
            pass

    def _try_lease(self, mode: str, holder: str) -> bool:
        self._ensure_lock_doc()
        now = now_utc()
        expires = now + dt.timedelta(seconds=database.LEASE_SECONDS)
        no_writer = {"$or": [{"writer": None}, {"writer.expires": {"$lt": now}}]}
        if mode == "read":
            no_waiting = {"$or": [{"waiting": None}, {"waiting.expires": {"$lt": now}}]}
            query = {"_id": "data", "$and": [no_writer, no_waiting]}
            update = {"$push": {"readers": {"holder": holder, "expires": expires}}}
            return self.db[LOCKS].update_one(query, update).modified_count == 1
        waiting_is_me = {"$or": [{"waiting": None}, {"waiting.expires": {"$lt": now}}, {"waiting.holder": holder}]}
        query = {"_id": "data", "readers": {"$not": {"$elemMatch": {"expires": {"$gt": now}}}},
                 "$and": [no_writer, waiting_is_me]}
        update = {"$set": {"writer": {"holder": holder, "expires": expires}, "readers": [], "waiting": None}}
        if self.db[LOCKS].update_one(query, update).modified_count == 1:
            return True
        # mark this writer waiting (unless another live writer already is), so new readers hold off
        self.db[LOCKS].update_one(
            {"_id": "data", "$or": [{"waiting": None}, {"waiting.expires": {"$lt": now}}, {"waiting.holder": holder}]},
            {"$set": {"waiting": {"holder": holder, "expires": expires}}},
        )
        return False

    def _renew_lease(self, mode: str, holder: str) -> bool:
        expires = now_utc() + dt.timedelta(seconds=database.LEASE_SECONDS)
        if mode == "read":
            result = self.db[LOCKS].update_one({"_id": "data", "readers.holder": holder},
                                               {"$set": {"readers.$.expires": expires}})
        else:
            result = self.db[LOCKS].update_one({"_id": "data", "writer.holder": holder},
                                               {"$set": {"writer.expires": expires}})
        return result.matched_count == 1

    def _release_lease(self, mode: str, holder: str) -> None:
        if mode == "read":
            self.db[LOCKS].update_one({"_id": "data"}, {"$pull": {"readers": {"holder": holder}}})
        else:
            self.db[LOCKS].update_one({"_id": "data", "writer.holder": holder}, {"$set": {"writer": None}})
            self.db[LOCKS].update_one({"_id": "data", "waiting.holder": holder}, {"$set": {"waiting": None}})
