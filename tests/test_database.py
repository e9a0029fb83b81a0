"""The storage contract (database.Store), one suite run against every store: SQLite and mongomock.

Ingest counts, idempotency, replacement, microsecond keys, reading for the report,
report records and the data lease.  Store-specific behaviour (query plans, indexes,
files shared by processes) lives in test_store_sqlite.py and test_store_mongo.py.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pymongo.errors
import pytest

import database
import sources
import utils
from tests.conftest import (
    FAR_FUTURE_US,
    TINY_HOURS,
    TINY_STATUS,
    TINY_ZONES,
    force_report_state,
    free_port,
    hours_of,
    polls_of,
    write_data_dir,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(new_store):
    return new_store


def snapshot(store: database.Store) -> dict:
    """Everything the three data tables hold, through the contract, in a stable order."""
    ids = store.report_store_ids(FAR_FUTURE_US)
    polls, hours, zones = store.read_chunk(ids + ["worked"], 0, FAR_FUTURE_US)
    return {
        "polls": sorted(zip(polls["store_id"], polls["timestamp_us"], polls["active"])),
        "hours": sorted(map(tuple, hours.astype(str).to_numpy().tolist())),
        "zones": sorted(zip(zones["store_id"], zones["timezone_str"])),
    }


def test_load_dir_counts_and_exact_keys(store, tmp_path):
    summaries = database.load_dir(store, write_data_dir(tmp_path))
    assert [(s["rows_read"], s["loaded"], s["rejected"]) for s in summaries] == [(5, 5, 0), (1, 1, 0), (1, 1, 0)]
    polls = polls_of(store, "worked")
    # 2023-01-24 10:14:00 UTC and 11:15:00 UTC, worked out by hand
    assert sorted(zip(polls["timestamp_us"], polls["active"])) == [(1674555240000000, True), (1674558900000000, False)]


def test_loading_twice_changes_nothing(store, tmp_path):
    directory = write_data_dir(tmp_path)
    database.load_dir(store, directory)
    first = snapshot(store)
    summaries = database.load_dir(store, directory)
    assert snapshot(store) == first
    assert [s["loaded"] for s in summaries] == [5, 1, 1]


def test_polls_a_microsecond_apart_are_two_polls(store):
    database.load_file(
        store,
        sources.STATUS_FILE,
        b"store_id,status,timestamp_utc\n"
        b"s,active,2023-01-24 10:00:00.000001 UTC\ns,inactive,2023-01-24 10:00:00.000002 UTC\n"
        b"s,active,2023-01-24 10:00:00.000999 UTC\n",
    )
    polls = polls_of(store, "s")
    assert sorted(zip(polls["timestamp_us"] % 1_000_000, polls["active"])) == [(1, True), (2, False), (999, True)]


def test_a_later_load_overrides_the_status_of_the_same_poll(store):
    database.load_file(store, sources.STATUS_FILE, b"store_id,status,timestamp_utc\ns,active,2023-01-24T10:00:00Z\n")
    database.load_file(store, sources.STATUS_FILE, b"store_id,status,timestamp_utc\ns,inactive,2023-01-24T10:00:00Z\n")
    polls = polls_of(store, "s")
    assert list(polls["active"]) == [False]


def test_bad_rows_reported_good_rows_loaded(store, tmp_path):
    status = TINY_STATUS + "bad,maybe,2023-01-24 13:00:00 UTC\nbad,active,not a time\n"
    hours = TINY_HOURS + "worked,9,09:00:00,12:00:00\n"
    zones = TINY_ZONES + "other,Not/AZone\n"
    summaries = database.load_dir(store, write_data_dir(tmp_path, status, hours, zones))
    by_file = {s["file"].rsplit("/", 1)[-1]: s for s in summaries}
    assert by_file["store_status.csv"]["loaded"] == 5
    assert [(r["line"], r["reason"].split(" '")[0]) for r in by_file["store_status.csv"]["rejects"]] == [
        (7, "unknown status"),
        (8, "unparseable timestamp"),
    ]
    assert by_file["menu_hours.csv"]["rejects"][0]["line"] == 3
    assert by_file["timezones.csv"]["rejects"][0]["line"] == 3
    assert store.report_store_ids(FAR_FUTURE_US) == ["allday", "late", "worked"]


def test_hours_and_zones_are_replaced_by_the_newest_file(store, tmp_path):
    database.load_dir(store, write_data_dir(tmp_path))
    database.load_file(
        store,
        sources.HOURS_FILE,
        b"store_id,day,start_time_local,end_time_local\nworked,3,08:00:00,09:00:00\nworked,4,22:00,02:00\n",
    )
    database.load_file(store, sources.ZONES_FILE, b"store_id,timezone_str\nworked,Asia/Tokyo\n")
    hours = hours_of(store, "worked").sort_values("day")
    assert hours[["day", "start_s", "end_s"]].to_numpy().tolist() == [[3, 8 * 3600, 9 * 3600], [4, 22 * 3600, 2 * 3600]]
    zones = store.read_chunk(["worked"], 0, FAR_FUTURE_US)[2]
    assert zones.to_numpy().tolist() == [["worked", "Asia/Tokyo"]]


def test_read_chunk_gives_the_hand_worked_report(store, tmp_path):
    database.load_dir(store, write_data_dir(tmp_path))
    now = store.latest_poll_us()
    assert now == 1674565200000000  # 2023-01-24 13:00 UTC, the newest poll
    ids = store.report_store_ids(now)
    assert ids == ["allday", "late", "worked"]
    report = utils.uptime_report(*store.read_chunk(ids, now - utils.WEEK_US, now), now)
    from tests.conftest import TINY_REPORT

    assert report.to_dict("records") == TINY_REPORT


def test_report_store_ids_only_counts_polls_at_or_before_now(store):
    database.load_file(
        store,
        sources.STATUS_FILE,
        b"store_id,status,timestamp_utc\nearly,active,2023-01-24T10:00:00Z\nlater,active,2023-01-24T12:00:00Z\n",
    )
    ten = utils.datetime_to_us(dt.datetime(2023, 1, 24, 10, tzinfo=dt.UTC))
    assert store.report_store_ids(ten) == ["early"]
    assert store.report_store_ids(ten - 1) == []
    assert store.latest_poll_us() == ten + 2 * utils.HOUR_US


def test_read_chunk_finds_last_poll_long_before_the_window(store):
    database.load_file(
        store,
        sources.STATUS_FILE,
        b"store_id,status,timestamp_utc\n"
        b"old,inactive,2023-01-01T00:00:00Z\nold,active,2022-12-01T00:00:00Z\n"
        b"new,active,2023-01-24T12:00:00Z\n",
    )
    now = store.latest_poll_us()
    polls, hours, zones = store.read_chunk(["new", "old"], now - utils.WEEK_US, now)
    assert sorted(zip(polls["store_id"], polls["timestamp_us"], polls["active"])) == [
        ("new", now, True),
        ("old", utils.datetime_to_us(dt.datetime(2023, 1, 1, tzinfo=dt.UTC)), False),
    ]


def test_read_chunk_ignores_polls_after_now_and_other_stores(store):
    database.load_file(
        store,
        sources.STATUS_FILE,
        b"store_id,status,timestamp_utc\n"
        b"a,active,2023-01-24T10:00:00Z\na,inactive,2023-01-24T11:00:00Z\nb,active,2023-01-24T10:30:00Z\n",
    )
    now = utils.datetime_to_us(dt.datetime(2023, 1, 24, 10, 30, tzinfo=dt.UTC))
    polls = store.read_chunk(["a"], now - utils.WEEK_US, now)[0]
    assert list(zip(polls["store_id"], polls["active"])) == [("a", True)]


def test_report_lifecycle(store):
    store.create_report("a" * 32, None)
    report = store.find_report("a" * 32)
    assert (report["status"], report["progress"], report["as_of_us"]) == ("Running", {"done": 0, "total": None}, None)
    assert report["created_at"].tzinfo is not None
    store.update_report("a" * 32, as_of_us=1674565200000001, progress={"done": 1, "total": 3})
    payload = b"store_id,uptime\n" + b"".join(b"%d,1.0\n" % i for i in range(50))
    store.complete_report("a" * 32, payload, 50)
    report = store.find_report("a" * 32)
    assert (report["status"], report["row_count"], report["as_of_us"]) == ("Complete", 50, 1674565200000001)
    assert store.read_report_csv(report) == payload
    store.fail_report("a" * 32, "too late")  # a finished report stays as it ended
    assert store.find_report("a" * 32)["status"] == "Complete"
    assert store.find_report("b" * 32) is None


def test_stale_reports_are_failed_and_live_ones_kept(store):

    store.create_report("1" * 32, None)
    store.create_report("2" * 32, None)
    force_report_state(store, "1" * 32, heartbeat_age=120)
    assert store.fail_stale_reports(dt.timedelta(seconds=60)) == 1
    assert store.find_report("1" * 32)["status"] == "Failed"
    assert "heartbeat" in store.find_report("1" * 32)["error"]
    assert store.find_report("2" * 32)["status"] == "Running"
    force_report_state(store, "2" * 32, heartbeat_age=120)
    store.beat(["2" * 32])
    assert store.fail_stale_reports(dt.timedelta(seconds=60)) == 0


def test_list_reports_newest_first(store):
    for report_id in ("1" * 32, "2" * 32, "3" * 32):
        store.create_report(report_id, None)
    assert [r["report_id"] for r in store.list_reports(limit=2)] == ["3" * 32, "2" * 32]
    assert [r["report_id"] for r in store.list_reports(skip=2, limit=2)] == ["1" * 32]
    assert store.count_reports() == 3


def test_lease_many_readers_or_one_writer(store):
    # a free lease is had at the first try: the waits below are bounds, not pauses
    with store.data_lease("read", wait_seconds=10), store.data_lease("read", wait_seconds=10):
        with pytest.raises(database.LeaseTimeout):
            with store.data_lease("write", wait_seconds=0.2):
                pass
    with store.data_lease("write", wait_seconds=10):
        with pytest.raises(database.LeaseTimeout):
            with store.data_lease("read", wait_seconds=0.2):
                pass
    with store.data_lease("write", wait_seconds=10):  # released, so free again
        pass


def test_a_waiting_writer_goes_before_new_readers(store):
    """Writer preference: once a load waits, new reports wait behind it."""
    order = []
    reader_in = threading.Event()
    writer_waiting = threading.Event()
    release_reader = threading.Event()

    def first_reader():
        with store.data_lease("read"):
            reader_in.set()
            release_reader.wait(30)
        order.append("reader 1 out")

    def writer():
        with store.data_lease("write", wait_seconds=30):
            order.append("writer in")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    assert reader_in.wait(30)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    # the writer marks itself waiting on its first failed try: a new reader is refused from then on
    deadline = dt.datetime.now() + dt.timedelta(seconds=30)
    while dt.datetime.now() < deadline:
        try:
            with store.data_lease("read", wait_seconds=0):
                pass
        except database.LeaseTimeout:
            writer_waiting.set()
            break
    release_reader.set()
    for thread in threads:
        thread.join(30)
    assert writer_waiting.is_set()
    assert order == ["reader 1 out", "writer in"]


def test_a_lost_lease_is_reported(store, monkeypatch, caplog):
    monkeypatch.setattr(database, "LEASE_SECONDS", 0.2)
    with store.data_lease("read") as lost:
        store._release_lease("read", "nobody")  # harmless
        # take the lease away under the holder, as an expiry and a writer would
        if store.kind == "sqlite":
            store._connection().execute("DELETE FROM leases")
        else:
            store.db["locks"].update_one({"_id": "data"}, {"$set": {"readers": []}})
        assert lost.wait(30)
    assert [r.getMessage() for r in caplog.records if r.name == "database" and r.levelno == logging.ERROR] == [
        "the data read lease was lost (it expired or was taken)"
    ]


class _FakeTime:
    """database.time for one test: monotonic() stands still except when sleep() moves it on (if `moves`)."""

    def __init__(self, moves: bool = True):
        self.now, self.moves, self.pauses = 1_000.0, moves, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.moves:
            self.now += seconds


def test_a_lease_wait_doubles_its_pauses_from_20_ms_up_to_half_a_second(store, monkeypatch):
    clock = _FakeTime()
    monkeypatch.setattr(database, "time", clock)
    tries, real_try = [], store._try_lease

    def try_lease(mode, holder):  # refused eight times, then the store's own answer
        tries.append((mode, holder))
        return len(tries) > 8 and real_try(mode, holder)

    monkeypatch.setattr(store, "_try_lease", try_lease)
    with store.data_lease("write", wait_seconds=60):
        pass
    assert clock.pauses == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5, 0.5])
    holder = tries[0][1]
    assert isinstance(holder, str) and len(holder) == 32 and tries == [("write", holder)] * 9


@pytest.mark.parametrize(
    "mode, why", [("read", "a load is running or waiting"), ("write", "reports or a load are running")]
)
def test_a_lease_wait_gives_up_once_its_deadline_is_past_and_gives_back_what_it_marked(store, monkeypatch, mode, why):
    clock = _FakeTime()
    monkeypatch.setattr(database, "time", clock)
    tries, releases = [], []
    monkeypatch.setattr(store, "_try_lease", lambda m, h: tries.append((m, h)) and False)
    monkeypatch.setattr(store, "_release_lease", lambda m, h: releases.append((m, h)))
    with pytest.raises(database.LeaseTimeout) as caught:
        with store.data_lease(mode, wait_seconds=1):
            pytest.fail("the lease was never free")
    assert str(caught.value) == f"waited 1 s for the data {mode} lease ({why})"
    # 0.02 + 0.04 + 0.08 + 0.16 + 0.32 = 0.62 s is not past the 1 s deadline; 0.5 s more is
    assert clock.pauses == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.5])
    assert len(tries) == 7 and set(tries) == {tries[0]} and tries[0][0] == mode
    assert releases == [tries[0]]  # a writer's waiting mark dropped


def test_a_lease_wait_is_not_over_while_its_deadline_is_not_past(store, monkeypatch):
    clock = _FakeTime(moves=False)  # a coarse clock: no time seems to pass
    monkeypatch.setattr(database, "time", clock)
    tries, real_try = [], store._try_lease

    def try_lease(mode, holder):
        tries.append(mode)
        return len(tries) > 1 and real_try(mode, holder)

    monkeypatch.setattr(store, "_try_lease", try_lease)
    with store.data_lease("read", wait_seconds=0):  # a second try at the deadline itself
        pass
    assert clock.pauses == [0.02] and tries == ["read", "read"]


def test_a_daemon_thread_renews_the_lease_every_quarter_lease_through_a_failed_renewal(store, monkeypatch, caplog):
    monkeypatch.setattr(database, "LEASE_SECONDS", 0.2)
    waits = []

    class Event(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            return super().wait(timeout)

    monkeypatch.setattr(database, "threading", type("threading", (), {"Event": Event, "Thread": threading.Thread}))
    taken, renewals, third = [], [], threading.Event()
    real_try, real_renew = store._try_lease, store._renew_lease
    monkeypatch.setattr(
        store, "_try_lease", lambda mode, holder: taken.append((mode, holder)) or real_try(mode, holder)
    )

    def renew(mode, holder):
        me = threading.current_thread()
        if not renewals:
            renewals.append((mode, holder, "failed", me.name, me.daemon))
            if store.kind == "sqlite":
                raise sqlite3.OperationalError("disk I/O error")
            raise pymongo.errors.AutoReconnect("disk I/O error")
        renewals.append((mode, holder, real_renew(mode, holder), me.name, me.daemon))
        if len(renewals) == 3:
            third.set()
        return renewals[-1][2]

    monkeypatch.setattr(store, "_renew_lease", renew)
    with caplog.at_level(logging.WARNING, logger="database"):
        with store.data_lease("read") as lost:
            assert third.wait(30)
            assert not lost.is_set()
    ((mode, holder),) = taken
    name = f"lease-read-{holder[:8]}"
    assert renewals[:3] == [
        ("read", holder, "failed", name, True),
        ("read", holder, True, name, True),
        ("read", holder, True, name, True),
    ]
    assert waits and waits == pytest.approx([0.05] * len(waits))  # 0.2 s / 4
    assert [r.getMessage() for r in caplog.records if r.name == "database"] == [
        "could not renew the data read lease: disk I/O error"
    ]


def test_empty_store_and_seeding_once(store, tmp_path):
    assert store.is_empty()
    assert store.latest_poll_us() is None
    assert store.report_store_ids(FAR_FUTURE_US) == []
    directory = write_data_dir(tmp_path)
    assert len(database.seed_if_empty(store, directory)) == 3
    assert database.seed_if_empty(store, directory) == []
    assert not store.is_empty()


def test_cli_load_prints_counts(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MONGO_URI", raising=False)
    monkeypatch.setenv("EMBEDDED_DB", str(tmp_path / "cli.sqlite3"))
    directory = write_data_dir(tmp_path, status=TINY_STATUS + "x,active,garbage\n")
    assert database.main(["load", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "store_status.csv: 6 rows read, 5 loaded, 1 rejected" in out
    assert "line 7: unparseable timestamp 'garbage'" in out
    reopened = database.connect(path=tmp_path / "cli.sqlite3")
    assert reopened.report_store_ids(FAR_FUTURE_US) == ["allday", "late", "worked"]
    assert database.main(["migrate"]) == 0


def test_polls_frame_types(store, tmp_path):
    database.load_dir(store, write_data_dir(tmp_path))
    polls, hours, zones = store.read_chunk(["worked", "allday"], 0, FAR_FUTURE_US)
    assert polls["timestamp_us"].dtype == "int64" and polls["active"].dtype == bool
    assert list(hours.columns) == ["store_id", "day", "start_s", "end_s"]
    assert isinstance(zones, pd.DataFrame) and list(zones.columns) == ["store_id", "timezone_str"]


class ShuffledChunks:
    """A reportChunks collection whose find answers in an order of its own (a real server promises no
    order without a sort): reversed, with the middle ones swapped; a requested sort is honoured."""

    class Cursor:
        def __init__(self, docs):
            self.docs = docs

        def sort(self, key, direction=1):
            key, direction = key[0] if isinstance(key, list) else (key, direction)
            return ShuffledChunks.Cursor(sorted(self.docs, key=lambda d: d[key], reverse=direction == -1))

        def __iter__(self):
            return iter(self.docs)

    def __init__(self, collection):
        self.collection = collection

    def find(self, *args, **kwargs):
        docs = list(self.collection.find(*args, **kwargs))[::-1]
        if len(docs) > 3:
            docs[1], docs[2] = docs[2], docs[1]
        return ShuffledChunks.Cursor(docs)

    def __getattr__(self, name):
        return getattr(self.collection, name)


def test_report_csv_chunks_reassembled_in_order_whatever_order_they_come_in(monkeypatch):
    import store_mongo

    store = database.connect("mongomock://", "chunks")
    monkeypatch.setattr(store_mongo, "CSV_CHUNK_BYTES", 7)
    payload = b"store_id,uptime\n" + b"".join(b"%d,1.0\n" % i for i in range(50))
    store.create_report("a" * 32, None)
    store.complete_report("a" * 32, payload, 50)
    real_db = store.db

    class Db:
        def __getitem__(self, name):
            return ShuffledChunks(real_db[name]) if name == store_mongo.REPORT_CHUNKS else real_db[name]

        def __getattr__(self, name):
            return getattr(real_db, name)

    monkeypatch.setattr(store, "_db", Db())  # what `store.db` answers when set
    assert list(d["n"] for d in store.db[store_mongo.REPORT_CHUNKS].find({}))[:3] != [0, 1, 2]  # shuffled
    assert store.read_report_csv(store.find_report("a" * 32)) == payload  # 7-byte chunks, back in order


# --------------------------------------------------------------------------- pinned by mutation testing


def test_list_reports_gives_twenty_by_default(store):
    ids = [f"{n:032d}" for n in range(21)]  # created in this order, so newest first is the reverse
    for report_id in ids:
        store.create_report(report_id, None)
    assert [r["report_id"] for r in store.list_reports()] == ids[::-1][:20]


def test_a_heartbeat_younger_than_the_limit_is_not_stale(store):

    store.create_report("1" * 32, None)
    force_report_state(store, "1" * 32, heartbeat_age=45)
    assert store.fail_stale_reports(dt.timedelta(seconds=60)) == 0  # 45 s < 60 s
    assert store.find_report("1" * 32)["status"] == "Running"
    assert store.fail_stale_reports(dt.timedelta(seconds=30)) == 1  # 45 s > 30 s
    assert store.find_report("1" * 32)["status"] == "Failed"


def test_delete_finished_reports_by_age_and_by_count_never_a_running_one(store):
    ids = [f"{n}" * 32 for n in range(1, 6)]  # created in this order: 5 is the newest
    for report_id in ids:
        store.create_report(report_id, None)
    for report_id in ids[:3]:
        store.complete_report(report_id, b"store_id\n" + report_id.encode() + b"\n", 1)
    store.fail_report(ids[3], "broken")  # ids[4] stays Running
    now = database.now_utc()
    force_report_state(store, ids[0], finished=now - dt.timedelta(hours=2))

    def listed():
        return sorted(r["report_id"] for r in store.list_reports(limit=100))

    # by age alone (keep many): only the one finished two hours ago is before an hour ago
    assert store.delete_finished_reports(now - dt.timedelta(hours=1), keep_newest=10) == [ids[0]]
    assert listed() == ids[1:]
    assert store.read_report_csv({"report_id": ids[0], "csv_bytes": None}) == b""  # its CSV went with it
    # by count alone: of the finished 2, 3, 4 (newest by creation: 4) keep the newest 1
    assert store.delete_finished_reports(now - dt.timedelta(hours=1), keep_newest=1) == [ids[1], ids[2]]
    assert listed() == ids[3:]
    assert store.read_report_csv({"report_id": ids[1], "csv_bytes": None}) == b""
    # keep none (or fewer than none): every finished one goes, the Running one stays
    store.create_report("6" * 32, None)
    store.complete_report("6" * 32, b"x\n", 0)
    assert store.delete_finished_reports(now - dt.timedelta(hours=1), keep_newest=0) == [ids[3], "6" * 32]
    assert listed() == [ids[4]]
    store.complete_report(ids[4], b"y\n", 0)
    assert store.delete_finished_reports(now + dt.timedelta(hours=1), keep_newest=-3) == [ids[4]]
    assert listed() == []


def test_delete_finished_reports_by_age_with_a_far_future_cutoff(store):
    for report_id in ("1" * 32, "2" * 32):
        store.create_report(report_id, None)
        store.complete_report(report_id, b"x\n", 0)
    assert store.delete_finished_reports(database.now_utc() + dt.timedelta(hours=1), keep_newest=10) == [
        "1" * 32,
        "2" * 32,
    ]
    assert store.count_reports() == 0


def test_a_report_record_keeps_the_requested_as_of_and_the_csv_size(store):
    store.create_report("a" * 32, 1674565200000001)
    assert store.find_report("a" * 32)["requested_as_of_us"] == 1674565200000001
    payload = b"store_id,uptime\nx,1.0\n"
    store.complete_report("a" * 32, payload, 1)
    report = store.find_report("a" * 32)
    assert (report["requested_as_of_us"], report["csv_bytes"]) == (1674565200000001, 22)
    assert [r["csv_bytes"] for r in store.list_reports()] == [22]


REPORT_RECORD_FIELDS = {
    "report_id",
    "status",
    "created_at",
    "heartbeat_at",
    "finished_at",
    "requested_as_of_us",
    "as_of_us",
    "progress",
    "trigger",
    "row_count",
    "error",
    "csv_bytes",
    "as_of_after_newest_poll",
}


def test_every_store_gives_report_records_of_the_same_fields(store):
    store.create_report("a" * 32, None)
    assert set(store.find_report("a" * 32)) == REPORT_RECORD_FIELDS
    store.update_report("a" * 32, as_of_us=1674565200000001, progress={"done": 1, "total": 1})
    store.complete_report("a" * 32, b"store_id\n", 0)
    store.create_report("b" * 32, None)
    store.fail_report("b" * 32, "broken")
    assert set(store.find_report("a" * 32)) == REPORT_RECORD_FIELDS
    assert [set(record) for record in store.list_reports()] == [REPORT_RECORD_FIELDS] * 2


def test_a_stored_csv_shorter_than_its_record_says_is_refused(store):
    store.create_report("a" * 32, None)
    store.complete_report("a" * 32, b"store_id\nx\n", 1)
    report = store.find_report("a" * 32)
    assert store.read_report_csv(report) == b"store_id\nx\n"
    with pytest.raises(ValueError, match=f"^report {'a' * 32}: stored CSV is incomplete$"):
        store.read_report_csv({**report, "csv_bytes": 12})
    assert store.read_report_csv({**report, "csv_bytes": None}) == b"store_id\nx\n"  # size unknown: not checked


@pytest.mark.parametrize("ids", [["bare"], []], ids=["a store with no hours or zone", "no stores"])
def test_read_chunk_types_hold_when_there_are_no_hours_or_zones(store, ids):
    """Empty frames keep the types of full ones: int64 days and seconds, text ids and zone names."""
    database.load_file(store, sources.STATUS_FILE, b"store_id,status,timestamp_utc\nbare,active,2023-01-24T10:00:00Z\n")
    polls, hours, zones = store.read_chunk(ids, 0, FAR_FUTURE_US)
    assert len(polls) == len(ids) and hours.empty and zones.empty
    assert [str(hours[c].dtype) for c in ("day", "start_s", "end_s")] == ["int64"] * 3
    assert all(
        pd.api.types.is_string_dtype(frame[column])
        for frame, column in ((hours, "store_id"), (zones, "store_id"), (zones, "timezone_str"))
    )


def test_hours_read_back_as_int64_seconds(store, tmp_path):
    database.load_dir(store, write_data_dir(tmp_path))
    hours = store.read_chunk(["worked"], 0, FAR_FUTURE_US)[1]
    assert [str(hours[c].dtype) for c in ("day", "start_s", "end_s")] == ["int64"] * 3
    assert hours[["day", "start_s", "end_s"]].to_numpy().tolist() == hours_rows_of_worked()


def hours_rows_of_worked() -> list[list[int]]:
    """TINY_HOURS' one row, worked out by hand: (day, seconds of its start, seconds of its end)."""
    _, line = TINY_HOURS.strip().splitlines()
    store_id, day, start, end = line.split(",")
    seconds = [sum(int(part) * unit for part, unit in zip(t.split(":"), (3600, 60, 1))) for t in (start, end)]
    return [[int(day), *seconds]]


def test_replacing_hours_and_zones_reports_the_rows_written(store):
    calls = []
    hours = pd.DataFrame(
        {"store_id": ["a", "a", "b"], "day": [0, 1, 2], "start_s": [0, 0, 3600], "end_s": [60, 86399, 7200]}
    )
    assert store.replace_hours(hours, calls.append) == 3
    assert (
        store.replace_zones(pd.DataFrame({"store_id": ["a", "b"], "timezone_str": ["UTC", "Asia/Tokyo"]}), calls.append)
        == 2
    )
    assert calls == [3, 2]
    got = store.read_chunk(["a", "b"], 0, FAR_FUTURE_US)[1]
    assert sorted(map(tuple, got.astype(str).to_numpy().tolist())) == [
        ("a", "0", "0", "60"),
        ("a", "1", "0", "86399"),
        ("b", "2", "3600", "7200"),
    ]


def test_loading_no_polls_writes_nothing(store):
    calls = []
    empty = pd.DataFrame(
        {
            "store_id": pd.Series([], dtype=object),
            "timestamp_us": pd.Series([], dtype="int64"),
            "active": pd.Series([], dtype=bool),
        }
    )
    assert store.load_polls(empty, calls.append) == 0
    assert (calls, store.latest_poll_us(), store.is_empty()) == ([], None, True)


def test_of_two_waiting_writers_the_first_marked_goes_first_then_the_other(store):
    """Only the first writer in line marks itself waiting; so when the reader leaves, it gets the lease
    (the second does not block it), and the second gets it after."""
    assert store._try_lease("read", "reader")
    assert not store._try_lease("write", "w1")  # marks itself waiting
    assert not store._try_lease("write", "w2")  # someone is already waiting: no mark
    assert not store._try_lease("read", "late reader")  # behind the waiting writer
    store._release_lease("read", "reader")
    assert store._try_lease("write", "w1")
    assert not store._try_lease("write", "w2")
    store._release_lease("write", "w1")
    assert store._try_lease("write", "w2")


# --------------------------------------------------------------------------- database.py itself (mutation testing)


def test_connect_from_env_names_the_mongo_database(monkeypatch, tmp_path):
    monkeypatch.setenv("MONGO_URI", "mongomock://")
    monkeypatch.setenv("MONGO_DB", "elsewhere")
    assert database.connect_from_env().spec() == {"uri": "mongomock://", "name": "elsewhere"}
    monkeypatch.delenv("MONGO_DB")
    assert database.connect_from_env().spec() == {"uri": "mongomock://", "name": "store_monitoring"}


def test_load_file_labels_its_summary_and_waits_no_longer_than_asked(store):
    upload = b"store_id,status,timestamp_utc\na,active,2023-01-24T10:00:00Z\n"
    assert database.load_file(store, sources.STATUS_FILE, upload, label="upload.csv")["file"] == "upload.csv"
    assert database.load_file(store, sources.STATUS_FILE, upload)["file"] == "store_status.csv"
    with store.data_lease("read", wait_seconds=10):  # a report is reading: the load may wait 0.2 s only
        with pytest.raises(database.LeaseTimeout):
            database.load_file(store, sources.STATUS_FILE, upload, lease_wait_seconds=0.2)


def test_seeding_checks_again_under_the_lease_that_the_store_is_empty(store, tmp_path, monkeypatch):
    """Two processes starting at once: both saw an empty store, the other one seeded it first."""
    database.load_dir(store, write_data_dir(tmp_path / "first"))
    before = snapshot(store)
    answers = iter([True])  # the first look (before the lease) still saw it empty
    real = store.is_empty
    monkeypatch.setattr(store, "is_empty", lambda: next(answers, None) or real())
    other = write_data_dir(
        tmp_path / "second", status="store_id,status,timestamp_utc\nnew,active,2023-01-24T10:00:00Z\n"
    )
    assert database.seed_if_empty(store, other) == []
    assert snapshot(store) == before


def test_data_dir_problem_names_the_files_it_looked_for(tmp_path):
    assert database.data_dir_problem(tmp_path) == (
        f"DATA_DIR {tmp_path} holds none of store_status.csv, menu_hours.csv, timezones.csv"
    )


def test_print_summaries_lists_notes_the_first_rejects_and_how_many_more():
    import io

    summary = {
        "file": "f.csv",
        "rows_read": 9,
        "loaded": 5,
        "rejected": 4,
        "notes": ["a note"],
        "rejects": [{"line": n, "reason": f"bad {n}"} for n in (2, 3, 5, 8)],
    }
    out = io.StringIO()
    database.print_summaries(
        [summary, {**summary, "file": "g.csv", "rejected": 2, "notes": [], "rejects": summary["rejects"][:2]}],
        first=3,
        out=out,
    )
    assert out.getvalue() == (
        "f.csv: 9 rows read, 5 loaded, 4 rejected\n  note: a note\n"
        "  line 2: bad 2\n  line 3: bad 3\n  line 5: bad 5\n  ... and 1 more\n"
        "g.csv: 9 rows read, 5 loaded, 2 rejected\n  line 2: bad 2\n  line 3: bad 3\n"
    )


def test_print_summaries_writes_to_stdout_by_default_without_notes_and_twenty_rejects_at_most(capsys):
    rejects = [{"line": n, "reason": "bad"} for n in range(2, 23)]  # 21 of them
    database.print_summaries([{"file": "f.csv", "rows_read": 21, "loaded": 0, "rejected": 21, "rejects": rejects}])
    assert capsys.readouterr().out == (
        "f.csv: 21 rows read, 0 loaded, 21 rejected\n"
        + "".join(f"  line {n}: bad\n" for n in range(2, 22))
        + "  ... and 1 more\n"
    )


def test_cli_lists_twenty_rejects_by_default_then_how_many_more(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MONGO_URI", raising=False)
    monkeypatch.setenv("EMBEDDED_DB", str(tmp_path / "cli.sqlite3"))
    bad = "".join(f"x{n},active,garbage\n" for n in range(21))  # lines 7 to 27
    assert database.main(["load", str(write_data_dir(tmp_path, status=TINY_STATUS + bad))]) == 0
    out = capsys.readouterr().out
    assert "line 26: unparseable timestamp 'garbage'" in out and "line 27:" not in out
    assert "  ... and 1 more\n" in out
    assert (
        database.main(["load", str(write_data_dir(tmp_path / "again", status=TINY_STATUS + bad)), "--show", "1"]) == 0
    )
    assert "rejected\n  line 7: unparseable timestamp 'garbage'\n  ... and 20 more\n" in capsys.readouterr().out


def test_cli_logs_at_info_level_as_level_then_message(tmp_path):
    # a subprocess, since under pytest the root logger already has handlers and basicConfig does nothing
    path = tmp_path / "cli.sqlite3"
    connection = database.connect(path=path)._connection()
    connection.execute("DROP INDEX pollBlocks_span")
    connection.execute("CREATE INDEX pollBlocks_span ON pollBlocks (polls)")  # not the declared index
    env = {**os.environ, "EMBEDDED_DB": str(path)}
    env.pop("MONGO_URI", None)
    done = subprocess.run(
        [sys.executable, "database.py", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "INFO index pollBlocks_span changed: rebuilding it\n"


def test_cli_load_draws_progress_bars_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MONGO_URI", raising=False)
    monkeypatch.setenv("EMBEDDED_DB", str(tmp_path / "cli.sqlite3"))
    directory = write_data_dir(tmp_path)
    assert database.main(["load", str(directory)]) == 0
    assert "loading" not in capsys.readouterr().err  # not a terminal: no bars

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert database.main(["load", str(directory)]) == 0
    bars = terminal.getvalue()
    for file_kind, rows in (("store_status.csv", 5), ("menu_hours.csv", 1), ("timezones.csv", 1)):
        assert f"loading {file_kind}: 100%" in bars and f" {rows}/{rows} " in bars


def test_cli_asks_an_unreachable_mongodb_once_quietly_and_for_cli_ping_seconds(tmp_path, monkeypatch, capsys, caplog):
    import store_mongo

    asked = []

    def ping(self, timeout=store_mongo.PING_SECONDS, quiet=False):
        asked.append({"timeout": timeout, "quiet": quiet})
        return False  # the server does not answer

    def migrate(self):
        raise AssertionError("the command went on to the indexes of a server that does not answer")

    monkeypatch.setattr(store_mongo.MongoStore, "ping", ping)
    monkeypatch.setattr(store_mongo.MongoStore, "migrate", migrate)
    monkeypatch.setattr(database, "CLI_PING_SECONDS", 3.0)
    monkeypatch.setenv("MONGO_URI", f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=250")
    assert database.main(["load", str(write_data_dir(tmp_path))]) == 2
    assert asked == [{"timeout": 3.0, "quiet": True}]  # one short ask, no warning of its own
    assert (
        capsys.readouterr().err == "database error: MongoDB at MONGO_URI does not answer within 3 s "
        "(is it running and reachable?)\n"
    )
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_cli_index_problems_and_database_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MONGO_URI", raising=False)
    path = tmp_path / "broken.sqlite3"
    monkeypatch.setenv("EMBEDDED_DB", str(path))
    with pytest.raises(SystemExit):
        database.main([])  # a command is required
    connection = database.connect(path=path)._connection()
    connection.execute("DROP INDEX pollBlocks_span")
    connection.execute("CREATE TABLE pollBlocks_span (x)")  # the index's name is taken
    capsys.readouterr()
    assert database.main(["migrate"]) == 1
    assert capsys.readouterr().err == "index problem: pollBlocks_span: there is already a table named pollBlocks_span\n"
    assert database.main(["load", str(write_data_dir(tmp_path / "data"))]) == 2
    assert capsys.readouterr().err == (
        "database error: the indexes could not be made (pollBlocks_span: there is already a table named "
        "pollBlocks_span); run `python database.py migrate`\n"
    )
    monkeypatch.setenv("EMBEDDED_DB", str(tmp_path))  # a folder: SQLite cannot open it
    assert database.main(["migrate"]) == 2
    assert capsys.readouterr().err == "database error: OperationalError: unable to open database file\n"


def test_load_dir_notes_a_missing_file_and_a_wrong_header_and_loads_the_rest(store, tmp_path, capsys):
    directory = write_data_dir(tmp_path)
    (directory / "menu_hours.csv").unlink()
    (directory / "timezones.csv").write_text("store,zone\na,UTC\n")
    capsys.readouterr()
    summaries = database.load_dir(store, directory)
    assert capsys.readouterr().err == ""  # no progress bars unless asked for
    empty = {"rows_read": 0, "loaded": 0, "rejected": 0, "rejects": []}
    assert summaries[0] == {"file": str(directory / "menu_hours.csv"), **empty, "notes": ["file not found, not loaded"]}
    assert summaries[2:] == [
        {
            "file": str(directory / "timezones.csv"),
            **empty,
            "notes": [
                "whole file rejected: timezones.csv: wrong header 'store,zone': expected columns "
                "store_id,timezone_str (missing store_id, timezone_str); check the file and its delimiter (comma)"
            ],
        },
    ]
    assert (summaries[1]["loaded"], summaries[1]["rejected"]) == (5, 0)
    assert store.report_store_ids(FAR_FUTURE_US) == ["allday", "late", "worked"]


def test_describe_error_keeps_the_first_line_without_pymongo_details_and_at_most_200_characters():
    assert database.describe_error(RuntimeError("no server\nsecond line")) == "RuntimeError: no server"
    assert database.describe_error(OSError()) == "OSError: OSError"  # no message: the type's name
    assert database.describe_error(RuntimeError("a b, Timeout: 30s, Timeout: 5s")) == "RuntimeError: a b"
    assert database.describe_error(RuntimeError("a b, Topology Description: <x>")) == "RuntimeError: a b"
    assert database.describe_error(RuntimeError("a b (configured timeouts: 1s)")) == "RuntimeError: a b"
    assert database.describe_error(RuntimeError("y" * 250)) == "RuntimeError: " + "y" * 200


def test_connect_names_the_mongo_database():
    assert database.connect("mongomock://", "other").spec() == {"uri": "mongomock://", "name": "other"}


def test_load_dir_draws_progress_bars_when_asked(store, tmp_path, capsys):
    capsys.readouterr()
    database.load_dir(store, write_data_dir(tmp_path), progress=True)
    err = capsys.readouterr().err
    for file_kind, rows in (("store_status.csv", 5), ("menu_hours.csv", 1), ("timezones.csv", 1)):
        assert f"loading {file_kind}: 100%" in err and f"| {rows}/{rows} [" in err and "row/s]" in err
    assert err.endswith("\n")  # the finished bars stay on screen


# ------------------------------------------------------------- the stores' decorated methods (mutation run K)


STALE = "the worker running this report stopped (no heartbeat); trigger it again"


def test_a_failed_report_records_when_it_ended(store):

    for report_id in ("f" * 32, "s" * 32):
        store.create_report(report_id, None)
    store.fail_report("f" * 32, "the engine stopped")
    force_report_state(store, "s" * 32, heartbeat_age=120)
    assert store.fail_stale_reports(dt.timedelta(seconds=60)) == 1
    for report_id, error in (("f" * 32, "the engine stopped"), ("s" * 32, STALE)):
        report = store.find_report(report_id)
        assert (report["status"], report["error"]) == ("Failed", error)
        assert report["finished_at"] is not None and report["finished_at"] >= report["created_at"]


def test_an_empty_csv_is_stored_and_read_back_empty(store):
    store.create_report("e" * 32, None)
    store.complete_report("e" * 32, b"", 0)
    report = store.find_report("e" * 32)
    assert (report["status"], report["csv_bytes"]) == ("Complete", 0)
    assert store.read_report_csv(report) == b""


def test_a_progress_update_is_a_heartbeat(store):

    store.create_report("h" * 32, None)
    force_report_state(store, "h" * 32, heartbeat_age=120)
    store.update_report("h" * 32, progress={"done": 1, "total": 2})
    assert store.fail_stale_reports(dt.timedelta(seconds=60)) == 0
    assert store.find_report("h" * 32)["status"] == "Running"
