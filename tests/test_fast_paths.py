"""The command line's fast path (issue 21) gives today's report, byte for byte.

- At twice real size (28,000 stores, 3 M polls) its CSV is the one the command line of commit b5e77bb (before
  this path) wrote, by SHA-256, with and without --as-of.
- Its pieces against plain versions of the same: `utils.deciding_polls` (a value sort of packed keys, cut
  down to the first and last poll of each run of one status, in two threads) against a lexsort;
  `sources.read_store_status(..., as_columns=True)` (blocks read and checked two at a time, no pandas)
  against the frame the other readers make, rejects and all; the report from those columns against the
  report from frames on the property tests' random stores (duplicates, polls after now, odd zones).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import reportGenerator
import sources
import utils
from tests.conftest import examples
from tests.test_peer import write_files
from tests.test_utils import stores

ROOT = Path(__file__).resolve().parent.parent

# scripts/generate_data.py --stores 28000 --seed 7 --polls-per-store 107: its files, and the CSV that
# `python reportGenerator.py --data-dir DIR --output FILE [--as-of ...]` of commit b5e77bb wrote for them
TWICE_REAL = ["--stores", "28000", "--seed", "7", "--polls-per-store", "107"]
TWICE_REAL_POLLS_SHA256 = "71261f1fe133479fbc18a725a532630a25b2d78428fa4ff4803666d76cb401d4"
TODAYS_REPORT_SHA256 = {
    (): "3ce47b8bade5c0ace674283b57e304bac213ac439725bad69a8254761a29377a",
    ("--as-of", "2023-01-22T06:30:00Z"): "d274b0a9b94977ed930ed8c669f6b873f3fd2dfd86a5f028801ffb29a721151b",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def twice_real(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("twice-real")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_data.py"), *TWICE_REAL, "--out", str(folder)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert sha256(folder / "store_status.csv") == TWICE_REAL_POLLS_SHA256, "the generator's output changed"
    return folder


@pytest.mark.parametrize("as_of", list(TODAYS_REPORT_SHA256))
def test_the_command_line_at_twice_real_size_writes_todays_bytes(twice_real, tmp_path, as_of):
    output = tmp_path / "report.csv"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "reportGenerator.py"),
            "--data-dir",
            str(twice_real),
            "--output",
            str(output),
            *as_of,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert sha256(output) == TODAYS_REPORT_SHA256[as_of]


# --------------------------------------------------------------------------- deciding_polls


def plain_deciding(codes, stamps, active):
    """The polls sorted by (store, time) with a lexsort, cut down with `run_ends`."""
    order = np.lexsort((stamps, codes))
    store, stamp, up = np.asarray(codes, np.int64)[order], np.asarray(stamps)[order], np.asarray(active)[order]
    kept = utils.run_ends(store, up)
    return store[kept], stamp[kept], up[kept]


@st.composite
def polls(draw):
    n_stores = draw(st.integers(1, 6))
    count = draw(st.integers(0, 300))
    codes = np.array(draw(st.lists(st.integers(0, n_stores - 1), min_size=count, max_size=count)), np.int32)
    start = draw(st.integers(946_684_800_000_000, 1_700_000_000_000_000))
    stamps = start + np.array(draw(st.lists(st.integers(0, 10**12), min_size=count, max_size=count)), np.int64)
    active = np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), bool)
    cuts = sorted(draw(st.lists(st.integers(0, count), max_size=4)))
    return n_stores, codes, stamps, active, cuts


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(polls(), st.booleans())
def test_deciding_polls_are_a_plain_sort_cut_down(monkeypatch_split, case, two_halves):
    n_stores, codes, stamps, active, cuts = case
    monkeypatch_split(1 if two_halves else 10**9)
    blocks = [np.split(column, cuts) for column in (codes, stamps, active)]
    got = utils.deciding_polls(*blocks, n_stores)
    if len(set(zip(codes.tolist(), stamps.tolist()))) < codes.size:  # a store polled twice at one instant
        assert got is None
        return
    want = plain_deciding(codes, stamps, active)
    assert [column.tolist() for column in got] == [column.tolist() for column in want]
    if codes.size:  # each store's first and last poll are kept: "now" is the newest of them
        assert got[1].max() == stamps.max()


@pytest.fixture
def monkeypatch_split():
    """Set utils.SPLIT_SORT_MIN (1: always two halves, with two cores) for one example at a time."""
    saved = utils.SPLIT_SORT_MIN, utils._cores

    def split(minimum: int) -> None:
        utils.SPLIT_SORT_MIN, utils._cores = minimum, lambda: 2

    yield split
    utils.SPLIT_SORT_MIN, utils._cores = saved


def test_run_ends_keep_the_first_and_last_of_each_run():
    store = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    active = np.array([1, 1, 1, 0, 0, 0, 1, 0, 0], bool)
    assert utils.run_ends(store, active).tolist() == [1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert utils.run_ends(np.array([5, 5, 5]), np.array([1, 1, 1], bool)).tolist() == [1, 0, 1]


def test_runs_give_the_spans_of_their_polls():
    """A run's span is its polls' spans joined (`poll_spans`), on polls cut down or not."""
    store = np.array([0, 0, 0, 0, 1, 1, 1])
    stamps = np.array([10, 20, 30, 50, 5, 7, 9])
    active = np.array([1, 1, 0, 0, 1, 1, 1], bool)
    run_store, begin, end, up = utils.status_runs(store, stamps, active)
    spans = utils.poll_spans(store, stamps * utils.TICKS_PER_US)
    assert run_store.tolist() == [0, 0, 1]
    assert begin.tolist() == [spans[0][0], spans[0][2], spans[0][4]]
    assert end.tolist() == [spans[1][1], spans[1][3], spans[1][6]]
    assert up.tolist() == [True, False, True]
    kept = utils.run_ends(store, active)
    assert [a.tolist() for a in utils.status_runs(store[kept], stamps[kept], active[kept])] == [
        a.tolist() for a in (run_store, begin, end, up)
    ]


# --------------------------------------------------------------------------- sources: polls as columns


MESSY = (
    "store_id,status,timestamp_utc\n"
    "b,active,2023-01-22 12:00:00.000000 UTC\n"
    "a,inactive,2023-01-22 11:00:00.000000 UTC\n"
    "b,inactive,2023-01-22 13:00:00.000000 UTC\n"
    "a,asleep,2023-01-22 11:30:00.000000 UTC\n"  # rejected: status
    "a,active,2023-01-22 12:00:00.000000 UTC\n"
    "c,active,yesterday\n"  # rejected: timestamp
    "b,inactive,2023-01-22 14:00:00.000000 UTC\n"
    "a,active,2023-01-22 12:30:00.000000 UTC\n"
)


def polls_of_frame(parsed: sources.Parsed):
    """The frame reader's polls as `PollColumns` holds them (sorted, cut down to the ends of the runs)."""
    frame = parsed.frame
    store = frame["store_id"].cat.codes.to_numpy().astype(np.int64)
    stamps, active = frame["timestamp_us"].to_numpy(), frame["active"].to_numpy()
    kept = utils.run_ends(store, active)
    return list(frame["store_id"].cat.categories), store[kept].tolist(), stamps[kept].tolist(), active[kept].tolist()


def polls_of_columns(parsed: sources.Parsed):
    columns = parsed.columns
    return (
        columns.store_ids.to_pylist(),
        columns.store.tolist(),
        columns.timestamp_us.tolist(),
        columns.active.tolist(),
    )


@pytest.mark.parametrize("duplicate", ["", "b,active,2023-01-22 13:00:00.000000 UTC\n"])
@pytest.mark.parametrize("block_bytes", [1, 64, 1 << 22])
@pytest.mark.parametrize("whole_file", [False, True])
def test_polls_as_columns_are_the_frames_polls(tmp_path, monkeypatch, duplicate, block_bytes, whole_file):
    """Read in blocks (of one line, a few lines, the whole file) or whole, with a later row overriding an
    earlier one or not: the same polls and the same rejects as the frame the other readers make."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(sources, "STATUS_WHOLE_FILE_BYTES", 1 << 30 if whole_file else 0)
    path = tmp_path / "store_status.csv"
    path.write_text(MESSY + duplicate)
    columns, frame = sources.read_store_status(path, as_columns=True), sources.read_store_status(path)
    assert polls_of_columns(columns) == polls_of_frame(frame)
    assert columns.frame is None and columns.rows == len(columns.columns.store)
    assert [(r.line, r.reason) for r in columns.rejects] == [(r.line, r.reason) for r in frame.rejects]
    assert (columns.rejected, columns.rows_read) == (frame.rejected, frame.rows_read)
    assert columns.rejected == (3 if duplicate else 2)


def test_the_polls_are_read_as_columns_without_pandas(tmp_path):
    """pyarrow imports pandas when an array is made from Python values or turned into numpy; the polls'
    threads do neither, so they never wait for that import (the command line's hours thread makes it)."""
    path = tmp_path / "store_status.csv"
    path.write_text(MESSY.replace("c,active,yesterday\n", ""))  # (a timestamp in no ISO form goes to pandas)
    code = (
        "import sys, sources\n"
        f"parsed = sources.read_store_status({str(path)!r}, as_columns=True)\n"
        "print(parsed.rejected, len(parsed.columns.store), 'pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "6", "False"]


# --------------------------------------------------------------------------- the report from columns


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(stores())
def test_the_report_from_columns_is_the_report_from_frames(tmp_path_factory, case):
    now, polls_, hours, zones = case
    folder = write_files(tmp_path_factory.mktemp("case"), polls_, hours, zones)
    now_us = (now - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    report, _, parsed = reportGenerator.report_from_dir(folder, now_us)
    frames = sources.read_data_dir(folder)
    expected = utils.uptime_report(*(frames[f].frame for f in sources.FILES), now_us)
    assert report.to_dict("records") == expected.to_dict("records")
    assert parsed[sources.STATUS_FILE].rejected == frames[sources.STATUS_FILE].rejected


# --------------------------------------------------------------------------- blocks checked two at a time


def read_in_turn(path: Path) -> sources.Parsed:
    """The polls file streamed and checked one block after another (the reader before issue 21)."""
    parsed = sources.Parsed(file=sources.STATUS_FILE, frame=None)
    window = sources.poll_window()
    with open(path, "rb") as stream:
        for raw in sources._stream_raw_rows(sources.STATUS_FILE, stream, parsed):
            parsed.rows_read += len(raw)
            sources._check_polls(sources.Checker(parsed, raw), window)
            parsed.check_reject_limit(int(raw.line[-1]) if len(raw) else None)
    return parsed


ROWS = [
    "s{n},active,{t}.000000 UTC",
    "s{n},inactive,{t}.000000 UTC",
    "s{n},asleep,{t}.000000 UTC",  # unknown status
    "s{n}!,active,{t}.000000 UTC",  # bad store id
    "s{n},active,2023-01-22 25:00:00 UTC",  # unparseable timestamp
    "s{n},active",  # ragged
    "",  # blank
    "s{n},active,{t}.000000 UTC,extra",  # ragged
    's{n},"active",{t}.000000 UTC',  # quoted
]


def row(kind: int, number: int, stores: int = 7) -> str:
    """Row `number` of a kind; every good one at its own instant (so none is overridden)."""
    when = f"2023-01-22 {number // 3600:02d}:{number // 60 % 60:02d}:{number % 60:02d}"
    return ROWS[kind].format(n=number % stores, t=when)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(0, len(ROWS) - 1), min_size=0, max_size=600),  # (the first 4 KB are read with the header)
    st.sampled_from([1, 40, 200, 1 << 20]),
    st.sampled_from([2, 5, 1_000]),
    st.sampled_from([4, 10_000]),
    st.booleans(),
)
@example(
    kinds=[0] * 8 + [5] * 40 + [0] * 40, block_bytes=1 << 20, room=1_000, limit=4, not_utf8=False
)  # stop mid-block
def test_blocks_checked_ahead_count_as_in_turn(tmp_path, monkeypatch, kinds, block_bytes, room, limit, not_utf8):
    """Whatever the rows, the block size, the reasons kept (MAX_REJECTS_KEPT) and the reject limit: the same
    rejects, counts and end (a TooManyRejects with the same message) as checking the blocks in turn."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(sources, "MAX_REJECTS_KEPT", room)
    monkeypatch.setattr(sources, "REJECT_LIMIT", limit)
    monkeypatch.setattr(sources, "REJECT_SHARE", 0.05)
    monkeypatch.setattr(sources, "STATUS_WHOLE_FILE_BYTES", 0)
    lines = [row(kind, number) for number, kind in enumerate(kinds)]
    lines = lines[:8] + [row(0, number) for number in range(1_000, 1_150)] + lines[8:]
    if not_utf8 and lines:
        lines[len(lines) // 2] += "\udcff"  # a byte that is no UTF-8: the rest is read line by line
    path = tmp_path / "store_status.csv"
    path.write_bytes(("store_id,status,timestamp_utc\n" + "\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))

    def outcome(read):
        try:
            parsed = read(path)
        except sources.TooManyRejects as error:
            return "stopped", str(error)
        return [(r.line, r.reason) for r in parsed.rejects], parsed.rejected, parsed.rows_read

    assert outcome(lambda p: sources.read_store_status(p, as_columns=True)) == outcome(read_in_turn)
