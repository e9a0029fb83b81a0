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

Command line:

    python database.py load DIR      # load the three CSV files of DIR (rows loaded and rejected per file)
    python database.py migrate       # create or reconcile every index, then exit
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import pandas as pd
from pymongo.errors import PyMongoError

import sources

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

Progress = Callable[[int], None]


def _no_progress(rows: int) -> None:
    pass


def describe_error(error: BaseException) -> str:
    """One short line for a database error: its first line, without pymongo's topology description."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    for marker in (", Timeout: ", ", Topology Description: ", " (configured timeouts:"):
        text = text.split(marker, 1)[0]
    return f"{type(error).__name__}: {text[:200]}"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class LeaseTimeout(RuntimeError):
    """The data lease could not be had in time."""


class LeaseLost(RuntimeError):
    """A renewal found the lease gone (it expired, or another holder took it)."""


# --------------------------------------------------------------------------- the contract


class Store(ABC):
    """What every store keeps and answers.  Report records are dicts with the keys:

    report_id, status ("Running" | "Complete" | "Failed"), created_at, heartbeat_at,
    finished_at (aware datetimes or None), requested_as_of_us, as_of_us (int µs or None),
    progress ({"done": int, "total": int | None, and "phase" when the job set one}), row_count, error, csv_bytes.
    """

    kind: str  # "sqlite", "mongodb" or "mongomock"

    # ----- lifecycle

    @abstractmethod
    def spec(self) -> dict:
        """Keyword arguments for `connect` that open this same store in another process."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the database answers (quickly: within about a second)."""

    @abstractmethod
    def migrate(self) -> list[str]:
        """Create or reconcile the declared indexes; returns what failed (empty when all is well)."""

    @abstractmethod
    def is_empty(self) -> bool:
        """True when there are no polls, hours or zones."""

    def close(self) -> None:
        pass

    def request_scope(self):
        """A context for the database calls of one HTTP request: MongoDB bounds them in time (about 1 s)."""
        return nullcontext()

    # ----- ingest (the data write lease is held by the caller)

    @abstractmethod
    def load_polls(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        """Upsert polls (`store_id`, `timestamp_us`, `active`): the newest load wins for a key."""

    @abstractmethod
    def replace_hours(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        """Replace the business hours of every store named in `frame` (`store_id`, `day`, `start_s`, `end_s`)."""

    @abstractmethod
    def replace_zones(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        """Replace the zone of every store named in `frame` (`store_id`, `timezone_str`)."""

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
    def create_report(self, report_id: str, as_of_us: int | None) -> None:
        """Record a new report as Running (progress 0 of unknown)."""

    @abstractmethod
    def update_report(self, report_id: str, *, as_of_us: int | None = None, progress: dict | None = None) -> None:
        """Set the as_of and/or progress of a Running report and refresh its heartbeat."""

    @abstractmethod
    def complete_report(self, report_id: str, csv_bytes: bytes, row_count: int) -> None:
        """Store the CSV, then mark the report Complete (a reader never sees half a CSV)."""

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
    def count_reports(self) -> int: ...

    @abstractmethod
    def list_reports(self, skip: int = 0, limit: int = 20) -> list[dict]:
        """Report records, newest first."""

    @abstractmethod
    def read_report_csv(self, report: dict) -> bytes:
        """The CSV of a Complete report."""

    @abstractmethod
    def delete_finished_reports(self, finished_before: dt.datetime, keep_newest: int) -> list[str]:
        """Delete the Complete and Failed reports that finished before `finished_before` or are beyond the
        newest `keep_newest` finished ones (by creation), with their stored CSV; returns their ids.
        Running reports are never deleted."""

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
        deadline = time.monotonic() + wait_seconds
        pause = 0.02
        try:
            while not self._try_lease(mode, holder):
                if time.monotonic() > deadline:
                    raise LeaseTimeout(
                        f"waited {wait_seconds:.0f} s for the data {mode} lease "
                        f"({'a load is running or waiting' if mode == 'read' else 'reports or a load are running'})")
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
        except BaseException:
            self._release_lease(mode, holder)  # drop a writer's waiting mark
            raise
        done, lost = threading.Event(), threading.Event()

        def renew() -> None:
            while not done.wait(LEASE_SECONDS / 4):
                try:
                    if not self._renew_lease(mode, holder):
                        log.error("the data %s lease was lost (it expired or was taken)", mode)
                        lost.set()
                        return
                except DATABASE_ERRORS as error:
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
    return connect(os.environ.get("MONGO_URI") or None, os.environ.get("MONGO_DB") or DEFAULT_DB,
                   os.environ.get("EMBEDDED_DB") or None)


# --------------------------------------------------------------------------- ingest


def _write(store: Store, file_kind: str, parsed: sources.Parsed, on_rows: Progress = _no_progress) -> int:
    if file_kind == sources.STATUS_FILE:
        return store.load_polls(parsed.frame, on_rows)
    if file_kind == sources.HOURS_FILE:
        return store.replace_hours(parsed.frame, on_rows)
    return store.replace_zones(parsed.frame, on_rows)


def load_file(store: Store, file_kind: str, source: sources.Source, label: str | None = None,
              lease_wait_seconds: float = LEASE_WAIT_SECONDS) -> dict:
    """Parse, validate and load one CSV file (bytes, path or stream) of the given kind.

    The writes happen under the data write lease, so no report reads half of them.
    """
    parsed = sources.READERS[file_kind](source, file=label or file_kind)
    with store.data_lease("write", lease_wait_seconds):
        _write(store, file_kind, parsed)
    return parsed.summary()


def load_dir(store: Store, directory: str | Path, progress: bool = False, only_if_empty: bool = False) -> list[dict]:
    """Load the three CSV files of a folder under one write lease.

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
    from tqdm import tqdm  # progress bars only on a terminal

    with store.data_lease("write"):
        if only_if_empty and not store.is_empty():
            return []
        for file_kind, parsed in parsed_files.items():
            with tqdm(total=len(parsed.frame), desc=f"loading {file_kind}", unit="row", disable=not progress,
                      leave=True) as bar:
                _write(store, file_kind, parsed, bar.update)
    return summaries


def seed_if_empty(store: Store, directory: str | Path) -> list[dict]:
    """Load `directory` into an empty store; several processes starting at once seed it once."""
    if not store.is_empty():
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


# --------------------------------------------------------------------------- command line


def print_summaries(summaries: list[dict], first: int = 20, out=None) -> None:
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
    parser = argparse.ArgumentParser(
        description="Load the store CSV files, or reconcile indexes, in the database the environment names "
                    "(MONGO_URI, else the SQLite file EMBEDDED_DB or instance/store_monitoring.sqlite3).")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="load store_status.csv, menu_hours.csv and timezones.csv from DIR")
    load.add_argument("directory", type=Path)
    load.add_argument("--show", type=int, default=20, help="how many rejected rows to list per file")
    commands.add_parser("migrate", help="create or reconcile every declared index, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    try:
        store = connect_from_env()
        if store.kind == "mongodb" and not store.ping(timeout=CLI_PING_SECONDS, quiet=True):
            print(f"database error: MongoDB at MONGO_URI does not answer within {CLI_PING_SECONDS:.0f} s "
                  f"(is it running and reachable?)", file=sys.stderr)
            return 2
        if args.command == "migrate":
            failed = store.migrate()
            for problem in failed:
                print(f"index problem: {problem}", file=sys.stderr)
            return 1 if failed else 0
        failed = store.migrate()
        if failed:
            print(f"database error: the indexes could not be made ({failed[0]}); run `python database.py migrate`",
                  file=sys.stderr)
            return 2
        summaries = load_dir(store, args.directory, progress=sys.stderr.isatty())
    except DATABASE_ERRORS as error:
        print(f"database error: {describe_error(error)}", file=sys.stderr)
        return 2
    print_summaries(summaries, first=args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
