"""Alerts: a signed webhook POST when stores go down or come back (docs/alerts.md).

With ALERT_WEBHOOK_URL set, each report that finishes Complete at the newest data (its record asked for no
`as_of`: scheduled reports and triggers without one) is turned into events by the store
(`database.Store.record_alerts`: one event per episode, the state kept in the database, a Pending delivery
with the exact JSON body in the same step); this module then POSTs that body, signed with ALERT_SECRET,
from background daemon threads, never from the report's thread:

- `Alerts.report_complete(report_id)` is the report generator's `on_complete` hook: it only starts a thread
  that reads the report's rows, records the alerts and delivers them.
- each delivery is tried up to `attempts` times (tenacity: waits of 1, 2, 4, 8 s by default), each attempt
  with a `timeout_seconds` socket timeout; a 2xx answer is Delivered, anything else is retried and ends
  Failed with the last error; `Store.update_delivery` records every attempt.
- a sweep thread (at start, then every `sweep_seconds`) retries the Pending deliveries that no one has tried
  for `pending_after_seconds` (left by a process that stopped), and at start records the newest report
  when a stopped process finished it without recording its alerts.

Delivery is at least once: two workers' sweeps can both retry one left-behind delivery. Each body holds only
what never changes (report_id, as_of, events), so receivers deduplicate by report_id; events are decided
exactly once by the store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import tenacity

import database
import report_csv

log = logging.getLogger(__name__)

ATTEMPTS = 5  # tries of one delivery in one round
FIRST_WAIT_SECONDS = 1.0  # then 2, 4, 8: tenacity's exponential wait between tries
TIMEOUT_SECONDS = 5.0  # the socket timeout of one try: connecting, sending, and each read of the answer
SWEEP_SECONDS = 60.0  # how often the sweep looks for left-behind deliveries
PENDING_AFTER_SECONDS = 60.0  # a Pending delivery untried for this long was left by a process that stopped
CATCH_UP_SECONDS = 3600.0  # at start, the newest report is recorded if it finished less than this long ago
CATCH_UP_LOOKBACK = 20  # at start, the newest reports looked at for the newest Complete one at the newest data
ROW_FIELDS = ["store_id", "downtime_last_hour", "uptime_last_hour"]
USER_AGENT = "store-uptime-alerts/1"
SIGNATURE_HEADER = "X-Signature-SHA256"


def check_settings(config: dict) -> dict:
    """ALERT_WEBHOOK_URL, ALERT_SECRET and ALERT_DOWNTIME_MINUTES checked, the minutes as a float; a bad value is
    a ValueError naming the setting (start-up stops on it).

    The URL is http(s) with a host, or empty (alerts off). A URL without a secret is refused: a receiver
    could not tell our alerts from anyone's. The minutes are a number above 0 and at most 60 (the hour's
    downtime is 0 to 60 minutes: 0 would call every store down, above 60 none).
    """
    url = str(config.get("ALERT_WEBHOOK_URL") or "").strip()
    secret = str(config.get("ALERT_SECRET") or "")
    text = str(config.get("ALERT_DOWNTIME_MINUTES", 30)).strip()
    try:
        minutes = float(text)
    except ValueError:
        raise ValueError(f"ALERT_DOWNTIME_MINUTES must be a number of minutes, not {text[:40]!r}") from None
    if not math.isfinite(minutes) or not 0 < minutes <= 60:
        raise ValueError(f"ALERT_DOWNTIME_MINUTES must be above 0 and at most 60 (minutes in an hour), not {text}")
    if url:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as error:
            raise ValueError(f"ALERT_WEBHOOK_URL is not a URL ({error})") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host name")
        if not secret:
            raise ValueError(
                "ALERT_WEBHOOK_URL is set but ALERT_SECRET is not: set a secret the receiver shares, "
                "to sign each alert (X-Signature-SHA256)"
            )
    return {"ALERT_WEBHOOK_URL": url, "ALERT_SECRET": secret, "ALERT_DOWNTIME_MINUTES": minutes}


def where(url: str) -> str:
    """The scheme, host and port of a URL, for the log (its path or query may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def sign(secret: str, body: bytes) -> str:
    """The X-Signature-SHA256 of a body: hex HMAC-SHA256 with the secret."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer other than 2xx (urllib would follow it as a GET without the body)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class AttemptFailed(Exception):
    """One try of a delivery did not get a 2xx answer."""


class _Stopped(Exception):
    """The service is stopping: the delivery stays Pending for a sweep to finish."""


class Alerts:
    """The alerts of one process (one app): the report hook, the deliveries and the sweep."""

    def __init__(
        self,
        store: database.Store,
        webhook_url: str,
        secret: str,
        downtime_minutes: float,
        *,
        attempts: int = ATTEMPTS,
        first_wait_seconds: float = FIRST_WAIT_SECONDS,
        timeout_seconds: float = TIMEOUT_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
        pending_after_seconds: float = PENDING_AFTER_SECONDS,
    ):
        self.store = store
        self.webhook_url = webhook_url
        self._secret = secret
        self.downtime_minutes = downtime_minutes
        self.attempts = attempts
        self.first_wait_seconds = first_wait_seconds
        self.timeout_seconds = timeout_seconds
        self.sweep_seconds = sweep_seconds
        self.pending_after_seconds = pending_after_seconds
        self._lock = threading.Lock()  # around recording and sweeping, so this process sends a delivery once
        self._in_flight: set[str] = set()  # deliveries this process is sending now
        self._threads: list[threading.Thread] = []  # the report threads started and not yet seen ended
        self._threads_lock = threading.Lock()  # its own: the report's thread never waits on a database call
        self._sweeper: threading.Thread | None = None
        self._stopped = threading.Event()

    # ----- the hook and the threads

    def report_complete(self, report_id: str) -> None:
        """The report generator's on_complete hook: alerts for this report are handled in a new daemon thread."""
        thread = threading.Thread(
            target=self._handle_report, args=(report_id,), name=f"alerts-{report_id[:8]}", daemon=True
        )
        with self._threads_lock:  # started under the lock, so `join` never sees a thread not yet started
            self._threads = [known for known in self._threads if known.is_alive()]
            self._threads.append(thread)
            thread.start()

    def start(self) -> threading.Thread:
        """Start the sweep: now, then every `sweep_seconds`, until `shutdown`."""
        self._sweeper = threading.Thread(target=self._sweep_loop, name="alerts-sweep", daemon=True)
        self._sweeper.start()
        return self._sweeper

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every report thread started so far has ended (its alerts recorded and delivered, or
        given up); True when they all have."""
        with self._threads_lock:
            threads = list(self._threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def shutdown(self, wait: bool = False, timeout: float | None = None) -> None:
        """Stop the sweep and the retries (a delivery cut short stays Pending for a sweep elsewhere or at the
        next start); with `wait`, wait for the attempts in progress to end."""
        self._stopped.set()
        if wait:
            self.join(timeout)
            if self._sweeper is not None:
                self._sweeper.join(timeout)

    # ----- one report

    def _handle_report(self, report_id: str) -> None:
        try:
            report = self.store.find_report(report_id)
            if report is None or report["status"] != "Complete":
                return
            if report.get("requested_as_of_us") is not None:
                log.debug("report %s is for a past as_of: no alerts", report_id)
                return
            delivery = self._record(report, send=True)
        except Exception:  # the thread must log every failure, never die silently; the next report catches up
            log.exception("alerts of report %s could not be recorded", report_id)
            return
        if delivery is not None:
            self._deliver_claimed(delivery)

    def _record(self, report: dict, send: bool) -> dict | None:
        """Record the report's alerts; the delivery when this process must send it now (claimed), else None."""
        rows = report_csv.read_report_rows(self.store.read_report_csv(report))[ROW_FIELDS].to_dict("records")
        with self._lock:
            delivery = self.store.record_alerts(report["report_id"], report["as_of_us"], rows, self.downtime_minutes)
            if delivery is None:
                log.info("report %s: no alert events", report["report_id"])
                return None
            fresh = delivery["status"] == "Pending" and delivery["attempts"] == 0
            if not send or not fresh or delivery["delivery_id"] in self._in_flight:
                return None  # recorded before (by another worker, or this one): a sweep sends it if it is left
            self._in_flight.add(delivery["delivery_id"])
        log.info(
            "report %s: %d alert events, delivery %s", report["report_id"], delivery["events"], delivery["delivery_id"]
        )
        return delivery

    # ----- delivering

    def _deliver_claimed(self, delivery: dict) -> None:
        """Deliver a delivery this process claimed, then release it."""
        try:
            self._deliver(delivery)
        except Exception:
            log.exception("delivery %s stopped on an unexpected error; a sweep retries it", delivery["delivery_id"])
        finally:
            with self._lock:
                self._in_flight.discard(delivery["delivery_id"])

    def _deliver(self, delivery: dict) -> None:
        """Up to `attempts` tries with exponential waits; each recorded; ends Delivered, Failed or (stopping)
        Pending."""
        done_before = int(delivery["attempts"])
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.first_wait_seconds, exp_base=2, min=0),
            retry=tenacity.retry_if_exception_type(AttemptFailed),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    self._try_once(delivery, done_before + number, last=number >= self.attempts)
        except AttemptFailed as failure:
            log.warning(
                "alert delivery %s (report %s) Failed after %d attempts: %s",
                delivery["delivery_id"],
                delivery["report_id"],
                done_before + self.attempts,
                failure,
            )
        except _Stopped:
            log.info("alert delivery %s left Pending: the service is stopping", delivery["delivery_id"])

    def _sleep(self, seconds: float) -> None:
        if self._stopped.wait(seconds):
            raise _Stopped()

    def _try_once(self, delivery: dict, attempts: int, last: bool) -> None:
        """One POST of the delivery's exact body, its outcome recorded; AttemptFailed unless answered 2xx."""
        if self._stopped.is_set():
            raise _Stopped()
        http_status, error = self._post(delivery["body"])
        ok = error is None
        status = "Delivered" if ok else "Failed" if last else "Pending"
        try:
            self.store.update_delivery(delivery["delivery_id"], status, attempts, error, http_status)
        except database.DATABASE_ERRORS as db_error:  # the delivery stays as last recorded; a sweep may resend
            log.error(
                "could not record attempt %d of alert delivery %s: %s",
                attempts,
                delivery["delivery_id"],
                database.describe_error(db_error),
            )
        if ok:
            log.info(
                "alert delivery %s Delivered (HTTP %s, attempt %d)", delivery["delivery_id"], http_status, attempts
            )
            return
        log.warning("alert delivery %s attempt %d: %s", delivery["delivery_id"], attempts, error)
        raise AttemptFailed(error)

    def _post(self, body: bytes) -> tuple[int | None, str | None]:
        """POST the body, signed; (the HTTP status or None, None when it was 2xx else the error)."""
        request = urllib.request.Request(
            self.webhook_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, body),
                "User-Agent": USER_AGENT,
            },
        )
        try:
            with _OPENER.open(request, timeout=self.timeout_seconds) as response:
                status = response.status
        except urllib.error.HTTPError as error:  # 3xx, 4xx, 5xx
            error.close()
            return error.code, f"the receiver answered HTTP {error.code}"
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                return None, self._timed_out()
            return None, f"cannot reach the receiver: {error.reason}"
        except TimeoutError:  # connected, but no answer in time
            return None, self._timed_out()
        except (OSError, http.client.HTTPException) as error:
            return None, f"the receiver's answer was broken: {type(error).__name__}: {error}"
        if 200 <= status < 300:
            return status, None
        return status, f"the receiver answered HTTP {status}"

    def _timed_out(self) -> str:
        return f"no answer within {self.timeout_seconds:g} s"

    # ----- the sweep

    def _sweep_loop(self) -> None:
        try:
            self.catch_up()
        except Exception:
            log.exception("alerts: the catch-up at start failed")
        while not self._stopped.is_set():
            try:
                self.sweep()
            except Exception:  # a failed round is retried at the next one, never kills the thread
                log.exception("alerts: the sweep of pending deliveries failed")
            if self._stopped.wait(self.sweep_seconds):
                return

    def catch_up(self) -> None:
        """Record the alerts of the newest Complete report at the newest data when it finished within
        CATCH_UP_SECONDS (a process that stopped just after finishing it may not have); recording is idempotent
        per report, and what it records is sent by a later sweep."""
        for report in self.store.list_reports(0, CATCH_UP_LOOKBACK):
            if report["status"] != "Complete" or report.get("requested_as_of_us") is not None:
                continue
            finished = report.get("finished_at")
            if finished is not None and finished.tzinfo is None:
                finished = finished.replace(tzinfo=dt.UTC)
            if finished is None or database.now_utc() - finished > dt.timedelta(seconds=CATCH_UP_SECONDS):
                return
            self._record(report, send=False)
            return

    def sweep(self) -> int:
        """Deliver the Pending deliveries untried for `pending_after_seconds`, one by one; returns how many."""
        older_than_us = self.store.clock_us() - int(self.pending_after_seconds * 1_000_000)
        with self._lock:
            left = [
                delivery
                for delivery in self.store.pending_deliveries(older_than_us)
                if delivery["delivery_id"] not in self._in_flight
            ]
            self._in_flight.update(delivery["delivery_id"] for delivery in left)
        for delivery in left:
            if self._stopped.is_set():
                with self._lock:
                    self._in_flight.difference_update(d["delivery_id"] for d in left)
                break
            log.info(
                "alerts: retrying delivery %s (report %s), left Pending after %d attempts",
                delivery["delivery_id"],
                delivery["report_id"],
                delivery["attempts"],
            )
            self._deliver_claimed(delivery)
        return len(left)
