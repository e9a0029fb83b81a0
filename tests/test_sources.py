"""CSV reading and validation (sources.py): every bad row reported with line and reason, good rows kept."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

import sources

HEADER = "store_id,status,timestamp_utc\n"


def status_rows(body: str, header: str = HEADER) -> sources.Parsed:
    return sources.read_store_status((header + body).encode())


def reasons(parsed: sources.Parsed) -> dict[int, str]:
    return {r.line: r.reason for r in parsed.rejects}


def test_good_rows_in_every_timestamp_form():
    parsed = status_rows(
        "1,active,2023-01-22 12:09:39.388884 UTC\n"
        "2,inactive,2023-01-22T12:09:39Z\n"
        "3,active,2023-01-22T13:09:39+01:00\n"
        "4,ACTIVE,2023-01-22 12:09:39 UTC\n"
        "5,active,2023-01-22T12:09:39.5\n"
    )
    assert parsed.rejected == 0
    stamps = dict(zip(parsed.frame["store_id"], parsed.frame["timestamp_us"]))
    assert stamps["1"] == 1674389379388884
    assert stamps["2"] == stamps["3"] == stamps["4"] == 1674389379000000
    assert stamps["5"] == 1674389379500000
    assert list(parsed.frame["active"]) == [True, False, True, True, True]


@pytest.mark.parametrize(
    "row, reason",
    [
        ("1,online,2023-01-22 12:09:39 UTC", "unknown status 'online'"),
        ("1,active,yesterday", "unparseable timestamp 'yesterday'"),
        ("1,active,2023-02-30 12:00:00 UTC", "unparseable timestamp"),
        ("1,active,", "unparseable timestamp ''"),
        (",active,2023-01-22 12:09:39 UTC", "missing store_id"),
        ("1,active", "missing column timestamp_utc"),
        ("", "blank line"),
        ("1,active,2023-01-22 12:09:39 UTC,extra", "expected 3 fields, found 4"),
        ("x" * 100 + ",active,2023-01-22 12:09:39 UTC", "store_id longer than 64"),
    ],
)
def test_bad_status_rows_are_reported_with_line(row, reason):
    parsed = status_rows(f"9,active,2023-01-22 12:00:00 UTC\n{row}\n8,inactive,2023-01-22 13:00:00 UTC\n")
    assert parsed.rows_read == 3
    assert len(parsed.frame) == 2  # both good rows kept
    assert parsed.rejected == 1
    assert reasons(parsed)[3].startswith(reason)


def test_duplicates_and_conflicts_later_row_wins():
    parsed = status_rows(
        "1,active,2023-01-22 12:00:00 UTC\n1,active,2023-01-22T12:00:00Z\n1,inactive,2023-01-22 12:00:00 UTC\n"
    )
    assert list(parsed.frame["active"]) == [False]
    assert reasons(parsed) == {
        2: "overridden by line 4 (same store_id and timestamp, later row wins)",
        3: "overridden by line 4 (same store_id and timestamp, later row wins)",
    }
    same = status_rows("1,active,2023-01-22 12:00:00 UTC\n1,active,2023-01-22 12:00:00 UTC\n")
    assert reasons(same) == {2: "duplicate of line 3 (same store_id and timestamp)"}


def test_store_ids_are_never_numbers():
    parsed = status_rows("9223372036854775807,active,2023-01-22 12:00:00 UTC\n0042,active,2023-01-22 12:00:00 UTC\n")
    assert list(parsed.frame["store_id"]) == ["0042", "9223372036854775807"]  # text order: "0" < "9"


def by_line(frame) -> list[tuple]:
    """The frame's polls as (line, store_id, timestamp_us, active), in file order."""
    return sorted(zip(frame["line"], frame["store_id"], frame["timestamp_us"], frame["active"]))


ORDER_FILE = HEADER + (
    "b,active,2023-01-22 12:00:00 UTC\n"  # line 2
    "a,inactive,2023-01-22 13:00:00 UTC\n"  # line 3
    "a,active,2023-01-22 12:00:00 UTC\n"  # line 4
    "b,inactive,2023-01-22 11:00:00 UTC\n"  # line 5
    "a,active,2023-01-22 13:00:00 UTC\n"  # line 6: the same store and instant as line 3, later: it wins
)


@pytest.mark.parametrize("blocks", [False, True])
def test_polls_come_sorted_by_store_then_time(tmp_path, monkeypatch, blocks):
    """The engine's order (store id, then time), each row keeping its line; the later of two rows for
    one store and instant wins wherever the sort puts them."""
    path = tmp_path / "store_status.csv"
    path.write_text(ORDER_FILE)
    parsed = read_in_blocks(monkeypatch, path, 40) if blocks else sources.read_store_status(path)
    frame = parsed.frame
    assert list(zip(frame["line"], frame["store_id"], frame["timestamp_us"], frame["active"])) == [
        (4, "a", NOON_US, True),
        (6, "a", NOON_US + 3_600_000_000, True),
        (5, "b", NOON_US - 3_600_000_000, False),
        (2, "b", NOON_US, True),
    ]
    assert [(r.line, r.reason) for r in parsed.rejects] == [
        (3, "overridden by line 6 (same store_id and timestamp, later row wins)")
    ]


def test_bom_crlf_quotes_and_bad_bytes():
    data = (
        "\ufeffstore_id,status,timestamp_utc\r\n"
        '"1",active,"2023-01-22 12:00:00 UTC"\r\n'
        '"2\nnewline",active,2023-01-22 12:00:00 UTC\r\n'
        "3,active,2023-01-22 12:00:00 UTC\r\n"
    ).encode() + b"4,\xff\xfe,2023-01-22 12:00:00 UTC\r\n"
    parsed = sources.read_store_status(data)
    assert list(parsed.frame["store_id"]) == ["1", "3"]
    assert reasons(parsed)[3] == "store_id '2\\nnewline' has characters other than letters, digits and - _ . : ;"
    assert reasons(parsed)[6] == "row is not valid UTF-8 text"
    assert parsed.rows_read == len(parsed.frame) + parsed.rejected


@pytest.mark.parametrize(
    "header",
    ["store_id;status;timestamp_utc\n", "id,status,timestamp_utc\n", "store_id,status\n", "\n"],
)
def test_wrong_header_rejects_the_file(header):
    with pytest.raises(sources.HeaderError, match="expected|empty"):
        status_rows("1,active,2023-01-22 12:00:00 UTC\n", header=header)


def test_empty_file_is_a_clear_error():
    with pytest.raises(sources.HeaderError, match="empty"):
        sources.read_store_status(b"")


def test_extra_header_columns_are_ignored_and_order_is_free():
    parsed = status_rows("2023-01-22 12:00:00 UTC,x,active,1\n", header="timestamp_utc,note,status,store_id\n")
    assert parsed.rejected == 0
    assert parsed.frame.loc[0, "store_id"] == "1"


def test_menu_hours_rows():
    parsed = sources.read_menu_hours(
        b"store_id,dayOfWeek,start_time_local,end_time_local\n"
        b"1,0,09:00:00,17:00:00\n"
        b"1,7,09:00:00,17:00:00\n"
        b"1,-1,09:00:00,17:00:00\n"
        b"1,mon,09:00:00,17:00:00\n"
        b"1,1,24:00:00,17:00:00\n"
        b"1,1,09:00:00,9am\n"
        b"1,2,22:00:00,02:00:00\n"
        b"1,2,22:00:00,02:00:00\n"
        b"1,3,9:30,17:00:00\n"
    )
    assert parsed.frame[["day", "start_s", "end_s"]].values.tolist() == [
        [0, 32400, 61200],
        [2, 79200, 7200],
        [3, 34200, 61200],
    ]
    assert [sources.hms(s) for s in parsed.frame["start_s"]] == ["09:00:00", "22:00:00", "09:30:00"]
    got = reasons(parsed)
    assert got[3].startswith("day '7' is not 0-6") and got[4].startswith("day '-1'") and got[5].startswith("day 'mon'")
    assert got[6] == "bad time '24:00:00' in start_time_local (expected HH:MM:SS)"
    assert got[7] == "bad time '9am' in end_time_local (expected HH:MM:SS)"
    assert got[8] == "duplicate of line 9 (same store, day and hours)"
    assert {r.file for r in parsed.rejects} == {sources.HOURS_FILE}


def test_timezone_rows():
    parsed = sources.read_timezones(
        b"store_id,timezone_str\n1,America/New_York\n2,Mars/Olympus\n1,America/Denver\n3,\n4,../../etc/passwd\n"
    )
    assert parsed.frame.to_dict("list") == {"store_id": ["1"], "timezone_str": ["America/Denver"], "line": [4]}
    assert list(parsed.frame.index) == [0]
    assert {r.file for r in parsed.rejects} == {sources.ZONES_FILE}
    got = reasons(parsed)
    assert got[2] == "overridden by line 4 (same store_id, later row wins)"
    assert got[3] == "unknown timezone name 'Mars/Olympus'"
    assert got[5] == "unknown timezone name ''"
    assert got[6].startswith("unknown timezone name")


def test_detect_file_by_header():
    assert sources.detect_file("store_id,status,timestamp_utc") == sources.STATUS_FILE
    assert sources.detect_file("\ufeffstore_id,dayOfWeek,start_time_local,end_time_local") == sources.HOURS_FILE
    assert sources.detect_file("store_id,timezone_str") == sources.ZONES_FILE
    assert sources.detect_file("a,b") is None


def test_read_data_dir_missing_file_is_noted(tmp_path):
    (tmp_path / "store_status.csv").write_text(HEADER + "1,active,2023-01-22 12:00:00 UTC\n")
    (tmp_path / "timezones.csv").write_text("store_id,timezone_str\n1,Nowhere/Town\n")
    parsed = sources.read_data_dir(tmp_path)
    assert len(parsed[sources.STATUS_FILE].frame) == 1
    assert [(r.file, r.line) for r in parsed[sources.ZONES_FILE].rejects] == [(str(tmp_path / "timezones.csv"), 2)]
    assert parsed[sources.HOURS_FILE].file == str(tmp_path / "menu_hours.csv")
    assert parsed[sources.HOURS_FILE].frame.empty
    assert "not found" in parsed[sources.HOURS_FILE].notes[0]


def test_huge_field_is_rejected_not_loaded():
    parsed = status_rows("x" * 1_000_000 + ",active,2023-01-22 12:00:00 UTC\n1,active,2023-01-22 12:00:00 UTC\n")
    assert reasons(parsed) == {2: "store_id longer than 64 characters"}
    assert list(parsed.frame["store_id"]) == ["1"]


# --------------------------------------------------------------------------- property-based fuzzing

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import examples  # noqa: E402

GOOD_STAMPS = st.integers(1_600_000_000_000_000, 1_700_000_000_000_000).map(
    lambda us: (us, sources.pd.Timestamp(us, unit="us", tz="UTC"))
)
CORRUPTIONS = [
    "status",
    "timestamp",
    "store_id_empty",
    "missing_field",
    "extra_field",
    "blank",
    "control",
    "long_id",
]


@st.composite
def status_files(draw):
    """A store_status file of good rows and known-bad rows, with what each line should become."""
    rows, expected = [], []
    for _ in range(draw(st.integers(0, 30))):
        store = draw(st.sampled_from(["1", "22", "9223372036854775807", "abc"]))
        us, stamp = draw(GOOD_STAMPS)
        text = draw(
            st.sampled_from(
                [
                    stamp.strftime("%Y-%m-%d %H:%M:%S.%f UTC"),
                    stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    stamp.tz_convert("America/New_York").isoformat(),
                ]
            )
        )
        status = draw(st.sampled_from(["active", "inactive", " Active ", "INACTIVE"]))
        corruption = draw(st.one_of(st.none(), st.sampled_from(CORRUPTIONS)))
        line = {
            None: f"{store},{status},{text}",
            "status": f"{store},online,{text}",
            "timestamp": f"{store},{status},{text[:7]}nonsense",
            "store_id_empty": f" ,{status},{text}",
            "missing_field": f"{store},{status}",
            "extra_field": f"{store},{status},{text},more",
            "blank": "   ",
            "control": f"{store}\x07,{status},{text}",
            "long_id": f"{'9' * 65},{status},{text}",
        }[corruption]
        rows.append(line)
        expected.append(None if corruption else (store, us, status.strip().lower() == "active"))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return (bom + "store_id,status,timestamp_utc" + newline + "".join(r + newline for r in rows)).encode(), expected


@settings(max_examples=examples(150), deadline=None)
@given(status_files())
def test_every_row_is_loaded_or_rejected_with_its_line(case):
    data, expected = case
    parsed = sources.read_store_status(data)
    assert parsed.rows_read == len(expected)
    assert len(parsed.frame) + parsed.rejected == parsed.rows_read
    rejected_lines = {r.line for r in parsed.rejects}
    # the later of two rows with one key wins; every other good row is loaded
    winners = {}
    for index, row in enumerate(expected):
        if row is not None:
            winners[(row[0], row[1])] = (index, row[2])
    loaded = {
        (s, t): (line, a)
        for s, t, line, a in zip(
            parsed.frame["store_id"], parsed.frame["timestamp_us"], parsed.frame["line"], parsed.frame["active"]
        )
    }
    assert loaded == {key: (index + 2, active) for key, (index, active) in winners.items()}
    for index, row in enumerate(expected):
        if row is None or winners[(row[0], row[1])][0] != index:
            assert index + 2 in rejected_lines


@settings(max_examples=examples(150), deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_reader(body):
    for file, header in (
        (sources.STATUS_FILE, b"store_id,status,timestamp_utc\n"),
        (sources.HOURS_FILE, b"store_id,day,start_time_local,end_time_local\n"),
        (sources.ZONES_FILE, b"store_id,timezone_str\n"),
    ):
        parsed = sources.READERS[file](header + body)
        assert len(parsed.frame) + parsed.rejected == parsed.rows_read
        assert all(len(s) <= sources.MAX_STORE_ID_LENGTH for s in parsed.frame["store_id"])


@pytest.mark.parametrize("extra", ["", "9,active\n", '"quoted\nbreak",active,2023-01-22 12:00:00 UTC\n', "5,\xe9,x\n"])
def test_block_reader_matches_the_whole_file_reader(tmp_path, monkeypatch, extra):
    """Bytes (and uploads) are streamed in blocks (here, tiny ones); the result is the same as reading the
    file whole, ragged rows, quoted line breaks and non-ASCII text included."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", 64)
    small_head(monkeypatch)
    rows = [
        f"{store},{'active' if n % 3 else 'inactive'},2023-01-22 {n % 24:02d}:{n % 60:02d}:00.{n:06d} UTC"
        for n, store in enumerate(["7", "12", "7", "300", "12"] * 8)
    ]
    rows[5] = "12,online,2023-01-22 01:00:00 UTC"
    rows[9] = rows[8]  # a duplicate
    text = HEADER + "\n".join(rows) + "\n" + extra + "12,active,2023-01-22 23:59:59 UTC\n"
    path = tmp_path / "store_status.csv"
    path.write_bytes(text.encode("utf-8"))
    from_file, from_bytes = sources.read_store_status(path), sources.read_store_status(text.encode("utf-8"))
    pd.testing.assert_frame_equal(from_file.frame, from_bytes.frame)
    assert [(r.line, r.reason) for r in from_file.rejects] == [(r.line, r.reason) for r in from_bytes.rejects]
    assert from_file.rows_read == from_bytes.rows_read == len(text.splitlines()) - 1 - (1 if "quoted" in extra else 0)
    assert list(from_file.frame["store_id"].cat.categories) == sorted(from_file.frame["store_id"].cat.categories)
    monkeypatch.setattr(sources, "STATUS_WHOLE_FILE_BYTES", 0)  # a large file on disk is streamed too
    streamed = sources.read_store_status(path)
    pd.testing.assert_frame_equal(streamed.frame, from_file.frame)
    assert [(r.line, r.reason) for r in streamed.rejects] == [(r.line, r.reason) for r in from_file.rejects]


BLOCK_FILE = (
    HEADER
    + "7,active,2023-01-22 12:00:00 UTC\n"  # line 2: overridden by line 6
    + "12,inactive,2023-01-22T12:30:00Z\n"  # line 3: duplicate of line 7
    + "7,online,2023-01-22 13:00:00 UTC\n"  # line 4: unknown status
    + "300,ACTIVE,2023-01-22 13:00:00.000001 UTC\n"  # line 5
    + "7,inactive,2023-01-22 12:00:00 UTC\n"  # line 6
    + "12,inactive,2023-01-22 12:30:00 UTC\n"  # line 7
    + ",active,2023-01-22 14:00:00 UTC\n"  # line 8: no store_id
    + "12,active,not a time\n"  # line 9: unparseable timestamp
    + "12,active,2023-01-22T15:00:00+01:00\n"  # line 10: 14:00 UTC
    + "0042,inactive,2023-01-22 14:00:00 UTC\n"  # line 11
)
# 2023-01-22 12:00:00 UTC is 1,674,388,800 s after the epoch (19,379 days of 86,400 s, plus 12 h)
NOON_US = 1_674_388_800_000_000
BLOCK_FILE_ROWS = [  # (line, store_id, timestamp_us, active), the later row of each key, in file order
    (5, "300", NOON_US + 3_600_000_000 + 1, True),
    (6, "7", NOON_US, False),
    (7, "12", NOON_US + 1_800_000_000, False),
    (10, "12", NOON_US + 7_200_000_000, True),
    (11, "0042", NOON_US + 7_200_000_000, False),
]
BLOCK_FILE_REJECTS = [
    (2, "overridden by line 6 (same store_id and timestamp, later row wins)"),
    (3, "duplicate of line 7 (same store_id and timestamp)"),
    (4, "unknown status 'online' (expected active or inactive)"),
    (8, "missing store_id"),
    (9, "unparseable timestamp 'not a time'"),
]


def small_head(monkeypatch) -> None:
    """The reader's first read takes MAX_HEADER_BYTES + 8 bytes, which would swallow a small test file
    whole: with a limit just over the header's length, the rows really come in blocks."""
    monkeypatch.setattr(sources, "MAX_HEADER_BYTES", 40)


def read_in_blocks(monkeypatch, path, block_bytes: int, file: str = "store_status.csv") -> sources.Parsed:
    """read_store_status on a file on disk, made to take the block-by-block reader with tiny blocks;
    the test fails if the file is handed to the whole-file reader instead."""

    def whole_file(*args, **kwargs):
        raise AssertionError("the file was handed to the whole-file reader")

    monkeypatch.setattr(sources, "STATUS_WHOLE_FILE_BYTES", 0)
    monkeypatch.setattr(sources, "BLOCK_BYTES", block_bytes)
    small_head(monkeypatch)
    monkeypatch.setattr(sources, "raw_rows", whole_file)
    return sources.read_store_status(path, file=file)


@pytest.mark.parametrize("block_bytes", [64, 150, 200, 1 << 20])  # 200: exactly two blocks
def test_block_reader_on_a_hand_written_file(tmp_path, monkeypatch, block_bytes):
    """The block reader's rows and rejects, worked out by hand for a file that spans several blocks
    (duplicates and overrides straddle blocks), not only compared with the whole-file reader."""
    path = tmp_path / "store_status.csv"
    path.write_bytes(BLOCK_FILE.encode())
    whole = sources.read_store_status(BLOCK_FILE.encode())
    for parsed in (read_in_blocks(monkeypatch, path, block_bytes), whole):
        frame = parsed.frame
        assert by_line(frame) == BLOCK_FILE_ROWS
        assert list(frame["store_id"].cat.categories) == ["0042", "12", "300", "7"]
        assert sorted((r.line, r.reason) for r in parsed.rejects) == BLOCK_FILE_REJECTS
        assert (parsed.rows_read, parsed.rejected) == (10, 5)


@pytest.mark.parametrize(
    "variant",
    ["no final newline", "crlf", "header case", "header spaces"],
)
def test_block_reader_takes_ordinary_variations_of_the_file(tmp_path, monkeypatch, variant):
    """Files the block reader must still vouch for itself (not hand to the whole-file reader): no line
    break after the last row, CRLF line ends, a header in other case or with spaces after the commas."""
    text = {
        "no final newline": BLOCK_FILE.rstrip("\n"),
        "crlf": BLOCK_FILE.replace("\n", "\r\n"),
        "header case": BLOCK_FILE.replace(HEADER, "STORE_ID,Status,Timestamp_UTC\n"),
        "header spaces": BLOCK_FILE.replace(HEADER, "store_id, status, timestamp_utc\n"),
    }[variant]
    path = tmp_path / "polls.csv"
    path.write_bytes(text.encode())
    parsed = read_in_blocks(monkeypatch, path, 64, file="polls.csv")
    frame = parsed.frame
    assert by_line(frame) == BLOCK_FILE_ROWS
    assert sorted((r.file, r.line, r.reason) for r in parsed.rejects) == [
        ("polls.csv", line, reason) for line, reason in BLOCK_FILE_REJECTS
    ]


def test_block_reader_rejects_a_wrong_header_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "STATUS_WHOLE_FILE_BYTES", 0)
    path = tmp_path / "store_status.csv"
    path.write_bytes(b"store_id;status;timestamp_utc\n1;active;2023-01-22 12:00:00 UTC\n")
    with pytest.raises(sources.HeaderError, match="wrong header 'store_id;status;timestamp_utc'"):
        sources.read_store_status(path)


# A byte that is not UTF-8 (line 3) sends the whole file to the line-by-line reader.
FALLBACK_FILE = (
    b"store_id,status,timestamp_utc\r\n"
    b"1,active,2023-01-22 12:00:00 UTC\r\n"  # line 2
    b"2,on\x80,2023-01-22 12:00:00 UTC\r\n"  # line 3: not UTF-8 (the lowest byte that is not)
    b"3,active\xff,2023-01-22 12:00:00 UTC\r\n"  # line 4: not UTF-8 (the highest)
    b"4,active,2023-01-22 12:00:00 UTC,x\r\n"  # line 5: a field too many
    b"   \r\n"  # line 6: blank
    b"\r\n"  # line 7: empty
    b'"5\r\nsplit",active,2023-01-22 12:00:00 UTC\r\n'  # lines 8-9: a quoted line break
    b"6,inactive,2023-01-22 13:00:00 UTC\r\n"  # line 10
    + b"9" * 200_000
    + b",active,2023-01-22 12:00:00 UTC\r\n"  # line 11: beyond the csv module's field limit
    + b"10,inactive,2023-01-22T14:00:00Z\r\n"  # line 12
    b"11,active\r\n"  # line 13
    b'12,"on\r\nline",2023-01-22 12:00:00 UTC\r\n'  # lines 14-15: a status with a quoted CRLF in it
)


@pytest.mark.parametrize("block_rows, block_bytes", [(None, None), (2, 40), (1, 7), (3, 1 << 20)])
def test_line_by_line_reader_by_hand(monkeypatch, block_rows, block_bytes):
    """The upload is read a block of text and a block of rows at a time (here down to one row and
    seven bytes); the rows, their lines and the rejects do not depend on where the blocks end."""
    if block_rows:
        monkeypatch.setattr(sources, "PYTHON_BLOCK_ROWS", block_rows)
        monkeypatch.setattr(sources, "BLOCK_BYTES", block_bytes)
        small_head(monkeypatch)
    parsed = sources.read_store_status(FALLBACK_FILE, file="polls.csv")
    frame = parsed.frame
    assert by_line(frame) == [
        (2, "1", NOON_US, True),
        (10, "6", NOON_US + 3_600_000_000, False),
        (12, "10", NOON_US + 7_200_000_000, False),
    ]
    assert sorted((r.line, r.reason) for r in parsed.rejects) == [
        (3, "row is not valid UTF-8 text"),
        (4, "row is not valid UTF-8 text"),
        (5, "expected 3 fields, found 4"),
        (6, "blank line"),
        (7, "blank line"),
        (8, "store_id '5\\r\\nsplit' has characters other than letters, digits and - _ . : ;"),
        (11, "unreadable CSV row: field larger than field limit (131072)"),
        (13, "missing column timestamp_utc"),
        (14, "unknown status 'on\\r\\nline' (expected active or inactive)"),
    ]
    assert {r.file for r in parsed.rejects} == {"polls.csv"}
    assert (parsed.rows_read, parsed.rejected) == (12, 9)


def test_blank_lines_are_worded_alike_by_both_readers():
    body = b"1,active,2023-01-22 12:00:00 UTC\n   \n\n , \n"
    arrow = sources.read_store_status(HEADER.encode() + body)
    by_line = sources.read_store_status(HEADER.encode() + body + b"\xff,active,2023-01-22 12:00:00 UTC\n")
    expected = [(3, "blank line"), (4, "blank line"), (5, "missing column timestamp_utc")]
    assert sorted((r.line, r.reason) for r in arrow.rejects) == expected
    assert sorted((r.line, r.reason) for r in by_line.rejects) == expected + [(6, "row is not valid UTF-8 text")]


def test_a_lone_carriage_return_is_not_a_line_end():
    """Lines end at LF (or CRLF), as uploads are streamed block by block at line ends: a row with a lone
    CR inside is one unreadable line, rejected with its number, and the rows after it keep theirs."""
    parsed = status_rows(
        "1,active,2023-01-22 12:00:00 UTC\r2,online,2023-01-22 12:00:00 UTC\n3,inactive,2023-01-22 12:00:00 UTC\n"
    )
    assert list(zip(parsed.frame["line"], parsed.frame["store_id"])) == [(3, "3")]
    assert list(reasons(parsed)) == [2] and reasons(parsed)[2].startswith("unreadable CSV row")
    assert (parsed.rows_read, parsed.rejected) == (2, 1)


@pytest.mark.parametrize("block_bytes", [40, 1 << 20])
def test_store_ids_across_blocks_are_one_sorted_catalog(monkeypatch, block_bytes):
    """Blocks number their own ids; the frame numbers them once, in name order: an id in several blocks,
    in several spellings of white space, is one store; an id whose only row is rejected is none."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", block_bytes)
    stamp = "2023-01-22 12:00:00 UTC"
    rows = [
        f"b,active,{stamp}",
        f"zz,active,{stamp}",
        f"bad id,active,{stamp}",
        *[f"m,active,2023-01-22 12:{i // 60:02d}:{i % 60:02d} UTC" for i in range(150)],  # past the first read
        " b ,inactive,2023-01-22 13:00:00 UTC",
        f"a,active,{stamp}",
        f"zz,online,{stamp}",
        "b,active,2023-01-22 11:00:00 UTC",
    ]
    parsed = status_rows("\n".join(rows) + "\n")
    frame = parsed.frame[parsed.frame["store_id"] != "m"]
    assert list(parsed.frame["store_id"].cat.categories) == ["a", "b", "m", "zz"]
    assert list(zip(frame["store_id"], frame["line"])) == [("a", 156), ("b", 158), ("b", 2), ("b", 155), ("zz", 3)]
    assert sorted(reasons(parsed)) == [4, 157]
    assert (parsed.frame["store_id"] == "m").sum() == 150


def test_parse_time_of_day_by_hand():
    values = ["09:00", "23:59:59", "24:00:00", "12:60:00", "12:00:60", " 7:05 ", "x", "00:00:00", "9:5", "12:59:59"]
    assert sources.parse_time_of_day(values).tolist() == [
        32_400,
        86_399,
        -1,
        -1,
        -1,
        25_500,
        -1,
        0,
        -1,
        12 * 3600 + 59 * 60 + 59,
    ]


def test_parse_time_of_day_repeats_and_absent_fields_in_chunks():
    """Each distinct text is parsed once and spread back to its rows, across chunks; an absent field
    (null, from a ragged row) and white space around a time read as they do alone."""
    import pyarrow as pa

    chunks = [
        pa.array(["09:00", None, " 09:00", "x"]),
        pa.array(["23:59:59", "09:00", None, "09:00:00"]),
        pa.array([], pa.string()),
    ]
    got = sources.parse_time_of_day(pa.chunked_array(chunks, pa.string()))
    assert got.tolist() == [32_400, -1, 32_400, -1, 86_399, 32_400, -1, 32_400]
    assert sources.parse_time_of_day([]).tolist() == []


def test_parse_timestamps_by_hand():
    got = sources.parse_timestamps_us(["2023-01-22 12:09:39.388884 UTC", "garbage", "2023-01-22T12:09:39+01:00"])
    assert got.tolist() == [1_674_389_379_388_884, np.iinfo(np.int64).min, 1_674_385_779_000_000]


def test_long_values_are_quoted_short_in_reasons():
    forty = "x" * 40
    parsed = status_rows(f"1,active,{forty}\n2,active,{forty}y\n")
    assert reasons(parsed) == {2: f"unparseable timestamp '{forty}'", 3: f"unparseable timestamp '{forty}...'"}


def test_a_row_short_of_an_ignored_column_is_ragged():
    parsed = status_rows(
        "1,active,2023-01-22 12:00:00 UTC\n2,active,2023-01-22 12:00:00 UTC,n\n",
        header="store_id,status,timestamp_utc,note\n",
    )
    assert reasons(parsed) == {2: "expected 4 fields, found 3"}
    assert list(parsed.frame["store_id"]) == ["2"]


def test_frames_have_their_documented_types():
    polls = status_rows("1,active,2023-01-22 12:00:00 UTC\n").frame
    hours = sources.read_menu_hours(b"store_id,day,start_time_local,end_time_local\n1,2,09:00:00,17:00:00\n").frame
    zones = sources.read_timezones(b"store_id,timezone_str\n1,UTC\n").frame
    assert dict(polls.dtypes.astype(str)) == {
        "store_id": "category",
        "timestamp_us": "int64",
        "active": "bool",
        "line": "int64",
    }
    assert list(hours.columns) == ["store_id", "day", "start_s", "end_s", "line"]
    assert [str(hours[c].dtype) for c in ("day", "start_s", "end_s", "line")] == ["int64"] * 4
    assert list(zones.columns) == ["store_id", "timezone_str", "line"]
    for frame in (polls, hours, zones):
        assert list(frame.index) == [0]


ARROW_FILES = {  # name: (file body after the header, rows_read, {line: reason}) worked out by hand
    "clean": ("1,active,2023-01-22 12:00:00 UTC\n2,inactive,2023-01-22 13:00:00 UTC\n", 2, {}),
    "crlf": ("1,active,2023-01-22 12:00:00 UTC\r\n2,inactive,2023-01-22 13:00:00 UTC\r\n", 2, {}),
    "no final newline": ("1,active,2023-01-22 12:00:00 UTC\n2,inactive,2023-01-22 13:00:00 UTC", 2, {}),
    "ragged and blank": (
        "1,active\n\n   \n2,active,2023-01-22 12:00:00 UTC,x\n3,active,2023-01-22 12:00:00 UTC\n",
        5,
        {2: "missing column timestamp_utc", 3: "blank line", 4: "blank line", 5: "expected 3 fields, found 4"},
    ),
    "utf-8 beyond ascii": (
        "1,active,2023-01-22 12:00:00 UTC\n2,\u00e9t\u00e9,2023-01-22 12:00:00 UTC\n",
        2,
        {3: "unknown status '\u00e9t\u00e9' (expected active or inactive)"},
    ),
}


@pytest.mark.parametrize("name", list(ARROW_FILES))
def test_ordinary_files_are_read_by_arrow_alone(tmp_path, monkeypatch, name):
    """The Arrow reader vouches for ordinary files itself (Python touches only rejected rows); the
    line-by-line reader is only for what Arrow cannot number (bad bytes, quoted line breaks)."""

    def no_fallback(*args, **kwargs):
        raise AssertionError("the line-by-line reader was used")

    monkeypatch.setattr(sources, "_raw_rows_python", no_fallback)
    body, rows_read, expected = ARROW_FILES[name]
    path = tmp_path / "store_status.csv"
    path.write_bytes((HEADER + body).encode())
    for parsed in (status_rows(body), sources.read_store_status(path)):  # an upload, and a file on disk
        assert parsed.rows_read == rows_read
        assert reasons(parsed) == expected


def test_quoted_line_breaks_keep_the_true_line_numbers():
    parsed = status_rows(
        '1,"act\nive",2023-01-22 12:00:00 UTC\n2,online,2023-01-22 12:00:00 UTC\n3,active,2023-01-22 12:00:00 UTC\n'
    )
    assert reasons(parsed) == {
        2: "unknown status 'act\\nive' (expected active or inactive)",
        4: "unknown status 'online' (expected active or inactive)",
    }
    assert list(zip(parsed.frame["line"], parsed.frame["store_id"])) == [(5, "3")]


# --------------------------------------------------------------------------- files on disk

DISK_FILE = (
    b"store_id,status,timestamp_utc\r\n"
    b"1,active,2023-01-22 12:00:00 UTC\r\n"  # line 2
    b"2,on,2023-01-22 12:00:00 UTC\r\n"  # line 3: unknown status
    b"\r\n"  # line 4: blank
    b"3,inactive,2023-01-22 13:00:00 UTC"  # line 5, no line break after it
)
DISK_ROWS = [(2, "1", NOON_US, True), (5, "3", NOON_US + 3_600_000_000, False)]
DISK_REJECTS = [(3, "unknown status 'on' (expected active or inactive)"), (4, "blank line")]


@pytest.mark.parametrize("scan_bytes", [1, 7, 1 << 23])
@pytest.mark.parametrize(
    "variant, text",
    [
        ("ascii", DISK_FILE),
        ("lf", DISK_FILE.replace(b"\r\n", b"\n")),
        ("bom", b"\xef\xbb\xbf" + DISK_FILE),  # not ASCII: read whole into memory
        ("quoted line break", DISK_FILE.replace(b"2,on,", b'"2\non",x,')),  # pyarrow cannot vouch for it
    ],
)
def test_a_file_on_disk_read_in_pieces(tmp_path, monkeypatch, scan_bytes, variant, text):
    """A file on disk is looked over in pieces of SCAN_BYTES and then read by pyarrow from the file;
    the rows, their line numbers and the rejects are the hand-worked ones whatever the piece size."""
    monkeypatch.setattr(sources, "SCAN_BYTES", scan_bytes)
    path = tmp_path / "store_status.csv.gz"  # plain text all the same: pyarrow must not decompress it
    path.write_bytes(text)
    parsed = sources.read_store_status(path)
    rejects = sorted((r.line, r.reason) for r in parsed.rejects)
    if variant == "quoted line break":  # lines 3-4 are one row, so the rest move down a line
        assert by_line(parsed.frame) == [DISK_ROWS[0], (6, *DISK_ROWS[1][1:])]
        assert rejects == [
            (3, "store_id '2\\non' has characters other than letters, digits and - _ . : ;"),
            (5, "blank line"),
        ]
    else:
        assert by_line(parsed.frame) == DISK_ROWS
        assert rejects == DISK_REJECTS
    assert parsed.rows_read == 4


def test_a_blank_file_on_disk_is_a_clear_error(tmp_path):
    path = tmp_path / "store_status.csv"
    path.write_bytes(b" \r\n\n  \n")
    with pytest.raises(sources.HeaderError) as error:
        sources.read_store_status(path)
    assert str(error.value) == EMPTY
    path.write_bytes(b"\xef\xbb\xbf \r\n\t\n")  # a byte order mark and white space: empty too
    with pytest.raises(sources.HeaderError) as error:
        sources.read_store_status(path)
    assert str(error.value) == EMPTY
    path.write_bytes(b" " * 4200 + b"\x0c\n")  # blank for over 4 KB, then not
    with pytest.raises(sources.HeaderError) as error:
        sources.read_store_status(path)
    assert "header" in str(error.value) and "empty" not in str(error.value)


def test_a_header_as_long_as_allowed_on_disk(tmp_path):
    header = "x" * (sources.MAX_HEADER_BYTES - 30) + ",store_id,status,timestamp_utc"  # MAX_HEADER_BYTES bytes
    path = tmp_path / "store_status.csv"
    path.write_text(header + "\n,7,active,2023-01-22 12:00:00 UTC\n")
    assert by_line(sources.read_store_status(path).frame) == [(2, "7", NOON_US, True)]


def test_the_line_by_line_reader_on_disk(tmp_path):
    """A file on disk that is not UTF-8 is read line by line; a lone CR is not a line end there either."""
    path = tmp_path / "store_status.csv"
    path.write_bytes(
        (
            HEADER + "1,active,2023-01-22 12:00:00 UTC\r2,online,2023-01-22 12:00:00 UTC\n"
            "3,inactive,2023-01-22 12:00:00 UTC\n"
        ).encode()
        + b"\xff,active,2023-01-22 12:00:00 UTC\n"
    )
    parsed = sources.read_store_status(path)
    assert by_line(parsed.frame) == [(3, "3", NOON_US, False)]
    assert [r.line for r in parsed.rejects] == [2, 4] and parsed.rejects[0].reason.startswith("unreadable CSV row")
    assert parsed.rejects[1].reason == "row is not valid UTF-8 text"


def test_an_upload_that_ends_without_a_line_break_in_bytes_that_are_not_utf8(monkeypatch):
    monkeypatch.setattr(sources, "BLOCK_BYTES", 16)
    small_head(monkeypatch)
    parsed = sources.read_store_status(
        io.BytesIO((HEADER + "1,active,2023-01-22 12:00:00 UTC\n").encode() + b"\xff,active,2023-01-22 12:00:00 UTC")
    )
    assert by_line(parsed.frame) == [(2, "1", NOON_US, True)]
    assert [(r.line, r.reason) for r in parsed.rejects] == [(3, "row is not valid UTF-8 text")]


# --------------------------------------------------------------------------- uploads, streamed


class RecordingStream(io.BytesIO):
    """An upload that remembers how much each read asked for."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.asked: list = []

    def read(self, size=-1):
        self.asked.append(size)
        return super().read(size)


@pytest.mark.parametrize("body", [BLOCK_FILE.encode(), FALLBACK_FILE])
def test_an_upload_is_read_a_block_at_a_time_never_whole(monkeypatch, body):
    """Memory stays bounded by the block, not the upload: every read names a size no larger than a
    block (the header's first read a few bytes over MAX_HEADER_BYTES), on the Arrow and the
    line-by-line path alike."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", 64)
    small_head(monkeypatch)
    stream = RecordingStream(body)
    parsed = sources.read_store_status(stream)
    assert parsed.rows_read == (10 if body is not FALLBACK_FILE else 12)
    assert stream.asked[0] == 40 + 8
    assert len(stream.asked) > len(body) // 64 and all(size == 64 for size in stream.asked[1:])
    assert stream.tell() == len(body)  # and it was read to the end


def test_an_upload_of_an_ordinary_file_stays_on_the_arrow_reader(monkeypatch):
    """Blocks cut at line ends are each vouched for by pyarrow; the line-by-line reader is not needed."""

    def no_fallback(*args, **kwargs):
        raise AssertionError("the line-by-line reader was used")

    monkeypatch.setattr(sources, "_raw_rows_python", no_fallback)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 64)
    small_head(monkeypatch)
    parsed = sources.read_store_status(BLOCK_FILE.encode())
    assert by_line(parsed.frame) == sorted(BLOCK_FILE_ROWS)
    assert sorted((r.line, r.reason) for r in parsed.rejects) == BLOCK_FILE_REJECTS


def test_an_ordinary_file_on_disk_stays_on_the_arrow_reader(tmp_path, monkeypatch):
    def no_fallback(*args, **kwargs):
        raise AssertionError("the line-by-line reader was used")

    monkeypatch.setattr(sources, "_raw_rows_python", no_fallback)
    for name, text in [
        ("lf", DISK_FILE.replace(b"\r\n", b"\n")),
        ("crlf", DISK_FILE),
        ("final newline", DISK_FILE + b"\n"),
    ]:
        path = tmp_path / f"{name}.csv"
        path.write_bytes(text)
        parsed = sources.read_store_status(path)
        assert by_line(parsed.frame) == DISK_ROWS, name
        assert sorted((r.line, r.reason) for r in parsed.rejects) == DISK_REJECTS, name


EMPTY = "store_status.csv: the file is empty; expected the header store_id,status,timestamp_utc"


@pytest.mark.parametrize(
    "upload",
    [b"", b"   \r\n\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf \n\t\n", b" " * sources.MAX_HEADER_BYTES],
)
def test_an_empty_upload_is_called_empty(upload):
    with pytest.raises(sources.HeaderError) as error:
        sources.read_store_status(io.BytesIO(upload), file="store_status.csv")
    assert str(error.value) == EMPTY


@pytest.mark.parametrize(
    "upload",
    [b"X\x0c\n", b"X\n", b"\x0b\n", b"\xef\xbb\xbfa\n", b"abc\n", b" " * (sources.MAX_HEADER_BYTES + 8) + b"\nx\n"],
)
def test_an_upload_that_is_not_blank_is_not_called_empty(upload):
    """Short or late text is a wrong header, not an empty file: only white space (and a byte order
    mark) make an upload empty, and only when it is all there is."""
    with pytest.raises(sources.HeaderError) as error:
        sources.read_store_status(io.BytesIO(upload), file="store_status.csv")
    assert "header" in str(error.value) and "empty" not in str(error.value)


def test_a_header_as_long_as_allowed_is_read_whole():
    header = "store_id,status,timestamp_utc,"
    header += "x" * (sources.MAX_HEADER_BYTES - len(header))  # exactly MAX_HEADER_BYTES bytes
    parsed = sources.read_store_status(io.BytesIO((header + "\n7,active,2023-01-22 12:00:00 UTC,\n").encode()))
    assert by_line(parsed.frame) == [(2, "7", NOON_US, True)]


def test_a_line_longer_than_the_limit_rejects_the_upload(monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 50)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 16)
    rows = "".join(f"7,active,2023-01-22 12:00:{n % 60:02d} UTC\n" for n in range(130))  # past the first read
    upload = (HEADER + rows + "9" * 60).encode()
    with pytest.raises(sources.HeaderError) as error:
        sources.read_store_status(io.BytesIO(upload), file="polls.csv")
    assert str(error.value) == (
        "store_status.csv: line 132 is longer than 50 bytes, so this is not a CSV export; the whole file is rejected"
    )
    ok = (HEADER + rows + "9" * 50).encode()  # a last line of 50 bytes: not over the limit
    assert sources.read_store_status(io.BytesIO(ok)).rows_read == 131


def test_a_file_with_no_rows_has_the_documented_types(tmp_path):
    """A header and nothing else, streamed, read whole, or read line by line (a header that is not UTF-8
    beyond the expected columns): no rows, and the frame's columns keep their types."""
    latin1 = b"store_id,status,timestamp_utc,r\xe9gion\n"
    path = tmp_path / "store_status.csv"
    path.write_bytes(latin1)
    for parsed in (
        sources.read_store_status(HEADER.encode()),
        sources.read_store_status(path),
        sources.read_store_status(latin1),
    ):
        assert parsed.rows_read == 0 and parsed.rejected == 0
        assert dict(parsed.frame.dtypes.astype(str)) == {
            "store_id": "category",
            "timestamp_us": "int64",
            "active": "bool",
            "line": "int64",
        }


def test_summary_keeps_twenty_rejects_and_the_notes():
    body = "".join(f"{n},online,2023-01-22 12:00:00 UTC\n" for n in range(25))
    parsed = status_rows(body)
    parsed.notes.append("a note")
    summary = parsed.summary()
    assert [r["line"] for r in summary["rejects"]] == list(range(2, 22))
    assert summary["notes"] == ["a note"]
    assert (summary["rows_read"], summary["loaded"], summary["rejected"]) == (25, 0, 25)


@pytest.mark.parametrize("block_bytes", [16, 20, 64, 1 << 20])
def test_a_quoted_line_break_across_a_block_cut_stays_one_row(monkeypatch, block_bytes):
    """Blocks are cut at line ends; one that falls inside quotes (an odd number of them before it) must
    not split the quoted value into two rows."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", block_bytes)
    small_head(monkeypatch)
    parsed = status_rows(
        '"7",active,2023-01-22 12:00:00 UTC\n"8\nx",active,2023-01-22 12:00:00 UTC\n'
        "9,inactive,2023-01-22 12:00:00 UTC\n"
    )  # three quotes before the cut: still odd
    assert by_line(parsed.frame) == [(2, "7", NOON_US, True), (5, "9", NOON_US, False)]
    assert [(r.line, r.reason) for r in parsed.rejects] == [
        (3, "store_id '8\\nx' has characters other than letters, digits and - _ . : ;")
    ]
    assert parsed.rows_read == 3


def test_polls_across_the_calendar_come_sorted(tmp_path, monkeypatch):
    """40 stores polled in year 2000 and in year 9000 (MAX_FUTURE_SECONDS set wide open), given in reverse:
    the stores times the span of time (7,000 years, 2.2e17 us) is beyond 2**62, so the packed sort cannot be
    used; the order is still store, time."""
    monkeypatch.setenv("MAX_FUTURE_SECONDS", str(10**12))
    rows = [f"s{i:02d},active,{year}-01-24 17:30:00 UTC\n" for i in range(40) for year in ("2000", "9000")]
    path = tmp_path / "store_status.csv"
    path.write_text(HEADER + "".join(reversed(rows)))
    frame = sources.read_store_status(path).frame
    assert list(frame["store_id"]) == [f"s{i:02d}" for i in range(40) for _ in range(2)]
    assert list(frame["line"]) == [81 - 2 * i - k for i in range(40) for k in (0, 1)]
    stamps = frame["timestamp_us"].to_numpy()
    assert (stamps[0::2] < 10**15).all() and (stamps[1::2] > 2 * 10**17).all()
    assert 40 * (stamps.max() - stamps.min() + 1) >= 2**62


def test_white_space_around_fields_is_trimmed():
    """Padding around a store id, a status or a timestamp is not part of it (on either reader)."""
    body = " 7 ,\tactive , 2023-01-22 12:00:00 UTC \n"
    for data in ((HEADER + body).encode(), (HEADER + body).encode() + b"\xff,x,y\n"):
        parsed = sources.read_store_status(data)
        assert by_line(parsed.frame) == [(2, "7", NOON_US, True)]


def test_the_line_by_line_reader_reading_a_byte_at_a_time(monkeypatch):
    """LF line ends, an empty line, and reads of one byte: a read can end just before a line feed that
    starts the next piece of text."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", 1)
    small_head(monkeypatch)
    upload = (
        HEADER.encode() + b"\xff,active,2023-01-22 12:00:00 UTC\n1,active,2023-01-22 12:00:00 UTC\n\n"
        b"3,inactive,2023-01-22 13:00:00 UTC\n"
    )
    parsed = sources.read_store_status(io.BytesIO(upload))
    assert by_line(parsed.frame) == [(3, "1", NOON_US, True), (5, "3", NOON_US + 3_600_000_000, False)]
    assert sorted((r.line, r.reason) for r in parsed.rejects) == [(2, "row is not valid UTF-8 text"), (4, "blank line")]


# --------------------------------------------------------------------------- run J's survivors (mutation testing)


def test_a_line_longer_than_the_limit_rejects_the_upload_on_the_line_by_line_path(monkeypatch):
    """Once an upload is on the line-by-line reader (a byte that is not UTF-8 on line 2), a line over
    MAX_LINE_BYTES rejects the whole file as on the Arrow path; it used to be cut into pieces that
    each counted as a row, so the rows after it got wrong line numbers."""
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 50)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 16)
    small_head(monkeypatch)
    upload = (
        HEADER.encode()
        + b"\xff,active,2023-01-22 12:00:00 UTC\n"  # line 2: not UTF-8
        + b"1,active,2023-01-22 12:00:00 UTC\n"  # line 3
        + b"9" * 120
        + b",active,2023-01-22 12:00:00 UTC\n"  # line 4: 151 bytes
        + b"3,inactive,2023-01-22 13:00:00 UTC\n"
    )  # line 5
    with pytest.raises(sources.HeaderError) as error:
        sources.read_store_status(io.BytesIO(upload), file="polls.csv")
    assert str(error.value) == (
        "store_status.csv: line 4 is longer than 50 bytes, so this is not a CSV export; the whole file is rejected"
    )


def test_a_line_as_long_as_the_limit_is_a_row_on_the_line_by_line_path(monkeypatch):
    """A line of exactly MAX_LINE_BYTES (a 19-digit store id and the rest: 50 bytes), read a byte at a
    time so that it is once exactly that long with no line feed yet, is an ordinary row."""
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 50)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 1)
    small_head(monkeypatch)
    row = b"9" * 19 + b",active,2023-01-22 12:00:00 UTC"
    assert len(row) == 50
    upload = HEADER.encode() + b"\xff,active,2023-01-22 12:00:00 UTC\n" + row + b"\n" + row[1:] + b"\n"
    parsed = sources.read_store_status(io.BytesIO(upload))
    assert by_line(parsed.frame) == [(3, "9" * 19, NOON_US, True), (4, "9" * 18, NOON_US, True)]
    assert [(r.line, r.reason) for r in parsed.rejects] == [(2, "row is not valid UTF-8 text")]


def test_the_line_by_line_reader_yields_blocks_of_its_row_count(monkeypatch):
    """Memory on the line-by-line path is bounded by PYTHON_BLOCK_ROWS: five rows in blocks of two come
    as blocks of 2, 2 and 1 rows, numbered in file order."""
    monkeypatch.setattr(sources, "PYTHON_BLOCK_ROWS", 2)
    upload = (
        HEADER.encode()
        + b"\xff,active,2023-01-22 12:00:00 UTC\n"
        + b"".join(f"{n},active,2023-01-22 12:00:00 UTC\n".encode() for n in range(4))
    )
    parsed = sources.Parsed(file=sources.STATUS_FILE, frame=pd.DataFrame())
    blocks = list(sources._stream_raw_rows(sources.STATUS_FILE, io.BytesIO(upload), parsed))
    assert [block.line.tolist() for block in blocks] == [[2, 3], [4, 5], [6]]
    assert [block.columns["store_id"].to_pylist() for block in blocks] == [[None, "0"], ["1", "2"], ["3"]]
    assert [block.problems for block in blocks] == [{0: "row is not valid UTF-8 text"}, {}, {}]


def test_an_upload_with_quoted_fields_stays_on_the_arrow_reader(monkeypatch):
    """Quotes around fields are ordinary: a block with an even number of them (no quoted line break cut
    in two) is read by pyarrow, not handed to the line-by-line reader."""

    def no_fallback(*args, **kwargs):
        raise AssertionError("the line-by-line reader was used")

    monkeypatch.setattr(sources, "_raw_rows_python", no_fallback)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 64)
    small_head(monkeypatch)
    quoted = HEADER + "".join(
        f'"{line.split(",", 1)[0]}",{line.split(",", 1)[1]}\n' for line in BLOCK_FILE[len(HEADER) :].splitlines()
    )
    parsed = sources.read_store_status(quoted.encode())
    assert by_line(parsed.frame) == sorted(BLOCK_FILE_ROWS)
    assert sorted((r.line, r.reason) for r in parsed.rejects) == BLOCK_FILE_REJECTS


def test_an_upload_of_ragged_rows_stops_at_the_row_that_passes_the_limit(monkeypatch):
    """Reading stops inside a block at the ragged row that takes the rejects past REJECT_LIMIT (here 3)
    and REJECT_SHARE: line 2 is good, lines 3 to 12 hold one field each, so the fourth of them, line 6,
    is where it stops, with 4 of the 5 rows read so far rejected."""
    monkeypatch.setattr(sources, "REJECT_LIMIT", 3)
    upload = HEADER.encode() + b"1,active,2023-01-22 12:00:00 UTC\n" + b"a\n" * 10
    with pytest.raises(sources.TooManyRejects) as error:
        sources.read_store_status(upload)
    assert str(error.value) == (
        "store_status.csv: stopped reading at line 6: 4 of 5 rows read were rejected (more than 3 and 10%), so "
        "the whole file is rejected and nothing from it was loaded; first rejects: line 3: missing column status; "
        "line 4: missing column status; line 5: missing column status"
    )


def test_bytes_that_are_not_utf8_in_an_ignored_column_reject_the_row(tmp_path, monkeypatch):
    """pyarrow does not look at the bytes of a column it is told to skip, so the reader must: a row with
    bytes that are not UTF-8 anywhere is rejected as such, uploaded or on disk, even in an extra column
    (0x80: the lowest byte that is not ASCII, and not UTF-8 on its own)."""
    data = (
        b"store_id,status,timestamp_utc,note\n1,active,2023-01-22 12:00:00 UTC,caf\x80\n"
        b"2,active,2023-01-22 12:00:00 UTC,ok\n"
    )
    path = tmp_path / "store_status.csv"
    path.write_bytes(data)
    for parsed in (sources.read_store_status(data), sources.read_store_status(path)):
        assert by_line(parsed.frame) == [(3, "2", NOON_US, True)]
        assert [(r.line, r.reason) for r in parsed.rejects] == [(2, "row is not valid UTF-8 text")]


def test_a_ragged_row_that_starts_with_200_blanks_is_not_blank():
    """A row of one field, 250 spaces and an x, is short of columns, not blank: the Arrow reader used to
    look only at its first 200 characters (the text it keeps) and call it a blank line."""
    body = HEADER.encode() + b"1,active,2023-01-22 12:00:00 UTC\n" + b" " * 250 + b"x\n"
    for data in (body, body + b"\xff,active,2023-01-22 12:00:00 UTC\n"):  # Arrow, then line by line
        parsed = sources.read_store_status(data)
        assert (parsed.rejects[0].line, parsed.rejects[0].reason) == (3, "missing column status")


def test_an_upload_in_blocks_stops_just_past_the_reject_share(monkeypatch):
    """REJECT_LIMIT 3 and REJECT_SHARE 25%, twelve good rows (lines 2-13) then ragged ones (lines 14-21),
    in blocks of 64 bytes: at line 17 the rejects are 4 of 16 rows, exactly 25%, not more, so reading
    goes on; at line 18 they are 5 of 17 and it stops there, in a later block than the first."""
    monkeypatch.setattr(sources, "REJECT_LIMIT", 3)
    monkeypatch.setattr(sources, "REJECT_SHARE", 0.25)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 64)
    small_head(monkeypatch)
    upload = HEADER.encode() + b"1,active,2023-01-22 12:00:00 UTC\n" * 12 + b"a\n" * 8
    with pytest.raises(sources.TooManyRejects) as error:
        sources.read_store_status(upload)
    assert str(error.value) == (
        "store_status.csv: stopped reading at line 18: 5 of 17 rows read were rejected (more than 3 and 25%), so "
        "the whole file is rejected and nothing from it was loaded; first rejects: line 14: missing column status; "
        "line 15: missing column status; line 16: missing column status"
    )


@pytest.mark.parametrize(
    "stamp, us",
    [
        ("2023-01-22T12:09:39Z", 1_674_389_379_000_000),
        ("2023-01-22T13:09:39+01:00", 1_674_389_379_000_000),
        ("2023-01-22 12:09:39", 1_674_389_379_000_000),
        ("2023-01-22T12:09:39.5", 1_674_389_379_500_000),
        ("2023-01-22 12:09:39.388884 UTC", 1_674_389_379_388_884),
        (" 2023-01-22 12:09:39.388884 UTC ", 1_674_389_379_388_884),  # padded: " UTC" is cut after trimming
        ("2023-01-22T12:09:39.388884123Z", 1_674_389_379_388_884),  # nanoseconds: pandas reads it, cut to µs
        # 9000-01-24 17:30 UTC: 7,030 years from 1970 with 1,705 leap days, plus 23 days and 17.5 hours
        ("9000-01-24T18:30:00+01:00", (2_567_655 + 23) * 86_400_000_000 + 63_000_000_000),
        # 2260-01-22 12:09:39 UTC: 290 years with 70 leap days, plus 21 days; an odd microsecond count over
        # 2**53, which a float cannot hold
        ("2260-01-22T12:09:39.388885123Z", (105_920 + 21) * 86_400_000_000 + 43_779_388_885),
    ],
)
def test_a_file_with_timestamps_all_in_one_form(monkeypatch, stamp, us):
    """Every row in the same form (no mix of forms to make a fast path give up): each form is read to
    the microsecond; the export's fast path is only for values that end in " UTC", and a time with an
    offset is read far beyond pandas' nanosecond range (year 2262), once MAX_FUTURE_SECONDS lets it in."""
    monkeypatch.setenv("MAX_FUTURE_SECONDS", str(10**12))
    parsed = status_rows(f"1,active,{stamp}\n2,inactive,{stamp}\n")
    assert by_line(parsed.frame) == [(2, "1", us, True), (3, "2", us, False)]
    assert parsed.rejected == 0


def test_timestamps_at_and_beyond_the_ends_of_the_calendar(monkeypatch):
    """The first and the last microsecond a datetime can hold (0001-01-01 and 9999-12-31T23:59:59.999999
    UTC) are read; an offset that takes a time before the first or after the last is unparseable.  A file
    keeps the last (MAX_FUTURE_SECONDS wide open) but not the first: it is before 2000."""
    first_us = -719_162 * 86_400_000_000  # 1,969 years of 365 days and 477 leap days before the epoch
    last_us = (2_932_897 * 86_400 - 1) * 1_000_000 + 999_999  # 8,030 years to 10000-01-01 (1,947 leap days)
    stamps = [
        "0001-01-01 00:00:00 UTC",
        "9999-12-31 23:59:59.999999 UTC",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59.999999-01:00",
    ]
    assert sources.parse_timestamps_us(stamps).tolist() == [first_us, last_us] + [np.iinfo(np.int64).min] * 2
    monkeypatch.setenv("MAX_FUTURE_SECONDS", str(10**12))
    parsed = status_rows("".join(f"{n},active,{stamp}\n" for n, stamp in enumerate(stamps, 1)))
    assert by_line(parsed.frame) == [(3, "2", last_us, True)]
    assert [(r.line, r.reason) for r in parsed.rejects] == [
        (2, "timestamp '0001-01-01 00:00:00 UTC' is before 2000-01-01, the earliest this service accepts"),
        (4, "unparseable timestamp '0001-01-01T00:00:00+01:00'"),
        (5, "unparseable timestamp '9999-12-31T23:59:59.999999-01:00'"),
    ]


@pytest.mark.parametrize(
    "good, bad, loaded",
    [(6, 2, 8), (10, 3, 12), (10, 4, None)],  # the rejects are then 3 of 11 rows, 4 of 16 and 5 of 17
)
def test_a_file_on_disk_is_rejected_only_past_both_reject_limits(tmp_path, monkeypatch, good, bad, loaded):
    """With REJECT_LIMIT 3 and REJECT_SHARE 25%: line 2 is a duplicate of line 3, then `good` rows of
    other stores, `bad` rows of unknown status and one more good row. 3 rejects are not more than the
    limit and 4 of 16 rows are not more than the share, so those files load; 5 of 17 is past both. The
    whole-file reader has no line to name, and the first rejects are listed by line."""
    monkeypatch.setattr(sources, "REJECT_LIMIT", 3)
    monkeypatch.setattr(sources, "REJECT_SHARE", 0.25)
    rows = (
        ["1,active,2023-01-22 12:00:00 UTC"] * 2
        + [f"{n},active,2023-01-22 12:00:00 UTC" for n in range(2, 2 + good)]
        + ["9,online,2023-01-22 12:00:00 UTC"] * bad
        + ["99,inactive,2023-01-22 12:00:00 UTC"]
    )
    path = tmp_path / "store_status.csv"
    path.write_text(HEADER + "".join(row + "\n" for row in rows))
    if loaded is not None:
        parsed = sources.read_store_status(path)
        assert (parsed.rows_read, len(parsed.frame), parsed.rejected) == (len(rows), loaded, bad + 1)
        return
    with pytest.raises(sources.TooManyRejects) as error:
        sources.read_store_status(path)
    assert str(error.value) == (
        "store_status.csv: stopped reading: 5 of 17 rows read were rejected (more than 3 and 25%), so the whole "
        "file is rejected and nothing from it was loaded; first rejects: line 2: duplicate of line 3 (same "
        "store_id and timestamp); line 14: unknown status 'online' (expected active or inactive); line 15: "
        "unknown status 'online' (expected active or inactive)"
    )


def test_rejects_beyond_the_reasons_kept_are_still_counted(monkeypatch):
    """Only MAX_REJECTS_KEPT reasons (here 2) are kept, but every rejected row is counted."""
    monkeypatch.setattr(sources, "MAX_REJECTS_KEPT", 2)
    parsed = status_rows(
        "".join(f"{n},online,2023-01-22 12:00:00 UTC\n" for n in range(5)) + "7,active,2023-01-22 12:00:00 UTC\n"
    )
    assert (parsed.rows_read, len(parsed.frame), parsed.rejected) == (6, 1, 5)
    assert [r.line for r in parsed.rejects] == [2, 3]


def test_a_block_that_starts_with_an_empty_line_stays_on_the_arrow_reader(monkeypatch):
    """Read a byte at a time, the upload's empty line 3 is a block of its own, b"\\n": one line, counted
    from its very first byte, so pyarrow's one row matches and the line-by-line reader is not needed."""

    def no_fallback(*args, **kwargs):
        raise AssertionError("the line-by-line reader was used")

    monkeypatch.setattr(sources, "_raw_rows_python", no_fallback)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 1)
    small_head(monkeypatch)
    parsed = status_rows("1,active,2023-01-22 12:00:00 UTC\n\n2,inactive,2023-01-22 13:00:00 UTC\n")
    assert by_line(parsed.frame) == [(2, "1", NOON_US, True), (4, "2", NOON_US + 3_600_000_000, False)]
    assert [(r.line, r.reason) for r in parsed.rejects] == [(3, "blank line")]


def test_a_row_blank_but_for_one_field_is_not_a_blank_line():
    """Only a row with nothing but white space in every field is a blank line: one with a status alone,
    or a timestamp alone, is missing its store_id."""
    parsed = status_rows(",active,\n , ,2023-01-22 12:00:00 UTC\n , , \n")
    assert reasons(parsed) == {2: "missing store_id", 3: "missing store_id", 4: "blank line"}


def test_a_checker_words_no_more_reasons_than_the_file_keeps(monkeypatch):
    """Reasons are worded only while the file has room for them (here 2): once the first check has
    used the room, a later check's rejects are counted but not worded, however many they are."""
    monkeypatch.setattr(sources, "MAX_REJECTS_KEPT", 2)
    parsed = sources.Parsed(file=sources.STATUS_FILE, frame=pd.DataFrame(), rows_read=5)
    raw = sources._python_block({name: ["x"] * 5 for name in sources.COLUMNS[sources.STATUS_FILE]}, [2, 3, 4, 5, 6], {})
    check = sources.Checker(parsed, raw)
    worded = []
    check.fail(np.array([True, True, False, False, False]), lambda i: worded.append(i) or "first")
    check.fail(np.array([False, False, True, True, True]), lambda i: worded.append(i) or "second")
    assert worded == [0, 1]
    assert check.finish().tolist() == []
    assert (parsed.rejected, [(r.line, r.reason) for r in parsed.rejects]) == (5, [(2, "first"), (3, "first")])


def test_a_long_wrong_header_is_quoted_to_200_characters():
    """The message about a wrong header quotes its first 200 characters, no more."""
    missing = "x" * 250
    twice = "store_id,status,timestamp_utc,status,store_id," + "x" * 200
    for header, message in [
        (
            missing,
            (
                f"store_status.csv: wrong header {'x' * 200!r}: expected columns store_id,status,timestamp_utc "
                "(missing store_id, status, timestamp_utc); check the file and its delimiter (comma)"
            ),
        ),
        (twice, f"store_status.csv: header {twice[:200]!r} names status, store_id more than once"),
    ]:
        with pytest.raises(sources.HeaderError) as error:
            status_rows("1,active,2023-01-22 12:00:00 UTC\n", header=header + "\n")
        assert str(error.value) == message


def test_header_names_lose_white_space_and_quotes_only():
    """A header name is trimmed of white space and of quotes the csv module leaves (after a space), and
    nothing else: an X before or after store_id makes another name."""
    parsed = status_rows("1,active,2023-01-22 12:00:00 UTC\n", header='store_id, "status", "timestamp_utc"\n')
    assert by_line(parsed.frame) == [(2, "1", NOON_US, True)]
    for header in ("Xstore_id,status,timestamp_utc\n", "store_idX,status,timestamp_utc\n"):
        with pytest.raises(sources.HeaderError, match="missing store_id"):
            status_rows("1,active,2023-01-22 12:00:00 UTC\n", header=header)


def test_a_header_as_long_as_allowed_after_a_byte_order_mark():
    """The byte order mark is not part of the header's length: MAX_HEADER_BYTES after it are read."""
    header = "store_id,status,timestamp_utc,"
    header += "x" * (sources.MAX_HEADER_BYTES - len(header))  # exactly MAX_HEADER_BYTES bytes
    upload = b"\xef\xbb\xbf" + (header + "\n7,active,2023-01-22 12:00:00 UTC,\n").encode()
    assert by_line(sources.read_store_status(io.BytesIO(upload)).frame) == [(2, "7", NOON_US, True)]


def test_a_header_too_long_or_too_wide_is_refused_by_name():
    expected = "expected the header store_id,status,timestamp_utc"
    too_long = HEADER.rstrip("\n") + "," + "x" * sources.MAX_HEADER_BYTES
    with pytest.raises(sources.HeaderError) as error:
        status_rows("7,active,2023-01-22 12:00:00 UTC\n", header=too_long + "\n")
    assert str(error.value) == f"store_status.csv: the header is longer than 4096 bytes; {expected}"
    wide = HEADER.rstrip("\n") + "".join(f",c{n}" for n in range(61))  # 64 columns: allowed
    row = "7,active,2023-01-22 12:00:00 UTC" + "," * 61
    assert by_line(status_rows(row + "\n", header=wide + "\n").frame) == [(2, "7", NOON_US, True)]
    with pytest.raises(sources.HeaderError) as error:  # 65 columns
        status_rows(row + ",\n", header=wide + ",c61\n")
    assert str(error.value) == f"store_status.csv: the header has more than 64 columns; {expected}"


@pytest.mark.parametrize(
    "header, quoted",
    [
        (b"\nstore_id,status,timestamp_utc\n", "''"),  # the first line is empty
        (b"store_id;status;timestamp_utc;X\r\n", "'store_id;status;timestamp_utc;X'"),  # only the CR goes
        (b"store_id;status;timestamp_utc  \n", "'store_id;status;timestamp_utc  '"),  # spaces stay
    ],
)
def test_a_wrong_header_is_quoted_as_its_first_line(header, quoted):
    with pytest.raises(sources.HeaderError) as error:
        sources.read_store_status(header + b"7,active,2023-01-22 12:00:00 UTC\n")
    assert str(error.value) == (
        f"store_status.csv: wrong header {quoted}: expected columns store_id,status,"
        "timestamp_utc (missing store_id, status, timestamp_utc); check the file and its "
        "delimiter (comma)"
    )


def test_a_polls_file_on_disk_up_to_the_limit_is_read_whole(tmp_path, monkeypatch):
    """A polls file on disk of up to STATUS_WHOLE_FILE_BYTES is read in one go: one of exactly that many
    bytes takes the whole-file reader, one a byte longer is streamed."""
    path = tmp_path / "store_status.csv"
    path.write_bytes(BLOCK_FILE.encode())
    size = path.stat().st_size

    def refused(*args, **kwargs):
        raise AssertionError("the other reader was used")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "STATUS_WHOLE_FILE_BYTES", size)
        patch.setattr(sources, "_stream_raw_rows", refused)
        assert by_line(sources.read_store_status(path).frame) == BLOCK_FILE_ROWS
    with monkeypatch.context() as patch:
        patch.setattr(sources, "STATUS_WHOLE_FILE_BYTES", size - 1)
        patch.setattr(sources, "raw_rows", refused)
        assert by_line(sources.read_store_status(path).frame) == BLOCK_FILE_ROWS


def test_an_upload_stops_after_the_block_whose_checks_pass_the_limit(monkeypatch):
    """Rows of the right shape but an unknown status are rejected by the checks, block by block (here a
    block per line): reading stops after the block of line 5, the fourth reject of four rows."""
    monkeypatch.setattr(sources, "REJECT_LIMIT", 3)
    monkeypatch.setattr(sources, "REJECT_SHARE", 0.25)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 1)
    small_head(monkeypatch)
    online = "unknown status 'online' (expected active or inactive)"
    with pytest.raises(sources.TooManyRejects) as error:
        status_rows("9,online,2023-01-22 12:00:00 UTC\n" * 8)
    assert str(error.value) == (
        "store_status.csv: stopped reading at line 5: 4 of 4 rows read were rejected (more than 3 and 25%), so "
        f"the whole file is rejected and nothing from it was loaded; first rejects: line 2: {online}; "
        f"line 3: {online}; line 4: {online}"
    )


def test_reject_reasons_are_kept_up_to_the_limit_and_only_counted_beyond(monkeypatch):
    monkeypatch.setattr(sources, "MAX_REJECTS_KEPT", 3)
    parsed = sources.Parsed("store_status.csv", pd.DataFrame())
    parsed.reject([2, 3], ["bad a", "bad b"])
    assert parsed.room == 1
    parsed.reject([4, 5, 6], ["bad c", "bad d", "bad e"])
    assert parsed.room == 0 and parsed.rejected == 5
    parsed.reject([7], ["bad f"])
    assert [(r.line, r.reason) for r in parsed.rejects] == [(2, "bad a"), (3, "bad b"), (4, "bad c")]
    assert parsed.rejected == 6


# --------------------------------------------------------------------------- poisoned rows: out of time, odd zones

# 2026-12-07 13:40:00 UTC: 56 years from 1970 with 14 leap days (20,454 days), plus 340 days and 13 h 40 min
CLOCK_US = 20_794 * 86_400_000_000 + (13 * 60 + 40) * 60_000_000
CLOCK = "2026-12-07 13:40:00 UTC"
ZONES_HEADER = "store_id,timezone_str\n"


def too_late(stamp: str, seconds: int = 86_400) -> str:
    return (
        f"timestamp '{stamp}' is more than {seconds} s after this server's clock ({CLOCK}); "
        "set MAX_FUTURE_SECONDS to accept it"
    )


def too_early(stamp: str) -> str:
    return f"timestamp '{stamp}' is before 2000-01-01, the earliest this service accepts"


def not_region(name: str) -> str:
    return f"'{name}' is not an IANA region time zone"


def every_read_path(tmp_path, monkeypatch, file: str, text: str) -> dict[str, tuple[list[int], dict[int, str]]]:
    """The file `text` read by every path, each giving (the lines loaded, {line: reason}): an upload (bytes,
    streamed through Arrow), an upload in 64-byte blocks, an upload with a byte that is not UTF-8 on an extra
    last line (the line-by-line reader; that line's reject left out), the file on disk (read whole), in a data
    folder (read_data_dir) and, for polls, on disk streamed in blocks."""
    read = sources.READERS[file]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / file).write_text(text)
    bad_bytes = text.encode() + b"\xff" + b"," * (len(sources.COLUMNS[file]) - 1) + b"\n"
    last = len(text.splitlines()) + 1
    results = {
        "upload": read(text.encode()),
        "by line": read(bad_bytes),
        "disk": read(folder / file),
        "data dir": sources.read_data_dir(folder)[file],
    }
    with monkeypatch.context() as patch:
        patch.setattr(sources, "BLOCK_BYTES", 64)
        small_head(patch)
        results["upload in blocks"] = read(text.encode())
        if file == sources.STATUS_FILE:
            results["disk in blocks"] = read_in_blocks(patch, folder / file, 64)
    assert reasons(results["by line"]).pop(last) == "row is not valid UTF-8 text"
    return {
        name: (sorted(parsed.frame["line"]), {r.line: r.reason for r in parsed.rejects if r.line != last})
        for name, parsed in results.items()
    }


@pytest.fixture
def clock(monkeypatch):
    """The server's clock stopped at CLOCK, and MAX_FUTURE_SECONDS at its default."""
    monkeypatch.setattr(sources, "_server_clock_us", lambda: CLOCK_US)
    monkeypatch.delenv("MAX_FUTURE_SECONDS", raising=False)


@pytest.mark.parametrize(
    "setting, stamp, reason",  # MAX_FUTURE_SECONDS (None: unset), the timestamp on line 3, its reject (None: kept)
    [
        (None, "2026-12-08 13:40:00 UTC", None),  # exactly one day after the clock
        (None, "2026-12-08T13:40:00Z", None),
        (None, "2026-12-08 13:40:00.000001 UTC", too_late("2026-12-08 13:40:00.000001 UTC")),
        (None, "2026-12-08T14:40:00.000001+01:00", too_late("2026-12-08T14:40:00.000001+01:00")),
        (None, "2100-01-01 00:00:00 UTC", too_late("2100-01-01 00:00:00 UTC")),
        ("4000000000", "2100-01-01 00:00:00 UTC", None),  # 126 years
        ("0", "2026-12-07 13:40:00 UTC", None),
        ("0", "2026-12-07 13:40:00.000001 UTC", too_late("2026-12-07 13:40:00.000001 UTC", 0)),
        (None, "9999-12-31 23:59:59.999999 UTC", too_late("9999-12-31 23:59:59.999999 UTC")),
        (str(10**12), "9999-12-31 23:59:59.999999 UTC", None),  # a window past the calendar's end
        (None, "2000-01-01 00:00:00 UTC", None),
        (None, "1999-12-31 23:59:59.999999 UTC", too_early("1999-12-31 23:59:59.999999 UTC")),
        (None, "2000-01-01T00:59:59.999999+01:00", too_early("2000-01-01T00:59:59.999999+01:00")),
        (None, "1970-01-01 00:00:00 UTC", too_early("1970-01-01 00:00:00 UTC")),
        (str(10**12), "0001-01-01 00:00:00 UTC", too_early("0001-01-01 00:00:00 UTC")),
    ],
)
def test_polls_out_of_time_are_rejected_on_every_path(tmp_path, monkeypatch, clock, setting, stamp, reason):
    """A poll more than MAX_FUTURE_SECONDS after the server's clock, or before 2000, is a counted reject
    with its line, whatever the path and the timestamp's form; the limits themselves are accepted."""
    if setting is not None:
        monkeypatch.setenv("MAX_FUTURE_SECONDS", setting)
    text = HEADER + f"1,active,2023-01-22 12:00:00 UTC\n2,active,{stamp}\n3,inactive,2023-01-22 13:00:00 UTC\n"
    expected = ([2, 4], {3: reason}) if reason else ([2, 3, 4], {})
    assert every_read_path(tmp_path, monkeypatch, sources.STATUS_FILE, text) == {
        name: expected for name in ("upload", "by line", "disk", "data dir", "upload in blocks", "disk in blocks")
    }


def test_poisoned_polls_among_other_rejects(tmp_path, monkeypatch, clock):
    """A row's first failed check is its reason: a bad status or an unparseable timestamp before the
    window; a rejected poll is no winner over another row of its key; "now" stays with the good polls."""
    text = HEADER + (
        "1,active,2023-01-22 12:00:00 UTC\n"  # line 2: kept
        "2,online,2100-01-01 00:00:00 UTC\n"  # line 3: unknown status
        "3,active,2100-01-01 00:00:00 UTC\n"  # line 4: too late
        "4,active,1999-12-31 23:59:59 UTC\n"  # line 5: too early
        "5,active,not a time\n"  # line 6: unparseable
        "3,inactive,2100-01-01T00:00:00Z\n"  # line 7: too late (not an override of line 4)
        ",active,1990-01-01 00:00:00 UTC\n"  # line 8: no store_id
        "6,inactive,2023-01-22 13:00:00 UTC\n"  # line 9: kept
    )
    expected = (
        [2, 9],
        {
            3: "unknown status 'online' (expected active or inactive)",
            4: too_late("2100-01-01 00:00:00 UTC"),
            5: too_early("1999-12-31 23:59:59 UTC"),
            6: "unparseable timestamp 'not a time'",
            7: too_late("2100-01-01T00:00:00Z"),
            8: "missing store_id",
        },
    )
    got = every_read_path(tmp_path, monkeypatch, sources.STATUS_FILE, text)
    assert got == {name: expected for name in got} and len(got) == 6
    parsed = status_rows(text.removeprefix(HEADER))
    assert (parsed.rows_read, parsed.rejected, int(parsed.frame["timestamp_us"].max())) == (
        8,
        6,
        NOON_US + 3_600_000_000,
    )


def test_max_future_seconds_is_read_for_each_file(monkeypatch, clock):
    body = "1,active,2026-12-07 14:40:00 UTC\n"  # an hour after the clock
    assert status_rows(body).rejected == 0
    monkeypatch.setenv("MAX_FUTURE_SECONDS", "3599")
    assert reasons(status_rows(body)) == {2: too_late("2026-12-07 14:40:00 UTC", 3599)}
    monkeypatch.setenv("MAX_FUTURE_SECONDS", "3600")
    assert status_rows(body).rejected == 0


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1e5", "", "86400s"])
def test_a_bad_max_future_seconds_is_a_clear_error(tmp_path, monkeypatch, value):
    """Refused before any row is read, on every path that reads polls; the other files do not use it."""
    monkeypatch.setenv("MAX_FUTURE_SECONDS", value)
    message = f"MAX_FUTURE_SECONDS must be a whole number of seconds, 0 or more (default 86400); got {value!r}"
    with pytest.raises(ValueError) as error:
        status_rows("1,active,2023-01-22 12:00:00 UTC\n")
    assert str(error.value) == message
    (tmp_path / "store_status.csv").write_text(HEADER)
    with pytest.raises(ValueError, match="^MAX_FUTURE_SECONDS must be"):
        sources.read_data_dir(tmp_path)
    assert len(sources.read_timezones((ZONES_HEADER + "1,UTC\n").encode()).frame) == 1


@pytest.mark.parametrize(
    "name, reason",  # the zone on line 3 and its reject (None: kept)
    [
        ("Factory", not_region("Factory")),
        ("localtime", not_region("localtime")),
        ("posixrules", not_region("posixrules")),
        ("right/UTC", not_region("right/UTC")),
        ("posix/Europe/Paris", not_region("posix/Europe/Paris")),
        ("posix/Mars/Olympus", not_region("posix/Mars/Olympus")),  # worded alike on hosts with or without posix/
        ("UTC", None),
        ("Etc/UTC", None),
        ("Etc/GMT+5", None),
        ("America/New_York", None),
        ("Mars/Olympus", "unknown timezone name 'Mars/Olympus'"),
    ],
)
def test_zones_that_are_no_region_are_rejected_on_every_path(tmp_path, monkeypatch, name, reason):
    text = ZONES_HEADER + f"1,UTC\n2,{name}\n3,Europe/Paris\n"
    expected = ([2, 4], {3: reason}) if reason else ([2, 3, 4], {})
    assert every_read_path(tmp_path, monkeypatch, sources.ZONES_FILE, text) == {
        path: expected for path in ("upload", "by line", "disk", "data dir", "upload in blocks")
    }


def test_region_zones_are_the_pinned_tzdata_zones_but_factory():
    """Every zone of the pinned tzdata package but `Factory`; never the host's `localtime` and the like."""
    import importlib.resources

    pinned = set(importlib.resources.files("tzdata").joinpath("zones").read_text().split())
    regions = sources.region_zones()
    assert pinned - regions == {"Factory"}
    assert {"UTC", "Etc/UTC", "Etc/GMT+5", "America/New_York"} <= regions
    assert not regions & {"localtime", "Factory", "posixrules"}
    assert not [zone for zone in regions if zone.startswith(("posix/", "right/"))]
