"""The benchmark's DuckDB peer (benchmarks/peer_duckdb.py) is exact, so comparing speed with it means something.

Its exact ticks equal tests/reference.py's on the sample, on generated weeks across both US DST changes,
on the property tests' random stores (tests/test_utils.py's strategy: odd zones, duplicates with
conflicting statuses, polls after now) and on the hand-worked DST edge cases; and the CSV it writes is
byte for byte the one the command line (reportGenerator.py, run as a process) writes.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.conftest import examples
from tests.reference import reference_ticks
from tests.test_utils import edge_case, stores

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("peer_duckdb", ROOT / "benchmarks" / "peer_duckdb.py")
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- files in and out


def write_files(folder: Path, polls, hours, zones, day_header: str = "day") -> Path:
    """The three CSV files of a case: polls (store, aware datetime, status), hours (store, day, start s,
    end s), zones {store: name}."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "store_status.csv", "w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["store_id", "status", "timestamp_utc"])
        rows.writerows((s, status, when.strftime("%Y-%m-%d %H:%M:%S.%f UTC")) for s, when, status in polls)
    with open(folder / "menu_hours.csv", "w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["store_id", day_header, "start_time_local", "end_time_local"])
        rows.writerows((s, day, clock(start), clock(end)) for s, day, start, end in hours)
    with open(folder / "timezones.csv", "w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["store_id", "timezone_str"])
        rows.writerows(zones.items())
    return folder


def clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def read_files(folder: Path):
    """The case in a folder as `reference_ticks` takes it, read with the csv module (neither the
    engine's reader nor the peer's), and its newest poll."""
    with open(folder / "store_status.csv", newline="") as source:
        polls = [
            (
                row["store_id"],
                dt.datetime.strptime(row["timestamp_utc"], "%Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=UTC),
                row["status"],
            )
            for row in csv.DictReader(source)
        ]
    hours = []
    if (folder / "menu_hours.csv").exists():
        with open(folder / "menu_hours.csv", newline="") as source:
            for row in csv.DictReader(source):
                day = row.get("day", row.get("dayOfWeek"))
                hours.append(
                    (
                        row["store_id"],
                        int(day),
                        dt.time.fromisoformat(row["start_time_local"]),
                        dt.time.fromisoformat(row["end_time_local"]),
                    )
                )
    zones = {}
    if (folder / "timezones.csv").exists():
        with open(folder / "timezones.csv", newline="") as source:
            zones = {row["store_id"]: row["timezone_str"] for row in csv.DictReader(source)}
    return polls, hours, zones, max(when for _, when, _ in polls)


def cli_report(folder: Path, output: Path) -> bytes:
    subprocess.run(
        [sys.executable, str(ROOT / "reportGenerator.py"), "--data-dir", str(folder), "--output", str(output)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return output.read_bytes()


def check_folder(folder: Path, tmp_path: Path) -> int:
    """Peer against the reference (exact ticks, every store) and the CLI (bytes); returns the stores."""
    polls, hours, zones, now = read_files(folder)
    expected = reference_ticks(polls, hours, zones, now)
    got = peer.peer_ticks(folder)
    assert got.keys() == expected.keys()
    mismatches = [store for store in expected if got[store] != expected[store]]
    assert mismatches == [], f"{len(mismatches)} stores differ, e.g. {mismatches[0]}: {got[mismatches[0]]}"
    assert peer.write_report(folder, tmp_path / "peer.csv") == len(expected)
    assert (tmp_path / "peer.csv").read_bytes() == cli_report(folder, tmp_path / "cli.csv")
    return len(expected)


# --------------------------------------------------------------------------- real-shaped data


def test_the_sample_is_exact_and_byte_identical(tmp_path):
    assert check_folder(ROOT / "data", tmp_path) == 200


# Weeks whose window holds a US DST change (2023-03-12 07:00 UTC forward, 2023-11-05 06:00 UTC back for New
# York; the other zones an hour or more later), or whose now falls inside the changing night.
DST_WEEKS = ["2023-03-14T12:00:00Z", "2023-03-12T09:30:00Z", "2023-11-07T06:30:00Z", "2023-11-05T08:45:00Z"]


@pytest.mark.parametrize("end", DST_WEEKS)
def test_generated_dst_weeks_are_exact_and_byte_identical(tmp_path, end):
    folder = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "generate_data.py"),
            "--stores",
            "60",
            "--seed",
            str(len(end)),
            "--end",
            end,
            "--out",
            str(folder),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert check_folder(folder, tmp_path) == 60


# --------------------------------------------------------------------------- random and hand-worked cases


def test_later_duplicates_win_first_poll_and_later_ones(tmp_path):
    at = dt.datetime(2023, 1, 25, 17, 0, tzinfo=UTC)
    minute = dt.timedelta(minutes=1)
    polls = [
        ("a", at, "inactive"),  # the first instant, three rows: the last (active) wins
        ("a", at, "inactive"),
        ("a", at, "active"),
        ("a", at + 30 * minute, "active"),
        ("a", at + 30 * minute, "inactive"),  # wins: down from 17:15
        ("a", at + 40 * minute, "inactive"),
        ("a", at + 50 * minute, "active"),  # up from 17:45
        ("a", at + 50 * minute, "active"),
        ("b", at + 10 * minute, "active"),
        ("b", at + 10 * minute, "inactive"),  # b's only instant: down all along
    ]
    folder = write_files(tmp_path / "data", polls, [], {"a": "UTC", "b": "UTC"})
    got = peer.peer_ticks(folder, at + 60 * minute)
    assert got == reference_ticks(polls, [], {"a": "UTC", "b": "UTC"}, at + 60 * minute)
    assert got["a"]["uptime_last_hour"] == 30 * 60 * peer.TICKS_PER_SECOND  # 17:00-17:15 and 17:45-18:00
    assert got["b"]["uptime_last_week"] == 0


def test_the_day_of_week_header_and_missing_optional_files(tmp_path):
    at = dt.datetime(2023, 1, 25, 17, 0, tzinfo=UTC)
    polls = [("s", at, "active"), ("t", at, "inactive")]
    # Wednesday 09:00-17:00 in Chicago (no zone row) is 15:00-23:00 UTC: in the week from Wednesday 01-18 17:00
    # UTC, 6 h on 01-18 and 2 h on 01-25
    hours = [("s", 2, 9 * 3600, 17 * 3600)]
    folder = write_files(tmp_path / "named", polls, hours, {}, day_header="dayOfWeek")
    got = peer.peer_ticks(folder)
    assert got == reference_ticks(polls, [("s", 2, dt.time(9), dt.time(17))], {}, at)
    assert got["s"]["uptime_last_week"] == 8 * 3600 * peer.TICKS_PER_SECOND
    (folder / "menu_hours.csv").unlink()
    (folder / "timezones.csv").unlink()
    assert peer.peer_ticks(folder)["s"]["uptime_last_week"] == 7 * 86_400 * peer.TICKS_PER_SECOND


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(stores())
@example(edge_case("saturday_overnight_in_los_angeles_a_week_back"))
@example(edge_case("chatham_row_at_the_far_end"))
@example(edge_case("fold_in_new_york_counts_the_first_occurrence"))
@example(edge_case("gap_in_new_york_means_the_end_of_the_skip"))
def test_peer_matches_the_reference_exactly(tmp_path_factory, case):
    now, polls, hours, zones = case
    folder = write_files(tmp_path_factory.mktemp("case"), polls, hours, zones)
    expected = reference_ticks(
        polls,
        [(s, d, dt.time.fromisoformat(clock(a)), dt.time.fromisoformat(clock(b))) for s, d, a, b in hours],
        zones,
        now,
    )
    assert peer.peer_ticks(folder, now) == expected
