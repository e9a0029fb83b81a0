"""The report engine in utils.py: hand-worked cases, time-zone edge cases, and a
hypothesis property test against the per-store reference in tests/reference.py;
parsing the as_of instant; cutting the stores into ranges and joining their ticks."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import utils
from tests.conftest import examples
from tests.reference import reference_ticks

UTC = dt.UTC


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def us(when: dt.datetime) -> int:
    return (when - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)


def seconds_of(text: str) -> int:
    h, m, s = map(int, text.split(":"))
    return h * 3600 + m * 60 + s


def frames(polls, hours=(), zones=None):
    """Engine inputs from lists: polls (store, 'YYYY-MM-DD HH:MM:SS[.f]' UTC, status),
    hours (store, day, start, end)."""
    zones = zones or {}
    poll_frame = pd.DataFrame(
        {
            "store_id": [p[0] for p in polls],
            "timestamp_us": np.array([us(utc(p[1])) for p in polls], dtype=np.int64),
            "active": [p[2] == "active" for p in polls],
        }
    )
    hour_frame = pd.DataFrame(
        {
            "store_id": [h[0] for h in hours],
            "day": np.array([h[1] for h in hours], dtype=np.int64),
            "start_s": np.array([seconds_of(h[2]) for h in hours], dtype=np.int64),
            "end_s": np.array([seconds_of(h[3]) for h in hours], dtype=np.int64),
        }
    )
    zone_frame = pd.DataFrame({"store_id": list(zones), "timezone_str": list(zones.values())})
    return poll_frame, hour_frame, zone_frame


def report_for(polls, hours=(), zones=None, now="2023-01-25 18:00:00"):
    report = utils.uptime_report(*frames(polls, hours, zones), us(utc(now)))
    return {row["store_id"]: row for row in report.to_dict("records")}


def row_of(report, store="s"):
    row = report[store]
    return {k: v for k, v in row.items() if k != "store_id"}


# --------------------------------------------------------------------------- hand-worked cases


def test_worked_example_from_the_spec():
    # 09:00-12:00 local (UTC zone), polls 10:14 active and 11:15 inactive:
    # active 09:00-10:44:30 (1 h 44.5 min), inactive 10:44:30-12:00 (1 h 15.5 min)
    polls = [("s", "2023-01-24 10:14:00", "active"), ("s", "2023-01-24 11:15:00", "inactive")]
    report = report_for(polls, [("s", 1, "09:00:00", "12:00:00")], {"s": "UTC"}, now="2023-01-24 13:00:00")
    assert row_of(report) == {
        "uptime_last_hour": 0.0,
        "uptime_last_day": round(104.5 / 60, 2),
        "uptime_last_week": round(104.5 / 60, 2),
        "downtime_last_hour": 0.0,
        "downtime_last_day": round(75.5 / 60, 2),
        "downtime_last_week": round(75.5 / 60, 2),
    }


def test_tie_at_midpoint_goes_to_later_poll():
    # polls 10:00 active and 10:30 inactive; the hour window is [09:30, 10:30). The midpoint 10:15 is as
    # near to both polls and belongs to the later one, so active covers [09:30, 10:15) and inactive
    # [10:15, 10:30). Counted in unrounded ticks (half-microseconds) the midpoint's own tick is on the
    # inactive side: were the tie given to the earlier poll, uptime would be one tick more.
    polls = [("s", "2023-01-24 10:00:00", "active"), ("s", "2023-01-24 10:30:00", "inactive")]
    poll_frame, hours, zones = frames(polls, zones={"s": "UTC"})
    ticks = utils.uptime_ticks(poll_frame, hours, zones, us(utc("2023-01-24 10:30:00")))
    assert ticks.loc[0, "uptime_last_hour"] == 45 * 60 * utils.TICKS_PER_SECOND
    assert ticks.loc[0, "downtime_last_hour"] == 15 * 60 * utils.TICKS_PER_SECOND


def test_midpoint_tie_exact_at_half_microsecond():
    # polls one microsecond apart: the midpoint is half a microsecond, counted exactly
    polls = [("s", "2023-01-24 10:00:00.000000", "inactive"), ("s", "2023-01-24 10:00:00.000001", "active")]
    poll_frame, hours, zones = frames(polls, zones={"s": "UTC"})
    ticks = utils.uptime_ticks(poll_frame, hours, zones, us(utc("2023-01-24 10:30:00")))
    # active from 10:00:00.0000005 to 10:30: 30 min less half a microsecond
    assert ticks.loc[0, "uptime_last_hour"] == 30 * 60 * utils.TICKS_PER_SECOND - 1
    assert ticks.loc[0, "downtime_last_hour"] == 30 * 60 * utils.TICKS_PER_SECOND + 1


def test_spring_forward_row_ends_at_the_end_of_the_skip():
    # New York, Sunday 2023-03-12 00:00-02:30: 05:00-07:00 UTC, 2 hours
    polls = [("s", "2023-03-12 11:00:00", "active")]
    report = report_for(polls, [("s", 6, "00:00:00", "02:30:00")], {"s": "America/New_York"}, now="2023-03-12 12:00:00")
    assert report["s"]["uptime_last_day"] == 2.0
    assert report["s"]["uptime_last_week"] == 2.0  # the 2023-03-05 row (05:00-07:30 UTC) ends before the week


def test_fall_back_row_counts_repeated_hour_once_from_first_occurrence():
    # New York, Sunday 2023-11-05 00:00-02:00: 04:00-07:00 UTC, 3 hours
    polls = [("s", "2023-11-05 11:00:00", "inactive")]
    report = report_for(polls, [("s", 6, "00:00:00", "02:00:00")], {"s": "America/New_York"}, now="2023-11-05 12:00:00")
    assert report["s"]["downtime_last_day"] == 3.0
    assert report["s"]["uptime_last_day"] == 0.0


@pytest.mark.parametrize(
    "row, now, business_hours",
    [
        # 02:00 does not exist on 2023-03-12: opens 03:00 EDT (07:00 UTC), closes 04:00 EDT
        ((6, "02:00:00", "04:00:00"), "2023-03-12 12:00:00", 1.0),
        # 01:00 and 01:30 happen twice on 2023-11-05: both taken at their first (EDT) occurrence
        ((6, "01:00:00", "01:30:00"), "2023-11-05 12:00:00", 0.5),
        # overnight from 01:30 EDT to 01:00 EST the next day: 24.5 hours
        ((6, "01:30:00", "01:00:00"), "2023-11-06 12:00:00", 24.5),
        # a 24-hour row on the fall-back day lasts 25 hours, on the spring-forward day 23
        ((6, "00:00:00", "00:00:00"), "2023-11-06 12:00:00", 25.0),
        ((6, "00:00:00", "00:00:00"), "2023-03-13 12:00:00", 23.0),
    ],
)
def test_dst_rows_in_new_york(row, now, business_hours):
    polls = [("s", now, "active")]
    report = report_for(polls, [("s", *row)], {"s": "America/New_York"}, now=now)
    assert report["s"]["uptime_last_week"] == business_hours
    assert report["s"]["downtime_last_week"] == 0.0


@pytest.mark.parametrize(
    "now, business_hours",
    [
        # window = local days 03-09..03-15; 01:00-03:00 every day is 2 h, but on 03-12 (spring
        # forward) it runs 01:00 EST to 03:00 EDT = 06:00-07:00 UTC: 6 x 2 h + 1 h
        ("2023-03-15 12:00:00", 13.0),
        # window = local days 11-02..11-08; on 11-05 (fall back) 01:00 EDT to 03:00 EST = 3 h
        ("2023-11-08 12:00:00", 15.0),
    ],
)
def test_a_week_across_a_dst_change(now, business_hours):
    polls = [("s", now, "active")]
    hours = [("s", day, "01:00:00", "03:00:00") for day in range(7)]
    report = report_for(polls, hours, {"s": "America/New_York"}, now=now)
    assert report["s"]["uptime_last_week"] == business_hours
    assert report["s"]["uptime_last_day"] == 2.0


def test_overnight_row_in_los_angeles():
    # Friday 2023-01-20 22:00 PST to Saturday 02:00 PST = 06:00-10:00 UTC on the 21st
    polls = [("s", "2023-01-21 08:00:00", "active")]
    report = report_for(
        polls, [("s", 4, "22:00:00", "02:00:00")], {"s": "America/Los_Angeles"}, now="2023-01-21 12:00:00"
    )
    assert report["s"]["uptime_last_day"] == 4.0
    assert report["s"]["uptime_last_week"] == 4.0


def test_equal_start_and_end_is_open_24_hours_from_start():
    # Monday 09:00 to Tuesday 09:00 (UTC zone); now Tuesday 12:00
    polls = [("s", "2023-01-23 12:00:00", "active")]
    report = report_for(polls, [("s", 0, "09:00:00", "09:00:00")], {"s": "UTC"}, now="2023-01-24 12:00:00")
    assert report["s"]["uptime_last_day"] == 21.0  # Mon 12:00 - Tue 09:00
    assert report["s"]["uptime_last_week"] == 24.0
    assert report["s"]["uptime_last_hour"] == 0.0


@pytest.mark.parametrize(
    "rows, business_hours",
    [
        ([(1, "09:00:00", "12:00:00"), (1, "11:00:00", "14:00:00")], 5.0),  # overlap counts once
        ([(1, "09:00:00", "11:00:00"), (1, "13:00:00", "15:00:00")], 4.0),  # split shift
        ([(1, "09:00:00", "15:00:00"), (1, "10:00:00", "11:00:00")], 6.0),  # one inside another
        ([(1, "09:00:00", "12:00:00"), (1, "12:00:00", "14:00:00")], 5.0),  # touching
        ([(1, "09:00:00", "12:00:00"), (1, "09:00:00", "12:00:00")], 3.0),  # duplicate rows
    ],
)
def test_split_and_overlapping_shifts(rows, business_hours):
    polls = [("s", "2023-01-24 10:00:00", "inactive")]
    hours = [("s", *row) for row in rows]
    report = report_for(polls, hours, {"s": "UTC"}, now="2023-01-24 23:00:00")
    assert report["s"]["downtime_last_day"] == business_hours
    assert report["s"]["uptime_last_day"] == 0.0


def test_no_hours_means_open_all_week():
    polls = [("s", "2023-01-25 17:30:00", "active")]
    report = report_for(polls, zones={"s": "UTC"})
    assert row_of(report) == {
        "uptime_last_hour": 60.0,
        "uptime_last_day": 24.0,
        "uptime_last_week": 168.0,
        "downtime_last_hour": 0.0,
        "downtime_last_day": 0.0,
        "downtime_last_week": 0.0,
    }


def test_no_timezone_means_chicago():
    # Wednesday 09:00-17:00 Chicago (CST) is 15:00-23:00 UTC; now 20:00 UTC
    polls = [("s", "2023-01-25 12:00:00", "active")]
    report = report_for(polls, [("s", 2, "09:00:00", "17:00:00")], now="2023-01-25 20:00:00")
    assert report["s"]["uptime_last_day"] == 5.0
    assert report["s"]["uptime_last_hour"] == 60.0


def test_single_old_poll_holds_for_every_window():
    polls = [("s", "2023-01-20 03:00:00", "inactive")]
    report = report_for(polls, zones={"s": "UTC"}, now="2023-01-25 18:00:00")
    assert row_of(report) == {
        "uptime_last_hour": 0.0,
        "uptime_last_day": 0.0,
        "uptime_last_week": 0.0,
        "downtime_last_hour": 60.0,
        "downtime_last_day": 24.0,
        "downtime_last_week": 168.0,
    }


def test_polls_after_now_are_ignored_and_stores_without_earlier_polls_dropped():
    polls = [
        ("a", "2023-01-25 17:00:00", "active"),
        ("a", "2023-01-25 18:10:00", "inactive"),
        ("b", "2023-01-25 18:30:00", "active"),
    ]
    report = report_for(polls, zones={"a": "UTC"}, now="2023-01-25 18:00:00")
    assert list(report) == ["a"]
    assert report["a"]["uptime_last_hour"] == 60.0


def test_later_duplicate_poll_wins():
    polls = [("s", "2023-01-25 17:30:00", "active"), ("s", "2023-01-25 17:30:00", "inactive")]
    report = report_for(polls, zones={"s": "UTC"})
    assert report["s"]["downtime_last_hour"] == 60.0


def test_store_ids_stay_exact_strings_and_sorted():
    big = ["9223372036854775807", "1481966498820158979", "0042"]
    polls = [(s, "2023-01-25 17:00:00", "active") for s in big]
    report = utils.uptime_report(*frames(polls), us(utc("2023-01-25 18:00:00")))
    assert list(report["store_id"]) == sorted(big)
    assert list(report.columns) == utils.REPORT_COLUMNS


def test_empty_input_gives_empty_report_with_columns():
    report = utils.uptime_report(*frames([]), us(utc("2023-01-25 18:00:00")))
    assert report.empty
    assert list(report.columns) == utils.REPORT_COLUMNS


@pytest.mark.parametrize(
    "when, value_us",
    [
        # 2023-01-22 is 19,379 days after 1970-01-01: (19,379 x 86,400 + 12:09:39) s, and 388,884 us
        (dt.datetime(2023, 1, 22, 12, 9, 39, 388884, tzinfo=UTC), 1_674_389_379_388_884),
        (dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), -1),
        # the last microsecond of year 9999: 2,932,896 days; beyond 2**53, so a float would round it
        (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 253_402_300_799_999_999),
    ],
)
def test_instants_and_microseconds(when, value_us):
    assert utils.us_to_datetime(value_us) == when
    assert utils.us_to_datetime(value_us).utcoffset() == dt.timedelta(0)
    got = utils.datetime_to_us(when)
    assert got == value_us and isinstance(got, int)
    assert utils.datetime_to_us(when.replace(tzinfo=None)) == value_us  # naive means UTC
    east = dt.timezone(dt.timedelta(hours=5, minutes=30))
    if when.year < 9999:
        assert utils.datetime_to_us(when.astimezone(east)) == value_us


def test_local_to_utc_maps_gap_and_fold():
    transitions, offsets = utils.zone_transitions("America/New_York", 1678500000, 1678700000)
    local = np.array([us(utc(t)) for t in ["2023-03-12 01:59:59", "2023-03-12 02:30:00", "2023-03-12 03:00:00"]])
    got = utils.local_to_utc_ticks(local * 2, transitions, offsets) // 2
    assert [dt.datetime.fromtimestamp(v / 1e6, UTC).strftime("%H:%M:%S") for v in got] == [
        "06:59:59",
        "07:00:00",
        "07:00:00",
    ]


# ----------------------------------------------------------------- edges of the engine's date range, DST rules
# Each case is worked out by hand (UTC instants in the comments) and is also a fixed @example of the
# property tests below, so it runs on every run instead of when Hypothesis happens to draw it.

H = 3_600 * utils.TICKS_PER_SECOND  # ticks in an hour
EDGE_CASES = {
    # Los Angeles (PST, UTC-8), now Monday 2023-01-23 00:30 UTC, so the week starts Monday 2023-01-16
    # 00:30 UTC. The Saturday row 21:00-20:00 (overnight) of 2023-01-14, two local dates before the
    # week's first UTC date, runs 01-15 05:00 to 01-16 04:00 UTC: 3.5 h of it are in the week. The
    # next Saturday's runs 01-22 05:00 to 01-23 04:00 UTC: 19.5 h before now. Polls 01-16 02:00 active,
    # 01-22 12:00 inactive (midpoint 01-19 07:00): the early 3.5 h are up, the late 19.5 h down.
    "saturday_overnight_in_los_angeles_a_week_back": (
        "2023-01-23 00:30:00",
        [("2023-01-16 02:00:00", "active"), ("2023-01-22 12:00:00", "inactive")],
        [(5, "21:00:00", "20:00:00")],
        "America/Los_Angeles",
        {
            "uptime_last_hour": 0,
            "uptime_last_day": 0,
            "uptime_last_week": 3.5 * H,
            "downtime_last_hour": 1 * H,
            "downtime_last_day": 19.5 * H,
            "downtime_last_week": 19.5 * H,
        },
    ),
    # Chatham (UTC+13:45 in January), now 2023-01-25 18:00 UTC = Thursday 01-26 07:45 local, a local
    # date after now's UTC date. The Thursday row 00:00-06:00 of 01-26 is 01-25 10:15-16:15 UTC (the
    # one of 01-19 ends before the week). Polls 12:00 active, 15:00 inactive (midpoint 13:30):
    # up 10:15-13:30 = 3.25 h, down 13:30-16:15 = 2.75 h.
    "chatham_row_at_the_far_end": (
        "2023-01-25 18:00:00",
        [("2023-01-25 12:00:00", "active"), ("2023-01-25 15:00:00", "inactive")],
        [(3, "00:00:00", "06:00:00")],
        "Pacific/Chatham",
        {
            "uptime_last_hour": 0,
            "uptime_last_day": 3.25 * H,
            "uptime_last_week": 3.25 * H,
            "downtime_last_hour": 0,
            "downtime_last_day": 2.75 * H,
            "downtime_last_week": 2.75 * H,
        },
    ),
    # New York, fall back on Sunday 2023-11-05 (01:00-01:59 happen twice). The row 01:30-03:00 opens at
    # the first 01:30 (EDT, 05:30 UTC) and closes at 03:00 EST (08:00 UTC): 2.5 h. Polls 05:00
    # inactive, 07:00 active (midpoint 06:00): down 05:30-06:00, up 06:00-08:00. (Opening at the
    # second 01:30, 06:30 UTC, would give 1.5 h up and none down.)
    "fold_in_new_york_counts_the_first_occurrence": (
        "2023-11-05 12:00:00",
        [("2023-11-05 05:00:00", "inactive"), ("2023-11-05 07:00:00", "active")],
        [(6, "01:30:00", "03:00:00")],
        "America/New_York",
        {
            "uptime_last_hour": 0,
            "uptime_last_day": 2 * H,
            "uptime_last_week": 2 * H,
            "downtime_last_hour": 0,
            "downtime_last_day": H // 2,
            "downtime_last_week": H // 2,
        },
    ),
    # New York, spring forward on Sunday 2023-03-12 (02:00-02:59 never shown). The row 02:30-04:00
    # opens at the end of the skip, 03:00 EDT (07:00 UTC), and closes 04:00 EDT (08:00 UTC): 1 h.
    # Polls 07:00 active, 07:50 inactive (midpoint 07:25): up 25 min, down 35 min. (Reading 02:30
    # with the old offset, 07:30 UTC, would give none up and 30 min down.)
    "gap_in_new_york_means_the_end_of_the_skip": (
        "2023-03-12 12:00:00",
        [("2023-03-12 07:00:00", "active"), ("2023-03-12 07:50:00", "inactive")],
        [(6, "02:30:00", "04:00:00")],
        "America/New_York",
        {
            "uptime_last_hour": 0,
            "uptime_last_day": 25 * H // 60,
            "uptime_last_week": 25 * H // 60,
            "downtime_last_hour": 0,
            "downtime_last_day": 35 * H // 60,
            "downtime_last_week": 35 * H // 60,
        },
    ),
}
EDGE_STORE = "1000000000000000000"


def edge_case(name: str):
    """An EDGE_CASES entry in the form the property tests draw: (now, polls, hours in seconds, zones)."""
    now, polls, rows, zone, _ = EDGE_CASES[name]
    return (
        utc(now),
        [(EDGE_STORE, utc(when), status) for when, status in polls],
        [(EDGE_STORE, day, seconds_of(start), seconds_of(end)) for day, start, end in rows],
        {EDGE_STORE: zone},
    )


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edges_of_the_range_and_dst_rules_by_hand(name):
    now, polls, rows, zone, expected = EDGE_CASES[name]
    poll_frame, hours, zones = frames(
        [("s", when, status) for when, status in polls], [("s", *row) for row in rows], {"s": zone}
    )
    got = utils.uptime_ticks(poll_frame, hours, zones, us(utc(now)))
    assert {k: v for k, v in got.to_dict("records")[0].items() if k != "store_id"} == expected


# --------------------------------------------------------------------------- property test against the reference

ZONES = [
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Phoenix",
    "Europe/London",
    "Australia/Lord_Howe",  # half-hour DST shift
    "Asia/Kolkata",
    "Pacific/Chatham",
    "UTC",
]
# weeks around US and EU DST changes, and an ordinary January week
NOWS = [
    dt.datetime(2023, 1, 25, 18, 13, 22, 123456, tzinfo=UTC),
    dt.datetime(2023, 3, 14, 3, 0, tzinfo=UTC),
    dt.datetime(2023, 3, 12, 7, 30, tzinfo=UTC),
    dt.datetime(2023, 11, 6, 5, 59, 59, 999999, tzinfo=UTC),
    dt.datetime(2023, 3, 28, 12, 0, tzinfo=UTC),
    dt.datetime(2023, 4, 3, 0, 0, tzinfo=UTC),
]

times_of_day = st.one_of(
    st.integers(0, 86_399),
    st.sampled_from([0, 3600, 5400, 7200, 9000, 10800, 86_399]),  # near DST changes and midnight
)
hour_rows = st.tuples(st.integers(0, 6), times_of_day, times_of_day)


@st.composite
def stores(draw):
    now = draw(st.sampled_from(NOWS))
    n_stores = draw(st.integers(1, 4))
    polls, hours, zones = [], [], {}
    for index in range(n_stores):
        store_id = f"{1_000_000_000_000_000_000 + index * 7919}"
        offsets = draw(st.lists(st.integers(-9 * 86_400_000_000, 86_400_000_000), min_size=1, max_size=25))
        if draw(st.booleans()):  # sometimes duplicate timestamps with conflicting status
            offsets += offsets[:2]
        for offset in offsets:
            status = draw(st.sampled_from(["active", "inactive"]))
            polls.append((store_id, now + dt.timedelta(microseconds=offset), status))
        for day, start, end in draw(st.lists(hour_rows, max_size=6)):
            hours.append((store_id, day, start, end))
        zone = draw(st.sampled_from(ZONES + [None]))
        if zone:
            zones[store_id] = zone
    return now, polls, hours, zones


def engine_frames(polls, hours, zones):
    poll_frame = pd.DataFrame(
        {
            "store_id": [p[0] for p in polls],
            "timestamp_us": np.array([us(p[1]) for p in polls], dtype=np.int64),
            "active": [p[2] == "active" for p in polls],
        }
    )
    hour_frame = pd.DataFrame(hours, columns=["store_id", "day", "start_s", "end_s"])
    zone_frame = pd.DataFrame(list(zones.items()), columns=["store_id", "timezone_str"])
    return poll_frame, hour_frame, zone_frame


def as_time(seconds: int) -> dt.time:
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores())
@example(edge_case("saturday_overnight_in_los_angeles_a_week_back"))
@example(edge_case("chatham_row_at_the_far_end"))
@example(edge_case("fold_in_new_york_counts_the_first_occurrence"))
@example(edge_case("gap_in_new_york_means_the_end_of_the_skip"))
def test_engine_matches_reference_exactly(case):
    now, polls, hours, zones = case
    got = utils.uptime_ticks(*engine_frames(polls, hours, zones), us(now))
    expected = reference_ticks(polls, [(s, d, as_time(a), as_time(b)) for s, d, a, b in hours], zones, now)
    got_rows = {row.pop("store_id"): row for row in got.to_dict("records")}
    assert got_rows == expected


@settings(max_examples=examples(100), deadline=None)
@given(stores())
@example(edge_case("saturday_overnight_in_los_angeles_a_week_back"))
@example(edge_case("chatham_row_at_the_far_end"))
def test_uptime_plus_downtime_is_business_time(case):
    now, polls, hours, zones = case
    frames_ = engine_frames(polls, hours, zones)
    got = utils.uptime_ticks(*frames_, us(now))
    # flipping every status swaps uptime and downtime: their sum depends on hours alone
    flipped = frames_[0].assign(active=~frames_[0]["active"])
    swapped = utils.uptime_ticks(flipped, frames_[1], frames_[2], us(now))
    for window in ("hour", "day", "week"):
        total = got[f"uptime_last_{window}"] + got[f"downtime_last_{window}"]
        assert (total == swapped[f"uptime_last_{window}"] + swapped[f"downtime_last_{window}"]).all()
        assert (got[f"uptime_last_{window}"] == swapped[f"downtime_last_{window}"]).all()
        assert (total >= 0).all()
    assert (got["uptime_last_hour"] + got["downtime_last_hour"] <= 3600 * utils.TICKS_PER_SECOND).all()
    assert (got["uptime_last_week"] + got["downtime_last_week"] <= 7 * 86400 * utils.TICKS_PER_SECOND).all()


# --------------------------------------------------------------------------- pieces of the engine, by hand
# Each pins a behaviour that mutation testing (docs/development.md) found no test held.

SPRING_2023_NY = 1_678_604_400  # 2023-03-12 07:00 UTC: New York goes from UTC-5 to UTC-4
FALL_2023_NY = 1_699_164_000  # 2023-11-05 06:00 UTC: back from UTC-4 to UTC-5


@pytest.mark.parametrize(
    "start_s, end_s, expected",
    [
        (SPRING_2023_NY - 1800, SPRING_2023_NY + 7200, ((SPRING_2023_NY,), (-18000, -14400))),  # near the start
        (SPRING_2023_NY - 7200, SPRING_2023_NY + 10, ((SPRING_2023_NY,), (-18000, -14400))),  # near the end
        (FALL_2023_NY - 10, FALL_2023_NY + 10, ((FALL_2023_NY,), (-14400, -18000))),
        (SPRING_2023_NY + 3600, SPRING_2023_NY + 86_400, ((), (-14400,))),  # none in range
    ],
)
def test_zone_transitions_by_hand(start_s, end_s, expected):
    assert utils.zone_transitions("America/New_York", start_s, end_s) == expected


def test_the_servers_own_time_zone_does_not_matter(monkeypatch):
    """Offsets are read from UTC instants: a server whose own clock is on New York time (whose local
    readings repeat an hour at fall back) gets the same transitions."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    utils.zone_transitions.cache_clear()
    try:
        assert utils.zone_transitions("America/New_York", FALL_2023_NY - 10, FALL_2023_NY + 10) == (
            (FALL_2023_NY,),
            (-14400, -18000),
        )
        test_edges_of_the_range_and_dst_rules_by_hand("fold_in_new_york_counts_the_first_occurrence")
    finally:
        monkeypatch.undo()
        time.tzset()
        utils.zone_transitions.cache_clear()


@pytest.mark.parametrize(
    "opens, closes, merged",
    [
        ([1, 7, 5], [3, 9, 5], ([1, 7], [3, 9])),  # an empty interval [5, 5) is no business time
        ([1, 3], [3, 5], ([1], [5])),  # touching intervals are one
        ([], [], ([], [])),
        ([4], [6], ([4], [6])),
    ],
)
def test_merge_intervals_by_hand(opens, closes, merged):
    got = utils.merge_intervals(np.array(opens, dtype=np.int64), np.array(closes, dtype=np.int64))
    assert (got[0].tolist(), got[1].tolist()) == merged


@pytest.mark.parametrize("year", [2023, 9000])
def test_midpoint_is_exact_in_any_year(year):
    # two polls one microsecond apart: the active one covers the window less half a microsecond
    polls = [("s", f"{year}-01-24 10:00:00.000000", "inactive"), ("s", f"{year}-01-24 10:00:00.000001", "active")]
    poll_frame, hours, zones = frames(polls, zones={"s": "UTC"})
    ticks = utils.uptime_ticks(poll_frame, hours, zones, us(utc(f"{year}-01-24 10:30:00")))
    assert ticks.loc[0, "uptime_last_hour"] == 30 * 60 * utils.TICKS_PER_SECOND - 1


def test_a_later_duplicate_wins_after_other_polls_too():
    # 17:00 active; 17:30 twice, the later row inactive: [17:00, 17:15) up, [17:15, 18:00) down
    polls = [
        ("s", "2023-01-25 17:00:00", "active"),
        ("s", "2023-01-25 17:30:00", "active"),
        ("s", "2023-01-25 17:30:00", "inactive"),
    ]
    report = report_for(polls, zones={"s": "UTC"})
    assert (report["s"]["uptime_last_hour"], report["s"]["downtime_last_hour"]) == (15.0, 45.0)


def test_many_duplicates_keep_file_order():
    # 3,000 rows at 1,000 instants of one store, each instant three times: active, inactive, then the
    # row that wins (active at even minutes); big enough that only a stable sort keeps the file order
    rows = []
    for minute in range(1000):
        when = (utc("2023-01-24 18:00:00") + dt.timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:%S")
        rows += [
            ("s", when, "active"),
            ("s", when, "inactive"),
            ("s", when, "active" if minute % 2 == 0 else "inactive"),
        ]
    poll_frame, hours, zones = frames(rows, zones={"s": "UTC"})
    ticks = utils.uptime_ticks(poll_frame, hours, zones, us(utc("2023-01-25 10:40:00")))
    # in [09:40, 10:40) the instants 09:40 (minute 940, up) .. 10:39 (minute 999, down) each cover the
    # minute centred on them: 09:40 only its last 30 s, 10:39 its 90 s to now; so up 30 s + 29 x 60 s
    # = 1,770 s, down 29 x 60 s + 90 s = 1,830 s
    assert ticks.loc[0, "uptime_last_hour"] == 1_770 * utils.TICKS_PER_SECOND
    assert ticks.loc[0, "downtime_last_hour"] == 1_830 * utils.TICKS_PER_SECOND


def test_five_thousand_stores_in_one_go():
    # one chunk as large as CHUNK_STORES' default; every store open all week with one active poll
    n = 5_000
    polls = pd.DataFrame(
        {
            "store_id": [f"{i:05d}" for i in range(n)],
            "timestamp_us": np.full(n, us(utc("2023-01-25 12:00:00")), dtype=np.int64),
            "active": np.arange(n) % 2 == 0,
        }
    )
    empty_hours = pd.DataFrame({"store_id": [], "day": [], "start_s": [], "end_s": []})
    zones = pd.DataFrame({"store_id": [], "timezone_str": []})
    ticks = utils.uptime_ticks(polls, empty_hours, zones, us(utc("2023-01-25 18:00:00")))
    week = 7 * 86_400 * utils.TICKS_PER_SECOND
    assert ticks["uptime_last_week"].tolist() == [week if i % 2 == 0 else 0 for i in range(n)]
    assert ticks["downtime_last_week"].tolist() == [0 if i % 2 == 0 else week for i in range(n)]


def test_every_store_band_stays_inside_int64():
    # The engine lays each store's week on one int64 line, store after store, a band of (week + 1) ticks
    # apart.  A band wider than that (say now + origin + 1, about 6.7e15 ticks) overflows past store
    # 1,377 and wraps; at this instant, worked out by hand from 2**63 / (2 * now - week + 1), store 1,377's
    # week would straddle the wrap point, its close landing before its open.  Every store, open all week
    # with one active poll, must still be up the whole week.
    n = 1_400
    now = 1_674_843_218_520_854  # 2023-01-27 18:13:38.520854 UTC
    polls = pd.DataFrame(
        {
            "store_id": [f"{i:05d}" for i in range(n)],
            "timestamp_us": np.full(n, now - 1_800 * 10**6, dtype=np.int64),
            "active": np.ones(n, dtype=bool),
        }
    )
    empty_hours = pd.DataFrame({"store_id": [], "day": [], "start_s": [], "end_s": []})
    zones = pd.DataFrame({"store_id": [], "timezone_str": []})
    ticks = utils.uptime_ticks(polls, empty_hours, zones, now)
    week = 7 * 86_400 * utils.TICKS_PER_SECOND
    assert ticks["uptime_last_week"].tolist() == [week] * n
    assert ticks["downtime_last_week"].tolist() == [0] * n


def test_polls_across_the_whole_calendar():
    # 20 stores, each polled in year 1 and half an hour before now in year 9000: the stores times the
    # span of time is beyond what the engine's packed sort can hold, so the other sort is used (the
    # polls come in reverse, so that they must be sorted at all)
    polls = []
    for i in range(20):
        polls += [
            (f"s{i:02d}", "0001-01-01 00:00:00", "active" if i % 2 else "inactive"),
            (f"s{i:02d}", "9000-01-24 17:30:00", "inactive" if i % 2 else "active"),
        ]
    polls.reverse()
    report = report_for(polls, zones={f"s{i:02d}": "UTC" for i in range(20)}, now="9000-01-24 18:00:00")
    for i in range(20):  # the midpoint is millennia back: the recent poll holds the whole week
        assert report[f"s{i:02d}"]["uptime_last_week"] == (0.0 if i % 2 else 168.0)


def test_tick_frame_types():
    polls = [("s", "2023-01-25 17:30:00", "active")]
    ticks = utils.uptime_ticks(
        *frames(polls, [("s", 2, "09:00:00", "17:00:00")], {"s": "UTC"}), us(utc("2023-01-25 18:00:00"))
    )
    assert str(ticks["store_id"].dtype) == "string"
    assert [str(ticks[c].dtype) for c in utils.REPORT_COLUMNS[1:]] == ["int64"] * 6


def test_zone_transitions_are_exact_to_the_second_wherever_the_search_starts():
    # the hourly sampling grid moves with start_s; the bisection must land on the transition itself
    for lead in range(11, 3600, 97):
        assert utils.zone_transitions("America/New_York", SPRING_2023_NY - lead, SPRING_2023_NY + 10) == (
            (SPRING_2023_NY,),
            (-18000, -14400),
        ), lead


# --------------------------------------------------------------------------- sorting the polls


@pytest.mark.parametrize(
    "keys",
    [
        [5, 3, 5, 1, 3, 5, 0, 9],  # ties on both sides of the sampled median
        [7] * 9,  # every key equal: one half is empty
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # reversed
        [2**61, -(2**61), 0, 2**61, 1],  # the extremes the packed keys can take
    ],
)
def test_stable_argsort_in_two_halves_is_numpys_stable_order(monkeypatch, keys):
    monkeypatch.setattr(utils, "SPLIT_SORT_MIN", 2)
    monkeypatch.setattr(utils, "_cores", lambda: 2)
    keys = np.array(keys, dtype=np.int64)
    expected = sorted(range(len(keys)), key=lambda i: (keys[i], i))  # by key, then input position
    assert utils.stable_argsort(keys).tolist() == expected


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.integers(-5, 5), max_size=3_000))
def test_stable_argsort_in_two_halves_property(keys):
    keys = np.array(keys, dtype=np.int64)
    saved = utils.SPLIT_SORT_MIN, utils._cores
    utils.SPLIT_SORT_MIN, utils._cores = 1, lambda: 2
    try:
        order = utils.stable_argsort(keys)
    finally:
        utils.SPLIT_SORT_MIN, utils._cores = saved
    assert order.tolist() == sorted(range(len(keys)), key=lambda i: (keys[i], i))


@pytest.mark.parametrize("cores", [1, 2])
@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 3), max_size=300), st.integers(0, 70))
def test_stable_argsort_by_buckets_any_int64(cores, keys, spread):
    # keys anywhere in int64 (the bucket pass must not overflow) mixed with close ones and repeats,
    # optionally stretched so that the top bits of the offset fall in different buckets
    keys = np.array([k << min(spread, 60) if -8 < k < 8 else k for k in keys], dtype=np.int64)
    saved = utils.SPLIT_SORT_MIN, utils._cores
    utils.SPLIT_SORT_MIN, utils._cores = 1, lambda: cores
    try:
        order = utils.stable_argsort(keys)
    finally:
        utils.SPLIT_SORT_MIN, utils._cores = saved
    assert order.tolist() == sorted(range(len(keys)), key=lambda i: (int(keys[i]), i))


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize(
    "keys",
    [
        [2**63 - 1, -(2**63), 0, -1, 2**63 - 1, -(2**63)],  # the ends of int64, each twice
        [3, 1 << 40, 2, (1 << 40) + 1, 1, 0, 1 << 40],  # two far-apart groups: each is one bucket
        [1 << 50, 0, 0, 1 << 50, 0, 0, 1 << 50, 0, 1 << 50],  # the middle key's bucket starts the array
        list(range(70_000, 0, -1)),  # more distinct keys than buckets, reversed
    ],
)
def test_stable_argsort_by_buckets_examples(monkeypatch, cores, keys):
    monkeypatch.setattr(utils, "SPLIT_SORT_MIN", 2)
    monkeypatch.setattr(utils, "_cores", lambda: cores)
    keys = np.array(keys, dtype=np.int64)
    assert utils.stable_argsort(keys).tolist() == np.argsort(keys, kind="stable").tolist()


def test_polls_already_in_order_but_repeated_keep_the_later_row_last():
    # in (store, time) order but 17:30 twice: the order check must not take them as sorted
    store = pd.Categorical(["s", "s", "s"], categories=["s"])
    polls = pd.DataFrame(
        {
            "store_id": store,
            "timestamp_us": np.array([1, 2, 2], dtype=np.int64) * 1_800_000_000 + us(utc("2023-01-25 16:30:00")),
            "active": [True, True, False],
        }
    )
    _, hours, zones = frames([], zones={"s": "UTC"})
    ticks = utils.uptime_ticks(polls, hours, zones, us(utc("2023-01-25 18:00:00")))
    # 17:00 up, 17:30 down (the later row): [17:00, 17:15) up, [17:15, 18:00) down
    assert ticks.loc[0, "uptime_last_hour"] == 15 * 60 * utils.TICKS_PER_SECOND
    assert ticks.loc[0, "downtime_last_hour"] == 45 * 60 * utils.TICKS_PER_SECOND


@pytest.mark.parametrize(
    "categories, stores, numbers, ids",
    [
        (["a", "b", "c"], ["c", "a", "c"], [1, 0, 1], ["a", "c"]),  # "b" has no poll: not numbered
        (["a", "b"], ["a", "b"], [0, 1], ["a", "b"]),  # every category in use
        (["b", "a"], ["b", "a", "b"], [1, 0, 1], ["a", "b"]),  # categories not in order: numbered in order
        (["a"], [], [], []),  # no polls at all
    ],
)
def test_store_numbers_count_only_stores_with_polls(categories, stores, numbers, ids):
    codes, store_ids = utils._store_codes(pd.Series(pd.Categorical(stores, categories=categories)))
    assert codes.tolist() == numbers
    assert list(store_ids) == ids


def test_stores_out_of_order_while_time_goes_forward():
    # the input order is store b then a, with later times: not the engine's order, so it must sort
    # (a poll of b at 17:00 up, of a at 17:30 down, of b at 17:40 down: b up 17:00-17:20, down after)
    polls = [
        ("b", "2023-01-25 17:00:00", "active"),
        ("a", "2023-01-25 17:30:00", "inactive"),
        ("b", "2023-01-25 17:40:00", "inactive"),
    ]
    report = report_for(polls, zones={"a": "UTC", "b": "UTC"})
    assert (report["a"]["uptime_last_hour"], report["a"]["downtime_last_hour"]) == (0.0, 60.0)
    assert (report["b"]["uptime_last_hour"], report["b"]["downtime_last_hour"]) == (20.0, 40.0)


@pytest.mark.parametrize(
    "polls, up_minutes",
    [
        # a, b, a: each store back to a earlier one, time going forward all along
        (
            [
                ("a", "2023-01-25 17:00:00", "active"),
                ("b", "2023-01-25 17:10:00", "active"),
                ("a", "2023-01-25 17:40:00", "inactive"),
            ],
            {"a": 20.0, "b": 60.0},
        ),
        # one store whose times go 17:00, 17:40, 17:20: later than the first, not than the one before
        (
            [
                ("a", "2023-01-25 17:00:00", "active"),
                ("a", "2023-01-25 17:40:00", "inactive"),
                ("a", "2023-01-25 17:20:00", "active"),
            ],
            {"a": 30.0},
        ),
    ],
)
def test_polls_nearly_in_order_are_sorted(polls, up_minutes):
    # a, b, a: a up 17:00-17:20, down after; one store 17:00 up, 17:20 up, 17:40 down: up to 17:30
    report = report_for(polls, zones={store: "UTC" for store in up_minutes})
    assert {store: report[store]["uptime_last_hour"] for store in up_minutes} == up_minutes


# --------------------------------------------------------------------------- the as_of instant


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2023-01-24T12:00:00Z", 1674561600000000),
        ("2023-01-24T13:00:00+01:00", 1674561600000000),
        ("2023-01-24 12:00:00", 1674561600000000),
        ("2023-01-24T12:00:00.000001Z", 1674561600000001),
    ],
)
def test_parse_as_of(text, expected):
    assert utils.parse_as_of(text) == expected


@pytest.mark.parametrize("text", ["", "tomorrow", "2023-13-01T00:00:00Z", "x" * 100, None, 5])
def test_parse_as_of_rejects(text):
    with pytest.raises(ValueError):
        utils.parse_as_of(text)


# --------------------------------------------------------------------------- ranges of stores, and their ticks


def test_store_ranges_cover_every_store_once():
    for n_stores, most, workers in [(0, 5, 2), (1, 5, 2), (14_000, 5_000, 2), (14_000, 5_000, 1), (7, 2, 3)]:
        bounds = utils.store_ranges(n_stores, most, workers)
        covered = [store for first, last in bounds for store in range(first, last)]
        assert covered == list(range(n_stores))
        assert all(last - first <= most for first, last in bounds)


@pytest.mark.parametrize(
    "n_stores, range_stores, workers, sizes",
    [
        (200, 40, 2, [40] * 5),
        (200, 5_000, 2, [50] * 4),  # at least two ranges per cluster worker
        (7, 5_000, 2, [2, 2, 2, 1]),
        (1, 40, 8, [1]),
        (0, 40, 2, []),
    ],
)
def test_store_ranges_for_the_cluster_in_order(n_stores, range_stores, workers, sizes):
    bounds = utils.store_ranges(n_stores, range_stores, workers, utils.RANGES_PER_CLUSTER_WORKER)
    assert [last - first for first, last in bounds] == sizes
    assert [first for first, _ in bounds] == [sum(sizes[:i]) for i in range(len(sizes))]


@pytest.mark.parametrize(
    "n_stores, range_stores, workers, sizes",
    [
        (200, 5_000, 2, [25] * 8),  # at least four ranges per thread or process
        (14_000, 5_000, 2, [1_750] * 8),
        (14_000, 1_000, 2, [1_000] * 14),
        (7, 3, 1, [3, 3, 1]),  # one worker: ranges of CHUNK_STORES, nothing finer
        (200, 5_000, 1, [200]),
        (7, 0, 1, [1] * 7),
    ],
)
def test_store_ranges_in_one_process(n_stores, range_stores, workers, sizes):
    bounds = utils.store_ranges(n_stores, range_stores, workers)
    assert [last - first for first, last in bounds] == sizes
    assert [first for first, _ in bounds] == [sum(sizes[:i]) for i in range(len(sizes))]


def test_join_ticks_keeps_the_order_of_the_ranges():
    columns = utils.REPORT_COLUMNS[1:]
    parts = [
        {column: np.array([k, k + 1], np.int64) for k, column in enumerate(columns)},
        {column: np.array([-k], np.int64) for k, column in enumerate(columns)},
    ]
    joined = utils.join_ticks(parts)
    assert {column: joined[column].tolist() for column in columns} == {
        column: [k, k + 1, -k] for k, column in enumerate(columns)
    }
    empty = utils.join_ticks([])
    assert list(empty) == columns and all(
        empty[column].dtype == np.int64 and empty[column].size == 0 for column in columns
    )
