"""The one door to storage: the contract every store keeps, `connect`, ingest and the command line.

Two stores implement the contract, one module each:

- `store_sqlite.SqliteStore`: the embedded default (no `MONGO_URI`), one SQLite
  file in WAL mode shared by every process on the host;
- `store_mongo.MongoStore`: MongoDB for several hosts (`MONGO_URI`), or
  mongomock with `MONGO_URI=mongomock://` (tests and demos only).

Routes and the report job call `Store` methods and never know which store is
behind them.  Every instant crosses this door as integer microseconds since
the epoch (UTC) or as an aware `datetime`; a poll is keyed by
`(store_id, timestamp_us)`, exact to the microsecond, in both stores.

Command line (`python database.py --help`):

    python database.py load PATH...  # load folders (their three CSV files) or single files, each file one upload
    python database.py migrate       # bring the schema forward and reconcile every index, saying what it did
    python database.py delete --store ID [--since ISO] [--until ISO]   # remove stored polls
    python database.py uploads [--dismiss ID]   # the newest uploads; accept an unfinished one as it is
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
from pymongo.errors import ConnectionFailure, PyMongoError

import metrics
import sources
import utils

log = logging.getLogger(__name__)

DEFAULT_DB = "store_monitoring"
DEFAULT_EMBEDDED_DB = Path(__file__).resolve().parent / "instance" / "store_monitoring.sqlite3"
BATCH_SIZE = 10_000

# The tables (SQLite) or collections (MongoDB), the same names in both stores.
STATUS, HOURS, ZONES, REPORTS = "storeStatus", "businessHours", "timezones", "reports"

# Errors that mean "the database failed", whichever store: a caller turns them into a clean message.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (PyMongoError, sqlite3.Error)

LEASE_SECONDS = 60  # a holder that stops renewing (it crashed) loses its lease after this long
LEASE_WAIT_SECONDS = 1_800
LOOKBACK_US = 3 * 3_600_000_000  # polls come hourly: a short look-back finds most stores' last poll before the week

CLI_PING_SECONDS = 5.0  # `python database.py` waits this long for MongoDB before it gives up

# The schema this code writes.  1: the tables of the first releases, with no version marks; 2: version
# marks (SQLite's application_id and user_version, MongoDB's `meta` document), the `uploads` journal
# and reports' `as_of_after_newest_poll`; 3: report history, schedule ticks, alerts; 4: SQLite keeps polls in
# blocks of one store and week (nothing changes on MongoDB).  Each store migrates an older database forward
# step by step.
SCHEMA_VERSION = 4
APPLICATION_ID = 0x55505431  # "UPT1": SQLite's PRAGMA application_id of this service's files
META = "meta"  # MongoDB: the collection of the {"_id": "schema", "application": ..., "version": n} document
APPLICATION_NAME = "store-uptime"
UPLOADS = "uploads"  # the upload journal, the same name in both stores
# what `Store.list_uploads` gives for each upload, in both stores
UPLOAD_FIELDS = frozenset(
    {
        "upload_id",
        "file",
        "kind",
        "digest",
        "at",
        "finished_at",
        "loaded",
        "rejected",
        "written",
        "status",
        "error",
        "dismissed",
    }
)

# what `Store.store_history` gives for each point: the report, its now, and the six figures of its CSV row
HISTORY_FIELDS = ("report_id", "as_of_us", *utils.REPORT_COLUMNS[1:])
# what `Store.record_alerts`, `pending_deliveries` and `list_deliveries` give for each delivery of alerts:
# "body" is the exact JSON bytes POSTed (and signed); times are aware datetimes or None
ALERT_DELIVERY_FIELDS = frozenset(
    {
        "delivery_id",  # 32 hex characters
        "report_id",
        "as_of_us",
        "created_at",
        "status",  # "Pending" | "Delivered" | "Failed"
        "attempts",
        "last_attempt_at",
        "http_status",  # the receiver's last HTTP status, or None
        "error",  # the last attempt's error, or None
        "events",  # how many events the body holds
        "body",
    }
)
ALERT_EVENTS = ("store_down", "store_recovered")


def alert_body(report_id: str, as_of_us: int, events: list[dict]) -> bytes:
    """The JSON a delivery POSTs: {"report_id", "as_of", "events": [{"store_id", "event",
    "downtime_last_hour", "uptime_last_hour"}]}, events in store_id order, as_of ISO 8601 UTC to the µs."""
    as_of = utils.us_to_datetime(as_of_us).isoformat(timespec="microseconds").replace("+00:00", "Z")
    ordered = sorted(events, key=lambda event: event["store_id"])
    shown = [
        {
            "store_id": event["store_id"],
            "event": event["event"],
            "downtime_last_hour": event["downtime_last_hour"],
            "uptime_last_hour": event["uptime_last_hour"],
        }
        for event in ordered
    ]
    return json.dumps({"report_id": report_id, "as_of": as_of, "events": shown}, separators=(",", ":")).encode()


Progress = Callable[[int], None]


def no_progress(rows: int) -> None:
    """The `on_rows` of a writer whose caller does not follow its progress."""


STALE_ERROR = "the worker running this report stopped (no heartbeat); trigger it again"


def describe_error(error: BaseException) -> str:
    """One short line for a database error: its first line, without pymongo's topology description."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    for marker in (", Timeout: ", ", Topology Description: ", " (configured timeouts:"):
        text = text.split(marker, 1)[0]
    return f"{type(error).__name__}: {text[:200]}"


def is_transient(error: BaseException) -> bool:
    """A database error that goes away by itself (busy, a lost connection, an election, a time-out): 503 and
    Retry-After; any other database error is permanent (500)."""
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    if isinstance(error, PyMongoError):
        return (
            isinstance(error, ConnectionFailure)
            or bool(getattr(error, "timeout", False))
            or error.has_error_label("RetryableWriteError")
        )
    return False


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaseTimeout(RuntimeError):
    """The data lease could not be had in time."""


class LeaseLost(RuntimeError):
    """A renewal found the lease gone (it expired, or another holder took it)."""


class DatabaseRefused(RuntimeError):
    """The database belongs to something else, or was made by a newer version of this service.

    Raised when a store opens (or migrates); nothing was written to it.  The
    message is one line naming the database and why.
    """


class DiskFull(RuntimeError):
    """A write hit a full disk (or the database's quota); nothing of that write was kept."""

    def __init__(self, where: str, free_bytes: int | None, what: str = "write"):
        self.where, self.free_bytes, self.what = where, free_bytes, what
        free = "" if free_bytes is None else f": {free_bytes / 1_048_576:.0f} MB free"
        super().__init__(f"the disk holding {where} is full{free}; nothing of this {what} was kept")


class UploadUnfinished(RuntimeError):
    """An upload stopped part-way and left some of its rows visible: no report may read the data until
    the same file is uploaded again (which finishes it) or the upload is dismissed."""

    def __init__(self, upload: dict):
        self.upload = upload
        super().__init__(
            f"upload {upload['upload_id']} of {upload['file']} ({upload['kind']}) stopped part-way "
            f"({upload.get('written', 0)} of {upload.get('loaded', 0)} rows written), so the data is partial: "
            f"upload the same file again to finish it, or dismiss it with "
            f"`python database.py uploads --dismiss {upload['upload_id']}`"
        )


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk holding `path` (or its nearest existing parent); None when unknown."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def business_hours_text(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The stored text of each business-hours row's start and end: `sources.hms` of `start_s` and `end_s`.

    Each distinct time of day is formatted once (there are few: most hours are on the hour).
    """
    times, index = np.unique(frame[["start_s", "end_s"]].to_numpy(dtype=np.int64), return_inverse=True)
    text = np.array([sources.hms(int(t)) for t in times], dtype=object)[index.reshape(-1, 2)]
    return text[:, 0].tolist(), text[:, 1].tolist()


def checked_report_csv(report: dict, payload: bytes) -> bytes:
    """`payload`, the stored CSV of `report`, when it is as long as the record says (ValueError otherwise:
    a CSV stored in part)."""
    if report.get("csv_bytes") is not None and len(payload) != report["csv_bytes"]:
        raise ValueError(f"report {report['report_id']}: stored CSV is incomplete")
    return payload


# --------------------------------------------------------------------------- the contract


class Store(ABC):
    """What every store keeps and answers.  Report records are dicts with the keys:

    report_id, status ("Running" | "Complete" | "Failed"), created_at, heartbeat_at,
    finished_at (aware datetimes or None), requested_as_of_us, as_of_us (int µs or None),
    progress ({"done": int, "total": int | None, and "phase" when the job set one}), row_count, error, csv_bytes,
    as_of_after_newest_poll (bool: the report's now is later than the newest poll it saw).

    Opening a store checks the database is this service's: an empty one is made at
    SCHEMA_VERSION, an older one is migrated forward (in one transaction where the
    store can), a foreign or newer one raises DatabaseRefused without writing to it.
    """

    # What a store is, for people and for start-up.  Callers may show `kind` (GET /health does) but never
    # branch on it: what differs between stores is said by the attributes and methods below.
    kind: str  # "sqlite", "mongodb" or "mongomock"
    label: str  # how a one-line error names the database: "MongoDB at MONGO_URI", "the SQLite file <path>"
    schema_version: int  # the schema of the open database (SCHEMA_VERSION once migrated)
    migrations_applied: list[str]  # what opening (or `migrate`) changed: "1 -> 2: ..." lines, empty when nothing
    # True when the service seeds the store from DATA_DIR at start-up if it is empty (a store of this host:
    # SQLite, mongomock); False for a shared server, loaded by hand (`python database.py load`)
    seeds_on_start: bool
    warning_on_start: str | None = None  # a line the service logs at start-up about this store, or None

    # ----- lifecycle

    @abstractmethod
    def spec(self) -> dict:
        """Keyword arguments for `connect` that open this same store in another process."""

    @abstractmethod
    def ping(self, timeout: float | None = None, quiet: bool = False) -> bool:
        """True when the database answers within `timeout` seconds (None: the store's own short limit, about
        a second at most); False when it does not, after logging one warning unless `quiet`."""

    @abstractmethod
    def prepare(self, stale_after: dt.timedelta) -> int:
        """The store's start-up work in a service, once it is seeded (see `seeds_on_start`): make its schema
        and indexes ready and mark Running reports whose heartbeat is older than `stale_after` Failed.

        Returns how many reports it marked Failed now.  A store whose server may be away does the work in a
        background thread, retrying until the server answers, and returns 0 at once.  Raises a database
        error (DATABASE_ERRORS) when work done now fails; the service logs it and starts anyway.
        """

    @abstractmethod
    def migrate(self) -> list[str]:
        """Create or reconcile the declared indexes; returns what failed (empty when all is well)."""

    @abstractmethod
    def is_empty(self) -> bool:
        """True when there are no polls, hours or zones."""

    @abstractmethod
    def health(self, min_free_bytes: int) -> dict:
        """What /health shows of the database, quickly (about a second at most):

        {"schema_version": int, "free_disk_mb": float | None, "newest_poll_us": int | None,
         "problems": [str, ...]}.  A problem is one line: a write probe that failed (the
        database cannot be written), free disk under `min_free_bytes`, a corrupt file, an
        unfinished upload (`unfinished_upload`).  An empty list means all is well.
        """

    def close(self) -> None:  # noqa: B027 (a store with nothing to let go of need not say so)
        """Let go of what the store holds (connections, a client, background work); nothing by default."""

    def request_scope(self):
        """A context for the database calls of one HTTP request: MongoDB bounds them in time (about 1 s)."""
        return nullcontext()

    # ----- ingest (the data write lease is held by the caller)
    #
    # One file is one upload.  `load_file` records it with `begin_upload`, writes it with one
    # of the three writers below (passing the upload's id), and on any error calls
    # `fail_upload`.  A writer with an `upload_id` marks that upload Complete itself, in the
    # same step that makes its rows visible where the store can (SQLite: one transaction, so
    # all or nothing).  `on_rows` is called after each batch and may raise (a lost lease):
    # the writer then stops, and on SQLite nothing of the upload is kept.
    # A full disk raises DiskFull, with nothing of the upload kept where the store can.

    @abstractmethod
    def load_polls(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        """Upsert polls (`store_id`, `timestamp_us`, `active`): the newest load wins for a key."""

    @abstractmethod
    def replace_hours(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        """Replace the business hours of every store named in `frame` (`store_id`, `day`, `start_s`, `end_s`).
        Rows of stores not in `frame` are never touched."""

    @abstractmethod
    def replace_zones(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        """Replace the zone of every store named in `frame` (`store_id`, `timezone_str`).
        Rows of stores not in `frame` are never touched."""

    @abstractmethod
    def begin_upload(self, file: str, kind: str, digest: str, loaded: int, rejected: int) -> str:
        """Record an upload as Running and return its id (32 hex characters).

        `file` is the label shown to users, `kind` one of sources.FILES, `digest` the
        sha256 hex of the file's bytes (a re-upload of the same bytes finishes an
        unfinished upload), `loaded` and `rejected` the parsed file's row counts.
        """

    @abstractmethod
    def fail_upload(self, upload_id: str, error: str) -> None:
        """Mark a Running upload Failed with the reason (its writer raised)."""

    @abstractmethod
    def dismiss_upload(self, upload_id: str) -> bool:
        """Accept an unfinished upload's data as it is: it no longer blocks reports.  False when unknown."""

    @abstractmethod
    def list_uploads(self, limit: int = 10) -> list[dict]:
        """The newest uploads first, each a dict of UPLOAD_FIELDS ("at" and "finished_at" aware datetimes).

        `written` is how many rows reached the database (all or none on SQLite).  A
        Running upload whose writer is gone (no write lease is held) shows Failed.
        """

    @abstractmethod
    def unfinished_upload(self) -> dict | None:
        """The newest upload that stopped part-way with some of its rows visible (`written` > 0,
        Failed or with its writer gone), not dismissed and not finished since by a Complete
        upload of the same digest; None when there is none (always None where uploads are
        all or nothing)."""

    @abstractmethod
    def delete_polls(self, store_id: str, since_us: int | None = None, until_us: int | None = None) -> int:
        """Delete the store's polls with since_us <= timestamp_us <= until_us (None: no bound); returns how many.
        The data write lease is held by the caller."""

    @abstractmethod
    def data_summary(self) -> dict:
        """What is stored: {"stores": distinct store ids with polls, "polls", "hours_rows", "zones",
        "oldest_poll_us", "newest_poll_us" (None when there are no polls)}."""

    # ----- reading for the report

    @abstractmethod
    def latest_poll_us(self) -> int | None:
        """Microseconds of the newest poll, or None when there are none."""

    @abstractmethod
    def report_store_ids(self, now_us: int) -> list[str]:
        """Sorted ids of the stores with at least one poll at or before `now_us`."""

    @abstractmethod
    def read_chunk(self, store_ids: list[str], since_us: int, now_us: int):
        """(polls, hours, zones) frames of these stores, as `utils.uptime_ticks` takes them.

        Polls are those from `since_us` to `now_us` plus each store's last poll
        before `since_us` (which decides its status at the start of the window).
        """

    # ----- reports

    @abstractmethod
    def create_report(self, report_id: str, as_of_us: int | None, trigger: str = "api") -> None:
        """Record a new report as Running (progress 0 of unknown); `trigger` ("api" | "schedule") is kept
        in the record's "trigger" key (records made before schema 3 say "api")."""

    @abstractmethod
    def update_report(
        self,
        report_id: str,
        *,
        as_of_us: int | None = None,
        progress: dict | None = None,
        as_of_after_newest_poll: bool | None = None,
    ) -> None:
        """Set the as_of, progress and/or as_of_after_newest_poll of a Running report and refresh its heartbeat."""

    @abstractmethod
    def complete_report(self, report_id: str, csv_bytes: bytes, row_count: int) -> bool:
        """Store the CSV and its rows for `store_history` (HISTORY_FIELDS, parsed from `csv_bytes` by
        `report_csv.history_rows`), then mark the report Complete (a reader never sees half a CSV, and
        history shows only Complete reports).  Bytes whose first line is not the report's header are stored
        with no history rows; a report CSV whose rows cannot be read raises ValueError and nothing is stored.

        Only a Running report turns Complete: for one already Failed (swept as stale, or
        shut down) nothing is stored and the answer is False; True when it is now Complete.
        """

    @abstractmethod
    def fail_report(self, report_id: str, error: str) -> None:
        """Mark a Running report Failed with the reason."""

    @abstractmethod
    def beat(self, report_ids: list[str]) -> None:
        """Refresh the heartbeat of these Running reports."""

    @abstractmethod
    def fail_stale_reports(self, older_than: dt.timedelta) -> int:
        """Mark Running reports whose heartbeat is older than `older_than` Failed; returns how many."""

    @abstractmethod
    def find_report(self, report_id: str) -> dict | None:
        """The report record, or None."""

    @abstractmethod
    def count_reports(self) -> int:
        """How many report records there are, whatever their status."""

    @abstractmethod
    def list_reports(self, skip: int = 0, limit: int = 20) -> list[dict]:
        """Report records, newest first."""

    @abstractmethod
    def read_report_csv(self, report: dict) -> bytes:
        """The CSV of a Complete report (ValueError when the stored CSV is not the length the record says:
        see `checked_report_csv`)."""

    @abstractmethod
    def iter_report_csv(self, report: dict, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The CSV of a Complete report in pieces of at most `chunk_bytes`, read as they are sent, so a
        reader holds one piece at a time (SQLite: incremental blob reads; MongoDB: one chunk document at a
        time).  Raises ValueError, before the first piece where it can and otherwise after the last, when the
        stored CSV is not the length the record says."""

    @abstractmethod
    def delete_finished_reports(self, finished_before: dt.datetime, keep_newest: int) -> list[str]:
        """Delete the Complete and Failed reports that finished before `finished_before` or are beyond the
        newest `keep_newest` finished ones (by creation), with their stored CSV; returns their ids.
        Running reports are never deleted."""

    @abstractmethod
    def delete_report(self, report_id: str) -> bool:
        """Delete one finished (Complete or Failed) report with its stored CSV and history rows; True when
        it was deleted, False when there is no such report or it is Running (then nothing is touched)."""

    @abstractmethod
    def previous_complete_report(self, report_id: str) -> dict | None:
        """The newest Complete report created before this one (by creation time, then id), or None."""

    @abstractmethod
    def store_history(
        self, store_id: str, since_us: int | None = None, until_us: int | None = None, limit: int = 100
    ) -> list[dict]:
        """The store's rows in Complete reports whose as_of is within since_us..until_us (None: no bound),
        newest as_of first (then newest created), at most `limit`: dicts of HISTORY_FIELDS, the six figures
        as floats equal to the report CSV's.  Read from an index, never by opening every stored CSV."""

    # ----- the schedule: one report per tick, however many workers or hosts

    @abstractmethod
    def clock_us(self) -> int:
        """Now in microseconds on the database's clock: the server's for MongoDB, this host's for SQLite."""

    @abstractmethod
    def claim_tick(self, tick_us: int, report_id: str) -> str:
        """Claim the schedule's tick `tick_us` in one atomic step; returns the outcome:

        "started": this caller won the tick, and the report `report_id` is recorded Running with trigger
        "schedule" in the same step where the store can (SQLite: one transaction; MongoDB: the tick, then the
        record, and a start lost between the two is recorded Failed once it is stale).  A crash after it leaves
        a Running report that goes stale and Failed;
        "taken": the tick was claimed already (by another worker or host, or before a restart): nothing done;
        "skipped": a scheduled report is still Running (not stale): the tick is recorded as skipped.
        """

    @abstractmethod
    def last_tick(self) -> dict | None:
        """The newest claimed tick: {"tick_us", "outcome" ("started" | "skipped"), "report_id" (None when
        skipped), "claimed_at_us"}; None when no tick was ever claimed."""

    # ----- alerts: one per episode, the state in the database

    @abstractmethod
    def record_alerts(self, report_id: str, as_of_us: int, rows: list[dict], downtime_minutes: float) -> dict | None:
        """Turn a Complete report at the newest data into alert events, in one atomic step per store.

        `rows` are the report's rows (store_id, downtime_last_hour, uptime_last_hour).  A store is down
        when downtime_last_hour >= downtime_minutes.  A store that is down and was not (or is new) gives a
        "store_down" event; one that was down and no longer is gives "store_recovered"; nothing else gives
        an event.  The state of a store changes only for a report whose as_of is later than the one that
        last set it, so an older report finishing late never flips it back.

        With events, a delivery is recorded Pending (ALERT_DELIVERY_FIELDS) holding the JSON body, in the
        same step as the state changes where the store can (SQLite: one transaction), and returned; None
        when there are no events.  Recording the same report again returns its delivery without new events.
        """

    @abstractmethod
    def update_delivery(self, delivery_id: str, status: str, attempts: int, error: str | None, http_status) -> None:
        """Record a delivery's outcome so far: status "Pending" | "Delivered" | "Failed"."""

    @abstractmethod
    def pending_deliveries(self, older_than_us: int) -> list[dict]:
        """Pending deliveries last tried (or recorded) before `older_than_us`: left by a process that stopped."""

    @abstractmethod
    def list_deliveries(self, limit: int = 50) -> list[dict]:
        """Deliveries, newest first (dicts of ALERT_DELIVERY_FIELDS with "body" None: a listing never reads
        the bodies, so its memory is bounded by `limit` whatever the deliveries hold)."""

    # ----- the data lease: many readers (reports) or one writer (a load), never both

    @abstractmethod
    def _try_lease(self, mode: str, holder: str) -> bool:
        """Take the lease for `holder` if it is free for `mode`; a writer that cannot marks itself waiting."""

    @abstractmethod
    def _renew_lease(self, mode: str, holder: str) -> bool:
        """Push the holder's expiry forward; False when the holder no longer has the lease."""

    @abstractmethod
    def _release_lease(self, mode: str, holder: str) -> None:
        """Give the lease (or a writer's waiting mark) back."""

    @contextmanager
    def data_lease(self, mode: str, wait_seconds: float = LEASE_WAIT_SECONDS):
        """Hold the shared data lease for the block.

        The lease lives in the database, so it holds across processes (and
        hosts); a thread renews it while the block runs, and a holder that dies
        stops renewing, so its lease expires after LEASE_SECONDS.  A writer
        that has to wait marks itself waiting, and new readers wait behind it
        (writer preference), so a stream of reports cannot starve a load.
        Yields an event that is set when a renewal finds the lease lost.
        """
        assert mode in ("read", "write")
        holder = uuid.uuid4().hex
        asked = time.monotonic()
        deadline = asked + wait_seconds
        pause = 0.02
        waited = False
        try:
            while not self._try_lease(mode, holder):
                waited = True
                if time.monotonic() > deadline:
                    raise LeaseTimeout(
                        f"waited {wait_seconds:.0f} s for the data {mode} lease "
                        f"({'a load is running or waiting' if mode == 'read' else 'reports or a load are running'})"
                    )
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
        except BaseException:
            self._release_lease(mode, holder)  # drop a writer's waiting mark
            raise
        finally:
            if waited:
                metrics.lease_waited(mode, time.monotonic() - asked)
        done, lost = threading.Event(), threading.Event()

        def renew() -> None:
            while not done.wait(LEASE_SECONDS / 4):
                try:
                    if not self._renew_lease(mode, holder):
                        log.error("the data %s lease was lost (it expired or was taken)", mode)
                        lost.set()
                        return
                except (*DATABASE_ERRORS, DiskFull) as error:  # tried again at the next quarter lease
                    log.warning("could not renew the data %s lease: %s", mode, error)

        renewer = threading.Thread(target=renew, name=f"lease-{mode}-{holder[:8]}", daemon=True)
        renewer.start()
        try:
            yield lost
        finally:
            done.set()
            self._release_lease(mode, holder)


# --------------------------------------------------------------------------- connecting


def connect(uri: str | None = None, name: str = DEFAULT_DB, path: str | Path | None = None) -> Store:
    """Open the store the settings name: MongoDB for a `mongodb://`/`mongodb+srv://` URI,
    mongomock for `mongomock://`, otherwise the SQLite file at `path` (default
    instance/store_monitoring.sqlite3), created when missing."""
    if uri:
        from store_mongo import MongoStore

        return MongoStore(uri, name)
    from store_sqlite import SqliteStore

    return SqliteStore(path or DEFAULT_EMBEDDED_DB)


def connect_from_env() -> Store:
    return connect(
        os.environ.get("MONGO_URI") or None,
        os.environ.get("MONGO_DB") or DEFAULT_DB,
        os.environ.get("EMBEDDED_DB") or None,
    )


# --------------------------------------------------------------------------- ingest


WRITERS = {
    sources.STATUS_FILE: "load_polls",
    sources.HOURS_FILE: "replace_hours",
    sources.ZONES_FILE: "replace_zones",
}


def _digest(source: sources.Source) -> str:
    """sha256 of a source's bytes (a path, bytes, or a seekable stream, which is left at its start)."""
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
    elif isinstance(source, (str, Path)):
        with open(source, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    else:
        start = source.tell()
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
        source.seek(start)
    return digest.hexdigest()


def _write_upload(
    store: Store, file_kind: str, parsed: sources.Parsed, label: str, digest: str, lost, on_rows: Progress = no_progress
) -> None:
    """One file, one upload: journaled, written whole (or, where the store cannot, finishable by a re-upload).

    A lost lease stops the writer at its next batch; any error marks the upload Failed.
    """
    upload_id = store.begin_upload(label, file_kind, digest, len(parsed.frame), parsed.rejected)

    def batch_written(rows: int) -> None:
        if lost is not None and lost.is_set():
            raise LeaseLost("the data write lease was lost while loading; nothing more of this upload is written")
        on_rows(rows)

    try:
        getattr(store, WRITERS[file_kind])(parsed.frame, batch_written, upload_id=upload_id)
        if lost is not None and lost.is_set():  # lost after the last batch: the load raced another writer
            raise LeaseLost("the data write lease was lost while loading")
    except BaseException as error:
        try:
            store.fail_upload(upload_id, describe_error(error) if isinstance(error, DATABASE_ERRORS) else str(error))
        except Exception as second:  # the first error is the one to raise (a full disk fails this write too)
            log.error("could not mark upload %s Failed: %s", upload_id, describe_error(second))
        raise


def load_file(
    store: Store,
    file_kind: str,
    source: sources.Source,
    label: str | None = None,
    lease_wait_seconds: float = LEASE_WAIT_SECONDS,
) -> dict:
    """Parse, validate and load one CSV file (bytes, path or stream) of the given kind, as one upload.

    The writes happen under the data write lease, so no report reads half of them.
    """
    label = label or file_kind
    digest = _digest(source)
    parsed = sources.READERS[file_kind](source, file=label)
    with store.data_lease("write", lease_wait_seconds) as lost:
        _write_upload(store, file_kind, parsed, label, digest, lost)
    metrics.upload_committed(file_kind, len(parsed.frame), parsed.rejected)
    return parsed.summary()


class MissingInput(ValueError):
    """A path given to load is missing, or names no file this service reads."""


def files_to_load(paths: list[str | Path]) -> list[tuple[str, Path]]:
    """(file kind, path) for each path: a folder gives its store_status.csv, menu_hours.csv and timezones.csv
    (those present), a file is recognised by its header.  Raises MissingInput for a path that is missing,
    a folder with none of the three files, or a file whose header is none of the three."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            present = [(kind, path / kind) for kind in sources.FILES if (path / kind).is_file()]
            if not present:
                raise MissingInput(f"{path} holds none of {', '.join(sources.FILES)}")
            found += present
        elif path.is_file():
            with open(path, "rb") as file:
                head = file.read(4096).split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
            kind = sources.detect_file(head)
            if kind is None:
                raise MissingInput(
                    f"{path}: its header {head[:80]!r} is none of the three files' ({', '.join(sources.FILES)})"
                )
            found.append((kind, path))
        else:
            raise MissingInput(f"{path} does not exist")
    return found


def _unloaded(path: Path, note: str) -> dict:
    """The summary of a file that was not loaded, with why."""
    return {"file": str(path), "rows_read": 0, "loaded": 0, "rejected": 0, "rejects": [], "notes": [note]}


def load_paths(
    store: Store, paths: list[str | Path], progress: bool = False, only_if_empty: bool = False
) -> list[dict]:
    """Load files and folders (see `files_to_load`) under one write lease, each file as its own upload.

    A file with a wrong header is reported and the others still load.
    """
    summaries, parsed_files = [], []
    for folder in [Path(path) for path in paths if Path(path).is_dir()]:
        summaries += [
            _unloaded(folder / kind, "file not found, not loaded")
            for kind in sources.FILES
            if not (folder / kind).is_file()
        ]
    for file_kind, path in files_to_load(paths):
        try:
            parsed = sources.READERS[file_kind](path, file=str(path))
        except sources.HeaderError as error:
            summaries.append(_unloaded(path, f"whole file rejected: {error}"))
            continue
        summaries.append(parsed.summary())
        parsed_files.append((file_kind, path, parsed, _digest(path)))  # hashed before the lease is taken
    from tqdm import tqdm  # progress bars only on a terminal

    with store.data_lease("write") as lost:
        if only_if_empty and not store.is_empty():
            return []
        for file_kind, path, parsed, digest in parsed_files:
            with tqdm(
                total=len(parsed.frame), desc=f"loading {file_kind}", unit="row", disable=not progress, leave=True
            ) as bar:
                _write_upload(store, file_kind, parsed, str(path), digest, lost, bar.update)
            metrics.upload_committed(file_kind, len(parsed.frame), parsed.rejected)
    return summaries


def load_dir(store: Store, directory: str | Path, progress: bool = False, only_if_empty: bool = False) -> list[dict]:
    """Load the CSV files of a folder (see `load_paths`)."""
    return load_paths(store, [directory], progress=progress, only_if_empty=only_if_empty)


def seed_if_empty(store: Store, directory: str | Path) -> list[dict]:
    """Load `directory` into an empty store; several processes starting at once seed it once.

    On a store that holds data, logs one line saying DATA_DIR was not loaded and how to load it.
    """
    if not store.is_empty():
        log.info(
            "DATA_DIR %s was not loaded: the database already holds data (load files into it with "
            "`python database.py load PATH` or POST /ingest)",
            directory,
        )
        return []
    return load_dir(store, directory, only_if_empty=True)


def data_dir_problem(directory: str | Path) -> str | None:
    """Why `directory` cannot seed a store (missing, not a folder, none of the three files), or None."""
    directory = Path(directory)
    if not directory.exists():
        return f"DATA_DIR {directory} does not exist"
    if not directory.is_dir():
        return f"DATA_DIR {directory} is not a folder"
    if not any((directory / name).is_file() for name in sources.FILES):
        return f"DATA_DIR {directory} holds none of {', '.join(sources.FILES)}"
    return None


def delete_polls(
    store: Store,
    store_id: str,
    since_us: int | None,
    until_us: int | None,
    lease_wait_seconds: float = LEASE_WAIT_SECONDS,
) -> int:
    """Delete one store's polls in [since, until] (bounds optional) under the data write lease."""
    with store.data_lease("write", lease_wait_seconds):
        return store.delete_polls(store_id, since_us, until_us)


# --------------------------------------------------------------------------- command line


def print_summaries(summaries: list[dict], first: int = 20, out=None) -> None:
    out = out or sys.stdout
    for summary in summaries:
        print(
            f"{summary['file']}: {summary['rows_read']} rows read, {summary['loaded']} loaded, "
            f"{summary['rejected']} rejected",
            file=out,
        )
        for note in summary.get("notes", []):
            print(f"  note: {note}", file=out)
        for reject in summary["rejects"][:first]:
            print(f"  line {reject['line']}: {reject['reason']}", file=out)
        if summary["rejected"] > min(first, len(summary["rejects"])):
            print(f"  ... and {summary['rejected'] - min(first, len(summary['rejects']))} more", file=out)


def _instant(text: str) -> int:
    """An ISO 8601 instant (a zone or Z is needed; a bare date means midnight UTC) as microseconds."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r} (e.g. 2023-01-25T18:00:00Z)") from None
    if value.tzinfo is None:
        if len(text) > 10:
            raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z or an offset such as +00:00")
        value = value.replace(tzinfo=dt.UTC)
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _print_uploads(store: Store, limit: int) -> None:
    for upload in store.list_uploads(limit):
        at = upload["at"].isoformat(timespec="seconds") if upload.get("at") else "?"
        print(
            f"{upload['upload_id']}  {at}  {upload['status']:<8} {upload['kind']:<17} {upload['file']}: "
            f"{upload['loaded']} rows, {upload['written']} written, {upload['rejected']} rejected"
            f"{'  (dismissed)' if upload.get('dismissed') else ''}"
            f"{'  error: ' + upload['error'] if upload.get('error') else ''}"
        )


def _command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python database.py",
        description="Load, inspect or repair the database the environment names "
        "(MONGO_URI, else the SQLite file EMBEDDED_DB or instance/store_monitoring.sqlite3).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser(
        "load",
        help="load CSV files: folders (their store_status.csv, menu_hours.csv and "
        "timezones.csv) or single files, recognised by their header",
    )
    load.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    load.add_argument("--show", type=int, default=20, help="how many rejected rows to list per file")
    commands.add_parser("migrate", help="bring the schema up to date and reconcile every declared index, then exit")
    delete = commands.add_parser("delete", help="delete one store's polls (all, or those in [--since, --until])")
    delete.add_argument("--store", required=True, help="the store_id")
    delete.add_argument("--since", type=_instant, help="first instant deleted (ISO 8601), e.g. 2100-01-01T00:00:00Z")
    delete.add_argument("--until", type=_instant, help="last instant deleted (ISO 8601)")
    uploads = commands.add_parser("uploads", help="list the newest uploads, or dismiss an unfinished one")
    uploads.add_argument("--limit", type=int, default=20)
    uploads.add_argument(
        "--dismiss", metavar="UPLOAD_ID", help="accept an unfinished upload's rows as they are, so reports run again"
    )
    return parser


def _run(store: Store, args) -> int:
    if args.command == "migrate":
        failed = store.migrate()  # MongoDB takes its schema steps here; SQLite took them when it opened
        for step in store.migrations_applied:
            print(f"migrated: {step}")
        for problem in failed:
            print(f"index problem: {problem}", file=sys.stderr)
        print(f"schema version {store.schema_version}; indexes {'NOT all made' if failed else 'reconciled'}")
        return 1 if failed else 0
    if args.command == "uploads":
        if args.dismiss and not store.dismiss_upload(args.dismiss):
            print(f"error: no upload with id {args.dismiss}", file=sys.stderr)
            return 1
        _print_uploads(store, args.limit)
        return 0
    failed = store.migrate()
    if failed:
        print(
            f"database error: the indexes could not be made ({failed[0]}); run `python database.py migrate`",
            file=sys.stderr,
        )
        return 2
    if args.command == "delete":
        deleted = delete_polls(store, args.store, args.since, args.until)
        print(f"deleted {deleted} polls of store {args.store}")
        return 0
    summaries = load_paths(store, args.paths, progress=sys.stderr.isatty())
    print_summaries(summaries, first=args.show)
    refused = [
        summary
        for summary in summaries
        if any(note.startswith("whole file rejected") for note in summary.get("notes", []))
    ]
    return 1 if refused else 0


def main(argv: list[str] | None = None) -> int:
    """The command line; exits 0 when all went well, 1 when a file or upload was refused, 2 on a database error."""
    args = _command_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "load":
        try:
            files_to_load(args.paths)  # a missing path fails before the database is opened
        except MissingInput as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        store = connect_from_env()
        if not store.ping(timeout=CLI_PING_SECONDS, quiet=True):
            print(
                f"database error: {store.label} does not answer within {CLI_PING_SECONDS:.0f} s "
                f"(is it running and reachable?)",
                file=sys.stderr,
            )
            return 2
        return _run(store, args)
    except (DatabaseRefused, DiskFull, LeaseTimeout) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DATABASE_ERRORS as error:
        print(f"database error: {describe_error(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # the store modules import `database`: run that one module's main, so its error classes are the ones
    # the stores raise (a second copy as __main__ would catch none of them)
    import database

    sys.exit(database.main())
