"""Reading and validating the three input CSV files (SPEC §2), with no database.

Both the MongoDB loader (`database.py`) and the report's CSV mode
(`reportGenerator.py --data-dir`) read files through here, so a row means the
same thing on either path.  Each reader returns a `Parsed`: the good rows as a
typed frame (with their 1-based file line numbers) and one `Reject` per bad
row, so `len(frame) + len(rejects) == rows_read`.

Files are parsed by pyarrow's multi-threaded CSV reader and checked with
Arrow compute kernels, column by column, so a 2-million-row file takes about a
second; Python touches only the rejected rows.  A file pyarrow cannot read
(bytes that are not UTF-8, for one) is read again line by line with the `csv`
module, with the same checks.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

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


def _parse_header(first_line: str) -> list[str]:
    """The column names of a header line, normalised ([] when it is not even CSV)."""
    try:
        return _normalise_header(next(csv.reader([first_line.lstrip("\ufeff")]), []))
    except csv.Error:
        return []


def _arrow_string_options(file: str, header: list[str], on_invalid_row):
    """pyarrow parse and convert options that read the expected columns as strings, with every
    physical line a row (blank ones too) and ragged rows handed to `on_invalid_row`."""
    names = [name if name not in header[:i] else f"_dup{i}" for i, name in enumerate(header)]
    parse = pa_csv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=on_invalid_row)
    convert = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        include_columns=COLUMNS[file],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return names, parse, convert


def _check_header(file: str, header: list[str], raw_header: str) -> None:
    expected = COLUMNS[file]
    missing = [c for c in expected if c not in header]
    if missing:
        raise HeaderError(
            f"{file}: wrong header {raw_header[:200]!r}: expected columns {','.join(expected)} "
            f"(missing {', '.join(missing)}); check the file and its delimiter (comma)"
        )
    duplicated = sorted({c for c in header if header.count(c) > 1 and c in expected})
    if duplicated:
        raise HeaderError(f"{file}: header {raw_header[:200]!r} names {', '.join(duplicated)} more than once")


@dataclass
class RawRows:
    """A file's data rows: one Arrow string array per expected column (null = field absent),
    each row's line number, and structural problems by row position."""

    columns: dict[str, pa.ChunkedArray | pa.Array]
    line: np.ndarray
    problems: dict[int, str]
    plain_ascii: bool = False  # no control or non-ASCII bytes anywhere: printable checks can be skipped

    def __len__(self) -> int:
        return len(self.line)


def _physical_lines(data: bytes) -> int:
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _raw_rows_arrow(file: str, data: bytes, header: list[str]) -> RawRows | None:
    """Read with pyarrow; None when it cannot (then the line-by-line reader takes over)."""
    expected = COLUMNS[file]
    invalid: list[tuple[int | None, str, int]] = []

    def on_invalid_row(row) -> str:
        invalid.append((row.number, row.text, row.actual_columns))
        return "skip"

    names, parse_options, convert_options = _arrow_string_options(file, header, on_invalid_row)

    def read(threads: bool) -> pa.Table:
        invalid.clear()
        return pa_csv.read_csv(
            pa.BufferReader(data),  # zero-copy: no Python file reads
            read_options=pa_csv.ReadOptions(skip_rows=1, column_names=names, use_threads=threads, block_size=1 << 24),
            parse_options=parse_options,
            convert_options=convert_options,
        )

    try:
        table = read(threads=True)
        if invalid and any(number is None for number, _, _ in invalid):
            table = read(threads=False)  # only a single-threaded read knows invalid rows' line numbers
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    data_lines = _physical_lines(data) - 1
    if table.num_rows + len(invalid) != data_lines or any(n is None for n, _, _ in invalid):
        return None
    bad_lines = {number for number, _, _ in invalid}
    if bad_lines:
        all_lines = np.arange(2, data_lines + 2)
        line = all_lines[~np.isin(all_lines, list(bad_lines))]
    else:
        line = np.arange(2, table.num_rows + 2)
    columns = {name: table.column(name) for name in expected}
    raw = RawRows(columns, line.astype(np.int64), {})
    if invalid:
        # rows pyarrow skipped join the table as all-null rows, so every line is accounted for
        nulls = pa.nulls(len(invalid), pa.string())
        raw = RawRows(
            {name: pa.chunked_array(columns[name].chunks + [nulls], pa.string()) for name in expected},
            np.concatenate([raw.line, np.array([n for n, _, _ in invalid], dtype=np.int64)]),
            {
                table.num_rows + i: _shape_problem(header, expected, text, count)
                for i, (_, text, count) in enumerate(invalid)
            },
        )
    return raw


def _shape_problem(header: list[str], expected: list[str], text: str, count: int) -> str:
    if not text.strip():
        return "blank line"
    if count > len(header):
        return f"expected {len(header)} fields, found {count}"
    absent = [name for name in header[count:] if name in expected]
    return f"missing column {absent[0]}" if absent else f"expected {len(header)} fields, found {count}"


def _raw_rows_python(file: str, text: str, header: list[str]) -> RawRows:
    """Line-by-line reading that survives anything: undecodable bytes, quoted newlines, ragged rows."""
    expected = COLUMNS[file]
    positions = {name: header.index(name) for name in expected}
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    values: dict[str, list] = {name: [] for name in expected}
    lines, problems = [], {}
    line = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            fields, problem = None, f"unreadable CSV row: {error}"
        else:
            problem = ""
            if any("\udc80" <= ch <= "\udcff" for value in fields for ch in value):
                problem = "row is not valid UTF-8 text"
            elif len(fields) != len(header):  # ragged or blank: worded as the Arrow reader words it
                problem = _shape_problem(header, expected, ",".join(fields), len(fields))
        if problem:
            problems[len(lines)] = problem
        for name in expected:
            position = positions[name]
            values[name].append(None if problem or position >= len(fields) else fields[position])
        lines.append(line)
        line = reader.line_num + 1
    columns = {name: pa.array(values[name], type=pa.string()) for name in expected}
    return RawRows(columns, np.array(lines, dtype=np.int64), problems)


def raw_rows(file: str, source: Source) -> RawRows:
    """Every data row of `file` as strings, with its line number and any structural problem."""
    data = _read_bytes(source)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data[:4096].strip(b" \t\r\n") and not data.strip(b" \t\r\n"):
        raise HeaderError(f"{file}: the file is empty; expected the header {','.join(COLUMNS[file])}")
    end_of_header = data.find(b"\n")
    first_line = data[: end_of_header if end_of_header >= 0 else len(data)].decode("utf-8", errors="replace").rstrip("\r")
    header = _parse_header(first_line)
    _check_header(file, header, first_line)
    plain_ascii = _plain_ascii(data)
    raw = _raw_rows_arrow(file, data, header) if plain_ascii or _is_utf8(data) else None
    if raw is None:
        raw = _raw_rows_python(file, data.decode("utf-8", errors="surrogateescape"), header)
    raw.plain_ascii = plain_ascii
    return raw


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_PLAIN_BYTES = bytes(range(32, 127)) + b"\t\n\r"


def _plain_ascii(data: bytes) -> bool:
    """True when the bytes hold no control character (but tab and line ends) and nothing beyond ASCII."""
    return not data.translate(None, _PLAIN_BYTES)


# --------------------------------------------------------------------------- checking columns


class Checker:
    """Runs checks in order over a file's rows; a row's first failed check is its reason."""

    def __init__(self, parsed: Parsed, raw: RawRows):
        self.parsed, self.raw = parsed, raw
        self.ok = np.ones(len(raw), dtype=bool)
        self.reasons: dict[int, str] = dict(raw.problems)
        if raw.problems:
            self.ok[list(raw.problems)] = False
        for name, column in raw.columns.items():
            self.fail(_mask(pc.is_null(column)), lambda i, name=name: f"missing column {name}")

    def fail(self, mask: np.ndarray, reason) -> None:
        """Reject the rows still good where `mask` holds; `reason(i)` words it for row i."""
        newly = np.flatnonzero(self.ok & mask)
        for i in newly[:MAX_REJECTS_KEPT]:
            self.reasons[int(i)] = reason(int(i))
        for i in newly[MAX_REJECTS_KEPT:]:
            self.reasons[int(i)] = "rejected (reason not kept: too many rejects)"
        self.ok &= ~mask

    def value(self, name: str, i: int) -> str:
        return _quote(self.raw.columns[name][i].as_py())

    def good(self, array):
        return array if self.ok.all() else pc.filter(array, pa.array(self.ok))

    def trimmed(self, name: str):
        return _trimmed(self.raw.columns[name])

    def finish(self) -> np.ndarray:
        rows = sorted(self.reasons)
        self.parsed.reject(self.raw.line[rows], [self.reasons[i] for i in rows])
        return self.raw.line[self.ok]


def _mask(array) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _blank_rows(raw: RawRows, candidates: np.ndarray) -> np.ndarray:
    """Which of the candidate rows have nothing but white space in every field."""
    blank = candidates.copy()
    rows = np.flatnonzero(candidates)
    if rows.size:
        for column in raw.columns.values():
            fields = _trimmed(column.take(pa.array(rows)))
            blank[rows] &= _mask(pc.equal(fields, ""))
    return blank


def _trimmed(array):
    """Fields without surrounding white space (and "" for absent ones)."""
    if array.null_count:
        array = pc.fill_null(array, "")
    # trimming copies every string: look first, since clean exports have nothing to trim
    padded = not pc.all(pc.string_is_ascii(array)).as_py() or any(
        pc.any(edge(array, blank)).as_py() for edge in (pc.starts_with, pc.ends_with) for blank in (" ", "\t")
    )
    return pc.utf8_trim_whitespace(array) if padded else array


def _check_store_ids(check: Checker) -> pa.Array:
    store_id = check.trimmed("store_id")
    empty = _mask(pc.equal(store_id, ""))
    check.fail(_blank_rows(check.raw, empty), lambda i: "blank line")
    check.fail(empty, lambda i: "missing store_id")
    check.fail(_mask(pc.greater(pc.utf8_length(store_id), MAX_STORE_ID_LENGTH)),
               lambda i: f"store_id longer than {MAX_STORE_ID_LENGTH} characters")
    if not check.raw.plain_ascii:
        check.fail(~_mask(pc.utf8_is_printable(store_id)), lambda i: "store_id has control characters")
    return store_id


def _quote(value) -> str:
    text = "" if value is None else str(value)
    return repr(text if len(text) <= 40 else text[:40] + "...")




def parse_timestamps_us(values) -> np.ndarray:
    """Microseconds since the epoch (int64; INT64_MIN where unparseable) for UTC timestamp strings.

    Accepts `2023-01-22 12:09:39.388884 UTC` and ISO 8601 with `Z`, an offset,
    or no zone (taken as UTC).  Arrow parses the usual forms in one pass;
    pandas takes the rest.
    """
    text = _trimmed(values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string()))
    if len(text) and pc.all(pc.ends_with(text, " UTC")).as_py():
        plain = pc.utf8_slice_codeunits(text, 0, -4)
    else:
        plain = pc.replace_substring_regex(text, r"\s*(?i:UTC|GMT)$", "")
    for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return _in_datetime_range(pc.cast(plain, target).cast(pa.int64()).to_numpy(zero_copy_only=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    cleaned = pd.Series(plain.to_numpy(zero_copy_only=False), dtype=object)
    iso_like = cleaned.str.fullmatch(r"\d{4}-\d{2}-\d{2}(?:[T ][0-9:.,+\-Zz]*)?").fillna(False).astype(bool)
    parsed = pd.to_datetime(cleaned.where(iso_like), format="ISO8601", errors="coerce", utc=True)
    result = np.full(len(cleaned), np.iinfo(np.int64).min, dtype=np.int64)
    ok = parsed.notna().to_numpy()
    result[ok] = parsed[ok].dt.as_unit("us").dt.tz_convert(None).to_numpy().astype(np.int64)
    return _in_datetime_range(result)


_FIRST_US, _LAST_US = -62135596800000000, 253402300799999999  # 0001-01-01 and 9999-12-31T23:59:59.999999 UTC


def _in_datetime_range(stamps: np.ndarray) -> np.ndarray:
    """Instants a Python datetime (and BSON) can hold; the others count as unparseable."""
    stamps = np.array(stamps, dtype=np.int64)
    stamps[(stamps < _FIRST_US) | (stamps > _LAST_US)] = np.iinfo(np.int64).min
    return stamps


_TIME_OF_DAY = r"^(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?$"


def parse_time_of_day(values) -> np.ndarray:
    """Seconds after midnight (int64; -1 where not a valid `HH:MM:SS` or `HH:MM`)."""
    text = _trimmed(values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), pa.string()))
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    matched = _mask(pc.match_substring_regex(text, _TIME_OF_DAY))
    result = np.full(len(text), -1, dtype=np.int64)
    if not matched.any():
        return result
    parts = pc.extract_regex(text.filter(pa.array(matched)), _TIME_OF_DAY)

    def number(field: str) -> np.ndarray:
        digits = parts.field(field)
        return pc.cast(pc.if_else(pc.equal(digits, ""), "0", digits), pa.int64()).to_numpy(zero_copy_only=False)

    hours, minutes, seconds = number("h"), number("m"), number("s")
    valid = (hours < 24) & (minutes < 60) & (seconds < 60)
    result[np.flatnonzero(matched)[valid]] = (hours * 3600 + minutes * 60 + seconds)[valid]
    return result


def _last_occurrences(frame: pd.DataFrame, key: list[str]) -> np.ndarray:
    """True for each row that is the last of its key in file order."""
    if key == ["store_id", "timestamp_us"] and len(frame):
        codes, uniques = pd.factorize(frame["store_id"])
        stamps = frame["timestamp_us"].to_numpy()
        low, span = int(stamps.min()), int(stamps.max()) - int(stamps.min()) + 1
        if len(uniques) * span < 2**62:
            packed = codes.astype(np.int64) * span + (stamps - low)
            ordered = np.sort(packed)  # much faster than hashing; most files have no repeats at all
            if not (ordered[1:] == ordered[:-1]).any():
                return np.ones(len(frame), dtype=bool)
            return ~pd.Series(packed).duplicated(keep="last").to_numpy()
    return ~frame.duplicated(subset=key, keep="last").to_numpy()


def _later_row_wins(parsed: Parsed, frame: pd.DataFrame, key: list[str], value: list[str], what: str) -> pd.DataFrame:
    """Keep the last row of each key; report earlier ones as duplicates or as overridden."""
    last = _last_occurrences(frame, key)
    if last.all():
        return frame
    winners = frame[last].set_index(key)
    earlier = frame[~last]
    winner = winners.loc[pd.MultiIndex.from_frame(earlier[key]) if len(key) > 1 else earlier[key[0]]]
    same = np.ones(len(earlier), dtype=bool)
    for column in value:
        same &= earlier[column].to_numpy() == winner[column].to_numpy()
    parsed.reject(
        earlier["line"],
        [
            f"duplicate of line {w} (same {what})" if s else f"overridden by line {w} (same {what}, later row wins)"
            for s, w in zip(same, winner["line"].to_numpy())
        ],
    )
    return frame[last]


# --------------------------------------------------------------------------- the three files


def _start(file: str, source: Source, label: str) -> tuple[Parsed, Checker]:
    raw = raw_rows(file, source)
    parsed = Parsed(file=label, frame=pd.DataFrame(), rows_read=len(raw))
    return parsed, Checker(parsed, raw)


def _strings_of(array) -> pd.Series:
    """Arrow strings as a pandas string Series (Arrow-backed where pandas can: no copy)."""
    return array.to_pandas()


def read_store_status(source: Source, file: str = STATUS_FILE) -> Parsed:
    """Polls: `store_id` (categorical), `timestamp_us` (int64), `active` (bool), `line`.

    A large file on disk is read block by block, so memory grows with the polls
    kept (about 20 bytes each) rather than with the file; anything that path
    cannot vouch for line by line is read whole instead.  Smaller files are read
    whole: one multi-threaded read is faster.
    """
    if isinstance(source, (str, Path)) and Path(source).stat().st_size > STATUS_WHOLE_FILE_BYTES:
        parsed = _read_store_status_in_blocks(Path(source), file)
        if parsed is not None:
            return parsed
    parsed, check = _start(STATUS_FILE, source, file)
    parsed.frame = _polls_frame(parsed, [_check_polls(check)])
    return parsed


def _check_polls(check: Checker) -> dict:
    """Run the poll checks on one block of rows; returns its good rows (store ids still strings)."""
    store_id = _check_store_ids(check)
    status = pc.utf8_lower(check.trimmed("status"))
    check.fail(~_mask(pc.is_in(status, pa.array(["active", "inactive"]))),
               lambda i: f"unknown status {check.value('status', i)} (expected active or inactive)")
    stamp = np.full(len(check.raw), np.iinfo(np.int64).min, dtype=np.int64)
    stamp[check.ok] = parse_timestamps_us(check.good(check.raw.columns["timestamp_utc"]))
    check.fail(stamp == np.iinfo(np.int64).min, lambda i: f"unparseable timestamp {check.value('timestamp_utc', i)}")
    line = check.finish()
    return {
        "store_id": check.good(store_id),
        "timestamp_us": stamp[check.ok],
        "active": _mask(pc.equal(check.good(status), "active")),
        "line": line,
    }


def _polls_frame(parsed: Parsed, blocks: list[dict]) -> pd.DataFrame:
    """One frame of all blocks' good polls, store ids as a categorical in store_id order."""
    catalog: dict[str, int] = {}
    code_parts = []
    for block in blocks:
        local_codes, local_ids = pd.factorize(block["store_id"].to_pandas())
        to_global = np.array([catalog.setdefault(store, len(catalog)) for store in local_ids], dtype=np.int32)
        code_parts.append(to_global[local_codes] if len(local_codes) else np.empty(0, np.int32))
        block["store_id"] = None  # the strings of this block are no longer needed
    names = np.array(list(catalog), dtype=object)
    order = np.argsort(names, kind="stable")
    rank = np.empty(len(names), dtype=np.int32)
    rank[order] = np.arange(len(names), dtype=np.int32)
    codes = rank[np.concatenate(code_parts)] if code_parts else np.empty(0, np.int32)
    frame = pd.DataFrame(
        {
            "store_id": pd.Categorical.from_codes(codes, categories=pd.Index(names[order], dtype=object)),
            "timestamp_us": np.concatenate([b["timestamp_us"] for b in blocks]),
            "active": np.concatenate([b["active"] for b in blocks]),
            "line": np.concatenate([b["line"] for b in blocks]),
        }
    )
    frame = _later_row_wins(parsed, frame, ["store_id", "timestamp_us"], ["active"], "store_id and timestamp")
    return frame.reset_index(drop=True)


STATUS_BLOCK_BYTES = 1 << 25  # 32 MB of CSV text per block
STATUS_WHOLE_FILE_BYTES = 1 << 27  # files up to 128 MB (about 2 million polls) are read in one go


def _scan_file(path: Path) -> tuple[int, bool, bytes]:
    """Physical line count, whether the bytes are plain printable ASCII, and the first 64 KB."""
    lines, plain, head, last = 0, True, b"", b""
    with path.open("rb") as handle:
        while chunk := handle.read(STATUS_BLOCK_BYTES):
            if not head:
                head = chunk[:65536]
            lines += chunk.count(b"\n")
            plain = plain and _plain_ascii(chunk)
            last = chunk[-1:]
    if last and last != b"\n":
        lines += 1
    return lines, plain, head


def _read_store_status_in_blocks(path: Path, file: str) -> Parsed | None:
    """The block-by-block reader; None when the file needs the whole-file reader."""
    lines, plain, head = _scan_file(path)
    if not plain or not head:
        return None  # undecodable or unusual bytes, or an empty file: the careful reader says why
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    first_line = body.split(b"\n", 1)[0].decode("ascii").rstrip("\r")
    header = _parse_header(first_line)
    _check_header(STATUS_FILE, header, first_line)
    invalid = []

    def on_invalid_row(row) -> str:
        invalid.append(row)
        return "skip"

    names, parse_options, convert_options = _arrow_string_options(STATUS_FILE, header, on_invalid_row)
    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(skip_rows=1, column_names=names, block_size=STATUS_BLOCK_BYTES),
        parse_options=parse_options,
        convert_options=convert_options,
    )
    parsed = Parsed(file=file, frame=pd.DataFrame())
    blocks, first_line_number = [], 2
    for batch in reader:
        if invalid:
            return None  # a ragged row: only the whole-file readers know its line number
        raw = RawRows({name: batch.column(name) for name in COLUMNS[STATUS_FILE]},
                      np.arange(first_line_number, first_line_number + batch.num_rows, dtype=np.int64), {})
        raw.plain_ascii = True
        blocks.append(_check_polls(Checker(parsed, raw)))
        first_line_number += batch.num_rows
    parsed.rows_read = first_line_number - 2
    if invalid or parsed.rows_read != lines - 1:
        return None  # rows and lines do not match up (quoted line breaks): line numbers would be wrong
    parsed.frame = _polls_frame(parsed, blocks)
    return parsed


def read_menu_hours(source: Source, file: str = HOURS_FILE) -> Parsed:
    """Business hours: `store_id`, `day`, `start_s`, `end_s` (seconds after midnight), `line`."""
    parsed, check = _start(HOURS_FILE, source, file)
    store_id = _check_store_ids(check)
    day_text = check.trimmed("day")
    is_day = _mask(pc.match_substring_regex(day_text, r"^[0-6]$"))
    check.fail(~is_day, lambda i: f"day {check.value('day', i)} is not 0-6 (0 = Monday ... 6 = Sunday)")
    day = np.zeros(len(check.raw), dtype=np.int64)
    day[is_day] = pc.cast(pc.filter(day_text, pa.array(is_day)), pa.int64()).to_numpy()
    seconds = {}
    for column in ("start_time_local", "end_time_local"):
        seconds[column] = parse_time_of_day(check.raw.columns[column])
        check.fail(seconds[column] < 0,
                   lambda i, c=column: f"bad time {check.value(c, i)} in {c} (expected HH:MM:SS)")
    line = check.finish()
    frame = pd.DataFrame(
        {
            "store_id": _strings_of(check.good(store_id)),
            "day": day[check.ok],
            "start_s": seconds["start_time_local"][check.ok],
            "end_s": seconds["end_time_local"][check.ok],
            "line": line,
        }
    )
    frame = _later_row_wins(parsed, frame, ["store_id", "day", "start_s", "end_s"], [], "store, day and hours")
    parsed.frame = frame.reset_index(drop=True)
    return parsed


def hms(seconds: int) -> str:
    """`HH:MM:SS` for seconds after midnight."""
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def read_timezones(source: Source, file: str = ZONES_FILE) -> Parsed:
    """Zones: `store_id`, `timezone_str`, `line` (one row per store, the later row wins)."""
    parsed, check = _start(ZONES_FILE, source, file)
    store_id = _check_store_ids(check)
    zone = check.trimmed("timezone_str")
    names = pc.unique(zone).to_pylist()
    valid_names = pa.array([name for name in names if utils.is_valid_timezone(name)], pa.string())
    check.fail(~_mask(pc.is_in(zone, valid_names)),
               lambda i: f"unknown timezone name {check.value('timezone_str', i)}")
    line = check.finish()
    frame = pd.DataFrame(
        {"store_id": _strings_of(check.good(store_id)), "timezone_str": _strings_of(check.good(zone)), "line": line}
    )
    frame = _later_row_wins(parsed, frame, ["store_id"], ["timezone_str"], "store_id")
    parsed.frame = frame.reset_index(drop=True)
    return parsed


READERS = {STATUS_FILE: read_store_status, HOURS_FILE: read_menu_hours, ZONES_FILE: read_timezones}


def detect_file(header_line: str) -> str | None:
    """Which of the three files a header line belongs to, or None."""
    header = _parse_header(header_line)
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
