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

import collections
import csv
import datetime as dt
import io
import os
import time
import zoneinfo
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

import utils

if TYPE_CHECKING:
    import pandas as pd


def __getattr__(name: str):
    """`sources.pd`: pandas, imported on first use.  The readers import it where they make a frame, so
    `read_data_dir(..., polls_as_columns=True)` reads the polls without it (the command line's path)."""
    if name == "pd":
        import pandas

        return pandas
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
# a store id: ASCII letters, digits and - _ . : ; (so no spreadsheet formula can start with one but "-")
STORE_ID_PATTERN = r"^[A-Za-z0-9_.:;-]+$"
STORE_ID_CHARACTERS = "letters, digits and - _ . : ;"
MAX_HEADER_FIELDS = 64  # a header wider than this (or longer than MAX_HEADER_BYTES) is refused at once
MAX_HEADER_BYTES = 4096
MAX_LINE_BYTES = 1 << 20  # a single line longer than this rejects the file (it cannot be a real row)
MAX_REJECTS_KEPT = 1_000  # reasons kept per file; beyond this only the count grows
# a file is abandoned once it has more than REJECT_LIMIT rejected rows and they are more than
# REJECT_SHARE of the rows read so far: what comes next is not worth reading
REJECT_LIMIT = 10_000
REJECT_SHARE = 0.10
# 4 MB of CSV text per block when a file is streamed (8 MB: as quick at 1.5 M polls, in 30% more memory)
BLOCK_BYTES = 1 << 22
LARGE_FILE_BYTES = 1 << 28  # a file on disk from 256 MB on is streamed in blocks of twice BLOCK_BYTES
# a poll dated more than MAX_FUTURE_SECONDS (environment; default one day) after the server's clock, or before
# 2000, is rejected: one such row would otherwise move "now" of every default report (SPEC §2)
MAX_FUTURE_SECONDS_VARIABLE = "MAX_FUTURE_SECONDS"
DEFAULT_MAX_FUTURE_SECONDS = 86_400
EARLIEST_POLL_US = 946_684_800_000_000  # 2000-01-01 00:00:00 UTC
# zones zoneinfo can load that are no region of the IANA database: a host's own setting, a placeholder,
# a link kept for old code, and the copies of every zone under posix/ and right/ (the latter counting leap seconds)
NOT_REGION_ZONES = frozenset({"localtime", "Factory", "posixrules"})
NOT_REGION_ZONE_PREFIXES = ("posix/", "right/")

Source = str | Path | bytes | BinaryIO


class HeaderError(ValueError):
    """The whole file is rejected: its header is not the one expected (or too wide), or too many rows are bad."""


class TooManyRejects(HeaderError):
    """Reading stopped part-way: the file's rejected rows passed REJECT_LIMIT and REJECT_SHARE."""


@dataclass
class Reject:
    file: str
    line: int
    reason: str

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass
class Parsed:
    """Good rows of one file and why the others were turned away.

    `frame` holds the good rows; a polls file read with `polls_as_columns` has `columns` (a
    `PollColumns`) instead, and `frame` None.
    """

    file: str
    frame: pd.DataFrame | None
    rows_read: int = 0
    rejects: list[Reject] = field(default_factory=list)
    rejected: int = 0
    notes: list[str] = field(default_factory=list)
    columns: PollColumns | None = None

    @property
    def rows(self) -> int:
        """How many good rows were kept."""
        return len(self.columns.store) if self.columns is not None else len(self.frame)

    @property
    def room(self) -> int:
        """How many more reject reasons this file keeps."""
        return max(MAX_REJECTS_KEPT - len(self.rejects), 0)

    def reject(self, lines, reasons, count: int | None = None) -> None:
        """Count `count` (default: all `lines`) rejected rows; keep reasons only while there is room."""
        self.rejected += len(lines) if count is None else count
        for line, reason in zip(np.asarray(lines)[: self.room], reasons):
            self.rejects.append(Reject(self.file, int(line), reason))

    def check_reject_limit(self, last_line: int | None = None) -> None:
        """Stop reading (TooManyRejects) once the rejects pass REJECT_LIMIT and REJECT_SHARE of the rows read."""
        if self.rejected > REJECT_LIMIT and self.rejected > REJECT_SHARE * max(self.rows_read, 1):
            where = f" at line {last_line}" if last_line else ""
            first = "; ".join(f"line {r.line}: {r.reason}" for r in sorted(self.rejects, key=lambda r: r.line)[:3])
            raise TooManyRejects(
                f"{self.file}: stopped reading{where}: {self.rejected} of {self.rows_read} rows read were rejected "
                f"(more than {REJECT_LIMIT} and {REJECT_SHARE:.0%}), so the whole file is rejected and nothing "
                f"from it was loaded; first rejects: {first}"
            )

    def summary(self, first: int = 20) -> dict:
        rejects = sorted(self.rejects, key=lambda r: r.line)
        return {
            "file": self.file,
            "rows_read": self.rows_read,
            "loaded": self.rows,
            "rejected": self.rejected,
            "rejects": [r.as_dict() for r in rejects[:first]],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- Arrow arrays without pandas
# pyarrow (25) imports pandas the first time an array is made from Python or numpy values (pa.array, or a
# Python value given to a compute function) or turned into a numpy array (to_numpy).  The polls are read and
# checked without either, from the arrays' buffers, so the command line's threads read them while another
# imports pandas (0.3 s of CPU) instead of all waiting for it (docs/performance.md).


def _numbers(array) -> np.ndarray:
    """An Arrow array or chunked array of integers or booleans with no nulls, as numpy (read-only for
    integers: a view of the Arrow buffer)."""
    if isinstance(array, pa.ChunkedArray):
        parts = [_numbers(chunk) for chunk in array.chunks]
        if not parts:
            return np.empty(0, bool if pa.types.is_boolean(array.type) else np.dtype(str(array.type)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    if array.null_count:
        raise ValueError("_numbers takes no nulls")
    count, offset, data = len(array), array.offset, array.buffers()[1]
    if pa.types.is_boolean(array.type):
        if not count:
            return np.empty(0, bool)
        return np.unpackbits(np.frombuffer(data, np.uint8), count=offset + count, bitorder="little")[offset:].astype(
            bool
        )
    dtype = np.dtype(str(array.type))
    return np.frombuffer(data, dtype, count=offset + count)[offset:] if count else np.empty(0, dtype)


def _arrow(values: np.ndarray) -> pa.Array:
    """A numpy array of integers or booleans as an Arrow array."""
    values = np.ascontiguousarray(values)
    if values.dtype == bool:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), values.size, [None, pa.py_buffer(bits)])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), values.size, [None, pa.py_buffer(values)])


def _texts(*values: str) -> pa.Array:
    """Python strings as an Arrow string array; `_texts(x)[0]` is x as an Arrow scalar."""
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(text) for text in encoded])
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


_EMPTY = _texts("")[0]
_STATUSES = _texts("active", "inactive")
_ACTIVE = _STATUSES[0]
_LONGEST_ID = pa.Array.from_buffers(pa.int32(), 1, [None, pa.py_buffer(np.array([MAX_STORE_ID_LENGTH], np.int32))])[0]
_FALSE = _arrow(np.zeros(1, bool))[0]


# --------------------------------------------------------------------------- raw reading


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


def _header_of(file: str, head: bytes) -> tuple[list[str], str, int]:
    """The checked header of a file from its first bytes: (names, header text, bytes up to the first row).

    Refuses at once (HeaderError) a file with no header, a header over
    MAX_HEADER_BYTES or MAX_HEADER_FIELDS, or one without the file's columns,
    so no work ever grows with a hostile header's width.
    """
    start = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    end = head.find(b"\n", start)
    if end < 0:
        end = len(head)
    if end - start > MAX_HEADER_BYTES:
        raise HeaderError(
            f"{file}: the header is longer than {MAX_HEADER_BYTES} bytes; expected the header {','.join(COLUMNS[file])}"
        )
    first_line = head[start:end].decode("utf-8", errors="replace").rstrip("\r")
    if first_line.count(",") >= MAX_HEADER_FIELDS:
        raise HeaderError(
            f"{file}: the header has more than {MAX_HEADER_FIELDS} columns; expected the header "
            f"{','.join(COLUMNS[file])}"
        )
    header = _parse_header(first_line)
    _check_header(file, header, first_line)
    return header, first_line, min(end + 1, len(head))


def _arrow_string_options(file: str, header: list[str], on_invalid_row):
    """pyarrow parse and convert options that read the expected columns as strings, with every
    physical line a row (blank ones too) and ragged rows handed to `on_invalid_row`."""
    seen: set[str] = set()
    names = []
    for i, name in enumerate(header):
        names.append(name if name not in seen else f"_dup{i}")
        seen.add(name)
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
    counts = collections.Counter(header)
    duplicated = sorted(c for c in expected if counts[c] > 1)
    if duplicated:
        raise HeaderError(f"{file}: header {raw_header[:200]!r} names {', '.join(duplicated)} more than once")


@dataclass
class RawRows:
    """A file's data rows: one Arrow string array per expected column (null = field absent),
    each row's line number, and structural problems by row position."""

    columns: dict[str, pa.ChunkedArray | pa.Array]
    line: np.ndarray
    problems: dict[int, str]

    def __len__(self) -> int:
        return len(self.line)


SCAN_BYTES = 1 << 20  # line ends are counted a megabyte at a time (no text-sized temporaries)


def _physical_lines(data: bytes | pa.Buffer) -> int:
    """Physical lines of the text: ended by b"\\n", and a last one without."""
    text = np.frombuffer(data, dtype=np.uint8)
    newlines = sum(int(np.count_nonzero(text[i : i + SCAN_BYTES] == 0x0A)) for i in range(0, text.size, SCAN_BYTES))
    return newlines + (0 if text.size and text[-1] == 0x0A else 1)


def _raw_rows_arrow(
    file: str,
    data: bytes | pa.Buffer,
    header: list[str],
    first_line: int | None = None,
    parsed: Parsed | None = None,
    physical_lines: int | None = None,
    strict: bool = False,
) -> RawRows | None:
    """Read with pyarrow; None when it cannot (then the line-by-line reader takes over).

    `physical_lines`, when known, saves counting the lines of `data` again.  `strict` gives up (None) at
    the first ragged or blank row: a block read ahead of its turn, which is read again in turn if so.

    With `first_line`, `data` is a block of data rows (no header) whose first
    line is that line of the file; it is read on one thread so that ragged rows
    have line numbers, and reading stops (TooManyRejects) as soon as the ragged
    rows alone pass the reject limit of `parsed`.
    """
    expected = COLUMNS[file]
    invalid: list[tuple[int | None, str, int]] = []
    block = first_line is not None
    offset = first_line - 1 if block else 0
    stopped_at: list[int] = []

    def on_invalid_row(row) -> str:
        invalid.append((row.number, row.text.strip()[:200], row.actual_columns))  # blank or not as a whole
        if strict:
            return "error"
        if parsed is not None and row.number is not None:
            rejected = parsed.rejected + len(invalid)
            if rejected > REJECT_LIMIT and rejected > REJECT_SHARE * (parsed.rows_read + row.number):
                stopped_at.append(row.number)
                return "error"
        return "skip"

    names, parse_options, convert_options = _arrow_string_options(file, header, on_invalid_row)

    def read(threads: bool) -> pa.Table:
        invalid.clear()
        return pa_csv.read_csv(
            pa.BufferReader(data),  # zero-copy
            read_options=pa_csv.ReadOptions(
                skip_rows=0 if block else 1, column_names=names, use_threads=threads, block_size=1 << 24
            ),
            parse_options=parse_options,
            convert_options=convert_options,
        )

    try:
        table = read(threads=not block)
        if invalid and any(number is None for number, _, _ in invalid):
            table = read(threads=False)  # only a single-threaded read knows invalid rows' line numbers
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        if stopped_at:
            parsed.rows_read += stopped_at[0]
            parsed.reject(
                [offset + n for n, _, _ in invalid],
                (_shape_problem(header, expected, text, count) for _, text, count in invalid),
            )
            parsed.check_reject_limit(offset + stopped_at[0])
        return None
    data_lines = (_physical_lines(data) if physical_lines is None else physical_lines) - (0 if block else 1)
    if table.num_rows + len(invalid) != data_lines or any(n is None for n, _, _ in invalid):
        return None
    first = offset + (1 if block else 2)
    bad_lines = {offset + number for number, _, _ in invalid}
    if bad_lines:
        all_lines = np.arange(first, first + data_lines)
        line = all_lines[~np.isin(all_lines, list(bad_lines))]
    else:
        line = np.arange(first, first + table.num_rows)
    columns = {name: table.column(name) for name in expected}
    raw = RawRows(columns, line.astype(np.int64), {})
    if invalid:
        # rows pyarrow skipped join the table as all-null rows, so every line is accounted for
        nulls = pa.nulls(len(invalid), pa.string())
        raw = RawRows(
            {name: pa.chunked_array(columns[name].chunks + [nulls], pa.string()) for name in expected},
            np.concatenate([raw.line, np.array([offset + n for n, _, _ in invalid], dtype=np.int64)]),
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


def _raw_rows_python(
    file: str, lines: Iterable[str], header: list[str], first_line: int = 2, rows_per_block: int | None = None
) -> Iterator[RawRows]:
    """Line-by-line reading that survives anything: undecodable bytes, quoted newlines, ragged rows.

    `lines` are the file's text lines after the header (`first_line` is the
    first one's number); yields blocks of `rows_per_block` rows (or one block).
    """
    expected = COLUMNS[file]
    positions = {name: header.index(name) for name in expected}
    reader = csv.reader(lines)

    def new_block():
        return {name: [] for name in expected}, [], {}

    values, numbers, problems = new_block()
    line = first_line
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
            problems[len(numbers)] = problem
        for name in expected:
            position = positions[name]
            values[name].append(None if problem or position >= len(fields) else fields[position])
        numbers.append(line)
        line = first_line + reader.line_num
        if rows_per_block and len(numbers) >= rows_per_block:
            yield _python_block(values, numbers, problems)
            values, numbers, problems = new_block()
    if numbers or not rows_per_block:
        yield _python_block(values, numbers, problems)


def _python_block(values: dict, numbers: list, problems: dict) -> RawRows:
    columns = {name: pa.array(column, type=pa.string()) for name, column in values.items()}
    return RawRows(columns, np.array(numbers, dtype=np.int64), problems)


_BLANK = b" \t\r\n"


def raw_rows(file: str, path: str | Path) -> RawRows:
    """Every data row of the file `file` at `path`, as strings, with its line number and any structural problem."""
    data = _read_buffer(path)
    if data[:3].to_pybytes() == b"\xef\xbb\xbf":
        data = data[3:]
    head = data[: MAX_HEADER_BYTES + 1].to_pybytes()
    if not head[:4096].strip(_BLANK) and not data.to_pybytes().strip(_BLANK):
        raise HeaderError(f"{file}: the file is empty; expected the header {','.join(COLUMNS[file])}")
    header, _, _ = _header_of(file, head)
    text = np.frombuffer(data, dtype=np.uint8)
    ascii_only = not text.size or int(text.max()) < 0x80
    whole = None if ascii_only else data.to_pybytes()  # Python bytes (a copy) only for text beyond ASCII
    raw = _raw_rows_arrow(file, data, header) if ascii_only or _is_utf8(whole) else None
    if raw is None:
        lines = _lines_of(data.to_pybytes() if whole is None else whole, io.BytesIO())  # split at line feeds only
        next(lines, None)  # the header
        raw = next(_raw_rows_python(file, lines, header))
    return raw


def _read_buffer(path: str | Path) -> pa.Buffer:
    """A file's bytes, read by pyarrow into its own memory, which costs far fewer page faults than
    Python bytes (an 87 MB polls file read into bytes cost a fault for each of its 21,000 pages);
    it is parsed from there without a copy."""
    with pa.OSFile(str(path)) as stream:  # opened as is (pyarrow would decompress a .gz by its name)
        return stream.read_buffer()


def _is_utf8(data: bytes) -> bool:
    """True when pyarrow can read the bytes as text (ASCII, the usual export, is known at once)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------- checking columns


class Checker:
    """Runs checks in order over a file's rows; a row's first failed check is its reason."""

    def __init__(self, parsed: Parsed, raw: RawRows):
        self.parsed, self.raw = parsed, raw
        self.ok = np.ones(len(raw), dtype=bool)
        # reasons are worded for at most the parsed file's remaining room: the rest are only counted
        self.room = parsed.room
        self.reasons: dict[int, str] = dict(list(raw.problems.items())[: self.room])
        if raw.problems:
            self.ok[list(raw.problems)] = False
        for name, column in raw.columns.items():
            if column.null_count:
                self.fail(_mask(pc.is_null(column)), lambda i, name=name: f"missing column {name}")

    def fail(self, mask: np.ndarray, reason) -> None:
        """Reject the rows still good where `mask` holds; `reason(i)` words it for row i."""
        newly = np.flatnonzero(self.ok & mask)
        for i in newly[: max(self.room - len(self.reasons), 0)]:
            self.reasons[int(i)] = reason(int(i))
        self.ok &= ~mask

    def value(self, name: str, i: int) -> str:
        return _quote(self.raw.columns[name][i].as_py())

    def good(self, array):
        return array if self.ok.all() else pc.filter(array, _arrow(self.ok))

    def kept(self, values: np.ndarray) -> np.ndarray:
        """The values of the rows still good (the same array when every row is)."""
        return values if self.ok.all() else values[self.ok]

    def trimmed(self, name: str):
        return _trimmed(self.raw.columns[name])

    def finish(self) -> np.ndarray:
        rows = sorted(self.reasons)
        self.parsed.reject(self.raw.line[rows], [self.reasons[i] for i in rows], count=int((~self.ok).sum()))
        return self.kept(self.raw.line)


def _mask(array) -> np.ndarray:
    return _numbers(pc.fill_null(array, _FALSE) if array.null_count else array)


def _blank_rows(raw: RawRows, candidates: np.ndarray) -> np.ndarray:
    """Which of the candidate rows have nothing but white space in every field."""
    blank = candidates.copy()
    rows = np.flatnonzero(candidates)
    if rows.size:
        for column in raw.columns.values():
            fields = _trimmed(column.take(_arrow(rows)))
            blank[rows] &= _mask(pc.equal(fields, _EMPTY))
    return blank


def _trimmed(array):
    """Fields without surrounding white space (and "" for absent ones)."""
    if array.null_count:
        array = pc.fill_null(array, _EMPTY)
    return pc.utf8_trim_whitespace(array)  # cheaper than looking first whether anything needs it


class Distinct:
    """A column as each row's index into its distinct values, so that a check on a column with few
    distinct values (store ids, statuses) runs once per value, not once per row."""

    def __init__(self, array, clean):
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if array.null_count:
            array = pc.fill_null(array, _EMPTY)  # an absent field reads as ""
        encoded = pc.dictionary_encode(array)
        self.index = _numbers(encoded.indices)
        self.values = clean(encoded.dictionary)  # e.g. trimmed: distinct raw values may clean to one

    def rows(self, value_mask) -> np.ndarray:
        """A boolean Arrow array over the distinct values, spread to every row."""
        return _mask(value_mask)[self.index]

    def good(self, check: Checker) -> pa.Array:
        """The values of the rows still good, one per row."""
        return self.values.take(_arrow(self.index[check.ok]))


def _check_store_ids(check: Checker) -> Distinct:
    store_id = Distinct(check.raw.columns["store_id"], _trimmed)
    empty = store_id.rows(pc.equal(store_id.values, _EMPTY))
    check.fail(_blank_rows(check.raw, empty), lambda i: "blank line")
    check.fail(empty, lambda i: "missing store_id")
    check.fail(
        store_id.rows(pc.greater(pc.utf8_length(store_id.values), _LONGEST_ID)),
        lambda i: f"store_id longer than {MAX_STORE_ID_LENGTH} characters",
    )
    check.fail(
        ~store_id.rows(pc.match_substring_regex(store_id.values, STORE_ID_PATTERN)),
        lambda i: f"store_id {check.value('store_id', i)} has characters other than {STORE_ID_CHARACTERS}",
    )
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
    values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
    stamps = _parse_export_form(values)
    return stamps if stamps is not None else _parse_other_forms(values)


def _parse_other_forms(values) -> np.ndarray:
    """`parse_timestamps_us` for text that `_parse_export_form` did not take."""
    text = _trimmed(values)
    if len(text) and pc.all(pc.ends_with(text, " UTC")).as_py():
        plain = pc.utf8_slice_codeunits(text, 0, -4)
    else:
        plain = pc.replace_substring_regex(text, r"\s*(?i:UTC|GMT)$", "")
    for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return _in_datetime_range(pc.cast(plain, target).cast(pa.int64()).to_numpy(zero_copy_only=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    import pandas as pd

    cleaned = pd.Series(plain.to_numpy(zero_copy_only=False), dtype=object)
    iso_like = cleaned.str.fullmatch(r"\d{4}-\d{2}-\d{2}(?:[T ][0-9:.,+\-Zz]*)?").fillna(False).astype(bool)
    parsed = pd.to_datetime(cleaned.where(iso_like), format="ISO8601", errors="coerce", utc=True)
    result = np.full(len(cleaned), np.iinfo(np.int64).min, dtype=np.int64)
    ok = parsed.notna().to_numpy()
    result[ok] = parsed[ok].dt.as_unit("us").dt.tz_convert(None).to_numpy().astype(np.int64)
    return _in_datetime_range(result)


def _parse_export_form(values) -> np.ndarray | None:
    """`parse_timestamps_us` for text that is all in the export's own form with nothing around it to trim
    (most files), in one Arrow cast; None, quickly, for anything else."""
    if len(values) and not values.null_count and pc.all(pc.ends_with(values, " UTC")).as_py():
        try:
            return _in_datetime_range(
                _numbers(pc.cast(pc.utf8_slice_codeunits(values, 0, -4), pa.timestamp("us")).cast(pa.int64()))
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return None


_FIRST_US, _LAST_US = -62135596800000000, 253402300799999999  # 0001-01-01 and 9999-12-31T23:59:59.999999 UTC


def _in_datetime_range(stamps: np.ndarray) -> np.ndarray:
    """Instants a Python datetime (and BSON) can hold; the others count as unparseable."""
    stamps = np.array(stamps, dtype=np.int64)
    stamps[(stamps < _FIRST_US) | (stamps > _LAST_US)] = np.iinfo(np.int64).min
    return stamps


_TIME_OF_DAY = r"^(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?$"


def parse_time_of_day(values) -> np.ndarray:
    """Seconds after midnight (int64; -1 where not a valid `HH:MM:SS` or `HH:MM`).

    Each distinct text is parsed once: a file of business hours holds a few hundred.
    """
    distinct = Distinct(
        values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), pa.string()), _trimmed
    )
    return _parse_times(distinct.values)[distinct.index]


def _parse_times(text: pa.Array) -> np.ndarray:
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


def _later_row_wins(
    parsed: Parsed, frame: pd.DataFrame, key: list[str], value: list[str], what: str, last: np.ndarray | None = None
) -> pd.DataFrame:
    """Keep the last row in the file of each key (`last`, when known); report the earlier ones, in
    file order, as duplicates or as overridden."""
    import pandas as pd

    last = ~frame.duplicated(subset=key, keep="last").to_numpy() if last is None else last
    if last.all():
        return frame
    winners = frame[last].set_index(key)
    earlier = frame[~last].sort_values("line", kind="stable")
    winner = winners.loc[pd.MultiIndex.from_frame(earlier[key]) if len(key) > 1 else earlier[key[0]]]
    same = np.ones(len(earlier), dtype=bool)
    for column in value:
        same &= earlier[column].to_numpy() == winner[column].to_numpy()
    parsed.reject(
        earlier["line"],
        (  # worded lazily: only as many as the file keeps
            f"duplicate of line {w} (same {what})" if s else f"overridden by line {w} (same {what}, later row wins)"
            for s, w in zip(same, winner["line"].to_numpy())
        ),
    )
    return frame[last]


# --------------------------------------------------------------------------- the three files


def _start(file: str, path: str | Path, label: str) -> tuple[Parsed, Checker]:
    raw = raw_rows(file, path)
    parsed = Parsed(file=label, frame=None, rows_read=len(raw))  # (the frame comes when all is read)
    return parsed, Checker(parsed, raw)


def _strings_of(array) -> pd.Series:
    """Arrow strings as a pandas string Series (Arrow-backed where pandas can: no copy)."""
    return array.to_pandas()


# a polls file on disk up to this size is read in one go by pyarrow's multi-threaded reader; larger ones (all, by
# default) are streamed like uploads, in blocks read and checked two at a time: at 1.5 M polls that measured as
# fast as the whole-file reader in 200 MB less memory (docs/performance.md)
STATUS_WHOLE_FILE_BYTES = 0


def _read(file: str, source: Source, label: str, check_block, combine) -> Parsed:
    """Read one file with `check_block` run on each block of rows and `combine` joining the blocks' results.

    A file on disk is trusted to be a real export: it is read whole by
    pyarrow's multi-threaded reader (a polls file over STATUS_WHOLE_FILE_BYTES
    block by block).  Bytes and streams (uploads) are always streamed block by
    block (`_stream_checked`: two blocks at a time), so memory grows with the
    rows kept, not with the file; either way reading stops once the rejects
    pass REJECT_LIMIT and REJECT_SHARE (TooManyRejects).
    """
    on_disk = isinstance(source, (str, Path))
    if on_disk and not (file == STATUS_FILE and Path(source).stat().st_size > STATUS_WHOLE_FILE_BYTES):
        parsed, check = _start(file, source, label)
        blocks = [check_block(check)]
        parsed.check_reject_limit()
    else:
        parsed = Parsed(file=label, frame=None)
        blocks = []
        stream = (
            open(source, "rb") if on_disk else io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        )
        # a large file in larger blocks: pyarrow reads them quicker, and there are fewer blocks to check each
        # store id in (at 15 M polls 8 MB blocks took 4.1 s against 4.8 s, in 5% more memory)
        large = on_disk and Path(source).stat().st_size >= LARGE_FILE_BYTES
        try:
            blocks.extend(_stream_checked(file, stream, parsed, check_block, 2 * BLOCK_BYTES if large else None))
        finally:
            if stream is not source:
                stream.close()
    result = combine(parsed, blocks)
    if isinstance(result, PollColumns):
        parsed.columns = result
    else:
        parsed.frame = result
    parsed.check_reject_limit()
    return parsed


class _Blocks:
    """A stream's data rows (after its header) as text blocks of about BLOCK_BYTES, each cut at a line end."""

    def __init__(self, file: str, stream: BinaryIO, block_bytes: int | None = None):
        head = stream.read(MAX_HEADER_BYTES + 8)
        body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        if len(head) < MAX_HEADER_BYTES + 8 and not body.strip(b" \t\r\n"):
            raise HeaderError(f"{file}: the file is empty; expected the header {','.join(COLUMNS[file])}")
        self.header, _, consumed = _header_of(file, head)
        self.file, self.stream, self.block_bytes = file, stream, block_bytes or BLOCK_BYTES
        self.pending, self.line, self.ended = head[consumed:], 2, False  # pending: read, not yet in a block

    def next(self) -> tuple[bytes | bytearray, int, int] | None:
        """The next block as (text, its first line's number, its physical lines); None after the last."""
        while not self.ended:
            text, read = self._read_more()
            if read:
                cut = text.rfind(b"\n") + 1
                if cut == 0:
                    if len(text) > MAX_LINE_BYTES:
                        raise _line_too_long(self.file, self.line)
                    self.pending = text
                    continue
                self.pending = bytes(text[cut:])
                del text[cut:]  # (a bytearray: cut in place, no copy of the block)
                block = text
            else:
                self.ended = True
                block, self.pending = self.pending, b""
                if not block:
                    return None
            first, lines = self.line, _physical_lines(block)
            self.line += lines
            return block, first, lines
        return None

    def _read_more(self) -> tuple[bytearray, int]:
        """What is pending and up to block_bytes more of the stream in one bytearray, and how much was read.
        A file is read straight into it (at 15 M polls, 0.3 s of copying fewer than joining bytes)."""
        size = len(self.pending)
        if not isinstance(self.stream, (io.BufferedReader, io.FileIO)):  # an upload: asked for block_bytes
            more = self.stream.read(self.block_bytes)
            return bytearray(self.pending) + more, len(more)
        text = bytearray(size + self.block_bytes)
        text[:size] = self.pending
        read = self.stream.readinto(memoryview(text)[size:]) or 0
        del text[size + read :]
        return text, read

    def rest_by_line(self, first: bytes, line: int) -> Iterator[RawRows]:
        """`first` (the text from line `line` on that was read already) and the rest of the stream, read
        line by line by the `csv` module, in blocks of PYTHON_BLOCK_ROWS rows."""
        rest = _lines_of(first + self.pending, self.stream, self.file, first_line=line)
        self.pending, self.ended = b"", True
        return _raw_rows_python(self.file, rest, self.header, first_line=line, rows_per_block=PYTHON_BLOCK_ROWS)


def _arrow_can(block: bytes) -> bool:
    """Whether pyarrow may read the block: text, and no quoted field cut by the block's end (an odd number
    of quotes means a cut inside a quoted line break: pyarrow would take its halves for two rows)."""
    return (b'"' not in block or not block.count(b'"') % 2) and _is_utf8(block)  # (`in` is 10x quicker than count)


def _stream_raw_rows(file: str, stream: BinaryIO, parsed: Parsed) -> Iterator[RawRows]:
    """A file's data rows, BLOCK_BYTES of text at a time, each block cut at a line end.

    Blocks go through pyarrow (single-threaded, so a ragged row's line number
    is known); from the first block pyarrow cannot vouch for line by line
    (bytes that are not UTF-8, a quoted line break) the `csv` module reads the
    rest of the file, also block by block.  Always yields at least one block.
    (`_stream_checked` does the same with blocks read and checked ahead in parallel.)
    """
    blocks, yielded = _Blocks(file, stream), False
    while (item := blocks.next()) is not None:
        block, line, lines = item
        raw = (
            _raw_rows_arrow(file, block, blocks.header, first_line=line, parsed=parsed, physical_lines=lines)
            if _arrow_can(block)
            else None
        )
        if raw is None:
            yield from blocks.rest_by_line(block, line)
            return
        yielded = True
        yield raw
    if not yielded:
        yield _no_rows(file)


PARSE_THREADS = 2  # blocks of a streamed file read and checked at once (docs/performance.md: 2 cores)
BLOCKS_AHEAD = 2  # blocks read ahead of the one whose turn it is: what keeps PARSE_THREADS busy, in least memory


def _check_alone(file: str, label: str, block: bytes, header: list[str], line: int, lines: int, check_block):
    """A block read and checked ahead of its turn, on its own: (its rows, its last line, its rejects,
    check_block's result), or None when it has a ragged or blank row or pyarrow cannot read it (then it is
    read in turn instead)."""
    raw = _raw_rows_arrow(file, block, header, first_line=line, physical_lines=lines, strict=True)
    if raw is None:
        return None
    alone = Parsed(file=label, frame=None, rows_read=len(raw))
    result = check_block(Checker(alone, raw))
    return len(raw), int(raw.line[-1]) if len(raw) else None, alone, result


def _stream_checked(
    file: str, stream: BinaryIO, parsed: Parsed, check_block, block_bytes: int | None = None
) -> Iterator:
    """`check_block`'s result for each block of `_stream_raw_rows(file, stream, parsed)`, in order, with the
    rows read and the rejects counted in `parsed` and the reject limit checked after each block, as if
    each block were checked in turn.

    PARSE_THREADS blocks are read (pyarrow, one thread each) and checked at once, each on its own, while
    this thread takes their results in order: a block with no ragged row whose rejects fit in the room
    `parsed` has left is the same checked alone as in turn, so its rows and rejects are simply added; any
    other (ragged rows, where the reject limit may stop reading part-way; more rejects than the room, where
    which get reasons depends on the order) is read and checked again in its turn, as `_stream_raw_rows`
    would.  A block pyarrow cannot read sends the rest of the file to the line-by-line reader.
    """
    blocks = _Blocks(file, stream, block_bytes)
    ahead: collections.deque = collections.deque()  # (future or None, text, first line, lines), in file order

    def in_turn(raw: RawRows):
        parsed.rows_read += len(raw)
        result = check_block(Checker(parsed, raw))
        parsed.check_reject_limit(int(raw.line[-1]) if len(raw) else None)
        return result

    def read_ahead(pool: ThreadPoolExecutor) -> None:
        while len(ahead) < BLOCKS_AHEAD and (item := blocks.next()) is not None:
            block, line, lines = item
            future = None
            if _arrow_can(block):
                future = pool.submit(_check_alone, file, parsed.file, block, blocks.header, line, lines, check_block)
            ahead.append((future, block, line, lines))

    with ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="read-blocks") as pool:
        try:
            read_ahead(pool)
            if not ahead:
                yield in_turn(_no_rows(file))
            while ahead:
                future, block, line, lines = ahead.popleft()
                alone = future.result() if future is not None else None
                if alone is not None and alone[2].rejected <= parsed.room:
                    rows, last_line, checked, result = alone
                    parsed.rows_read += rows
                    parsed.rejected += checked.rejected  # (every reason fits in the room left: all were kept)
                    parsed.rejects.extend(checked.rejects)
                    parsed.check_reject_limit(last_line)
                    yield result
                    read_ahead(pool)
                    continue
                raw = None
                if future is not None:
                    raw = _raw_rows_arrow(
                        file, block, blocks.header, first_line=line, parsed=parsed, physical_lines=lines
                    )
                if raw is None:  # this block and all after it, line by line
                    text = block + b"".join(later_block for _, later_block, _, _ in ahead)
                    for later, *_ in ahead:
                        if later is not None:
                            later.cancel()
                    ahead.clear()
                    for raw in blocks.rest_by_line(text, line):
                        yield in_turn(raw)
                    return
                yield in_turn(raw)
                read_ahead(pool)
        finally:  # (stopped part-way, by the reject limit or an error: blocks not begun are not read)
            for future, *_ in ahead:
                if future is not None:
                    future.cancel()


PYTHON_BLOCK_ROWS = 1 << 16


def _lines_of(first: bytes, stream: BinaryIO, file: str = "", first_line: int = 1) -> Iterator[str]:
    """Physical lines (split at b"\\n", ends kept) of `first` and then the rest of `stream`, as text,
    one at a time (a block is never split into a list of all its lines); `first_line` is the number of
    the first.  A line that grows past MAX_LINE_BYTES while the stream is read rejects the file
    (HeaderError), as on the Arrow path, rather than being cut into pieces that would each count as a row."""
    pending, line = first, first_line
    while True:
        more = stream.read(BLOCK_BYTES)
        if more:
            pending += more
        position = 0
        while (end := pending.find(b"\n", position)) >= 0:
            yield pending[position : end + 1].decode("utf-8", errors="surrogateescape")
            position = end + 1
            line += 1
        pending = pending[position:]
        if not more:
            if pending:
                yield pending.decode("utf-8", errors="surrogateescape")
            return
        if len(pending) > MAX_LINE_BYTES:
            raise _line_too_long(file, line)


def _line_too_long(file: str, line: int) -> HeaderError:
    return HeaderError(
        f"{file}: line {line} is longer than {MAX_LINE_BYTES} bytes, so this is not a CSV export; "
        "the whole file is rejected"
    )


def _no_rows(file: str) -> RawRows:
    return RawRows({name: pa.array([], pa.string()) for name in COLUMNS[file]}, np.empty(0, np.int64), {})


def max_future_seconds() -> int:
    """MAX_FUTURE_SECONDS from the environment (default one day), read anew for each file; ValueError when it
    is not a whole number of seconds, 0 or more."""
    text = os.environ.get(MAX_FUTURE_SECONDS_VARIABLE)
    if text is None:
        return DEFAULT_MAX_FUTURE_SECONDS
    try:
        seconds = int(text)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ValueError(
            f"{MAX_FUTURE_SECONDS_VARIABLE} must be a whole number of seconds, 0 or more "
            f"(default {DEFAULT_MAX_FUTURE_SECONDS}); got {text[:40]!r}"
        )
    return seconds


def _server_clock_us() -> int:
    """The server's clock, in microseconds since the epoch (tests replace it)."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class PollWindow:
    """The instants a poll may have, fixed once per file: from 2000-01-01 to `future_s` seconds after
    the server's clock (`clock_us`) when the file is read."""

    clock_us: int
    future_s: int

    @property
    def latest_us(self) -> int:
        return min(self.clock_us + self.future_s * 1_000_000, _LAST_US)  # (a huge setting cannot overflow)

    def clock(self) -> str:
        return dt.datetime.fromtimestamp(self.clock_us // 1_000_000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def poll_window() -> PollWindow:
    """The window for a file read now (ValueError for a bad MAX_FUTURE_SECONDS, before any row is read)."""
    future_s = max_future_seconds()
    return PollWindow(_server_clock_us(), future_s)


def read_store_status(source: Source, file: str = STATUS_FILE, as_columns: bool = False) -> Parsed:
    """Polls: `store_id` (categorical), `timestamp_us` (int64), `active` (bool), `line`.

    Polls before 2000 or more than MAX_FUTURE_SECONDS after the server's clock are rejected.
    Memory grows with the polls kept (about 20 bytes each) when the file is
    streamed (uploads, and files on disk over 128 MB), rather than with the file.
    With `as_columns` the good rows come as `Parsed.columns` (`PollColumns`, no pandas) instead.
    """
    window = poll_window()
    combine = _polls_columns if as_columns else _polls_frame
    return _read(STATUS_FILE, source, file, lambda check: _check_polls(check, window), combine)


def _check_poll_window(check: Checker, stamp: np.ndarray, window: PollWindow) -> None:
    """Reject the good rows whose instant is before 2000 or past the window (array comparisons only)."""
    check.fail(
        stamp < EARLIEST_POLL_US,
        lambda i: (
            f"timestamp {check.value('timestamp_utc', i)} is before 2000-01-01, the earliest this service accepts"
        ),
    )
    check.fail(
        stamp > window.latest_us,
        lambda i: (
            f"timestamp {check.value('timestamp_utc', i)} is more than {window.future_s} s after "
            f"this server's clock ({window.clock()}); set {MAX_FUTURE_SECONDS_VARIABLE} to accept it"
        ),
    )


TIMESTAMPS_IN_THREAD_ROWS = 1 << 20  # from this many rows a block's timestamps are parsed in a thread of their own


def _check_polls(check: Checker, window: PollWindow) -> dict:
    """Run the poll checks on one block of rows; returns its good rows (store ids still strings; their
    lines a `range` when they follow one another, as when none was rejected).

    Timestamps in the export's own form are parsed in a second thread while the store ids and
    statuses are checked (Arrow lets go of the GIL), in a block of a file read whole; blocks of a
    streamed file are checked two at a time already (`_stream_checked`).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse-timestamps") as pool:
        timestamps = check.raw.columns["timestamp_utc"]
        in_thread = len(check.raw) >= TIMESTAMPS_IN_THREAD_ROWS
        export_form = pool.submit(_parse_export_form, timestamps) if in_thread else None
        store_id = _check_store_ids(check)
        status = Distinct(check.raw.columns["status"], lambda values: pc.utf8_lower(_trimmed(values)))
        check.fail(
            ~status.rows(pc.is_in(status.values, value_set=_STATUSES)),
            lambda i: f"unknown status {check.value('status', i)} (expected active or inactive)",
        )
        export_form = export_form.result() if in_thread else _parse_export_form(timestamps)
    if export_form is not None:  # (rows rejected already keep their stamp, unread)
        stamp = export_form
    elif check.ok.all():  # (not all in the export's form: that parse has been tried)
        stamp = _parse_other_forms(check.raw.columns["timestamp_utc"])
    else:
        stamp = np.full(len(check.raw), np.iinfo(np.int64).min, dtype=np.int64)
        stamp[check.ok] = parse_timestamps_us(check.good(check.raw.columns["timestamp_utc"]))
    check.fail(stamp == np.iinfo(np.int64).min, lambda i: f"unparseable timestamp {check.value('timestamp_utc', i)}")
    _check_poll_window(check, stamp, window)
    line = check.finish()
    return {
        "store_index": check.kept(store_id.index),
        "store_ids": store_id.values,
        "timestamp_us": check.kept(stamp),
        "active": check.kept(status.rows(pc.equal(status.values, _ACTIVE))),
        "line": range(line[0], line[-1] + 1) if line.size and line[-1] - line[0] == line.size - 1 else line,
    }


def _joined(parts: list) -> np.ndarray:
    """The blocks' parts of a column as one array (a `range` of lines stands for those lines)."""
    parts = [np.arange(part.start, part.stop, dtype=np.int64) if isinstance(part, range) else part for part in parts]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _store_numbers(blocks: list[dict]) -> tuple[list[np.ndarray], pa.Array]:
    """Each block's good polls numbered by store in store_id order (one int32 array a block), and the
    distinct store ids in that order; the blocks give up their own numbering."""
    # each block numbers its own distinct ids; the ids of rows kept, of every block, are numbered
    # together (one Arrow hash pass) and ranked by name: a Python loop over them cost 0.5 s at 15 M polls
    parts, kept_ids = [], []
    for block in blocks:
        index, ids = block.pop("store_index"), block.pop("store_ids")
        used = np.flatnonzero(np.bincount(index, minlength=len(ids)))  # ids of rows kept only
        parts.append((index, used, len(ids)))
        kept_ids.append(ids.take(_arrow(used)))
    catalog = pc.dictionary_encode(pa.concat_arrays(kept_ids))
    names = catalog.dictionary
    by_name = _numbers(pc.sort_indices(names))  # (store ids are ASCII: byte order is Python's str order)
    rank = np.empty(len(names), dtype=np.int32)
    rank[by_name] = np.arange(len(names), dtype=np.int32)
    numbers, start, codes = rank[_numbers(catalog.indices)], 0, []
    for index, used, n_ids in parts:
        to_global = np.zeros(n_ids, dtype=np.int32)  # (values of rejected rows only keep a 0 no kept row uses)
        to_global[used] = numbers[start : start + used.size]
        start += used.size
        codes.append(to_global[index])
    return codes, names.take(_arrow(by_name))


def _numbered_polls(blocks: list[dict]) -> tuple[dict, pa.Array]:
    """All blocks' good polls as columns, unsorted: `store_id` numbered in store_id order (int32),
    `timestamp_us`, `active`, `line`; and the distinct store ids, in that order.  The blocks give up
    their columns."""
    codes, names = _store_numbers(blocks)
    columns = {"store_id": _joined(codes)}  # (there is always a block: the readers yield one even for no rows)
    for name in ("timestamp_us", "active", "line"):
        columns[name] = _joined([block.pop(name) for block in blocks])  # (each block's part freed once joined)
    return columns, names


def _in_poll_order(parsed: Parsed, columns: dict) -> dict:
    """The numbered polls sorted by store and time with their lines, one row per store and instant:
    of rows at one instant the later in the file stands, the others are reported (duplicate or overridden)."""
    order = utils.poll_order(columns["store_id"], columns["timestamp_us"])
    line = columns.pop("line")
    # two columns at once: numpy's take lets go of the GIL
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="polls-in-order") as pool:
        columns = dict(zip(columns, pool.map(lambda values: np.take(values, order), columns.values())))
    if line.size and line[-1] - line[0] == line.size - 1:  # every line kept: line i is line[0] + i
        columns["line"] = np.add(order, line[0], dtype=np.int64)
    else:
        columns["line"] = line[order]
    last = utils.last_of_each_instant(columns["store_id"], columns["timestamp_us"])
    if not last.all():
        import pandas as pd

        # rows of one store and instant: the sort is stable, so the last of them is the later row in the file
        kept = _later_row_wins(
            parsed, pd.DataFrame(columns), ["store_id", "timestamp_us"], ["active"], "store_id and timestamp", last
        )
        columns = {name: kept[name].to_numpy() for name in columns}
    return columns


def _polls_frame(parsed: Parsed, blocks: list[dict]) -> pd.DataFrame:
    """One frame of all blocks' good polls, store ids as a categorical in store_id order, the rows
    sorted by store and time (the order the report engine works in, so it need not sort again)."""
    import pandas as pd

    columns, names = _numbered_polls(blocks)
    columns = _in_poll_order(parsed, columns)
    categories = pd.Index(names.to_numpy(zero_copy_only=False), dtype=object)
    columns["store_id"] = pd.Categorical.from_codes(columns["store_id"], categories=categories)
    return pd.DataFrame(columns, copy=False)  # the arrays are the frame's own: no need to copy them again


@dataclass(frozen=True)
class PollColumns:
    """A polls file's good rows as the report engine needs them, with no pandas: sorted by store and time,
    one row per store and instant (the later row in the file stands), and of each run of one store's polls
    with one status only the first and the last (`utils.run_ends`: the report depends on no other); no
    line numbers."""

    store_ids: pa.Array  # the distinct store ids of the file's good rows, in store_id order
    store: np.ndarray  # int64: each poll's index into store_ids
    timestamp_us: np.ndarray  # int64
    active: np.ndarray  # bool


def _polls_columns(parsed: Parsed, blocks: list[dict]) -> PollColumns:
    """The good polls as `PollColumns`: sorted as packed values and cut down block by block
    (`utils.deciding_polls`, no copy of the polls as a whole); when a store has two rows at one instant,
    `_polls_frame`'s way instead (a stable argsort with the lines, the earlier rows reported as duplicates
    or overridden)."""
    codes, names = _store_numbers(blocks)
    stamps, active = [block["timestamp_us"] for block in blocks], [block["active"] for block in blocks]
    polls = utils.deciding_polls(codes, stamps, active, len(names))
    if polls is None:
        columns = {"store_id": _joined(codes), "timestamp_us": _joined(stamps), "active": _joined(active)}
        columns["line"] = _joined([block["line"] for block in blocks])
        columns = _in_poll_order(parsed, columns)
        store, up = columns["store_id"].astype(np.int64), columns["active"].astype(bool)
        kept = utils.run_ends(store, up)
        polls = store[kept], columns["timestamp_us"][kept], up[kept]
    blocks.clear()
    return PollColumns(names, *polls)


def _check_hours(check: Checker) -> dict:
    """Run the business-hours checks on one block of rows; returns its good rows."""
    store_id = _check_store_ids(check)
    day_text = check.trimmed("day")
    is_day = _mask(pc.match_substring_regex(day_text, r"^[0-6]$"))
    check.fail(~is_day, lambda i: f"day {check.value('day', i)} is not 0-6 (0 = Monday ... 6 = Sunday)")
    day = np.zeros(len(check.raw), dtype=np.int64)
    day[is_day] = pc.cast(pc.filter(day_text, pa.array(is_day)), pa.int64()).to_numpy()
    seconds = {}
    for column in ("start_time_local", "end_time_local"):
        seconds[column] = parse_time_of_day(check.raw.columns[column])
        check.fail(seconds[column] < 0, lambda i, c=column: f"bad time {check.value(c, i)} in {c} (expected HH:MM:SS)")
    line = check.finish()
    return {
        "store_id": _strings_of(store_id.good(check)),
        "day": day[check.ok],
        "start_s": seconds["start_time_local"][check.ok],
        "end_s": seconds["end_time_local"][check.ok],
        "line": line,
    }


def _hours_frame(parsed: Parsed, blocks: list[dict]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.concat([pd.DataFrame(block) for block in blocks], ignore_index=True)
    frame = _later_row_wins(parsed, frame, ["store_id", "day", "start_s", "end_s"], [], "store, day and hours")
    return frame.reset_index(drop=True)


def read_menu_hours(source: Source, file: str = HOURS_FILE) -> Parsed:
    """Business hours: `store_id`, `day`, `start_s`, `end_s` (seconds after midnight), `line`."""
    return _read(HOURS_FILE, source, file, _check_hours, _hours_frame)


def hms(seconds: int) -> str:
    """`HH:MM:SS` for seconds after midnight."""
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _check_zones(check: Checker) -> dict:
    """Run the time-zone checks on one block of rows; returns its good rows."""
    store_id = _check_store_ids(check)
    zone = check.trimmed("timezone_str")
    names = pc.unique(zone).to_pylist()  # (each distinct name is looked at once)
    not_regions = pa.array([name for name in names if _is_not_region(name)], pa.string())
    check.fail(
        _mask(pc.is_in(zone, not_regions)),
        lambda i: f"{check.value('timezone_str', i)} is not an IANA region time zone",
    )
    valid_names = pa.array(
        [name for name in names if name in region_zones() and utils.is_valid_timezone(name)], pa.string()
    )
    check.fail(~_mask(pc.is_in(zone, valid_names)), lambda i: f"unknown timezone name {check.value('timezone_str', i)}")
    line = check.finish()
    return {"store_id": _strings_of(store_id.good(check)), "timezone_str": _strings_of(check.good(zone)), "line": line}


def _is_not_region(name: str) -> bool:
    """A name zoneinfo may load (from the host's zone folder) that is no IANA region zone, worded as such
    (whether or not this host has it) rather than as an unknown name."""
    return name in NOT_REGION_ZONES or name.startswith(NOT_REGION_ZONE_PREFIXES)


def _region_zones() -> frozenset[str]:
    """The time zones a store may name: zoneinfo's available zones (the pinned tzdata package's, plus the
    host's zone folder, which adds `localtime` and perhaps more) but for those that are no region.
    `UTC` and the `Etc/...` zones stay."""
    return frozenset(name for name in zoneinfo.available_timezones() if not _is_not_region(name))


# memoised by wrapping rather than decorating, as in utils (available_timezones() walks the zone folders)
region_zones = lru_cache(maxsize=1)(_region_zones)


def _zones_frame(parsed: Parsed, blocks: list[dict]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.concat([pd.DataFrame(block) for block in blocks], ignore_index=True)
    frame = _later_row_wins(parsed, frame, ["store_id"], ["timezone_str"], "store_id")
    return frame.reset_index(drop=True)


def read_timezones(source: Source, file: str = ZONES_FILE) -> Parsed:
    """Zones: `store_id`, `timezone_str`, `line` (one row per store, the later row wins)."""
    return _read(ZONES_FILE, source, file, _check_zones, _zones_frame)


READERS = {STATUS_FILE: read_store_status, HOURS_FILE: read_menu_hours, ZONES_FILE: read_timezones}


def detect_file(header_line: str) -> str | None:
    """Which of the three files a header line belongs to, or None."""
    header = _parse_header(header_line)
    for file, columns in COLUMNS.items():
        if all(c in header for c in columns):
            return file
    return None


def read_data_dir(directory: str | Path, polls_as_columns: bool = False) -> dict[str, Parsed]:
    """Parse the three files of a data folder (a missing file reads as having no rows).

    The business hours and zones are read in a second thread while the polls
    are read: most of the work is in pyarrow and numpy, which let go of the GIL.
    With `polls_as_columns` the polls come as `PollColumns` (see `read_store_status`), read with
    no pandas: then only the second thread imports pandas (for the hours' and zones' frames),
    while this one reads the polls.
    """
    directory = Path(directory)

    def read(file: str) -> Parsed:
        path, reader = directory / file, READERS[file]
        if file == STATUS_FILE and polls_as_columns:
            reader = partial(read_store_status, as_columns=True)
        if path.exists():
            return reader(path, file=str(path))
        parsed = reader(",".join(COLUMNS[file]).encode() + b"\n", file=str(path))
        parsed.notes.append(f"{path} not found: no rows")
        return parsed

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-data-dir") as pool:
        others = pool.submit(lambda: {file: read(file) for file in (HOURS_FILE, ZONES_FILE)})
        polls = read(STATUS_FILE)
        return {STATUS_FILE: polls, **others.result()}
