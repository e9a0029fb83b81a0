"""A slow, per-store reference for the uptime report, written to be obviously right.

It follows SPEC §5 word for word with plain datetimes and loops, and shares no
code with the engine in `utils.py`: local times are turned into UTC with
zoneinfo (`fold=0`, the first occurrence) and pandas' `shift_forward` for
times a DST change skips.  Results are exact integers of half-microseconds
("ticks") so the engine can be compared with `==`.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
WINDOWS = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1), "week": dt.timedelta(days=7)}


def first_instant(date: dt.date, time_of_day: dt.time, zone_name: str) -> dt.datetime:
    """The first UTC instant at which the local clock in `zone_name` reads `date time_of_day`."""
    zone = ZoneInfo(zone_name)
    naive = dt.datetime.combine(date, time_of_day)
    aware = naive.replace(tzinfo=zone, fold=0)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        return aware.astimezone(UTC)
    shifted = pd.Timestamp(naive).tz_localize(zone_name, nonexistent="shift_forward")
    return shifted.to_pydatetime().astimezone(UTC)


def business_intervals(rows, zone_name: str, now: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """Merged UTC business intervals of one store around the last week (24/7 when no rows)."""
    week_start = now - WINDOWS["week"]
    if not rows:
        return [(week_start - dt.timedelta(days=3), now + dt.timedelta(days=3))]
    zone = ZoneInfo(zone_name)
    first_date = week_start.astimezone(zone).date() - dt.timedelta(days=1)
    last_date = now.astimezone(zone).date()
    intervals = []
    date = first_date
    while date <= last_date:
        for day, start, end in rows:
            if date.weekday() != day:
                continue
            close_date = date + dt.timedelta(days=1) if end <= start else date
            intervals.append((first_instant(date, start, zone_name), first_instant(close_date, end, zone_name)))
        date += dt.timedelta(days=1)
    intervals.sort()
    merged: list[list[dt.datetime]] = []
    for opening, closing in intervals:
        if merged and opening <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], closing)
        else:
            merged.append([opening, closing])
    return [tuple(pair) for pair in merged]


def ticks(when: dt.datetime) -> int:
    """Half-microseconds since the epoch (exact: midpoints of microseconds are whole ticks)."""
    return 2 * ((when - EPOCH) // dt.timedelta(microseconds=1))


def overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> int:
    return max(0, min(a_end, b_end) - max(a_start, b_start))


def reference_ticks(polls, hours, zones, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Exact ticks per store and column.

    polls: iterable of (store_id, aware UTC datetime, "active"|"inactive"), in file order.
    hours: iterable of (store_id, day, datetime.time start, datetime.time end).
    zones: dict store_id -> zone name.
    """
    by_store: dict[str, dict[dt.datetime, str]] = {}
    for store_id, when, status in polls:
        if when <= now:
            by_store.setdefault(store_id, {})[when] = status  # a later row wins
    rows_of: dict[str, list] = {}
    for store_id, day, start, end in hours:
        rows_of.setdefault(store_id, []).append((day, start, end))

    now_t = ticks(now)
    far_past, far_future = now_t - 10**18, now_t + 10**18
    result = {}
    for store_id, polls_at in by_store.items():
        times = sorted(polls_at)
        points = [ticks(when) for when in times]
        spans = []
        for i, point in enumerate(points):
            begin = far_past if i == 0 else (points[i - 1] + point) // 2
            end = far_future if i == len(points) - 1 else (point + points[i + 1]) // 2
            spans.append((begin, end, polls_at[times[i]]))
        business = business_intervals(rows_of.get(store_id, []), zones.get(store_id, "America/Chicago"), now)
        row = {}
        for name, length in WINDOWS.items():
            w_start = ticks(now - length)
            up = down = 0
            for b_start, b_end in business:
                b_start, b_end = max(ticks(b_start), w_start), min(ticks(b_end), now_t)
                for s_begin, s_end, status in spans:
                    part = overlap(b_start, b_end, s_begin, s_end)
                    if status == "active":
                        up += part
                    else:
                        down += part
            row[f"uptime_last_{name}"] = up
            row[f"downtime_last_{name}"] = down
        result[store_id] = row
    return result


def reference_report(directory) -> list[dict]:
    """The report of a data folder at its newest poll, by `reference_ticks`, in report units (minutes
    for the hour, hours for day and week, numpy.round to 2 places), one dict per store in store_id order.
    The files are read by sources.py, which is tested on its own; nothing here uses the engine."""
    import numpy as np

    import sources

    parsed = sources.read_data_dir(directory)
    polls, hours, zones = (parsed[f].frame for f in (sources.STATUS_FILE, sources.HOURS_FILE, sources.ZONES_FILE))
    now_us = int(polls["timestamp_us"].max())
    to_dt = lambda us: EPOCH + dt.timedelta(microseconds=int(us))  # noqa: E731
    to_time = lambda s: dt.time(s // 3600, s // 60 % 60, s % 60)  # noqa: E731
    ticks_of = reference_ticks(
        [
            (s, to_dt(t), "active" if a else "inactive")
            for s, t, a in zip(polls["store_id"], polls["timestamp_us"], polls["active"])
        ],
        [
            (s, d, to_time(a), to_time(b))
            for s, d, a, b in zip(hours["store_id"], hours["day"], hours["start_s"], hours["end_s"])
        ],
        dict(zip(zones["store_id"], zones["timezone_str"])),
        to_dt(now_us),
    )
    per_unit = {"hour": 60 * 2_000_000, "day": 3_600 * 2_000_000, "week": 3_600 * 2_000_000}
    columns = [
        "uptime_last_hour",
        "uptime_last_day",
        "uptime_last_week",
        "downtime_last_hour",
        "downtime_last_day",
        "downtime_last_week",
    ]
    return [
        {"store_id": str(store), **{c: float(np.round(row[c] / per_unit[c.rsplit("_", 1)[1]], 2)) for c in columns}}
        for store, row in sorted(ticks_of.items())
    ]
