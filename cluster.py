"""A report's work on a Dask cluster: one task per range of stores, assembled in order.

Used when DASK_SCHEDULER (the service) or --scheduler (the command line) names a
`dask scheduler`.  Everything Dask-specific lives here; reportGenerator.py only
calls `store_report_ticks` and `coded_report_ticks`, and api.py `scheduler_state`.

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

The scheduler needs none of the project's modules: the client sends the task
graph pickled and the scheduler unpickles it, so every task function goes as
opaque bytes inside a small function pickled by value (`_opaque`), unpickled
only on the worker that runs it.  At connect (`check_code`, and `code_check`
for /health) every worker must import the project's modules at this process's
version (`code_version`) and every host run the same packages; a report on a
cluster that cannot run this code fails at once, naming the hosts.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import pickle
import threading
import time
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


class ClusterCannotRunCode(ClusterUnavailable):
    """Some host of the cluster cannot run this process's code: the message names each and says why."""


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


# --------------------------------------------------------------------------- what the scheduler unpickles


def _opaque(function: Callable) -> Callable:
    """`function` as a task function the scheduler can unpickle without any of the project's modules.

    distributed 2026.8 pickles the whole task graph on the client and unpickles it on the scheduler
    (`Scheduler.update_graph`); a function pickled by reference (`cluster.range_ticks`) makes the
    scheduler import `cluster`.  Here the function travels as bytes inside a nested function, which
    plain pickle cannot name, so distributed falls back to cloudpickle and sends that one by value
    (its code and the bytes; it refers to no module of the project).  The bytes are unpickled only on
    the worker that runs the task, which imports `cluster` as any task would.
    """
    payload = pickle.dumps(function)

    def run_on_worker(*args):
        import pickle

        return pickle.loads(payload)(*args)

    run_on_worker.__name__ = getattr(function, "__name__", "task")  # the key's prefix on the dashboard
    return run_on_worker


# --------------------------------------------------------------------------- the code every host must run

CODE_MODULES = ("cluster", "utils", "database", "metrics", "sources", "store_sqlite", "store_mongo", "report_csv")
PACKAGES = ("numpy", "pandas", "pyarrow", "pymongo", "pymongoarrow", "tenacity", "tzdata")  # beyond Dask's own
# what the scheduler must share with the client (distributed.versions.scheduler_relevant_packages)
SCHEDULER_PACKAGES = ("python", "dask", "distributed", "cloudpickle", "tornado", "toolz", "lz4")
CODE_CHECK_MAX_AGE_SECONDS = 30.0  # /health reuses a check this young
_CODE_VERSION: str | None = None
_CHECKS: dict[str, tuple[float, dict]] = {}
_CHECKS_LOCK = threading.Lock()


def code_version() -> str:
    """sha256 (hex) of the source of CODE_MODULES, as read the first time this process asked.

    Every module is imported first, so the files hashed are the ones this process runs (a checkout
    updated after that, without a restart, keeps the old version here and so is found out).
    """
    global _CODE_VERSION
    if _CODE_VERSION is None:
        digest = hashlib.sha256()
        for name in CODE_MODULES:
            module = importlib.import_module(name)
            with open(module.__file__, "rb") as source:
                digest.update(name.encode() + b"\0" + source.read() + b"\0")
        _CODE_VERSION = digest.hexdigest()
    return _CODE_VERSION


def _code_probe() -> Callable[[], dict]:
    """What each worker runs for the check: nested, so it is sent by value and loads where `cluster` does not."""

    def code_probe() -> dict:
        try:
            import importlib

            return {"version": importlib.import_module("cluster").code_version()}
        except Exception as error:  # a host that cannot import the project says why; the check goes on
            return {"error": f"{type(error).__name__}: {error}"}

    return code_probe


def _scheduler_probe() -> Callable[[], str]:
    """What the scheduler runs for the check: a function sent by value, as every task function is (`_opaque`)."""

    def scheduler_probe() -> str:
        return "ok"

    return scheduler_probe


def _host(workers: dict, address: str) -> str:
    name = (workers.get(address) or {}).get("name")
    return f"worker {address}" + (f" ({name})" if name not in (None, "", address) else "")


def check_code(client) -> list[str]:
    """What keeps the cluster of `client` from running this process's code: one line a host, [] if nothing.

    Each worker imports CODE_MODULES and returns their `code_version` (`client.run`); the scheduler
    runs a function sent by value, as the tasks are (`client.run_on_scheduler`); and every host's
    packages are compared with this process's (`client.get_versions`; distributed 2026.8 only warns
    on a mismatch, so the comparison is made here, for the packages the tasks use).
    """
    import warnings

    problems: list[str] = []
    workers = client.scheduler_info(n_workers=-1)["workers"]
    here = code_version()
    answers = client.run(_code_probe(), on_error="return")
    silent = [address for address in workers if isinstance(answers.get(address, None), BaseException | None)]
    if silent:  # a worker that left meanwhile is not a problem: the scheduler no longer sends it tasks
        still_there = client.scheduler_info(n_workers=-1)["workers"]
        answers = {address: answer for address, answer in answers.items() if address in still_there}
        workers = {address: info for address, info in workers.items() if address in still_there}
    for address in sorted(set(workers) | set(answers)):
        answer = answers.get(address)
        if isinstance(answer, BaseException) or answer is None:
            problems.append(f"{_host(workers, address)} did not answer the code check: {answer!r}")
        elif "error" in answer:
            problems.append(f"{_host(workers, address)} cannot import the project's modules ({answer['error']})")
        elif answer["version"] != here:
            problems.append(
                f"{_host(workers, address)} runs other code (version {answer['version'][:12]}, "
                f"here {here[:12]}): update its checkout and restart it"
            )
    try:
        client.run_on_scheduler(_scheduler_probe())
    except Exception as error:
        problems.append(f"the scheduler cannot load this client's tasks: {type(error).__name__}: {error}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        versions = client.get_versions(check=True, packages=list(PACKAGES))
    mine = versions["client"]["packages"]
    hosts = [("the scheduler", versions["scheduler"], SCHEDULER_PACKAGES)]
    hosts += [(_host(workers, address), info, tuple(mine)) for address, info in sorted(versions["workers"].items())]
    for host, info, names in hosts:
        theirs = (info or {}).get("packages") or {}
        differ = [
            f"{name} {theirs.get(name)} (here {mine.get(name)})" for name in names if theirs.get(name) != mine.get(name)
        ]
        if differ:
            problems.append(f"{host} has other packages: {', '.join(differ)}")
    return problems


def require_code(client, address: str) -> None:
    """Raise ClusterCannotRunCode, naming each host and why, unless every host can run this code."""
    problems = check_code(client)
    _remember(address, problems)
    if problems:
        raise ClusterCannotRunCode(
            f"the Dask cluster at {address} cannot run this version of the report: " + "; ".join(problems)
        )


def _remember(address: str, problems: list[str]) -> dict:
    result = {"ok": not problems, "problems": problems}
    with _CHECKS_LOCK:
        _CHECKS[address] = (time.monotonic(), result)
    return result


def code_check(
    address: str, timeout: float = CONNECT_TIMEOUT_SECONDS, max_age: float = CODE_CHECK_MAX_AGE_SECONDS
) -> dict:
    """{"ok": bool, "problems": [str, ...]}: whether the cluster at `address` can run this process's code.

    For /health: a result younger than `max_age` seconds (from here or from a report's connect) is
    reused, so a load balancer's polling does not open a client each time.  A scheduler that cannot be
    reached, or has no workers, is a problem too.
    """
    with _CHECKS_LOCK:
        cached = _CHECKS.get(address)
    if cached is not None and time.monotonic() - cached[0] <= max_age:
        return cached[1]
    try:
        with open_client(address, timeout=timeout, workers_timeout=timeout) as client:
            problems = check_code(client)
    except ClusterUnavailable as error:
        problems = [str(error)]
    except Exception as error:  # /health must answer whatever the cluster does
        log.warning("the code check of the Dask cluster at %s failed: %s", address, error)
        problems = [f"the code check of the Dask cluster at {address} failed: {type(error).__name__}: {error}"]
    return _remember(address, problems)


# --------------------------------------------------------------------------- the client side


def open_client(
    address: str, timeout: float = CONNECT_TIMEOUT_SECONDS, workers_timeout: float = WORKERS_TIMEOUT_SECONDS
):
    """A Client on `address` with at least one worker, or ClusterUnavailable within seconds.

    It does not check the workers' code: `connect` does."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ClusterUnavailable(f"the Dask scheduler at {address} cannot be reached: {error}") from None
    try:
        client.wait_for_workers(1, timeout=workers_timeout)
    except (OSError, TimeoutError):
        client.close()
        raise ClusterUnavailable(
            f"the Dask scheduler at {address} has no workers (waited {workers_timeout:.0f} s)"
        ) from None
    return client


def connect(address: str):
    """A Client on `address` whose every host can run this process's code (`require_code`), else
    ClusterUnavailable (or ClusterCannotRunCode, naming the hosts) at once."""
    client = open_client(address)
    try:
        require_code(client, address)
    except BaseException:
        client.close()
        raise
    return client


def _result_of(future, address: str):
    """The future's result; a worker that joined after the check and cannot import the project is named."""
    try:
        return future.result()
    except ImportError as error:
        raise ClusterCannotRunCode(
            f"the Dask cluster at {address} cannot run this version of the report: a worker that joined "
            f"after the code check cannot import the project's modules ({type(error).__name__}: {error})"
        ) from error


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

    with connect(address) as client:
        bounds = _ranges(client, len(store_ids), range_stores)
        token = uuid.uuid4().hex[:12]
        task = _opaque(range_ticks)
        futures = {
            client.submit(
                task,
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
                parts[index] = _result_of(future, address)
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

    with connect(address) as client:
        bounds = _ranges(client, coded.n_stores, range_stores)
        inputs = client.scatter([coded.stores(first, last) for first, last in bounds])
        task = _opaque(coded_range_ticks)
        futures = {client.submit(task, data, now_us, pure=False): index for index, data in enumerate(inputs)}
        parts: list[dict | None] = [None] * len(bounds)
        done = 0
        for future in as_completed(futures, loop=client.loop):
            index = futures[future]
            parts[index] = _result_of(future, address)
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
