"""Alerts (alerts.py, docs/alerts.md) against a real HTTP receiver on loopback: the exact body and its signature,
one alert per episode (down once, recovered once) across reports, two workers on one SQLite file and a restart;
nothing for a report at a past as_of or without events; a receiver that hangs, fails or redirects is retried,
then Failed and listed by GET /alerts, and never holds up a report; bad settings stop start-up.

The data: four stores open 24/7 whose newest poll is 2023-01-24 13:00 UTC. In the last hour [12:00, 13:00):
"down" is inactive from 11:35 (the midpoint of its 11:00 active and 12:10 inactive polls): 60 minutes down;
"half" is inactive from 12:30 (12:00 active, 13:00 inactive): exactly 30 minutes down, which reaches the
threshold; "short" is inactive until 12:20 (12:00 inactive, 12:40 active): 20 minutes down; "up" is never down.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from pathlib import Path

import pytest

import database
import sources
from app import create_app
from tests.conftest import free_port, store_config, wait_for_report, write_data_dir

SECRET = "receiver-and-service-share-this"
STATUS = """store_id,status,timestamp_utc
down,active,2023-01-24 11:00:00 UTC
down,inactive,2023-01-24 12:10:00 UTC
half,active,2023-01-24 12:00:00 UTC
half,inactive,2023-01-24 13:00:00 UTC
short,inactive,2023-01-24 12:00:00 UTC
short,active,2023-01-24 12:40:00 UTC
up,active,2023-01-24 12:00:00 UTC
up,active,2023-01-24 13:00:00 UTC
"""
HOURS = "store_id,dayOfWeek,start_time_local,end_time_local\n"  # no rows: every store is open 24/7
ZONES = "store_id,timezone_str\n"
# a newer poll of "up" only (newest 13:30): "down" and "half" are still down, nothing changes
STILL_DOWN = b"store_id,status,timestamp_utc\nup,active,2023-01-24 13:30:00 UTC\n"
# "down" comes back at 13:40 (newest 14:00): in [13:00, 14:00) it is active from 12:55, the midpoint of 12:10 and
# 13:40; "half" stays inactive (60 minutes down, still down)
RECOVERED = b"store_id,status,timestamp_utc\ndown,active,2023-01-24 13:40:00 UTC\nup,active,2023-01-24 14:00:00 UTC\n"

DOWN_EVENTS = (
    '[{"store_id":"down","event":"store_down","downtime_last_hour":60.0,"uptime_last_hour":0.0},'
    '{"store_id":"half","event":"store_down","downtime_last_hour":30.0,"uptime_last_hour":30.0}]'
)
RECOVERED_EVENTS = '[{"store_id":"down","event":"store_recovered","downtime_last_hour":0.0,"uptime_last_hour":60.0}]'
WAIT_SECONDS = 60  # the longest any test waits for something that should happen within a second or two
QUICK = {"attempts": 3, "first_wait_seconds": 0, "timeout_seconds": 5}


def body(report_id: str, as_of: str, events: str) -> bytes:
    """The exact JSON a delivery must POST, written out by hand."""
    return f'{{"report_id":"{report_id}","as_of":"{as_of}","events":{events}}}'.encode()


def signature(data: bytes) -> str:
    """The hex HMAC-SHA256 of `data` with the shared secret, computed here as a receiver would."""
    return hmac.new(SECRET.encode(), data, hashlib.sha256).hexdigest()


def wait_until(predicate, what: str, timeout: float = WAIT_SECONDS):
    """Poll `predicate` until it gives something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        tick.wait(0.02)
    raise AssertionError(f"still waiting after {timeout} s for {what}")


# --------------------------------------------------------------------------- the receiver


class Receiver:
    """A webhook receiver on loopback (ThreadingHTTPServer in a thread) that records every request.

    `answer` is the status it answers (200 by default); with `hang` set it never answers until `released`.
    Each request's headers are kept as http.server parsed them: names looked up in any case, as HTTP says.
    """

    def __init__(self, answer: int = 200, hang: bool = False):
        self.answer = answer
        self.hang = hang
        self.released = threading.Event()
        self.requests: list[dict] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._arrived:
                    receiver.requests.append({"path": self.path, "headers": self.headers, "body": data})
                    receiver._arrived.notify_all()
                if receiver.hang:
                    receiver.released.wait()
                self.send_response(receiver.answer)
                if 300 <= receiver.answer < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/uptime?key=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-receiver", daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[dict]:
        """Wait until at least `count` requests have arrived; all of them."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"the receiver got {len(self.requests)} requests, waited for {count}")
            return list(self.requests)

    def bodies(self) -> list[bytes]:
        with self._arrived:
            return [request["body"] for request in self.requests]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    """A receiver answering 200 at once."""
    server = Receiver()
    yield server
    server.close()


# --------------------------------------------------------------------------- apps


class Apps:
    """Apps made by a test, all shut down (reports, then alerts) at its end."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.data_dir = write_data_dir(tmp_path / "data", STATUS, HOURS, ZONES)
        self.made = []

    def make(self, config: dict, url: str | None, timing: dict | None = None):
        settings = {
            **config,
            "DATA_DIR": str(self.data_dir),
            "REPORTS_DIR": str(self.tmp_path / "reports"),
            "TESTING": True,
            "ALERT_TIMING": {**QUICK, **(timing or {})},
        }
        if url is not None:
            settings.update({"ALERT_WEBHOOK_URL": url, "ALERT_SECRET": SECRET})
        application = create_app(settings)
        self.made.append(application)
        return application

    def close(self) -> None:
        for application in self.made:
            stop(application)


def stop(application) -> None:
    application.extensions["reports"].shutdown(wait=True)
    if application.extensions["alerts"] is not None:
        application.extensions["alerts"].shutdown(wait=True, timeout=WAIT_SECONDS)


@pytest.fixture
def apps(tmp_path):
    made = Apps(tmp_path)
    yield made
    made.close()


def run_report(application, as_of: str | None = None) -> str:
    """Trigger a report, wait until it is Complete; its id."""
    web = application.test_client()
    answer = web.post("/trigger_report", json={"as_of": as_of} if as_of else None)
    assert answer.status_code == 202, answer.get_json()
    report_id = answer.get_json()["report_id"]
    assert wait_for_report(web, report_id)["status"] == "Complete"
    return report_id


def settle(application) -> None:
    """Wait until the alerts of every report finished so far are recorded and delivered (or given up)."""
    assert application.extensions["alerts"].join(WAIT_SECONDS)


def load_polls(application, csv: bytes) -> None:
    summary = database.load_file(application.extensions["store"], sources.STATUS_FILE, csv, label="newer.csv")
    assert summary["rejected"] == 0


def deliveries(application) -> list[dict]:
    answer = application.test_client().get("/alerts")
    assert answer.status_code == 200
    return answer.get_json()["deliveries"]


def sqlite_config(tmp_path: Path) -> dict:
    return store_config("sqlite", tmp_path)


# --------------------------------------------------------------------------- one episode, one alert


def test_a_store_down_alerts_once_and_its_recovery_once(apps, receiver, store_kind, tmp_path):
    application = apps.make(store_config(store_kind, tmp_path), receiver.url)

    first = run_report(application)
    [request] = receiver.wait_for(1)
    assert request["body"] == body(first, "2023-01-24T13:00:00.000000Z", DOWN_EVENTS)
    assert request["path"] == "/hooks/uptime?key=abc"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Signature-SHA256"] == signature(request["body"])

    load_polls(application, STILL_DOWN)  # the next report: still down, so nothing is sent
    second = run_report(application)
    settle(application)
    assert len(receiver.bodies()) == 1

    load_polls(application, RECOVERED)
    third = run_report(application)
    requests = receiver.wait_for(2)
    assert requests[1]["body"] == body(third, "2023-01-24T14:00:00.000000Z", RECOVERED_EVENTS)
    assert requests[1]["headers"]["X-Signature-SHA256"] == signature(requests[1]["body"])
    settle(application)
    assert len(receiver.bodies()) == 2

    listed = wait_until(
        lambda: (found := deliveries(application)) and all(d["status"] == "Delivered" for d in found) and found,
        "both deliveries to be recorded Delivered",
    )
    assert [(d["report_id"], d["events"], d["attempts"], d["http_status"], d["error"]) for d in listed] == [
        (third, 1, 1, 200, None),
        (first, 2, 1, 200, None),
    ]
    assert listed[0]["as_of"] == "2023-01-24T14:00:00Z" and listed[1]["as_of"] == "2023-01-24T13:00:00Z"
    assert second not in {d["report_id"] for d in listed}


def test_no_events_no_post(apps, receiver, store_kind, tmp_path):
    """The tiny data of conftest: no store reaches 30 minutes of downtime in the last hour."""
    from tests.conftest import TINY_HOURS, TINY_STATUS, TINY_ZONES

    write_data_dir(apps.data_dir, TINY_STATUS, TINY_HOURS, TINY_ZONES)
    application = apps.make(store_config(store_kind, tmp_path), receiver.url)
    run_report(application)
    run_report(application)
    settle(application)
    assert receiver.bodies() == []
    assert deliveries(application) == []


def test_a_report_for_a_past_as_of_sends_nothing_and_keeps_the_state(apps, receiver, store_kind, tmp_path):
    application = apps.make(store_config(store_kind, tmp_path), receiver.url)
    run_report(application, as_of="2023-01-24T13:00:00Z")  # the same instant as the newest poll, asked for
    settle(application)
    assert receiver.bodies() == []
    assert deliveries(application) == []
    newest = run_report(application)  # the events were not used up by the past report
    assert receiver.wait_for(1)[0]["body"] == body(newest, "2023-01-24T13:00:00.000000Z", DOWN_EVENTS)


def test_a_failing_hook_neither_fails_the_report_nor_stops_the_alerts(apps, receiver, tmp_path):
    application = apps.make(sqlite_config(tmp_path), receiver.url)

    def broken(report_id: str) -> None:
        raise RuntimeError("a hook that fails")

    application.extensions["reports"].on_complete.insert(0, broken)
    report_id = run_report(application)
    assert receiver.wait_for(1)[0]["body"] == body(report_id, "2023-01-24T13:00:00.000000Z", DOWN_EVENTS)


# --------------------------------------------------------------------------- workers and restarts


def test_two_workers_on_one_file_send_one_post_per_event(apps, receiver, tmp_path):
    config = sqlite_config(tmp_path)
    workers = [apps.make(config, receiver.url), apps.make(config, receiver.url)]
    clients = [worker.test_client() for worker in workers]

    def both_report() -> list[str]:
        ids = [web.post("/trigger_report").get_json()["report_id"] for web in clients]
        for web, report_id in zip(clients, ids):
            assert wait_for_report(web, report_id)["status"] == "Complete"
        for worker in workers:
            settle(worker)
        return ids

    down_ids = both_report()
    [request] = receiver.wait_for(1)
    sent = json.loads(request["body"])["report_id"]
    assert sent in down_ids
    assert request["body"] == body(sent, "2023-01-24T13:00:00.000000Z", DOWN_EVENTS)

    load_polls(workers[0], RECOVERED)
    recovered_ids = both_report()
    requests = receiver.wait_for(2)
    sent = json.loads(requests[1]["body"])["report_id"]
    assert sent in recovered_ids
    assert requests[1]["body"] == body(sent, "2023-01-24T14:00:00.000000Z", RECOVERED_EVENTS)
    assert len(receiver.bodies()) == 2
    assert [d["events"] for d in deliveries(workers[1])] == [1, 2]


def test_a_restart_repeats_nothing_and_delivers_what_was_left(apps, receiver, tmp_path):
    config = sqlite_config(tmp_path)
    nobody = f"http://127.0.0.1:{free_port()}/hook"  # refused: the first attempt fails, the next waits an hour
    before = apps.make(config, nobody, {"first_wait_seconds": 3600})
    report_id = run_report(before)
    [left] = wait_until(
        lambda: [d for d in deliveries(before) if d["attempts"] == 1],
        "the first attempt to be recorded",
    )
    assert left["status"] == "Pending" and left["http_status"] is None
    assert left["error"].startswith("cannot reach the receiver")
    stop(before)  # the process stops while the delivery waits for its second attempt

    after = apps.make(config, receiver.url, {"pending_after_seconds": 0})  # its sweep finds it at once
    [request] = receiver.wait_for(1)
    assert request["body"] == body(report_id, "2023-01-24T13:00:00.000000Z", DOWN_EVENTS)
    [delivered] = wait_until(
        lambda: [d for d in deliveries(after) if d["status"] == "Delivered"], "the left delivery to be Delivered"
    )
    assert (delivered["delivery_id"], delivered["attempts"], delivered["http_status"]) == (left["delivery_id"], 2, 200)

    run_report(after)  # the same newest data after the restart: the stores are known to be down already
    settle(after)
    assert len(receiver.bodies()) == 1
    assert len(deliveries(after)) == 1


def test_a_report_finished_without_alerts_is_recorded_at_start(apps, receiver, tmp_path):
    """A process that stopped after a report turned Complete, before recording its alerts (here: one with
    alerts off): the next start records them and its sweep sends them."""
    config = sqlite_config(tmp_path)
    quiet = apps.make(config, None)
    report_id = run_report(quiet)
    stop(quiet)
    apps.make(config, receiver.url, {"pending_after_seconds": 0})
    assert receiver.wait_for(1)[0]["body"] == body(report_id, "2023-01-24T13:00:00.000000Z", DOWN_EVENTS)


# --------------------------------------------------------------------------- receivers that misbehave


def test_a_hanging_receiver_never_holds_up_reports(apps, tmp_path):
    hanging = Receiver(hang=True)
    try:
        application = apps.make({**sqlite_config(tmp_path), "REPORT_WORKERS": 1}, hanging.url, {"timeout_seconds": 60})
        first = run_report(application)
        hanging.wait_for(1)  # the POST is in flight and gets no answer
        run_report(application)  # the one report thread is free: the next report runs and completes
        [pending] = deliveries(application)
        assert (pending["report_id"], pending["status"], pending["attempts"]) == (first, "Pending", 0)
        hanging.released.set()  # the receiver answers at last
        [delivered] = wait_until(
            lambda: [d for d in deliveries(application) if d["status"] == "Delivered"], "the delivery to end"
        )
        assert (delivered["attempts"], delivered["http_status"]) == (1, 200)
    finally:
        hanging.close()


def test_a_receiver_that_never_answers_times_out_and_is_retried(apps, tmp_path):
    hanging = Receiver(hang=True)
    try:
        application = apps.make(sqlite_config(tmp_path), hanging.url, {"timeout_seconds": 0.5, "attempts": 2})
        report_id = run_report(application)
        [failed] = wait_until(
            lambda: [d for d in deliveries(application) if d["status"] == "Failed"], "the delivery to fail"
        )
        assert (failed["report_id"], failed["attempts"], failed["http_status"]) == (report_id, 2, None)
        assert failed["error"] == "no answer within 0.5 s"
        requests = hanging.wait_for(2)
        assert len(requests) == 2
        assert requests[0]["body"] == requests[1]["body"] == body(report_id, "2023-01-24T13:00:00.000000Z", DOWN_EVENTS)
        assert requests[0]["headers"]["X-Signature-SHA256"] == requests[1]["headers"]["X-Signature-SHA256"]
    finally:
        hanging.close()


@pytest.mark.parametrize("answer", [500, 302, 404])
def test_a_receiver_that_fails_is_retried_then_failed_and_listed(apps, tmp_path, answer):
    failing = Receiver(answer=answer)
    try:
        application = apps.make(sqlite_config(tmp_path), failing.url, {"attempts": 3})
        report_id = run_report(application)
        settle(application)
        assert len(failing.bodies()) == 3
        assert set(failing.bodies()) == {body(report_id, "2023-01-24T13:00:00.000000Z", DOWN_EVENTS)}
        listing = application.test_client().get("/alerts").get_json()
        [failed] = listing["deliveries"]
        assert failed["status"] == "Failed"
        assert (failed["report_id"], failed["attempts"], failed["http_status"], failed["events"]) == (
            report_id,
            3,
            answer,
            2,
        )
        assert failed["error"] == f"the receiver answered HTTP {answer}"
    finally:
        failing.close()


# --------------------------------------------------------------------------- GET /alerts and the settings


def test_get_alerts_answers_its_shape_and_refuses_bad_parameters(apps, receiver, tmp_path):
    off = apps.make(sqlite_config(tmp_path / "off"), None).test_client()
    assert off.get("/alerts").get_json() == {"enabled": False, "downtime_minutes": 30.0, "limit": 50, "deliveries": []}

    application = apps.make(sqlite_config(tmp_path / "on"), receiver.url)
    web = application.test_client()
    first = run_report(application)
    load_polls(application, RECOVERED)
    second = run_report(application)
    receiver.wait_for(2)
    settle(application)
    listing = web.get("/alerts").get_json()
    assert (listing["enabled"], listing["downtime_minutes"], listing["limit"]) == (True, 30.0, 50)
    assert [d["report_id"] for d in listing["deliveries"]] == [second, first]
    assert set(listing["deliveries"][0]) == {
        "delivery_id",
        "report_id",
        "as_of",
        "created_at",
        "last_attempt_at",
        "status",
        "attempts",
        "http_status",
        "error",
        "events",
    }
    one = web.get("/alerts?limit=1").get_json()
    assert one["limit"] == 1 and [d["report_id"] for d in one["deliveries"]] == [second]
    for query in ("limit=0", "limit=201", "limit=ten", "limit=-1"):
        answer = web.get(f"/alerts?{query}")
        assert answer.status_code == 400
        assert answer.get_json() == {"error": "limit must be a whole number from 1 to 200", "status": 400}
    unknown = web.get("/alerts?status=Failed")
    assert unknown.status_code == 400
    assert unknown.get_json()["error"] == "unknown query parameter(s) status on /alerts; this call takes: limit"
    assert web.post("/alerts").status_code == 405  # the webhook is the operator's: nothing sets it over HTTP


def test_the_listing_keeps_to_the_openapi_description(apps, receiver, tmp_path):
    """A Failed delivery (HTTP 500) and a Delivered one, as GET /alerts lists them, against openapi.json."""
    import schemathesis
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    config = sqlite_config(tmp_path)
    failing = Receiver(answer=500)
    try:
        first = apps.make(config, failing.url, {"attempts": 1})
        run_report(first)
        settle(first)
    finally:
        failing.close()
    second = apps.make(config, receiver.url)
    load_polls(second, RECOVERED)
    run_report(second)
    receiver.wait_for(1)
    settle(second)
    assert [d["status"] for d in deliveries(second)] == ["Delivered", "Failed"]
    operation = schemathesis.openapi.from_wsgi("/openapi.json", second)["/alerts"]["GET"]
    for query in ({}, {"limit": 1}):
        case = operation.Case(query=query)
        response = case.call()
        assert response.status_code == 200
        case.validate_response(response, checks=[content_type_conformance, response_schema_conformance])


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"ALERT_WEBHOOK_URL": "ftp://127.0.0.1/hook", "ALERT_SECRET": "s"}, "ALERT_WEBHOOK_URL"),
        ({"ALERT_WEBHOOK_URL": "127.0.0.1:9000/hook", "ALERT_SECRET": "s"}, "ALERT_WEBHOOK_URL"),
        ({"ALERT_WEBHOOK_URL": "http:///hook", "ALERT_SECRET": "s"}, "ALERT_WEBHOOK_URL"),
        ({"ALERT_WEBHOOK_URL": "http://127.0.0.1:port/hook", "ALERT_SECRET": "s"}, "ALERT_WEBHOOK_URL"),
        ({"ALERT_WEBHOOK_URL": "http://127.0.0.1:9000/hook"}, "ALERT_SECRET"),
        ({"ALERT_DOWNTIME_MINUTES": "half an hour"}, "ALERT_DOWNTIME_MINUTES"),
        ({"ALERT_DOWNTIME_MINUTES": "0"}, "ALERT_DOWNTIME_MINUTES"),
        ({"ALERT_DOWNTIME_MINUTES": "61"}, "ALERT_DOWNTIME_MINUTES"),
        ({"ALERT_DOWNTIME_MINUTES": "nan"}, "ALERT_DOWNTIME_MINUTES"),
    ],
)
def test_bad_alert_settings_stop_start_up(tmp_path, monkeypatch, settings, named):
    """Set in the environment, as the operator does; start-up stops with one line naming the setting."""
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        create_app({**sqlite_config(tmp_path), "DATA_DIR": str(write_data_dir(tmp_path / "data")), "TESTING": True})
    message = str(stopped.value.code)
    assert message.startswith("error: ") and named in message
    assert not (tmp_path / "db").exists()  # refused before the database is opened


def test_alert_settings_from_the_environment_turn_alerts_on(tmp_path, monkeypatch, receiver):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("ALERT_SECRET", SECRET)
    monkeypatch.setenv("ALERT_DOWNTIME_MINUTES", "45")
    application = create_app(
        {
            **sqlite_config(tmp_path),
            "DATA_DIR": str(write_data_dir(tmp_path / "data", STATUS, HOURS, ZONES)),
            "REPORTS_DIR": str(tmp_path / "reports"),
            "TESTING": True,
        }
    )
    try:
        assert application.test_client().get("/alerts").get_json()["downtime_minutes"] == 45.0
        report_id = run_report(application)  # at 45 minutes "half" (30) is not down; "down" (60) is
        events = '[{"store_id":"down","event":"store_down","downtime_last_hour":60.0,"uptime_last_hour":0.0}]'
        assert receiver.wait_for(1)[0]["body"] == body(report_id, "2023-01-24T13:00:00.000000Z", events)
    finally:
        stop(application)
