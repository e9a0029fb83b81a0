"""Benchmark of reading polls from MongoDB into the engine's input: pymongoarrow against Python dicts.

It builds N polls exactly as `store_mongo.MongoStore.load_polls` stores them (`_id`,
`store_id`, `timestamp_us`, `timestamp_utc`, `status`), encodes them with `bson.encode`
into raw batches as a server sends them for each path's projection, and decodes the
batches both ways into the engine's polls frame:

* arrow  batches for `RAW_POLL_PROJECTION` (the same fields renamed `s`, `t`, `a`) through
         `store_mongo.polls_from_raw_batches` (pymongoarrow straight into arrays), the path
         MongoDB uses;
* dicts  batches for `POLL_PROJECTION` (`store_id`, `timestamp_us`, `status`) through
         `bson.decode_all` per batch (what a pymongo cursor does) then
         `store_mongo.polls_from_documents`, the path mongomock uses.

Each path runs in a forked child (so one path's peak memory does not hide the other's),
and reports docs per second, CPU seconds (user + system) and the child's peak resident
set (it includes the raw batches of both paths, which both children inherit).  The two frames are compared
(dtypes and every value, by hash).  Building and encoding the documents is not timed.

    python benchmarks/bench_read.py                    # 1.5M polls
    python benchmarks/bench_read.py --polls 1500000,15000000

Last line: `read path: arrow X s, dicts Y s, speed-up Z, identical yes|no` (CPU seconds
at the largest size).  Target: at most 0.6 s CPU per 1.5M polls on the Arrow path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import bson
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import store_mongo  # noqa: E402

BATCH_BYTES = 16 * 1024 * 1024  # a getMore batch is at most 16 MB (48 MB with exhaust cursors)
_BATCHES: dict[str, list[bytes]] = {}  # each path's batches, inherited by the forked children


class _Packer:
    """Documents into raw batches of up to BATCH_BYTES, as a server fills its replies."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self._current: list[bytes] = []
        self._size = 0

    def add(self, document: dict) -> None:
        encoded = bson.encode(document)
        if self._size + len(encoded) > BATCH_BYTES:
            self.batches.append(b"".join(self._current))
            self._current, self._size = [], 0
        self._current.append(encoded)
        self._size += len(encoded)

    def finish(self) -> list[bytes]:
        if self._current:
            self.batches.append(b"".join(self._current))
            self._current, self._size = [], 0
        return self.batches


def build_batches(n: int, stores: int = 14_000, seed: int = 1) -> dict[str, list[bytes]]:
    """N polls as stored, as the server sends them for each path's projection, in raw batches of up to 16 MB."""
    rng = np.random.default_rng(seed)
    store_ids = np.array([str(10**18 + int(x)) for x in rng.integers(0, 10**18, stores)], dtype=object)
    owners = rng.integers(0, stores, n)
    stamps = 1_674_000_000_000_000 + rng.integers(0, 7 * 86_400 * 10**6, n)
    active = rng.random(n) < 0.8
    renamed = list(store_mongo.RAW_POLL_FIELDS.items())  # what the server makes of RAW_POLL_PROJECTION
    arrow, dicts = _Packer(), _Packer()
    for store, stamp, up in zip(store_ids[owners], stamps.tolist(), active.tolist()):
        poll = {"store_id": store, "timestamp_us": stamp, "status": "active" if up else "inactive"}
        dicts.add(poll)
        arrow.add({short: poll[name] for short, name in renamed})
    return {"arrow": arrow.finish(), "dicts": dicts.finish()}


def _decode(path: str) -> pd.DataFrame:
    if path == "arrow":
        return store_mongo.polls_from_raw_batches(_BATCHES["arrow"])
    documents = [doc for batch in _BATCHES["dicts"] for doc in bson.decode_all(batch)]
    return store_mongo.polls_from_documents(documents)


def _child(path: str, out) -> None:
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    frame = _decode(path)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    digest = (
        tuple(str(t) for t in frame.dtypes),
        len(frame),
        int(pd.util.hash_pandas_object(frame, index=False).sum()),
    )
    out.send(
        {
            "cpu": cpu,
            "wall": wall,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "digest": digest,
        }
    )
    out.close()


def run_path(path: str) -> dict:
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(path, send))
    child.start()
    result = receive.recv()
    child.join()
    return result


def main(argv: list[str] | None = None) -> int:
    global _BATCHES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", default="1500000", help="comma-separated sizes (default 1500000)")
    args = parser.parse_args(argv)
    sizes = [int(text) for text in args.polls.split(",")]
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    )
    last = None
    for n in sizes:
        started = time.perf_counter()
        _BATCHES = build_batches(n)
        sizes_mb = {path: sum(map(len, batches)) / 2**20 for path, batches in _BATCHES.items()}
        print(
            f"\n{n:,} polls in {len(_BATCHES['arrow'])} raw batches ({sizes_mb['arrow']:.0f} MB of BSON for "
            f"arrow, {sizes_mb['dicts']:.0f} MB for dicts; built in {time.perf_counter() - started:.0f} s, not timed)"
        )
        results = {path: run_path(path) for path in ("arrow", "dicts")}
        for path, result in results.items():
            print(
                f"  {path:5}  {n / result['wall']:>12,.0f} docs/s  CPU {result['cpu']:6.2f} s  "
                f"wall {result['wall']:6.2f} s  peak RSS {result['peak_mb']:7.0f} MB"
            )
        identical = results["arrow"]["digest"] == results["dicts"]["digest"]
        per_15m = results["arrow"]["cpu"] * 1_500_000 / n
        print(
            f"  arrow CPU per 1.5M polls: {per_15m:.2f} s (target <= 0.6 s); identical frames: "
            f"{'yes' if identical else 'no'}"
        )
        last = (results["arrow"]["cpu"], results["dicts"]["cpu"], identical)
        _BATCHES = {}
    arrow, dicts, identical = last
    print(
        f"read path: arrow {arrow:.2f} s, dicts {dicts:.2f} s, speed-up {dicts / arrow:.1f}, "
        f"identical {'yes' if identical else 'no'}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
