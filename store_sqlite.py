"""SQLite behind the `database.Store` contract: the embedded default, one file shared by every process.

The file (default instance/store_monitoring.sqlite3, or EMBEDDED_DB) is in WAL
mode: readers never wait for the writer, and a report's reads see one
consistent state.  Every process and thread opens its own connection; writes
wait up to BUSY_TIMEOUT_MS for each other (so "database is locked" never
reaches a client) and run in `BEGIN IMMEDIATE` transactions.

Tables (the same names and keys as the MongoDB collections):

    storeStatus(store_id, timestamp_us, status)       primary key (store_id, timestamp_us); index on timestamp_us
    businessHours(store_id, day, start_time_local, end_time_local)      index on store_id
    timezones(store_id, timezone_str)                  primary key store_id
    reports(report_id, status, ...)  reportCsv(report_id, data)  leases(holder, mode, expires_us)

Instants are integer microseconds since the epoch (UTC).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

import database
import sources
import utils
from database import HOURS, REPORTS, STATUS, ZONES, Progress, _no_progress

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 60_000
WRITE_BATCH_ROWS = 50_000  # rows per transaction on ingest
BULK_CACHE_KIB = -262_144  # page cache of a connection while it loads polls: 256 MB (negative: in KiB)
DEFAULT_CACHE_KIB = -2_000  # SQLite's default page cache, 2 MB

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {STATUS} (
    store_id TEXT NOT NULL,
    timestamp_us INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    PRIMARY KEY (store_id, timestamp_us)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {HOURS} (
    store_id TEXT NOT NULL,
    day INTEGER NOT NULL CHECK (day BETWEEN 0 AND 6),
    start_time_local TEXT NOT NULL,
    end_time_local TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {ZONES} (
    store_id TEXT PRIMARY KEY,
    timezone_str TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {REPORTS} (
    report_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    heartbeat_us INTEGER NOT NULL,
    finished_us INTEGER,
    requested_as_of_us INTEGER,
    as_of_us INTEGER,
    progress_done INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER,
    progress_phase TEXT,
    row_count INTEGER,
    error TEXT,
    csv_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS reportCsv (
    report_id TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    holder TEXT PRIMARY KEY,
    mode TEXT NOT NULL CHECK (mode IN ('read', 'write', 'waiting')),
    expires_us INTEGER NOT NULL
);
"""

# name -> the statement that makes it: `migrate` creates what is missing and rebuilds what changed
TIME_INDEX = f"{STATUS}_time"
INDEXES = {
    TIME_INDEX: f"CREATE INDEX {STATUS}_time ON {STATUS} (timestamp_us)",
    f"{HOURS}_store": f"CREATE INDEX {HOURS}_store ON {HOURS} (store_id)",
    f"{REPORTS}_created": f"CREATE INDEX {REPORTS}_created ON {REPORTS} (created_us DESC, report_id DESC)",
    f"{REPORTS}_status_heartbeat": f"CREATE INDEX {REPORTS}_status_heartbeat ON {REPORTS} (status, heartbeat_us)",
}

REPORT_COLUMNS = ("report_id, status, created_us, heartbeat_us, finished_us, requested_as_of_us, as_of_us, "
                  "progress_done, progress_total, progress_phase, row_count, error, csv_bytes")


def _now_us() -> int:
    return time.time_ns() // 1000


def _datetime(value_us: int | None) -> dt.datetime | None:
    return None if value_us is None else utils.us_to_datetime(value_us)


class SqliteStore(database.Store):
    kind = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        connection = self._connection()
        connection.execute("PRAGMA journal_mode=WAL")
        with self._write() as write:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    write.execute(statement)
        self.migrate()

    # ----- connections

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                         check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe in WAL mode
            self._local.connection = connection
        return connection

    @contextmanager
    def _write(self):
        """A write transaction: taken at once (BEGIN IMMEDIATE), committed at the end, rolled back on error."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @contextmanager
    def _read(self):
        """A read transaction: every query in it sees one snapshot of the file."""
        connection = self._connection()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    # ----- lifecycle

    def spec(self) -> dict:
        return {"path": str(self.path)}

    def ping(self) -> bool:
        try:
            self._connection().execute("SELECT 1").fetchone()
        except sqlite3.Error as error:
            log.warning("database ping failed: %s", error)
            return False
        return True

    def migrate(self) -> list[str]:
        failed = []
        connection = self._connection()
        existing = dict(connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
        for name, statement in INDEXES.items():
            if existing.get(name) == statement:
                continue
            try:
                with self._write() as write:
                    if name in existing:
                        log.info("index %s changed: rebuilding it", name)
                        write.execute(f"DROP INDEX {name}")
                    write.execute(statement)
            except sqlite3.Error as error:
                failed.append(f"{name}: {error}")
                log.error("could not create index %s: %s", name, error)
        return failed

    def is_empty(self) -> bool:
        connection = self._connection()
        return all(connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
                   for table in (STATUS, HOURS, ZONES))

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # ----- ingest

    def load_polls(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        statement = (f"INSERT INTO {STATUS} (store_id, timestamp_us, status) VALUES (?, ?, ?) "
                     "ON CONFLICT (store_id, timestamp_us) DO UPDATE SET status = excluded.status")
        if frame.empty:
            return 0
        # rows go in in key order, so the table's B-tree fills page after page instead of touching a
        # random page for each row; of two rows with one key the later still goes in later, and wins
        codes, names = pd.factorize(frame["store_id"], sort=True)
        codes, stamps, active = utils._sorted_polls(codes, frame["timestamp_us"].to_numpy(dtype=np.int64),
                                                    frame["active"].to_numpy(dtype=bool))
        names = np.asarray(names, dtype=object)
        status = np.array(["inactive", "active"], dtype=object)
        connection = self._connection()
        # into an empty table the time index is built once at the end, which is several times faster
        # than keeping it up to date row by row (a crash in between leaves it to `migrate` at the next start)
        rebuild_index = connection.execute(f"SELECT 1 FROM {STATUS} LIMIT 1").fetchone() is None
        if rebuild_index:
            with self._write() as write:
                write.execute(f"DROP INDEX IF EXISTS {TIME_INDEX}")
        connection.execute(f"PRAGMA cache_size = {BULK_CACHE_KIB}")
        try:
            for start in range(0, len(frame), WRITE_BATCH_ROWS):
                end = start + WRITE_BATCH_ROWS
                # Python objects for one batch at a time (for every row at once: hundreds of MB at 15M polls)
                rows = zip(names[codes[start:end]].tolist(), stamps[start:end].tolist(),
                           status[active[start:end].astype(np.int8)].tolist())
                with self._write() as write:
                    write.executemany(statement, rows)
                on_rows(min(end, len(frame)) - start)
        finally:
            if rebuild_index:
                with self._write() as write:
                    write.execute(INDEXES[TIME_INDEX].replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
            connection.execute(f"PRAGMA cache_size = {DEFAULT_CACHE_KIB}")
        return len(frame)

    def _replace_by_store(self, table: str, columns: tuple[str, ...], rows: list[tuple], on_rows: Progress) -> None:
        stores = sorted({row[0] for row in rows})
        placeholders = ", ".join("?" * len(columns))
        with self._write() as write:
            write.execute(f"DELETE FROM {table} WHERE store_id IN (SELECT value FROM json_each(?))",
                          (json.dumps(stores),))
            write.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)
        on_rows(len(rows))

    def replace_hours(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        # each distinct time of day is formatted once (there are few: most hours are on the hour)
        times, index = np.unique(frame[["start_s", "end_s"]].to_numpy(dtype=np.int64), return_inverse=True)
        text = np.array([sources.hms(int(t)) for t in times], dtype=object)[index.reshape(-1, 2)]
        rows = list(zip(frame["store_id"].astype(object).tolist(), frame["day"].astype(int).tolist(),
                        text[:, 0].tolist(), text[:, 1].tolist()))
        if rows:
            self._replace_by_store(HOURS, ("store_id", "day", "start_time_local", "end_time_local"), rows, on_rows)
        return len(rows)

    def replace_zones(self, frame: pd.DataFrame, on_rows: Progress = _no_progress) -> int:
        rows = list(zip(frame["store_id"], frame["timezone_str"]))
        if rows:
            self._replace_by_store(ZONES, ("store_id", "timezone_str"), rows, on_rows)
        return len(rows)

    # ----- reading for the report

    def latest_poll_us(self) -> int | None:
        return self._connection().execute(f"SELECT max(timestamp_us) FROM {STATUS}").fetchone()[0]

    def report_store_ids(self, now_us: int) -> list[str]:
        # a loose index scan: one seek per store on the primary key, not a pass over every poll
        query = f"""
            WITH RECURSIVE ids(store_id) AS (
                SELECT min(store_id) FROM {STATUS}
                UNION ALL
                SELECT (SELECT min(store_id) FROM {STATUS} WHERE store_id > ids.store_id) FROM ids
                WHERE ids.store_id IS NOT NULL
            )
            SELECT store_id FROM ids
            WHERE store_id IS NOT NULL
              AND (SELECT min(timestamp_us) FROM {STATUS} s WHERE s.store_id = ids.store_id) <= ?
        """
        return [row[0] for row in self._connection().execute(query, (int(now_us),))]

    # The queries of one chunk; tests check their plans with EXPLAIN QUERY PLAN.  The polls come back
    # as comma-separated numbers in one row, not as a row a poll: numpy reads the text far faster than
    # Python builds a million row tuples.  Each poll is `position * 2 + active`, where position is
    # the store's place in the chunk's list (json_each's key), and its timestamp; the two aggregates
    # of one query see the rows in the same order, and count(*) checks the texts are read whole.
    CHUNK_POLLS = f"""
        SELECT count(*), group_concat(j.key * 2 + (s.status = 'active')), group_concat(s.timestamp_us)
        FROM json_each(:ids) AS j CROSS JOIN {STATUS} AS s
        WHERE s.store_id = j.value AND s.timestamp_us >= :since AND s.timestamp_us <= :now
    """
    CHUNK_EARLIER_POLLS = f"""
        SELECT count(*), group_concat(j.key * 2 + (s.status = 'active')), group_concat(s.timestamp_us)
        FROM json_each(:ids) AS j CROSS JOIN {STATUS} AS s
        WHERE s.store_id = j.value AND s.timestamp_us = (
            SELECT t.timestamp_us FROM {STATUS} AS t
            WHERE t.store_id = j.value AND t.timestamp_us < :since ORDER BY t.timestamp_us DESC LIMIT 1)
    """
    CHUNK_HOURS = f"""
        SELECT j.key, h.day, h.start_time_local, h.end_time_local
        FROM json_each(:ids) AS j CROSS JOIN {HOURS} AS h WHERE h.store_id = j.value
    """
    CHUNK_ZONES = f"""
        SELECT j.key, z.timezone_str
        FROM json_each(:ids) AS j CROSS JOIN {ZONES} AS z WHERE z.store_id = j.value
    """

    @staticmethod
    def _numbers(text: str | None, count: int) -> np.ndarray:
        """The int64 values of a comma-separated text of `count` integers (None when there are none)."""
        if not count:
            return np.empty(0, dtype=np.int64)
        values = np.fromstring(text, dtype=np.int64, sep=",")
        if len(values) != count:
            raise ValueError(f"expected {count} numbers from the database, read {len(values)}")
        return values

    def read_chunk(self, store_ids: list[str], since_us: int, now_us: int):
        ids = list(store_ids)
        window = {"ids": json.dumps(ids), "since": int(since_us), "now": int(now_us)}
        with self._read() as read:
            texts = [read.execute(query, window).fetchone()
                     for query in (self.CHUNK_POLLS, self.CHUNK_EARLIER_POLLS)]
            hour_rows = read.execute(self.CHUNK_HOURS, window).fetchall()
            zone_rows = read.execute(self.CHUNK_ZONES, window).fetchall()
        coded = np.concatenate([self._numbers(keys, count) for count, keys, _ in texts])
        stamps = np.concatenate([self._numbers(stamps, count) for count, _, stamps in texts])
        # store ids as a categorical over the chunk's sorted, distinct ids, as sources.read_store_status gives them
        id_array = np.array(ids, dtype=object)
        names, category = np.unique(id_array, return_inverse=True)
        polls = pd.DataFrame({
            "store_id": pd.Categorical.from_codes(category[coded >> 1], categories=pd.Index(names, dtype=object)),
            "timestamp_us": stamps,
            "active": (coded & 1).astype(bool),
        })
        position, day, start, end = zip(*hour_rows) if hour_rows else ((), (), (), ())
        hours = pd.DataFrame({
            "store_id": id_array[np.asarray(position, dtype=np.int64)],
            "day": np.asarray(day, dtype=np.int64),
            "start_s": sources.parse_time_of_day(start).astype(np.int64),
            "end_s": sources.parse_time_of_day(end).astype(np.int64),
        })
        zones = pd.DataFrame({
            "store_id": id_array[np.array([p for p, _ in zone_rows], dtype=np.int64)],
            "timezone_str": np.array([zone for _, zone in zone_rows], dtype=object),
        })
        return polls, hours, zones

    # ----- reports

    def create_report(self, report_id: str, as_of_us: int | None) -> None:
        now = _now_us()
        with self._write() as write:
            write.execute(
                f"INSERT INTO {REPORTS} (report_id, status, created_us, heartbeat_us, requested_as_of_us, "
                "progress_done, progress_total) VALUES (?, 'Running', ?, ?, ?, 0, NULL)",
                (report_id, now, now, as_of_us),
            )

    def update_report(self, report_id: str, *, as_of_us: int | None = None, progress: dict | None = None) -> None:
        sets, values = ["heartbeat_us = ?"], [_now_us()]
        if as_of_us is not None:
            sets.append("as_of_us = ?")
            values.append(int(as_of_us))
        if progress is not None:
            sets += ["progress_done = ?", "progress_total = ?", "progress_phase = ?"]
            values += [int(progress["done"]), progress.get("total"), progress.get("phase")]
        self._connection().execute(
            f"UPDATE {REPORTS} SET {', '.join(sets)} WHERE report_id = ? AND status = 'Running'",
            (*values, report_id),
        )

    def complete_report(self, report_id: str, csv_bytes: bytes, row_count: int) -> None:
        with self._write() as write:
            write.execute("INSERT OR REPLACE INTO reportCsv (report_id, data) VALUES (?, ?)",
                          (report_id, sqlite3.Binary(csv_bytes)))
            write.execute(
                f"UPDATE {REPORTS} SET status = 'Complete', finished_us = ?, row_count = ?, csv_bytes = ? "
                "WHERE report_id = ? AND status = 'Running'",
                (_now_us(), row_count, len(csv_bytes), report_id),
            )

    def fail_report(self, report_id: str, error: str) -> None:
        self._connection().execute(
            f"UPDATE {REPORTS} SET status = 'Failed', finished_us = ?, error = ? "
            "WHERE report_id = ? AND status = 'Running'",
            (_now_us(), error, report_id),
        )

    def beat(self, report_ids: list[str]) -> None:
        if report_ids:
            self._connection().execute(
                f"UPDATE {REPORTS} SET heartbeat_us = ? "
                "WHERE status = 'Running' AND report_id IN (SELECT value FROM json_each(?))",
                (_now_us(), json.dumps(list(report_ids))),
            )

    def fail_stale_reports(self, older_than: dt.timedelta) -> int:
        now = _now_us()
        cutoff = now - older_than // dt.timedelta(microseconds=1)
        cursor = self._connection().execute(
            f"UPDATE {REPORTS} SET status = 'Failed', finished_us = ?, "
            "error = 'the worker running this report stopped (no heartbeat); trigger it again' "
            "WHERE status = 'Running' AND heartbeat_us < ?",
            (now, cutoff),
        )
        return cursor.rowcount

    @staticmethod
    def _record(row) -> dict | None:
        if row is None:
            return None
        (report_id, status, created, heartbeat, finished, requested, as_of, done, total, phase, row_count, error,
         csv_bytes) = row
        progress = {"done": done, "total": total}
        if phase is not None:
            progress["phase"] = phase
        return {
            "report_id": report_id, "status": status, "created_at": _datetime(created),
            "heartbeat_at": _datetime(heartbeat), "finished_at": _datetime(finished),
            "requested_as_of_us": requested, "as_of_us": as_of, "progress": progress,
            "row_count": row_count, "error": error, "csv_bytes": csv_bytes,
        }

    def find_report(self, report_id: str) -> dict | None:
        row = self._connection().execute(f"SELECT {REPORT_COLUMNS} FROM {REPORTS} WHERE report_id = ?",
                                         (report_id,)).fetchone()
        return self._record(row)

    def count_reports(self) -> int:
        return self._connection().execute(f"SELECT count(*) FROM {REPORTS}").fetchone()[0]

    def list_reports(self, skip: int = 0, limit: int = 20) -> list[dict]:
        rows = self._connection().execute(
            f"SELECT {REPORT_COLUMNS} FROM {REPORTS} ORDER BY created_us DESC, report_id DESC LIMIT ? OFFSET ?",
            (limit, skip),
        ).fetchall()
        return [self._record(row) for row in rows]

    def delete_finished_reports(self, finished_before: dt.datetime, keep_newest: int) -> list[str]:
        cutoff = utils.datetime_to_us(finished_before)
        with self._write() as write:
            ids = sorted({report_id for (report_id,) in write.execute(
                f"SELECT report_id FROM {REPORTS} WHERE status IN ('Complete', 'Failed') AND finished_us < ? "
                f"UNION SELECT report_id FROM (SELECT report_id FROM {REPORTS} WHERE status IN ('Complete', 'Failed') "
                "ORDER BY created_us DESC, report_id DESC LIMIT -1 OFFSET ?)",
                (cutoff, max(keep_newest, 0)))})
            chosen = json.dumps(ids)
            write.execute(f"DELETE FROM {REPORTS} WHERE report_id IN (SELECT value FROM json_each(?))", (chosen,))
            write.execute("DELETE FROM reportCsv WHERE report_id IN (SELECT value FROM json_each(?))", (chosen,))
        return ids

    def read_report_csv(self, report: dict) -> bytes:
        row = self._connection().execute("SELECT data FROM reportCsv WHERE report_id = ?",
                                         (report["report_id"],)).fetchone()
        payload = b"" if row is None else bytes(row[0])
        if report.get("csv_bytes") is not None and len(payload) != report["csv_bytes"]:
            raise ValueError(f"report {report['report_id']}: stored CSV is incomplete")
        return payload

    # ----- the data lease: rows of `leases`, checked and taken in one write transaction

    def _try_lease(self, mode: str, holder: str) -> bool:
        now = _now_us()
        expires = now + database.LEASE_SECONDS * 1_000_000
        with self._write() as write:
            write.execute("DELETE FROM leases WHERE expires_us < ?", (now,))
            modes = {m for (m,) in write.execute("SELECT mode FROM leases WHERE holder != ?", (holder,))}
            if mode == "read":
                if modes & {"write", "waiting"}:
                    return False
                write.execute("INSERT INTO leases (holder, mode, expires_us) VALUES (?, 'read', ?)", (holder, expires))
                return True
            if not modes:
                write.execute("INSERT OR REPLACE INTO leases (holder, mode, expires_us) VALUES (?, 'write', ?)",
                              (holder, expires))
                return True
            if "waiting" not in modes:  # first writer in line: new readers now wait behind it
                write.execute("INSERT OR REPLACE INTO leases (holder, mode, expires_us) VALUES (?, 'waiting', ?)",
                              (holder, expires))
            return False

    def _renew_lease(self, mode: str, holder: str) -> bool:
        expires = _now_us() + database.LEASE_SECONDS * 1_000_000
        cursor = self._connection().execute("UPDATE leases SET expires_us = ? WHERE holder = ? AND mode = ?",
                                            (expires, holder, mode))
        return cursor.rowcount == 1

    def _release_lease(self, mode: str, holder: str) -> None:
        self._connection().execute("DELETE FROM leases WHERE holder = ?", (holder,))
