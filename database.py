"""The one owner of MongoDB: connection, collections, indexes, CSV ingest and report storage.

Other modules call the named functions here and never touch pymongo
themselves.  With no `MONGO_URI` the service runs on mongomock, an in-process
stand-in that suits the sample data and the tests but is far too slow for real
data (every query is a Python scan).

Command line: `python database.py load DIR` loads the three CSV files of DIR
into the database that `MONGO_URI` names (mongomock when unset, which only
checks the files) and prints rows loaded and rejected per file.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError
from tqdm import tqdm

import sources
import utils

log = logging.getLogger(__name__)

DEFAULT_DB = "store_monitoring"
BATCH_SIZE = 10_000
READ_BATCH_SIZE = 50_000
SERVER_TIMEOUT_MS = 5_000

STATUS, HOURS, ZONES, REPORTS = "storeStatus", "businessHours", "timezones", "reports"
LOCKS = "locks"
REPORT_CHUNKS = "reportChunks"
CSV_CHUNK_BYTES = 4 * 1024 * 1024  # well under the 16 MB document limit

INDEXES = {
    STATUS: [
        IndexModel([("store_id", ASCENDING), ("timestamp_utc", ASCENDING)], name="store_time", unique=True),
        IndexModel([("timestamp_utc", DESCENDING)], name="time"),
    ],
    HOURS: [IndexModel([("store_id", ASCENDING)], name="store")],
    ZONES: [IndexModel([("store_id", ASCENDING)], name="store", unique=True)],
    REPORTS: [
        IndexModel([("report_id", ASCENDING)], name="report_id", unique=True),
        IndexModel([("created_at", DESCENDING)], name="created"),
        IndexModel([("status", ASCENDING), ("heartbeat_at", ASCENDING)], name="status_heartbeat"),
    ],
    REPORT_CHUNKS: [IndexModel([("report_id", ASCENDING), ("n", ASCENDING)], name="report_chunk", unique=True)],
}

# Errors a caller may want to turn into a clean message rather than a trace.
DatabaseError = PyMongoError


@dataclass
class Store:
    """A connected database: the client, the database handle and what kind it is."""

    client: object
    db: object
    kind: str  # "mongodb" or "mongomock"


def connect(uri: str | None = None, name: str = DEFAULT_DB) -> Store:
    """Connect to `uri`, or to a fresh in-process mongomock when `uri` is empty."""
    if uri:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=SERVER_TIMEOUT_MS, tz_aware=True)
        kind = "mongodb"
    else:
        import mongomock

        client = mongomock.MongoClient(tz_aware=True)
        kind = "mongomock"
    return Store(client=client, db=client[name], kind=kind)


def ping(store: Store) -> bool:
    """True when the database answers."""
    try:
        store.client.admin.command("ping")
    except PyMongoError as error:
        log.warning("database ping failed: %s", error)
        return False
    return True


def ensure_indexes(db) -> None:
    """Create every collection's indexes; safe to run at every start-up."""
    for collection, models in INDEXES.items():
        db[collection].create_indexes(models)


def is_empty(db) -> bool:
    return all(db[name].count_documents({}, limit=1) == 0 for name in (STATUS, HOURS, ZONES))


# --------------------------------------------------------------------------- the data lease

LEASE_SECONDS = 60  # a holder that stops renewing (it crashed) loses its lease after this long
LEASE_WAIT_SECONDS = 1_800


class LeaseTimeout(RuntimeError):
    """The data lease could not be had in time."""


def _lease_free_for(mode: str, now: dt.datetime) -> dict:
    no_writer = {"$or": [{"writer": None}, {"writer.expires": {"$lt": now}}]}
    if mode == "read":
        return no_writer
    return {**no_writer, "readers": {"$not": {"$elemMatch": {"expires": {"$gt": now}}}}}


def _try_lease(db, mode: str, holder: str) -> bool:
    now = now_utc()
    expires = now + dt.timedelta(seconds=LEASE_SECONDS)
    try:
        db[LOCKS].update_one({"_id": "data"}, {"$setOnInsert": {"writer": None, "readers": []}}, upsert=True)
    except pymongo.errors.DuplicateKeyError:  # another process created it first
        pass
    if mode == "read":
        update = {"$set": {"writer": None}, "$push": {"readers": {"holder": holder, "expires": expires}}}
    else:
        update = {"$set": {"writer": {"holder": holder, "expires": expires}, "readers": []}}
    return db[LOCKS].update_one({"_id": "data", **_lease_free_for(mode, now)}, update).modified_count == 1


def _renew_lease(db, mode: str, holder: str) -> None:
    expires = now_utc() + dt.timedelta(seconds=LEASE_SECONDS)
    if mode == "read":
        db[LOCKS].update_one({"_id": "data", "readers.holder": holder}, {"$set": {"readers.$.expires": expires}})
    else:
        db[LOCKS].update_one({"_id": "data", "writer.holder": holder}, {"$set": {"writer.expires": expires}})


def _release_lease(db, mode: str, holder: str) -> None:
    if mode == "read":
        db[LOCKS].update_one({"_id": "data"}, {"$pull": {"readers": {"holder": holder}}})
    else:
        db[LOCKS].update_one({"_id": "data", "writer.holder": holder}, {"$set": {"writer": None}})


@contextmanager
def data_lease(db, mode: str, wait_seconds: float = LEASE_WAIT_SECONDS):
    """Hold the shared data lease: many readers (reports) or one writer (a load), never both.

    The lease lives in MongoDB (`locks`), so it holds across processes and
    machines; a thread renews it while the block runs, and a holder that dies
    simply stops renewing, so its lease expires after LEASE_SECONDS.
    """
    holder = uuid.uuid4().hex
    deadline = time.monotonic() + wait_seconds
    pause = 0.05
    while not _try_lease(db, mode, holder):
        if time.monotonic() > deadline:
            raise LeaseTimeout(f"waited {wait_seconds:.0f} s for the data {mode} lease "
                               f"({'a load is running' if mode == 'read' else 'reports or a load are running'})")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    done = threading.Event()

    def renew() -> None:
        while not done.wait(LEASE_SECONDS / 3):
            try:
                _renew_lease(db, mode, holder)
            except PyMongoError as error:
                log.warning("could not renew the data %s lease: %s", mode, error)

    renewer = threading.Thread(target=renew, name=f"lease-{mode}-{holder[:8]}", daemon=True)
    renewer.start()
    try:
        yield holder
    finally:
        done.set()
        _release_lease(db, mode, holder)


# --------------------------------------------------------------------------- time helpers


def _ms_floor(value_us: int) -> dt.datetime:
    """The instant as BSON stores it: whole milliseconds."""
    return utils.us_to_datetime(int(value_us) // 1000 * 1000)


# --------------------------------------------------------------------------- ingest


def _batches(items: list, size: int = BATCH_SIZE) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


Progress = Callable[[int], None]


def _no_progress(rows: int) -> None:
    pass


def load_polls(db, parsed: sources.Parsed, on_rows: Progress = _no_progress) -> int:
    """Write good poll rows in batches; a poll is (store_id, timestamp_utc), and the newest load wins."""
    frame = parsed.frame
    collection = db[STATUS]
    fresh = collection.count_documents({}, limit=1) == 0
    for start in range(0, len(frame), BATCH_SIZE):
        part = frame.iloc[start : start + BATCH_SIZE]
        stamps = part["timestamp_us"].to_numpy(dtype=np.int64)
        whole_ms = pd.to_datetime(stamps // 1000 * 1000, unit="us", utc=True).to_pydatetime()
        batch = [
            {"store_id": store_id, "status": "active" if active else "inactive", "timestamp_utc": when,
             "timestamp_us": int(stamp)}
            for store_id, active, when, stamp in zip(part["store_id"], part["active"], whole_ms, stamps)
        ]
        if fresh:
            # nothing to replace: plain inserts are the fast bulk path
            try:
                collection.insert_many(batch, ordered=False)
                batch = []
            except BulkWriteError as error:
                failed = [e for e in error.details.get("writeErrors", []) if e.get("code") == 11000]
                batch = [batch[e["index"]] for e in failed]
        if batch:
            _upsert_polls(collection, batch)
        on_rows(len(part))
    return len(frame)


def _upsert_polls(collection, docs: list[dict]) -> None:
    operations = [
        UpdateOne(
            {"store_id": d["store_id"], "timestamp_utc": d["timestamp_utc"]},
            {"$set": {"status": d["status"], "timestamp_us": d["timestamp_us"]}},
            upsert=True,
        )
        for d in docs
    ]
    collection.bulk_write(operations, ordered=False)


def _replace_by_store(collection, docs: list[dict], on_rows: Progress) -> None:
    """Replace every listed store's rows by `docs`, store batch by store batch."""
    by_store: dict[str, list[dict]] = {}
    for doc in docs:
        by_store.setdefault(doc["store_id"], []).append(doc)
    stores = list(by_store)
    for store_batch in _batches(stores):
        collection.delete_many({"store_id": {"$in": store_batch}})
        rows = [doc for store_id in store_batch for doc in by_store[store_id]]
        collection.insert_many(rows, ordered=False)
        on_rows(len(rows))


def load_hours(db, parsed: sources.Parsed, on_rows: Progress = _no_progress) -> int:
    """Replace the business hours of every store named in the file by the file's rows."""
    frame = parsed.frame
    docs = [
        {"store_id": s, "day": int(d), "start_time_local": sources.hms(a), "end_time_local": sources.hms(b)}
        for s, d, a, b in zip(frame["store_id"], frame["day"], frame["start_s"], frame["end_s"])
    ]
    if docs:
        _replace_by_store(db[HOURS], docs, on_rows)
    return len(docs)


def load_timezones(db, parsed: sources.Parsed, on_rows: Progress = _no_progress) -> int:
    """Replace the time zone of every store named in the file."""
    frame = parsed.frame
    docs = [{"store_id": s, "timezone_str": z} for s, z in zip(frame["store_id"], frame["timezone_str"])]
    if docs:
        _replace_by_store(db[ZONES], docs, on_rows)
    return len(docs)


LOADERS = {sources.STATUS_FILE: load_polls, sources.HOURS_FILE: load_hours, sources.ZONES_FILE: load_timezones}


def load_file(db, file_kind: str, source: sources.Source, label: str | None = None) -> dict:
    """Parse, validate and load one CSV file (bytes, path or stream) of the given kind.

    The writes happen under the data write lease, so no report reads half of them.
    """
    parsed = sources.READERS[file_kind](source, file=label or file_kind)
    with data_lease(db, "write"):
        LOADERS[file_kind](db, parsed)
    return parsed.summary()


def load_dir(db, directory: str | Path, progress: bool = False) -> list[dict]:
    """Load the three CSV files of a folder, then make sure the indexes exist.

    Into an empty database the rows go in first and the indexes are built
    after (the fast way to bulk-load, and the only bearable one on mongomock);
    otherwise the indexes come first, since the upserts look rows up by them.
    A missing file is noted, not an error; a file with a wrong header is
    reported and the others still load.
    """
    directory = Path(directory)
    summaries, parsed_files = [], {}
    for file_kind in sources.FILES:
        path = directory / file_kind
        summary = {"file": str(path), "rows_read": 0, "loaded": 0, "rejected": 0, "rejects": [], "notes": []}
        if not path.exists():
            summary["notes"].append("file not found, skipped")
        else:
            try:
                parsed_files[file_kind] = sources.READERS[file_kind](path, file=str(path))
                summary = parsed_files[file_kind].summary()
            except sources.HeaderError as error:
                summary["notes"].append(f"whole file rejected: {error}")
        summaries.append(summary)
    # all three files are written under one write lease: a report sees all of this load or none of it
    with data_lease(db, "write"):
        if not is_empty(db):
            ensure_indexes(db)
        for file_kind, parsed in parsed_files.items():
            with tqdm(total=len(parsed.frame), desc=f"loading {file_kind}", unit="row", disable=not progress,
                      leave=True) as bar:
                LOADERS[file_kind](db, parsed, bar.update)
    ensure_indexes(db)
    return summaries


# --------------------------------------------------------------------------- reading for the report


def latest_poll_us(db) -> int | None:
    """Microseconds of the newest poll, or None when there are none."""
    newest = db[STATUS].find_one(
        {}, {"_id": 0, "timestamp_us": 1, "timestamp_utc": 1},
        sort=[("timestamp_utc", DESCENDING), ("timestamp_us", DESCENDING)],
    )
    if newest is None:
        return None
    return _poll_us(newest)


def _poll_us(doc: dict) -> int:
    if doc.get("timestamp_us") is not None:
        return int(doc["timestamp_us"])
    return utils.datetime_to_us(doc["timestamp_utc"])


def report_store_ids(db, now_us: int) -> list[str]:
    """Sorted ids of the stores with at least one poll at or before `now_us`."""
    query = {"timestamp_utc": {"$lte": _ms_floor(now_us)}}
    try:
        ids = db[STATUS].distinct("store_id", query)
    except OperationFailure:  # distinct answers in one 16 MB document: too many stores
        pipeline = [{"$match": query}, {"$group": {"_id": "$store_id"}}]
        ids = [doc["_id"] for doc in db[STATUS].aggregate(pipeline, allowDiskUse=True, batchSize=READ_BATCH_SIZE)]
    return sorted(str(i) for i in ids)


LOOKBACK_US = 3 * 3_600_000_000  # polls come hourly: this catches almost every store's last poll before the week


def read_chunk(db, store_ids: list[str], since_us: int, now_us: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Polls, hours and zones of some stores, as the engine in utils.py takes them.

    Polls are those from `since_us` to `now_us` plus each store's last poll
    before `since_us` (which decides its status at the start of the window):
    one range query with a short look-back finds it for nearly every store,
    and a second query, for the few stores still without one, reads back
    further through the (store_id, timestamp_utc) index.
    """
    reach = _ms_floor(since_us - LOOKBACK_US)
    projection = {"_id": 0, "store_id": 1, "status": 1, "timestamp_us": 1, "timestamp_utc": 1}
    # the time condition comes first: the server does not mind, and mongomock tests keys in order
    recent = db[STATUS].find(
        {"timestamp_utc": {"$gte": reach, "$lte": _ms_floor(now_us)}, "store_id": {"$in": store_ids}},
        projection,
        batch_size=READ_BATCH_SIZE,
    )
    rows = [(d["store_id"], _poll_us(d), d["status"] == "active") for d in recent]
    has_earlier = {store_id for store_id, stamp, _ in rows if stamp < since_us}
    missing = [store_id for store_id in store_ids if store_id not in has_earlier]
    if missing:
        older = db[STATUS].find(
            {"timestamp_utc": {"$lt": reach}, "store_id": {"$in": missing}},
            projection,
            sort=[("store_id", ASCENDING), ("timestamp_utc", DESCENDING)],
            batch_size=READ_BATCH_SIZE,
        )
        seen = set()
        for d in older:
            if d["store_id"] not in seen:
                seen.add(d["store_id"])
                rows.append((d["store_id"], _poll_us(d), d["status"] == "active"))
    polls = pd.DataFrame(rows, columns=["store_id", "timestamp_us", "active"])
    polls = polls.astype({"store_id": object, "timestamp_us": np.int64, "active": bool})

    hour_docs = db[HOURS].find(
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
    zone_docs = db[ZONES].find({"store_id": {"$in": store_ids}}, {"_id": 0, "store_id": 1, "timezone_str": 1})
    zones = pd.DataFrame(list(zone_docs), columns=["store_id", "timezone_str"])
    return polls, hours, zones


# --------------------------------------------------------------------------- reports


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def create_report(db, report_id: str, as_of_us: int | None) -> dict:
    """Record a new report as Running and return its document."""
    now = now_utc()
    doc = {
        "report_id": report_id,
        "status": "Running",
        "created_at": now,
        "heartbeat_at": now,
        "finished_at": None,
        "requested_as_of": utils.us_to_datetime(as_of_us) if as_of_us is not None else None,
        "as_of": None,
        "progress": {"done": 0, "total": 0},
        "row_count": None,
        "error": None,
        "csv_chunks": None,
        "csv_bytes": None,
    }
    db[REPORTS].insert_one(dict(doc))
    return doc


def update_report(db, report_id: str, **fields) -> None:
    """Set fields of a running report and refresh its heartbeat."""
    fields["heartbeat_at"] = now_utc()
    db[REPORTS].update_one({"report_id": report_id, "status": "Running"}, {"$set": fields})


def complete_report(db, report_id: str, csv_bytes: bytes, row_count: int) -> None:
    """Store the whole CSV in numbered chunks (any size), then mark the report Complete.

    Readers only look for chunks of Complete reports, so a half-stored CSV is
    never served; chunks left by a crash mid-way are replaced on a retry.
    """
    db[REPORT_CHUNKS].delete_many({"report_id": report_id})
    pieces = [csv_bytes[i : i + CSV_CHUNK_BYTES] for i in range(0, len(csv_bytes), CSV_CHUNK_BYTES)] or [b""]
    for n, piece in enumerate(pieces):
        db[REPORT_CHUNKS].insert_one({"report_id": report_id, "n": n, "data": piece})
    db[REPORTS].update_one(
        {"report_id": report_id, "status": "Running"},
        {"$set": {"status": "Complete", "finished_at": now_utc(), "row_count": row_count,
                  "csv_chunks": len(pieces), "csv_bytes": len(csv_bytes)}},
    )


def beat(db, report_ids: list[str]) -> None:
    """Refresh the heartbeat of reports this process is running or has queued."""
    if report_ids:
        db[REPORTS].update_many({"report_id": {"$in": report_ids}, "status": "Running"},
                                {"$set": {"heartbeat_at": now_utc()}})


def fail_report(db, report_id: str, error: str) -> None:
    db[REPORTS].update_one(
        {"report_id": report_id, "status": "Running"},
        {"$set": {"status": "Failed", "finished_at": now_utc(), "error": error}},
    )


def fail_stale_reports(db, older_than: dt.timedelta) -> int:
    """Mark Running reports whose worker stopped beating as Failed; returns how many."""
    cutoff = now_utc() - older_than
    result = db[REPORTS].update_many(
        {"status": "Running", "heartbeat_at": {"$lt": cutoff}},
        {"$set": {"status": "Failed", "finished_at": now_utc(),
                  "error": "the worker running this report stopped (no heartbeat); trigger it again"}},
    )
    return result.modified_count


def find_report(db, report_id: str) -> dict | None:
    return db[REPORTS].find_one({"report_id": report_id}, {"_id": 0})


def count_reports(db) -> int:
    return db[REPORTS].count_documents({})


def list_reports(db, skip: int = 0, limit: int = 20) -> list[dict]:
    fields = {"_id": 0, "report_id": 1, "status": 1, "as_of": 1, "as_of_us": 1, "created_at": 1, "finished_at": 1, "row_count": 1,
              "error": 1}
    return list(db[REPORTS].find({}, fields).sort([("created_at", DESCENDING), ("_id", DESCENDING)]).skip(skip).limit(limit))


def read_report_csv(db, report: dict) -> bytes:
    """The CSV of a Complete report, reassembled from its chunks."""
    chunks = db[REPORT_CHUNKS].find({"report_id": report["report_id"]}, {"_id": 0, "n": 1, "data": 1}).sort("n", 1)
    payload = b"".join(bytes(chunk["data"]) for chunk in chunks)
    if len(payload) != report.get("csv_bytes", len(payload)):
        raise ValueError(f"report {report['report_id']}: stored CSV is incomplete")
    return payload


# --------------------------------------------------------------------------- command line


def _print_summaries(summaries: list[dict], first: int = 20, out=None) -> None:
    out = out or sys.stdout
    for summary in summaries:
        print(f"{summary['file']}: {summary['rows_read']} rows read, {summary['loaded']} loaded, "
              f"{summary['rejected']} rejected", file=out)
        for note in summary.get("notes", []):
            print(f"  note: {note}", file=out)
        for reject in summary["rejects"][:first]:
            print(f"  line {reject['line']}: {reject['reason']}", file=out)
        if summary["rejected"] > min(first, len(summary["rejects"])):
            print(f"  ... and {summary['rejected'] - min(first, len(summary['rejects']))} more", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load the store CSV files into MongoDB (MONGO_URI).")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="load store_status.csv, menu_hours.csv and timezones.csv from DIR")
    load.add_argument("directory", type=Path)
    load.add_argument("--show", type=int, default=20, help="how many rejected rows to list per file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    uri = os.environ.get("MONGO_URI")
    if not uri:
        log.warning("MONGO_URI is not set: loading into a throw-away in-process mongomock (checks the files only)")
    store = connect(uri, os.environ.get("MONGO_DB", DEFAULT_DB))
    try:
        summaries = load_dir(store.db, args.directory, progress=sys.stderr.isatty())
    except PyMongoError as error:
        print(f"database error: {error}", file=sys.stderr)
        return 2
    _print_summaries(summaries, first=args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
