"""SQLite behind the `database.Store` contract: the embedded default, one file shared by every process.

The file (default instance/store_monitoring.sqlite3, or EMBEDDED_DB) is in WAL
mode: readers never wait for the writer, and a report's reads see one
consistent state.  Every process and thread opens its own connection; writes
wait up to BUSY_TIMEOUT_MS for each other (so "database is locked" never
reaches a client) and run in `BEGIN IMMEDIATE` transactions.

Tables (the same names and keys as the MongoDB collections):

    pollBlocks(store_id, block, polls, first_us, last_us, timestamps, statuses)   unique (store_id, block): the
        polls of one store in one week from the epoch (block = timestamp_us // BLOCK_US), as two arrays: the
        instants (little-endian int64, ascending, one per instant) and the statuses (one byte each, 1 active);
        indexes on (store_id, first_us) and (last_us, first_us, polls).  (MongoDB keeps one document a poll.)
    businessHours(store_id, day, start_time_local, end_time_local)      index on store_id
    timezones(store_id, timezone_str)                  primary key store_id
    reports(report_id, status, ..., as_of_after_newest_poll, trigger, history_key)  reportCsv(report_id, data)
    leases(holder, mode, expires_us)   uploads(upload_id, file, kind, digest, ..., status, dismissed)
    healthProbe(id = 1, written_us)    the one row /health writes to prove the file can be written
    reportHistory(store_id, report_key, <the six figures>)  primary key (store_id, report_key), WITHOUT ROWID: the
        rows of every Complete report for `store_history` (report_key is reports.history_key), written in
        the transaction that marks the report Complete and deleted with the report
    scheduleTicks(tick_us, outcome, report_id, claimed_us)   primary key tick_us: the newest 1,000 ticks
    alertState(store_id, as_of_us, report_id)   one row per store that is down: the report that found it down,
        and the as_of of the newest report that saw it down; alertSeen(id = 1, as_of_us): the newest recorded
    alertDeliveries(delivery_id, report_id unique, as_of_us, created_us, status, attempts, ..., body)

Instants are integer microseconds since the epoch (UTC).

The file is the service's own: `PRAGMA application_id` is database.APPLICATION_ID and
`PRAGMA user_version` the schema (database.SCHEMA_VERSION).  Opening reads both, and the
tables, before writing anything: an empty file gets the schema; a file of schema 1 (the
first releases wrote no marks, so it is known by its tables and columns) or any older
version is migrated forward by the numbered steps of MIGRATIONS, each one transaction
with its version mark; anything else (another program's file, a newer schema, not SQLite
at all) raises database.DatabaseRefused and is left byte for byte as it was.

One upload (one call of `load_polls`, `replace_hours` or `replace_zones`) is all or
nothing.  Polls are merged into the blocks they fall in (a poll at an instant the store
already has replaces it) and written in one write transaction that also marks the upload
Complete.  Hours and zones are staged in TEMP tables of the writer's connection (invisible
to everyone else), then published into the real table in one such transaction.  If the
writer stops before that transaction commits (an error, a lost lease, a full disk,
`kill -9`), no row of the upload is visible and the indexes are as they were.

Durability: every committed transaction survives a crash of the process (even `kill -9`):
the WAL holds it and the next connection recovers it; an uncommitted one leaves nothing
and never half of anything.  The transactions that publish an upload and complete a
report run with `synchronous=FULL` (the WAL is fsynced before they return), so an upload
answered 200 and a report shown Complete also survive a power loss or an OS crash; every
other write (heartbeats, progress, leases, the upload journal's Running and Failed marks)
runs with `synchronous=NORMAL`, so a power loss may forget the last of those (each one
whole or not at all), never corrupting the file.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

import database
import report_csv
import sources
import utils
from database import HOURS, REPORTS, STATUS, UPLOADS, ZONES, Progress, no_progress

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 60_000
HEALTH_BUSY_TIMEOUT_MS = 300  # /health's write probe waits no longer for a writer: it must answer within a second
WRITE_BATCH_ROWS = 50_000  # rows (polls: of the blocks) written or staged per batch on ingest (`on_rows` after each)
BULK_CACHE_KIB = -262_144  # page cache of a connection while it loads: 256 MB (negative: in KiB)
DEFAULT_CACHE_KIB = -2_000  # SQLite's default page cache, 2 MB
# The WAL file is cut back to this size when it next starts over after a checkpoint: an upload's transaction grows
# it to about the size of what it wrote (300 MB seeding 10x the sample; all of a failed upload on a full disk),
# which SQLite otherwise keeps on disk for reuse while any connection is open
WAL_KEEP_BYTES = 64 * 1_048_576
PROBE = "healthProbe"
FIRST_MARKED_SCHEMA = 2  # schema 1 files carry no version marks

# What schema 2 added to schema 1's tables (besides reports.as_of_after_newest_poll)
SCHEMA_2_TABLES = f"""
CREATE TABLE {UPLOADS} (
    upload_id TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    finished_us INTEGER,
    loaded INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    written INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('Running', 'Complete', 'Failed')),
    error TEXT,
    dismissed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE {PROBE} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    written_us INTEGER NOT NULL
);
INSERT INTO {PROBE} (id, written_us) VALUES (1, 0);
"""

# What schema 3 added: reports' trigger and history key, the history of report rows, the schedule's ticks, the
# alert state and the alert deliveries.  The six figures of a history row are kept in columns without a type
# (no affinity, so SQLite keeps each value as given): whole cents as an INTEGER count of cents (a report's
# figures are rounded to cents: 2 bytes for most, where a REAL takes 8), any other value as the REAL itself.
HISTORY, TICKS, ALERT_STATE, ALERT_SEEN, DELIVERIES = (
    "reportHistory",
    "scheduleTicks",
    "alertState",
    "alertSeen",
    "alertDeliveries",
)
FIGURES = tuple(utils.REPORT_COLUMNS[1:])
SCHEMA_3_REPORT_COLUMNS = ("trigger TEXT NOT NULL DEFAULT 'api'", "history_key INTEGER")
SCHEMA_3_TABLES = f"""
CREATE TABLE {HISTORY} (
    store_id TEXT NOT NULL,
    report_key INTEGER NOT NULL,
    {", ".join(FIGURES)},
    PRIMARY KEY (store_id, report_key)
) WITHOUT ROWID;
CREATE TABLE {TICKS} (
    tick_us INTEGER PRIMARY KEY,
    outcome TEXT NOT NULL CHECK (outcome IN ('started', 'skipped')),
    report_id TEXT,
    claimed_us INTEGER NOT NULL
);
CREATE TABLE {ALERT_STATE} (
    store_id TEXT PRIMARY KEY,
    as_of_us INTEGER NOT NULL,
    report_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE {ALERT_SEEN} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    as_of_us INTEGER NOT NULL
);
CREATE TABLE {DELIVERIES} (
    delivery_id TEXT PRIMARY KEY,
    report_id TEXT NOT NULL UNIQUE,
    as_of_us INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('Pending', 'Delivered', 'Failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_us INTEGER,
    http_status INTEGER,
    error TEXT,
    events INTEGER NOT NULL,
    body BLOB NOT NULL
)
"""
# Schema 4 keeps the polls in blocks: one row a store and week (BLOCK_US from the epoch), its polls as two arrays.
# A report reads a store's week as two or three rows, and an upload writes a row per block, not a row per poll.
POLLS = "pollBlocks"
BLOCK_US = 7 * 86_400 * 1_000_000
POLL_BLOCKS = f"""CREATE TABLE {POLLS} (
    store_id TEXT NOT NULL,
    block INTEGER NOT NULL,
    polls INTEGER NOT NULL CHECK (polls > 0),
    first_us INTEGER NOT NULL,
    last_us INTEGER NOT NULL CHECK (last_us >= first_us),
    timestamps BLOB NOT NULL CHECK (length(timestamps) = 8 * polls),
    statuses BLOB NOT NULL CHECK (length(statuses) = polls),
    UNIQUE (store_id, block)
)"""
TICKS_KEPT = 1_000  # the newest ticks kept: an older tick counts as taken
DELIVERIES_KEPT = 1_000  # the newest finished deliveries kept (a Pending one is kept until it finishes)

SCHEMA = (
    f"""
{POLL_BLOCKS};
CREATE TABLE {HOURS} (
    store_id TEXT NOT NULL,
    day INTEGER NOT NULL CHECK (day BETWEEN 0 AND 6),
    start_time_local TEXT NOT NULL,
    end_time_local TEXT NOT NULL
);
CREATE TABLE {ZONES} (
    store_id TEXT PRIMARY KEY,
    timezone_str TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE {REPORTS} (
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
    csv_bytes INTEGER,
    as_of_after_newest_poll INTEGER NOT NULL DEFAULT 0,
    {SCHEMA_3_REPORT_COLUMNS[0]},
    {SCHEMA_3_REPORT_COLUMNS[1]}
);
CREATE TABLE reportCsv (
    report_id TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE leases (
    holder TEXT PRIMARY KEY,
    mode TEXT NOT NULL CHECK (mode IN ('read', 'write', 'waiting')),
    expires_us INTEGER NOT NULL
);
"""
    + SCHEMA_2_TABLES
    + ";"
    + SCHEMA_3_TABLES
)

# Schema 1, the first releases' files: no version marks, so known by exactly these tables and columns.
# The very first release's reports had no progress_phase; step 2 adds it to such a file.
SCHEMA_1_COLUMNS = {
    STATUS: {"store_id", "timestamp_us", "status"},
    HOURS: {"store_id", "day", "start_time_local", "end_time_local"},
    ZONES: {"store_id", "timezone_str"},
    REPORTS: {
        "report_id",
        "status",
        "created_us",
        "heartbeat_us",
        "finished_us",
        "requested_as_of_us",
        "as_of_us",
        "progress_done",
        "progress_total",
        "progress_phase",
        "row_count",
        "error",
        "csv_bytes",
    },
    "reportCsv": {"report_id", "data"},
    "leases": {"holder", "mode", "expires_us"},
}
SCHEMA_1_OPTIONAL = {REPORTS: {"progress_phase"}}


def _statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _schema_2(connection: sqlite3.Connection) -> None:
    if "progress_phase" not in _columns(connection, REPORTS):
        connection.execute(f"ALTER TABLE {REPORTS} ADD COLUMN progress_phase TEXT")
    connection.execute(f"ALTER TABLE {REPORTS} ADD COLUMN as_of_after_newest_poll INTEGER NOT NULL DEFAULT 0")
    for statement in _statements(SCHEMA_2_TABLES):
        connection.execute(statement)


# ----- the history of report rows (schema 3)

INSERT_HISTORY = (
    f"INSERT INTO {HISTORY} (store_id, report_key, {', '.join(FIGURES)}) VALUES ({', '.join('?' * (2 + len(FIGURES)))})"
)


def _stored_figures(values: np.ndarray) -> list:
    """One figure column as the history table keeps it: an int count of cents for each value that is a whole
    number of cents (`cents / 100` is then exactly the float again), the float itself for any other."""
    cents = np.rint(values * 100)
    whole = (np.abs(cents) < 2**53) & (cents / 100 == values)  # (NaN fails it)
    if whole.all():
        return cents.astype(np.int64).tolist()
    stored = values.tolist()
    for position in np.flatnonzero(whole).tolist():
        stored[position] = int(cents[position])
    return stored


def _figure(value) -> float:
    """A stored figure as the float of the report CSV: cents (int) / 100, a REAL as it is (SQLite keeps NaN as NULL)."""
    if type(value) is int:
        return value / 100
    return math.nan if value is None else value


def _history_of(payload: bytes, report_id: str) -> tuple[list[str], list[list]] | None:
    """The rows a report CSV keeps for `store_history`: (store ids, the six figure columns as stored), parsed by
    `report_csv.history_rows` (None for bytes that are not a report CSV, ValueError for unreadable rows)."""
    columns = report_csv.history_rows(payload, report_id)
    if columns is None:
        return None
    return columns["store_id"], [_stored_figures(np.asarray(columns[name], dtype=np.float64)) for name in FIGURES]


def _insert_history(write: sqlite3.Connection, report_key: int, history: tuple[list[str], list[list]] | None) -> None:
    if history is not None:
        store_ids, figures = history
        write.executemany(INSERT_HISTORY, zip(store_ids, [report_key] * len(store_ids), *figures))


def _backfill_history(connection: sqlite3.Connection, report_key: int, report_id: str, csv_bytes: int | None) -> None:
    """The history rows of one Complete report of an older file, from its stored CSV.  A CSV that is stored in
    part or is not a report CSV gives none (logged): the migration never fails on one report's bytes."""
    row = connection.execute("SELECT data FROM reportCsv WHERE report_id = ?", (report_id,)).fetchone()
    payload = b"" if row is None else bytes(row[0])
    try:
        history = _history_of(
            database.checked_report_csv({"report_id": report_id, "csv_bytes": csv_bytes}, payload), report_id
        )
    except Exception as error:  # noqa: BLE001 - said and skipped: the other reports' history still migrates
        log.warning("report %s: no history kept of its stored CSV (%s)", report_id, error)
        return
    if history is None:
        log.warning("report %s: no history kept: its stored CSV is not a report CSV", report_id)
        return
    _insert_history(connection, report_key, history)


def _schema_3(connection: sqlite3.Connection) -> None:
    for column in SCHEMA_3_REPORT_COLUMNS:
        connection.execute(f"ALTER TABLE {REPORTS} ADD COLUMN {column}")
    for statement in _statements(SCHEMA_3_TABLES):
        connection.execute(statement)
    complete = connection.execute(
        f"SELECT report_id, csv_bytes FROM {REPORTS} WHERE status = 'Complete' ORDER BY created_us, report_id"
    ).fetchall()
    connection.execute(f"PRAGMA cache_size = {BULK_CACHE_KIB}")
    try:
        for report_key, (report_id, csv_bytes) in enumerate(complete, 1):
            connection.execute(f"UPDATE {REPORTS} SET history_key = ? WHERE report_id = ?", (report_key, report_id))
            _backfill_history(connection, report_key, report_id, csv_bytes)
    finally:
        connection.execute(f"PRAGMA cache_size = {DEFAULT_CACHE_KIB}")


# ----- the polls in blocks (schema 4)

WRITE_POLL_BLOCK = (
    f"INSERT INTO {POLLS} (store_id, block, polls, first_us, last_us, timestamps, statuses) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (store_id, block) DO UPDATE SET polls = excluded.polls, "
    "first_us = excluded.first_us, last_us = excluded.last_us, timestamps = excluded.timestamps, "
    "statuses = excluded.statuses"
)
MIGRATE_BATCH_ROWS = 500_000  # rows of the old storeStatus table read at a time by the step to schema 4


def _one_per_instant(codes: np.ndarray, stamps: np.ndarray, active: np.ndarray):
    """Polls sorted by (store, time) with the later of two rows at one instant last: that later one alone."""
    last = utils.last_of_each_instant(codes, stamps)
    if last.all():
        return codes, stamps, active
    return codes[last], stamps[last], active[last]


def _block_starts(codes: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Where each block (one store, one BLOCK_US of time) begins, in polls sorted by (store, time); the end last."""
    blocks = stamps // BLOCK_US
    change = (codes[1:] != codes[:-1]) | (blocks[1:] != blocks[:-1])
    return np.concatenate(([0], np.flatnonzero(change) + 1, [codes.size]))


def _write_blocks(
    write: sqlite3.Connection,
    names: np.ndarray,
    codes: np.ndarray,
    stamps: np.ndarray,
    active: np.ndarray,
    on_polls=None,
) -> None:
    """Write the blocks of polls sorted by (store, time), one per instant (`names[code]` is a poll's store), each
    block replacing the stored one; about WRITE_BATCH_ROWS polls at a time, `on_polls(polls)` after each batch."""
    starts = _block_starts(codes, stamps)
    begins, ends = starts[:-1], starts[1:]
    store_ids = names[codes[begins]].tolist()
    firsts, lasts = stamps[begins].tolist(), stamps[ends - 1].tolist()
    begins, ends = begins.tolist(), ends.tolist()
    stamp_bytes = stamps.astype("<i8", copy=False).tobytes()
    status_bytes = active.astype(np.uint8).tobytes()
    cuts = np.searchsorted(starts, np.arange(0, codes.size, max(1, WRITE_BATCH_ROWS)), side="left")
    cuts = np.append(np.unique(cuts[cuts < len(begins)]), len(begins)).tolist()
    for low, high in zip(cuts[:-1], cuts[1:]):
        write.executemany(
            WRITE_POLL_BLOCK,
            [
                (
                    store_ids[i],
                    firsts[i] // BLOCK_US,
                    ends[i] - begins[i],
                    firsts[i],
                    lasts[i],
                    stamp_bytes[begins[i] * 8 : ends[i] * 8],
                    status_bytes[begins[i] : ends[i]],
                )
                for i in range(low, high)
            ],
        )
        if on_polls is not None:
            on_polls(ends[high - 1] - begins[low])


def _polls_of_blocks(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, timestamps, statuses) rows of blocks as three arrays a poll: the row's key, the instant, active."""
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=bool)
    keys, stamp_blobs, status_blobs = zip(*rows)
    counts = np.fromiter(map(len, status_blobs), dtype=np.int64, count=len(rows))
    stamps = np.frombuffer(b"".join(stamp_blobs), dtype="<i8").astype(np.int64)
    active = np.frombuffer(b"".join(status_blobs), dtype=np.uint8).astype(bool)
    if stamps.size != active.size:
        raise ValueError(f"the database's poll blocks are damaged: {stamps.size} instants for {active.size} statuses")
    return np.repeat(np.asarray(keys, dtype=np.int64), counts), stamps, active


def _schema_4(connection: sqlite3.Connection) -> None:
    """storeStatus's rows (in primary key order: by store, then time) into blocks, a batch of whole stores at a
    time; then storeStatus and its index go."""
    connection.execute(POLL_BLOCKS)
    connection.execute(f"PRAGMA cache_size = {BULK_CACHE_KIB}")
    try:
        cursor = connection.execute(
            f"SELECT store_id, timestamp_us, status = 'active' FROM {STATUS} ORDER BY store_id, timestamp_us"
        )
        held: list[tuple] = []
        while True:
            batch = cursor.fetchmany(MIGRATE_BATCH_ROWS)
            rows = held + batch
            if batch and rows:  # the last store of the batch may go on in the next one: held back
                last_store = rows[-1][0]
                cut = len(rows)
                while cut and rows[cut - 1][0] == last_store:
                    cut -= 1
                rows, held = rows[:cut], rows[cut:]
            if rows:
                ids, stamps, active = zip(*rows)
                codes, names = pd.factorize(np.asarray(ids, dtype=object))
                _write_blocks(
                    connection,
                    np.asarray(names, dtype=object),
                    codes.astype(np.int64),
                    np.asarray(stamps, dtype=np.int64),
                    np.asarray(active, dtype=bool),
                )
            if not batch:
                break
        connection.execute(f"DROP TABLE {STATUS}")
    finally:
        connection.execute(f"PRAGMA cache_size = {DEFAULT_CACHE_KIB}")


# The numbered steps from one schema to the next: (the version it makes, what it does, the step).
MIGRATIONS = [
    (2, "add the uploads journal, reports.as_of_after_newest_poll, the health probe row and version marks", _schema_2),
    (
        3,
        "add reports.trigger, the history of report rows (from every Complete report's stored CSV), the schedule's "
        "ticks and the alert state and deliveries",
        _schema_3,
    ),
    (4, "keep the polls in blocks of one store and week (pollBlocks, from storeStatus's rows)", _schema_4),
]

# The steps after which the file is vacuumed: step 4 frees every page of the old storeStatus table and its index
# (10x the sample: a 1.45 GB file of which 290 MB in use; VACUUM took 2.8 s)
VACUUM_AFTER = {4}

# name -> the statement that makes it: `migrate` creates what is missing and rebuilds what changed
INDEXES = {
    f"{POLLS}_stores": f"CREATE INDEX {POLLS}_stores ON {POLLS} (store_id, first_us)",
    f"{POLLS}_span": f"CREATE INDEX {POLLS}_span ON {POLLS} (last_us, first_us, polls)",
    f"{HOURS}_store": f"CREATE INDEX {HOURS}_store ON {HOURS} (store_id)",
    f"{REPORTS}_created": f"CREATE INDEX {REPORTS}_created ON {REPORTS} (created_us DESC, report_id DESC)",
    f"{REPORTS}_status_heartbeat": f"CREATE INDEX {REPORTS}_status_heartbeat ON {REPORTS} (status, heartbeat_us)",
    f"{UPLOADS}_at": f"CREATE INDEX {UPLOADS}_at ON {UPLOADS} (at_us DESC, upload_id DESC)",
    f"{REPORTS}_history": (
        f"CREATE UNIQUE INDEX {REPORTS}_history ON {REPORTS} (history_key) WHERE history_key IS NOT NULL"
    ),
    f"{DELIVERIES}_created": f"CREATE INDEX {DELIVERIES}_created ON {DELIVERIES} (created_us DESC, delivery_id DESC)",
}

REPORT_COLUMNS = (
    "report_id, status, created_us, heartbeat_us, finished_us, requested_as_of_us, as_of_us, "
    "progress_done, progress_total, progress_phase, row_count, error, csv_bytes, as_of_after_newest_poll, trigger"
)
DELIVERY_COLUMNS = (
    "delivery_id, report_id, as_of_us, created_us, status, attempts, last_attempt_us, http_status, error, events, body"
)
LISTED_DELIVERY_COLUMNS = DELIVERY_COLUMNS.replace(", body", ", NULL")  # a listing never reads the bodies
REPORT_TRIGGERS = ("api", "schedule")
DELIVERY_STATUSES = ("Pending", "Delivered", "Failed")
UPLOAD_COLUMNS = (
    "upload_id, file, kind, digest, at_us, finished_us, loaded, rejected, written, status, error, dismissed"
)
WRITER_GONE = "the process loading it stopped; nothing of it was kept"

# The staging tables of an upload of hours or zones (TEMP: only the writer's connection sees them).
HOURS_STAGING = {
    "stageHours": "store_id TEXT NOT NULL, day INTEGER NOT NULL, start_time_local TEXT NOT NULL, "
    "end_time_local TEXT NOT NULL"
}
PUBLISH_HOURS = [
    f"DELETE FROM {HOURS} WHERE store_id IN (SELECT store_id FROM temp.stageHours)",
    (
        f"INSERT INTO {HOURS} (store_id, day, start_time_local, end_time_local) "
        "SELECT store_id, day, start_time_local, end_time_local FROM temp.stageHours ORDER BY rowid"
    ),
]
ZONES_STAGING = {"stageZones": "store_id TEXT NOT NULL, timezone_str TEXT NOT NULL"}
PUBLISH_ZONES = [
    (
        f"INSERT INTO {ZONES} (store_id, timezone_str) SELECT store_id, timezone_str FROM temp.stageZones "
        "WHERE true ORDER BY rowid ON CONFLICT (store_id) DO UPDATE SET timezone_str = excluded.timezone_str"
    ),
]


def _now_us() -> int:
    return time.time_ns() // 1000


def _datetime(value_us: int | None) -> dt.datetime | None:
    return None if value_us is None else utils.us_to_datetime(value_us)


def _error_code(error: BaseException) -> int:
    return (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code of an extended one


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, sqlite3.Error) and _error_code(error) == sqlite3.SQLITE_FULL


# --------------------------------------------------------------------------- is the file ours?


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute("SELECT * FROM pragma_table_info(?)", (table,))}


def _tables(connection: sqlite3.Connection) -> dict[str, set[str]]:
    """The file's own tables (not SQLite's internal ones) and their column names."""
    names = [
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )
    ]
    return {name: _columns(connection, name) for name in names}


def _schema_1_mismatch(tables: dict[str, set[str]]) -> str | None:
    """Why these tables are not exactly schema 1's, or None when they are."""
    foreign = sorted(set(tables) - set(SCHEMA_1_COLUMNS))
    if foreign:
        return f"it holds tables this service never made ({', '.join(foreign)})"
    missing = sorted(set(SCHEMA_1_COLUMNS) - set(tables))
    if missing:
        return f"it lacks tables of this service ({', '.join(missing)})"
    for table, expected in SCHEMA_1_COLUMNS.items():
        required = expected - SCHEMA_1_OPTIONAL.get(table, set())
        unknown, missing = tables[table] - expected, required - tables[table]
        if unknown or missing:
            return f"its {table} table has other columns than this service's ({', '.join(sorted(unknown | missing))})"
    return None


def _recognise(connection: sqlite3.Connection, path: Path) -> int:
    """The schema version of the file, 0 when it is empty; DatabaseRefused when it is not this service's.

    Only reads: the version marks and the tables."""
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    refused = f"{path} is not this service's database: "
    if application_id == database.APPLICATION_ID:
        if version > database.SCHEMA_VERSION:
            raise database.DatabaseRefused(
                f"{path} was made by a newer version of this service (schema {version}; this code knows up to "
                f"{database.SCHEMA_VERSION})"
            )
        if version < FIRST_MARKED_SCHEMA:
            raise database.DatabaseRefused(refused + f"it carries this service's application_id with schema {version}")
        return version
    if application_id:
        raise database.DatabaseRefused(
            refused + f"its application_id is {application_id:#010x}, not {database.APPLICATION_ID:#010x}"
        )
    if version:
        raise database.DatabaseRefused(refused + f"it has user_version {version} and no application_id")
    tables = _tables(connection)
    if not tables and connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        return 0
    mismatch = _schema_1_mismatch(tables) if tables else "it holds views or triggers and no tables"
    if mismatch:
        raise database.DatabaseRefused(refused + mismatch)
    return 1


def _refusal_of(error: sqlite3.Error, path: Path) -> database.DatabaseRefused | None:
    """The refusal a read-only look's error means (not SQLite, another program's unfinished write), or None."""
    code = _error_code(error)
    if code == sqlite3.SQLITE_NOTADB:
        return database.DatabaseRefused(f"{path} is not this service's database: it is not a SQLite file ({error})")
    if code == sqlite3.SQLITE_READONLY:  # SQLITE_READONLY_ROLLBACK: a hot journal, which only a writer can undo
        return database.DatabaseRefused(
            f"{path} is not this service's database: it has an unfinished transaction of another program ({error})"
        )
    return None


# --------------------------------------------------------------------------- a stored CSV, streamed


class _CsvStream:
    """The pieces of one stored CSV, read from a blob handle as they are asked for; it owns its connection
    (read-only, opened for it) and closes it at the end, on `close`, or when it is collected."""

    def __init__(self, connection: sqlite3.Connection, blob, size: int, chunk_bytes: int, report_id: str) -> None:
        self._connection, self._blob = connection, blob
        self._size, self._chunk_bytes, self._report_id = size, chunk_bytes, report_id
        self._read = 0
        self._lock = threading.Lock()
        if blob is None:
            self.close()

    def __iter__(self) -> _CsvStream:
        return self

    def __next__(self) -> bytes:
        with self._lock:
            if self._connection is None:
                raise StopIteration
            try:
                piece = self._blob.read(self._chunk_bytes)
            except BaseException:
                self._close()
                raise
            self._read += len(piece)
            if piece:
                return piece
            self._close()
            if self._read != self._size:  # (a blob handle reads what it opened, whole: never seen)
                raise ValueError(f"report {self._report_id}: stored CSV is incomplete")
            raise StopIteration

    def _close(self) -> None:
        connection, self._connection, blob, self._blob = self._connection, None, self._blob, None
        if connection is not None:
            try:
                if blob is not None:
                    blob.close()
            finally:
                connection.close()  # ends the read transaction

    def close(self) -> None:
        with self._lock:
            self._close()

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001, S110 - nothing to tell at collection
            pass


# --------------------------------------------------------------------------- the store


class SqliteStore(database.Store):
    kind = "sqlite"
    seeds_on_start = True  # a file of this host: seeded from DATA_DIR when it is empty

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.label = f"the SQLite file {self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._stale_after: dt.timedelta | None = None  # what `prepare` was given: the service's stale rule
        self.migrations_applied: list[str] = []
        self.schema_version = self._open_schema()
        self.migrate()
        self._damage: str | None = None
        self.quick_check_done = threading.Event()
        threading.Thread(target=self._quick_check, name="sqlite-quick-check", daemon=True).start()

    # ----- opening: recognise, create or migrate, then WAL

    def _read_only_uri(self) -> str:
        return self.path.as_uri() + "?mode=ro"

    def _look(self) -> int:
        """The file's schema version (0: missing or empty), read on a read-only connection, which can write
        nothing: not a hot journal's rollback, not a checkpoint at close."""
        if not self.path.exists():
            return 0
        if not self.path.is_file():  # a folder, say: SQLite's own error says it cannot be opened
            sqlite3.connect(self.path).close()
        connection = sqlite3.connect(
            self._read_only_uri(), uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        try:
            connection.execute("BEGIN")  # one snapshot: the marks and the tables of one moment
            return _recognise(connection, self.path)
        except sqlite3.DatabaseError as error:
            raise (_refusal_of(error, self.path) or error) from None
        finally:
            connection.close()

    def _open_schema(self) -> int:
        found = self._look()
        connection = self._connection()
        if found == 0:  # nothing of anyone's to protect: WAL from the start, so a crash leaves no hot journal
            connection.execute("PRAGMA journal_mode=WAL")
            found = self._create_schema()
        vacuum = False
        for version, description, step in MIGRATIONS:
            if found < version:
                vacuum |= self._migrate_step(version, description, step) and version in VACUUM_AFTER
                found = version
        connection.execute("PRAGMA journal_mode=WAL")
        if vacuum:
            self._vacuum()
        if self.migrations_applied:  # a step may have written GBs of WAL (schema 4 rewrites every poll): give it back
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return found

    def _vacuum(self) -> None:
        """Give the disk back the pages a migration step freed (VACUUM: one transaction of its own, so a failure,
        a full disk say, leaves the migrated file as it was); said in the log when it cannot."""
        try:
            self._connection().execute("VACUUM")
        except sqlite3.Error as error:
            log.warning(
                "%s keeps the pages its migration freed (%s): with the service stopped, "
                "`python -c \"import sqlite3; sqlite3.connect('%s').execute('VACUUM')\"` gives them back",
                self.path,
                database.describe_error(error),
                self.path,
            )

    def _create_schema(self) -> int:
        """Make the schema in an empty file, in one transaction; the file's version after it."""
        with self._write() as write:
            found = _recognise(write, self.path)  # again, under the lock: another process may have made it
            if found == 0:
                for statement in _statements(SCHEMA):
                    write.execute(statement)
                self._mark_version(write, database.SCHEMA_VERSION)
                found = database.SCHEMA_VERSION
        return found

    def _migrate_step(self, version: int, description: str, step) -> bool:
        """One numbered step in one transaction with its version mark; the version is read again inside
        it, so of several processes opening an old file at once exactly one migrates it (True for that one)."""
        with self._write() as write:
            current = _recognise(write, self.path)
            if current >= version:
                return False
            step(write)
            self._mark_version(write, version)
        done = f"schema {current} -> {version}: {description}"
        self.migrations_applied.append(done)
        log.info("%s migrated: %s", self.path, done)
        return True

    @staticmethod
    def _mark_version(write: sqlite3.Connection, version: int) -> None:
        write.execute(f"PRAGMA application_id = {int(database.APPLICATION_ID)}")
        write.execute(f"PRAGMA user_version = {int(version)}")

    # ----- connections

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe in WAL mode
            connection.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")
            self._local.connection = connection
        return connection

    def _health_connection(self) -> sqlite3.Connection:
        """A connection of its own for /health, whose write probe waits at most HEALTH_BUSY_TIMEOUT_MS."""
        connection = getattr(self._local, "health", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, timeout=HEALTH_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.health = connection
        return connection

    @contextmanager
    def _disk_full_as(self, what: str):
        """Turn a full disk into database.DiskFull (`what` names the write that was lost)."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            if _is_disk_full(error):
                raise database.DiskFull(str(self.path), database.free_bytes(self.path.parent), what=what) from error
            raise

    @staticmethod
    def _roll_back(connection: sqlite3.Connection) -> None:
        if connection.in_transaction:  # SQLite rolls some failures (a full disk) back by itself
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error as error:
                log.error("could not roll back: %s", error)

    @contextmanager
    def _write(self, what: str = "write", durable: bool = False):
        """A write transaction: taken at once (BEGIN IMMEDIATE), committed at the end, rolled back on error.

        `durable`: committed with synchronous=FULL, so it survives a power loss too.  A full disk
        raises database.DiskFull once the transaction is rolled back."""
        connection = self._connection()
        with self._disk_full_as(what):
            if durable:
                connection.execute("PRAGMA synchronous=FULL")
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                    connection.execute("COMMIT")
                except BaseException:
                    self._roll_back(connection)
                    raise
            finally:
                if durable:
                    connection.execute("PRAGMA synchronous=NORMAL")

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

    def ping(self, timeout: float | None = None, quiet: bool = False) -> bool:
        """A file of this host answers at once or not at all: `timeout` is never waited for."""
        try:
            self._connection().execute("SELECT 1").fetchone()
        except sqlite3.Error as error:
            if not quiet:
                log.warning("database ping failed: %s", error)
            return False
        return True

    def prepare(self, stale_after: dt.timedelta) -> int:
        """The schema and indexes were made when the file opened: only the stale sweep is left.  `stale_after`
        is kept: `claim_tick` judges a Running scheduled report by the same rule."""
        self._stale_after = stale_after
        return self.fail_stale_reports(stale_after)

    def migrate(self) -> list[str]:
        failed = []
        connection = self._connection()
        existing = dict(
            connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        )
        for name, statement in INDEXES.items():
            if existing.get(name) == statement:
                continue
            try:
                with self._write() as write:
                    if name in existing:
                        log.info("index %s changed: rebuilding it", name)
                        write.execute(f"DROP INDEX {name}")
                    write.execute(statement)
            except (sqlite3.Error, database.DiskFull) as error:
                failed.append(f"{name}: {error}")
                log.error("could not create index %s: %s", name, error)
        return failed

    def is_empty(self) -> bool:
        connection = self._connection()
        return all(
            connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None for table in (POLLS, HOURS, ZONES)
        )

    def close(self) -> None:
        for name in ("connection", "health"):
            connection = getattr(self._local, name, None)
            if connection is not None:
                connection.close()
                setattr(self._local, name, None)

    # ----- health

    def _quick_check(self) -> None:
        """PRAGMA quick_check once, in the background: its first complaint, if any, is a /health problem."""
        try:
            connection = sqlite3.connect(self._read_only_uri(), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                text = "\n".join(row[0] for row in connection.execute("PRAGMA quick_check(1)"))
            finally:
                connection.close()
        except sqlite3.Error as error:
            if _error_code(error) not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                log.warning("could not check %s for damage: %s", self.path, database.describe_error(error))
                self.quick_check_done.set()
                return
            text = database.describe_error(error)
        lines = [line for line in text.splitlines() if line and not line.startswith("*** in database")]
        if lines != ["ok"]:
            self._damage = lines[0] if lines else text
            log.error("%s failed its integrity check: %s", self.path, self._damage)
        self.quick_check_done.set()

    def _write_probe(self) -> tuple[str, str | None]:
        """("ok" | "busy" | "failed", the problem): a real, committed write of the probe row.  "busy" (another
        writer holds the lock, e.g. publishing an upload) is not a problem."""
        connection = self._health_connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                f"INSERT INTO {PROBE} (id, written_us) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET written_us = excluded.written_us",
                (_now_us(),),
            )
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            self._roll_back(connection)
            if _error_code(error) == sqlite3.SQLITE_BUSY:
                return "busy", None
            if _is_disk_full(error):
                return "failed", f"the disk holding {self.path} is full: the database cannot be written"
            return "failed", f"the database {self.path} cannot be written: {database.describe_error(error)}"
        return "ok", None

    def _disk_problem(self, free: int | None, min_free_bytes: int) -> str | None:
        if free is None or free >= min_free_bytes:
            return None
        return (
            f"the disk holding {self.path} has {free / 1_048_576:.0f} MB free, "
            f"under MIN_FREE_MB ({min_free_bytes / 1_048_576:.0f} MB)"
        )

    def _schema_problem(self, connection: sqlite3.Connection) -> str | None:
        on_disk = connection.execute("PRAGMA user_version").fetchone()[0]
        if on_disk > database.SCHEMA_VERSION:
            return (
                f"{self.path} was migrated by a newer version of this service (schema {on_disk}; this code "
                f"knows up to {database.SCHEMA_VERSION})"
            )
        return None

    def _read_facts(self) -> tuple[int | None, str | None]:
        """(the newest poll, a problem): the schema mark and the newest poll, read on the health connection."""
        connection = self._health_connection()
        try:
            newest = connection.execute(f"SELECT max(last_us) FROM {POLLS}").fetchone()[0]
            return newest, self._schema_problem(connection)
        except sqlite3.Error as error:
            return None, f"the database {self.path} cannot be read: {database.describe_error(error)}"

    def health(self, min_free_bytes: int) -> dict:
        probe, probe_problem = self._write_probe()
        newest, read_problem = self._read_facts()
        free = database.free_bytes(self.path.parent)
        problems = [probe_problem, read_problem, self._disk_problem(free, min_free_bytes)]
        if self._damage:
            problems.append(f"{self.path} is damaged: PRAGMA quick_check found: {self._damage}")
        unfinished = self.unfinished_upload()
        if unfinished:
            problems.append(str(database.UploadUnfinished(unfinished)))
        return {
            "schema_version": self.schema_version,
            "free_disk_mb": None if free is None else round(free / 1_048_576, 1),
            "newest_poll_us": newest,
            "write_probe": probe,  # "ok", "busy" (another writer held the lock: not a problem) or "failed"
            "problems": [problem for problem in problems if problem],
        }

    # ----- ingest: staged in TEMP tables, published in one transaction

    @contextmanager
    def _staging(self, tables: dict[str, str]):
        """The writer's connection with fresh TEMP staging tables, dropped at the end whatever happens."""
        connection = self._connection()
        with self._disk_full_as("upload"):
            try:
                for name, columns in tables.items():
                    connection.execute(f"DROP TABLE IF EXISTS temp.{name}")
                    connection.execute(f"CREATE TEMP TABLE {name} ({columns})")
                for schema in ("main", "temp"):
                    connection.execute(f"PRAGMA {schema}.cache_size = {BULK_CACHE_KIB}")
                yield connection
            finally:
                self._drop_staging(connection, tables)

    def _drop_staging(self, connection: sqlite3.Connection, tables: dict[str, str]) -> None:
        try:
            self._roll_back(connection)
            for name in tables:
                connection.execute(f"DROP TABLE IF EXISTS temp.{name}")
            for schema in ("main", "temp"):
                connection.execute(f"PRAGMA {schema}.cache_size = {DEFAULT_CACHE_KIB}")
            # Close the connection's TEMP database: a change of temp_store drops it and its file (SQLite's
            # PRAGMA temp_store).  Staging 15M polls (schema 3 staged polls too) grew it past 2 GB; kept open, it
            # held that disk, and a later upload staged on the same connection found it "malformed" (SQLite 3.40).
            connection.execute("PRAGMA temp_store = MEMORY")
            connection.execute("PRAGMA temp_store = DEFAULT")
        except sqlite3.Error as error:  # never hides the error that ended the upload
            log.error("could not drop the staging tables of an upload: %s", error)

    def _stage(self, connection: sqlite3.Connection, statements: list[tuple[str, object]]) -> None:
        """Run statements on the TEMP tables as one transaction (it takes no lock on the database file)."""
        connection.execute("BEGIN")
        try:
            for statement, values in statements:
                if isinstance(values, list):
                    connection.executemany(statement, values)
                else:
                    connection.execute(statement, values)
            connection.execute("COMMIT")
        except BaseException:
            self._roll_back(connection)
            raise

    @staticmethod
    def _finish_upload(write: sqlite3.Connection, upload_id: str | None, rows: int) -> None:
        if upload_id is not None:
            write.execute(
                f"UPDATE {UPLOADS} SET status = 'Complete', finished_us = ?, written = ?, error = NULL "
                "WHERE upload_id = ?",
                (_now_us(), rows, upload_id),
            )

    def _publish(self, statements: list[str], upload_id: str | None, rows: int) -> None:
        with self._write("upload", durable=True) as write:
            for statement in statements:
                write.execute(statement)
            self._finish_upload(write, upload_id, rows)

    # The blocks an upload touches, as they are stored: the polls of those (store, block) pairs, a batch at a time
    STORED_BLOCKS = f"""
        SELECT j.key, p.timestamps, p.statuses FROM json_each(:pairs) AS j CROSS JOIN {POLLS} AS p
        WHERE p.store_id = json_extract(j.value, '$[0]') AND p.block = json_extract(j.value, '$[1]')
    """

    def _stored_polls(self, write: sqlite3.Connection, names: np.ndarray, codes: np.ndarray, stamps: np.ndarray):
        """(codes, stamps, active) of the stored polls in the blocks of these polls (sorted by store and time)."""
        if write.execute(f"SELECT 1 FROM {POLLS} LIMIT 1").fetchone() is None:
            return None
        starts = _block_starts(codes, stamps)[:-1]
        pair_codes = codes[starts]
        pairs = list(zip(names[pair_codes].tolist(), (stamps[starts] // BLOCK_US).tolist()))
        found = []
        for first in range(0, len(pairs), WRITE_BATCH_ROWS):
            rows = write.execute(self.STORED_BLOCKS, {"pairs": json.dumps(pairs[first : first + WRITE_BATCH_ROWS])})
            keys, old_stamps, old_active = _polls_of_blocks(rows.fetchall())
            found.append((pair_codes[keys + first], old_stamps, old_active))
        return [np.concatenate(column) for column in zip(*found)]

    def load_polls(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        """Merge the polls into their blocks (of two rows at one instant, in the upload or stored, the upload's
        later one wins) in one transaction; `on_rows` is told the upload's rows in proportion as blocks are written."""
        with self._write("upload", durable=True) as write:
            if not frame.empty:
                codes, names = pd.factorize(frame["store_id"], sort=True)
                names = np.asarray(names, dtype=object)
                codes, stamps, active = utils.sorted_polls(
                    codes, frame["timestamp_us"].to_numpy(dtype=np.int64), frame["active"].to_numpy(dtype=bool)
                )
                stored = self._stored_polls(write, names, codes, stamps)
                if stored is not None and stored[0].size:  # stored first: at one instant, the upload's poll wins
                    codes, stamps, active = utils.sorted_polls(
                        *(np.concatenate(pair) for pair in zip(stored, (codes, stamps, active)))
                    )
                codes, stamps, active = _one_per_instant(codes, stamps, active)
                polls_written = rows_told = 0

                def written(polls: int) -> None:
                    nonlocal polls_written, rows_told
                    polls_written += polls
                    rows = len(frame) * polls_written // codes.size - rows_told
                    rows_told += rows
                    on_rows(rows)

                _write_blocks(write, names, codes, stamps, active, written)
            self._finish_upload(write, upload_id, len(frame))
        return len(frame)

    def _replace(
        self, staging: dict[str, str], rows: list[tuple], publish: list[str], on_rows: Progress, upload_id: str | None
    ) -> int:
        name = next(iter(staging))
        insert = f"INSERT INTO temp.{name} VALUES ({', '.join('?' * len(rows[0]))})" if rows else ""
        with self._staging(staging) as connection:
            for start in range(0, len(rows), WRITE_BATCH_ROWS):
                batch = rows[start : start + WRITE_BATCH_ROWS]
                self._stage(connection, [(insert, batch)])
                on_rows(len(batch))
            self._publish(publish if rows else [], upload_id, len(rows))
        return len(rows)

    def replace_hours(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        starts, ends = database.business_hours_text(frame)
        rows = list(zip(frame["store_id"].astype(object).tolist(), frame["day"].astype(int).tolist(), starts, ends))
        return self._replace(HOURS_STAGING, rows, PUBLISH_HOURS, on_rows, upload_id)

    def replace_zones(self, frame: pd.DataFrame, on_rows: Progress = no_progress, upload_id: str | None = None) -> int:
        rows = list(zip(frame["store_id"].astype(object).tolist(), frame["timezone_str"].astype(object).tolist()))
        return self._replace(ZONES_STAGING, rows, PUBLISH_ZONES, on_rows, upload_id)

    # ----- the upload journal

    def begin_upload(self, file: str, kind: str, digest: str, loaded: int, rejected: int) -> str:
        upload_id = uuid.uuid4().hex
        with self._write() as write:
            write.execute(
                f"INSERT INTO {UPLOADS} (upload_id, file, kind, digest, at_us, loaded, rejected, written, "
                "status, dismissed) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 'Running', 0)",
                (upload_id, file, kind, digest, _now_us(), int(loaded), int(rejected)),
            )
        return upload_id

    def fail_upload(self, upload_id: str, error: str) -> None:
        with self._write() as write:
            write.execute(
                f"UPDATE {UPLOADS} SET status = 'Failed', finished_us = ?, error = ?, written = 0 "
                "WHERE upload_id = ? AND status = 'Running'",
                (_now_us(), error, upload_id),
            )

    def dismiss_upload(self, upload_id: str) -> bool:
        with self._write() as write:
            return write.execute(f"UPDATE {UPLOADS} SET dismissed = 1 WHERE upload_id = ?", (upload_id,)).rowcount == 1

    @staticmethod
    def _upload(row, writer_alive: bool) -> dict:
        upload_id, file, kind, digest, at, finished, loaded, rejected, written, status, error, dismissed = row
        if status == "Running" and not writer_alive:
            status, error = "Failed", WRITER_GONE
        return {
            "upload_id": upload_id,
            "file": file,
            "kind": kind,
            "digest": digest,
            "at": _datetime(at),
            "finished_at": _datetime(finished),
            "loaded": loaded,
            "rejected": rejected,
            "written": written,
            "status": status,
            "error": error,
            "dismissed": bool(dismissed),
        }

    def list_uploads(self, limit: int = 10) -> list[dict]:
        with self._read() as read:
            rows = read.execute(
                f"SELECT {UPLOAD_COLUMNS} FROM {UPLOADS} ORDER BY at_us DESC, upload_id DESC LIMIT ?", (int(limit),)
            ).fetchall()
            writer_alive = (
                read.execute(
                    "SELECT 1 FROM leases WHERE mode = 'write' AND expires_us >= ? LIMIT 1", (_now_us(),)
                ).fetchone()
                is not None
            )
        return [self._upload(row, writer_alive) for row in rows]

    def unfinished_upload(self) -> dict | None:
        """Always None here: an upload's rows become visible in the very transaction that marks it Complete,
        so no upload ever stops part-way with some of its rows visible (a failed one leaves none)."""
        return None

    # ----- what is stored

    def delete_polls(self, store_id: str, since_us: int | None = None, until_us: int | None = None) -> int:
        low = -(2**63) if since_us is None else int(since_us)
        high = 2**63 - 1 if until_us is None else int(until_us)
        removed = 0
        with self._write() as write:
            blocks = write.execute(
                f"SELECT block, timestamps, statuses FROM {POLLS} WHERE store_id = ? AND block BETWEEN ? AND ?",
                (store_id, low // BLOCK_US, high // BLOCK_US),
            ).fetchall()
            for block, stamp_blob, status_blob in blocks:
                _, stamps, active = _polls_of_blocks([(0, stamp_blob, status_blob)])
                kept = (stamps < low) | (stamps > high)
                if kept.all():
                    continue
                removed += int(kept.size - np.count_nonzero(kept))
                if kept.any():  # the block again, without them
                    codes = np.zeros(np.count_nonzero(kept), dtype=np.int64)
                    _write_blocks(write, np.array([store_id], dtype=object), codes, stamps[kept], active[kept])
                else:
                    write.execute(f"DELETE FROM {POLLS} WHERE store_id = ? AND block = ?", (store_id, block))
        return removed

    def data_summary(self) -> dict:
        with self._read() as read:

            def one(query: str):
                return read.execute(query).fetchone()[0]

            return {
                "stores": one(f"SELECT count(DISTINCT store_id) FROM {POLLS}"),
                "polls": one(f"SELECT coalesce(sum(polls), 0) FROM {POLLS}"),
                "hours_rows": one(f"SELECT count(*) FROM {HOURS}"),
                "zones": one(f"SELECT count(*) FROM {ZONES}"),
                "oldest_poll_us": one(f"SELECT min(first_us) FROM {POLLS}"),
                "newest_poll_us": one(f"SELECT max(last_us) FROM {POLLS}"),
            }

    # ----- reading for the report

    def latest_poll_us(self) -> int | None:
        return self._connection().execute(f"SELECT max(last_us) FROM {POLLS}").fetchone()[0]

    def report_store_ids(self, now_us: int) -> list[str]:
        query = f"SELECT store_id FROM {POLLS} GROUP BY store_id HAVING min(first_us) <= ? ORDER BY store_id"
        return [row[0] for row in self._connection().execute(query, (int(now_us),))]

    # The queries of one chunk; tests check their plans with EXPLAIN QUERY PLAN.  The polls come back as the
    # blocks that hold them: for each store (its place in the chunk's list is json_each's key), its blocks
    # from the last one before the window's (which holds its last poll before the window) to the window's end.
    CHUNK_POLLS = f"""
        SELECT j.key, p.timestamps, p.statuses
        FROM json_each(:ids) AS j CROSS JOIN {POLLS} AS p
        WHERE p.store_id = j.value AND p.block <= :now_block AND p.block >= coalesce(
            (SELECT max(q.block) FROM {POLLS} AS q WHERE q.store_id = j.value AND q.block < :since_block),
            :since_block)
    """
    # The hours come back as comma-separated texts in one row, not as a row each: Python splits and numpy reads
    # them far faster than sqlite3 builds a million row tuples.  The aggregates of one query see the rows in
    # the same order; count(*) checks each text is read whole (the stored times, HH:MM:SS, hold no comma).
    CHUNK_HOURS = f"""
        SELECT count(*), group_concat(j.key), group_concat(h.day), group_concat(h.start_time_local),
            group_concat(h.end_time_local)
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

    @staticmethod
    def _texts(text: str | None, count: int) -> list[str]:
        """The `count` values of a comma-separated text (None when there are none)."""
        values = text.split(",") if count else []
        if len(values) != count:
            raise ValueError(f"expected {count} values from the database, read {len(values)}")
        return values

    @staticmethod
    def _window_polls(keys: np.ndarray, stamps: np.ndarray, since_us: int, now_us: int) -> np.ndarray:
        """Which of the blocks' polls a report reads: those in [since, now], and each store's last one before."""
        before = stamps < since_us
        last_before = before.copy()
        last_before[:-1] &= ~before[1:] | (keys[1:] != keys[:-1])
        return last_before | (~before & (stamps <= now_us))

    def read_chunk(self, store_ids: list[str], since_us: int, now_us: int):
        ids = list(store_ids)
        since_us, now_us = int(since_us), int(now_us)
        window = {"ids": json.dumps(ids), "since_block": since_us // BLOCK_US, "now_block": now_us // BLOCK_US}
        with self._read() as read:
            blocks = read.execute(self.CHUNK_POLLS, window).fetchall()
            hour_texts = read.execute(self.CHUNK_HOURS, window).fetchone()
            zone_rows = read.execute(self.CHUNK_ZONES, window).fetchall()
        keys, stamps, active = _polls_of_blocks(blocks)
        keys, stamps, active = utils.sorted_polls(keys, stamps, active)  # (as they come: store by store, in time)
        wanted = self._window_polls(keys, stamps, since_us, now_us)
        keys, stamps, active = keys[wanted], stamps[wanted], active[wanted]
        # store ids as a categorical over the chunk's sorted, distinct ids, as sources.read_store_status gives them
        id_array = np.array(ids, dtype=object)
        names, category = np.unique(id_array, return_inverse=True)
        polls = pd.DataFrame(
            {
                "store_id": pd.Categorical.from_codes(category[keys], categories=pd.Index(names, dtype=object)),
                "timestamp_us": stamps,
                "active": active,
            }
        )
        count, position, day, start, end = hour_texts
        hours = pd.DataFrame(
            {
                "store_id": id_array[self._numbers(position, count)],
                "day": self._numbers(day, count),
                "start_s": sources.parse_time_of_day(self._texts(start, count)).astype(np.int64),
                "end_s": sources.parse_time_of_day(self._texts(end, count)).astype(np.int64),
            }
        )
        zones = pd.DataFrame(
            {
                "store_id": id_array[np.array([p for p, _ in zone_rows], dtype=np.int64)],
                "timezone_str": np.array([zone for _, zone in zone_rows], dtype=object),
            }
        )
        return polls, hours, zones

    # ----- reports

    @staticmethod
    def _insert_report(write: sqlite3.Connection, report_id: str, as_of_us: int | None, trigger: str, now: int) -> None:
        if trigger not in REPORT_TRIGGERS:
            raise ValueError(f"a report's trigger is one of {', '.join(REPORT_TRIGGERS)}, not {trigger!r}")
        write.execute(
            f"INSERT INTO {REPORTS} (report_id, status, created_us, heartbeat_us, requested_as_of_us, "
            "progress_done, progress_total, trigger) VALUES (?, 'Running', ?, ?, ?, 0, NULL, ?)",
            (report_id, now, now, as_of_us, trigger),
        )

    def create_report(self, report_id: str, as_of_us: int | None, trigger: str = "api") -> None:
        with self._write() as write:
            self._insert_report(write, report_id, as_of_us, trigger, _now_us())

    def update_report(
        self,
        report_id: str,
        *,
        as_of_us: int | None = None,
        progress: dict | None = None,
        as_of_after_newest_poll: bool | None = None,
    ) -> None:
        sets, values = ["heartbeat_us = ?"], [_now_us()]
        if as_of_us is not None:
            sets.append("as_of_us = ?")
            values.append(int(as_of_us))
        if progress is not None:
            sets += ["progress_done = ?", "progress_total = ?", "progress_phase = ?"]
            values += [int(progress["done"]), progress.get("total"), progress.get("phase")]
        if as_of_after_newest_poll is not None:
            sets.append("as_of_after_newest_poll = ?")
            values.append(int(bool(as_of_after_newest_poll)))
        with self._write() as write:
            write.execute(
                f"UPDATE {REPORTS} SET {', '.join(sets)} WHERE report_id = ? AND status = 'Running'",
                (*values, report_id),
            )

    def complete_report(self, report_id: str, csv_bytes: bytes, row_count: int) -> bool:
        """Bytes that are not a report CSV (their first line is not the report's header) keep no history rows;
        a report CSV whose rows cannot be read raises ValueError, and nothing is stored."""
        history = _history_of(csv_bytes, report_id)  # parsed before the write lock is taken
        with self._write("report", durable=True) as write:
            report_key = write.execute(
                f"SELECT coalesce(max(history_key), 0) + 1 FROM {REPORTS} WHERE history_key IS NOT NULL"
            ).fetchone()[0]
            completed = (
                write.execute(
                    f"UPDATE {REPORTS} SET status = 'Complete', finished_us = ?, row_count = ?, csv_bytes = ?, "
                    "history_key = ? WHERE report_id = ? AND status = 'Running'",
                    (_now_us(), row_count, len(csv_bytes), report_key, report_id),
                ).rowcount
                == 1
            )
            if completed:  # in the same transaction: a reader never sees Complete without the whole CSV and history
                write.execute(
                    "INSERT OR REPLACE INTO reportCsv (report_id, data) VALUES (?, ?)",
                    (report_id, sqlite3.Binary(csv_bytes)),
                )
                _insert_history(write, report_key, history)
        return completed

    def fail_report(self, report_id: str, error: str) -> None:
        with self._write() as write:
            write.execute(
                f"UPDATE {REPORTS} SET status = 'Failed', finished_us = ?, error = ? "
                "WHERE report_id = ? AND status = 'Running'",
                (_now_us(), error, report_id),
            )

    def beat(self, report_ids: list[str]) -> None:
        if report_ids:
            with self._write() as write:
                write.execute(
                    f"UPDATE {REPORTS} SET heartbeat_us = ? "
                    "WHERE status = 'Running' AND report_id IN (SELECT value FROM json_each(?))",
                    (_now_us(), json.dumps(list(report_ids))),
                )

    def fail_stale_reports(self, older_than: dt.timedelta) -> int:
        now = _now_us()
        cutoff = now - older_than // dt.timedelta(microseconds=1)
        with self._write() as write:
            return write.execute(
                f"UPDATE {REPORTS} SET status = 'Failed', finished_us = ?, error = ? "
                "WHERE status = 'Running' AND heartbeat_us < ?",
                (now, database.STALE_ERROR, cutoff),
            ).rowcount

    @staticmethod
    def _record(row) -> dict | None:
        if row is None:
            return None
        (
            report_id,
            status,
            created,
            heartbeat,
            finished,
            requested,
            as_of,
            done,
            total,
            phase,
            row_count,
            error,
            csv_bytes,
            after_newest,
            trigger,
        ) = row
        progress = {"done": done, "total": total}
        if phase is not None:
            progress["phase"] = phase
        return {
            "report_id": report_id,
            "status": status,
            "created_at": _datetime(created),
            "heartbeat_at": _datetime(heartbeat),
            "finished_at": _datetime(finished),
            "requested_as_of_us": requested,
            "as_of_us": as_of,
            "progress": progress,
            "row_count": row_count,
            "error": error,
            "csv_bytes": csv_bytes,
            "as_of_after_newest_poll": bool(after_newest),
            "trigger": trigger,
        }

    def find_report(self, report_id: str) -> dict | None:
        row = (
            self._connection()
            .execute(f"SELECT {REPORT_COLUMNS} FROM {REPORTS} WHERE report_id = ?", (report_id,))
            .fetchone()
        )
        return self._record(row)

    def count_reports(self) -> int:
        return self._connection().execute(f"SELECT count(*) FROM {REPORTS}").fetchone()[0]

    def list_reports(self, skip: int = 0, limit: int = 20) -> list[dict]:
        rows = (
            self._connection()
            .execute(
                f"SELECT {REPORT_COLUMNS} FROM {REPORTS} ORDER BY created_us DESC, report_id DESC LIMIT ? OFFSET ?",
                (limit, skip),
            )
            .fetchall()
        )
        return [self._record(row) for row in rows]

    def delete_finished_reports(self, finished_before: dt.datetime, keep_newest: int) -> list[str]:
        cutoff = utils.datetime_to_us(finished_before)
        with self._write() as write:
            ids = sorted(
                {
                    report_id
                    for (report_id,) in write.execute(
                        f"SELECT report_id FROM {REPORTS} WHERE status IN ('Complete', 'Failed') AND finished_us < ? "
                        f"UNION SELECT report_id FROM (SELECT report_id FROM {REPORTS} "
                        "WHERE status IN ('Complete', 'Failed') "
                        "ORDER BY created_us DESC, report_id DESC LIMIT -1 OFFSET ?)",
                        (cutoff, max(keep_newest, 0)),
                    )
                }
            )
            chosen = json.dumps(ids)
            keys = write.execute(
                f"SELECT history_key FROM {REPORTS} WHERE report_id IN (SELECT value FROM json_each(?)) "
                "AND history_key IS NOT NULL",
                (chosen,),
            ).fetchall()
            self._delete_history(write, [key for (key,) in keys])
            write.execute(f"DELETE FROM {REPORTS} WHERE report_id IN (SELECT value FROM json_each(?))", (chosen,))
            write.execute("DELETE FROM reportCsv WHERE report_id IN (SELECT value FROM json_each(?))", (chosen,))
        return ids

    # The history rows of some reports, found without a pass over the table: a loose index scan gives each
    # store once (one seek per store on the primary key), then each (store, report) pair is one seek.
    DELETE_HISTORY = f"""
        WITH RECURSIVE ids(store_id) AS (
            SELECT min(store_id) FROM {HISTORY}
            UNION ALL
            SELECT (SELECT min(store_id) FROM {HISTORY} WHERE store_id > ids.store_id) FROM ids
            WHERE ids.store_id IS NOT NULL
        )
        DELETE FROM {HISTORY}
        WHERE store_id IN (SELECT store_id FROM ids WHERE store_id IS NOT NULL)
          AND report_key IN (SELECT value FROM json_each(?))
    """

    def _delete_history(self, write: sqlite3.Connection, report_keys: list[int]) -> None:
        if report_keys:
            write.execute(self.DELETE_HISTORY, (json.dumps([int(key) for key in report_keys]),))

    def delete_report(self, report_id: str) -> bool:
        with self._write() as write:
            row = write.execute(
                f"SELECT status, history_key FROM {REPORTS} WHERE report_id = ?", (report_id,)
            ).fetchone()
            if row is None or row[0] not in ("Complete", "Failed"):
                return False
            self._delete_history(write, [] if row[1] is None else [row[1]])
            write.execute("DELETE FROM reportCsv WHERE report_id = ?", (report_id,))
            write.execute(f"DELETE FROM {REPORTS} WHERE report_id = ?", (report_id,))
        return True

    def previous_complete_report(self, report_id: str) -> dict | None:
        row = (
            self._connection()
            .execute(
                f"SELECT {REPORT_COLUMNS} FROM {REPORTS}, "
                f"(SELECT created_us AS this_created, report_id AS this_id FROM {REPORTS} WHERE report_id = ?) "
                "WHERE status = 'Complete' AND (created_us, report_id) < (this_created, this_id) "
                "ORDER BY created_us DESC, report_id DESC LIMIT 1",
                (report_id,),
            )
            .fetchone()
        )
        return self._record(row)

    # One store's points: its range of the history table's primary key, each joined to its report.
    STORE_HISTORY = f"""
        SELECT r.report_id, r.as_of_us, {", ".join(f"h.{name}" for name in FIGURES)}
        FROM {HISTORY} AS h JOIN {REPORTS} AS r ON r.history_key = h.report_key
        WHERE h.store_id = :store_id AND r.status = 'Complete'
          AND (:since IS NULL OR r.as_of_us >= :since) AND (:until IS NULL OR r.as_of_us <= :until)
        ORDER BY r.as_of_us DESC, r.created_us DESC, r.report_id DESC
        LIMIT :limit
    """

    def store_history(
        self, store_id: str, since_us: int | None = None, until_us: int | None = None, limit: int = 100
    ) -> list[dict]:
        window = {
            "store_id": store_id,
            "since": None if since_us is None else int(since_us),
            "until": None if until_us is None else int(until_us),
            "limit": max(int(limit), 0),  # (SQLite takes a negative LIMIT for none)
        }
        rows = self._connection().execute(self.STORE_HISTORY, window).fetchall()
        return [
            {"report_id": row[0], "as_of_us": row[1], **{name: _figure(value) for name, value in zip(FIGURES, row[2:])}}
            for row in rows
        ]

    def read_report_csv(self, report: dict) -> bytes:
        row = (
            self._connection()
            .execute("SELECT data FROM reportCsv WHERE report_id = ?", (report["report_id"],))
            .fetchone()
        )
        return database.checked_report_csv(report, b"" if row is None else bytes(row[0]))

    def iter_report_csv(self, report: dict, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Not a generator: the stored CSV is found and its length checked now (ValueError now, before any
        piece), then read piece by piece from a blob handle on a read-only connection of the stream's own (a
        WSGI server may read it in another thread after the view returned), in one read transaction, so
        every piece is of the same snapshot.  The connection is closed when the last piece has been read,
        when the stream is closed (a WSGI server calls `close`), or at the latest when it is collected."""
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
        connection = sqlite3.connect(
            self._read_only_uri(),
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            connection.execute("BEGIN")  # held until the stream ends: one snapshot
            row = connection.execute(
                "SELECT rowid FROM reportCsv WHERE report_id = ?", (report["report_id"],)
            ).fetchone()
            blob = None if row is None else connection.blobopen("reportCsv", "data", row[0], readonly=True)
            size = 0 if blob is None else len(blob)
            if report.get("csv_bytes") is not None and size != report["csv_bytes"]:
                raise ValueError(f"report {report['report_id']}: stored CSV is incomplete")
        except BaseException:
            connection.close()
            raise
        return _CsvStream(connection, blob, size, chunk_bytes, report["report_id"])

    # ----- the schedule: a tick is claimed in one write transaction (the table's primary key is the tick)

    def clock_us(self) -> int:
        return _now_us()

    def _still_running_after_us(self, now_us: int) -> int:
        """The oldest heartbeat of a Running report that is not stale: `prepare`'s stale_after (the service's
        STALE_AFTER_SECONDS), or 2 x database.LEASE_SECONDS when the store was never prepared."""
        stale_after = self._stale_after or dt.timedelta(seconds=2 * database.LEASE_SECONDS)
        return now_us - stale_after // dt.timedelta(microseconds=1)

    def claim_tick(self, tick_us: int, report_id: str) -> str:
        """A tick older than every kept one (TICKS_KEPT of them, once that many were claimed) counts as taken."""
        tick_us = int(tick_us)
        with self._write() as write:
            if write.execute(f"SELECT 1 FROM {TICKS} WHERE tick_us = ?", (tick_us,)).fetchone() is not None:
                return "taken"
            kept, oldest = write.execute(f"SELECT count(*), min(tick_us) FROM {TICKS}").fetchone()
            if kept >= TICKS_KEPT and tick_us < oldest:
                return "taken"
            now = _now_us()
            running = write.execute(
                f"SELECT 1 FROM {REPORTS} WHERE status = 'Running' AND trigger = 'schedule' AND heartbeat_us >= ? "
                "LIMIT 1",
                (self._still_running_after_us(now),),
            ).fetchone()
            outcome = "skipped" if running is not None else "started"
            write.execute(
                f"INSERT INTO {TICKS} (tick_us, outcome, report_id, claimed_us) VALUES (?, ?, ?, ?)",
                (tick_us, outcome, report_id if outcome == "started" else None, now),
            )
            if outcome == "started":
                self._insert_report(write, report_id, None, "schedule", now)
            write.execute(
                f"DELETE FROM {TICKS} WHERE tick_us < "
                f"(SELECT tick_us FROM {TICKS} ORDER BY tick_us DESC LIMIT 1 OFFSET ?)",
                (TICKS_KEPT - 1,),
            )
        return outcome

    def last_tick(self) -> dict | None:
        row = (
            self._connection()
            .execute(f"SELECT tick_us, outcome, report_id, claimed_us FROM {TICKS} ORDER BY tick_us DESC LIMIT 1")
            .fetchone()
        )
        if row is None:
            return None
        return dict(zip(("tick_us", "outcome", "report_id", "claimed_at_us"), row))

    # ----- alerts: the stores that are down (one row each), and the deliveries, in one write transaction
    #
    # A store without a row is up as of the newest report recorded (`alertSeen`): so a report older than
    # that one changes no store's state, even a store that never was down.

    @staticmethod
    def _delivery(row) -> dict:
        delivery_id, report_id, as_of, created, status, attempts, last_attempt, http_status, error, events, body = row
        return {
            "delivery_id": delivery_id,
            "report_id": report_id,
            "as_of_us": as_of,
            "created_at": _datetime(created),
            "status": status,
            "attempts": attempts,
            "last_attempt_at": _datetime(last_attempt),
            "http_status": http_status,
            "error": error,
            "events": events,
            "body": None if body is None else bytes(body),
        }

    def record_alerts(self, report_id: str, as_of_us: int, rows: list[dict], downtime_minutes: float) -> dict | None:
        as_of_us = int(as_of_us)
        with self._write("alert state", durable=True) as write:
            found = write.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERIES} WHERE report_id = ?", (report_id,)
            ).fetchone()
            if found is not None:  # recorded already: its delivery, and no state changes again
                return self._delivery(found)
            seen = write.execute(f"SELECT as_of_us FROM {ALERT_SEEN} WHERE id = 1").fetchone()
            up_as_of = None if seen is None else seen[0]  # the state of a store without a row: up, as of then
            down_as_of = dict(write.execute(f"SELECT store_id, as_of_us FROM {ALERT_STATE}"))
            events, went_down, still_down, recovered = [], [], [], []
            for row in rows:
                store_id = row["store_id"]
                set_as_of = down_as_of.get(store_id, up_as_of)
                if set_as_of is not None and set_as_of >= as_of_us:
                    continue  # set by this report or a later one: an older report never flips it back
                down = row["downtime_last_hour"] >= downtime_minutes
                was_down = store_id in down_as_of
                if down:
                    (still_down if was_down else went_down).append((store_id, as_of_us, report_id))
                    down_as_of[store_id] = as_of_us
                elif was_down:
                    recovered.append((store_id,))
                    del down_as_of[store_id]
                else:
                    continue
                if down != was_down:
                    events.append(
                        {
                            "store_id": store_id,
                            "event": "store_down" if down else "store_recovered",
                            "downtime_last_hour": row["downtime_last_hour"],
                            "uptime_last_hour": row["uptime_last_hour"],
                        }
                    )
            write.executemany(f"INSERT INTO {ALERT_STATE} (store_id, as_of_us, report_id) VALUES (?, ?, ?)", went_down)
            write.executemany(
                f"UPDATE {ALERT_STATE} SET as_of_us = ? WHERE store_id = ?",
                [(as_of, store_id) for store_id, as_of, _ in still_down],
            )
            write.executemany(f"DELETE FROM {ALERT_STATE} WHERE store_id = ?", recovered)
            write.execute(
                f"INSERT INTO {ALERT_SEEN} (id, as_of_us) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET as_of_us = max(as_of_us, excluded.as_of_us)",
                (as_of_us,),
            )
            if not events:
                return None
            delivery = {
                "delivery_id": uuid.uuid4().hex,
                "report_id": report_id,
                "as_of_us": as_of_us,
                "created_us": _now_us(),
                "status": "Pending",
                "attempts": 0,
                "last_attempt_us": None,
                "http_status": None,
                "error": None,
                "events": len(events),
                "body": database.alert_body(report_id, as_of_us, events),
            }
            write.execute(
                f"INSERT INTO {DELIVERIES} ({DELIVERY_COLUMNS}) VALUES ({', '.join('?' * len(delivery))})",
                [sqlite3.Binary(value) if key == "body" else value for key, value in delivery.items()],
            )
            write.execute(
                f"DELETE FROM {DELIVERIES} WHERE status != 'Pending' AND delivery_id IN (SELECT delivery_id "
                f"FROM {DELIVERIES} ORDER BY created_us DESC, delivery_id DESC LIMIT -1 OFFSET ?)",
                (DELIVERIES_KEPT,),
            )
        return self._delivery(tuple(delivery.values()))

    def update_delivery(self, delivery_id: str, status: str, attempts: int, error: str | None, http_status) -> None:
        if status not in DELIVERY_STATUSES:
            raise ValueError(f"a delivery's status is one of {', '.join(DELIVERY_STATUSES)}, not {status!r}")
        with self._write() as write:
            write.execute(
                f"UPDATE {DELIVERIES} SET status = ?, attempts = ?, error = ?, http_status = ?, last_attempt_us = ? "
                "WHERE delivery_id = ?",
                (
                    status,
                    int(attempts),
                    error,
                    None if http_status is None else int(http_status),
                    _now_us(),
                    delivery_id,
                ),
            )

    def pending_deliveries(self, older_than_us: int) -> list[dict]:
        rows = (
            self._connection()
            .execute(
                f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERIES} "
                "WHERE status = 'Pending' AND coalesce(last_attempt_us, created_us) < ? "
                "ORDER BY created_us, delivery_id",
                (int(older_than_us),),
            )
            .fetchall()
        )
        return [self._delivery(row) for row in rows]

    def list_deliveries(self, limit: int = 50) -> list[dict]:
        rows = (
            self._connection()
            .execute(
                f"SELECT {LISTED_DELIVERY_COLUMNS} FROM {DELIVERIES} "
                "ORDER BY created_us DESC, delivery_id DESC LIMIT ?",
                (max(int(limit), 0),),
            )
            .fetchall()
        )
        return [self._delivery(row) for row in rows]

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
                write.execute(
                    "INSERT OR REPLACE INTO leases (holder, mode, expires_us) VALUES (?, 'write', ?)", (holder, expires)
                )
                return True
            if "waiting" not in modes:  # first writer in line: new readers now wait behind it
                write.execute(
                    "INSERT OR REPLACE INTO leases (holder, mode, expires_us) VALUES (?, 'waiting', ?)",
                    (holder, expires),
                )
            return False

    def _renew_lease(self, mode: str, holder: str) -> bool:
        expires = _now_us() + database.LEASE_SECONDS * 1_000_000
        with self._write() as write:
            return (
                write.execute(
                    "UPDATE leases SET expires_us = ? WHERE holder = ? AND mode = ?", (expires, holder, mode)
                ).rowcount
                == 1
            )

    def _release_lease(self, mode: str, holder: str) -> None:
        with self._write() as write:
            write.execute("DELETE FROM leases WHERE holder = ?", (holder,))
