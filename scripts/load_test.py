#!/usr/bin/env python3
"""A bounded load test for a local service: N clients poll get_report while reports run.

    python scripts/load_test.py                                  # 20 clients, 60 s, 3 reports
    python scripts/load_test.py --clients 50 --duration 120 --reports 5 --token "$API_TOKEN"

It triggers `--reports` reports spread over the run (the first at once, the others at
equal intervals), and `--clients` threads, each with its own keep-alive connection,
poll `GET /get_report` for those ids as fast as the server answers (a report still
Running is preferred; once none is, the finished ones are fetched too) and
`GET /health` every `--health-every`-th request.  When `--duration` seconds are up
everything stops by itself; it prints the requests made, requests per second,
errors by kind, latency percentiles (overall and per kind of answer) and how long
each report took.

Safety: it talks only to a loopback address (127.0.0.0/8, ::1 or localhost), runs
at most 600 s with at most 200 clients and 50 reports, and uses only the standard
library.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import random
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_DURATION = 600.0
MAX_CLIENTS = 200
MAX_REPORTS = 50
REQUEST_TIMEOUT = 30.0
RECONNECT_ERRORS = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError, BrokenPipeError)


# --------------------------------------------------------------------------- target


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"


def parse_target(base_url: str) -> Target:
    """The base URL, if it is http(s) on a loopback host; otherwise ValueError."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"--base-url must be http:// or https://, not {base_url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"--base-url has no host: {base_url!r}")
    if not is_loopback(host):
        raise ValueError(f"refusing {host!r}: this load test only talks to loopback (127.0.0.0/8, ::1, localhost)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise ValueError(f"--base-url has a bad port: {error}") from None
    return Target(parts.scheme, host, port, parts.path.rstrip("/"))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name could resolve anywhere: refuse it


# --------------------------------------------------------------------------- one keep-alive connection


class Client:
    """One keep-alive HTTP connection; `request` returns (status, body bytes) or raises."""

    def __init__(self, target: Target, token: str | None):
        self.target = target
        self.headers = {"Accept": "application/json", "Connection": "keep-alive"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.connection: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.target.scheme == "https" else http.client.HTTPConnection
        return cls(self.target.host, self.target.port, timeout=REQUEST_TIMEOUT)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            reused = self.connection is not None
            if self.connection is None:
                self.connection = self._connect()
            try:
                self.connection.request(method, self.target.base_path + path, body=body, headers=headers)
                response = self.connection.getresponse()
                payload = response.read()
                if response.will_close:
                    self.close()
                return response.status, payload
            except RECONNECT_ERRORS:
                self.close()
                # the server may close an idle keep-alive connection: retry once on a fresh one
                if attempt == 1 and reused:
                    self.reconnects += 1
                    continue
                raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


# --------------------------------------------------------------------------- shared state


@dataclass
class Report:
    report_id: str
    triggered_at: float  # seconds since the start of the run
    status: str = "Running"
    finished_seen_at: float | None = None  # first poll that saw Complete or Failed
    error: str | None = None
    row_count: int | None = None


@dataclass
class Stats:
    """What every thread records; merged under one lock (cheap next to an HTTP request)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    requests: int = 0
    reconnects: int = 0

    def record(self, kind: str, seconds: float, error: str | None = None) -> None:
        with self.lock:
            self.requests += 1
            self.latencies[kind].append(seconds)
            if error:
                self.errors[error] += 1


class Run:
    def __init__(self, target: Target, args: argparse.Namespace):
        self.target = target
        self.args = args
        self.stats = Stats()
        self.reports: dict[str, Report] = {}
        self.reports_lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.deadline = self.started + args.duration
        self.ended = self.started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # ------------------------------------------------------------------ triggering

    def trigger_reports(self) -> None:
        """Trigger the reports at 0, D/K, 2D/K, ... seconds (a dedicated connection)."""
        client = Client(self.target, self.args.token)
        try:
            for n in range(self.args.reports):
                when = self.started + n * self.args.duration / self.args.reports
                if self.stop.wait(max(0.0, when - time.monotonic())):
                    return
                self.trigger_one(client)
        finally:
            client.close()

    def trigger_one(self, client: Client) -> None:
        body = json.dumps({"as_of": self.args.as_of}).encode() if self.args.as_of else None
        answer = self.request(client, "/trigger_report", "trigger", method="POST", body=body, expected=202)
        if answer is None:
            return
        report_id = json.loads(answer[0])["report_id"]
        with self.reports_lock:
            self.reports[report_id] = Report(report_id, self.elapsed())

    # ------------------------------------------------------------------ polling

    def pick_report(self, rng: random.Random) -> str | None:
        with self.reports_lock:
            running = [r.report_id for r in self.reports.values() if r.status == "Running"]
            if running:
                return rng.choice(running)
            if self.reports:
                return rng.choice(list(self.reports))
        return None

    def poll(self, number: int) -> None:
        rng = random.Random(number)
        client = Client(self.target, self.args.token)
        count = 0
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                count += 1
                report_id = self.pick_report(rng)
                if report_id is None or count % self.args.health_every == 0:
                    self.request(client, "/health", "health")
                else:
                    self.poll_once(client, report_id)
                if self.args.think_ms:
                    self.stop.wait(self.args.think_ms / 1000)
        finally:
            with self.stats.lock:
                self.stats.reconnects += client.reconnects
            client.close()

    def request(
        self,
        client: Client,
        path: str,
        kind: str,
        method: str = "GET",
        body: bytes | None = None,
        expected: int = 200,
        record_success: bool = True,
    ) -> tuple[bytes, float] | None:
        """One request, counted under `kind`: the body and seconds taken, or None on any failure."""
        began = time.perf_counter()
        try:
            status, payload = client.request(method, path, body)
        except Exception as error:  # noqa: BLE001 - every failure is counted, the run goes on
            self.stats.record(kind, time.perf_counter() - began, f"{kind}: {type(error).__name__}")
            return None
        seconds = time.perf_counter() - began
        if status != expected:
            self.stats.record(kind, seconds, f"{kind}: HTTP {status}")
            return None
        if record_success:
            self.stats.record(kind, seconds)
        return payload, seconds

    def poll_once(self, client: Client, report_id: str) -> None:
        answer = self.request(client, f"/get_report?report_id={report_id}", "get_report", record_success=False)
        if answer is None:
            return
        payload, seconds = answer
        try:
            body = json.loads(payload)
            state = body["status"]
        except (ValueError, KeyError, TypeError):
            self.stats.record("get_report", seconds, "get_report: unreadable body")
            return
        self.stats.record(f"get_report {state}", seconds)
        if state != "Running":
            with self.reports_lock:
                report = self.reports[report_id]
                if report.status == "Running":
                    report.status = state
                    report.finished_seen_at = self.elapsed()
                    report.error = body.get("error")
                    report.row_count = body.get("row_count")

    # ------------------------------------------------------------------ the run

    def execute(self) -> None:
        threads = [threading.Thread(target=self.trigger_reports, name="trigger", daemon=True)]
        threads += [
            threading.Thread(target=self.poll, args=(n,), name=f"client-{n}", daemon=True)
            for n in range(self.args.clients)
        ]
        for thread in threads:
            thread.start()
        try:
            while time.monotonic() < self.deadline and any(t.is_alive() for t in threads[1:]):
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("interrupted: stopping the clients", file=sys.stderr)
        finally:
            self.stop.set()
            # a request in flight ends within REQUEST_TIMEOUT; the threads are daemons in any case
            for thread in threads:
                thread.join(timeout=max(0.0, self.deadline + REQUEST_TIMEOUT - time.monotonic()) + 1)
        self.ended = time.monotonic()

    def server_durations(self) -> dict[str, float]:
        """Seconds from created_at to finished_at, as the server recorded them (GET /reports)."""
        client = Client(self.target, self.args.token)
        try:
            status, payload = client.request("GET", "/reports?page=1&per_page=100")
            if status != 200:
                return {}
            rows = json.loads(payload)["reports"]
        except Exception:  # noqa: BLE001 - the figures are extra; the run's own are printed anyway
            return {}
        finally:
            client.close()
        durations = {}
        for row in rows:
            if row.get("created_at") and row.get("finished_at"):
                durations[row["report_id"]] = _iso_seconds(row["finished_at"]) - _iso_seconds(row["created_at"])
        return durations


# --------------------------------------------------------------------------- figures


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(values)))
    return values[min(rank, len(values)) - 1]


def latency_row(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 1),
        "p90_ms": round(percentile(ordered, 0.90) * 1000, 1),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1) if ordered else math.nan,
    }


def _iso_seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def summarise(run: Run) -> dict:
    wall = run.ended - run.started
    stats = run.stats
    everything = [s for values in stats.latencies.values() for s in values]
    server = run.server_durations()
    reports = []
    for report in sorted(run.reports.values(), key=lambda r: r.triggered_at):
        seen = None if report.finished_seen_at is None else round(report.finished_seen_at - report.triggered_at, 2)
        reports.append(
            {
                "report_id": report.report_id,
                "triggered_at_s": round(report.triggered_at, 2),
                "status": report.status,
                "seconds_seen_by_clients": seen,
                "seconds_on_server": round(server[report.report_id], 2) if report.report_id in server else None,
                "row_count": report.row_count,
                "error": report.error,
            }
        )
    done = [r["seconds_seen_by_clients"] for r in reports if r["status"] == "Complete"]
    return {
        "target": run.target.url,
        "clients": run.args.clients,
        "duration_s": round(wall, 2),
        "requests": stats.requests,
        "requests_per_s": round(stats.requests / wall, 1) if wall > 0 else None,
        "errors": sum(stats.errors.values()),
        "errors_by_kind": dict(stats.errors.most_common()),
        "reconnects": stats.reconnects,
        "latency": latency_row(everything),
        "latency_by_kind": {kind: latency_row(values) for kind, values in sorted(stats.latencies.items())},
        "reports_triggered": len(reports),
        "reports_complete": sum(r["status"] == "Complete" for r in reports),
        "reports_failed": sum(r["status"] == "Failed" for r in reports),
        "reports_still_running": sum(r["status"] == "Running" for r in reports),
        "report_seconds_min": min(done) if done else None,
        "report_seconds_max": max(done) if done else None,
        "reports": reports,
    }


def print_summary(summary: dict) -> None:
    print(f"target {summary['target']}: {summary['clients']} clients for {summary['duration_s']} s")
    print(f"requests      {summary['requests']}  ({summary['requests_per_s']} requests/s)")
    print(f"errors        {summary['errors']}" + (f"  {summary['errors_by_kind']}" if summary["errors"] else ""))
    print(f"reconnects    {summary['reconnects']}  (keep-alive connections the server had closed; retried)")
    lat = summary["latency"]
    print(f"latency ms    p50 {lat['p50_ms']}  p90 {lat['p90_ms']}  p99 {lat['p99_ms']}  max {lat['max_ms']}")
    print(f"  {'kind':<22}{'count':>8}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for kind, row in summary["latency_by_kind"].items():
        print(f"  {kind:<22}{row['count']:>8}{row['p50_ms']:>9}{row['p90_ms']:>9}{row['p99_ms']:>9}{row['max_ms']:>9}")
    print(
        f"reports       {summary['reports_triggered']} triggered: {summary['reports_complete']} complete, "
        f"{summary['reports_failed']} failed, {summary['reports_still_running']} still running"
    )
    for report in summary["reports"]:
        took = report["seconds_seen_by_clients"]
        server = report["seconds_on_server"]
        line = (
            f"  {report['report_id']}  triggered at {report['triggered_at_s']:>6} s  {report['status']:<8}"
            + (f"  done after {took} s (server: {server} s)" if took is not None else "")
            + (f"  rows {report['row_count']}" if report["row_count"] is not None else "")
            + (f"  error: {report['error']}" if report["error"] else "")
        )
        print(line)


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="the service, on loopback only (default %(default)s)"
    )
    parser.add_argument("--clients", type=int, default=20, help=f"concurrent clients, 1..{MAX_CLIENTS} (default 20)")
    parser.add_argument(
        "--duration", type=float, default=60.0, help=f"seconds to run, up to {MAX_DURATION:.0f} (default 60)"
    )
    parser.add_argument(
        "--reports", type=int, default=3, help=f"reports to trigger, spread over the run, 1..{MAX_REPORTS} (default 3)"
    )
    parser.add_argument("--token", default=None, help="bearer token, when the service sets API_TOKEN")
    parser.add_argument("--as-of", default=None, help="as_of to send with each trigger (default: none)")
    parser.add_argument(
        "--health-every", type=int, default=20, help="every n-th request of a client is GET /health (default 20)"
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="pause of each client between its requests, ms (default 0: back to back)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be from 1 to {MAX_CLIENTS}")
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be more than 0 and at most {MAX_DURATION:.0f} seconds")
    if not 1 <= args.reports <= MAX_REPORTS:
        parser.error(f"--reports must be from 1 to {MAX_REPORTS}")
    if args.health_every < 1:
        parser.error("--health-every must be at least 1")
    if not 0 <= args.think_ms <= 10_000:
        parser.error("--think-ms must be from 0 to 10000")
    try:
        args.target = parse_target(args.base_url)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    probe = Client(args.target, args.token)
    try:
        status, _ = probe.request("GET", "/health")
    except (OSError, http.client.HTTPException) as error:
        print(f"{args.target.url} does not answer: {error}", file=sys.stderr)
        return 2
    finally:
        probe.close()
    if status != 200:
        print(f"{args.target.url}/health answered {status}", file=sys.stderr)
        return 2
    socket.setdefaulttimeout(REQUEST_TIMEOUT)
    run = Run(args.target, args)
    run.execute()
    summary = summarise(run)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
