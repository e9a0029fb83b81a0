"""The report as CSV bytes, and writing a file so readers never see half of it.

One job: turn the report frame (`utils.REPORT_COLUMNS`) into the exact bytes
every path publishes, the API's stored CSV and the command line's file alike,
and read store ids back from those bytes.

- `report_csv_bytes` writes with pyarrow's CSV writer when it can vouch for the
  text (no store id needs quotes, every figure is a whole number of cents) and
  with pandas' writer otherwise; both give the same bytes for the same report.
- Store ids a spreadsheet would take for a formula get a leading quote
  (`neutralise_cells`, OWASP's advice); `store_ids_from_csv` takes it off again.
- `write_atomically` writes beside the target, then renames.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

import utils

REPORT_HEADER = (",".join(utils.REPORT_COLUMNS) + "\n").encode()  # the first line of every report CSV
# A cell a spreadsheet would read as a formula starts with one of these (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cells(values: pd.Series) -> pd.Series:
    """Text cells with a single quote put before any that starts like a formula (OWASP's advice)."""
    text = values.astype(str)
    risky = text.str.startswith(FORMULA_STARTS)
    return text.where(~risky, "'" + text)


def store_ids_from_csv(values: pd.Series) -> pd.Series:
    """Store ids as read back from a report CSV, without the quote `neutralise_cells` put before them.

    Unambiguous: a store id never starts with a quote (sources.STORE_ID_PATTERN).
    """
    text = values.astype(str)
    quoted = text.str.startswith(tuple("'" + start for start in FORMULA_STARTS))
    return text.where(~quoted, text.str.slice(1))


# ".0", ".01", ... ".09", ".1", ".11", ...: what Python's repr writes after the point of a number of whole cents
CENTS_AFTER_POINT = pa.array(["." + (str(cents // 10) if cents % 10 == 0 else f"{cents:02d}") for cents in range(100)])
NEEDS_QUOTES = '[,"\r\n]'


def _figures_as_text(values: np.ndarray) -> pa.Array | None:
    """Report figures (rounded to 2 places) as text, exactly as `repr` writes them: None when any is not
    a whole number of cents, from 0 to 2**53, for then only the general writer is sure to write the same.

    A figure equal to c / 100 for a whole c is the double nearest to c hundredths, so its shortest text
    that reads back the same (which repr writes) is c hundredths without trailing zeros.
    """
    cents = np.rint(values * 100)
    if not ((cents >= 0).all() and (cents < 2**53).all() and (cents / 100 == values).all()):  # (NaN fails each)
        return None
    cents = cents.astype(np.int64)
    return pc.binary_join_element_wise(
        pc.cast(pa.array(cents // 100), pa.string()), CENTS_AFTER_POINT.take(pa.array(cents % 100)), ""
    )


def _report_csv_arrow(report: pd.DataFrame) -> bytes | None:
    """`report_csv_bytes` by pyarrow's CSV writer (a few times quicker than pandas'), for the usual report:
    no store id needs quotes and every figure is a whole number of cents.  None otherwise."""
    store_ids = pa.array(neutralise_cells(report["store_id"]), pa.string())
    if pc.any(pc.match_substring_regex(store_ids, NEEDS_QUOTES)).as_py():
        return None
    columns = {"store_id": store_ids}
    for name in utils.REPORT_COLUMNS[1:]:
        columns[name] = _figures_as_text(report[name].to_numpy(dtype=np.float64))
        if columns[name] is None:
            return None
    out = io.BytesIO()
    out.write((",".join(utils.REPORT_COLUMNS) + "\n").encode())
    pa_csv.write_csv(pa.table(columns), out, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    return out.getvalue()


def report_csv_bytes(report: pd.DataFrame) -> bytes:
    """The report as CSV; store ids that a spreadsheet would take for a formula are neutralised."""
    fast = _report_csv_arrow(report)
    return fast if fast is not None else _report_csv_pandas(report)


def _report_csv_pandas(report: pd.DataFrame) -> bytes:
    """`report_csv_bytes` by pandas' CSV writer, for any report."""
    quoting = csv.QUOTE_MINIMAL
    if len(report):
        report = report.assign(store_id=neutralise_cells(report["store_id"]))
        if report["store_id"].str.contains("\r", regex=False).any():
            quoting = csv.QUOTE_NONNUMERIC  # the csv module leaves a lone CR unquoted with "\n" line ends
    return report.to_csv(index=False, columns=utils.REPORT_COLUMNS, quoting=quoting).encode("utf-8")


def write_atomically(path: Path, payload: bytes) -> None:
    """Write to a temporary name beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_report_rows(payload: bytes) -> pd.DataFrame:
    """A report CSV's rows as a frame of `utils.REPORT_COLUMNS`: store ids as loaded (without the quote
    `neutralise_cells` put before some), the six figures as floats."""
    rows = pd.read_csv(io.BytesIO(payload), dtype={"store_id": str}, keep_default_na=False)
    rows["store_id"] = store_ids_from_csv(rows["store_id"])
    for column in utils.REPORT_COLUMNS[1:]:
        rows[column] = rows[column].astype(np.float64)
    return rows


def history_rows(payload: bytes, report_id: str) -> dict[str, list] | None:
    """A report CSV's rows by column (`utils.REPORT_COLUMNS`: store ids as str, figures as float), as a
    store keeps them for `Store.store_history`.  None for bytes whose first line is not the report's header
    (they keep no history: `Store.complete_report`); ValueError naming `report_id` for a report CSV whose
    rows cannot be read (a figure that is not a number, a missing column, a malformed CSV)."""
    payload = bytes(payload)
    if not payload.startswith(REPORT_HEADER):
        return None
    try:
        rows = read_report_rows(payload)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"report {report_id}: the rows of its CSV cannot be read: {type(error).__name__}: {error}"
        ) from error
    return {column: rows[column].tolist() for column in utils.REPORT_COLUMNS}
