"""The store contract's monitoring half (schema 3), one suite run on every store (SQLite, mongomock):
report triggers, deleting one report, a store's history, the previous Complete report, the schedule's
ticks and the alert state and deliveries.  Each case has exact expected values worked out by hand."""

from __future__ import annotations

import datetime as dt
import json

import pytest

import database
import report_csv
import utils

HEADER = (",".join(utils.REPORT_COLUMNS) + "\n").encode()
DAY_US = 86_400_000_000


def csv_of(*rows: str) -> bytes:
    return HEADER + b"".join(row.encode() + b"\n" for row in rows)


# three reports a day apart; store "a" in all, "b" in the first two, "'=c" (a formula-like id, quoted) in the last
REPORT_CSVS = [
    csv_of("a,60.0,20.5,150.25,0.0,3.5,17.75", "b,30.0,10.0,100.0,30.0,14.0,68.0"),
    csv_of("a,45.5,21.0,151.0,14.5,3.0,17.0", "b,0.0,0.01,99.99,60.0,23.99,68.01"),
    csv_of("'=c,1.0,2.0,3.0,59.0,22.0,165.0", "a,60.0,24.0,168.0,0.0,0.0,0.0"),
]
AS_OF = [1_674_432_000_000_000 + day * DAY_US for day in range(3)]  # 2023-01-23, -24, -25 at 00:00 UTC
IDS = [f"{n:032x}" for n in (1, 2, 3)]


def complete(store: database.Store, report_id: str, as_of_us: int, payload: bytes, trigger: str = "api") -> None:
    store.create_report(report_id, None, trigger=trigger)
    store.update_report(report_id, as_of_us=as_of_us)
    assert store.complete_report(report_id, payload, payload.count(b"\n") - 1)


@pytest.fixture
def three_reports(new_store):
    for report_id, as_of_us, payload in zip(IDS, AS_OF, REPORT_CSVS):
        complete(new_store, report_id, as_of_us, payload)
    return new_store


def point(report_id: str, as_of_us: int, figures: tuple) -> dict:
    return dict(zip(database.HISTORY_FIELDS, (report_id, as_of_us, *figures)))


# --------------------------------------------------------------------------- triggers and deleting


def test_a_report_keeps_what_triggered_it(new_store):
    new_store.create_report(IDS[0], None)
    new_store.create_report(IDS[1], None, trigger="schedule")
    assert new_store.find_report(IDS[0])["trigger"] == "api"
    assert new_store.find_report(IDS[1])["trigger"] == "schedule"
    assert [row["trigger"] for row in new_store.list_reports()] == ["schedule", "api"]


def test_delete_report_removes_a_finished_one_with_its_csv_and_history(three_reports):
    store = three_reports
    assert store.delete_report(IDS[1]) is True
    assert store.find_report(IDS[1]) is None
    assert store.count_reports() == 2
    assert [p["report_id"] for p in store.store_history("b")] == [IDS[0]]
    assert [p["report_id"] for p in store.store_history("a")] == [IDS[2], IDS[0]]
    assert store.delete_report(IDS[1]) is False  # gone already
    assert store.delete_report("f" * 32) is False  # never was


def test_delete_report_leaves_a_running_one_untouched(new_store):
    new_store.create_report(IDS[0], None)
    assert new_store.delete_report(IDS[0]) is False
    assert new_store.find_report(IDS[0])["status"] == "Running"


def test_delete_report_removes_a_failed_one(new_store):
    new_store.create_report(IDS[0], None)
    new_store.fail_report(IDS[0], "boom")
    assert new_store.delete_report(IDS[0]) is True
    assert new_store.find_report(IDS[0]) is None


def test_retention_removes_the_history_of_the_reports_it_deletes(three_reports):
    store = three_reports
    deleted = store.delete_finished_reports(database.now_utc() - dt.timedelta(days=1), keep_newest=1)
    assert sorted(deleted) == IDS[:2]
    assert store.store_history("b") == []
    assert [p["report_id"] for p in store.store_history("a")] == [IDS[2]]


# --------------------------------------------------------------------------- history


def test_history_is_each_complete_report_s_row_newest_first(three_reports):
    assert three_reports.store_history("a") == [
        point(IDS[2], AS_OF[2], (60.0, 24.0, 168.0, 0.0, 0.0, 0.0)),
        point(IDS[1], AS_OF[1], (45.5, 21.0, 151.0, 14.5, 3.0, 17.0)),
        point(IDS[0], AS_OF[0], (60.0, 20.5, 150.25, 0.0, 3.5, 17.75)),
    ]
    assert three_reports.store_history("b") == [
        point(IDS[1], AS_OF[1], (0.0, 0.01, 99.99, 60.0, 23.99, 68.01)),
        point(IDS[0], AS_OF[0], (30.0, 10.0, 100.0, 30.0, 14.0, 68.0)),
    ]


def test_history_names_a_store_as_loaded_not_as_the_csv_quotes_it(three_reports):
    assert three_reports.store_history("=c") == [point(IDS[2], AS_OF[2], (1.0, 2.0, 3.0, 59.0, 22.0, 165.0))]
    assert three_reports.store_history("'=c") == []


def test_history_points_equal_the_reports_csv_rows(three_reports):
    for report_id, payload in zip(IDS, REPORT_CSVS):
        rows = report_csv.read_report_rows(payload)
        for row in rows.to_dict("records"):
            points = [p for p in three_reports.store_history(row["store_id"]) if p["report_id"] == report_id]
            assert len(points) == 1
            figures = utils.REPORT_COLUMNS[1:]
            assert [points[0][k] for k in figures] == [row[k] for k in figures]


def test_history_is_bounded_by_since_until_and_limit(three_reports):
    store = three_reports
    assert [p["report_id"] for p in store.store_history("a", since_us=AS_OF[1])] == [IDS[2], IDS[1]]
    assert [p["report_id"] for p in store.store_history("a", until_us=AS_OF[1])] == [IDS[1], IDS[0]]
    assert [p["report_id"] for p in store.store_history("a", since_us=AS_OF[1], until_us=AS_OF[1])] == [IDS[1]]
    assert [p["report_id"] for p in store.store_history("a", limit=2)] == [IDS[2], IDS[1]]
    assert store.store_history("nobody") == []


def test_history_shows_only_complete_reports(new_store):
    new_store.create_report(IDS[0], None)
    new_store.update_report(IDS[0], as_of_us=AS_OF[0])
    new_store.fail_report(IDS[0], "boom")
    assert new_store.complete_report(IDS[0], REPORT_CSVS[0], 2) is False  # a Failed report never turns Complete
    new_store.create_report(IDS[1], None)  # Running
    assert new_store.store_history("a") == []


def test_history_orders_equal_as_ofs_by_creation(new_store):
    complete(new_store, IDS[0], AS_OF[0], REPORT_CSVS[0])
    complete(new_store, IDS[1], AS_OF[0], REPORT_CSVS[1])
    assert [p["report_id"] for p in new_store.store_history("a")] == [IDS[1], IDS[0]]


# --------------------------------------------------------------------------- the previous report, the stream


def test_previous_complete_report_skips_running_and_failed_ones(new_store):
    complete(new_store, IDS[0], AS_OF[0], REPORT_CSVS[0])
    new_store.create_report(IDS[1], None)
    new_store.fail_report(IDS[1], "boom")
    new_store.create_report("4" * 32, None)  # Running
    complete(new_store, IDS[2], AS_OF[2], REPORT_CSVS[2])
    assert new_store.previous_complete_report(IDS[2])["report_id"] == IDS[0]
    assert new_store.previous_complete_report(IDS[0]) is None
    assert new_store.previous_complete_report("f" * 32) is None


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_iter_report_csv_gives_the_stored_bytes_in_bounded_pieces(three_reports, chunk_bytes):
    report = three_reports.find_report(IDS[2])
    pieces = list(three_reports.iter_report_csv(report, chunk_bytes=chunk_bytes))
    assert b"".join(pieces) == REPORT_CSVS[2]
    assert all(0 < len(piece) <= chunk_bytes for piece in pieces)


def test_iter_report_csv_refuses_a_csv_of_another_length(three_reports):
    report = dict(three_reports.find_report(IDS[0]), csv_bytes=len(REPORT_CSVS[0]) + 1)
    with pytest.raises(ValueError):
        b"".join(three_reports.iter_report_csv(report))


# --------------------------------------------------------------------------- the schedule's ticks


def test_clock_us_is_now_in_microseconds(new_store):
    before = dt.datetime.now(dt.UTC).timestamp() * 1e6
    clock = new_store.clock_us()
    after = dt.datetime.now(dt.UTC).timestamp() * 1e6
    assert isinstance(clock, int)
    assert before - 5e6 <= clock <= after + 5e6  # the server's clock may differ a little from ours


def test_a_tick_starts_one_report_and_only_once(new_store):
    tick = 1_700_000_000_000_000
    assert new_store.last_tick() is None
    assert new_store.claim_tick(tick, IDS[0]) == "started"
    report = new_store.find_report(IDS[0])
    assert (report["status"], report["trigger"], report["requested_as_of_us"]) == ("Running", "schedule", None)
    assert new_store.claim_tick(tick, IDS[1]) == "taken"
    assert new_store.find_report(IDS[1]) is None
    last = new_store.last_tick()
    assert (last["tick_us"], last["outcome"], last["report_id"]) == (tick, "started", IDS[0])


def test_a_tick_is_skipped_while_the_previous_scheduled_report_runs(new_store):
    tick = 1_700_000_000_000_000
    assert new_store.claim_tick(tick, IDS[0]) == "started"
    assert new_store.claim_tick(tick + 60_000_000, IDS[1]) == "skipped"
    assert new_store.find_report(IDS[1]) is None
    last = new_store.last_tick()
    assert (last["tick_us"], last["outcome"], last["report_id"]) == (tick + 60_000_000, "skipped", None)
    assert new_store.claim_tick(tick + 60_000_000, IDS[2]) == "taken"  # a skipped tick is claimed all the same
    new_store.complete_report(IDS[0], REPORT_CSVS[0], 2)
    assert new_store.claim_tick(tick + 120_000_000, IDS[2]) == "started"


def test_a_running_api_report_does_not_skip_a_tick(new_store):
    new_store.create_report(IDS[0], None)  # trigger "api", Running
    assert new_store.claim_tick(1_700_000_000_000_000, IDS[1]) == "started"


def test_a_failed_scheduled_report_does_not_skip_the_next_tick(new_store):
    tick = 1_700_000_000_000_000
    assert new_store.claim_tick(tick, IDS[0]) == "started"
    new_store.fail_report(IDS[0], "boom")
    assert new_store.claim_tick(tick + 1, IDS[1]) == "started"


# --------------------------------------------------------------------------- alerts


def rows_of(**downtime_last_hour: float) -> list[dict]:
    return [
        {"store_id": store_id, "downtime_last_hour": down, "uptime_last_hour": 60.0 - down}
        for store_id, down in downtime_last_hour.items()
    ]


def events_of(delivery: dict | None) -> list[tuple[str, str]]:
    if delivery is None:
        return []
    return [(event["store_id"], event["event"]) for event in json.loads(delivery["body"])["events"]]


def test_one_alert_per_episode(new_store):
    store = new_store
    first = store.record_alerts(IDS[0], AS_OF[0], rows_of(a=30.0, b=29.99, c=0.0), 30)
    assert first["status"] == "Pending" and first["attempts"] == 0 and first["events"] == 1
    assert set(first) >= database.ALERT_DELIVERY_FIELDS
    event = {"store_id": "a", "event": "store_down", "downtime_last_hour": 30.0, "uptime_last_hour": 30.0}
    assert first["body"] == database.alert_body(IDS[0], AS_OF[0], [event])
    # a still down: no new event; b now down; c stays up
    second = store.record_alerts(IDS[1], AS_OF[1], rows_of(a=60.0, b=45.0, c=0.0), 30)
    assert events_of(second) == [("b", "store_down")]
    # a recovers, b stays down
    third = store.record_alerts(IDS[2], AS_OF[2], rows_of(a=0.0, b=31.0, c=0.0), 30)
    assert events_of(third) == [("a", "store_recovered")]
    body = json.loads(third["body"])
    assert body["events"][0] == {
        "store_id": "a",
        "event": "store_recovered",
        "downtime_last_hour": 0.0,
        "uptime_last_hour": 60.0,
    }
    assert body["as_of"] == "2023-01-25T00:00:00.000000Z"
    assert [d["report_id"] for d in store.list_deliveries()] == [IDS[2], IDS[1], IDS[0]]


def test_no_events_no_delivery(new_store):
    assert new_store.record_alerts(IDS[0], AS_OF[0], rows_of(a=0.0, b=10.0), 30) is None
    assert new_store.list_deliveries() == []


def test_recording_a_report_again_gives_its_delivery_and_no_new_event(new_store):
    first = new_store.record_alerts(IDS[0], AS_OF[0], rows_of(a=40.0), 30)
    again = new_store.record_alerts(IDS[0], AS_OF[0], rows_of(a=40.0), 30)
    assert again["delivery_id"] == first["delivery_id"] and again["body"] == first["body"]
    assert len(new_store.list_deliveries()) == 1
    assert new_store.record_alerts(IDS[1], AS_OF[1], rows_of(a=40.0), 30) is None


def test_an_older_report_finishing_late_never_flips_the_state(new_store):
    assert events_of(new_store.record_alerts(IDS[1], AS_OF[1], rows_of(a=40.0), 30)) == [("a", "store_down")]
    assert new_store.record_alerts(IDS[0], AS_OF[0], rows_of(a=0.0), 30) is None
    assert new_store.record_alerts(IDS[2], AS_OF[2], rows_of(a=50.0), 30) is None  # still the same episode


def test_an_older_report_never_raises_a_store_a_newer_one_saw_up(new_store):
    assert new_store.record_alerts(IDS[1], AS_OF[1], rows_of(a=0.0, b=40.0), 30) is not None  # b down, a up
    assert new_store.record_alerts(IDS[0], AS_OF[0], rows_of(a=40.0, b=40.0), 30) is None


def test_a_delivery_s_outcome_is_recorded_and_pending_ones_are_found(new_store):
    delivery = new_store.record_alerts(IDS[0], AS_OF[0], rows_of(a=40.0), 30)
    now_us = new_store.clock_us()
    assert [d["delivery_id"] for d in new_store.pending_deliveries(now_us + 1_000_000)] == [delivery["delivery_id"]]
    assert new_store.pending_deliveries(now_us - 3_600_000_000) == []
    new_store.update_delivery(delivery["delivery_id"], "Pending", 1, "timed out", None)
    listed = new_store.list_deliveries()[0]
    assert (listed["status"], listed["attempts"], listed["error"], listed["http_status"]) == (
        "Pending",
        1,
        "timed out",
        None,
    )
    assert listed["last_attempt_at"] is not None
    assert listed["body"] is None  # a listing never reads the bodies
    assert new_store.pending_deliveries(now_us + 3_600_000_000)[0]["body"] == delivery["body"]
    new_store.update_delivery(delivery["delivery_id"], "Delivered", 2, None, 204)
    listed = new_store.list_deliveries()[0]
    assert (listed["status"], listed["attempts"], listed["error"], listed["http_status"]) == ("Delivered", 2, None, 204)
    assert new_store.pending_deliveries(now_us + 3_600_000_000) == []
