"""MongoDB behind the `database.Store` contract (pymongo; mongomock with `MONGO_URI=mongomock://`).

Collections: storeStatus, businessHours, timezones, reports, reportChunks (the
report CSVs in numbered chunks of 255 KiB, as GridFS cuts files, so a reader
streams one small document at a time), locks (the data lease), and since schema
3 reportHistory (each Complete report's rows, by store), scheduleTicks (the
schedule's claimed ticks), alertState (the stores that are or were down) and
alertDeliveries (the alert POSTs and how they went).  A poll's key is
`(store_id, timestamp_us)`, exact to the microsecond; `timestamp_utc` beside it
is the BSON date (milliseconds) for people.

How it behaves against a real server (mongomock hides each of these):

- Time limits.  The client never connects in its constructor (`connect=False`;
  a `mongodb+srv://` address is resolved in the background, so DNS trouble
  cannot stop start-up).  Jobs (report steps, loads, index builds) wait up to
  SERVER_SELECTION_MS (30 s) for a server, enough to ride out a replica-set
  election, and retry `AutoReconnect` / the `RetryableWriteError` label with
  backoff; every write they retry is idempotent.  HTTP requests run inside
  `request_scope()`, a `pymongo.timeout(REQUEST_SECONDS)` block with no retries,
  so an API call answers (503 when the database is away) within about a second.
- Server clock.  Heartbeats, report times, lease expiry and the schedule's
  clock come from the server (`$currentDate`, `$$NOW` in update pipelines,
  `hello`'s localTime), so clock skew between hosts cannot fail a live report,
  steal a live lease or make two hosts disagree on a tick.  mongomock has no
  `$$NOW` (a pipeline using it silently changes nothing), so there the
  client's clock stands in.
- Indexes are reconciled with `index_information()` by `migrate()`.
- Polls are read with pymongoarrow straight from raw BSON batches into arrays.

Schema marks.  The `meta` collection holds {"_id": "schema", "application":
database.APPLICATION_NAME, "version": n}.  An empty database gets it at
SCHEMA_VERSION; a database with no mark whose collections are all this
service's is version 1 (the first releases) and is migrated forward by numbered
steps, each idempotent, the mark written after each step (a crash mid-way leaves
the old version, and the steps run again).  Anything else (other collections
and no mark, another application's mark, a newer version) is refused with
DatabaseRefused and nothing written, and so is a server older than the store
needs (SERVER_FEATURES: "MongoDB 4.4 or newer is needed, found <version>"; the
version and the features checked are in `health`).  On a server the check runs in the
start-up thread (before the indexes), never in the constructor; until it has
passed every write path refuses (503) and `health` says why.  A refusal is
permanent for the life of the store.

Uploads.  MongoDB cannot hold a million-document write in one transaction, so
an upload is journaled in `uploads` instead of being all or nothing:
`begin_upload` records it Running; the writer notes the batch it is about to
send (`sending`), writes it (polls are upserted by (store_id, timestamp_us),
hours and zones replaced store by store, so writing a batch twice changes
nothing), then records `written` (rows so far) and calls `on_rows`, which may
raise and stop it; the last step marks the upload Complete.  An upload that
stopped (Failed, or Running with no live write lease) with rows that may be
visible (`written` or `sending` > 0) is unfinished: reports refuse to run and
/health is 503 until the same bytes are uploaded again (a Complete upload of
the same digest, begun later, finishes it) or it is dismissed.

What survives a crash of this process: every batch the server acknowledged;
the journal says how far the upload got (at most the batch in flight is
unaccounted for, and `sending` counts it as possibly written), and once the
write lease lapses (database.LEASE_SECONDS) the upload reads Failed ("the
process loading it stopped part-way").  A report being completed has its CSV
chunks written before its record says Complete, so it stays Running until
the stale sweep fails it.  What survives a power loss (or crash) of the
server: upload batches, the journal and report completion are written with
w="majority", j=True (DURABLE): acknowledged only once they are in the
on-disk journal of a majority of the voting members (a standalone: its own
journal), so an acknowledged batch survives a power loss and a failover
without rollback; the cost is one journal flush per 10,000-row batch.  Other
writes (progress, heartbeats, leases, the health probe's timestamp) use the
client's default (w:1 before MongoDB 5.0, majority since), and can lose the
last ~100 ms on a power loss: all are rewritten within seconds anyway.

Schema 3 without transactions (a standalone server has none), each step a
conditional or idempotent single-document write, so a crash or a second worker
between two steps is safe:

- History.  A report's rows go into reportHistory (a deterministic _id,
  report_id/store_id, so a retry never duplicates) before the report turns
  Complete, and `store_history` keeps only rows whose report is Complete (one
  $in look-up per page): rows of a report that never finished, or whose record
  a deletion removed before its rows, are never shown.  `delete_report` and
  retention delete the record first, then its chunks and rows; what a deletion
  stopped between leaves is swept by the next retention run.
- Ticks.  A tick is claimed by inserting {_id: tick_us}; the winner then makes
  the report's record.  A claimer that dies between the two leaves a "lost
  start", recorded as a Failed report once the claim is older than the stale
  limit (by the next claim, `last_tick` or the stale sweep).
- Alerts.  Each store's state changes in one conditional update; the events of
  a report are the stores whose state carries its id, so a retry or a second
  worker finds the same ones; the delivery is upserted by report id.

Disk full.  MongoDB's out-of-disk and quota errors (DISK_FULL_CODES) become
database.DiskFull, whose message says what the server refused (the upload, or
the upload after the rows already written).  The journal stays cautious: the
batch that failed counts as possibly written (`sending`: a client cannot rule
out part of a batch, e.g. a replacement's delete, having landed), so such an
upload is unfinished until the same file is uploaded again or it is dismissed.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import itertools
import logging
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pymongo
import tenacity
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, UpdateOne, WriteConcern
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    CollectionInvalid,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

import database
import report_csv
import sources
import utils
from database import (
    HOURS,
    META,
    REPORTS,
    SCHEMA_VERSION,
    STATUS,
    UPLOADS,
    ZONES,
    Progress,
    describe_error,
    no_progress,
    now_utc,
)

log = logging.getLogger(__name__)

LOCKS = "locks"
REPORT_CHUNKS = "reportChunks"
HISTORY = "reportHistory"  # one document per (Complete report, store): the report's CSV row
TICKS = "scheduleTicks"  # one document per claimed tick, _id the tick's µs
ALERT_STATE = "alertState"  # one document per store that is or was down, _id the store id
DELIVERIES = "alertDeliveries"  # one document per report that gave alert events, _id the report id
BSON_DOCUMENT_LIMIT = 16 * 1024 * 1024
# GridFS's chunk size: a reader streaming a CSV holds one chunk document (and its wire buffer) at a time, so 32
# readers hold a few MB, not 32 x 4 MB (what earlier releases stored; such chunks are still read, whole)
CSV_CHUNK_BYTES = 255 * 1024
assert CSV_CHUNK_BYTES < BSON_DOCUMENT_LIMIT - 1024
TRIGGERS = ("api", "schedule")
DELIVERY_STATUSES = ("Pending", "Delivered", "Failed")
TICKS_KEPT = 1_000  # the newest claimed ticks kept; older ones are deleted as new ones are claimed
DELIVERIES_KEPT = 1_000  # the newest alert deliveries kept
# A scheduled report whose heartbeat (or, before its record exists, whose tick's claim) is younger than `prepare`'s
# stale_after (the service's STALE_AFTER_SECONDS), or this many lease periods in a store never prepared, is still
# running: the next tick is skipped.  Older, it is taken for dead (the stale sweep fails it), as in the SQLite store.
SCHEDULE_BUSY_LEASES = 2
LOST_START_ERROR = (
    "the worker that claimed this scheduled tick stopped before it recorded the report, so the report never ran; "
    "the next tick starts another"
)
READ_BATCH_SIZE = 50_000

SERVER_SELECTION_MS = 30_000  # jobs wait this long for a server: longer than a replica-set election (~12 s)
# every database call of one HTTP request together; with no server a request answers in 1.000-1.009 s: server
# selection wakes in 0.5 s heartbeat steps, so 0.75 and 0.9 answered no sooner than 1.0 does
REQUEST_SECONDS = 1.0
DOWN_REQUEST_SECONDS = 0.2  # a request's limit while the driver knows every server is down
# /health's ping: server selection overshoots its limit by up to one 0.5 s heartbeat step, so with no server
# 0.5 s answered in 0.5-1.0 s (1.001 s once) and 0.3 s in 0.33-0.79 s, inside the spec's second
PING_SECONDS = 0.3
JOB_RETRY_SECONDS = 120  # a job retries transient errors (with backoff) for this long before it fails
MAINTENANCE_MAX_PAUSE = 30.0  # the background start-up work retries at most this far apart
HEALTH_SECONDS = 1.0  # every database call of `health` together

# What this store asks of a server that older releases lack: (what, the wire version that has it, its release).
# The start-up check refuses a server (or a replica-set member) whose maxWireVersion is below the highest.
SERVER_FEATURES = (
    ("updates with aggregation pipelines and $$NOW (leases, report times, the stale sweep)", 8, "4.2"),
    ("find projections with expressions (the Arrow read of polls)", 9, "4.4"),
)
NEEDED_WIRE_VERSION, NEEDED_RELEASE = max((wire, release) for _, wire, release in SERVER_FEATURES)

# upload batches, the upload journal and report completion: in the on-disk journal of a majority before acknowledged
DURABLE = WriteConcern(w="majority", j=True)
DISK_FULL_CODES = frozenset({14031, 12501})  # OutOfDiskSpace; a quota exceeded
# what a database of the first releases (schema 1, no mark) holds; later ones too when a migration stopped part-way
SCHEMA_1_COLLECTIONS = frozenset({STATUS, HOURS, ZONES, REPORTS, REPORT_CHUNKS, LOCKS})
OWN_COLLECTIONS = SCHEMA_1_COLLECTIONS | {UPLOADS, META, HISTORY, TICKS, ALERT_STATE, DELIVERIES}
SCHEMA_MARK = "schema"  # the _id of the meta document
ALERTS_SEEN = "alerts"  # the _id of the meta document {as_of_us: the newest as_of record_alerts was given}
SCHEMA_PENDING = "the database has not been checked yet (the start-up work is still running); try again shortly"
WRITER_GONE = "the process loading it stopped part-way"
MONGOMOCK_WARNING = "MONGO_URI=mongomock://: an in-process test double that keeps nothing (tests and demos only)"

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
        # previous_complete_report: the Complete ones by creation, then id
        IndexModel(
            [("status", ASCENDING), ("created_at", DESCENDING), ("report_id", DESCENDING)], name="status_created"
        ),
    ],
    REPORT_CHUNKS: [IndexModel([("report_id", ASCENDING), ("n", ASCENDING)], name="report_chunk", unique=True)],
    # newest first, and in the order begun within one millisecond (seq); by digest, what finished an upload
    UPLOADS: [
        IndexModel([("at", DESCENDING), ("seq", DESCENDING)], name="at"),
        IndexModel([("digest", ASCENDING)], name="digest"),
    ],
    # store_history: a store's points newest as_of first, then newest created (then id: one order for ties);
    # by report, what a deletion removes
    HISTORY: [
        IndexModel(
            [("store_id", ASCENDING), ("as_of_us", DESCENDING), ("created_us", DESCENDING), ("report_id", DESCENDING)],
            name="store_as_of",
        ),
        IndexModel([("report_id", ASCENDING)], name="report"),
    ],
    ALERT_STATE: [IndexModel([("report_id", ASCENDING)], name="report")],  # the flips a report made
    DELIVERIES: [
        IndexModel([("delivery_id", ASCENDING)], name="delivery_id", unique=True),
        IndexModel([("created_at", DESCENDING), ("seq", DESCENDING)], name="created"),
        IndexModel([("status", ASCENDING), ("created_at", ASCENDING), ("seq", ASCENDING)], name="pending"),
    ],
}
# indexes of earlier versions that must go: the millisecond unique key breaks on sub-millisecond polls
RETIRED_INDEXES = {STATUS: ["store_time"]}
# the options that make two indexes on the same keys different (anything else, e.g. "v", is the server's)
INDEX_OPTIONS = ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds", "collation")

REPORT_FIELDS = {
    "_id": 0,
    "report_id": 1,
    "status": 1,
    "created_at": 1,
    "heartbeat_at": 1,
    "finished_at": 1,
    "requested_as_of_us": 1,
    "as_of_us": 1,
    "progress": 1,
    "row_count": 1,
    "error": 1,
    "csv_bytes": 1,
    "as_of_after_newest_poll": 1,
    "trigger": 1,
}
HISTORY_PROJECTION = {"_id": 0, **{field: 1 for field in database.HISTORY_FIELDS}}
POLL_PROJECTION = {"_id": 0, "store_id": 1, "timestamp_us": 1, "status": 1}
# The same fields for the Arrow path, renamed by the server to one letter each (find projections take
# expressions since MongoDB 4.4).  pymongoarrow looks every field of every document up by its name as a
# bytes object; CPython keeps one-byte bytes objects cached with their hashes, so one-letter names save
# an allocation and a hash per field: about 40 % of the decoding (and 23 bytes per poll on the wire).
# A poll that lacks a field gets no renamed field either, so the reader still notices it.
RAW_POLL_FIELDS = {"s": "store_id", "t": "timestamp_us", "a": "status"}
RAW_POLL_PROJECTION = {"_id": 0, **{short: f"${name}" for short, name in RAW_POLL_FIELDS.items()}}

# True inside an HTTP request (request_scope): no retries there, the request answers within its time limit
_IN_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar("mongo_in_request", default=False)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: a lost connection, no primary (an election) or a write the server labels retryable."""
    if isinstance(error, AutoReconnect):  # includes NotPrimaryError, NetworkTimeout, ServerSelectionTimeoutError
        return True
    return isinstance(error, PyMongoError) and error.has_error_label("RetryableWriteError")


def _log_retry(state: tenacity.RetryCallState) -> None:
    log.warning(
        "database call %s failed (%s); retrying in %.1f s",
        getattr(state.fn, "__name__", "?"),
        describe_error(state.outcome.exception()),
        state.next_action.sleep if state.next_action else 0.0,
    )


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
        return value.replace(tzinfo=dt.UTC)
    return value


def _raise_unless_duplicates(error: BulkWriteError) -> None:
    """Duplicate keys (11000) are expected on re-loads; any other write or write-concern error is raised."""
    others = [e for e in error.details.get("writeErrors", []) if e.get("code") != 11000]
    if others or error.details.get("writeConcernErrors"):
        raise error


def is_disk_full(error: BaseException) -> bool:
    """The server refused a write for want of disk (or quota), in the error itself or in a bulk write's errors."""
    codes = {getattr(error, "code", None)}
    if isinstance(error, BulkWriteError):
        details = error.details or {}
        codes |= {e.get("code") for e in details.get("writeErrors", []) + details.get("writeConcernErrors", [])}
    return bool(codes & DISK_FULL_CODES)


def does_not_answer(error: BaseException) -> bool:
    """No server, no connection, or the time limit ran out: the database did not answer (rather than refuse)."""
    return isinstance(error, ConnectionFailure) or bool(getattr(error, "timeout", False))


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
            stale = [
                other
                for other, info in existing.items()
                if other != "_id_" and (other == name or _key_of(info["key"]) == key)
            ]
            for other in stale:
                log.warning(
                    "rebuilding index %s.%s (declared %s %s, found %s %s)",
                    collection.name,
                    name,
                    key,
                    options,
                    _key_of(existing[other]["key"]),
                    _options_of(existing[other]),
                )
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
            np.take(
                every_id[position[first : first + len(batch_ids)]],
                batch_codes,
                out=store_ids[row : row + len(batch_codes)],
            )
            row, first = row + len(batch_codes), first + len(batch_ids)
    return pd.DataFrame(
        {
            "store_id": pd.Series(store_ids, dtype=object, copy=False),
            "timestamp_us": np.concatenate(stamps) if stamps else np.empty(0, dtype=np.int64),
            "active": np.concatenate(active) if active else np.empty(0, dtype=bool),
        },
        copy=False,
    )


def polls_from_documents(documents: Iterable[dict]) -> pd.DataFrame:
    """Poll documents, decoded into Python dicts, into the engine's frame (the mongomock path)."""
    rows = [(d["store_id"], int(d["timestamp_us"]), d["status"] == "active") for d in documents]
    polls = pd.DataFrame(rows, columns=["store_id", "timestamp_us", "active"])
    return polls.astype({"store_id": object, "timestamp_us": np.int64, "active": bool})


# --------------------------------------------------------------------------- records of reports, history, alerts


def _new_report_fields(as_of_us: int | None) -> dict:
    """A new report's record but its id, trigger and times: Running, progress 0 of unknown."""
    return {
        "status": "Running",
        "finished_at": None,
        "requested_as_of_us": as_of_us,
        "as_of_us": None,
        "progress": {"done": 0, "total": None},
        "row_count": None,
        "error": None,
        "csv_chunks": None,
        "csv_bytes": None,
        "as_of_after_newest_poll": False,
    }


def _created_us(record: dict) -> int | None:
    created = record.get("created_at")
    return None if created is None else utils.datetime_to_us(_aware(created))


def _history_point(doc: dict) -> dict:
    point = {"report_id": doc["report_id"], "as_of_us": None if doc.get("as_of_us") is None else int(doc["as_of_us"])}
    point.update({name: float(doc[name]) for name in utils.REPORT_COLUMNS[1:]})
    return point


def _delivery_record(doc: dict) -> dict:
    return {
        "delivery_id": doc["delivery_id"],
        "report_id": doc["report_id"],
        "as_of_us": int(doc["as_of_us"]),
        "created_at": _aware(doc.get("created_at")),
        "status": doc["status"],
        "attempts": int(doc["attempts"]),
        "last_attempt_at": _aware(doc.get("last_attempt_at")),
        "http_status": doc.get("http_status"),
        "error": doc.get("error"),
        "events": int(doc["events"]),
        "body": bytes(doc["body"]) if "body" in doc else None,
    }


# --------------------------------------------------------------------------- the store


class MongoStore(database.Store):
    def __init__(
        self,
        uri: str,
        name: str = database.DEFAULT_DB,
        server_selection_ms: int = SERVER_SELECTION_MS,
        job_retry_seconds: float = JOB_RETRY_SECONDS,
    ):
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
        self.schema_version: int | None = None  # None until the schema check has read the database
        self.migrations_applied: list[str] = []
        self._schema_passed = False
        self._refusal: database.DatabaseRefused | None = None
        self._server: dict | None = None  # the server's version and the features checked, once the check ran
        self._stale_after: dt.timedelta | None = None  # prepare's: how long a silent Running report counts as alive
        self._schema_lock = threading.Lock()
        if uri.startswith("mongomock://"):
            import mongomock

            self._client = mongomock.MongoClient(tz_aware=True)
            self.kind, self.label, self.warning_on_start = "mongomock", "mongomock at MONGO_URI", MONGOMOCK_WARNING
        else:
            self.kind, self.label = "mongodb", "MongoDB at MONGO_URI"
            if not uri.startswith("mongodb+srv://"):
                self._client = self._new_client()  # no I/O: connect=False
        self.seeds_on_start = self.kind == "mongomock"  # in-process, empty at each start; a server is loaded by hand
        self.server_clock = self.kind == "mongodb"  # mongomock has no $$NOW
        if self.kind == "mongomock":
            self._check_schema()  # in-process: no server to wait for

    def _new_client(self):
        return pymongo.MongoClient(
            self.uri,
            connect=False,
            tz_aware=True,
            serverSelectionTimeoutMS=self._server_selection_ms,
            appname="store-uptime",
        )

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

    # ----- lifecycle

    def spec(self) -> dict:
        return {"uri": self.uri, "name": self.name}

    def request_scope(self):
        """Every database call of one HTTP request within REQUEST_SECONDS together, and no retries.

        When the driver's last look found every server down, a request gets only DOWN_REQUEST_SECONDS: it
        fails (503) almost at once instead of waiting out its second, yet still finds a server that is back
        (a waiting request makes the driver look again at once).
        """
        if self.kind != "mongodb":
            return contextlib.nullcontext()
        return _request_scope(DOWN_REQUEST_SECONDS if self._every_server_down() else REQUEST_SECONDS)

    def _every_server_down(self) -> bool:
        """True when each server the driver knows failed its last check (none answered since)."""
        if not isinstance(self._client, pymongo.MongoClient):
            return False  # not built yet, or a test double
        servers = list(self._client.topology_description.server_descriptions().values())
        return bool(servers) and all(server.error is not None for server in servers)

    def ping(self, timeout: float | None = None, quiet: bool = False) -> bool:
        """One `ping` command within `timeout` seconds (None: PING_SECONDS)."""
        try:
            with pymongo.timeout(PING_SECONDS if timeout is None else timeout):
                self.client.admin.command("ping")
        except PyMongoError as error:
            if not quiet:
                log.warning("database ping failed: %s", describe_error(error))
            return False
        return True

    def migrate(self) -> list[str]:
        """Check the schema (migrating an older one forward; DatabaseRefused for a foreign or newer database),
        then reconcile the indexes; returns the index problems."""
        self._check_schema()
        return self._reconcile_indexes()

    def _reconcile_indexes(self) -> list[str]:
        failed = []
        for collection, models in INDEXES.items():
            problems = reconcile_indexes(self.db[collection], models, RETIRED_INDEXES.get(collection, ()))
            for problem in problems:
                log.error("index problem: %s", problem)
            failed += problems
        if not failed:
            self._indexes_ready.set()
        return failed

    def prepare(self, stale_after: dt.timedelta) -> int:
        """On a server, `_start_maintenance` (the server may be away: nothing here waits for it) and 0; on
        mongomock, which answers at once, the schema, the indexes and the stale sweep now."""
        self._stale_after = stale_after
        if self.kind == "mongodb":
            self._start_maintenance(stale_after)
            return 0
        self.migrate()
        return self.fail_stale_reports(stale_after)

    def _start_maintenance(self, stale_after: dt.timedelta) -> threading.Thread:
        """In a background thread, until each has succeeded once: build the client (resolving a
        `mongodb+srv://` address), check the schema, reconcile the indexes, and fail the stale Running reports.

        A failure logs one line and is retried with backoff; a refused database (DatabaseRefused) logs
        one line and stops the work for good.  Nothing here blocks the caller.
        """
        self._resolving_in_background = self._client is None
        self._maintenance = threading.Thread(
            target=self._maintain, args=(stale_after,), name="mongo-maintenance", daemon=True
        )
        self._maintenance.start()
        return self._maintenance

    def _maintain(self, stale_after: dt.timedelta) -> None:
        pause, steps = self.maintenance_first_pause, ["client", "schema", "indexes", "stale reports"]
        while steps and not self._stop.is_set():
            try:
                self._maintenance_step(steps[0], stale_after)
                steps.pop(0)
                pause = self.maintenance_first_pause
            except database.DatabaseRefused as error:
                log.error("database start-up work stopped: %s", error)
                return
            except (PyMongoError, RuntimeError) as error:
                log.warning(
                    "database start-up work (%s) failed, retrying in %.0f s: %s", steps[0], pause, describe_error(error)
                )
                self._stop.wait(pause)
                pause = min(pause * 2, MAINTENANCE_MAX_PAUSE)
        if not steps:
            log.info("MongoDB ready: schema %s, indexes reconciled, stale reports swept", self.schema_version)

    def _maintenance_step(self, step: str, stale_after: dt.timedelta) -> None:
        if step == "client":
            with self._client_lock:
                if self._client is None:
                    self._client = self._new_client()
            self._resolving_in_background = False
        elif step == "schema":
            with pymongo.timeout(max(60.0, self._server_selection_ms / 1000)):
                self.client.admin.command("ping")
            self._check_schema()
        elif step == "indexes":
            if self.migrate():
                raise RuntimeError("some indexes could not be made (see above)")
        else:
            stale = self.fail_stale_reports(stale_after)
            if stale:
                log.warning("marked %d stale Running reports as Failed", stale)

    def is_empty(self) -> bool:
        return all(self.db[name].count_documents({}, limit=1) == 0 for name in (STATUS, HOURS, ZONES))

    def close(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.close()

    def _require_schema(self) -> None:
        """Writes go only to a database the schema check passed: a refusal is raised again, and while the
        start-up thread has not finished the check, ConnectionFailure (transient: the API answers 503)."""
        if self._schema_passed:
            return
        if self._refusal is not None:
            raise self._refusal
        if self._maintenance is not None:  # the start-up thread owns the check: a request never waits on it
            raise ConnectionFailure(SCHEMA_PENDING)
        self._check_schema()

    def _before_writing(self) -> None:
        """The schema check has passed, and unique indexes exist before the first insert (they cannot be
        built over duplicates later).

        Not the indexes on mongomock: it checks a unique index by scanning the collection at every insert
        (quadratic loads), and one process's upserts cannot race each other there anyway.
        """
        self._require_schema()
        if self.kind == "mongodb" and not self._indexes_ready.is_set():
            failed = self._reconcile_indexes()
            if failed:
                raise OperationFailure(f"the indexes are not right, so nothing is written: {failed[0]}")

    def _durable(self, name: str):
        return self.db[name].with_options(write_concern=DURABLE)

    def _disk_full(self, what: str) -> database.DiskFull:
        return database.DiskFull(f"MongoDB database {self.name}", None, what=what)

    @contextlib.contextmanager
    def _disk_full_as(self, what: str):
        """A write the server refused for want of disk (or quota) raised as database.DiskFull (`what` names it)."""
        try:
            yield
        except PyMongoError as error:
            if is_disk_full(error):
                raise self._disk_full(what) from error
            raise

    # ----- the schema: the meta document, numbered steps from an older version, refusals

    def _check_schema(self) -> None:
        """Read the database's schema mark and bring it to SCHEMA_VERSION, once; raises DatabaseRefused
        (and remembers it: a refusal is permanent) for a foreign or newer database, writing nothing."""
        with self._schema_lock:
            if self._refusal is not None:
                raise self._refusal
            if self._schema_passed:
                return
            try:
                if self.kind == "mongodb":
                    self._check_server()
                version = self._found_version()
            except database.DatabaseRefused as refusal:
                self._refusal = refusal
                raise
            self.schema_version = version
            self.migrations_applied += self._migrate_from(version)
            self.schema_version, self._schema_passed = SCHEMA_VERSION, True

    def _check_server(self) -> None:
        """Refuse (DatabaseRefused) a server too old for what this store sends: its release from buildInfo,
        its wire version the lowest maxWireVersion among the members the client knows (after a failover
        any of them may be the primary).  A client that is not pymongo's (a test double) has no server."""
        if not isinstance(self.client, pymongo.MongoClient):
            return
        version = str(self.client.admin.command("buildInfo").get("version", "unknown"))
        wires = [
            server.max_wire_version
            for server in self.client.topology_description.server_descriptions().values()
            if server.is_server_type_known
        ]
        wire = min(wires) if wires else 0
        self._server = {
            "server_version": version,
            "server_wire_version": wire,
            "server_features": {what: wire >= needed for what, needed, _ in SERVER_FEATURES},
        }
        if wire < NEEDED_WIRE_VERSION:
            lacking = "; ".join(what for what, needed, _ in SERVER_FEATURES if wire < needed)
            raise database.DatabaseRefused(
                f"MongoDB {NEEDED_RELEASE} or newer is needed, found {version} (wire version {wire}, "
                f"which lacks {lacking}): upgrade the server"
            )

    def _found_version(self) -> int:
        """0 for an empty database, else its schema version; DatabaseRefused when it is not this service's."""
        names = sorted(n for n in self.db.list_collection_names() if not n.startswith("system."))
        mark = self.db[META].find_one({"_id": SCHEMA_MARK}) if META in names else None
        if mark is not None:
            return self._version_of(mark, names)
        if not names:
            return 0
        if set(names) - OWN_COLLECTIONS or (META in names and self._meta_holds_others()):
            raise self._foreign(names)
        return 1

    def _meta_holds_others(self) -> bool:
        return self.db[META].count_documents({"_id": {"$nin": [SCHEMA_MARK, "probe", ALERTS_SEEN]}}, limit=1) > 0

    def _version_of(self, mark: dict, names: list[str]) -> int:
        version = mark.get("version")
        if mark.get("application") != database.APPLICATION_NAME or type(version) is not int or version < 1:
            raise self._foreign(names)
        if version > SCHEMA_VERSION:
            self.schema_version = version
            raise database.DatabaseRefused(
                f"MongoDB database {self.name} was made by a newer version of this service (schema {version}; "
                f"this one knows up to {SCHEMA_VERSION}): run that version, or point MONGO_DB at another database"
            )
        return version

    def _foreign(self, names: list[str]) -> database.DatabaseRefused:
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        return database.DatabaseRefused(
            f"MongoDB database {self.name} belongs to something else: it holds {shown}; "
            f"point MONGO_DB at this service's database"
        )

    def _migrate_from(self, version: int) -> list[str]:
        if version == 0:
            self._write_schema_mark(SCHEMA_VERSION)
            log.info("MongoDB database %s is new: marked as schema %d", self.name, SCHEMA_VERSION)
            return []  # made, not migrated
        applied = []
        for number in range(version, SCHEMA_VERSION):
            description, step = MIGRATIONS[number]
            step(self)
            self._write_schema_mark(number + 1)  # after the step: a crash in it leaves `number`, run again
            applied.append(f"schema {number} -> {number + 1}: {description}")
            log.info("MongoDB database %s migrated: %s", self.name, applied[-1])
        return applied

    def _write_schema_mark(self, version: int) -> None:
        try:
            self._durable(META).update_one(
                {"_id": SCHEMA_MARK},
                {"$set": {"application": database.APPLICATION_NAME, "version": version}},
                upsert=True,
            )
        except DuplicateKeyError:  # another process wrote the same mark first
            pass

    def _step_uploads_journal(self) -> None:
        """1 -> 2: the upload journal and its indexes (reports' as_of_after_newest_poll reads False when absent)."""
        try:
            self.db.create_collection(UPLOADS)
        except CollectionInvalid:  # made by an earlier run of this step
            pass
        failed = reconcile_indexes(self.db[UPLOADS], INDEXES[UPLOADS])
        if failed:
            raise OperationFailure(f"the uploads journal's indexes could not be made: {failed[0]}")

    def _step_monitoring(self) -> None:
        """2 -> 3: the collections of history, ticks and alerts with their indexes, then every Complete report's
        rows into the history from its stored CSV.  Reports keep no trigger: without one they read as "api"."""
        for name in (HISTORY, TICKS, ALERT_STATE, DELIVERIES):
            try:
                self.db.create_collection(name)
            except CollectionInvalid:  # made by an earlier run of this step
                pass
        for name in (HISTORY, ALERT_STATE, DELIVERIES):
            failed = reconcile_indexes(self.db[name], INDEXES[name])
            if failed:
                raise OperationFailure(f"the indexes of {name} could not be made: {failed[0]}")
        self._backfill_history()

    def _backfill_history(self) -> None:
        """Each Complete report's rows, parsed from its stored CSV, into the history (a report whose rows are
        all there already, from an earlier run of the step, is passed over).  A report whose stored CSV is
        incomplete or not a report's keeps no history: one warning names it, and the others go on."""
        fields = {"_id": 0, "report_id": 1, "as_of_us": 1, "created_at": 1, "csv_bytes": 1, "row_count": 1}
        reports = list(self.db[REPORTS].find({"status": "Complete"}, fields))  # small: one per report
        kept = 0
        for report in reports:
            report_id = report["report_id"]
            if report.get("row_count") is not None:
                if self.db[HISTORY].count_documents({"report_id": report_id}) == report["row_count"]:
                    continue
            try:
                columns = report_csv.history_rows(self.read_report_csv(report), report_id)
            except ValueError as error:
                log.warning("schema 2 -> 3: report %s keeps no history: %s", report_id, error)
                continue
            if columns is None:
                log.warning("schema 2 -> 3: report %s keeps no history: its stored CSV is not a report CSV", report_id)
                continue
            self._write_history(report_id, report.get("as_of_us"), _created_us(report), columns)
            kept += 1
        if kept:
            log.info("schema 2 -> 3: the rows of %d Complete reports are in the history", kept)

    # ----- health

    def health(self, min_free_bytes: int) -> dict:
        """The schema, a write probe, free disk, an unfinished upload and the newest poll, all within
        HEALTH_SECONDS; a database that does not answer is a problem, not an exception."""
        answer = {"schema_version": self.schema_version, "free_disk_mb": None, "newest_poll_us": None, "problems": []}
        try:
            with pymongo.timeout(HEALTH_SECONDS):
                self._health_checks(answer, min_free_bytes)
        except PyMongoError as error:
            reason = "does not answer" if does_not_answer(error) else "failed"
            answer["problems"].append(f"the database {reason}: {describe_error(error)}")
        answer["schema_version"] = self.schema_version
        if self._server is not None:  # once the start-up check has asked the server
            answer.update(self._server, server_features=dict(self._server["server_features"]))
        return answer

    def _health_checks(self, answer: dict, min_free_bytes: int) -> None:
        problems = answer["problems"]
        try:
            self._require_schema()
        except (database.DatabaseRefused, ConnectionFailure) as error:
            if isinstance(error, ConnectionFailure) and str(error) != SCHEMA_PENDING:
                raise
            problems.append(str(error))
            return  # nothing is written to, or read from, a database that is not (yet) known to be ours
        self._write_probe(problems)
        answer["newest_poll_us"] = self._newest_poll_us()
        unfinished = self.unfinished_upload()
        if unfinished is not None:
            problems.append(
                f"upload {unfinished['upload_id']} of {unfinished['file']} stopped part-way ({unfinished['kind']}, "
                f"{unfinished['written']} of {unfinished['loaded']} rows written): upload the same file again to "
                f"finish it, or dismiss it with `python database.py uploads --dismiss {unfinished['upload_id']}`"
            )
        free = self._free_disk_bytes()
        if free is not None:
            answer["free_disk_mb"] = round(free / 1_048_576, 1)
            if free < min_free_bytes:
                problems.append(
                    f"the disk holding MongoDB database {self.name} has {free / 1_048_576:.0f} MB free, "
                    f"under MIN_FREE_MB ({min_free_bytes / 1_048_576:.0f} MB)"
                )

    def _write_probe(self, problems: list[str]) -> None:
        try:
            self._durable(META).update_one({"_id": "probe"}, {"$set": {"at": now_utc()}}, upsert=True)
        except PyMongoError as error:
            if does_not_answer(error):
                raise
            full = " (its disk is full)" if is_disk_full(error) else ""
            problems.append(f"the database cannot be written{full}: {describe_error(error)}")

    def _free_disk_bytes(self) -> int | None:
        """Free bytes on the server's disk holding this database, from dbStats; None when it does not say."""
        try:
            stats = self.db.command("dbStats")
        except NotImplementedError:  # mongomock
            return None
        except OperationFailure as error:  # e.g. not authorized to run dbStats: unknown, not a fault
            log.info("dbStats refused, free disk unknown: %s", describe_error(error))
            return None
        if "fsTotalSize" not in stats or "fsUsedSize" not in stats:
            return None
        return int(stats["fsTotalSize"] - stats["fsUsedSize"])

    # ----- ingest: each batch an idempotent unit (retried whole), journaled when it belongs to an upload

    def load_polls(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        self._before_writing()
        # into an empty collection plain inserts are the fast bulk path (the file holds each key once)
        fresh = self.db[STATUS].count_documents({}, limit=1) == 0
        parts = (frame.iloc[start : start + database.BATCH_SIZE] for start in range(0, len(frame), database.BATCH_SIZE))
        self._write_journaled(
            ((len(part), functools.partial(self._write_polls, part, fresh)) for part in parts), on_rows, upload_id
        )
        return len(frame)

    @retried
    def _write_polls(self, part: pd.DataFrame, fresh: bool) -> None:
        """One batch of polls; idempotent, so retried whole: keys already there (a first attempt's, or a
        racing load's) are upserted, and the newest load wins for a key."""
        collection = self._durable(STATUS)
        stamps = part["timestamp_us"].to_numpy(dtype=np.int64)
        whole_ms = pd.to_datetime(stamps // 1000 * 1000, unit="us", utc=True).to_pydatetime()
        docs = [
            {
                "store_id": store_id,
                "timestamp_us": int(stamp),
                "timestamp_utc": when,
                "status": "active" if active else "inactive",
            }
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
                UpdateOne(
                    {"store_id": d["store_id"], "timestamp_us": d["timestamp_us"]},
                    {"$set": {"status": d["status"], "timestamp_utc": d["timestamp_utc"]}},
                    upsert=True,
                )
                for d in docs
            ]
            try:
                collection.bulk_write(operations, ordered=False)
            except BulkWriteError as error:
                _raise_unless_duplicates(error)  # two upserts of one new key racing: the row is there

    @retried
    def _replace_batch(self, collection_name: str, store_batch: list[str], rows: list[dict]) -> None:
        collection = self._durable(collection_name)
        collection.delete_many({"store_id": {"$in": store_batch}})
        collection.insert_many([dict(row) for row in rows], ordered=False)  # copies: insert_many adds _id

    def _replace_by_store(
        self, collection_name: str, docs: list[dict], on_rows: Progress, upload_id: str | None
    ) -> None:
        """Delete and insert the rows of the stores named in `docs`, a batch of stores at a time: the rows of
        other stores are never touched."""
        self._before_writing()
        by_store: dict[str, list[dict]] = {}
        for doc in docs:
            by_store.setdefault(doc["store_id"], []).append(doc)
        stores = list(by_store)

        def batches():
            for first in range(0, len(stores), database.BATCH_SIZE):
                store_batch = stores[first : first + database.BATCH_SIZE]
                rows = [doc for store_id in store_batch for doc in by_store[store_id]]
                yield len(rows), functools.partial(self._replace_batch, collection_name, store_batch, rows)

        self._write_journaled(batches(), on_rows, upload_id)

    def replace_hours(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        starts, ends = database.business_hours_text(frame)
        docs = [
            {"store_id": s, "day": int(d), "start_time_local": start, "end_time_local": end}
            for s, d, start, end in zip(frame["store_id"], frame["day"], starts, ends)
        ]
        self._replace_by_store(HOURS, docs, on_rows, upload_id)
        return len(docs)

    def replace_zones(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        docs = [{"store_id": s, "timezone_str": z} for s, z in zip(frame["store_id"], frame["timezone_str"])]
        self._replace_by_store(ZONES, docs, on_rows, upload_id)
        return len(docs)

    def _write_journaled(
        self, batches: Iterable[tuple[int, Callable[[], None]]], on_rows: Progress, upload_id: str | None
    ) -> None:
        """Write each batch, noting it in the upload's journal before (`sending`) and after (`written`, the
        rows so far), then call `on_rows`, which may raise and stop the upload there; the last step marks
        the upload Complete.  A full disk raises DiskFull, and leaves the failed batch counted as possibly
        written (`sending`): part of it may be in."""
        written = 0
        try:
            for rows, write in batches:
                self._journal(upload_id, {"sending": rows})
                write()
                written += rows
                self._journal(upload_id, {"written": written, "sending": 0})
                on_rows(rows)
            if upload_id is not None:
                self._complete_upload(upload_id, written)
        except PyMongoError as error:
            if not is_disk_full(error):
                raise
            raise self._disk_full("upload" if not written else f"upload after its first {written} rows") from error

    @retried
    def _journal(self, upload_id: str | None, fields: dict) -> None:
        if upload_id is not None:
            self._durable(UPLOADS).update_one({"_id": upload_id}, {"$set": fields})

    @retried
    def _complete_upload(self, upload_id: str, written: int) -> None:
        self._durable(UPLOADS).update_one(
            {"_id": upload_id, "status": "Running"},
            {
                "$set": {"status": "Complete", "written": written, "sending": 0, "error": None},
                "$currentDate": {"finished_at": True},
            },
        )

    # ----- the upload journal

    @retried
    def begin_upload(self, file: str, kind: str, digest: str, loaded: int, rejected: int) -> str:
        self._before_writing()
        upload_id = uuid.uuid4().hex
        fields = {
            "upload_id": upload_id,
            "file": file,
            "kind": kind,
            "digest": digest,
            "finished_at": None,
            "loaded": int(loaded),
            "rejected": int(rejected),
            "written": 0,
            "sending": 0,
            "status": "Running",
            "error": None,
            "dismissed": False,
            "seq": ObjectId(),
        }  # seq: the order of uploads begun at one ms
        try:
            self._durable(UPLOADS).update_one(
                {"_id": upload_id}, {"$setOnInsert": fields, "$currentDate": {"at": True}}, upsert=True
            )
        except PyMongoError as error:
            if is_disk_full(error):
                raise self._disk_full("upload") from error
            raise
        return upload_id

    @retried
    def fail_upload(self, upload_id: str, error: str) -> None:
        self._require_schema()
        self._durable(UPLOADS).update_one(
            {"_id": upload_id, "status": "Running"},
            {"$set": {"status": "Failed", "error": error}, "$currentDate": {"finished_at": True}},
        )

    def dismiss_upload(self, upload_id: str) -> bool:
        self._require_schema()
        return self._durable(UPLOADS).update_one({"_id": upload_id}, {"$set": {"dismissed": True}}).matched_count == 1

    def list_uploads(self, limit: int = 10) -> list[dict]:
        """The newest first.  `written` of an upload that stopped counts the batch it was writing (part of
        it may be in); a Running upload with no live write lease stopped (its process died)."""
        alive = self._writer_alive()
        cursor = self.db[UPLOADS].find({}).sort([("at", DESCENDING), ("seq", DESCENDING)]).limit(max(int(limit), 0))
        return [self._upload_record(doc, alive) for doc in cursor]

    def unfinished_upload(self) -> dict | None:
        alive = self._writer_alive()
        stopped = ["Failed"] if alive else ["Failed", "Running"]
        query = {
            "status": {"$in": stopped},
            "dismissed": {"$ne": True},
            "$or": [{"written": {"$gt": 0}}, {"sending": {"$gt": 0}}],
        }
        for doc in self.db[UPLOADS].find(query).sort([("at", DESCENDING), ("seq", DESCENDING)]):
            if not self._finished_since(doc):
                return self._upload_record(doc, alive)
        return None

    def _finished_since(self, doc: dict) -> bool:
        """A Complete upload of the same bytes begun after this one (which rewrote every row of it)."""
        later = [{"at": {"$gt": doc["at"]}}, {"at": doc["at"], "seq": {"$gt": doc["seq"]}}]
        query = {"digest": doc["digest"], "status": "Complete", "_id": {"$ne": doc["_id"]}, "$or": later}
        return self.db[UPLOADS].count_documents(query, limit=1) > 0

    def _writer_alive(self) -> bool:
        """A write lease is held and not expired (by the server's clock on MongoDB)."""
        if self.server_clock:
            query = {"_id": "data", "$expr": {"$gt": ["$writer.expires", "$$NOW"]}}
        else:
            query = {"_id": "data", "writer.expires": {"$gt": now_utc()}}
        return self.db[LOCKS].count_documents(query, limit=1) > 0

    @staticmethod
    def _upload_record(doc: dict, writer_alive: bool) -> dict:
        status, error, written = doc["status"], doc.get("error"), int(doc.get("written") or 0)
        if status == "Running" and not writer_alive:
            status, error = "Failed", WRITER_GONE
        if status == "Failed":
            written += int(doc.get("sending") or 0)
        return {
            "upload_id": doc["upload_id"],
            "file": doc["file"],
            "kind": doc["kind"],
            "digest": doc["digest"],
            "at": _aware(doc.get("at")),
            "finished_at": _aware(doc.get("finished_at")),
            "loaded": doc["loaded"],
            "rejected": doc["rejected"],
            "written": written,
            "status": status,
            "error": error,
            "dismissed": bool(doc.get("dismissed")),
        }

    # ----- removing and summarising

    def delete_polls(self, store_id: str, since_us: int | None = None, until_us: int | None = None) -> int:
        """Not retried: a second attempt would count only what the first left."""
        self._before_writing()
        bounds = {}
        if since_us is not None:
            bounds["$gte"] = int(since_us)
        if until_us is not None:
            bounds["$lte"] = int(until_us)
        query = {"store_id": store_id, **({"timestamp_us": bounds} if bounds else {})}
        return self._durable(STATUS).delete_many(query).deleted_count

    def data_summary(self) -> dict:
        """Counts from the collections' metadata for polls (a full count reads 1.5 M index keys), exact counts
        for the small ones, the distinct stores by an aggregation over the (store_id, timestamp_us) index
        (a `distinct` answers in one 16 MB document), oldest and newest by the timestamp index."""
        polls = self.db[STATUS]
        pipeline = [{"$sort": {"store_id": 1}}, {"$group": {"_id": "$store_id"}}, {"$count": "stores"}]
        counted = list(polls.aggregate(pipeline, allowDiskUse=True))
        oldest = polls.find_one({}, {"_id": 0, "timestamp_us": 1}, sort=[("timestamp_us", ASCENDING)])
        return {
            "stores": counted[0]["stores"] if counted else 0,
            "polls": polls.estimated_document_count(),
            "hours_rows": self.db[HOURS].count_documents({}),
            "zones": self.db[ZONES].count_documents({}),
            "oldest_poll_us": None if oldest is None else int(oldest["timestamp_us"]),
            "newest_poll_us": self._newest_poll_us(),
        }

    # ----- reading for the report

    @retried
    def latest_poll_us(self) -> int | None:
        return self._newest_poll_us()

    def _newest_poll_us(self) -> int | None:
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
                {
                    "$group": {
                        "_id": "$store_id",
                        "timestamp_us": {"$first": "$timestamp_us"},
                        "status": {"$first": "$status"},
                    }
                },
            ]
            older = [
                {"store_id": d["_id"], "timestamp_us": d["timestamp_us"], "status": d["status"]}
                for d in self.db[STATUS].aggregate(pipeline, allowDiskUse=True)
            ]
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

    def _insert_report(self, report_id: str, fields: dict, now_fields: tuple[str, ...]) -> bool:
        """Record a report unless its record exists: an upsert that keeps whatever is there, so a retry (or a
        second writer) changes nothing.  `now_fields` get now: the server's ($$NOW), the client's on mongomock.
        True when this call made the record."""
        if self.server_clock:
            defaults = {key: {"$literal": value} for key, value in fields.items()}
            defaults.update({name: "$$NOW" for name in now_fields})
            update = [{"$replaceWith": {"$mergeObjects": [defaults, "$$ROOT"]}}]
        else:
            now = now_utc()
            update = {"$setOnInsert": {**fields, **{name: now for name in now_fields}}}
        try:
            return self.db[REPORTS].update_one({"report_id": report_id}, update, upsert=True).upserted_id is not None
        except DuplicateKeyError:  # another writer inserted it between this upsert's match and its insert
            return False

    @retried
    def create_report(self, report_id: str, as_of_us: int | None, trigger: str = "api") -> None:
        if trigger not in TRIGGERS:
            raise ValueError(f"a report's trigger is one of {', '.join(TRIGGERS)}, not {trigger!r}")
        self._require_schema()
        self._insert_report(
            report_id, {**_new_report_fields(as_of_us), "trigger": trigger}, ("created_at", "heartbeat_at")
        )

    @retried
    def update_report(
        self,
        report_id: str,
        *,
        as_of_us: int | None = None,
        progress: dict | None = None,
        as_of_after_newest_poll: bool | None = None,
    ) -> None:
        fields = {}
        if as_of_us is not None:
            fields["as_of_us"] = int(as_of_us)
            fields["as_of"] = _ms_floor(as_of_us)
        if progress is not None:
            fields["progress"] = progress
        if as_of_after_newest_poll is not None:
            fields["as_of_after_newest_poll"] = bool(as_of_after_newest_poll)
        update = {"$currentDate": {"heartbeat_at": True}}
        if fields:
            update["$set"] = fields
        self.db[REPORTS].update_one({"report_id": report_id, "status": "Running"}, update)

    def complete_report(self, report_id: str, csv_bytes: bytes, row_count: int) -> bool:
        """Store the whole CSV in numbered chunks and its rows in the history, then mark the report Complete if
        it is still Running.

        Readers only look for chunks of Complete reports and `store_history` keeps only rows of Complete
        reports, so neither half a CSV nor half a report's history is ever shown; chunks are upserted by
        (report_id, n) and history rows have a deterministic _id (report_id/store_id), so a retry rewrites
        them.  A report Failed before or meanwhile (the status flip matches only Running) stays Failed and its
        chunks and rows are removed: the answer is False.  Bytes that are not a report CSV (the first line
        is not its header) keep no history rows, as in the SQLite store; a report CSV whose rows cannot be read
        (a figure that is not a number) is a ValueError, before anything is stored.
        """
        columns = report_csv.history_rows(csv_bytes, report_id)  # parsed once, outside the retried part
        return self._complete_report(report_id, csv_bytes, row_count, columns)

    @retried
    def _complete_report(self, report_id: str, csv_bytes: bytes, row_count: int, columns: dict | None) -> bool:
        self._require_schema()
        record = self.db[REPORTS].find_one(
            {"report_id": report_id}, {"_id": 0, "status": 1, "as_of_us": 1, "created_at": 1}
        )
        if record is not None and record["status"] == "Complete":
            return True  # a retry of this call whose first answer was lost
        if record is None or record["status"] != "Running":
            self._drop_report_data([report_id])
            return False
        try:
            return self._store_csv(report_id, csv_bytes, row_count, record, columns)
        except PyMongoError as error:
            if not is_disk_full(error):
                raise
            with contextlib.suppress(PyMongoError):
                self._drop_report_data([report_id])
            raise self._disk_full("report") from error

    def _store_csv(self, report_id: str, csv_bytes: bytes, row_count: int, record: dict, columns: dict | None) -> bool:
        pieces = [csv_bytes[i : i + CSV_CHUNK_BYTES] for i in range(0, len(csv_bytes), CSV_CHUNK_BYTES)] or [b""]
        chunks = self._durable(REPORT_CHUNKS)
        for n, piece in enumerate(pieces):
            chunks.replace_one(
                {"report_id": report_id, "n": n}, {"report_id": report_id, "n": n, "data": piece}, upsert=True
            )
        chunks.delete_many({"report_id": report_id, "n": {"$gte": len(pieces)}})
        self._write_history(report_id, record.get("as_of_us"), _created_us(record), columns)
        flipped = self._durable(REPORTS).update_one(
            {"report_id": report_id, "status": "Running"},
            {
                "$set": {
                    "status": "Complete",
                    "row_count": row_count,
                    "csv_chunks": len(pieces),
                    "csv_bytes": len(csv_bytes),
                },
                "$currentDate": {"finished_at": True},
            },
        )
        if flipped.matched_count == 1:
            return True
        self._drop_report_data([report_id])  # failed meanwhile: it keeps no CSV and no history
        return False

    def _write_history(
        self, report_id: str, as_of_us: int | None, created_us: int | None, columns: dict | None
    ) -> None:
        """The report's rows into the history (none for bytes that are not a report CSV), BATCH_SIZE documents
        a time, unordered; each row's _id is report_id/store_id, so a row written twice (a retry, a second
        writer) is a duplicate key, skipped.  Rows an earlier attempt left of another CSV of the same report
        go first."""
        history = self._durable(HISTORY)
        history.delete_many({"report_id": report_id})
        if columns is None:
            return
        store_ids = columns["store_id"]
        figures = {name: columns[name] for name in utils.REPORT_COLUMNS[1:]}
        for first in range(0, len(store_ids), database.BATCH_SIZE):
            docs = [
                {
                    "_id": f"{report_id}/{store_id}",
                    "report_id": report_id,
                    "store_id": store_id,
                    "as_of_us": as_of_us,
                    "created_us": created_us,
                    **{name: float(values[row]) for name, values in figures.items()},
                }
                for row, store_id in enumerate(store_ids[first : first + database.BATCH_SIZE], start=first)
            ]
            try:
                history.insert_many(docs, ordered=False)
            except BulkWriteError as error:
                _raise_unless_duplicates(error)

    @retried
    def _drop_report_data(self, report_ids: list[str]) -> None:
        """The stored CSV chunks and history rows of these reports."""
        self.db[HISTORY].delete_many({"report_id": {"$in": report_ids}})
        self.db[REPORT_CHUNKS].delete_many({"report_id": {"$in": report_ids}})

    @retried
    def fail_report(self, report_id: str, error: str) -> None:
        self.db[REPORTS].update_one(
            {"report_id": report_id, "status": "Running"},
            {"$set": {"status": "Failed", "error": error}, "$currentDate": {"finished_at": True}},
        )

    @retried
    def beat(self, report_ids: list[str]) -> None:
        if report_ids:
            self.db[REPORTS].update_many(
                {"report_id": {"$in": report_ids}, "status": "Running"}, {"$currentDate": {"heartbeat_at": True}}
            )

    @retried
    def fail_stale_reports(self, older_than: dt.timedelta) -> int:
        """Fail Running reports whose heartbeat is older than `older_than` by the server's clock, and record
        Failed the scheduled reports whose tick was claimed that long ago but whose record was never made (see
        `claim_tick`)."""
        self._require_schema()
        if self.server_clock:
            cutoff = {"$subtract": ["$$NOW", int(older_than.total_seconds() * 1000)]}
            result = self.db[REPORTS].update_many(
                {"status": "Running", "$expr": {"$lt": ["$heartbeat_at", cutoff]}},
                [{"$set": {"status": "Failed", "finished_at": "$$NOW", "error": {"$literal": database.STALE_ERROR}}}],
            )
        else:
            result = self.db[REPORTS].update_many(
                {"status": "Running", "heartbeat_at": {"$lt": now_utc() - older_than}},
                {"$set": {"status": "Failed", "error": database.STALE_ERROR}, "$currentDate": {"finished_at": True}},
            )
        return result.modified_count + self._record_lost_starts(older_than)

    def _older_than(self, field: str, age: dt.timedelta) -> dict:
        """The query: the date `field` is older than `age` by the server's clock (the client's on mongomock)."""
        if self.server_clock:
            return {"$expr": {"$lt": [f"${field}", {"$subtract": ["$$NOW", int(age.total_seconds() * 1000)]}]}}
        return {field: {"$lt": now_utc() - age}}

    def _record(self, doc: dict | None) -> dict | None:
        if doc is None:
            return None
        for key in ("created_at", "heartbeat_at", "finished_at"):
            doc[key] = _aware(doc.get(key))
        doc["as_of_after_newest_poll"] = bool(doc.get("as_of_after_newest_poll", False))  # absent in schema 1
        doc.setdefault("trigger", "api")  # absent before schema 3
        return doc

    def find_report(self, report_id: str) -> dict | None:
        return self._record(self.db[REPORTS].find_one({"report_id": report_id}, REPORT_FIELDS))

    def count_reports(self) -> int:
        return self.db[REPORTS].count_documents({})

    def list_reports(self, skip: int = 0, limit: int = 20) -> list[dict]:
        cursor = self.db[REPORTS].find({}, REPORT_FIELDS).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        return [self._record(doc) for doc in cursor.skip(skip).limit(limit)]

    def delete_finished_reports(self, finished_before: dt.datetime, keep_newest: int) -> list[str]:
        """The records go first, a batch at a time, then their CSV chunks and history rows; then the data of
        any report without a record (a deletion that stopped between the two) goes too."""
        self._require_schema()
        finished = {"status": {"$in": ["Complete", "Failed"]}}
        reports = self.db[REPORTS]
        old = reports.find({**finished, "finished_at": {"$lt": finished_before}}, {"_id": 0, "report_id": 1})
        beyond = (
            reports.find(finished, {"_id": 0, "report_id": 1})
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .skip(max(keep_newest, 0))
        )
        ids = sorted({doc["report_id"] for doc in old} | {doc["report_id"] for doc in beyond})
        for start in range(0, len(ids), database.BATCH_SIZE):
            batch = ids[start : start + database.BATCH_SIZE]
            # the record goes first: a report is never listed without its CSV, nor its history shown without it
            reports.delete_many({"report_id": {"$in": batch}, **finished})
            self._drop_report_data(batch)
        self._sweep_orphans()
        return ids

    def _sweep_orphans(self) -> list[str]:
        """Delete the CSV chunks and history rows of reports that have no record (a deletion stopped between
        the record and its data); returns those reports' ids.  A report's data is written only while its
        record exists (Running), and a Running record is never deleted, so no report being completed is hit.
        The ids come from the report_id indexes ($sort then $group: a DISTINCT_SCAN on a server)."""
        pipeline = [{"$sort": {"report_id": 1}}, {"$group": {"_id": "$report_id"}}]
        held = sorted(
            {
                doc["_id"]
                for name in (REPORT_CHUNKS, HISTORY)
                for doc in self.db[name].aggregate(pipeline, allowDiskUse=True)
            }
        )
        present = set()
        for start in range(0, len(held), database.BATCH_SIZE):
            batch = held[start : start + database.BATCH_SIZE]
            found = self.db[REPORTS].find({"report_id": {"$in": batch}}, {"_id": 0, "report_id": 1})
            present |= {doc["report_id"] for doc in found}
        orphans = [report_id for report_id in held if report_id not in present]
        if orphans:
            log.warning(
                "deleting the stored CSVs and history of %d reports whose records are gone (a deletion stopped "
                "part-way): %s",
                len(orphans),
                ", ".join(orphans[:20]),
            )
            for start in range(0, len(orphans), database.BATCH_SIZE):
                self._drop_report_data(orphans[start : start + database.BATCH_SIZE])
        return orphans

    def delete_report(self, report_id: str) -> bool:
        """The record goes first, by a delete that matches only a finished report (a Running one, or none, is
        left untouched: False), then its CSV chunks and history rows.  A deletion that stops between them
        leaves data no reader shows (history keeps rows of Complete reports only, and a CSV is read for a
        record), which the next `delete_finished_reports` removes.  Not retried: a retry after a lost answer
        would find nothing to delete and answer False."""
        self._require_schema()
        finished = {"report_id": report_id, "status": {"$in": ["Complete", "Failed"]}}
        if self.db[REPORTS].delete_one(finished).deleted_count != 1:
            return False
        self._drop_report_data([report_id])
        return True

    def previous_complete_report(self, report_id: str) -> dict | None:
        """Read down the status_created index from this report's creation time: the first Complete report that
        is earlier (created before it, or at the same instant with a smaller id)."""
        this = self.db[REPORTS].find_one({"report_id": report_id}, {"_id": 0, "created_at": 1})
        if this is None or this.get("created_at") is None:
            return None
        created = this["created_at"]
        cursor = (
            self.db[REPORTS]
            .find({"status": "Complete", "created_at": {"$lte": created}}, REPORT_FIELDS)
            .sort([("created_at", DESCENDING), ("report_id", DESCENDING)])
        )
        for doc in cursor:
            if _aware(doc["created_at"]) < _aware(created) or doc["report_id"] < report_id:
                return self._record(doc)
        return None

    def read_report_csv(self, report: dict) -> bytes:
        chunks = self.db[REPORT_CHUNKS].find({"report_id": report["report_id"]}, {"_id": 0, "n": 1, "data": 1})
        ordered = sorted(chunks, key=lambda chunk: chunk["n"])  # the server promises no order without a sort
        return database.checked_report_csv(report, b"".join(bytes(chunk["data"]) for chunk in ordered))

    def iter_report_csv(self, report: dict, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Checked now, before any piece: the record still holds as many chunks as it says (a report deleted
        meanwhile, or chunks missing, is a ValueError at once); then, as the pieces are taken, the chunk
        documents one per round trip (batch size 1) in chunk order, each cut into pieces of `chunk_bytes`.  A
        chunk missing from the numbering, or a total other than the record's csv_bytes, is a ValueError when
        found (the total after the last piece)."""
        if int(chunk_bytes) < 1:
            raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
        report_id, expected = report["report_id"], report.get("csv_bytes")
        if expected is not None:
            record = self.db[REPORTS].find_one({"report_id": report_id}, {"_id": 0, "csv_chunks": 1})
            stored = self.db[REPORT_CHUNKS].count_documents({"report_id": report_id})
            if record is None or (record.get("csv_chunks") is not None and stored != record["csv_chunks"]):
                raise ValueError(f"report {report_id}: stored CSV is incomplete")
        return self._csv_pieces(report_id, int(chunk_bytes), expected)

    def _csv_pieces(self, report_id: str, chunk_bytes: int, expected: int | None) -> Iterator[bytes]:
        cursor = (
            self.db[REPORT_CHUNKS]
            .find({"report_id": report_id}, {"_id": 0, "n": 1, "data": 1}, batch_size=1)
            .sort("n", ASCENDING)
        )
        sent = 0
        with contextlib.closing(cursor):
            for position, chunk in enumerate(cursor):
                if chunk["n"] != position:
                    raise ValueError(f"report {report_id}: stored CSV is incomplete")
                data = chunk.pop("data")
                for start in range(0, len(data), chunk_bytes):
                    piece = bytes(data[start : start + chunk_bytes])
                    sent += len(piece)
                    yield piece
                del data
        if expected is not None and sent != expected:
            raise ValueError(f"report {report_id}: stored CSV is incomplete")

    def store_history(
        self, store_id: str, since_us: int | None = None, until_us: int | None = None, limit: int = 100
    ) -> list[dict]:
        """The store's rows down the store_as_of index, a page of `limit` at a time, each page's reports looked
        up at once ($in) to keep the rows of Complete ones: rows of a report not (yet, or no longer) Complete
        are never shown.  Usually one page."""
        limit = int(limit)
        if limit <= 0:
            return []
        query: dict = {"store_id": store_id}
        bounds = {}
        if since_us is not None:
            bounds["$gte"] = int(since_us)
        if until_us is not None:
            bounds["$lte"] = int(until_us)
        if bounds:
            query["as_of_us"] = bounds
        cursor = (
            self.db[HISTORY]
            .find(query, HISTORY_PROJECTION, batch_size=limit)
            .sort([("as_of_us", DESCENDING), ("created_us", DESCENDING), ("report_id", DESCENDING)])
        )
        points: list[dict] = []
        with contextlib.closing(cursor):
            while len(points) < limit:
                page = list(itertools.islice(cursor, limit - len(points)))
                if not page:
                    break
                ids = sorted({doc["report_id"] for doc in page})
                complete = {
                    doc["report_id"]
                    for doc in self.db[REPORTS].find(
                        {"report_id": {"$in": ids}, "status": "Complete"}, {"_id": 0, "report_id": 1}
                    )
                }
                points += [_history_point(doc) for doc in page if doc["report_id"] in complete]
        return points

    # ----- the schedule: a tick is claimed by inserting its document; then the report's record is made

    @retried
    def clock_us(self) -> int:
        """The server's clock: `hello`'s localTime (milliseconds), or `isMaster`'s on a 4.4 before 4.4.2 (no
        `hello`).  mongomock has no clock of its own: this host's stands in."""
        if not self.server_clock:
            return utils.datetime_to_us(now_utc())
        try:
            answer = self.client.admin.command("hello")
        except OperationFailure as error:
            if error.code != 59:  # CommandNotFound
                raise
            answer = self.client.admin.command("isMaster")
        return utils.datetime_to_us(_aware(answer["localTime"]))

    def _schedule_busy_for(self) -> dt.timedelta:
        """How long a silent scheduled report counts as running: the stale sweep's limit once prepared."""
        return self._stale_after or dt.timedelta(seconds=SCHEDULE_BUSY_LEASES * database.LEASE_SECONDS)

    def claim_tick(self, tick_us: int, report_id: str) -> str:
        """Claim the tick by inserting its document, _id the tick: every claimer but the first gets a duplicate
        key ("taken").  The winner's document says "started" with the report's id, or "skipped" when a
        scheduled report is still running (its heartbeat, or its tick's claim if its record is not made yet,
        younger than the stale sweep's limit: see SCHEDULE_BUSY_LEASES).  Then the winner makes the Running record.

        Without a multi-document transaction (a standalone server has none) the two writes are two steps, in
        this order because the tick is what must be unique: a report record made first could not be taken back
        from a loser without showing it.  A claimer that stops between them leaves a started tick naming a
        report with no record: that is a lost start, recorded as a Failed report (LOST_START_ERROR) once the
        claim is older than the busy limit, by the next claim, `last_tick` or the stale sweep; until then the
        next tick is skipped, as if the report were running.  A tick is never claimed twice (a retry after a
        lost answer finds its own claim by `claimed_by`), so no tick makes two reports.
        """
        self._require_schema()
        with self._disk_full_as("scheduled tick"):
            claim = self._claim_tick(int(tick_us), report_id)
        if claim is None:
            return "taken"
        if claim["outcome"] == "started":
            try:
                with self._disk_full_as("scheduled report"):
                    self.create_report(report_id, None, trigger="schedule")
            except Exception:
                with contextlib.suppress(PyMongoError):  # else a later claim or sweep records it, after the limit
                    self._record_lost_starts(None, only=claim["_id"])
                raise
            self._tidy(lambda: self._mark_tick_recorded(claim["_id"]), "mark tick recorded")
        self._tidy(lambda: self._keep_newest(TICKS, [("_id", DESCENDING)], TICKS_KEPT), "trim ticks")
        return claim["outcome"]

    @retried
    def _claim_tick(self, tick_us: int, report_id: str) -> dict | None:
        """The tick's document when this caller claimed it (now, or in an attempt whose answer was lost); None
        when another did, or when the tick is older than every kept one (claimed long ago: it is forgotten)."""
        ticks = self.db[TICKS]
        if ticks.count_documents({"_id": {"$gt": tick_us}}, limit=TICKS_KEPT) >= TICKS_KEPT:
            return None
        busy_for = self._schedule_busy_for()
        self._record_lost_starts(busy_for)
        now_us = self.clock_us()
        started = not self._schedule_busy(now_us, busy_for)
        claim = {
            "_id": tick_us,
            "outcome": "started" if started else "skipped",
            "report_id": report_id if started else None,
            "claimed_by": report_id,
            "claimed_at": utils.us_to_datetime(now_us),
            "claimed_at_us": now_us,
            "recorded": not started,  # a started tick is recorded once its report's record is made
        }
        try:
            self._durable(TICKS).insert_one(claim)
            return claim
        except DuplicateKeyError:
            found = ticks.find_one({"_id": tick_us})
            return found if found is not None and found.get("claimed_by") == report_id else None

    def _schedule_busy(self, now_us: int, busy_for: dt.timedelta) -> bool:
        """A scheduled report is running: its heartbeat is younger than `busy_for`, or its tick was claimed
        less than `busy_for` ago and its record is not made yet (its claimer is between the two writes)."""
        cutoff = utils.us_to_datetime(now_us) - busy_for
        running = {"status": "Running", "trigger": "schedule", "heartbeat_at": {"$gt": cutoff}}
        if self.db[REPORTS].count_documents(running, limit=1):
            return True
        claiming = {"outcome": "started", "recorded": {"$ne": True}, "claimed_at": {"$gt": cutoff}}
        ids = [tick["report_id"] for tick in self.db[TICKS].find(claiming, {"_id": 0, "report_id": 1})]
        return bool(ids) and self.db[REPORTS].count_documents({"report_id": {"$in": ids}}) < len(set(ids))

    def _record_lost_starts(self, older_than: dt.timedelta | None, only: int | None = None) -> int:
        """Started ticks claimed more than `older_than` ago (by the server's clock; None: whenever), or only the
        tick `only`, whose report has no record: their report recorded Failed (LOST_START_ERROR), created at
        the claim; each such tick then marked recorded.  Returns how many records this call made."""
        query = {"outcome": "started", "recorded": {"$ne": True}}
        if older_than is not None:
            query.update(self._older_than("claimed_at", older_than))
        if only is not None:
            query["_id"] = only
        lost = list(self.db[TICKS].find(query, {"report_id": 1, "claimed_at": 1}))
        if not lost:
            return 0
        found = self.db[REPORTS].find(
            {"report_id": {"$in": [t["report_id"] for t in lost]}}, {"_id": 0, "report_id": 1}
        )
        present = {doc["report_id"] for doc in found}
        made = 0
        for tick in lost:
            if tick["report_id"] not in present:
                claimed_at = _aware(tick["claimed_at"])
                fields = {
                    **_new_report_fields(None),
                    "trigger": "schedule",
                    "status": "Failed",
                    "error": LOST_START_ERROR,
                    "created_at": claimed_at,
                    "heartbeat_at": claimed_at,
                }
                if self._insert_report(tick["report_id"], fields, ("finished_at",)):
                    made += 1
                    log.warning("scheduled report %s (tick %s): %s", tick["report_id"], tick["_id"], LOST_START_ERROR)
            self._mark_tick_recorded(tick["_id"])
        return made

    def _mark_tick_recorded(self, tick_us: int) -> None:
        self.db[TICKS].update_one({"_id": tick_us}, {"$set": {"recorded": True}})

    def _keep_newest(self, name: str, order: list[tuple[str, int]], kept: int) -> int:
        """Delete the documents of `name` beyond the newest `kept` in `order`; returns how many went."""
        beyond = [doc["_id"] for doc in self.db[name].find({}, {"_id": 1}).sort(order).skip(kept)]
        if not beyond:
            return 0
        return self.db[name].delete_many({"_id": {"$in": beyond}}).deleted_count

    def _tidy(self, work: Callable[[], object], what: str) -> None:
        """Book-keeping after the step that mattered has succeeded: retried, and on failure logged (the next
        call does it again), never raised."""
        try:
            retried(lambda store: work())(self)
        except PyMongoError as error:
            log.warning("database book-keeping (%s) failed, done at the next call: %s", what, describe_error(error))

    def last_tick(self) -> dict | None:
        """The newest tick by its time.  A started tick whose report record is missing and whose claim is
        older than the busy limit is a lost start: its report is recorded Failed first (see `claim_tick`)."""
        doc = self.db[TICKS].find_one({}, sort=[("_id", DESCENDING)])
        if doc is None:
            return None
        if doc["outcome"] == "started" and not doc.get("recorded"):
            self._require_schema()
            self._record_lost_starts(self._schedule_busy_for(), only=doc["_id"])
        return {
            "tick_us": int(doc["_id"]),
            "outcome": doc["outcome"],
            "report_id": doc.get("report_id"),
            "claimed_at_us": int(doc["claimed_at_us"]),
        }

    # ----- alerts: the state of each store that is or was down, and one delivery per report with events

    def record_alerts(self, report_id: str, as_of_us: int, rows: list[dict], downtime_minutes: float) -> dict | None:
        """Without a multi-document transaction: each store's state changes in its own conditional update, then
        the delivery is upserted by report id.  The state is what the SQLite store keeps: a document per store
        that is or was down ({_id: store_id, down, as_of_us, report_id: the report that last flipped it}), and
        the newest as_of recorded (ALERTS_SEEN in `meta`), as of which every store without a down state is up.

        1. A delivery recorded for this report already is the answer (nothing else is done).
        2. The state is read.  A store whose state was set as of this report's as_of or later is passed over
           (a down store's as of its document, any other's as of the newest as_of recorded): an older report
           finishing late never flips it.  Of the others, a store whose down-ness differs gets
           update_one({_id, down: <as read>, as_of_us < this as_of}, {$set: {down, as_of_us, report_id}}), an
           upsert for a store with no document (a duplicate key then means another writer made it: skipped);
           a store still down gets its as_of moved on (not its report_id).  All in one unordered bulk write.
        3. The newest as_of recorded is raised to this one ($max), only once every update above is in.
        4. The events are the stores whose state now carries this report's id, whoever wrote it: so a retry
           after a crash between the updates, or a second worker recording the same report, finds exactly the
           same events.
        5. With events, the delivery is upserted by report id ($setOnInsert): one delivery per report.

        Two reports of different as_ofs recorded at the same instant can race between one's read of the newest
        as_of and the other's raise of it (a store's own document is always checked in the update itself);
        reports at the newest data follow one another, so this is a window of milliseconds a schedule never
        opens.
        """
        self._require_schema()
        with self._disk_full_as("alert state"):
            return self._record_alerts(report_id, int(as_of_us), rows, downtime_minutes)

    @retried
    def _record_alerts(self, report_id: str, as_of_us: int, rows: list[dict], downtime_minutes: float) -> dict | None:
        existing = self.db[DELIVERIES].find_one({"_id": report_id})
        if existing is not None:
            return _delivery_record(existing)
        figures = {
            str(row["store_id"]): (
                float(row["downtime_last_hour"]) >= downtime_minutes,
                float(row["downtime_last_hour"]),
                float(row["uptime_last_hour"]),
            )
            for row in rows
        }
        seen = self.db[META].find_one({"_id": ALERTS_SEEN}, {"as_of_us": 1})
        seen_as_of = None if seen is None else seen["as_of_us"]
        state = {doc["_id"]: doc for doc in self.db[ALERT_STATE].find({}, {"down": 1, "as_of_us": 1, "report_id": 1})}
        updates = []
        for store_id, (down, _, _) in figures.items():
            old = state.get(store_id)
            was_down = old is not None and bool(old["down"])
            if was_down:
                set_as_of = old["as_of_us"]
            else:  # up as of the newest as_of recorded (or as of its recovery, if that is later)
                set_as_of = max((v for v in (seen_as_of, old and old["as_of_us"]) if v is not None), default=None)
            if (set_as_of is not None and set_as_of >= as_of_us) or (old is not None and old["report_id"] == report_id):
                continue  # set by this report or a later one
            if down == was_down:
                if down:  # still down: the same episode, as of this report now
                    updates.append(
                        UpdateOne(
                            {"_id": store_id, "down": True, "as_of_us": {"$lt": as_of_us}},
                            {"$set": {"as_of_us": as_of_us}},
                        )
                    )
                continue
            updates.append(
                UpdateOne(
                    {"_id": store_id, "down": was_down, "as_of_us": {"$lt": as_of_us}},
                    {"$set": {"down": down, "as_of_us": as_of_us, "report_id": report_id}},
                    upsert=old is None,
                )
            )
        if updates:
            try:
                self._durable(ALERT_STATE).bulk_write(updates, ordered=False)
            except BulkWriteError as error:
                _raise_unless_duplicates(error)  # a store another writer made meanwhile: its state stands
        try:
            self._durable(META).update_one({"_id": ALERTS_SEEN}, {"$max": {"as_of_us": as_of_us}}, upsert=True)
        except DuplicateKeyError:  # another writer made it between this upsert's match and its insert: again
            self._durable(META).update_one({"_id": ALERTS_SEEN}, {"$max": {"as_of_us": as_of_us}})
        events = []
        for doc in self.db[ALERT_STATE].find({"report_id": report_id}, {"down": 1}):
            if doc["_id"] in figures:
                _, downtime, uptime = figures[doc["_id"]]
                event = "store_down" if doc["down"] else "store_recovered"
                events.append(
                    {"store_id": doc["_id"], "event": event, "downtime_last_hour": downtime, "uptime_last_hour": uptime}
                )
        if not events:
            return None
        delivery = self._upsert_delivery(report_id, as_of_us, events)
        self._tidy(self._trim_deliveries, "trim deliveries")
        return _delivery_record(delivery)

    def _trim_deliveries(self) -> int:
        """Delete the deliveries beyond the newest DELIVERIES_KEPT, but never a Pending one (not sent yet)."""
        order = [("created_at", DESCENDING), ("seq", DESCENDING)]
        beyond = [doc["_id"] for doc in self.db[DELIVERIES].find({}, {"_id": 1}).sort(order).skip(DELIVERIES_KEPT)]
        if not beyond:
            return 0
        return self.db[DELIVERIES].delete_many({"_id": {"$in": beyond}, "status": {"$ne": "Pending"}}).deleted_count

    def _upsert_delivery(self, report_id: str, as_of_us: int, events: list[dict]) -> dict:
        fields = {
            "delivery_id": uuid.uuid4().hex,
            "report_id": report_id,
            "as_of_us": as_of_us,
            "status": "Pending",
            "attempts": 0,
            "last_attempt_at": None,
            "http_status": None,
            "error": None,
            "events": len(events),
            "body": database.alert_body(report_id, as_of_us, events),
            "seq": ObjectId(),  # the order of deliveries recorded within one millisecond
        }
        if self.server_clock:
            defaults = {key: {"$literal": value} for key, value in fields.items()}
            defaults.update(created_at="$$NOW", touched_at="$$NOW")
            update = [{"$replaceWith": {"$mergeObjects": [defaults, "$$ROOT"]}}]
        else:
            now = now_utc()
            update = {"$setOnInsert": {**fields, "created_at": now, "touched_at": now}}
        deliveries = self._durable(DELIVERIES)
        try:
            return deliveries.find_one_and_update(
                {"_id": report_id}, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:  # another worker inserted it between this upsert's match and its insert
            return deliveries.find_one({"_id": report_id})

    def update_delivery(self, delivery_id: str, status: str, attempts: int, error: str | None, http_status) -> None:
        if status not in DELIVERY_STATUSES:
            raise ValueError(f"a delivery's status is one of {', '.join(DELIVERY_STATUSES)}, not {status!r}")
        self._require_schema()
        with self._disk_full_as("alert delivery"):
            self._update_delivery(delivery_id, status, attempts, error, http_status)

    @retried
    def _update_delivery(self, delivery_id: str, status: str, attempts: int, error: str | None, http_status) -> None:
        fields = {
            "status": status,
            "attempts": int(attempts),
            "error": error,
            "http_status": None if http_status is None else int(http_status),
        }
        result = self._durable(DELIVERIES).update_one(
            {"delivery_id": delivery_id},
            {"$set": fields, "$currentDate": {"last_attempt_at": True, "touched_at": True}},
        )
        if result.matched_count == 0:
            log.warning(
                "alert delivery %s is not recorded (deleted as one of the oldest?): its %s is not kept",
                delivery_id,
                status,
            )

    def pending_deliveries(self, older_than_us: int) -> list[dict]:
        """Pending, last touched (recorded or tried) before `older_than_us`, the oldest recorded first."""
        query = {"status": "Pending", "touched_at": {"$lt": utils.us_to_datetime(int(older_than_us))}}
        cursor = self.db[DELIVERIES].find(query).sort([("created_at", ASCENDING), ("seq", ASCENDING)])
        return [_delivery_record(doc) for doc in cursor]

    def list_deliveries(self, limit: int = 50) -> list[dict]:
        if int(limit) <= 0:
            return []
        cursor = (
            self.db[DELIVERIES]
            .find({}, {"body": 0})
            .sort([("created_at", DESCENDING), ("seq", DESCENDING)])
            .limit(int(limit))
        )
        return [_delivery_record(doc) for doc in cursor]

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
        self._require_schema()
        try:
            self.db[LOCKS].update_one(
                {"_id": "data"}, {"$setOnInsert": {"writer": None, "readers": [], "waiting": None}}, upsert=True
            )
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
            update = [
                {
                    "$set": {
                        "writer": None,
                        "readers": {"$concatArrays": [self._live_readers(now), [self._slot(holder)]]},
                    }
                }
            ]
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
            renewed = {
                "$map": {
                    "input": "$readers",
                    "as": "r",
                    "in": {"$cond": [{"$eq": ["$$r.holder", holder]}, self._slot(holder), "$$r"]},
                }
            }
            result = self.db[LOCKS].update_one(
                {"_id": "data", "readers.holder": holder}, [{"$set": {"readers": renewed}}]
            )
        else:
            result = self.db[LOCKS].update_one(
                {"_id": "data", "writer.holder": holder}, [{"$set": {"writer": self._slot(holder)}}]
            )
        return result.matched_count == 1

    @retried
    def _release_lease(self, mode: str, holder: str) -> None:
        if mode == "read":
            self.db[LOCKS].update_one({"_id": "data"}, {"$pull": {"readers": {"holder": holder}}})
        else:
            self.db[LOCKS].update_one({"_id": "data", "writer.holder": holder}, {"$set": {"writer": None}})
            self.db[LOCKS].update_one({"_id": "data", "waiting.holder": holder}, {"$set": {"waiting": None}})


# The numbered steps: MIGRATIONS[n] brings a database of schema n to n + 1 (each step idempotent).
MIGRATIONS: dict[int, tuple[str, Callable[[MongoStore], None]]] = {
    1: ("the uploads journal (collection uploads, indexes at and digest)", MongoStore._step_uploads_journal),
    2: (
        "report history, schedule ticks and alerts (collections reportHistory, scheduleTicks, alertState, "
        "alertDeliveries; the history backfilled from every Complete report's CSV; reports without a trigger "
        "read as api)",
        MongoStore._step_monitoring,
    ),
    3: ("nothing on MongoDB (schema 4 changed how the SQLite store keeps polls)", lambda store: None),
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


@contextlib.contextmanager
def _request_scope(seconds: float):
    token = _IN_REQUEST.set(True)
    try:
        with pymongo.timeout(seconds):
            yield
    finally:
        _IN_REQUEST.reset(token)
