"""Pure time and interval arithmetic for the uptime report: no Flask, Mongo or files.

It parses the one instant a user gives (`parse_as_of`), cuts the stores into the
ranges every path computes (`store_ranges`) and joins their ticks (`join_ticks`).

Every instant inside the engine is an int64 count of *ticks*, half-microseconds
since the Unix epoch.  Polls carry microsecond timestamps, so the midpoint of
two polls is always a whole number of ticks and nothing is rounded until the
final minutes/hours columns.

The engine (`uptime_report`) works on whole arrays:

1. each store's business hours become UTC intervals, zone by zone
   (`business_intervals_utc`), then are merged into disjoint sets;
2. every store lives in its own "band" of one shared number line
   (`store * band + (t - week_start)`), so one `searchsorted` over all stores'
   merged intervals plus a cumulative sum gives "business time up to t" for
   any store and instant (`BusinessClock`);
3. each poll covers the span between the midpoints with its neighbours
   (`poll_spans`), and a run of polls with one status the spans of all of
   them (`status_runs`: most polls repeat the status before them, so the
   engine computes with the runs only); the business time inside
   (run ∩ window) is a difference of two clock readings, summed per store
   with `bincount`.

The command line reads polls already sorted and cut down to the first and
last poll of each run (`deciding_polls`, `run_ends`), with no pandas until
it writes the CSV (`code_sorted_polls`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import pandas as pd
# pandas is imported where a frame is made or read, not here: the command line computes a report without it
# until it writes the CSV, and starts the interpreter 0.3 s sooner (docs/performance.md)

TICKS_PER_SECOND = 2_000_000
TICKS_PER_US = 2
TICKS_PER_DAY = 86_400 * TICKS_PER_SECOND
US_PER_SECOND = 1_000_000
DEFAULT_TIMEZONE = "America/Chicago"

HOUR_US = 3_600 * US_PER_SECOND
DAY_US = 24 * HOUR_US
WEEK_US = 7 * DAY_US

REPORT_COLUMNS = [
    "store_id",
    "uptime_last_hour",
    "uptime_last_day",
    "uptime_last_week",
    "downtime_last_hour",
    "downtime_last_day",
    "downtime_last_week",
]

# Far enough from the window to act as +/- infinity, small enough not to overflow int64 sums.
_FAR = 2**61


# --------------------------------------------------------------------------- instants

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def us_to_datetime(value_us: int) -> dt.datetime:
    """A UTC datetime for microseconds since the epoch."""
    return _EPOCH + dt.timedelta(microseconds=int(value_us))


def datetime_to_us(value: dt.datetime) -> int:
    """Microseconds since the epoch for a datetime (a naive one is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


# what openapi.json promises for as_of: a date, optionally a time (seconds and up to 6 decimals), a zone
AS_OF = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?([Zz]|[+-]\d{2}:?\d{2})?", re.ASCII)


AS_OF_FORMS = (
    "YYYY-MM-DD, optionally followed by THH:MM[:SS[.ffffff]] and Z, +HH:MM or -HH:MM "
    "(no zone means UTC), e.g. 2023-01-25T18:00:00Z"
)


def as_of_error(text, why: str = "") -> ValueError:
    """The one wording of every as_of error: what was given, why it was refused, the accepted forms."""
    shown = repr(text[:64]) if isinstance(text, str) else f"of type {type(text).__name__}"
    return ValueError(f"as_of {shown} is not an ISO 8601 instant{why}: use {AS_OF_FORMS}")


def parse_as_of(text: str) -> int:
    """Microseconds since the epoch for an ISO 8601 instant (no zone means UTC)."""
    if not isinstance(text, str) or not AS_OF.fullmatch(text):
        raise as_of_error(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise as_of_error(text, " (no such date or time)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        when.astimezone(dt.UTC)
    except OverflowError:
        raise as_of_error(text, " (out of range: years 1 to 9999 in UTC)") from None
    return datetime_to_us(when)


# the instants a report can be asked for: every date the engine computes with (now minus a week and
# its look-back, local dates around the week, in every zone) then stays inside what datetime holds
FIRST_AS_OF_US = datetime_to_us(dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
LAST_AS_OF_US = datetime_to_us(dt.datetime(9000, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC))


def check_as_of_range(as_of_us: int) -> int:
    """`as_of_us` when it is in the supported range (1970-01-01 to 9000-12-31 UTC); ValueError otherwise."""
    if not FIRST_AS_OF_US <= as_of_us <= LAST_AS_OF_US:
        raise ValueError("as_of must be from 1970-01-01T00:00:00Z to 9000-12-31T23:59:59.999999Z")
    return as_of_us


# --------------------------------------------------------------------------- time zones


def is_valid_timezone(name: str) -> bool:
    """True when `name` is an IANA zone that zoneinfo can load."""
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return False
    return True


def _load_zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name or name.strip() != name:
        raise ValueError(f"invalid time zone name {name!r}")
    return ZoneInfo(name)


# memoised by wrapping rather than decorating: mutmut leaves decorated functions unmutated
_zone = lru_cache(maxsize=None)(_load_zone)


def _offset_seconds(zone: ZoneInfo, epoch_second: int) -> int:
    instant = dt.datetime.fromtimestamp(epoch_second, tz=dt.UTC)
    return int(instant.astimezone(zone).utcoffset().total_seconds())


def _zone_transitions(name: str, start_s: int, end_s: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """UTC offset segments of zone `name` between two epoch seconds.

    Returns `(transitions, offsets)`: `offsets[k]` (seconds) holds from
    `transitions[k-1]` (inclusive) to `transitions[k]` (exclusive); the first
    offset holds before the first transition and the last after the last.

    Examples
    --------
    >>> zone_transitions("America/New_York", 1678500000, 1678700000)
    ((1678604400,), (-18000, -14400))
    """
    zone = _zone(name)
    step = 3_600  # every real zone keeps an offset for at least an hour
    samples = list(range(start_s - step, end_s + 2 * step, step))
    transitions: list[int] = []
    offsets = [_offset_seconds(zone, samples[0])]
    for left, right in zip(samples, samples[1:]):
        after = _offset_seconds(zone, right)
        if after == offsets[-1]:
            continue
        lo, hi = left, right  # offset(lo) is the old one, offset(hi) the new one
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _offset_seconds(zone, mid) == offsets[-1]:
                lo = mid
            else:
                hi = mid
        transitions.append(hi)
        offsets.append(after)
    return tuple(transitions), tuple(offsets)


zone_transitions = lru_cache(maxsize=4096)(_zone_transitions)  # wrapped, not decorated: see _zone


def local_to_utc_ticks(local_ticks: np.ndarray, transitions_s, offsets_s) -> np.ndarray:
    """Map wall-clock readings (ticks, as if UTC) to the first instant the clock shows them.

    A reading shown twice (clocks set back) maps to its first occurrence; a
    reading never shown (clocks set forward) maps to the end of the skip.
    """
    local_ticks = np.asarray(local_ticks, dtype=np.int64)
    offsets = [o * TICKS_PER_SECOND for o in offsets_s]
    bounds = [-_FAR] + [t * TICKS_PER_SECOND for t in transitions_s] + [_FAR]
    result = np.full(local_ticks.shape, _FAR, dtype=np.int64)
    for k, offset in enumerate(offsets):
        shown = (local_ticks >= bounds[k] + offset) & (local_ticks < bounds[k + 1] + offset)
        np.minimum(result, np.where(shown, local_ticks - offset, _FAR), out=result)
    for k in range(1, len(offsets)):
        if offsets[k] > offsets[k - 1]:
            skipped = (local_ticks >= bounds[k] + offsets[k - 1]) & (local_ticks < bounds[k] + offsets[k])
            result[skipped] = bounds[k]
    return result


# --------------------------------------------------------------------------- business hours


def business_intervals_utc(
    row_store: np.ndarray,
    row_day: np.ndarray,
    row_start_s: np.ndarray,
    row_end_s: np.ndarray,
    row_zone: np.ndarray,
    from_ticks: int,
    to_ticks: int,
    zone_names=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open and close instants (UTC ticks) of every business-hour row on every date near a range.

    Each row (store, weekday, start, end, zone name) opens on each local date
    with that weekday at `start` and closes at `end` the same day, or the next
    day when `end <= start` (overnight; equal means 24 hours).  Dates are taken
    wide enough that every opening touching `[from_ticks, to_ticks)` is listed.
    With `zone_names`, `row_zone` holds each row's index into them instead of a name.
    Returns `(store, open, close)` arrays, unmerged and unsorted.
    """
    row_store = np.asarray(row_store, dtype=np.int64)
    row_day = np.asarray(row_day, dtype=np.int64)
    row_start = np.asarray(row_start_s, dtype=np.int64) * TICKS_PER_SECOND
    row_end = np.asarray(row_end_s, dtype=np.int64) * TICKS_PER_SECOND
    if zone_names is None:
        row_zone, zone_names = factorize_names(row_zone)
    row_zone = np.asarray(row_zone, dtype=np.int64)
    # local dates: offsets are within +/-1 day and a row lasts at most ~2 days
    first_day = from_ticks // TICKS_PER_DAY - 3
    last_day = to_ticks // TICKS_PER_DAY + 1
    first_weekday = (first_day + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    first_date = first_day + (row_day - first_weekday) % 7
    weeks = (last_day - first_day) // 7 + 1

    stores, opens, closes, zones = [], [], [], []
    for week in range(weeks):
        date = first_date + 7 * week
        keep = date <= last_day
        local_midnight = date[keep] * TICKS_PER_DAY
        start, end = row_start[keep], row_end[keep]
        stores.append(row_store[keep])
        opens.append(local_midnight + start)
        closes.append(local_midnight + end + np.where(end <= start, TICKS_PER_DAY, 0))
        zones.append(row_zone[keep])
    store = np.concatenate(stores) if stores else np.empty(0, np.int64)
    local_open = np.concatenate(opens) if opens else np.empty(0, np.int64)
    local_close = np.concatenate(closes) if closes else np.empty(0, np.int64)
    codes = np.concatenate(zones) if zones else np.empty(0, np.int64)

    open_utc = np.empty_like(local_open)
    close_utc = np.empty_like(local_close)
    span_s = (first_day * 86_400, (last_day + 3) * 86_400)
    for code in np.unique(codes).tolist():
        name = zone_names[code]
        rows = codes == code
        transitions, offsets = zone_transitions(name, *span_s)
        open_utc[rows] = local_to_utc_ticks(local_open[rows], transitions, offsets)
        close_utc[rows] = local_to_utc_ticks(local_close[rows], transitions, offsets)
    return store, open_utc, np.maximum(close_utc, open_utc)


def factorize_names(names) -> tuple[np.ndarray, list[str]]:
    """Each name's index into the distinct names, and those names (by Arrow's hash table, not Python's)."""
    encoded = pc.dictionary_encode(pa.array(np.asarray(names, dtype=object), pa.string()))
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def merge_intervals(keys_open: np.ndarray, keys_close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of half-open intervals: sorted, disjoint `(open, close)` arrays.

    Examples
    --------
    >>> merge_intervals(np.array([5, 1, 2]), np.array([6, 3, 4]))
    (array([1, 5]), array([4, 6]))
    """
    keep = keys_close > keys_open
    keys_open, keys_close = keys_open[keep], keys_close[keep]
    if keys_open.size == 0:
        return keys_open, keys_close
    order = np.argsort(keys_open, kind="stable")
    keys_open, keys_close = keys_open[order], keys_close[order]
    reach = np.maximum.accumulate(keys_close)
    starts_group = np.ones(keys_open.size, dtype=bool)
    starts_group[1:] = keys_open[1:] > reach[:-1]
    first = np.flatnonzero(starts_group)
    return keys_open[first], np.maximum.reduceat(keys_close, first)


@dataclass(frozen=True)
class BusinessClock:
    """Business time elapsed up to any banded instant, for many stores at once.

    Instants are *banded*: `store * band + (t - origin)` with `t` clipped to
    `[origin, origin + band - 1]`, so stores never share a stretch of the line.
    """

    opens: np.ndarray
    closes: np.ndarray
    before: np.ndarray  # business time in all intervals before each one

    @classmethod
    def from_intervals(cls, opens: np.ndarray, closes: np.ndarray) -> BusinessClock:
        opens, closes = merge_intervals(opens, closes)
        lengths = closes - opens
        before = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        return cls(opens, closes, before)

    def reading(self, banded: np.ndarray) -> np.ndarray:
        """Business time (ticks) from the start of the line up to each banded instant."""
        k = np.searchsorted(self.opens, banded, side="right") - 1
        if self.opens.size == 0:
            return np.zeros(np.shape(banded), dtype=np.int64)
        kk = np.maximum(k, 0)
        inside = np.clip(banded - self.opens[kk], 0, self.closes[kk] - self.opens[kk])
        return np.where(k >= 0, self.before[kk] + inside, 0)


# --------------------------------------------------------------------------- polls


def poll_spans(store: np.ndarray, ticks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Span `[begin, end)` each poll stands for, given polls sorted by (store, time).

    A poll reaches back to the midpoint with its predecessor and forward to
    the midpoint with its successor (so a midpoint goes to the later poll);
    a store's first poll reaches back for ever and its last forward for ever.
    Ticks are even (whole microseconds), so midpoints are exact.
    """
    n = ticks.size
    begin = np.full(n, -_FAR, dtype=np.int64)
    end = np.full(n, _FAR, dtype=np.int64)
    if n > 1:
        same = store[1:] == store[:-1]
        mid = (ticks[1:] + ticks[:-1]) // 2
        begin[1:] = np.where(same, mid, -_FAR)
        end[:-1] = np.where(same, mid, _FAR)
    return begin, end


def status_runs(store: np.ndarray, stamps_us: np.ndarray, active: np.ndarray):
    """Polls sorted by (store, time), one per instant, as runs of one status: `(store, begin, end, active)`
    of each run, `begin` and `end` in ticks.

    Only the polls where a store's status changes matter (most polls repeat the one before): a run
    stands for the spans of all its polls, from the midpoint with the poll before its first (for ever
    back for a store's first) to the midpoint with the first poll of the next run (for ever on for the
    store's last).  The midpoint of polls at a and b microseconds is a + b ticks, exactly.
    """
    n = stamps_us.size
    if n == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, empty.copy(), np.empty(0, bool)
    store_starts = np.empty(n, dtype=bool)
    store_starts[0] = True
    np.not_equal(store[1:], store[:-1], out=store_starts[1:])
    starts = np.not_equal(active[1:], active[:-1])
    starts |= store_starts[1:]
    first = np.flatnonzero(starts) + 1  # the first poll of each run but the very first
    first = np.concatenate(([0], first))
    run_store = store[first]
    new_store = store_starts[first]
    begin = np.where(new_store, -_FAR, stamps_us[np.maximum(first - 1, 0)] + stamps_us[first])
    end = np.full(first.size, _FAR, dtype=np.int64)
    end[:-1] = np.where(new_store[1:], _FAR, begin[1:])
    return run_store, begin.astype(np.int64, copy=False), end, active[first]


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class CodedInputs:
    """Engine inputs with stores numbered 0..n_stores-1 (see `code_inputs`).

    Polls are sorted by (store, time), the later of two rows with the same
    store and time last; hour rows and zone names are per store number.
    """

    n_stores: int
    poll_store: np.ndarray  # int64, sorted
    poll_us: np.ndarray  # int64 µs, sorted within each store
    poll_active: np.ndarray  # bool
    hour_store: np.ndarray  # int64
    hour_day: np.ndarray
    hour_start_s: np.ndarray
    hour_end_s: np.ndarray
    zone_of_store: np.ndarray  # object, one zone name per store

    def stores(self, first: int, last: int) -> CodedInputs:
        """The inputs of stores first..last-1, renumbered from 0."""
        polls = slice(*np.searchsorted(self.poll_store, [first, last]))
        rows = (self.hour_store >= first) & (self.hour_store < last)
        return CodedInputs(
            n_stores=last - first,
            poll_store=self.poll_store[polls] - first,
            poll_us=self.poll_us[polls],
            poll_active=self.poll_active[polls],
            hour_store=self.hour_store[rows] - first,
            hour_day=self.hour_day[rows],
            hour_start_s=self.hour_start_s[rows],
            hour_end_s=self.hour_end_s[rows],
            zone_of_store=self.zone_of_store[first:last],
        )


# With several workers, at least this many ranges each, so they finish close together and a slow or lost one
# does not stall the rest.  Threads and forked processes of one host take 4 (smaller ranges also compute faster:
# at 1x on 2 cores the engine took about 0.12 s with 4, 0.16 s with 2); on a cluster each range is also a task
# and a database read, so 2 (there 2 was the faster at 1x).
RANGES_PER_LOCAL_WORKER = 4
RANGES_PER_CLUSTER_WORKER = 2


def store_ranges(
    n_stores: int, range_stores: int, workers: int = 1, per_worker: int = RANGES_PER_LOCAL_WORKER
) -> list[tuple[int, int]]:
    """Stores 0..n_stores-1 cut into ranges `(first, last)`, in order: the one rule of every path.

    At most `range_stores` (CHUNK_STORES) stores each; when several `workers` share them, cut finer so
    each gets at least `per_worker` ranges.  One worker takes them one after another: nothing finer.

    Examples
    --------
    >>> store_ranges(7, 3)
    [(0, 3), (3, 6), (6, 7)]
    >>> store_ranges(7, 5_000, workers=2, per_worker=2)
    [(0, 2), (2, 4), (4, 6), (6, 7)]
    """
    shared = -(-n_stores // (per_worker * workers)) if workers > 1 else range_stores
    size = max(1, min(range_stores, shared))
    return [(first, min(first + size, n_stores)) for first in range(0, n_stores, size)]


def poll_order(codes: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """The stable order of polls by (store, time): of rows with equal store and time, the one
    earlier in the input comes first."""
    codes = np.asarray(codes)
    stamps = np.asarray(stamps, dtype=np.int64)
    if stamps.size == 0:
        return np.arange(0, dtype=np.intp)
    low = int(stamps.min())
    span = int(stamps.max()) - low + 1
    if (int(codes.max()) + 1) * span < 2**62:
        keys = np.multiply(codes, span, dtype=np.int64)
        keys += stamps
        keys -= low
        return stable_argsort(keys)
    return np.lexsort((stamps, codes))


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


SPLIT_SORT_MIN = 1 << 19  # below this many keys one thread sorts them sooner than two
BUCKET_BITS = 16  # numpy sorts 16-bit integers stably by radix, in linear time


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """`np.argsort(keys, kind="stable")`, about three times as fast on large arrays.

    First a radix pass puts the keys in buckets by their top BUCKET_BITS bits
    (above the smallest key); then numpy's stable sort (a merge sort that runs
    through ordered stretches quickly) orders the keys within each bucket.
    Equal keys share a bucket and both passes are stable, so the order is the
    same.  With two cores the buckets are cut in two at a bucket boundary and
    each part is sorted in its own thread (numpy lets go of the GIL while it
    sorts); every key of the first part is below every key of the second.
    Temporaries are few and freed early: on a virtual machine fresh memory is
    slower to touch than the sort itself.
    """
    keys = np.asarray(keys, dtype=np.int64)
    n = keys.size
    if n < 2:
        return np.arange(n, dtype=np.intp)
    offset = keys.view(np.uint64) - keys.min().astype(np.uint64)  # below 2**64 even from -2**63: no overflow
    shift = max(0, int(offset.max()).bit_length() - BUCKET_BITS)
    offset >>= np.uint64(shift)
    bucket = offset.astype(np.uint16)
    del offset
    by_bucket = np.argsort(bucket, kind="stable")
    grouped = keys[by_bucket]
    if n < SPLIT_SORT_MIN or _cores() < 2:
        return by_bucket[np.argsort(grouped, kind="stable")]
    sorted_buckets = bucket[by_bucket]
    del bucket
    cut = int(np.searchsorted(sorted_buckets, sorted_buckets[n // 2]))  # where the middle key's bucket starts
    del sorted_buckets
    order = np.empty(n, dtype=np.intp)

    def sort_part(part: slice) -> None:
        np.take(by_bucket[part], np.argsort(grouped[part], kind="stable"), out=order[part])

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sort") as pool:
        list(pool.map(sort_part, (slice(0, cut), slice(cut, n))))
    return order


def last_of_each_instant(codes: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """For polls sorted by (store, time): True for each that no later neighbour shares store and time with."""
    last = np.ones(stamps.size, dtype=bool)
    last[:-1] = (codes[1:] != codes[:-1]) | (stamps[1:] != stamps[:-1])
    return last


def _in_poll_order(codes: np.ndarray, stamps: np.ndarray) -> bool:
    """Whether the polls are already sorted by (store, time), with no (store, time) twice."""
    later_store = codes[1:] > codes[:-1]
    return bool((later_store | ((codes[1:] == codes[:-1]) & (stamps[1:] > stamps[:-1]))).all())


def sorted_polls(codes: np.ndarray, stamps: np.ndarray, active: np.ndarray):
    """Polls sorted by (store, time) as `(store, stamp, active)`; of rows with equal store and
    time, the one later in the input comes last."""
    codes = codes.astype(np.int64)
    if stamps.size == 0 or _in_poll_order(codes, stamps):  # as sources.read_store_status gives them
        return codes, stamps, active
    low = int(stamps.min())
    span = int(stamps.max()) - low + 1
    if (int(codes.max()) + 1) * span < 2**62:
        packed = codes * span + (stamps - low)
        # sorting the values (with the status as the lowest bit) is ~8x faster than any argsort;
        # it is only right when no (store, time) repeats, since it would order repeats by status
        keys = np.sort(packed * 2 + active)
        packed_sorted = keys >> 1
        if not (packed_sorted[1:] == packed_sorted[:-1]).any():
            return packed_sorted // span, packed_sorted % span + low, (keys & 1).astype(bool)
    order = poll_order(codes, stamps)
    return codes[order], stamps[order], active[order]


def run_ends(store: np.ndarray, active: np.ndarray, starts_given: bool = False) -> np.ndarray:
    """For polls sorted by (store, time), one per instant: True for the first and the last poll of each run
    of one store's polls with one status.  (With `starts_given`, `store` is True for each store's first
    poll instead of its number.)

    The report depends on those alone (`status_runs` reads a run's first poll and the poll before it), also
    when polls after some instant are dropped later: a run cut short keeps its first poll, and its end is
    then the store's end, whichever poll was its last.
    """
    n = active.size
    first = np.ones(n, dtype=bool)
    if n > 1:
        np.not_equal(active[1:], active[:-1], out=first[1:])
        first[1:] |= store[1:] if starts_given else store[1:] != store[:-1]
    ends = first.copy()
    ends[:-1] |= first[1:]
    ends[-1:] = True  # (the last poll of all ends its run)
    return ends


def deciding_polls(codes, stamps, active, n_stores: int):
    """Polls numbered by store (`codes` below `n_stores`), in any order, sorted by (store, time) and cut down
    to the first and last poll of each run of one status (`run_ends`): `(store, stamp, active)`.

    `codes`, `stamps` and `active` are arrays, or lists of arrays (the blocks a file was read in: each is
    packed on its own, so the polls are never copied whole).  Store, time and status are packed into one
    int64 a poll and the values sorted, several times quicker than an argsort and the takes it needs; with
    two cores the two halves of the stores are packed, sorted and cut down at once, in two threads (numpy
    lets go of the GIL).  None when a store has two polls at one instant (which stands depends on the file
    order, that a sort of values loses) or the keys would not fit in an int64.
    """
    blocks = list(zip(*(part if isinstance(part, list) else [part] for part in (codes, stamps, active))))
    blocks = [(c, t, a) for c, t, a in blocks if t.size]
    if not blocks:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool)
    low = min(int(t.min()) for _, t, _ in blocks)
    span = max(int(t.max()) for _, t, _ in blocks) - low + 1
    if n_stores * span >= 2**61:
        return None
    halves = [(0, n_stores)]
    if sum(t.size for _, t, _ in blocks) >= SPLIT_SORT_MIN and _cores() >= 2:
        halves = [(0, n_stores // 2), (n_stores // 2, n_stores)]

    def half(bounds: tuple[int, int]):
        first_store, last_store = bounds
        parts, counts = [], np.zeros(last_store - first_store, dtype=np.int64)
        for c, t, a in blocks:
            if len(halves) > 1:
                here = (c >= first_store) & (c < last_store)
                c, t, a = c[here], t[here], a[here]
            keys = np.multiply(c, 2 * span, dtype=np.int64)
            offset = np.subtract(t, low, dtype=np.int64)
            offset <<= 1
            keys += offset
            keys += a
            parts.append(keys)
            counts += np.bincount(c - first_store, minlength=last_store - first_store)
        keys = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        del parts
        keys.sort()
        # two polls at one instant: keys equal but for the status bit, which is the lowest
        if keys.size > 1 and (np.bitwise_xor(keys[1:], keys[:-1]) < 2).any():
            return None
        starts = np.cumsum(counts) - counts  # where each store's polls begin (all of them, for no store is empty)
        new_store = np.zeros(keys.size, dtype=bool)
        new_store[starts[counts > 0]] = True
        up = (keys.view(np.uint8)[:: keys.itemsize] & 1).view(bool)  # (the lowest byte: little-endian)
        kept = np.flatnonzero(run_ends(new_store, up, starts_given=True))
        store = np.searchsorted(starts, kept, side="right") - 1 + first_store
        return store, (keys[kept] >> 1) - store * span + low, up[kept]

    if len(halves) == 1:
        results = [half(halves[0])]
    else:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sort-polls") as pool:
            results = list(pool.map(half, halves))
    if any(result is None for result in results):
        return None
    return tuple(np.concatenate(column) for column in zip(*results))


def _store_codes(store_id: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Each poll's store number and the store ids, numbered in store_id order."""
    import pandas as pd

    codes = store_id.cat.codes.to_numpy() if isinstance(store_id.dtype, pd.CategoricalDtype) else None
    if codes is not None and store_id.cat.categories.is_monotonic_increasing and (codes.size == 0 or codes.min() >= 0):
        # as sources.read_store_status and the stores give them: only the categories in use are numbered
        used = np.bincount(codes, minlength=len(store_id.cat.categories)) > 0
        if used.all():
            return codes, store_id.cat.categories
        number = np.cumsum(used) - 1
        return number[codes], store_id.cat.categories[used]
    # (a categorical's own factorize would number in its categories' order, not in store_id order)
    return pd.factorize(store_id.to_numpy(dtype=object) if codes is not None else store_id, sort=True)


def _positions(store_id: pd.Series, store_set: pa.Array) -> np.ndarray:
    """Each row's store's position in `store_set` (distinct store ids), -1 for stores not in it; by
    Arrow's hash join, which reads Arrow-backed text as it is (the files' frames) instead of making
    a Python string of each row."""
    found = pc.index_in(pa.array(store_id, pa.string()), value_set=store_set)
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def code_inputs(polls: pd.DataFrame, hours: pd.DataFrame, zones: pd.DataFrame, now_us: int):
    """Number the stores with a poll at or before `now_us` (in store_id order) and sort the polls.

    Returns `(store_ids, CodedInputs)`; hour and zone rows of other stores are dropped.
    """
    kept = polls["timestamp_us"].to_numpy() <= int(now_us)
    if not kept.all():
        polls = polls[kept]
    codes, store_ids = _store_codes(polls["store_id"])
    store_set = pa.array(np.asarray(store_ids, dtype=object), pa.string())
    stamps = polls["timestamp_us"].to_numpy(dtype=np.int64)
    poll_store, poll_us, poll_active = sorted_polls(codes, stamps, polls["active"].to_numpy(dtype=bool))
    return store_ids, _coded_inputs(store_set, poll_store, poll_us, poll_active, hours, zones)


def code_sorted_polls(
    store_ids: pa.Array,
    poll_store: np.ndarray,
    poll_us: np.ndarray,
    poll_active: np.ndarray,
    hours: pd.DataFrame,
    zones: pd.DataFrame,
    now_us: int,
):
    """`code_inputs` for polls numbered and sorted already (as sources.PollColumns holds them, with no
    pandas): polls sorted by (store, time), one per store and instant, `poll_store` indexing `store_ids`
    (distinct, in store_id order).  Returns `(store_ids, CodedInputs)` for the stores with a poll at or
    before `now_us`."""
    kept = poll_us <= int(now_us)
    if not kept.all():
        poll_store, poll_us, poll_active = poll_store[kept], poll_us[kept], poll_active[kept]
        used = np.bincount(poll_store, minlength=len(store_ids)) > 0
        if not used.all():  # stores whose every poll is after now: number the others anew, in order
            poll_store = (np.cumsum(used) - 1)[poll_store]
            store_ids = store_ids.filter(pa.array(used))
    return store_ids, _coded_inputs(store_ids, poll_store, poll_us, poll_active, hours, zones)


def _coded_inputs(store_set: pa.Array, poll_store, poll_us, poll_active, hours, zones) -> CodedInputs:
    """The engine's inputs from the numbered polls and the hours' and zones' frames (rows of other stores
    dropped)."""
    zone_of_store = np.full(len(store_set), DEFAULT_TIMEZONE, dtype=object)
    z_store = _positions(zones["store_id"], store_set)
    z_known = z_store >= 0
    zone_of_store[z_store[z_known]] = zones["timezone_str"].to_numpy(dtype=object)[z_known]

    h_store = _positions(hours["store_id"], store_set)
    h_known = h_store >= 0
    return CodedInputs(
        n_stores=len(store_set),
        poll_store=poll_store,
        poll_us=poll_us,
        poll_active=poll_active,
        hour_store=h_store[h_known],
        hour_day=hours["day"].to_numpy(dtype=np.int64)[h_known],
        hour_start_s=hours["start_s"].to_numpy(dtype=np.int64)[h_known],
        hour_end_s=hours["end_s"].to_numpy(dtype=np.int64)[h_known],
        zone_of_store=zone_of_store,
    )


def coded_uptime_ticks(coded: CodedInputs, now_us: int) -> dict[str, np.ndarray]:
    """Exact uptime/downtime ticks per store number, for each window (the engine's core).

    Every poll in `coded` must be at or before `now_us`.
    """
    n_stores = coded.n_stores
    now = int(now_us) * TICKS_PER_US
    origin = now - WEEK_US * TICKS_PER_US
    band = now - origin + 1
    window_starts = {
        "hour": now - HOUR_US * TICKS_PER_US,
        "day": now - DAY_US * TICKS_PER_US,
        "week": origin,
    }

    def banded(store: np.ndarray, ticks) -> np.ndarray:
        return store * band + (np.clip(ticks, origin, now) - origin)

    # --- business hours as banded intervals; stores without rows are open all week
    zone_code, zone_names = factorize_names(coded.zone_of_store)
    b_store, b_open, b_close = business_intervals_utc(
        coded.hour_store,
        coded.hour_day,
        coded.hour_start_s,
        coded.hour_end_s,
        zone_code[coded.hour_store],
        origin,
        now,
        zone_names=zone_names,
    )
    always_open = np.ones(n_stores, dtype=bool)
    always_open[coded.hour_store] = False
    all_day = np.flatnonzero(always_open)
    b_store = np.concatenate((b_store, all_day))
    b_open = np.concatenate((b_open, np.full(all_day.size, origin)))
    b_close = np.concatenate((b_close, np.full(all_day.size, now)))
    clock = BusinessClock.from_intervals(banded(b_store, b_open), banded(b_store, b_close))

    # --- polls: of several at one instant, the last (the later row) stands; then runs of one status
    p_store, p_us, p_active = coded.poll_store, coded.poll_us, coded.poll_active
    last_of_instant = last_of_each_instant(p_store, p_us)
    if not last_of_instant.all():
        p_store, p_us, p_active = p_store[last_of_instant], p_us[last_of_instant], p_active[last_of_instant]
    p_store, begin, end, p_active = status_runs(p_store, p_us, p_active)
    end_reading = clock.reading(banded(p_store, end))
    # a run's span begins where its predecessor's ends, so that reading is already known
    begin_reading = np.empty_like(end_reading)
    begin_reading[1:] = end_reading[:-1]
    has_predecessor = np.zeros(p_store.size, dtype=bool)
    has_predecessor[1:] = p_store[1:] == p_store[:-1]

    stores = np.arange(n_stores, dtype=np.int64)
    close_reading = clock.reading(banded(stores, now))
    result = {}
    for name, start in window_starts.items():
        window_start_reading = clock.reading(banded(stores, start))
        start_reading = np.where(has_predecessor & (begin >= start), begin_reading, window_start_reading[p_store])
        active_covered = np.where(p_active, np.maximum(end_reading - start_reading, 0), 0)
        # float weights are exact here: every sum stays below 2**53 ticks
        uptime = np.bincount(p_store, weights=active_covered, minlength=n_stores).astype(np.int64)
        business = close_reading - window_start_reading
        result[f"uptime_last_{name}"] = uptime
        result[f"downtime_last_{name}"] = business - uptime
    return result


def uptime_ticks(polls: pd.DataFrame, hours: pd.DataFrame, zones: pd.DataFrame, now_us: int) -> pd.DataFrame:
    """Exact uptime/downtime in ticks for every store with a poll at or before `now_us`.

    polls: `store_id` (str), `timestamp_us` (int64 µs since epoch), `active` (bool).
    hours: `store_id`, `day` (0 = Monday), `start_s`, `end_s` (seconds after local midnight).
    zones: `store_id`, `timezone_str` (a store without one uses America/Chicago).
    Rows in `polls` sharing a store and timestamp: the later row wins.
    Returns REPORT_COLUMNS, one row per store sorted by store_id, each
    measure an int64 number of ticks; `to_report_units` makes the report.
    """
    store_ids, coded = code_inputs(polls, hours, zones, now_us)
    return ticks_frame(store_ids, coded_uptime_ticks(coded, now_us))


def ticks_frame(store_ids, ticks: dict[str, np.ndarray]) -> pd.DataFrame:
    """The ticks of `coded_uptime_ticks` as a frame with REPORT_COLUMNS."""
    import pandas as pd

    frame = {"store_id": pd.array(np.asarray(store_ids, dtype=object), dtype="string")}
    frame.update({column: ticks[column] for column in REPORT_COLUMNS[1:]})
    return pd.DataFrame(frame, columns=REPORT_COLUMNS)


def join_ticks(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The ticks of several ranges (each as `coded_uptime_ticks` gives them) as one, in the order given."""
    return {
        column: np.concatenate([part[column] for part in parts]) if parts else np.empty(0, np.int64)
        for column in REPORT_COLUMNS[1:]
    }


def to_report_units(ticks: pd.DataFrame) -> pd.DataFrame:
    """Turn tick counts into report units: minutes for the hour, hours for day and week, 2 places."""
    report = ticks.copy()
    for column in REPORT_COLUMNS[1:]:
        unit = 60 if column.endswith("_hour") else 3_600
        report[column] = np.round(ticks[column].to_numpy() / (unit * TICKS_PER_SECOND), 2)
    return report


def uptime_report(polls: pd.DataFrame, hours: pd.DataFrame, zones: pd.DataFrame, now_us: int) -> pd.DataFrame:
    """The report (see `uptime_ticks` for the inputs) in its published units."""
    return to_report_units(uptime_ticks(polls, hours, zones, now_us))


# --------------------------------------------------------------------------- one store's week


@dataclass(frozen=True)
class StoreTimeline:
    """One store's week behind its report row, every instant in ticks (see `store_timeline`).

    `windows` maps hour/day/week to `(start, end)`; business hours are merged
    intervals clipped to the week; `poll_*` are the deciding polls in time
    order (one per instant, the later row's status); segments are business
    time in the week split by status, touching segments of one status merged.
    """

    timezone: str
    windows: dict[str, tuple[int, int]]
    business_open: np.ndarray
    business_close: np.ndarray
    poll_ticks: np.ndarray
    poll_active: np.ndarray
    segment_start: np.ndarray
    segment_end: np.ndarray
    segment_active: np.ndarray


def store_timeline(
    poll_us: np.ndarray,
    poll_active: np.ndarray,
    hour_day: np.ndarray,
    hour_start_s: np.ndarray,
    hour_end_s: np.ndarray,
    timezone: str | None,
    now_us: int,
) -> StoreTimeline:
    """The week of one store as the engine sees it: business hours, deciding polls, status segments.

    Takes the store's polls (µs since the epoch, in load order: of two rows at
    one instant the later wins; polls after `now_us` are ignored), its
    business-hour rows (weekday, start and end seconds after local midnight;
    none means open all week) and its zone (None means America/Chicago).
    Uses the engine's own pieces (`business_intervals_utc`, `merge_intervals`,
    `poll_spans`), so the segments inside each window add up, to the tick, to
    `coded_uptime_ticks` for that store.  Deciding polls are those in the week
    window plus the nearest one on each side (after the window only a poll at
    `now_us` itself can exist).

    Examples
    --------
    >>> hour = 3_600_000_000  # µs; the timeline is in ticks (half-µs)
    >>> polls = np.array([10 * hour, 11 * hour])
    >>> t = store_timeline(polls, [True, False], [3], [9 * 3600], [12 * 3600], "UTC", 12 * hour)
    >>> minute = 2 * 60_000_000  # ticks
    >>> [(int(a) // minute, int(b) // minute, bool(s))
    ...  for a, b, s in zip(t.segment_start, t.segment_end, t.segment_active)]
    [(540, 630, True), (630, 720, False)]
    """
    zone = timezone or DEFAULT_TIMEZONE
    now = int(now_us) * TICKS_PER_US
    origin = now - WEEK_US * TICKS_PER_US
    windows = {
        "hour": (now - HOUR_US * TICKS_PER_US, now),
        "day": (now - DAY_US * TICKS_PER_US, now),
        "week": (origin, now),
    }

    # business hours in the week, merged (open all week without rows)
    hour_day = np.asarray(hour_day, dtype=np.int64)
    if hour_day.size:
        _, opens, closes = business_intervals_utc(
            np.zeros(hour_day.size, np.int64),
            hour_day,
            hour_start_s,
            hour_end_s,
            np.full(hour_day.size, zone, dtype=object),
            origin,
            now,
        )
        opens, closes = merge_intervals(np.clip(opens, origin, now), np.clip(closes, origin, now))
    else:
        opens, closes = np.array([origin], np.int64), np.array([now], np.int64)

    # polls at or before now in time order, one per instant (the later row's status)
    stamps = np.asarray(poll_us, dtype=np.int64)
    active = np.asarray(poll_active, dtype=bool)
    kept = stamps <= int(now_us)
    _, stamps, active = sorted_polls(np.zeros(int(kept.sum()), np.int64), stamps[kept], active[kept])
    last_of_instant = np.ones(stamps.size, dtype=bool)
    last_of_instant[:-1] = stamps[1:] != stamps[:-1]
    ticks, active = stamps[last_of_instant] * TICKS_PER_US, active[last_of_instant]
    first_in, last_in = np.searchsorted(ticks, [origin, now])  # polls in [origin, now)
    deciding = slice(max(first_in - 1, 0), min(last_in + 1, ticks.size))

    # business intervals cut by the polls' spans: instant t belongs to the last poll whose span begins at or before t
    if ticks.size and opens.size:
        begin, end = poll_spans(np.zeros(ticks.size, np.int64), ticks)
        first_poll = np.searchsorted(begin, opens, side="right") - 1
        last_poll = np.searchsorted(begin, closes - 1, side="right") - 1
        pieces = last_poll - first_poll + 1
        interval = np.repeat(np.arange(opens.size), pieces)
        poll = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces) + first_poll[interval]
        start = np.maximum(opens[interval], begin[poll])
        stop = np.minimum(closes[interval], end[poll])
        status = active[poll]
        joins = np.zeros(start.size, dtype=bool)
        joins[1:] = (start[1:] == stop[:-1]) & (status[1:] == status[:-1])
        first = np.flatnonzero(~joins)
        last = np.append(first[1:], start.size) - 1
        start, stop, status = start[first], stop[last], status[first]
    else:
        start = stop = np.empty(0, np.int64)
        status = np.empty(0, bool)
    return StoreTimeline(zone, windows, opens, closes, ticks[deciding], active[deciding], start, stop, status)
