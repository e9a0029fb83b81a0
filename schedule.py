"""Scheduled reports (docs/schedule.md): REPORT_SCHEDULE (cron, UTC) or REPORT_EVERY_SECONDS, one report per tick.

`parse` turns the two settings into a `Schedule` (or None when neither is set) and refuses a bad one with a
message naming the setting; `Schedule` computes ticks, the same on every worker and host (cron ticks in UTC,
interval ticks on multiples of the interval since the Unix epoch).  `Scheduler` is the one daemon thread of
each process: it waits for the next tick on the database's clock (`Store.clock_us`) and claims it through
the database (`Store.claim_tick`), so however many workers or hosts run, one of them starts the tick's
report and the others do nothing.  At start it also claims the most recent tick that fell while no worker
ran, when the schedule has claimed a tick before.  It stops with the report generator (`shutdown`).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
import uuid

from croniter import CroniterError, croniter

import database
import utils
from reportGenerator import ReportGenerator

log = logging.getLogger(__name__)

CRON_SETTING = "REPORT_SCHEDULE"
EVERY_SETTING = "REPORT_EVERY_SECONDS"
CRON_FIELDS = 5  # minute hour day-of-month month day-of-week
MAX_CRON_CHARS = 200
MAX_EVERY_SECONDS = 366 * 86_400  # a longer interval is a cron expression's job (e.g. yearly: 0 0 1 1 *)
US = 1_000_000
MAX_WAIT_SECONDS = 60.0  # the thread reads the database's clock again at least this often while it waits
RETRY_FIRST_SECONDS = 0.25  # a failed claim (or clock reading) is tried again after this, doubling ...
RETRY_MAX_SECONDS = 5.0  # ... up to this, until the next tick
OUTCOMES_KEPT = 100  # the claims this process remembers (`Scheduler.outcomes`), newest last


class ScheduleError(ValueError):
    """A schedule setting that cannot be used; the message names the setting."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Either a five-field cron expression evaluated in UTC, or an interval in whole seconds; ticks in µs."""

    cron: str | None = None
    every_seconds: int | None = None

    def describe(self) -> dict:
        """What GET /schedule shows: {"cron": ...} or {"every_seconds": n}."""
        return {"cron": self.cron} if self.cron is not None else {"every_seconds": self.every_seconds}

    def text(self) -> str:
        """The schedule in words, for the log."""
        if self.cron is not None:
            return f"{CRON_SETTING}={self.cron!r} (cron, in UTC)"
        return f"{EVERY_SETTING}={self.every_seconds} (every {self.every_seconds} s from the Unix epoch)"

    def due_tick_us(self, now_us: int) -> int:
        """The most recent tick at or before `now_us`."""
        if self.every_seconds is not None:
            step = self.every_seconds * US
            return now_us // step * step
        # croniter's get_prev is strictly before its start: start one µs later so a tick at now_us counts
        start = utils.us_to_datetime(now_us + 1)
        return utils.datetime_to_us(croniter(self.cron, start).get_prev(dt.datetime))

    def next_tick_us(self, after_us: int) -> int:
        """The first tick strictly after `after_us`."""
        if self.every_seconds is not None:
            step = self.every_seconds * US
            return (after_us // step + 1) * step
        return utils.datetime_to_us(croniter(self.cron, utils.us_to_datetime(after_us)).get_next(dt.datetime))


def parse(cron: object = None, every_seconds: object = None, now_us: int | None = None) -> Schedule | None:
    """The schedule of the two settings (None or "" means unset); None when neither is set.

    Raises ScheduleError, naming the setting, for both set, a cron expression that is not five valid fields
    (or never fires), or an interval that is not a whole number of seconds from 1 to MAX_EVERY_SECONDS.
    """
    cron_text = "" if cron is None else str(cron).strip()
    every_text = "" if every_seconds is None else str(every_seconds).strip()
    if cron_text and every_text:
        raise ScheduleError(
            f"{CRON_SETTING} and {EVERY_SETTING} are both set: set one of them "
            "(a cron expression, or an interval in seconds)"
        )
    if every_text:
        return Schedule(every_seconds=_every_seconds(every_text))
    if cron_text:
        return Schedule(cron=_cron(cron_text, utils.datetime_to_us(database.now_utc()) if now_us is None else now_us))
    return None


def _every_seconds(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_EVERY_SECONDS:
        raise ScheduleError(
            f"{EVERY_SETTING} must be a whole number of seconds from 1 to {MAX_EVERY_SECONDS}, not {text[:40]!r}"
        )
    return int(text)


def _cron(text: str, now_us: int) -> str:
    fields = text.split()
    if len(text) > MAX_CRON_CHARS or len(fields) != CRON_FIELDS:
        raise ScheduleError(
            f"{CRON_SETTING} must be a cron expression of five fields (minute hour day-of-month month "
            f"day-of-week, evaluated in UTC), e.g. '0 * * * *' for every hour; {text[:60]!r} has {len(fields)}"
        )
    expression = " ".join(fields)
    try:
        schedule = Schedule(cron=expression)
        schedule.next_tick_us(now_us)
        schedule.due_tick_us(now_us)
    except CroniterError as error:  # the bad-syntax errors, and a date that never comes (31 February)
        message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        if "failed to find" in message:
            message = "no date matches it, so it would never start a report"
        raise ScheduleError(f"{CRON_SETTING} {text[:60]!r} is not a usable cron expression: {message}") from None
    return expression


def iso_us(value_us: int) -> str:
    """An instant as the API writes it: ISO 8601 UTC with Z (microseconds only when there are some)."""
    return utils.us_to_datetime(value_us).isoformat().replace("+00:00", "Z")


class Scheduler:
    """The daemon thread of one process that claims the schedule's ticks through the store.

    For each tick it calls `store.claim_tick(tick_us, new_report_id)`: "started" (this process won: the
    report's Running record exists, trigger "schedule") queues the report on `generator`; "taken" (another
    worker or host won, or it was claimed before) does nothing; "skipped" (the previous scheduled report is
    still running) logs one line.  A claim that fails with a database error is logged and tried again until
    the next tick.  The thread ends when the generator shuts down, and otherwise never: every error is
    logged and waited out.  `outcomes` keeps this process's last claims, (tick_us, outcome, report_id).
    """

    def __init__(self, store: database.Store, generator: ReportGenerator, schedule: Schedule):
        self.store = store
        self.generator = generator
        self.schedule = schedule
        self.outcomes: collections.deque[tuple[int, str, str | None]] = collections.deque(maxlen=OUTCOMES_KEPT)
        self.caught_up_tick_us: int | None = None  # the missed tick claimed at start, if there was one
        self.ready = threading.Event()  # set once the start-up catch-up is decided (and claimed)
        self._stopped = generator.stopped
        self.thread = threading.Thread(target=self._run, name="report-schedule", daemon=True)

    def start(self) -> Scheduler:
        log.info("%s; this process (pid %d) claims its ticks", self.schedule.text(), os.getpid())
        self.thread.start()
        return self

    # ----- the loop

    def _run(self) -> None:
        target: int | None = None  # the next tick to claim
        failures = 0
        while not self._stopped.is_set():
            try:
                now_us = self.store.clock_us()
                if target is None:
                    target = self._first_tick(now_us)
                    if target > now_us:  # nothing to catch up (a catch-up is claimed below first)
                        self.ready.set()
                if now_us < target:
                    failures = 0
                    self._stopped.wait(min((target - now_us) / US, MAX_WAIT_SECONDS))
                    continue
                tick_us = self.schedule.due_tick_us(now_us)
                if tick_us > target:
                    log.warning(
                        "the ticks from %s to %s passed before this process could claim them "
                        "(the database did not answer, or the process was paused); claiming only the latest",
                        iso_us(target),
                        iso_us(tick_us),
                    )
                self._claim(tick_us, now_us)
                self.ready.set()
                target = self.schedule.next_tick_us(tick_us)
                failures = 0
            except Exception as error:  # the thread must outlive every error: log it, wait, go on
                failures += 1
                if isinstance(error, database.DATABASE_ERRORS):
                    log.warning("the database did not answer: %s", database.describe_error(error))
                else:
                    log.exception("unexpected error; the schedule goes on")
                self._stopped.wait(_backoff(failures))

    def _first_tick(self, now_us: int) -> int:
        """The tick to claim first: the most recent due tick when it was missed (the schedule has claimed a
        tick before, older than it), claimed at once; otherwise the next tick."""
        due_us = self.schedule.due_tick_us(now_us)
        last = self.store.last_tick()
        if last is not None and due_us > last["tick_us"]:
            log.info(
                "the tick %s fell while no worker claimed it (the last claimed was %s): claiming it now",
                iso_us(due_us),
                iso_us(last["tick_us"]),
            )
            self.caught_up_tick_us = due_us
            return due_us
        return self.schedule.next_tick_us(now_us)

    def _claim(self, tick_us: int, now_us: int) -> str | None:
        """Claim one tick, trying again after database errors until the next tick; the outcome (None when
        it could not be claimed before the next tick or the generator stopped)."""
        report_id = uuid.uuid4().hex
        deadline = time.monotonic() + (self.schedule.next_tick_us(tick_us) - now_us) / US
        failures = 0
        while not self._stopped.is_set():
            try:
                outcome = self.store.claim_tick(tick_us, report_id)
                if outcome == "taken" and failures and self.store.find_report(report_id) is not None:
                    outcome = "started"  # an earlier try was recorded but its answer was lost on the way
            except database.DATABASE_ERRORS as error:
                failures += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error(
                        "the tick %s was not claimed before the next tick (the database did not "
                        "answer: %s); it is not run",
                        iso_us(tick_us),
                        database.describe_error(error),
                    )
                    return None
                log.warning(
                    "claiming the tick %s failed (%s); trying again until the next tick",
                    iso_us(tick_us),
                    database.describe_error(error),
                )
                self._stopped.wait(min(_backoff(failures), left))
                continue
            self._outcome(tick_us, outcome, report_id)
            return outcome
        return None

    def _outcome(self, tick_us: int, outcome: str, report_id: str) -> None:
        """Act on a claim's outcome, then add it to `outcomes` (so one seen there has been queued)."""
        if outcome == "started":
            log.info("tick %s started report %s (pid %d)", iso_us(tick_us), report_id, os.getpid())
            self._enqueue(tick_us, report_id)
        elif outcome == "skipped":
            log.warning("tick %s skipped: the previous scheduled report is still running", iso_us(tick_us))
        elif outcome != "taken":
            log.error("the store answered %r for the tick %s", outcome, iso_us(tick_us))
        self.outcomes.append((tick_us, outcome, report_id if outcome == "started" else None))

    def _enqueue(self, tick_us: int, report_id: str) -> None:
        """Queue the claimed report here; one that cannot be queued is failed with the reason, never left."""
        try:
            self.generator.enqueue(report_id, None, trigger="schedule")
            return
        except Exception as error:  # QueueFull, or a generator shut down meanwhile
            reason = f"the scheduled report of {iso_us(tick_us)} could not be queued: {error}"
        log.error("%s", reason)
        try:
            self.store.fail_report(report_id, reason)
        except database.DATABASE_ERRORS as error:  # it goes stale and is failed by the next sweep
            log.error("could not mark report %s Failed: %s", report_id, database.describe_error(error))


def _backoff(failures: int) -> float:
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, failures - 1))


def start(store: database.Store, generator: ReportGenerator, schedule: Schedule | None) -> Scheduler | None:
    """This process's scheduler, started; None (and no thread) when no schedule is set."""
    if schedule is None:
        log.info("none (%s and %s are unset): reports start only when asked", CRON_SETTING, EVERY_SETTING)
        return None
    return Scheduler(store, generator, schedule).start()
