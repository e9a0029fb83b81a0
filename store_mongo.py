"""MongoDB behind the `database.Store` contract (pymongo; mongomock with `MONGO_URI=mongomock://`).

Collections: storeStatus, businessHours, timezones, reports, reportChunks (the
report CSVs in numbered chunks, each well under the 16 MB document limit) and
locks (the data lease).  A poll's key is `(store_id, timestamp_us)`, exact to the
microsecond; `timestamp_utc` beside it is the BSON date (milliseconds) for people.

How it behaves against a real server (mongomock hides each of these):

- Time limits.  The client never connects in its constructor (`connect=False`;
  a `mongodb+srv://` address is resolved in the background, so DNS trouble
  cannot stop start-up).  Jobs (report steps, loads, index builds) wait up to
  SERVER_SELECTION_MS (30 s) for a server, enough to ride out a replica-set
  election, and retry `AutoReconnect` / the `RetryableWriteError` label with
  backoff; every write they retry is idempotent.  HTTP requests run inside
  `request_scope()`, a `pymongo.timeout(REQUEST_SECONDS)` block with no retries,
  so an API call answers (503 when the database is away) within about a second.
- Server clock.  Heartbeats, report times and lease expiry come from the
  server (`$currentDate`, `$$NOW` in update pipelines), so clock skew between
  hosts cannot fail a live report or steal a live lease.  mongomock has no
  `$$NOW` (a pipeline using it silently changes nothing), so there the
  client's clock stands in.
- Indexes are reconciled with `index_information()` by `migrate()`.
- Polls are read with pymongoarrow straight from raw BSON batches into arrays.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import logging
import threading
import warnings
from typing import Iterable

import numpy as np
import pandas as pd
import pymongo
import tenacity
from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.errors import (AutoReconnect, BulkWriteError, ConnectionFailure, DuplicateKeyError,
                            OperationFailure, PyMongoError)

import database
import sources
import utils
from database import HOURS, REPORTS, STATUS, ZONES, Progress, _no_progress, describe_error, now_utc

log = logging.getLogger(__name__)

LOCKS = "locks"
REPORT_CHUNKS = "reportChunks"
BSON_DOCUMENT_LIMIT = 16 * 1024 * 1024
CSV_CHUNK_BYTES = 4 * 1024 * 1024  # well under the 16 MB document limit
assert CSV_CHUNK_BYTES < BSON_DOCUMENT_LIMIT - 1024
READ_BATCH_SIZE = 50_000

SERVER_SELECTION_MS = 30_000  # jobs wait this long for a server: longer than a replica-set election (~12 s)
REQUEST_SECONDS = 1.0  # every database call of one HTTP request together
# /health's ping: server selection overshoots its limit by up to one 0.5 s heartbeat step, so with no server
# 0.5 s answered in 0.5-1.0 s (1.001 s once) and 0.3 s in 0.33-0.79 s, inside the spec's second
PING_SECONDS = 0.3
JOB_RETRY_SECONDS = 120  # a job retries transient errors (with backoff) for this long before it fails
MAINTENANCE_MAX_PAUSE = 30.0  # the background start-up work retries at most this far apart

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
# indexes of earlier versions that must go: the millisecond unique key breaks on sub-millisecond polls
RETIRED_INDEXES = {STATUS: ["store_time"]}
# the options that make two indexes on the same keys different (anything else, e.g. "v", is the server's)
INDEX_OPTIONS = ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds", "collation")

REPORT_FIELDS = {"_id": 0, "report_id": 1, "status": 1, "created_at": 1, "heartbeat_at": 1, "finished_at": 1,
                 "requested_as_of_us": 1, "as_of_us": 1, "progress": 1, "row_count": 1, "error": 1, "csv_bytes": 1}
POLL_PROJECTION = {"_id": 0, "store_id": 1, "timestamp_us": 1, "status": 1}
# The same fields for the Arrow path, renamed by the server to one letter each (find projections take
# expressions since MongoDB 4.4).  pymongoarrow looks every field of every document up by its name as a
# bytes object; CPython keeps one-byte bytes objects cached with their hashes, so one-letter names save
# an allocation and a hash per field: about 40 % of the decoding (and 23 bytes per poll on the wire).
# A poll that lacks a field gets no renamed field either, so the reader still notices it.
RAW_POLL_FIELDS = {"s": "store_id", "t": "timestamp_us", "a": "status"}
RAW_POLL_PROJECTION = {"_id": 0, **{short: f"${name}" for short, name in RAW_POLL_FIELDS.items()}}
STALE_ERROR = "the worker running this report stopped (no heartbeat); trigger it again"

# True inside an HTTP request (request_scope): no retries there, the request answers within its time limit
_IN_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar("mongo_in_request", default=False)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: a lost connection, no primary (an election) or a write the server labels retryable."""
    if isinstance(error, AutoReconnect):  # includes NotPrimaryError, NetworkTimeout, ServerSelectionTimeoutError
        return True
    return isinstance(error, PyMongoError) and error.has_error_label("RetryableWriteError")


def _log_retry(state: tenacity.RetryCallState) -> None:
    log.warning("database call %s failed (%s); retrying in %.1f s",
                getattr(state.fn, "__name__", "?"), describe_error(state.outcome.exception()),
                state.next_action.sleep if state.next_action else 0.0)


def retried(method):
    """Run a store method again on transient errors, with exponential backoff, outside HTTP requests.

    Only for methods whose writes are idempotent: running them twice leaves what running them once does.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if _IN_REQUEST.get():
            return method(self, *args, **kwargs)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=self.retry_wait,
            stop=tenacity.stop_after_delay(self.job_retry_seconds),
            before_sleep=_log_retry,
            reraise=True,
        )
        return retrying(method, self, *args, **kwargs)

    return wrapper


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


def _key_of(spec) -> list[tuple[str, object]]:
    """An index key as a comparable list: directions 1.0 and 1 are the same."""
    items = spec.items() if hasattr(spec, "items") else spec
    return [(field, int(way) if isinstance(way, (int, float)) else way) for field, way in items]


def _options_of(info: dict) -> dict:
    options = {name: info[name] for name in INDEX_OPTIONS if name in info}
    for flag in ("unique", "sparse"):  # absent means false
        if not options.get(flag):
            options.pop(flag, None)
    return options


def reconcile_indexes(collection, models: list[IndexModel], retired: Iterable[str] = ()) -> list[str]:
    """Make the collection's indexes match `models`: create what is missing, rebuild what differs
    (same name with other keys or options, or the same keys under another name), drop retired names.

    Returns one line per index that could not be made right; the others are still done.
    """
    failed = []
    try:
        existing = collection.index_information()
    except PyMongoError as error:
        return [f"{collection.name}: could not list indexes: {describe_error(error)}"]
    for name in retired:
        if name in existing:
            try:
                collection.drop_index(name)
                existing.pop(name)
                log.info("dropped the retired index %s.%s", collection.name, name)
            except PyMongoError as error:
                failed.append(f"{collection.name}.{name}: could not drop the retired index: {describe_error(error)}")
    for model in models:
        want = model.document
        name, key, options = want["name"], _key_of(want["key"]), _options_of(want)
        have = existing.get(name)
        if have is not None and _key_of(have["key"]) == key and _options_of(have) == options:
            continue
        try:
            stale = [other for other, info in existing.items()
                     if other != "_id_" and (other == name or _key_of(info["key"]) == key)]
            for other in stale:
                log.warning("rebuilding index %s.%s (declared %s %s, found %s %s)", collection.name, name, key,
                            options, _key_of(existing[other]["key"]), _options_of(existing[other]))
                collection.drop_index(other)
                existing.pop(other)
            collection.create_indexes([model])
            existing[name] = {"key": key, **options}
        except PyMongoError as error:
            failed.append(f"{collection.name}.{name}: {describe_error(error)}")
    return failed


# --------------------------------------------------------------------------- polls into engine input


def _arrow_reader():
    """pymongoarrow's BSON-to-Arrow context class and the schema of RAW_POLL_PROJECTION (imported on first use)."""
    import pyarrow as pa

    with warnings.catch_warnings():  # its wheel warns that pyarrow's array structs grew: harmless, they only grew
        warnings.filterwarnings("ignore", message=r".*size changed, may indicate binary incompatibility")
        from pymongoarrow.api import Schema
        from pymongoarrow.context import PyMongoArrowContext

    return PyMongoArrowContext, Schema({"s": pa.string(), "t": pa.int64(), "a": pa.string()})


def polls_from_raw_batches(batches: Iterable[bytes]) -> pd.DataFrame:
    """Poll documents, as raw BSON batches from the server for RAW_POLL_PROJECTION, decoded by pymongoarrow
    into the engine's frame (the same frame `polls_from_documents` makes from dicts).

    Each batch is decoded on its own and cut down at once to compact arrays (the store ids to int32
    codes into the batch's distinct ids, the status to a bool), so the decoded strings of only one
    batch are alive at a time, instead of the whole read's strings growing (and being copied, into
    fresh pages) in one set of builders.  Each distinct store id becomes one Python string, shared by
    its polls' rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    context_class, schema = _arrow_reader()
    distinct_ids, codes, stamps, active = [], [], [], []
    for batch in batches:
        context = context_class(schema)
        context.process_bson_stream(batch)
        table = context.finish().combine_chunks()
        if not table.num_rows:
            continue
        if any(column.null_count for column in table.columns):
            raise ValueError("a stored poll lacks store_id, timestamp_us or status (or has another type)")
        coded = pc.dictionary_encode(table["s"].chunk(0))
        distinct_ids.append(coded.dictionary)
        codes.append(coded.indices.to_numpy())
        stamps.append(table["t"].chunk(0).to_numpy())
        active.append(pc.equal(table["a"].chunk(0), "active").to_numpy(zero_copy_only=False))
    store_ids = np.empty(sum(map(len, codes)), dtype=object)
    if codes:
        # one numbering over all batches: each batch's distinct ids into the distinct ids of the whole read
        unified = pc.dictionary_encode(pa.concat_arrays(distinct_ids))
        every_id, position = unified.dictionary.to_numpy(zero_copy_only=False), unified.indices.to_numpy()
        row = first = 0
        for batch_codes, batch_ids in zip(codes, distinct_ids):
            np.take(every_id[position[first : first + len(batch_ids)]], batch_codes,
                    out=store_ids[row : row + len(batch_codes)])
            row, first = row + len(batch_codes), first + len(batch_ids)
    return pd.DataFrame({
        "store_id": pd.Series(store_ids, dtype=object, copy=False),
        "timestamp_us": np.concatenate(stamps) if stamps else np.empty(0, dtype=np.int64),
        "active": np.concatenate(active) if active else np.empty(0, dtype=bool),
    }, copy=False)


def polls_from_documents(documents: Iterable[dict]) -> pd.DataFrame:
    """Poll documents, decoded into Python dicts, into the engine's frame (the mongomock path)."""
    rows = [(d["store_id"], int(d["timestamp_us"]), d["status"] == "active") for d in documents]
    polls = pd.DataFrame(rows, columns=["store_id", "timestamp_us", "active"])
    return polls.astype({"store_id": object, "timestamp_us": np.int64, "active": bool})


# --------------------------------------------------------------------------- the store


class MongoStore(database.Store):
    def __init__(self, uri: str, name: str = database.DEFAULT_DB, server_selection_ms: int = SERVER_SELECTION_MS,
                 job_retry_seconds: float = JOB_RETRY_SECONDS):
        self.uri, self.name = uri, name
        self.job_retry_seconds = job_retry_seconds
        self.retry_wait = tenacity.wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5)
        self.maintenance_first_pause = 1.0
        self._server_selection_ms = server_selection_ms
        self._client = None
        self._db = None
        self._client_lock = threading.Lock()
        self._resolving_in_background = False
        self._indexes_ready = threading.Event()
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        if uri.startswith("mongomock://"):
            import mongomock

            self._client = mongomock.MongoClient(tz_aware=True)
            self.kind = "mongomock"
        else:
            self.kind = "mongodb"
            if not uri.startswith("mongodb+srv://"):
                self._client = self._new_client()  # no I/O: connect=False
        self.server_clock = self.kind == "mongodb"  # mongomock has no $$NOW

    def _new_client(self):
        return pymongo.MongoClient(self.uri, connect=False, tz_aware=True,
                                   serverSelectionTimeoutMS=self._server_selection_ms, appname="store-uptime")

    @property
    def client(self):
        """The pymongo client, built on first use (a `mongodb+srv://` address needs DNS to build one)."""
        if self._client is None:
            if self._resolving_in_background:  # a request must not wait on DNS: the background thread does
                raise ConnectionFailure("the database address of MONGO_URI is not resolved yet")
            with self._client_lock:
                if self._client is None:
                    self._client = self._new_client()  # ConfigurationError when DNS fails
        return self._client

    @property
    def db(self):
        return self._db if self._db is not None else self.client[self.name]

    @db.setter
    def db(self, value) -> None:  # tests put a wrapped database in its place
        self._db = value

    # ----- lifecycle

    def spec(self) -> dict:
        return {"uri": self.uri, "name": self.name}

    def request_scope(self):
        """Every database call of one HTTP request within REQUEST_SECONDS together, and no retries."""
        if self.kind != "mongodb":
            return contextlib.nullcontext()
        return _request_scope(REQUEST_SECONDS)

    def ping(self, timeout: float = PING_SECONDS, quiet: bool = False) -> bool:
        try:
            with pymongo.timeout(timeout):
                self.client.admin.command("ping")
        except PyMongoError as error:
            if not quiet:
                log.warning("database ping failed: %s", describe_error(error))
            return False
        return True

    def migrate(self) -> list[str]:
        failed = []
        for collection, models in INDEXES.items():
            problems = reconcile_indexes(self.db[collection], models, RETIRED_INDEXES.get(collection, ()))
            for problem in problems:
                log.error("index problem: %s", problem)
            failed += problems
        if not failed:
            self._indexes_ready.set()
        return failed

    def start_maintenance(self, stale_after: dt.timedelta) -> threading.Thread:
        """In a background thread, until each has succeeded once: build the client (resolving a
        `mongodb+srv://` address), reconcile the indexes, and fail the stale Running reports.

        A failure logs one line and is retried with backoff; nothing here blocks the caller.
        """
        self._resolving_in_background = self._client is None

        def work() -> None:
            pause, steps = self.maintenance_first_pause, ["client", "indexes", "stale reports"]
            while steps and not self._stop.is_set():
                step = steps[0]
                try:
                    if step == "client":
                        with self._client_lock:
                            if self._client is None:
                                self._client = self._new_client()
                        self._resolving_in_background = False
                    elif step == "indexes":
                        with pymongo.timeout(max(60.0, self._server_selection_ms / 1000)):
                            self.client.admin.command("ping")
                        if self.migrate():
                            raise RuntimeError("some indexes could not be made (see above)")
                    else:
                        stale = self.fail_stale_reports(stale_after)
                        if stale:
                            log.warning("marked %d stale Running reports as Failed", stale)
                    steps.pop(0)
                    pause = self.maintenance_first_pause
                except (PyMongoError, RuntimeError) as error:
                    log.warning("database start-up work (%s) failed, retrying in %.0f s: %s", step, pause,
                                describe_error(error))
                    self._stop.wait(pause)
                    pause = min(pause * 2, MAINTENANCE_MAX_PAUSE)
            if not steps:
                log.info("MongoDB ready: indexes reconciled, stale reports swept")

        self._maintenance = threading.Thread(target=work, name="mongo-maintenance", daemon=True)
        self._maintenance.start()
        return self._maintenance

    def is_empty(self) -> bool:
        return all(self.db[name].count_documents({}, limit=1) == 0 for name in (STATUS, HOURS, ZONES))

    def close(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.close()

    def _before_writing(self) -> None:
        """Unique indexes exist before the first insert (they cannot be built over duplicates later).

        Not on mongomock: it checks a unique index by scanning the collection at every insert (quadratic
        loads), and one process's upserts cannot race each other there anyway.
        """
        if self.kind == "mongodb" and not self._indexes_ready.is_set():
            failed = self.migrate()
            if failed:
                raise OperationFailure(f"the indexes are not right, so nothing is written: {failed[0]}")

    # ----- ingest (each batch is an idempotent unit: retried whole)

    def load_polls(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        self._before_writing()
        # into an empty collection plain inserts are the fast bulk path (the file holds each key once)
        fresh = self.db[STATUS].count_documents({}, limit=1) == 0
        for start in range(0, len(frame), database.BATCH_SIZE):
            part = frame.iloc[start : start + database.BATCH_SIZE]
            self._write_polls(part, fresh)
            on_rows(len(part))
        return len(frame)

    @retried
    def _write_polls(self, part: pd.DataFrame, fresh: bool) -> None:
        """One batch of polls; idempotent, so retried whole: keys already there (a first attempt's, or a
        racing load's) are upserted, and the newest load wins for a key."""
        collection = self.db[STATUS]
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

    @retried
    def _replace_batch(self, collection_name: str, store_batch: list[str], rows: list[dict]) -> None:
        collection = self.db[collection_name]
        collection.delete_many({"store_id": {"$in": store_batch}})
        collection.insert_many([dict(row) for row in rows], ordered=False)  # copies: insert_many adds _id

    def _replace_by_store(self, collection_name: str, docs: list[dict], on_rows: Progress) -> None:
        self._before_writing()
        by_store: dict[str, list[dict]] = {}
        for doc in docs:
            by_store.setdefault(doc["store_id"], []).append(doc)
        stores = list(by_store)
        for first in range(0, len(stores), database.BATCH_SIZE):
            store_batch = stores[first : first + database.BATCH_SIZE]
            rows = [doc for store_id in store_batch for doc in by_store[store_id]]
            self._replace_batch(collection_name, store_batch, rows)
            on_rows(len(rows))

    def replace_hours(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        docs = [
            {"store_id": s, "day": int(d), "start_time_local": sources.hms(a), "end_time_local": sources.hms(b)}
            for s, d, a, b in zip(frame["store_id"], frame["day"], frame["start_s"], frame["end_s"])
        ]
        if docs:
            self._replace_by_store(HOURS, docs, on_rows)
        return len(docs)

    def replace_zones(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        docs = [{"store_id": s, "timezone_str": z} for s, z in zip(frame["store_id"], frame["timezone_str"])]
        if docs:
            self._replace_by_store(ZONES, docs, on_rows)
        return len(docs)

    # ----- reading for the report

    @retried
    def latest_poll_us(self) -> int | None:
        newest = self.db[STATUS].find_one({}, {"_id": 0, "timestamp_us": 1}, sort=[("timestamp_us", DESCENDING)])
        return None if newest is None else int(newest["timestamp_us"])

    @retried
    def report_store_ids(self, now_us: int) -> list[str]:
        query = {"timestamp_us": {"$lte": int(now_us)}}
        try:
            ids = self.db[STATUS].distinct("store_id", query)
        except OperationFailure:  # distinct answers in one 16 MB document: too many stores
            pipeline = [{"$match": query}, {"$group": {"_id": "$store_id"}}]
            ids = [d["_id"] for d in self.db[STATUS].aggregate(pipeline, allowDiskUse=True, batchSize=READ_BATCH_SIZE)]
        return sorted(str(i) for i in ids)

    def _window_query(self, store_ids: list[str], reach: int, now_us: int) -> dict:
        # the time condition comes first: the server does not mind, and mongomock tests keys in order
        return {"timestamp_us": {"$gte": reach, "$lte": int(now_us)}, "store_id": {"$in": store_ids}}

    @retried
    def read_chunk(self, store_ids: list[str], since_us: int, now_us: int):
        reach = int(since_us) - database.LOOKBACK_US
        query = self._window_query(store_ids, reach, now_us)
        if self.kind == "mongodb":
            batches = self.db[STATUS].find_raw_batches(query, RAW_POLL_PROJECTION, batch_size=READ_BATCH_SIZE)
            recent = polls_from_raw_batches(batches)
        else:  # mongomock serves no raw batches
            recent = polls_from_documents(self.db[STATUS].find(query, POLL_PROJECTION, batch_size=READ_BATCH_SIZE))
        stamps = recent["timestamp_us"].to_numpy()
        has_earlier = set(recent["store_id"].to_numpy()[stamps < since_us])
        missing = [store_id for store_id in store_ids if store_id not in has_earlier]
        older = []
        if missing:
            # each store's newest poll before the look-back: sorted in the (store_id, timestamp_us) index's
            # reverse order, so $group's $first takes it from the index without an in-memory sort
            pipeline = [
                {"$match": {"store_id": {"$in": missing}, "timestamp_us": {"$lt": reach}}},
                {"$sort": {"store_id": -1, "timestamp_us": -1}},
                {"$group": {"_id": "$store_id", "timestamp_us": {"$first": "$timestamp_us"},
                            "status": {"$first": "$status"}}},
            ]
            older = [{"store_id": d["_id"], "timestamp_us": d["timestamp_us"], "status": d["status"]}
                     for d in self.db[STATUS].aggregate(pipeline, allowDiskUse=True)]
        polls = pd.concat([recent, polls_from_documents(older)], ignore_index=True) if older else recent

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

    # ----- reports (times from the server's clock on MongoDB)

    @retried
    def create_report(self, report_id: str, as_of_us: int | None) -> None:
        fields = {
            "status": "Running",
            "finished_at": None,
            "requested_as_of_us": as_of_us,
            "as_of_us": None,
            "progress": {"done": 0, "total": None},
            "row_count": None,
            "error": None,
            "csv_chunks": None,
            "csv_bytes": None,
        }
        if self.server_clock:
            # an upsert that keeps whatever a first attempt already stored: a retry changes nothing
            defaults = {key: {"$literal": value} for key, value in fields.items()}
            defaults.update(created_at="$$NOW", heartbeat_at="$$NOW")
            self.db[REPORTS].update_one({"report_id": report_id},
                                        [{"$replaceWith": {"$mergeObjects": [defaults, "$$ROOT"]}}], upsert=True)
        else:
            now = now_utc()
            self.db[REPORTS].update_one({"report_id": report_id},
                                        {"$setOnInsert": {**fields, "created_at": now, "heartbeat_at": now}},
                                        upsert=True)

    @retried
    def update_report(self, report_id: str, *, as_of_us: int | None = None, progress: dict | None = None) -> None:
        fields = {}
        if as_of_us is not None:
            fields["as_of_us"] = int(as_of_us)
            fields["as_of"] = _ms_floor(as_of_us)
        if progress is not None:
            fields["progress"] = progress
        update = {"$currentDate": {"heartbeat_at": True}}
        if fields:
            update["$set"] = fields
        self.db[REPORTS].update_one({"report_id": report_id, "status": "Running"}, update)

    @retried
    def complete_report(self, report_id: str, csv_bytes: bytes, row_count: int) -> None:
        """Store the whole CSV in numbered chunks, then mark the report Complete.

        Readers only look for chunks of Complete reports, so a half-stored CSV is
        never served; chunks are upserted by (report_id, n), so a retry rewrites them.
        """
        pieces = [csv_bytes[i : i + CSV_CHUNK_BYTES] for i in range(0, len(csv_bytes), CSV_CHUNK_BYTES)] or [b""]
        for n, piece in enumerate(pieces):
            self.db[REPORT_CHUNKS].replace_one({"report_id": report_id, "n": n},
                                               {"report_id": report_id, "n": n, "data": piece}, upsert=True)
        self.db[REPORT_CHUNKS].delete_many({"report_id": report_id, "n": {"$gte": len(pieces)}})
        self.db[REPORTS].update_one(
            {"report_id": report_id, "status": "Running"},
            {"$set": {"status": "Complete", "row_count": row_count, "csv_chunks": len(pieces),
                      "csv_bytes": len(csv_bytes)},
             "$currentDate": {"finished_at": True}},
        )

    @retried
    def fail_report(self, report_id: str, error: str) -> None:
        self.db[REPORTS].update_one(
            {"report_id": report_id, "status": "Running"},
            {"$set": {"status": "Failed", "error": error}, "$currentDate": {"finished_at": True}},
        )

    @retried
    def beat(self, report_ids: list[str]) -> None:
        if report_ids:
            self.db[REPORTS].update_many({"report_id": {"$in": report_ids}, "status": "Running"},
                                         {"$currentDate": {"heartbeat_at": True}})

    @retried
    def fail_stale_reports(self, older_than: dt.timedelta) -> int:
        """Fail Running reports whose heartbeat is older than `older_than` by the server's clock."""
        if self.server_clock:
            cutoff = {"$subtract": ["$$NOW", int(older_than.total_seconds() * 1000)]}
            result = self.db[REPORTS].update_many(
                {"status": "Running", "$expr": {"$lt": ["$heartbeat_at", cutoff]}},
                [{"$set": {"status": "Failed", "finished_at": "$$NOW", "error": {"$literal": STALE_ERROR}}}],
            )
        else:
            result = self.db[REPORTS].update_many(
                {"status": "Running", "heartbeat_at": {"$lt": now_utc() - older_than}},
                {"$set": {"status": "Failed", "error": STALE_ERROR}, "$currentDate": {"finished_at": True}},
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
    # Expiry times are the server's ($$NOW + LEASE_SECONDS) on MongoDB, the client's on mongomock.

    def _now(self):
        return "$$NOW" if self.server_clock else now_utc()

    def _expires(self):
        if self.server_clock:
            return {"$add": ["$$NOW", database.LEASE_SECONDS * 1000]}
        return now_utc() + dt.timedelta(seconds=database.LEASE_SECONDS)

    def _slot(self, holder: str) -> dict:
        return {"holder": holder, "expires": self._expires()}

    def _lapsed(self, field: str, now) -> dict:
        """The expression: `field` (writer or waiting) is empty or expired."""
        return {"$or": [{"$eq": [{"$ifNull": [f"${field}", None]}, None]}, {"$lt": [f"${field}.expires", now]}]}

    def _live_readers(self, now) -> dict:
        return {"$filter": {"input": {"$ifNull": ["$readers", []]}, "as": "r", "cond": {"$gt": ["$$r.expires", now]}}}

    @retried
    def _ensure_lock_doc(self) -> None:
        try:
            self.db[LOCKS].update_one({"_id": "data"},
                                      {"$setOnInsert": {"writer": None, "readers": [], "waiting": None}},
                                      upsert=True)
        except DuplicateKeyError:  # another process created it first
            pass

    @retried
    def _try_lease(self, mode: str, holder: str) -> bool:
        self._ensure_lock_doc()
        now = self._now()
        locks = self.db[LOCKS]
        if mode == "read":
            if locks.count_documents({"_id": "data", "readers.holder": holder}, limit=1):
                return True  # a first attempt took it and its answer was lost
            query = {"_id": "data", "$expr": {"$and": [self._lapsed("writer", now), self._lapsed("waiting", now)]}}
            # a lapsed writer is cleared, so it cannot renew itself back while readers hold the lease
            update = [{"$set": {"writer": None,
                                "readers": {"$concatArrays": [self._live_readers(now), [self._slot(holder)]]}}}]
            return locks.update_one(query, update).matched_count == 1
        waiting_is_me = {"$or": [self._lapsed("waiting", now), {"$eq": ["$waiting.holder", holder]}]}
        no_readers = {"$eq": [{"$size": self._live_readers(now)}, 0]}
        writer_free_or_me = {"$or": [self._lapsed("writer", now), {"$eq": ["$writer.holder", holder]}]}
        query = {"_id": "data", "$expr": {"$and": [no_readers, writer_free_or_me, waiting_is_me]}}
        update = [{"$set": {"writer": self._slot(holder), "readers": {"$literal": []}, "waiting": None}}]
        if locks.update_one(query, update).matched_count == 1:
            return True
        # mark this writer waiting (unless another live writer already is), so new readers hold off
        locks.update_one({"_id": "data", "$expr": waiting_is_me}, [{"$set": {"waiting": self._slot(holder)}}])
        return False

    @retried
    def _renew_lease(self, mode: str, holder: str) -> bool:
        """Push the holder's expiry forward; a renewal that matches nothing means the lease is lost."""
        if mode == "read":
            renewed = {"$map": {"input": "$readers", "as": "r", "in": {
                "$cond": [{"$eq": ["$$r.holder", holder]}, self._slot(holder), "$$r"]}}}
            result = self.db[LOCKS].update_one({"_id": "data", "readers.holder": holder},
                                               [{"$set": {"readers": renewed}}])
        else:
            result = self.db[LOCKS].update_one({"_id": "data", "writer.holder": holder},
                                               [{"$set": {"writer": self._slot(holder)}}])
        return result.matched_count == 1

    @retried
    def _release_lease(self, mode: str, holder: str) -> None:
        if mode == "read":
            self.db[LOCKS].update_one({"_id": "data"}, {"$pull": {"readers": {"holder": holder}}})
        else:
            self.db[LOCKS].update_one({"_id": "data", "writer.holder": holder}, {"$set": {"writer": None}})
            self.db[LOCKS].update_one({"_id": "data", "waiting.holder": holder}, {"$set": {"waiting": None}})


@contextlib.contextmanager
def _request_scope(seconds: float):
    token = _IN_REQUEST.set(True)
    try:
        with pymongo.timeout(seconds):
            yield
    finally:
        _IN_REQUEST.reset(token)
