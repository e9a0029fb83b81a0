"""The report job: load the data, compute the report chunk by chunk, write the CSV, store it.

`ReportGenerator` runs reports from a `database.Store` (SQLite or MongoDB) in a
bounded pool of named, daemonic threads; each records its progress and
heartbeat in the store's `reports` and ends `Complete` (the CSV stored in the
database and written to REPORTS_DIR) or `Failed` (with the reason), never
silently.  `run` does the same work synchronously.  With a Dask scheduler
(`scheduler=`, the service's DASK_SCHEDULER) the ranges of stores run as tasks
on the cluster instead (cluster.py); the report is the same, byte for byte.

The same engine also runs straight from CSV files with no database:

    python reportGenerator.py --data-dir data --output report.csv [--as-of ISO] [--scheduler tcp://host:8786]
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import logging
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
import uuid
import weakref
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

import sources
import utils


def _lazy_import(name: str):
    """Import a module on first use (the importlib documentation's LazyLoader recipe).

    The CSV mode never touches MongoDB: loading `database` (and pymongo) only
    when a report job needs it keeps `python reportGenerator.py` quick to start.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


database = _lazy_import("database")
cluster = _lazy_import("cluster")  # Dask is only imported when a scheduler is named

log = logging.getLogger(__name__)

DEFAULT_CHUNK_STORES = 5_000


# --------------------------------------------------------------------------- pure orchestration


def chunked(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def default_processes() -> int:
    """Worker processes for the CSV-mode engine: the usable cores (at least one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _chunk_bounds(n_stores: int, chunk_stores: int, processes: int) -> list[tuple[int, int]]:
    """Store ranges to compute: at most `chunk_stores` each, and enough of them to keep every process busy."""
    size = max(1, min(chunk_stores, -(-n_stores // (2 * processes)) if processes > 1 else chunk_stores))
    return [(first, min(first + size, n_stores)) for first in range(0, n_stores, size)]


_FORKED_INPUTS: utils.CodedInputs | None = None  # what forked workers inherit instead of being sent


def _inherited_chunk_ticks(first: int, last: int, now_us: int) -> dict:
    return utils.coded_uptime_ticks(_FORKED_INPUTS.stores(first, last), now_us)


def _ticks_by_chunk(coded: utils.CodedInputs, now_us: int, bounds, processes: int) -> Iterable[dict]:
    """Each chunk's ticks, in order; computed in `processes` forked workers when that can pay."""
    global _FORKED_INPUTS
    fork = "fork" in multiprocessing.get_all_start_methods()
    if processes > 1 and len(bounds) > 1 and fork and threading.active_count() == 1:
        # forked workers see the parsed arrays through this global at no cost (only the small
        # results travel back); fork is only safe from a single-threaded process
        _FORKED_INPUTS = coded
        try:
            with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_inherited_chunk_ticks, a, b, now_us) for a, b in bounds]
                for future in futures:
                    yield future.result()
        finally:
            _FORKED_INPUTS = None
        return
    for first, last in bounds:
        yield utils.coded_uptime_ticks(coded.stores(first, last), now_us)


def report_from_frames(
    polls: pd.DataFrame,
    hours: pd.DataFrame,
    zones: pd.DataFrame,
    now_us: int,
    chunk_stores: int = DEFAULT_CHUNK_STORES,
    on_progress: Callable[[int, int], None] | None = None,
    processes: int = 1,
    scheduler: str | None = None,
) -> pd.DataFrame:
    """The report for in-memory frames (as `utils.uptime_ticks` takes them), chunk by chunk of stores.

    With `processes > 1` the chunks are shared among forked worker processes
    (only from a single-threaded process; otherwise they run here, one by one).
    With a Dask `scheduler` address the chunks are scattered to its workers.
    """
    store_ids, coded = utils.code_inputs(polls, hours, zones, now_us)
    if scheduler:
        ticks = cluster.coded_report_ticks(scheduler, coded, now_us, chunk_stores, on_progress)
        return utils.to_report_units(utils.ticks_frame(store_ids, ticks))
    bounds = _chunk_bounds(coded.n_stores, chunk_stores, processes)
    parts = []
    for (_, last), ticks in zip(bounds, _ticks_by_chunk(coded, now_us, bounds, processes)):
        parts.append(ticks)
        if on_progress:
            on_progress(last, coded.n_stores)
    ticks = {column: np.concatenate([part[column] for part in parts]) if parts else np.empty(0, np.int64)
             for column in utils.REPORT_COLUMNS[1:]}
    return utils.to_report_units(utils.ticks_frame(store_ids, ticks))


def report_from_dir(
    data_dir: str | Path,
    as_of_us: int | None = None,
    chunk_stores: int = DEFAULT_CHUNK_STORES,
    processes: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    scheduler: str | None = None,
):
    """Parse the three CSV files of `data_dir` and compute the report; returns (report, now_us, parsed files)."""
    parsed = sources.read_data_dir(data_dir)
    polls = parsed[sources.STATUS_FILE].frame
    if as_of_us is None:
        if polls.empty:
            raise ValueError(f"{data_dir}: no valid polls, so there is no 'now' to report at")
        as_of_us = int(polls["timestamp_us"].max())
    report = report_from_frames(
        polls, parsed[sources.HOURS_FILE].frame, parsed[sources.ZONES_FILE].frame, as_of_us, chunk_stores,
        processes=processes, on_progress=on_progress, scheduler=scheduler,
    )
    return report, as_of_us, parsed


def report_csv_bytes(report: pd.DataFrame) -> bytes:
    return report.to_csv(index=False, columns=utils.REPORT_COLUMNS).encode("utf-8")


def write_atomically(path: Path, payload: bytes) -> None:
    """Write to a temporary name beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# what openapi.json promises for as_of: a date, optionally a time (seconds and up to 6 decimals), a zone
AS_OF = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?([Zz]|[+-]\d{2}:?\d{2})?", re.ASCII)


def parse_as_of(text: str) -> int:
    """Microseconds since the epoch for an ISO 8601 instant (no zone means UTC)."""
    if not isinstance(text, str) or not AS_OF.fullmatch(text):
        raise ValueError("as_of must be an ISO 8601 date-time string, e.g. 2023-01-25T18:00:00Z")
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"as_of {text[:64]!r} is not an ISO 8601 date-time, e.g. 2023-01-25T18:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    try:
        when.astimezone(dt.timezone.utc)
    except OverflowError:
        raise ValueError(f"as_of {text[:64]!r} is out of range (years 1 to 9999 in UTC)") from None
    return utils.datetime_to_us(when)


# --------------------------------------------------------------------------- the job on a database


HEARTBEAT_SECONDS = 10.0
LIVE_GENERATORS: "weakref.WeakSet[ReportGenerator]" = weakref.WeakSet()


class ReportGenerator:
    """Runs report jobs against a `database.Store`, at most `workers` at a time.

    Reports beyond `workers` wait in the queue (still `Running`, progress 0).
    One heartbeat thread refreshes every queued or running report of this
    process, so a report whose process died is found stale and failed.
    """

    def __init__(
        self,
        store: database.Store,
        reports_dir: str | Path,
        chunk_stores: int = DEFAULT_CHUNK_STORES,
        workers: int = 2,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        scheduler: str | None = None,
    ):
        self.store = store
        self.scheduler = scheduler or None  # a Dask scheduler address: ranges run there (cluster.py)
        self.range_task = None  # the per-range task on the cluster (None: cluster.range_ticks); tests swap it
        self.reports_dir = Path(reports_dir)
        self.chunk_stores = chunk_stores
        self.heartbeat_seconds = heartbeat_seconds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="report")
        self._owned: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._heart: threading.Thread | None = None
        LIVE_GENERATORS.add(self)

    def start(self, as_of_us: int | None = None) -> str:
        """Record a Running report and queue it; returns its id at once."""
        report_id = uuid.uuid4().hex
        self.store.create_report(report_id, as_of_us)
        with self._lock:
            self._owned.add(report_id)
            if self._heart is None:
                self._heart = threading.Thread(target=self._beat, name="report-heartbeat", daemon=True)
                self._heart.start()
        self._pool.submit(self.run, report_id, as_of_us)
        return report_id

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_seconds):
            with self._lock:
                owned = list(self._owned)
            try:
                self.store.beat(owned)
            except database.DATABASE_ERRORS as error:
                log.warning("report heartbeat failed: %s", error)

    def run(self, report_id: str, as_of_us: int | None = None) -> None:
        """Compute, write and store one report; any error ends it Failed with the message."""
        started = time.monotonic()
        try:
            rows = self._compute_and_store(report_id, as_of_us)
        except Exception as error:  # the thread must record every failure, never die silently
            log.exception("report %s failed", report_id)
            self.store.fail_report(report_id, f"{type(error).__name__}: {error}")
        else:
            log.info("report %s complete: %d stores in %.1f s", report_id, rows, time.monotonic() - started)
        finally:
            with self._lock:
                self._owned.discard(report_id)

    def _compute_and_store(self, report_id: str, as_of_us: int | None) -> int:
        store = self.store
        # the read lease keeps loads out while the report reads, so it sees one consistent state
        with store.data_lease("read") as lost:
            now_us = as_of_us if as_of_us is not None else store.latest_poll_us()
            if now_us is None:
                raise ValueError("there are no polls in storeStatus, so there is nothing to report")
            store.update_report(report_id, as_of_us=now_us)
            store_ids = store.report_store_ids(now_us)
            store.update_report(report_id, progress={"done": 0, "total": len(store_ids)})
            since_us = now_us - utils.WEEK_US
            if self.scheduler:
                parts = [self._cluster_report(report_id, store_ids, since_us, now_us, lost)]
            else:
                parts = []
                done = 0
                for chunk in chunked(store_ids, self.chunk_stores):
                    if lost.is_set():
                        raise database.LeaseLost("the data lease was lost while reading; a load may have changed the data")
                    polls, hours, zones = store.read_chunk(chunk, since_us, now_us)
                    parts.append(utils.uptime_report(polls, hours, zones, now_us))
                    done += len(chunk)
                    store.update_report(report_id, progress={"done": done, "total": len(store_ids)})
        report = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=utils.REPORT_COLUMNS)
        return self._store_report(report_id, report)

    def _cluster_report(self, report_id: str, store_ids: list[str], since_us: int, now_us: int, lost) -> pd.DataFrame:
        """The report computed on the Dask cluster, one task per range reading the store from its spec."""
        if not store_ids:
            return pd.DataFrame(columns=utils.REPORT_COLUMNS)

        def progress(done: int, total: int) -> None:
            self.store.update_report(report_id, progress={"done": done, "total": total})

        ticks = cluster.store_report_ticks(
            self.scheduler, self.store.spec(), store_ids, since_us, now_us, self.chunk_stores,
            on_range_done=progress, lost=lost, task=self.range_task or cluster.range_ticks)
        return utils.to_report_units(ticks)

    def _store_report(self, report_id: str, report: pd.DataFrame) -> int:
        payload = report_csv_bytes(report)
        write_atomically(self.reports_dir / f"report_{report_id}.csv", payload)
        self.store.complete_report(report_id, payload, len(report))
        return len(report)

    def abandon(self, reason: str) -> None:
        """Fail every report this process still owns (its worker is going away)."""
        with self._lock:
            owned = list(self._owned)
        for report_id in owned:
            self.store.fail_report(report_id, reason)

    def shutdown(self, wait: bool = False) -> None:
        self._stopped.set()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        if not wait:
            self.abandon("the server stopped before the report finished; trigger it again")


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compute the store uptime report straight from CSV files.")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with the three input CSV files")
    parser.add_argument("--output", type=Path, required=True, help="where to write the report CSV")
    parser.add_argument("--as-of", help="ISO 8601 instant to report at (default: the newest poll)")
    parser.add_argument("--chunk-stores", type=int, default=DEFAULT_CHUNK_STORES, help="stores per chunk")
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help="worker processes for the engine (default: the usable cores; 1 = none)")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="run the ranges of stores on this Dask scheduler's workers instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        as_of_us = parse_as_of(args.as_of) if args.as_of else None
        from tqdm import tqdm  # only the command line draws progress bars

        with tqdm(desc="stores", unit="store", disable=not sys.stderr.isatty()) as bar:

            def show(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            report, now_us, parsed = report_from_dir(
                args.data_dir, as_of_us, args.chunk_stores, args.processes, on_progress=show,
                scheduler=args.scheduler,
            )
    except (ValueError, sources.HeaderError, OSError, cluster.ClusterUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for result in parsed.values():
        if result.rejected:
            print(f"{result.file}: {result.rejected} rows rejected (first: line {result.rejects[0].line}: "
                  f"{result.rejects[0].reason})", file=sys.stderr)
    write_atomically(args.output, report_csv_bytes(report))
    print(f"wrote {len(report)} stores to {args.output} (as of {utils.us_to_datetime(now_us).isoformat()})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
