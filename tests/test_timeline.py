"""One store's week (utils.store_timeline): its segments add up to the engine's report figures
to the tick, for every store of the sample data and for hypothesis-generated stores (also
against tests/reference.py); SPEC §5's worked examples by hand; and the shape of the timeline
(business hours merged, segments ordered and merged, deciding polls)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import sources
import utils
from app import create_app
from tests.conftest import TINY_REPORT, wait_for_report
from tests.reference import reference_ticks
from tests.test_utils import as_time, engine_frames, stores, us, utc

SAMPLE = Path(__file__).resolve().parent.parent / "data"
TICK = utils.TICKS_PER_US


def timeline_of(polls, hours, zones, store_id, now_us):
    """store_timeline for one store of engine-shaped frames (polls in load order)."""
    mine = polls[polls["store_id"] == store_id]
    rows = hours[hours["store_id"] == store_id]
    zone = zones.loc[zones["store_id"] == store_id, "timezone_str"]
    return utils.store_timeline(
        mine["timestamp_us"].to_numpy(),
        mine["active"].to_numpy(),
        rows["day"].to_numpy(),
        rows["start_s"].to_numpy(),
        rows["end_s"].to_numpy(),
        zone.iloc[-1] if len(zone) else None,
        now_us,
    )


def timeline_totals(timeline: utils.StoreTimeline) -> dict[str, int]:
    """Uptime and downtime ticks per window from a timeline's segments (REPORT_COLUMNS' names)."""
    totals = {}
    for name, (low, high) in timeline.windows.items():
        inside = np.maximum(np.minimum(timeline.segment_end, high) - np.maximum(timeline.segment_start, low), 0)
        totals[f"uptime_last_{name}"] = int(inside[timeline.segment_active].sum())
        totals[f"downtime_last_{name}"] = int(inside[~timeline.segment_active].sum())
    return totals


def check_shape(timeline: utils.StoreTimeline, poll_us: np.ndarray, now_us: int) -> None:
    """What every timeline must be, whatever the data: worked out from the polls and the windows."""
    low, high = timeline.windows["week"]
    assert (low, high) == ((now_us - utils.WEEK_US) * TICK, now_us * TICK)
    opens, closes = timeline.business_open, timeline.business_close
    assert (opens < closes).all() and (closes[:-1] < opens[1:]).all()  # merged: disjoint, not touching
    assert (opens >= low).all() and (closes <= high).all()
    starts, ends, status = timeline.segment_start, timeline.segment_end, timeline.segment_active
    assert (starts < ends).all() and (ends[:-1] <= starts[1:]).all()
    touching = ends[:-1] == starts[1:]
    assert not (touching & (status[:-1] == status[1:])).any(), "touching segments of one status not merged"
    # the segments cover exactly the business hours
    assert (ends - starts).sum() == (closes - opens).sum()
    inside = np.searchsorted(opens, starts, side="right") - 1
    assert (inside >= 0).all() and (ends <= closes[inside]).all()
    # deciding polls: every distinct poll in the week, plus the nearest before it and a poll at now
    distinct = np.unique(poll_us[poll_us <= now_us])
    in_week = distinct[(distinct >= now_us - utils.WEEK_US) & (distinct < now_us)]
    before = distinct[distinct < now_us - utils.WEEK_US][-1:]
    at_now = distinct[distinct == now_us]
    assert list(timeline.poll_ticks // TICK) == list(before) + list(in_week) + list(at_now)


# --------------------------------------------------------------------------- SPEC §5 worked examples


def segments(timeline):
    def show(ticks):
        return utils.us_to_datetime(int(ticks) // TICK).strftime("%Y-%m-%d %H:%M:%S")

    return [
        (show(a), show(b), "active" if s else "inactive")
        for a, b, s in zip(timeline.segment_start, timeline.segment_end, timeline.segment_active)
    ]


def business(timeline):
    return [
        (
            utils.us_to_datetime(int(a) // TICK).strftime("%Y-%m-%d %H:%M"),
            utils.us_to_datetime(int(b) // TICK).strftime("%Y-%m-%d %H:%M"),
        )
        for a, b in zip(timeline.business_open, timeline.business_close)
    ]


def one_store(polls, rows=(), zone="UTC", now="2023-01-24 13:00:00"):
    return utils.store_timeline(
        np.array([us(utc(p[0])) for p in polls], dtype=np.int64),
        np.array([p[1] == "active" for p in polls]),
        [r[0] for r in rows],
        [r[1] * 3600 for r in rows],
        [r[2] * 3600 for r in rows],
        zone,
        us(utc(now)),
    )


def test_worked_example_business_hours_and_two_polls():
    # Tuesday 09:00-12:00, polls 10:14 active and 11:15 inactive: active until the 10:44:30 midpoint
    timeline = one_store([("2023-01-24 10:14:00", "active"), ("2023-01-24 11:15:00", "inactive")], [(1, 9, 12)])
    assert segments(timeline) == [
        ("2023-01-24 09:00:00", "2023-01-24 10:44:30", "active"),
        ("2023-01-24 10:44:30", "2023-01-24 12:00:00", "inactive"),
    ]
    assert business(timeline) == [("2023-01-24 09:00", "2023-01-24 12:00")]
    assert timeline_totals(timeline)["uptime_last_day"] == (104 * 60 + 30) * utils.TICKS_PER_SECOND


def test_worked_example_tie_goes_to_the_later_poll():
    # open 24/7 (no rows); polls 10:00 active, 10:30 inactive; now 10:30 (the 10:30 poll is at now)
    timeline = one_store(
        [("2023-01-24 10:00:00", "active"), ("2023-01-24 10:30:00", "inactive")], now="2023-01-24 10:30:00"
    )
    assert segments(timeline) == [
        ("2023-01-17 10:30:00", "2023-01-24 10:15:00", "active"),
        ("2023-01-24 10:15:00", "2023-01-24 10:30:00", "inactive"),
    ]
    assert list(timeline.poll_active) == [True, False]  # the poll at now decides the last quarter hour
    totals = timeline_totals(timeline)
    assert (totals["uptime_last_hour"], totals["downtime_last_hour"]) == (45 * 60 * 2_000_000, 15 * 60 * 2_000_000)


@pytest.mark.parametrize(
    "row, zone, now, expected",
    [
        # New York, Sunday 00:00-02:30 on the spring-forward night: 05:00-07:00 UTC
        ((6, 0, 2.5), "America/New_York", "2023-03-12 12:00:00", [("2023-03-12 05:00", "2023-03-12 07:00")]),
        # the same row 00:00-02:00 on the fall-back night: 04:00-07:00 UTC, 3 hours
        ((6, 0, 2), "America/New_York", "2023-11-05 12:00:00", [("2023-11-05 04:00", "2023-11-05 07:00")]),
        # Los Angeles, Friday 22:00-02:00: Friday 22:00 to Saturday 02:00 PST = Saturday 06:00-10:00 UTC
        ((4, 22, 2), "America/Los_Angeles", "2023-01-21 12:00:00", [("2023-01-21 06:00", "2023-01-21 10:00")]),
        # 09:00-09:00 is open 24 hours from 09:00 (UTC zone, Monday)
        ((0, 9, 9), "UTC", "2023-01-24 12:00:00", [("2023-01-23 09:00", "2023-01-24 09:00")]),
    ],
)
def test_worked_examples_of_business_hours(row, zone, now, expected):
    day, start, end = row
    timeline = utils.store_timeline(
        np.array([us(utc(now))]), np.array([False]), [day], [int(start * 3600)], [int(end * 3600)], zone, us(utc(now))
    )
    # (the 2023-03-05 spring row, 05:00-07:30 UTC, ends before the week starts at 03-05 12:00)
    assert business(timeline) == expected
    assert [s[2] for s in segments(timeline)] == ["inactive"]


def test_no_zone_means_chicago_and_deciding_polls_reach_one_past_each_side():
    polls = [
        ("2023-01-10 10:00:00", "active"),
        ("2023-01-17 11:00:00", "inactive"),
        ("2023-01-20 12:00:00", "active"),
        ("2023-01-24 13:00:00", "active"),
    ]
    timeline = one_store(polls, [(1, 9, 17)], zone=None, now="2023-01-24 12:00:00")  # the last poll is after now
    assert timeline.timezone == "America/Chicago"
    # the 01-10 poll is not the nearest before the week (01-17 12:00); 01-17 11:00 is
    assert [utils.us_to_datetime(int(t) // TICK).day for t in timeline.poll_ticks] == [17, 20]
    # Tuesday 09:00-17:00 CST = 15:00-23:00 UTC; on 01-17 and (not yet, now is 12:00 UTC) 01-24
    assert business(timeline) == [("2023-01-17 15:00", "2023-01-17 23:00")]
    assert segments(timeline) == [("2023-01-17 15:00:00", "2023-01-17 23:00:00", "inactive")]


def test_later_row_at_one_instant_wins_and_half_microsecond_midpoints_are_exact():
    base = us(utc("2023-01-24 10:00:00"))
    timeline = utils.store_timeline(
        np.array([base, base, base + 1]), np.array([True, False, True]), [], [], [], "UTC", base + 1
    )
    assert list(timeline.poll_active) == [False, True]
    assert list(timeline.segment_end[:1]) == [2 * base + 1]  # the midpoint, in ticks, exact
    totals = timeline_totals(timeline)
    assert totals["uptime_last_hour"] == 1 and totals["downtime_last_hour"] == 3_600 * 2_000_000 - 1


# --------------------------------------------------------------------------- agreement with engine and reference


def assert_agrees(polls, hours, zones, now_us, expected_rows=None):
    engine = utils.uptime_ticks(polls, hours, zones, now_us)
    if expected_rows is not None:
        assert set(engine["store_id"]) == set(expected_rows)
    for row in engine.to_dict("records"):
        store_id = row.pop("store_id")
        timeline = timeline_of(polls, hours, zones, store_id, now_us)
        assert timeline_totals(timeline) == row, store_id
        if expected_rows is not None:
            assert timeline_totals(timeline) == expected_rows[store_id], store_id
        check_shape(timeline, polls.loc[polls["store_id"] == store_id, "timestamp_us"].to_numpy(), now_us)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores())
def test_segments_add_up_to_the_engine_and_the_reference(case):
    now, polls, hours, zones = case
    frames = engine_frames(polls, hours, zones)
    expected = reference_ticks(polls, [(s, d, as_time(a), as_time(b)) for s, d, a, b in hours], zones, now)
    assert_agrees(*frames, us(now), expected)


def test_segments_add_up_to_the_report_for_every_store_of_the_sample():
    parsed = sources.read_data_dir(SAMPLE)
    polls = parsed[sources.STATUS_FILE].frame
    hours = parsed[sources.HOURS_FILE].frame
    zones = parsed[sources.ZONES_FILE].frame
    for now_us in (int(polls["timestamp_us"].max()), us(utc("2023-01-22 07:30:00.5"))):
        assert utils.uptime_ticks(polls, hours, zones, now_us)["store_id"].nunique() == 200
        now = utils.us_to_datetime(now_us)
        expected = reference_ticks(
            [
                (s, utils.us_to_datetime(t), "active" if a else "inactive")
                for s, t, a in zip(polls["store_id"], polls["timestamp_us"], polls["active"])
            ],
            [
                (s, d, as_time(a), as_time(b))
                for s, d, a, b in zip(hours["store_id"], hours["day"], hours["start_s"], hours["end_s"])
            ],
            dict(zip(zones["store_id"], zones["timezone_str"])),
            now,
        )
        assert_agrees(polls, hours, zones, now_us, expected)


def test_a_midpoint_on_the_opening_instant_belongs_to_the_later_poll():
    # 08:30 inactive and 09:30 active meet at 09:00, when the store opens: it opens active
    timeline = one_store([("2023-01-24 08:30:00", "inactive"), ("2023-01-24 09:30:00", "active")], [(1, 9, 12)])
    assert segments(timeline) == [("2023-01-24 09:00:00", "2023-01-24 12:00:00", "active")]
    # and one closing at the midpoint: 11:00 active, 13:00 inactive meet at 12:00, the closing instant
    timeline = one_store([("2023-01-24 11:00:00", "active"), ("2023-01-24 13:00:00", "inactive")], [(1, 9, 12)])
    assert segments(timeline) == [("2023-01-24 09:00:00", "2023-01-24 12:00:00", "active")]


# --------------------------------------------------------------------------- GET /stores/<store_id>/timeline


def iso_us(text: str) -> int:
    """Microseconds since the epoch of an instant the API wrote (ISO 8601, microseconds, Z)."""
    assert text.endswith("Z") and len(text) == len("2023-01-24T13:00:00.000000Z"), text
    return us(dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC))


def totals_from_segments(body: dict) -> dict:
    """Each window's uptime and downtime from the segments, in the report's units (independent of utils)."""
    totals = {}
    for name, (low, high) in body["windows"].items():
        low, high = iso_us(low), iso_us(high)
        unit = 60e6 if name == "hour" else 3600e6
        for status, column in (("active", "uptime"), ("inactive", "downtime")):
            inside = sum(
                max(0, min(iso_us(s["end"]), high) - max(iso_us(s["start"]), low))
                for s in body["segments"]
                if s["status"] == status
            )
            totals[f"{column}_last_{name}"] = inside / unit
    return totals


def complete_report(client, as_of=None) -> str:
    answer = client.post("/trigger_report", json={"as_of": as_of} if as_of else None)
    report_id = answer.get_json()["report_id"]
    assert wait_for_report(client, report_id)["status"] == "Complete"
    return report_id


def test_timeline_of_the_worked_example(client):
    report_id = complete_report(client)
    answer = client.get(f"/stores/worked/timeline?report_id={report_id}")
    assert answer.status_code == 200
    assert answer.get_json() == {
        "store_id": "worked",
        "timezone": "UTC",
        "as_of": "2023-01-24T13:00:00.000000Z",
        "windows": {
            "hour": ["2023-01-24T12:00:00.000000Z", "2023-01-24T13:00:00.000000Z"],
            "day": ["2023-01-23T13:00:00.000000Z", "2023-01-24T13:00:00.000000Z"],
            "week": ["2023-01-17T13:00:00.000000Z", "2023-01-24T13:00:00.000000Z"],
        },
        # Tuesdays 09:00-12:00: the 01-17 one ends before the week starts at 13:00
        "business_hours": [{"start": "2023-01-24T09:00:00.000000Z", "end": "2023-01-24T12:00:00.000000Z"}],
        "polls": [
            {"timestamp": "2023-01-24T10:14:00.000000Z", "status": "active"},
            {"timestamp": "2023-01-24T11:15:00.000000Z", "status": "inactive"},
        ],
        "segments": [
            {"start": "2023-01-24T09:00:00.000000Z", "end": "2023-01-24T10:44:30.000000Z", "status": "active"},
            {"start": "2023-01-24T10:44:30.000000Z", "end": "2023-01-24T12:00:00.000000Z", "status": "inactive"},
        ],
        "totals": next(row for row in TINY_REPORT if row["store_id"] == "worked"),
    }


def test_timeline_of_a_store_open_all_week_in_the_default_zone(client):
    report_id = complete_report(client)
    body = client.get(f"/stores/allday/timeline?report_id={report_id}").get_json()
    assert body["timezone"] == "America/Chicago"
    assert body["business_hours"] == [{"start": "2023-01-17T13:00:00.000000Z", "end": "2023-01-24T13:00:00.000000Z"}]
    assert body["segments"] == [
        {"start": "2023-01-17T13:00:00.000000Z", "end": "2023-01-24T12:40:00.000000Z", "status": "active"},
        {"start": "2023-01-24T12:40:00.000000Z", "end": "2023-01-24T13:00:00.000000Z", "status": "inactive"},
    ]
    for key, value in totals_from_segments(body).items():
        assert round(value, 2) == body["totals"][key], key


def test_timeline_errors_are_json(client, store):
    report_id = complete_report(client, "2023-01-24T12:00:00Z")  # holds only 'worked'
    for path, status, error in [
        ("/stores/worked/timeline", 400, "give exactly one report_id"),
        ("/stores/worked/timeline?report_id=XYZ", 400, "malformed report_id"),
        (f"/stores/worked/timeline?report_id={'0' * 32}", 404, "no report with id"),
        (f"/stores/allday/timeline?report_id={report_id}", 404, f"report {report_id} has no store 'allday'"),
        (f"/stores/nobody/timeline?report_id={report_id}", 404, "has no store 'nobody'"),
    ]:
        answer = client.get(path)
        assert answer.status_code == status, path
        assert answer.get_json()["status"] == status and error in answer.get_json()["error"], path
    store.create_report("ab" * 16, None)
    running = client.get("/stores/worked/timeline?report_id=" + "ab" * 16)
    assert running.status_code == 409
    assert running.get_json()["error"] == (
        f"report {'ab' * 16} is still Running (waiting for a report worker): "
        "its timeline is ready when it is Complete; ask again then"
    )
    store.fail_report("ab" * 16, "boom")
    failed = client.get("/stores/worked/timeline?report_id=" + "ab" * 16)
    assert failed.status_code == 409 and "Failed (boom), so it has no timeline" in failed.get_json()["error"]


def test_timelines_add_up_to_the_report_on_the_sample(tmp_path):
    """Through the database and the route: the engine's read (look-back included) and the timeline agree."""
    application = create_app({"MONGO_URI": "", "DATA_DIR": str(SAMPLE), "REPORTS_DIR": str(tmp_path), "TESTING": True})
    try:
        client = application.test_client()
        report_id = complete_report(client)
        report = wait_for_report(client, report_id)
        polls = sources.read_data_dir(SAMPLE)[sources.STATUS_FILE].frame
        for row in report["data"][::20]:
            body = client.get(f"/stores/{row['store_id']}/timeline?report_id={report_id}").get_json()
            assert body["totals"] == row
            for key, value in totals_from_segments(body).items():
                assert abs(value - row[key]) <= 0.005 + 1e-9, (row["store_id"], key)
            # the sample's week starts before its first poll, so every poll of the store decides
            assert iso_us(body["windows"]["week"][0]) < polls["timestamp_us"].min()
            mine = polls[polls["store_id"] == row["store_id"]].sort_values("timestamp_us")
            assert [(iso_us(p["timestamp"]), p["status"] == "active") for p in body["polls"]] == list(
                zip(mine["timestamp_us"], mine["active"])
            )
    finally:
        application.extensions["reports"].shutdown(wait=True)


# --------------------------------------------------------------------------- pinned by mutation testing


def test_a_store_with_no_poll_up_to_now_has_its_hours_but_no_segments():
    """Polls only after `now` are ignored: no deciding polls, no segments, zero totals; the business
    hours (none given: open all week) are still the whole week."""
    now_us = us(utc("2023-01-25 12:00:00"))
    hour = 3_600_000_000
    timeline = utils.store_timeline(np.array([now_us + hour]), np.array([True]), [], [], [], "UTC", now_us)
    week = ((now_us - utils.WEEK_US) * TICK, now_us * TICK)
    assert (timeline.business_open.tolist(), timeline.business_close.tolist()) == ([week[0]], [week[1]])
    assert (timeline.poll_ticks.size, timeline.poll_active.size) == (0, 0)
    segments = (timeline.segment_start, timeline.segment_end, timeline.segment_active)
    assert [(s.shape, str(s.dtype)) for s in segments] == [((0,), "int64"), ((0,), "int64"), ((0,), "bool")]
    assert timeline_totals(timeline) == {
        f"{kind}_last_{name}": 0 for name in ("hour", "day", "week") for kind in ("uptime", "downtime")
    }
