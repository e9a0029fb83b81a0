"""The report job: load the data, compute the report range by range, write the CSV, store it.

`ReportGenerator` runs reports from a `database.Store` (SQLite or MongoDB) in a
bounded pool of named, daemonic threads; each records its progress and
heartbeat in the store's `reports` and ends `Complete` (the CSV stored in the
database and written to REPORTS_DIR) or `Failed` (with the reason), never
silently.  `run` does the same work synchronously.  With a Dask scheduler
(`scheduler=`, the service's DASK_SCHEDULER) the ranges of stores run as tasks
on the cluster instead (cluster.py); the report is the same, byte for byte.
Every path cuts the stores into ranges by one rule, `utils.store_ranges`
(at most CHUNK_STORES each); report_csv.py turns the report into its CSV bytes.

The same engine also runs straight from CSV files with no database:

    python reportGenerator.py --data-dir data --output report.csv [--as-of ISO] [--scheduler tcp://host:8786]
"""

from __future__ import annotations

import gc

if __name__ == "__main__":
    # the command line: no garbage collection while numpy and pyarrow import (pandas comes later, in a thread);
    # they make some 50,000 objects that live as long as the run and no garbage, and each collection would walk
    # them all
    gc.disable()

import argparse
import ctypes
import datetime as dt
import errno
import importlib.util
import logging
import multiprocessing
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import sources
import utils

if __name__ == "__main__":
    gc.freeze()  # the imports' objects, out of every later collection's way (the one at exit too)
    gc.enable()
else:
    # the report job needs pandas and the CSV writer; the command line imports them only once the report is
    # computed: its polls are read without pandas while the thread reading the business hours imports it
    # (0.3 s of start-up off the critical path, docs/performance.md)
    import pandas as pd

    from report_csv import report_csv_bytes, write_atomically


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
metrics = _lazy_import("metrics")  # prometheus_client, for report jobs in the service only

log = logging.getLogger(__name__)

DEFAULT_CHUNK_STORES = 5_000


# --------------------------------------------------------------------------- pure orchestration


POLLS_PER_PROCESS = 20_000_000


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_processes(n_polls: int) -> int:
    """Worker processes for the CSV-mode engine, by the size of the work: one per POLLS_PER_PROCESS polls
    (those it computes with: the first and last of each run of one status), at most one per usable core.

    Reading, sorting and the engine's ranges use threads; forking, and sending the results back, cost more
    than the engine's share of a run saves until the data is very large: on a 2-core machine
    (benchmarks/bench_report.py) two processes were slower than one at 1.5M polls and at 15M (the engine
    0.11 s against 0.06 s, and 0.60 s against 0.49 s; docs/performance.md).
    """
    return max(1, min(usable_cores(), n_polls // POLLS_PER_PROCESS))


ENGINE_THREADS = 4  # at most this many threads compute ranges in one process (measured on 2 cores only: two
# threads took the engine's share of a 1.5M-poll report from 0.13 s to 0.08 s)


def engine_workers() -> int:
    """Threads that compute ranges at once in one process."""
    return min(ENGINE_THREADS, usable_cores())


_FORKED_INPUTS: utils.CodedInputs | None = None  # what forked workers inherit instead of being sent


def _inherited_range_ticks(first: int, last: int, now_us: int) -> dict:
    return utils.coded_uptime_ticks(_FORKED_INPUTS.stores(first, last), now_us)


def _ticks_by_range(coded: utils.CodedInputs, now_us: int, bounds, processes: int) -> Iterable[dict]:
    """Each range's ticks, in order; computed in `processes` forked workers when that can pay."""
    global _FORKED_INPUTS
    fork = "fork" in multiprocessing.get_all_start_methods()
    if processes > 1 and len(bounds) > 1 and fork and threading.active_count() == 1:
        # forked workers see the parsed arrays through this global at no cost (only the small
        # results travel back); fork is only safe from a single-threaded process
        _FORKED_INPUTS = coded
        try:
            with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_inherited_range_ticks, a, b, now_us) for a, b in bounds]
                for future in futures:
                    yield future.result()
        finally:
            _FORKED_INPUTS = None
        return
    if len(bounds) > 1 and engine_workers() > 1:
        # the engine's numpy work lets go of the GIL: two threads compute two ranges at once
        with ThreadPoolExecutor(max_workers=engine_workers(), thread_name_prefix="engine") as pool:
            yield from pool.map(lambda bound: utils.coded_uptime_ticks(coded.stores(*bound), now_us), bounds)
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
    """The report for in-memory frames (as `utils.uptime_ticks` takes them), range by range of stores.

    With `processes > 1` the ranges are shared among forked worker processes
    (only from a single-threaded process; otherwise they run here, one by one).
    With a Dask `scheduler` address the ranges are scattered to its workers.
    """
    store_ids, coded = utils.code_inputs(polls, hours, zones, now_us)
    return report_from_coded(store_ids, coded, now_us, chunk_stores, on_progress, processes, scheduler)


def report_from_coded(
    store_ids,
    coded: utils.CodedInputs,
    now_us: int,
    chunk_stores: int = DEFAULT_CHUNK_STORES,
    on_progress: Callable[[int, int], None] | None = None,
    processes: int = 1,
    scheduler: str | None = None,
) -> pd.DataFrame:
    """The report for coded inputs (`utils.code_inputs`, `utils.code_sorted_polls`): see `report_from_frames`."""
    if scheduler:
        ticks = cluster.coded_report_ticks(scheduler, coded, now_us, chunk_stores, on_progress)
        return utils.to_report_units(utils.ticks_frame(store_ids, ticks))
    bounds = utils.store_ranges(coded.n_stores, chunk_stores, processes if processes > 1 else engine_workers())
    parts = []
    for (_, last), ticks in zip(bounds, _ticks_by_range(coded, now_us, bounds, processes)):
        parts.append(ticks)
        if on_progress:
            on_progress(last, coded.n_stores)
    return utils.to_report_units(utils.ticks_frame(store_ids, utils.join_ticks(parts)))


def report_from_dir(
    data_dir: str | Path,
    as_of_us: int | None = None,
    chunk_stores: int = DEFAULT_CHUNK_STORES,
    processes: int | None = 1,
    on_progress: Callable[[int, int], None] | None = None,
    scheduler: str | None = None,
):
    """Parse the three CSV files of `data_dir` and compute the report; returns (report, now_us, parsed files).

    `processes=None` chooses them by the number of polls (`default_processes`).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} is not a folder" if data_dir.exists() else f"{data_dir} does not exist")
    if not (data_dir / sources.STATUS_FILE).is_file():
        raise FileNotFoundError(f"{data_dir} has no {sources.STATUS_FILE}: there are no polls to report on")
    # the polls come sorted by store and time, as plain columns (sources.PollColumns): no frame, no pandas
    parsed = sources.read_data_dir(data_dir, polls_as_columns=True)
    polls = parsed[sources.STATUS_FILE].columns
    if as_of_us is None:
        if not polls.timestamp_us.size:
            raise ValueError(f"{data_dir}: no valid polls, so there is no 'now' to report at")
        as_of_us = int(polls.timestamp_us.max())
    if processes is None:
        processes = default_processes(polls.timestamp_us.size)
    store_ids, coded = utils.code_sorted_polls(
        polls.store_ids,
        polls.store,
        polls.timestamp_us,
        polls.active,
        parsed[sources.HOURS_FILE].frame,
        parsed[sources.ZONES_FILE].frame,
        as_of_us,
    )
    report = report_from_coded(store_ids, coded, as_of_us, chunk_stores, on_progress, processes, scheduler)
    return report, as_of_us, parsed


class ReportError(Exception):
    """A report cannot be made for a reason the user can act on; the message says it in their terms."""


def failure_message(error: BaseException) -> str:
    """What a Failed report tells its user: no exception names or server paths (the log has those)."""
    if isinstance(error, (ReportError, cluster.ClusterUnavailable, database.DiskFull, database.UploadUnfinished)):
        return str(error)  # each already says it in user terms
    if isinstance(error, database.LeaseTimeout):
        return "a data load kept the data busy for too long; trigger the report again"
    if isinstance(error, database.LeaseLost):
        return "the data changed while the report read it; trigger the report again"
    if isinstance(error, database.DATABASE_ERRORS) and database.is_transient(error):
        return "the database did not answer while the report ran; trigger it again"
    if isinstance(error, database.DATABASE_ERRORS):
        return "the database refused a step of the report (a permanent error; the server log has the details)"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "the disk holding the reports folder is full; nothing of this report was kept"
    if isinstance(error, OSError):
        return "the report could not be saved on the server (the server log says why); trigger it again later"
    return "the report could not be computed because of an internal error (the server log has the details)"


# --------------------------------------------------------------------------- the job on a database


HEARTBEAT_SECONDS = 10.0
RETENTION_SWEEP_SECONDS = 3600.0  # how often finished reports past their retention are deleted
LIVE_GENERATORS: weakref.WeakSet[ReportGenerator] = weakref.WeakSet()


class QueueFull(RuntimeError):
    """This process already has its most reports queued or running; try again later."""


class ReportGenerator:
    """Runs report jobs against a `database.Store`, at most `workers` at a time.

    Reports beyond `workers` wait in the queue (still `Running`, progress 0),
    up to `max_queued` queued or running in all (default 4 x `workers`); beyond
    that `start` raises QueueFull.  A start for the same `as_of` as a report of
    this process still Running returns that report's id.  One heartbeat thread
    refreshes every queued or running report of this process, so a report whose
    process died is found stale and failed.
    """

    def __init__(
        self,
        store: database.Store,
        reports_dir: str | Path,
        chunk_stores: int = DEFAULT_CHUNK_STORES,
        workers: int = 2,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        max_queued: int | None = None,
        scheduler: str | None = None,
    ):
        self.store = store
        self.scheduler = scheduler or None  # a Dask scheduler address: ranges run there (cluster.py)
        self.reports_dir = Path(reports_dir)
        self.chunk_stores = chunk_stores
        self.heartbeat_seconds = heartbeat_seconds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="report")
        self._owned: set[str] = set()
        self.max_queued = max_queued if max_queued is not None else 4 * workers
        self._by_as_of: dict[int, str] = {}  # explicit as_of -> the id of this process's Running report for it
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._heart: threading.Thread | None = None
        self._retention: tuple[float, int] | None = None  # (days, max reports) once start_retention is called
        # called with the report id after a report turns Complete, in the report's thread: each must return at
        # once (start its own thread for slow work); an error is logged, never fails or delays the report
        self.on_complete: list[Callable[[str], None]] = []
        LIVE_GENERATORS.add(self)

    def start(self, as_of_us: int | None = None, trigger: str = "api") -> str:
        """Record a Running report and queue it; returns its id at once.

        Raises QueueFull when `max_queued` reports of this process are queued or
        running.  With an `as_of` that a Running report of this process already
        has, returns that report's id instead of starting another.  `trigger`
        ("api" | "schedule": what asked for the report) is kept in its record and
        labels the started-reports metric.
        """
        with self._lock:
            if as_of_us is not None and as_of_us in self._by_as_of:
                return self._by_as_of[as_of_us]
            report_id = uuid.uuid4().hex
            self._reserve(report_id, as_of_us)
        try:
            self.store.create_report(report_id, as_of_us, trigger)
        except BaseException:
            self._forget(report_id)
            raise
        self._queue(report_id, as_of_us, trigger)
        return report_id

    def enqueue(self, report_id: str, as_of_us: int | None = None, trigger: str = "schedule") -> None:
        """Queue a report whose Running record already exists (the schedule's `Store.claim_tick` made it),
        under the same quota (QueueFull), heartbeat and metrics as `start`."""
        with self._lock:
            if self._stopped.is_set():
                raise RuntimeError("the report generator is shut down")
            self._reserve(report_id, as_of_us)
        self._queue(report_id, as_of_us, trigger)

    @property
    def stopped(self) -> threading.Event:
        """Set by `shutdown`: the threads serving this generator (the schedule's) end with it."""
        return self._stopped

    def _reserve(self, report_id: str, as_of_us: int | None) -> None:
        """Count a report against the quota (under self._lock), or raise QueueFull."""
        if len(self._owned) >= self.max_queued:
            raise QueueFull(
                f"{len(self._owned)} reports are already queued or running here "
                f"(at most {self.max_queued}); try again when one has finished"
            )
        self._owned.add(report_id)  # reserved before the record exists, so the quota holds under a burst
        if as_of_us is not None:
            self._by_as_of[as_of_us] = report_id

    def _queue(self, report_id: str, as_of_us: int | None, trigger: str) -> None:
        """Hand a reserved report, recorded Running, to the pool; its heartbeat starts with the first."""
        with self._lock:
            if self._heart is None:
                self._heart = threading.Thread(target=self._beat, name="report-heartbeat", daemon=True)
                self._heart.start()
        metrics.report_started(trigger)
        try:
            self._pool.submit(self._run_queued, report_id, as_of_us)
        except RuntimeError:  # the pool is shut down: the report is not this process's any more
            metrics.report_dequeued()
            self._forget(report_id)
            raise

    def _run_queued(self, report_id: str, as_of_us: int | None) -> None:
        metrics.report_dequeued()
        self.run(report_id, as_of_us)

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
        metrics.report_running()
        status = "Failed"
        try:
            rows = self._compute_and_store(report_id, as_of_us)
        except Exception as error:  # the thread must record every failure, never die silently
            log.exception("report %s failed", report_id)
            self._forget(report_id)  # before the record says Failed: a caller who sees that finds room again
            self.store.fail_report(report_id, failure_message(error))
        else:
            status = "Complete"
            log.info("report %s complete: %d stores in %.1f s", report_id, rows, time.monotonic() - started)
            self._announce_complete(report_id)
        finally:
            self._forget(report_id)
            metrics.report_finished(status, time.monotonic() - started)
            self._sweep_after_finish()

    def _announce_complete(self, report_id: str) -> None:
        """Call each on_complete hook; one that fails is logged and the others still run."""
        for hook in list(self.on_complete):
            try:
                hook(report_id)
            except Exception:
                log.exception("an on_complete hook failed for report %s", report_id)

    def _sweep_after_finish(self) -> None:
        """Apply retention as each report finishes, so finished reports never pile up past MAX_REPORTS."""
        if self._retention is None:
            return
        try:
            self.sweep(*self._retention)
        except Exception:  # retention is retried at the next finish or round; it never fails a report
            log.exception("retention sweep failed")

    def _forget(self, report_id: str) -> None:
        with self._lock:
            self._owned.discard(report_id)
            for as_of_us in [key for key, value in self._by_as_of.items() if value == report_id]:
                del self._by_as_of[as_of_us]

    def _compute_and_store(self, report_id: str, as_of_us: int | None) -> int:
        store = self.store
        # the read lease keeps loads out while the report reads, so it sees one consistent state
        with store.data_lease("read") as lost:
            unfinished = store.unfinished_upload()
            if unfinished is not None:
                raise database.UploadUnfinished(unfinished)
            newest_us = store.latest_poll_us()
            now_us = as_of_us if as_of_us is not None else newest_us
            if now_us is None:
                raise ReportError("there are no polls in the database, so there is nothing to report")
            if newest_us is not None and now_us > newest_us:
                store.update_report(report_id, as_of_after_newest_poll=True)
            if not utils.FIRST_AS_OF_US <= now_us <= utils.LAST_AS_OF_US:
                raise ReportError(
                    "the newest poll is outside the dates a report can cover (1970 to 9000); "
                    "trigger the report with an as_of"
                )
            store.update_report(report_id, as_of_us=now_us)
            # counting the stores can take a while on large data: say so rather than "0 of 0"
            store.update_report(report_id, progress={"done": 0, "total": None, "phase": "counting"})
            store_ids = store.report_store_ids(now_us)
            store.update_report(report_id, progress={"done": 0, "total": len(store_ids), "phase": "computing"})
            since_us = now_us - utils.WEEK_US
            if self.scheduler:
                parts = [self._cluster_report(report_id, store_ids, since_us, now_us, lost)]
            else:
                parts = self._range_reports(report_id, store_ids, since_us, now_us, lost)
        report = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=utils.REPORT_COLUMNS)
        return self._store_report(report_id, report)

    def _range_reports(self, report_id: str, store_ids: list[str], since_us: int, now_us: int, lost) -> list:
        """The report range by range in this thread, each range read from the store; progress after each."""
        parts = []
        for first, last in utils.store_ranges(len(store_ids), self.chunk_stores):
            if lost.is_set():
                raise database.LeaseLost("the data lease was lost while reading; a load may have changed the data")
            polls, hours, zones = self.store.read_chunk(store_ids[first:last], since_us, now_us)
            parts.append(utils.uptime_report(polls, hours, zones, now_us))
            self.store.update_report(report_id, progress={"done": last, "total": len(store_ids), "phase": "computing"})
        return parts

    def _cluster_report(self, report_id: str, store_ids: list[str], since_us: int, now_us: int, lost) -> pd.DataFrame:
        """The report computed on the Dask cluster, one task per range reading the store from its spec."""
        if not store_ids:
            return pd.DataFrame(columns=utils.REPORT_COLUMNS)

        def progress(done: int, total: int) -> None:
            self.store.update_report(report_id, progress={"done": done, "total": total, "phase": "computing"})

        ticks = cluster.store_report_ticks(
            self.scheduler,
            self.store.spec(),
            store_ids,
            since_us,
            now_us,
            self.chunk_stores,
            on_range_done=progress,
            lost=lost,
        )
        return utils.to_report_units(ticks)

    def _store_report(self, report_id: str, report: pd.DataFrame) -> int:
        """Write the CSV file, then store it and mark the report Complete: Complete means both are there.

        A report failed meanwhile (swept as stale, shut down) stays Failed and its file is removed.
        """
        payload = report_csv_bytes(report)
        path = self.reports_dir / f"report_{report_id}.csv"
        write_atomically(path, payload)
        self._forget(report_id)  # before the record says Complete: a caller who sees that finds room again
        try:
            completed = self.store.complete_report(report_id, payload, len(report))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if not completed:
            path.unlink(missing_ok=True)
            raise ReportError(
                "the report was marked Failed before it finished (its heartbeat was late, or the "
                "server was stopping); trigger it again"
            )
        return len(report)

    def delete(self, report_id: str) -> bool:
        """Delete one finished report: its record, stored CSV and history rows, then its file under
        REPORTS_DIR (this host's; a file that cannot be removed is logged).  False when there is no such
        report or it is Running (then nothing is touched)."""
        if not self.store.delete_report(report_id):
            return False
        try:
            (self.reports_dir / f"report_{report_id}.csv").unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not delete the file of deleted report %s: %s", report_id, error)
        return True

    def sweep(self, retention_days: float, max_reports: int) -> list[str]:
        """Delete the finished reports older than `retention_days` or beyond the newest `max_reports`:
        their records, stored CSVs and files under REPORTS_DIR; returns their ids."""
        cutoff = database.now_utc() - dt.timedelta(days=retention_days)
        deleted = self.store.delete_finished_reports(cutoff, max_reports)
        for report_id in deleted:
            try:
                (self.reports_dir / f"report_{report_id}.csv").unlink(missing_ok=True)
            except OSError as error:
                log.warning("retention: could not delete the file of report %s: %s", report_id, error)
        if deleted:
            log.info(
                "retention: deleted %d finished reports (older than %g days or beyond the newest %d): %s%s",
                len(deleted),
                retention_days,
                max_reports,
                ", ".join(deleted[:20]),
                " ..." if len(deleted) > 20 else "",
            )
        return deleted

    def start_retention(
        self, retention_days: float, max_reports: int, every_seconds: float = RETENTION_SWEEP_SECONDS
    ) -> threading.Thread:
        """Sweep now, after each report finishes, and every `every_seconds` in a named daemon thread,
        until `shutdown`."""
        self._retention = (retention_days, max_reports)

        def loop() -> None:
            while True:
                try:
                    self.sweep(retention_days, max_reports)
                except Exception:  # a failed sweep is retried at the next round, never kills the thread
                    log.exception("retention sweep failed")
                if self._stopped.wait(every_seconds):
                    return

        thread = threading.Thread(target=loop, name="report-retention", daemon=True)
        thread.start()
        return thread

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


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ONE_RUN_MMAP_THRESHOLD = 32 << 20  # glibc's largest: arrays up to 32 MB come from the heap


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory this process frees, for the command line's one run.

    By default glibc gives every array over a few MB its own mapping and hands
    it back to the system when it is freed, so the next array of that size
    faults in fresh pages one by one; on a virtual machine those faults were a
    third of a real-scale report's time.  Here arrays up to 32 MB come from one
    heap shared by every thread, and freed memory stays in it for the next
    array.  pyarrow then allocates from that heap too (its own mimalloc pool
    kept the blocks it freed apart: 100 MB more at 1.5 M polls, no quicker).
    Not for the service: a long-lived process should give memory back.
    False where the C library is not glibc (then nothing changes).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    tuned = all(
        mallopt(option, value) == 1
        for option, value in (
            (M_MMAP_THRESHOLD, ONE_RUN_MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, 2**31 - 1),
            (M_ARENA_MAX, 1),
        )
    )
    if tuned:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
    return tuned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compute the store uptime report straight from CSV files.")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with the three input CSV files")
    parser.add_argument("--output", type=Path, required=True, help="where to write the report CSV")
    parser.add_argument("--as-of", help="ISO 8601 instant to report at (default: the newest poll)")
    parser.add_argument("--chunk-stores", type=int, default=DEFAULT_CHUNK_STORES, help="the most stores in one range")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help=f"worker processes for the engine (default: by the size of the data, one per "
        f"{POLLS_PER_PROCESS:,} polls, at most one per core; 1 = none)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run the ranges of stores on this Dask scheduler's workers instead",
    )
    args = parser.parse_args(argv)
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        as_of_us = utils.parse_as_of(args.as_of) if args.as_of else None
        if sys.stderr.isatty():  # progress bars only on a terminal (tqdm is not even imported otherwise)
            from tqdm import tqdm

            with tqdm(desc="stores", unit="store") as bar:

                def show(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                report, now_us, parsed = report_from_dir(
                    args.data_dir,
                    as_of_us,
                    args.chunk_stores,
                    args.processes,
                    on_progress=show,
                    scheduler=args.scheduler,
                )
        else:
            report, now_us, parsed = report_from_dir(
                args.data_dir, as_of_us, args.chunk_stores, args.processes, scheduler=args.scheduler
            )
    except (ValueError, sources.HeaderError, OSError, cluster.ClusterUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for file, what in (
        (sources.HOURS_FILE, "every store is open 24/7"),
        (sources.ZONES_FILE, "every store is in America/Chicago"),
    ):
        if not (args.data_dir / file).is_file():
            print(f"warning: {args.data_dir / file} not found: {what}", file=sys.stderr)
    for result in parsed.values():
        if result.rejected:
            print(
                f"{result.file}: {result.rejected} rows rejected (first: line {result.rejects[0].line}: "
                f"{result.rejects[0].reason})",
                file=sys.stderr,
            )
    from report_csv import report_csv_bytes, write_atomically  # (imported already, unless run as a command)

    write_atomically(args.output, report_csv_bytes(report))
    print(
        f"wrote {len(report)} stores to {args.output} (as of {utils.us_to_datetime(now_us).isoformat()})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
