"""A report's work on a Dask cluster: one task per range of stores, assembled in order.

Used when DASK_SCHEDULER (the service) or --scheduler (the command line) names a
`dask scheduler`.  Everything Dask-specific lives here; reportGenerator.py only
calls `store_report_ticks` and `coded_report_ticks`, and app.py `scheduler_state`.

- Service: each task gets the store's `spec()` (small keyword arguments, never
  a store object), opens the store in its worker process (once per process),
  reads only its range of stores with `read_chunk` and returns that range's
  exact tick counts.  Progress moves as ranges finish.  A worker that dies is
  the scheduler's business: it reruns the lost ranges on another worker.
- Command line: the client parses the CSV files once and scatters each
  range's coded arrays to the workers (README, "Past one machine", says why).

The ranges are cut by `utils.store_ranges`, the rule every path uses: at most
CHUNK_STORES stores each, and here at least RANGES_PER_CLUSTER_WORKER (2) ranges
a worker.  Tasks return plain int64 arrays, so the assembled report is exactly
the one the single-process paths compute, byte for byte once written.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable

import numpy as np
import pandas as pd

import utils

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0  # an unreachable scheduler fails the report within this
WORKERS_TIMEOUT_SECONDS = 10.0  # a scheduler with no workers fails it within this
HEALTH_TIMEOUT_SECONDS = 0.5  # /health answers within a second either way
TICK_COLUMNS = utils.REPORT_COLUMNS[1:]


class ClusterUnavailable(RuntimeError):
    """The scheduler cannot be reached, or has no workers."""


# --------------------------------------------------------------------------- ranges


def _assemble(parts: list[dict]) -> pd.DataFrame:
    """Per-range results, in range order, as one ticks frame (`utils.ticks_frame`)."""
    store_ids = np.concatenate([part["store_id"] for part in parts]) if parts else np.empty(0, object)
    return utils.ticks_frame(store_ids, utils.join_ticks(parts))


def _result(store_ids, ticks: dict) -> dict:
    result = {"store_id": np.asarray(store_ids, dtype=object)}
    result.update({column: np.asarray(ticks[column], dtype=np.int64) for column in TICK_COLUMNS})
    return result


# --------------------------------------------------------------------------- tasks (run on workers)

_OPEN_STORES: dict[tuple, object] = {}
_OPEN_LOCK = threading.Lock()


def _worker_store(spec: dict):
    """The store `spec` names, opened once per worker process (opening SQLite reconciles its schema)."""
    key = tuple(sorted(spec.items()))
    with _OPEN_LOCK:
        store = _OPEN_STORES.get(key)
        if store is None:
            import database

            store = _OPEN_STORES[key] = database.connect(**spec)
        return store


def range_ticks(spec: dict, store_ids: list[str], since_us: int, now_us: int) -> dict:
    """One range's exact figures: {"store_id": ids, column: int64 ticks, ...}, read from the store `spec` names."""
    polls, hours, zones = _worker_store(spec).read_chunk(store_ids, since_us, now_us)
    ticks = utils.uptime_ticks(polls, hours, zones, now_us)
    return _result(ticks["store_id"].to_numpy(dtype=object), {c: ticks[c].to_numpy() for c in TICK_COLUMNS})


def coded_range_ticks(coded: utils.CodedInputs, now_us: int) -> dict:
    """One range's figures from scattered, already parsed arrays (the command line); ids stay with the client."""
    return _result(np.empty(0, object), utils.coded_uptime_ticks(coded, now_us))


# --------------------------------------------------------------------------- the client side


def open_client(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS):
    """A Client on `address` with at least one worker, or ClusterUnavailable within seconds."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ClusterUnavailable(f"the Dask scheduler at {address} cannot be reached: {error}") from None
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_SECONDS)
    except (OSError, TimeoutError):
        client.close()
        raise ClusterUnavailable(
            f"the Dask scheduler at {address} has no workers (waited {WORKERS_TIMEOUT_SECONDS:.0f} s)"
        ) from None
    return client


def _worker_count(client) -> int:
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))


def _ranges(client, n_stores: int, range_stores: int) -> list[tuple[int, int]]:
    """The ranges of one report on this cluster: `utils.store_ranges` over its workers."""
    return utils.store_ranges(n_stores, range_stores, _worker_count(client), utils.RANGES_PER_CLUSTER_WORKER)


def store_report_ticks(
    address: str,
    spec: dict,
    store_ids: list[str],
    since_us: int,
    now_us: int,
    range_stores: int,
    on_range_done: Callable[[int, int], None] | None = None,
    lost: threading.Event | None = None,
) -> pd.DataFrame:
    """The ticks frame of `store_ids` (sorted), one cluster task per range, each reading the store `spec` names.

    `on_range_done(stores_done, total)` is called as each range finishes; when
    `lost` is set (the caller's data lease is gone) the rest is cancelled and
    database.LeaseLost raised.  Each task is `range_ticks`, looked up when the report starts.
    """
    if str(spec.get("uri") or "").startswith("mongomock:"):
        raise ValueError("MONGO_URI=mongomock:// keeps its data inside one process; a Dask cluster cannot read it")
    from distributed import as_completed

    with open_client(address) as client:
        bounds = _ranges(client, len(store_ids), range_stores)
        token = uuid.uuid4().hex[:12]
        futures = {
            client.submit(
                range_ticks,
                spec,
                store_ids[first:last],
                since_us,
                now_us,
                key=f"report-range-{token}-{first}",
                pure=False,
            ): index
            for index, (first, last) in enumerate(bounds)
        }
        parts: list[dict | None] = [None] * len(bounds)
        done = 0
        try:
            for future in as_completed(futures, loop=client.loop):
                if lost is not None and lost.is_set():
                    import database

                    raise database.LeaseLost("the data lease was lost while reading; a load may have changed the data")
                index = futures[future]
                parts[index] = future.result()
                first, last = bounds[index]
                if list(parts[index]["store_id"]) != store_ids[first:last]:
                    raise RuntimeError(
                        f"the range of stores {first}..{last - 1} came back with other stores; "
                        "the data changed under the report"
                    )
                done += last - first
                if on_range_done:
                    on_range_done(done, len(store_ids))
        finally:
            client.cancel(list(futures))
    return _assemble(parts)


def coded_report_ticks(
    address: str,
    coded: utils.CodedInputs,
    now_us: int,
    range_stores: int,
    on_range_done: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Ticks of every coded store (the command line): each range's arrays scattered once, one task per range."""
    from distributed import as_completed

    with open_client(address) as client:
        bounds = _ranges(client, coded.n_stores, range_stores)
        inputs = client.scatter([coded.stores(first, last) for first, last in bounds])
        futures = {
            client.submit(coded_range_ticks, data, now_us, pure=False): index for index, data in enumerate(inputs)
        }
        parts: list[dict | None] = [None] * len(bounds)
        done = 0
        for future in as_completed(futures, loop=client.loop):
            index = futures[future]
            parts[index] = future.result()
            done += bounds[index][1] - bounds[index][0]
            if on_range_done:
                on_range_done(done, coded.n_stores)
    return utils.join_ticks(parts)


# --------------------------------------------------------------------------- health


async def _identity(address: str, timeout: float) -> dict:
    from distributed.core import rpc

    async with rpc(address, timeout=timeout) as scheduler:
        return await scheduler.identity()


def scheduler_state(address: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> dict:
    """{"scheduler": address, "scheduler_ok": bool, "scheduler_workers": int}, within about `timeout` seconds."""
    try:
        identity = asyncio.run(asyncio.wait_for(_identity(address, timeout), timeout))
        workers = len(identity.get("workers") or {})
        ok = True
    except Exception as error:  # any failure to answer means "not ok"; /health must still answer
        log.warning("the Dask scheduler at %s does not answer: %s", address, error)
        ok, workers = False, 0
    return {"scheduler": address, "scheduler_ok": ok, "scheduler_workers": workers}
