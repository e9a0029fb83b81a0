"""Generate realistic sample input data for the store-uptime report.

Writes three CSV files into the output directory:

``store_status.csv`` (``store_id,status,timestamp_utc``)
    Roughly hourly polls of every store over the ``--days`` days before
    ``--end``. Each poll falls at a random moment within its hour. Some stores
    miss polls, a few are polled several times an hour, and about 1% have a
    single poll that is days old. Status follows a per-store Markov chain, so
    outages appear as runs of consecutive ``inactive`` polls, and some stores
    are much flakier than others. Rows are shuffled, as in a real export.
    Timestamps look like ``2023-01-22 12:09:39.388884 UTC``.

``menu_hours.csv`` (``store_id,day,start_time_local,end_time_local``)
    Business hours per weekday (0=Monday .. 6=Sunday), local ``HH:MM:SS``.
    About 10% of stores have no rows (open 24/7). The rest show typical
    restaurant hours, including closed days, overnight rows (end < start),
    24-hour rows (start == end), split shifts, overlapping rows, and times
    with non-zero seconds.

``timezones.csv`` (``store_id,timezone_str``)
    IANA time zones, mostly US. About 10% of stores have no row.

Store ids are opaque 19-digit numeric strings. The output depends only on the
arguments: the same seed always gives the same files. Generation is vectorised
and polls are written in chunks of stores, so millions of rows are cheap.

Usage::

    python scripts/generate_data.py --force          # 200 stores -> data/ (remakes the committed sample)
    python scripts/generate_data.py --stores 14000 --seed 7 --out /tmp/big
    python scripts/generate_data.py --end 2023-01-25T18:13:22Z --days 7
    python scripts/generate_data.py --stores 14000 --polls-per-store 107 --out /tmp/real

``--polls-per-store`` thins the polls at random (never a single-poll store's
only poll) to about that many per store over the whole window, e.g. 107 for
the real data's ~1.5M polls of 14,000 stores a week; without it nothing is
thinned (~168 a store a week) and the files are the same as before the option
existed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HOUR_US = 3600 * 10**6
DAY_US = 24 * HOUR_US

# Stores written to store_status.csv per chunk (~400k polls at once).
STORES_PER_CHUNK = 2500

# Time zones and their share of the stores that have a row in timezones.csv.
TIMEZONES = {
    "America/New_York": 0.30,
    "America/Chicago": 0.24,
    "America/Los_Angeles": 0.16,
    "America/Denver": 0.07,
    "America/Phoenix": 0.05,
    "America/Detroit": 0.05,
    "America/Indiana/Indianapolis": 0.04,
    "America/Boise": 0.03,
    "America/Anchorage": 0.03,
    "Pacific/Honolulu": 0.03,
}

# Outage profiles: share of stores, and per-hour ranges for the probability
# of going down (while up) and of coming back up (while down).
OUTAGE_PROFILES = {
    # name: (share, (p_down range), (p_up range))
    "healthy": (0.85, (0.003, 0.02), (0.30, 0.70)),  # ~2% downtime
    "flaky": (0.12, (0.03, 0.10), (0.15, 0.40)),  # ~20% downtime
    "troubled": (0.03, (0.10, 0.30), (0.03, 0.10)),  # ~75% downtime
}

# Business-hours styles and their share of the stores that have hours.
HOUR_STYLES = {
    "regular": 0.68,  # one row per day, e.g. 10:00-22:00
    "split": 0.12,  # lunch and dinner rows, e.g. 11:00-14:30 and 17:00-22:00
    "late": 0.12,  # closes after midnight, e.g. 18:00-02:00 (end < start)
    "overlap": 0.04,  # two rows that overlap, e.g. 09:00-16:00 and 15:00-22:00
    "allday": 0.04,  # 00:00:00-00:00:00 (or -23:59:59) every open day
}


def exact_mask(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """Boolean mask over n items with exactly round(fraction * n) random Trues."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: round(fraction * n)]] = True
    return mask


def make_store_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n unique random 19-digit store ids, as strings, in random order."""
    low, high = 10**18, 9_200_000_000_000_000_000
    ids = np.empty(0, dtype=np.int64)
    while ids.size < n:
        ids = np.unique(np.concatenate([ids, rng.integers(low, high, n - ids.size)]))
    return rng.permutation(ids).astype(str)


def format_utc(us: np.ndarray) -> np.ndarray:
    """Microseconds since the epoch -> '2023-01-22 12:09:39.388884 UTC'."""
    text = np.datetime_as_string(us.astype("datetime64[us]"), unit="us")
    return np.strings.add(np.strings.replace(text, "T", " "), " UTC")


def format_hms(seconds: np.ndarray) -> np.ndarray:
    """Seconds since midnight -> 'HH:MM:SS'."""
    text = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s")
    return np.strings.slice(text, 11, None)


# --------------------------------------------------------------------------
# store_status.csv
# --------------------------------------------------------------------------


def make_poll_plan(rng: np.random.Generator, n: int, n_hours: int) -> pd.DataFrame:
    """Per-store polling and outage parameters."""
    # Polls per hour: 1 for most stores, 2-4 for a few; 0 marks single-poll stores.
    per_hour = np.ones(n, dtype=np.int64)
    frequent = exact_mask(rng, n, 0.02)
    per_hour[frequent] = rng.integers(2, 5, frequent.sum())
    single = exact_mask(rng, n, 0.01) & ~frequent
    per_hour[single] = 0

    # A few missing polls scattered over the week, for some stores.
    drop_p = np.where(exact_mask(rng, n, 0.20), rng.uniform(0.01, 0.06, n), 0.0)

    # A contiguous blackout of a few hours with no polls at all, for a few stores.
    gap_len = np.where(exact_mask(rng, n, 0.05), rng.integers(2, 13, n), 0)
    gap_start = rng.integers(0, n_hours, n)
    drop_p[single] = 0.0  # never lose a single-poll store's only poll
    gap_len[single] = 0

    # Outage behaviour, from one of the profiles.
    names = list(OUTAGE_PROFILES)
    shares = [OUTAGE_PROFILES[name][0] for name in names]
    profile = rng.choice(len(names), size=n, p=shares)
    p_down = np.empty(n)
    p_up = np.empty(n)
    for i, name in enumerate(names):
        _, down_range, up_range = OUTAGE_PROFILES[name]
        chosen = profile == i
        p_down[chosen] = rng.uniform(*down_range, chosen.sum())
        p_up[chosen] = rng.uniform(*up_range, chosen.sum())

    return pd.DataFrame(
        {
            "per_hour": per_hour,
            "drop_p": drop_p,
            "gap_start": gap_start,
            "gap_len": gap_len,
            "p_down": p_down,
            "p_up": p_up,
        }
    )


def simulate_uptime(rng: np.random.Generator, p_down: np.ndarray, p_up: np.ndarray, n_hours: int) -> np.ndarray:
    """Hourly up/down states (stores x hours) from a two-state Markov chain.

    The loop runs over hours only; each step is vectorised over stores.
    """
    up = np.empty((p_down.size, n_hours), dtype=bool)
    state = rng.random(p_down.size) < p_up / (p_up + p_down)  # stationary start
    for hour in range(n_hours):
        u = rng.random(p_down.size)
        state = np.where(state, u >= p_down, u < p_up)
        up[:, hour] = state
    return up


def expected_polls(plan: pd.DataFrame, n_hours: int) -> np.ndarray:
    """Expected number of polls of each store under `plan`, before any thinning."""
    per_hour = plan["per_hour"].to_numpy()
    gap_start = plan["gap_start"].to_numpy()
    gap_hours = np.clip(np.minimum(gap_start + plan["gap_len"].to_numpy(), n_hours) - gap_start, 0, None)
    polls = per_hour * (n_hours - gap_hours) * (1.0 - plan["drop_p"].to_numpy())
    return np.where(per_hour == 0, 1.0, polls)


def thinning_keep_fraction(plan: pd.DataFrame, n_hours: int, polls_per_store: float) -> float:
    """Share of the thinnable polls to keep for about `polls_per_store` polls a store on average.

    Single-poll stores keep their poll; every other poll is kept with this probability.
    """
    expected = expected_polls(plan, n_hours)
    single = plan["per_hour"].to_numpy() == 0
    thinnable = expected[~single].sum()
    wanted = polls_per_store * len(plan) - single.sum()
    if thinnable <= 0 or wanted >= thinnable:
        return 1.0
    return max(wanted, 0.0) / thinnable


def make_polls(
    rng: np.random.Generator,
    store_ids: np.ndarray,
    plan: pd.DataFrame,
    start_us: int,
    n_hours: int,
    keep_fraction: float = 1.0,
) -> pd.DataFrame:
    """Shuffled poll rows for one chunk of stores.

    `keep_fraction` < 1 drops each poll (but a single-poll store's) with
    probability 1 - keep_fraction; at 1.0 no random numbers are drawn for it,
    so the default output is unchanged.
    """
    n = store_ids.size
    per_hour = plan["per_hour"].to_numpy()
    single = per_hour == 0

    # One row per poll slot: store index and slot number within the store.
    counts = np.where(single, 1, per_hour * n_hours)
    store = np.repeat(np.arange(n), counts)
    slot = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)

    # Regular stores: a random moment inside each slot of 1/per_hour hours.
    slot_us = HOUR_US // np.maximum(per_hour, 1)[store]
    poll_us = start_us + slot * slot_us + rng.integers(0, slot_us)
    # Single-poll stores: one poll in the older half of the window.
    is_single = single[store]
    window_us = n_hours * HOUR_US
    poll_us[is_single] = start_us + rng.integers(0, window_us // 2, is_single.sum())
    hour = (poll_us - start_us) // HOUR_US

    # Missing polls: scattered drops and per-store blackouts.
    gap_start = plan["gap_start"].to_numpy()[store]
    in_gap = (hour >= gap_start) & (hour < gap_start + plan["gap_len"].to_numpy()[store])
    dropped = rng.random(store.size) < plan["drop_p"].to_numpy()[store]
    if keep_fraction < 1.0:
        dropped |= (rng.random(store.size) >= keep_fraction) & ~is_single
    keep = ~(in_gap | dropped)
    keep = rng.permutation(np.flatnonzero(keep))  # shuffle rows, like a real export

    up = simulate_uptime(rng, plan["p_down"].to_numpy(), plan["p_up"].to_numpy(), n_hours)
    store, hour, poll_us = store[keep], hour[keep], poll_us[keep]
    return pd.DataFrame(
        {
            "store_id": store_ids[store],
            "status": np.where(up[store, hour], "active", "inactive"),
            "timestamp_utc": format_utc(poll_us),
        }
    )


def write_store_status(
    rng: np.random.Generator,
    store_ids: np.ndarray,
    end_us: int,
    days: int,
    path: Path,
    polls_per_store: float | None = None,
) -> int:
    """Write store_status.csv chunk by chunk; return the number of polls.

    With `polls_per_store`, polls are thinned at random to about that many per store.
    """
    n_hours = days * 24
    start_us = end_us - days * DAY_US
    plan = make_poll_plan(rng, store_ids.size, n_hours)
    keep_fraction = 1.0 if polls_per_store is None else thinning_keep_fraction(plan, n_hours, polls_per_store)
    total = 0
    for first in range(0, store_ids.size, STORES_PER_CHUNK):
        chunk = slice(first, first + STORES_PER_CHUNK)
        polls = make_polls(
            rng, store_ids[chunk], plan.iloc[chunk].reset_index(drop=True), start_us, n_hours, keep_fraction
        )
        polls.to_csv(path, index=False, mode="w" if first == 0 else "a", header=first == 0)
        total += len(polls)
    return total


# --------------------------------------------------------------------------
# menu_hours.csv
# --------------------------------------------------------------------------


def make_menu_hours(rng: np.random.Generator, store_ids: np.ndarray) -> pd.DataFrame:
    """Business-hours rows; about 10% of stores get none (open 24/7)."""
    ids = store_ids[~exact_mask(rng, store_ids.size, 0.10)]
    n = ids.size
    style = np.array(list(HOUR_STYLES))[rng.choice(len(HOUR_STYLES), size=n, p=list(HOUR_STYLES.values()))]

    # Per-store usual opening and closing times.
    quarter = [0, 0, 0, 0, 0.25, 0.5, 0.5, 0.75]
    opens = rng.choice([7, 8, 9, 10, 10, 11, 11, 11], n) + rng.choice(quarter, n)
    closes = rng.choice([20, 21, 21, 22, 22, 22, 23], n) + rng.choice(quarter, n)
    # Late-night places open later and close after midnight.
    late = style == "late"
    opens[late] = rng.choice([11, 16, 17, 18], late.sum()) + rng.choice(quarter, late.sum())
    closes[late] = 24 + rng.choice([0.5, 1, 1, 2, 2, 3], late.sum())
    # Split shifts: lunch ends, dinner starts. Overlapping rows: second row starts.
    lunch_end = rng.choice([14, 14.5, 15], n)
    dinner_start = rng.choice([16.5, 17, 17, 17.5], n)
    second_start = rng.choice([13, 14, 15], n)

    # Per store-day (stores x 7) times in seconds, with some day-to-day variety.
    store_opens = (np.rint(opens * 3600).astype(np.int64))[:, None] + np.zeros(7, np.int64)
    store_closes = (np.rint(closes * 3600).astype(np.int64))[:, None] + np.zeros(7, np.int64)
    shift = rng.choice([-1800, 0, 0, 0, 0, 0, 0, 0, 1800, 3600], (n, 7))
    store_opens += np.where(rng.random((n, 7)) < 0.3, shift, 0)
    store_closes += np.where(rng.random((n, 7)) < 0.3, shift[:, ::-1], 0)
    weekend_late = rng.random(n) < 0.3  # Friday and Saturday an hour later
    store_closes[weekend_late, 4:6] += 3600

    # Rows: (store, day, start, end). First the main row of each store-day.
    store, day = np.divmod(np.arange(n * 7), 7)
    kind = style[store]
    start = store_opens.ravel().copy()
    end = store_closes.ravel().copy()
    end[kind == "split"] = np.rint(lunch_end[store] * 3600)[kind == "split"]
    end[kind == "overlap"] = np.rint((second_start[store] + 1) * 3600)[kind == "overlap"]

    # Second rows of split shifts and overlapping hours.
    two = (kind == "split") | (kind == "overlap")
    store2, day2 = store[two], day[two]
    start2 = np.where(kind[two] == "split", np.rint(dinner_start[store2] * 3600), second_start[store2] * 3600).astype(
        np.int64
    )
    end2 = store_closes.ravel()[two]

    store = np.concatenate([store, store2])
    day = np.concatenate([day, day2])
    start = np.concatenate([start, start2])
    end = np.concatenate([end, end2])

    # A few stores have messy times with non-zero seconds.
    messy = (rng.random(n) < 0.08)[store]
    start[messy] += rng.integers(0, 60, messy.sum())
    end[messy] -= rng.integers(0, 60, messy.sum())

    # 24-hour stores: 00:00:00-00:00:00 (start == end), some with -23:59:59.
    allday = style[store] == "allday"
    start[allday] = 0
    end[allday] = np.where(rng.random(n) < 0.3, 86399, 0)[store[allday]]

    # Closed days: some stores close one or two days a week.
    closed_p = np.where(rng.random(n) < 0.30, rng.uniform(0.1, 0.3, n), 0.0)
    closed = rng.random((n, 7)) < closed_p[:, None]
    keep = ~closed[store, day]

    store, day, start, end = store[keep], day[keep], start[keep] % 86400, end[keep] % 86400
    order = np.lexsort((start, day, store))  # by store, then day, then start
    return pd.DataFrame(
        {
            "store_id": ids[store[order]],
            "day": day[order],
            "start_time_local": format_hms(start[order]),
            "end_time_local": format_hms(end[order]),
        }
    )


# --------------------------------------------------------------------------
# timezones.csv
# --------------------------------------------------------------------------


def make_timezones(rng: np.random.Generator, store_ids: np.ndarray) -> pd.DataFrame:
    """Time zone rows; about 10% of stores get none."""
    ids = store_ids[~exact_mask(rng, store_ids.size, 0.10)]
    zones = rng.choice(list(TIMEZONES), size=ids.size, p=list(TIMEZONES.values()))
    return pd.DataFrame({"store_id": ids, "timezone_str": zones})


# --------------------------------------------------------------------------


OUTPUT_FILES = ("store_status.csv", "menu_hours.csv", "timezones.csv")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=int, default=200, help="number of stores (default 200)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--end",
        default="2023-01-25T18:13:22Z",
        help="end of the polling window, ISO 8601, UTC if no zone (default 2023-01-25T18:13:22Z)",
    )
    parser.add_argument("--days", type=int, default=7, help="days of polls before --end (default 7)")
    parser.add_argument("--out", type=Path, default=Path("data"), help="output directory (default data)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite the CSV files already in --out (e.g. the committed sample in data/)",
    )
    parser.add_argument(
        "--polls-per-store",
        type=float,
        default=None,
        help="thin polls at random to about this many per store over the window, e.g. 107 for "
        "~1.5M polls of 14,000 stores a week (default: no thinning, ~24 a store a day)",
    )
    args = parser.parse_args(argv)
    if args.stores < 1 or args.days < 1:
        parser.error("--stores and --days must be positive")
    if args.polls_per_store is not None and not args.polls_per_store > 0:
        parser.error("--polls-per-store must be positive")
    existing = [name for name in OUTPUT_FILES if (args.out / name).exists()]
    if existing and not args.force:
        parser.error(
            f"{args.out} already holds {', '.join(existing)}: give another --out, or --force to overwrite "
            "(data/ is the committed sample the README and the tests describe)"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()

    end = pd.Timestamp(args.end)
    end = end.tz_localize("UTC") if end.tz is None else end.tz_convert("UTC")
    end_us = end.value // 1000

    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    store_ids = make_store_ids(rng, args.stores)

    hours = make_menu_hours(rng, store_ids)
    hours.to_csv(args.out / "menu_hours.csv", index=False)
    zones = make_timezones(rng, store_ids)
    zones.to_csv(args.out / "timezones.csv", index=False)
    polls = write_store_status(rng, store_ids, end_us, args.days, args.out / "store_status.csv", args.polls_per_store)

    elapsed = time.perf_counter() - started
    print(
        f"{args.stores} stores, {polls} polls, {len(hours)} hour rows, "
        f"{len(zones)} zone rows in {elapsed:.1f}s -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
