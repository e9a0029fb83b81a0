"""Benchmark of the SQLite store's history of report rows (issue 23): writing it, reading it, its size.

Under a temporary folder (removed at the end unless --keep) it measures, on `store_sqlite.SqliteStore`:

* complete_report of a 14,000-row and a 100,000-row report on a new file (the CSV parsed by
  `report_csv.history_rows`, the rows written in the transaction that marks the report Complete);
* a file of --reports Complete reports x --stores stores (default 500 x 14,000 = 7M history rows), built
  by direct inserts in SQL (not through complete_report --reports times): its size and the history
  table's, from dbstat;
* on that file: store_history of --samples stores picked at random (limit 100, and every point), on a
  fresh connection; complete_report of one more 14,000-row report (its rows land in every store's range
  of the table: the worst case of writing); delete_report of that report; `delete_finished_reports` of
  the 10 oldest;
* the migration 2 -> 3 of a file of --migrate-reports Complete reports of --stores stores (a copy of the
  schema-3 file made schema 2 again: the history backfilled from each stored CSV in one transaction);
* the size of the same --compare-reports x --stores rows kept as INTEGER cents (the store's way) and
  as REAL;
* with --grow-reports N: N reports completed one by one through complete_report (times, bytes a row).

    python benchmarks/bench_history.py
    python benchmarks/bench_history.py --reports 100 --stores 14000 --samples 50 --keep

Figures are wall-clock seconds on this machine (other work on it shows in them).  Target: store_history
well under a second on 500 x 14,000.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import database  # noqa: E402
import report_csv  # noqa: E402
import store_sqlite  # noqa: E402
import utils  # noqa: E402

HOUR_US = 3_600_000_000
START_US = 1_674_000_000_000_000


def store_ids(count: int) -> list[str]:
    return [f"{7_000_000_000_000_000_000 + i * 7919:019d}" for i in range(count)]


def report_frame(ids: list[str], seed: int) -> pd.DataFrame:
    """A report of these stores with figures as the engine gives them (whole cents, in their ranges)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    frame = {"store_id": ids}
    for column, top in zip(utils.REPORT_COLUMNS[1:], (60, 24, 168, 60, 24, 168)):
        frame[column] = np.round(rng.integers(0, top * 100 + 1, n) / 100, 2)
    return pd.DataFrame(frame, columns=utils.REPORT_COLUMNS)


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def table_bytes(path: Path, table: str) -> int:
    raw = sqlite3.connect(path)
    try:
        return raw.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?", (table,)).fetchone()[0] or 0
    finally:
        raw.close()


def complete_one(store, report_id: str, frame: pd.DataFrame) -> float:
    payload = report_csv.report_csv_bytes(frame)
    store.create_report(report_id, None)
    store.update_report(report_id, as_of_us=START_US + 10_000 * HOUR_US)
    seconds, completed = timed(store.complete_report, report_id, payload, len(frame))
    assert completed
    return seconds


def build_history_file(path: Path, reports: int, stores: int) -> None:
    """`reports` Complete reports with `stores` history rows each, by SQL inserts in key order."""
    store = database.connect(path=path)
    store.close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA cache_size = -262144")
    raw.execute("BEGIN IMMEDIATE")
    raw.executemany(
        "INSERT INTO reports (report_id, status, created_us, heartbeat_us, finished_us, as_of_us, row_count, "
        "csv_bytes, history_key) VALUES (?, 'Complete', ?, ?, ?, ?, ?, 0, ?)",
        [
            (
                f"{key:032x}",
                START_US + key * HOUR_US,
                START_US + key * HOUR_US,
                START_US + key * HOUR_US,
                START_US + key * HOUR_US,
                stores,
                key,
            )
            for key in range(1, reports + 1)
        ],
    )
    raw.execute("CREATE TEMP TABLE ids (store_id TEXT PRIMARY KEY)")
    raw.executemany("INSERT INTO temp.ids VALUES (?)", [(store_id,) for store_id in store_ids(stores)])
    raw.execute(
        "INSERT INTO reportRows SELECT i.store_id, r.history_key, "
        "abs(random()) % 6001, abs(random()) % 2401, abs(random()) % 16801, "
        "abs(random()) % 6001, abs(random()) % 2401, abs(random()) % 16801 "
        "FROM temp.ids AS i CROSS JOIN reports AS r ORDER BY i.store_id, r.history_key"
    )
    raw.execute("COMMIT")
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()


def bench_history_reads(path: Path, stores: int, samples: int) -> dict:
    store = database.connect(path=path)
    picked = random.Random(7).sample(store_ids(stores), samples)
    first, _ = timed(store.store_history, picked[0], None, None, 100)
    hundred = [timed(store.store_history, store_id, None, None, 100)[0] for store_id in picked]
    every = []
    for store_id in picked:
        seconds, points = timed(store.store_history, store_id, None, None, 100_000)
        every.append(seconds)
    window = [
        timed(store.store_history, store_id, START_US + 100 * HOUR_US, START_US + 200 * HOUR_US, 100)[0]
        for store_id in picked
    ]
    store.close()
    return {"first": first, "limit100": hundred, "all": every, "window": window, "points": len(points)}


def make_schema_2(path: Path) -> None:
    """Take a schema-3 file back to schema 2's shape (its reports and stored CSVs kept)."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("DROP INDEX IF EXISTS reports_history")
    raw.execute("DROP INDEX IF EXISTS alertDeliveries_created")
    for table in ("reportRows", "scheduleTicks", "alertState", "alertSeen", "alertDeliveries"):
        raw.execute(f"DROP TABLE {table}")
    raw.execute("ALTER TABLE reports DROP COLUMN trigger")
    raw.execute("ALTER TABLE reports DROP COLUMN history_key")
    raw.execute("PRAGMA user_version = 2")
    raw.execute("COMMIT")
    raw.execute("VACUUM")
    raw.close()


def bench_migration(folder: Path, reports: int, stores: int) -> tuple[float, int, int]:
    path = folder / "migrate.sqlite3"
    store = database.connect(path=path)
    ids = store_ids(stores)
    connection = store._connection()
    connection.execute("BEGIN IMMEDIATE")
    for number in range(reports):
        payload = report_csv.report_csv_bytes(report_frame(ids, number))
        report_id = f"{number:032x}"
        connection.execute(
            "INSERT INTO reports (report_id, status, created_us, heartbeat_us, finished_us, as_of_us, row_count, "
            "csv_bytes) VALUES (?, 'Complete', ?, ?, ?, ?, ?, ?)",
            (
                report_id,
                START_US + number,
                START_US + number,
                START_US + number,
                START_US + number,
                stores,
                len(payload),
            ),
        )
        connection.execute("INSERT INTO reportCsv (report_id, data) VALUES (?, ?)", (report_id, payload))
    connection.execute("COMMIT")
    store.close()
    make_schema_2(path)
    started = time.perf_counter()
    migrated = database.connect(path=path)
    seconds = time.perf_counter() - started
    assert migrated.schema_version == 3 and len(migrated.migrations_applied) == 1, migrated.migrations_applied
    rows = migrated._connection().execute("SELECT count(*) FROM reportRows").fetchone()[0]
    migrated.close()
    return seconds, rows, table_bytes(path, "reportRows")


def bench_growth(folder: Path, reports: int, stores: int) -> None:
    """`reports` reports completed one by one through complete_report: their times, and how full the pages stay
    (each report adds one row at the end of every store's range of the table)."""
    path = folder / "grow.sqlite3"
    store = database.connect(path=path)
    ids = store_ids(stores)
    times = [complete_one(store, f"{number:032x}", report_frame(ids, number)) for number in range(reports)]
    store.close()
    history, csv = table_bytes(path, "reportRows"), table_bytes(path, "reportCsv")
    print(
        f"{reports} reports of {stores:,} stores completed one by one: complete_report median "
        f"{statistics.median(times):.3f} s, last {times[-1]:.3f} s; history table {mb(history)} "
        f"({history / (reports * stores):.1f} bytes a row), stored CSVs {mb(csv)}"
    )


def bench_cents_against_real(folder: Path, reports: int, stores: int) -> tuple[float, float]:
    """Bytes per history row (dbstat) with the figures as INTEGER cents and as REAL."""
    sizes = []
    for as_real in (False, True):
        path = folder / f"compare-{'real' if as_real else 'cents'}.sqlite3"
        raw = sqlite3.connect(path, isolation_level=None)
        raw.execute(store_sqlite._statements(store_sqlite.SCHEMA_3_TABLES)[0])
        raw.execute("BEGIN")
        ids = store_ids(stores)
        rows = []
        for key in range(1, reports + 1):
            frame = report_frame(ids, key)
            figures = [frame[c].to_numpy() for c in store_sqlite.FIGURES]
            stored = [column.tolist() if as_real else store_sqlite._stored_figures(column) for column in figures]
            rows += zip(ids, [key] * stores, *stored)
        rows.sort(key=lambda row: (row[0], row[1]))
        raw.executemany(store_sqlite.INSERT_HISTORY, rows)
        raw.execute("COMMIT")
        sizes.append(table_bytes(path, "reportRows") / (reports * stores))
        raw.close()
    return sizes[0], sizes[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=500)
    parser.add_argument("--stores", type=int, default=14_000)
    parser.add_argument("--samples", type=int, default=50, help="stores whose history is read")
    parser.add_argument("--migrate-reports", type=int, default=100)
    parser.add_argument("--compare-reports", type=int, default=20)
    parser.add_argument("--grow-reports", type=int, default=0, help="also complete this many reports one by one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-history-"))
    try:
        print(f"folder: {folder}")
        fresh = database.connect(path=folder / "fresh.sqlite3")
        for rows in (14_000, 100_000):
            seconds = complete_one(fresh, f"{rows:032x}", report_frame(store_ids(rows), rows))
            print(f"complete_report, {rows:,} rows, new file: {seconds:.3f} s")
        fresh.close()

        path = folder / "history.sqlite3"
        seconds, _ = timed(build_history_file, path, args.reports, args.stores)
        history = table_bytes(path, "reportRows")
        total_rows = args.reports * args.stores
        print(
            f"built {args.reports} reports x {args.stores:,} stores = {total_rows:,} history rows in {seconds:.1f} s: "
            f"file {mb(file_size(path))}, history table {mb(history)} ({history / total_rows:.1f} bytes a row)"
        )
        reads = bench_history_reads(path, args.stores, args.samples)
        for name, label in (
            ("limit100", "limit 100"),
            ("all", f"every point ({reads['points']})"),
            ("window", "a 100-hour as_of window, limit 100"),
        ):
            values = reads[name]
            print(
                f"store_history, {label}: median {statistics.median(values) * 1000:.2f} ms, "
                f"max {max(values) * 1000:.2f} ms over {len(values)} stores"
            )
        print(f"store_history, first call on a new connection: {reads['first'] * 1000:.2f} ms")

        store = database.connect(path=path)
        report_id = "f" * 32
        seconds = complete_one(store, report_id, report_frame(store_ids(args.stores), 1))
        print(f"complete_report, {args.stores:,} rows, into the {args.reports}-report file: {seconds:.3f} s")
        seconds, deleted = timed(store.delete_report, report_id)
        assert deleted
        print(f"delete_report of it: {seconds:.3f} s")
        oldest = sorted(r["created_at"] for r in store.list_reports(0, args.reports))[9]
        seconds, ids = timed(store.delete_finished_reports, oldest + database.dt.timedelta(microseconds=1), 10**6)
        print(f"delete_finished_reports of the {len(ids)} oldest: {seconds:.3f} s")
        store.close()

        seconds, rows, size = bench_migration(folder, args.migrate_reports, args.stores)
        print(
            f"migration 2 -> 3 of {args.migrate_reports} reports x {args.stores:,} stores ({rows:,} history rows "
            f"backfilled): {seconds:.1f} s, history table {mb(size)} ({size / max(rows, 1):.1f} bytes a row)"
        )
        if args.grow_reports:
            bench_growth(folder, args.grow_reports, args.stores)
        cents, real = bench_cents_against_real(folder, args.compare_reports, args.stores)
        print(f"history bytes a row ({args.compare_reports} x {args.stores:,}): cents {cents:.1f}, REAL {real:.1f}")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
