"""Reading and validating the three input CSV files (SPEC §2), with no database.

Both the MongoDB loader (`database.py`) and the report's CSV mode
(`reportGenerator.py --data-dir`) read files through here, so a row means the
same thing on either path.  Each reader returns a `Parsed`: the good rows as a
typed frame (with their 1-based file line numbers) and one `Reject` per bad
row, so `len(frame) + len(rejects) == rows_read`.

Files are parsed by pandas' C reader when every physical line is one row (the
common, fast case) and by the `csv` module, line by line, when they are not
(quoted newlines, ragged rows, bytes that are not UTF-8).
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import pandas as pd

import utils

STATUS_FILE = "store_status.csv"
HOURS_FILE = "menu_hours.csv"
ZONES_FILE = "timezones.csv"
FILES = (STATUS_FILE, HOURS_FILE, ZONES_FILE)

COLUMNS = {
    STATUS_FILE: ["store_id", "status", "timestamp_utc"],
    HOURS_FILE: ["store_id", "day", "start_time_local", "end_time_local"],
    ZONES_FILE: ["store_id", "timezone_str"],
}
HEADER_ALIASES = {"dayofweek": "day"}
MAX_STORE_ID_LENGTH = 64
MAX_REJECTS_KEPT = 100_000  # beyond this only the count grows, so a hostile file cannot exhaust memory

Source = Union[str, Path, bytes, BinaryIO]


class HeaderError(ValueError):
    """The file's header is not the one expected: the whole file is rejected."""


@dataclass
class Reject:
    file: str
    line: int
    reason: str

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass
class Parsed:
    """Good rows of one file and why the others were turned away."""

    file: str
    frame: pd.DataFrame
    rows_read: int = 0
    rejects: list[Reject] = field(default_factory=list)
    rejected: int = 0
    notes: list[str] = field(default_factory=list)

    def reject(self, lines, reasons) -> None:
        lines, reasons = list(lines), list(reasons)
        self.rejected += len(lines)
        room = MAX_REJECTS_KEPT - len(self.rejects)
        for line, reason in list(zip(lines, reasons))[: max(room, 0)]:
            self.rejects.append(Reject(self.file, int(line), reason))

    def summary(self, first: int = 20) -> dict:
        rejects = sorted(self.rejects, key=lambda r: r.line)
        return {
            "file": self.file,
            "rows_read": self.rows_read,
            "loaded": len(self.frame),
            "rejected": self.rejected,
            "rejects": [r.as_dict() for r in rejects[:first]],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- raw reading


def _read_bytes(source: Source) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    return source.read()


def _normalise_header(names) -> list[str]:
    cleaned = []
    for name in names:
        key = str(name).strip().strip('"').strip().lower()
        cleaned.append(HEADER_ALIASES.get(key, key))
    return cleaned


def _check_header(file: str, header: list[str], raw_header: str) -> None:
    expected = COLUMNS[file]
    missing = [c for c in expected if c not in header]
    if missing:
        raise HeaderError(
            f"{file}: wrong header {raw_header!r}: expected columns {','.join(expected)} "
            f"(missing {', '.join(missing)}); check the file and its delimiter (comma)"
        )
    duplicated = sorted({c for c in header if header.count(c) > 1 and c in expected})
    if duplicated:
        raise HeaderError(f"{file}: header {raw_header!r} names {', '.join(duplicated)} more than once")


def _raw_rows_fast(file: str, data: bytes) -> pd.DataFrame | None:
    """All fields as strings plus `line`, via pandas; None when lines and rows may not match up."""
    text_start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    if b'"' in data or b"\r" in data.replace(b"\r\n", b""):
        return None  # quoted fields or bare CRs can move rows off their lines
    try:
        frame = pd.read_csv(
            io.BytesIO(data[text_start:]),
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8",
            engine="c",
            on_bad_lines="error",
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError):
        return None
    lines = data[text_start:].count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if len(frame) + 1 != lines:
        return None
    frame.columns = _normalise_header(frame.columns)
    _check_header(file, list(frame.columns), data[text_start:].split(b"\n", 1)[0].decode("utf-8", "replace").strip())
    # pandas pads short rows with "", which would hide a missing column: count each line's fields
    fields = _fields_per_line(data[text_start:])[1 : len(frame) + 1]
    frame = frame.astype(object)
    for position in range(frame.shape[1]):
        frame.iloc[fields <= position, position] = None
    frame["line"] = np.arange(2, len(frame) + 2)
    frame["_problem"] = ""
    return frame


def _fields_per_line(data: bytes) -> np.ndarray:
    """Number of comma-separated fields on each line of unquoted CSV bytes."""
    raw = np.frombuffer(data, dtype=np.uint8)
    line_ends = np.flatnonzero(raw == ord("\n"))
    if raw.size and raw[-1] != ord("\n"):
        line_ends = np.append(line_ends, raw.size)
    commas = np.flatnonzero(raw == ord(","))
    per_line = np.diff(np.searchsorted(commas, line_ends), prepend=0)
    return per_line + 1


def _raw_rows_slow(file: str, data: bytes) -> pd.DataFrame:
    """Row-by-row reading that survives ragged rows, quoted newlines and undecodable bytes."""
    text = data.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        raw_header = next(reader)
    except StopIteration:
        raise HeaderError(f"{file}: the file is empty; expected the header {','.join(COLUMNS[file])}") from None
    header = _normalise_header(raw_header)
    _check_header(file, header, ",".join(raw_header))
    records, lines, problems = [], [], []
    line = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            fields, problem = [], f"unreadable CSV row: {error}"
        else:
            problem = ""
        if not problem:
            if any("\udc80" <= ch <= "\udcff" for value in fields for ch in value):
                problem = "row is not valid UTF-8 text"
            elif len(fields) > len(header):
                problem = f"expected {len(header)} fields, found {len(fields)}"
        record = dict(zip(header, fields)) if not problem else {}
        records.append(record)
        lines.append(line)
        problems.append(problem)
        line = reader.line_num + 1
    frame = pd.DataFrame.from_records(records, columns=header) if records else pd.DataFrame(columns=header)
    frame = frame.astype(object)
    frame["line"] = np.array(lines, dtype=np.int64)
    frame["_problem"] = problems
    return frame


def raw_rows(file: str, source: Source) -> pd.DataFrame:
    """Every data row of `file` as strings, with its line number and any structural problem."""
    data = _read_bytes(source)
    if not data.strip(b"\xef\xbb\xbf \t\r\n"):
        raise HeaderError(f"{file}: the file is empty; expected the header {','.join(COLUMNS[file])}")
    frame = _raw_rows_fast(file, data)
    if frame is None:
        frame = _raw_rows_slow(file, data)
    columns = COLUMNS[file]
    for column in columns:
        if column not in frame:
            frame[column] = None
    return frame[columns + ["line", "_problem"]]


# --------------------------------------------------------------------------- field checks


def _strings(values: pd.Series) -> pd.Series:
    return values.astype("string").str.strip()


def _store_id_problems(store_ids: pd.Series) -> pd.Series:
    problems = pd.Series("", index=store_ids.index, dtype=object)
    missing = store_ids.isna() | (store_ids == "")
    problems[missing] = "missing store_id"
    too_long = ~missing & (store_ids.str.len() > MAX_STORE_ID_LENGTH)
    problems[too_long] = f"store_id longer than {MAX_STORE_ID_LENGTH} characters"
    unprintable = ~missing & ~too_long & ~store_ids.map(lambda v: isinstance(v, str) and v.isprintable()).astype(bool)
    problems[unprintable] = "store_id has control characters"
    return problems


def _quote(value) -> str:
    text = "" if value is None or value is pd.NA else str(value)
    return repr(text if len(text) <= 40 else text[:40] + "...")


_FAST_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f UTC"
_UTC_SUFFIX = re.compile(r"\s*(?:UTC|GMT)$", re.IGNORECASE)


def parse_timestamps_us(values: pd.Series) -> pd.Series:
    """Microseconds since the epoch (Int64, <NA> when unparseable) for UTC timestamp strings.

    Accepts `2023-01-22 12:09:39.388884 UTC` (fast path) and ISO 8601 with
    `Z`, an offset, or no zone (taken as UTC).
    """
    text = values.astype("string").str.strip()
    parsed = pd.to_datetime(text, format=_FAST_TIMESTAMP, errors="coerce", utc=True)
    retry = parsed.isna() & text.notna() & (text != "")
    if retry.any():
        cleaned = text[retry].str.replace(_UTC_SUFFIX, "", regex=True).str.replace(" ", "T", n=1, regex=False)
        cleaned = cleaned.where(cleaned.str.fullmatch(r"\d{4}-\d{2}-\d{2}[T0-9:.,+\-Zz]*").fillna(False))
        parsed[retry] = pd.to_datetime(cleaned, format="ISO8601", errors="coerce", utc=True)
    result = pd.Series(pd.NA, index=values.index, dtype="Int64")
    ok = parsed.notna()
    epoch = pd.Timestamp(0, tz="UTC")
    result[ok] = (parsed[ok] - epoch) // pd.Timedelta(microseconds=1)
    return result


_TIME_OF_DAY = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_time_of_day(values: pd.Series) -> pd.Series:
    """Seconds after midnight (Int64, <NA> when not a valid `HH:MM:SS` or `HH:MM`)."""
    parts = values.astype("string").str.strip().str.extract(_TIME_OF_DAY)
    hours = pd.to_numeric(parts[0], errors="coerce")
    minutes = pd.to_numeric(parts[1], errors="coerce")
    seconds = pd.to_numeric(parts[2].fillna("0"), errors="coerce")
    valid = (hours < 24) & (minutes < 60) & (seconds < 60)
    return (hours * 3600 + minutes * 60 + seconds).where(valid).astype("Int64")


def _later_row_wins(parsed: Parsed, frame: pd.DataFrame, key: list[str], value: list[str], what: str) -> pd.DataFrame:
    """Keep the last row of each key; report earlier ones as duplicates or as overridden."""
    last = ~frame.duplicated(subset=key, keep="last")
    if last.all():
        return frame
    winners = frame[last].set_index(key)
    earlier = frame[~last]
    winner = winners.loc[pd.MultiIndex.from_frame(earlier[key]) if len(key) > 1 else earlier[key[0]]]
    same = np.ones(len(earlier), dtype=bool)
    for column in value:
        same &= earlier[column].to_numpy() == winner[column].to_numpy()
    winner_lines = winner["line"].to_numpy()
    parsed.reject(
        earlier["line"],
        [
            f"duplicate of line {w} (same {what})" if s else f"overridden by line {w} (same {what}, later row wins)"
            for s, w in zip(same, winner_lines)
        ],
    )
    return frame[last]


# --------------------------------------------------------------------------- the three files


def _start(file: str, source: Source) -> tuple[Parsed, pd.DataFrame, pd.Series]:
    raw = raw_rows(file, source)
    parsed = Parsed(file=file, frame=pd.DataFrame(), rows_read=len(raw))
    problems = raw["_problem"].astype(object).copy()
    blank = raw[COLUMNS[file]].isna().all(axis=1) | (
        raw[COLUMNS[file]].fillna("").astype(str).apply(lambda c: c.str.strip()) == ""
    ).all(axis=1)
    problems[(problems == "") & blank] = "blank line"
    for column in COLUMNS[file]:
        absent = (problems == "") & raw[column].isna()
        problems[absent] = f"missing column {column}"
    return parsed, raw, problems


def _reject_problems(parsed: Parsed, raw: pd.DataFrame, problems: pd.Series) -> None:
    bad = problems != ""
    parsed.reject(raw.loc[bad, "line"], problems[bad])


def read_store_status(source: Source, file: str = STATUS_FILE) -> Parsed:
    """Polls: `store_id`, `timestamp_us` (int64), `status`, `active`, `line`."""
    parsed, raw, problems = _start(STATUS_FILE, source)
    parsed.file = file
    store_id = _strings(raw["store_id"])
    status = _strings(raw["status"]).str.lower()
    stamp = parse_timestamps_us(raw["timestamp_utc"])
    ok = problems == ""
    id_problems = _store_id_problems(store_id)
    problems[ok & (id_problems != "")] = id_problems
    ok = problems == ""
    unknown = ok & ~status.isin(["active", "inactive"]).fillna(False)
    problems[unknown] = [f"unknown status {_quote(v)} (expected active or inactive)" for v in raw.loc[unknown, "status"]]
    ok = problems == ""
    bad_time = ok & stamp.isna()
    problems[bad_time] = [f"unparseable timestamp {_quote(v)}" for v in raw.loc[bad_time, "timestamp_utc"]]
    ok = problems == ""
    good = pd.DataFrame(
        {
            "store_id": store_id[ok].astype(object),
            "timestamp_us": stamp[ok].astype("int64"),
            "status": status[ok].astype(object),
            "line": raw.loc[ok, "line"].astype("int64"),
        }
    )
    _reject_problems(parsed, raw, problems)
    good = _later_row_wins(parsed, good, ["store_id", "timestamp_us"], ["status"], "store_id and timestamp")
    good["active"] = good["status"].to_numpy() == "active"
    parsed.frame = good.reset_index(drop=True)
    return parsed


def read_menu_hours(source: Source, file: str = HOURS_FILE) -> Parsed:
    """Business hours: `store_id`, `day`, `start_s`, `end_s`, the original time strings, `line`."""
    parsed, raw, problems = _start(HOURS_FILE, source)
    parsed.file = file
    store_id = _strings(raw["store_id"])
    day_text = _strings(raw["day"])
    day = pd.to_numeric(day_text.where(day_text.str.fullmatch(r"[+-]?\d{1,3}").fillna(False)), errors="coerce")
    start = parse_time_of_day(raw["start_time_local"])
    end = parse_time_of_day(raw["end_time_local"])
    id_problems = _store_id_problems(store_id)
    ok = problems == ""
    problems[ok & (id_problems != "")] = id_problems
    ok = problems == ""
    bad_day = ok & ~day.between(0, 6).fillna(False)
    problems[bad_day] = [f"day {_quote(v)} is not 0-6 (0 = Monday ... 6 = Sunday)" for v in raw.loc[bad_day, "day"]]
    for column, seconds in (("start_time_local", start), ("end_time_local", end)):
        ok = problems == ""
        bad = ok & seconds.isna()
        problems[bad] = [f"bad time {_quote(v)} in {column} (expected HH:MM:SS)" for v in raw.loc[bad, column]]
    ok = problems == ""
    good = pd.DataFrame(
        {
            "store_id": store_id[ok].astype(object),
            "day": day[ok].astype("int64"),
            "start_s": start[ok].astype("int64"),
            "end_s": end[ok].astype("int64"),
            "line": raw.loc[ok, "line"].astype("int64"),
        }
    )
    _reject_problems(parsed, raw, problems)
    good = _later_row_wins(parsed, good, ["store_id", "day", "start_s", "end_s"], [], "store, day and hours")
    good["start_time_local"] = [_hms(s) for s in good["start_s"]]
    good["end_time_local"] = [_hms(s) for s in good["end_s"]]
    parsed.frame = good.reset_index(drop=True)
    return parsed


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def read_timezones(source: Source, file: str = ZONES_FILE) -> Parsed:
    """Zones: `store_id`, `timezone_str`, `line` (one row per store, the later row wins)."""
    parsed, raw, problems = _start(ZONES_FILE, source)
    parsed.file = file
    store_id = _strings(raw["store_id"])
    zone = _strings(raw["timezone_str"])
    id_problems = _store_id_problems(store_id)
    ok = problems == ""
    problems[ok & (id_problems != "")] = id_problems
    ok = problems == ""
    known = {name: utils.is_valid_timezone(name) for name in zone[ok].dropna().unique()}
    bad_zone = ok & ~zone.map(lambda name: known.get(name, False) if isinstance(name, str) else False).astype(bool)
    problems[bad_zone] = [f"unknown timezone name {_quote(v)}" for v in raw.loc[bad_zone, "timezone_str"]]
    ok = problems == ""
    good = pd.DataFrame(
        {
            "store_id": store_id[ok].astype(object),
            "timezone_str": zone[ok].astype(object),
            "line": raw.loc[ok, "line"].astype("int64"),
        }
    )
    _reject_problems(parsed, raw, problems)
    good = _later_row_wins(parsed, good, ["store_id"], ["timezone_str"], "store_id")
    parsed.frame = good.reset_index(drop=True)
    return parsed


READERS = {STATUS_FILE: read_store_status, HOURS_FILE: read_menu_hours, ZONES_FILE: read_timezones}


def detect_file(header_line: str) -> str | None:
    """Which of the three files a header line belongs to, or None."""
    header = _normalise_header(next(csv.reader([header_line.lstrip("\ufeff")]), []))
    for file, columns in COLUMNS.items():
        if all(c in header for c in columns):
            return file
    return None


def read_data_dir(directory: str | Path) -> dict[str, Parsed]:
    """Parse the three files of a data folder (a missing file reads as having no rows)."""
    directory = Path(directory)
    parsed = {}
    for file, reader in READERS.items():
        path = directory / file
        if path.exists():
            parsed[file] = reader(path, file=str(path))
        else:
            empty = ",".join(COLUMNS[file]).encode() + b"\n"
            parsed[file] = reader(empty, file=str(path))
            parsed[file].notes.append(f"{path} not found: no rows")
    return parsed
