"""Ingest into MongoDB and reading back (database.py), on mongomock: counts, idempotency, replacement, chunks."""
from __future__ import annotations

import numpy as np
import pytest

import database
import sources
import utils
from tests.conftest import TINY_HOURS, TINY_STATUS, TINY_ZONES, write_data_dir


@pytest.fixture
def store():
    """A fresh, empty mongomock database."""
    return database.connect(None, "test")


def snapshot(db) -> dict:
    """Every document of the three data collections, without ids, in a stable order."""
    return {
        name: sorted(
            (tuple(sorted((k, str(v)) for k, v in doc.items() if k != "_id")) for doc in db[name].find()),
        )
        for name in (database.STATUS, database.HOURS, database.ZONES)
    }


def test_load_dir_counts_and_indexes(store, tmp_path):
    summaries = database.load_dir(store.db, write_data_dir(tmp_path))
    assert [(s["rows_read"], s["loaded"], s["rejected"]) for s in summaries] == [(5, 5, 0), (1, 1, 0), (1, 1, 0)]
    info = store.db[database.STATUS].index_information()
    assert info["store_time"]["unique"] is True
    assert store.db[database.ZONES].index_information()["store"]["unique"] is True
    assert "store" in store.db[database.HOURS].index_information()
    doc = store.db[database.STATUS].find_one({"store_id": "worked", "status": "active"}, {"_id": 0})
    assert doc["timestamp_us"] == 1674555240000000
    assert doc["timestamp_utc"].isoformat().startswith("2023-01-24T10:14:00")


def test_loading_twice_changes_nothing(store, tmp_path):
    directory = write_data_dir(tmp_path)
    database.load_dir(store.db, directory)
    first = snapshot(store.db)
    summaries = database.load_dir(store.db, directory)
    assert snapshot(store.db) == first
    assert [s["loaded"] for s in summaries] == [5, 1, 1]


def test_bad_rows_reported_good_rows_loaded(store, tmp_path):
    status = TINY_STATUS + "bad,maybe,2023-01-24 13:00:00 UTC\nbad,active,not a time\n"
    hours = TINY_HOURS + "worked,9,09:00:00,12:00:00\n"
    zones = TINY_ZONES + "other,Not/AZone\n"
    summaries = database.load_dir(store.db, write_data_dir(tmp_path, status, hours, zones))
    by_file = {s["file"].rsplit("/", 1)[-1]: s for s in summaries}
    assert by_file["store_status.csv"]["loaded"] == 5
    assert [(r["line"], r["reason"].split(" '")[0]) for r in by_file["store_status.csv"]["rejects"]] == [
        (7, "unknown status"), (8, "unparseable timestamp")
    ]
    assert by_file["menu_hours.csv"]["rejects"][0]["line"] == 3
    assert by_file["timezones.csv"]["rejects"][0]["reason"] == "unknown timezone name 'Not/AZone'"
    assert store.db[database.STATUS].count_documents({}) == 5
    for summary in summaries:
        assert summary["rows_read"] == summary["loaded"] + summary["rejected"]


def test_wrong_header_rejects_only_that_file(store, tmp_path):
    directory = write_data_dir(tmp_path, zones="store;timezone_str\nworked;UTC\n")
    summaries = database.load_dir(store.db, directory)
    assert summaries[2]["loaded"] == 0 and "whole file rejected" in summaries[2]["notes"][0]
    assert store.db[database.STATUS].count_documents({}) == 5


def test_newer_poll_status_wins_across_loads(store, tmp_path):
    database.load_dir(store.db, write_data_dir(tmp_path / "a"))
    database.load_file(store.db, sources.STATUS_FILE,
                       b"store_id,status,timestamp_utc\nlate,inactive,2023-01-24T13:00:00Z\n")
    docs = list(store.db[database.STATUS].find({"store_id": "late"}))
    assert [d["status"] for d in docs] == ["inactive"]


def test_newer_hours_and_zone_replace_a_stores_rows(store, tmp_path):
    database.load_dir(store.db, write_data_dir(tmp_path))
    database.load_file(store.db, sources.HOURS_FILE,
                       b"store_id,day,start_time_local,end_time_local\nworked,2,10:00:00,11:00:00\n"
                       b"worked,3,10:00:00,11:00:00\n")
    database.load_file(store.db, sources.ZONES_FILE, b"store_id,timezone_str\nworked,Asia/Tokyo\n")
    hours = sorted(d["day"] for d in store.db[database.HOURS].find({"store_id": "worked"}))
    assert hours == [2, 3]
    assert store.db[database.ZONES].find_one({"store_id": "worked"})["timezone_str"] == "Asia/Tokyo"


def test_read_chunk_feeds_the_engine_like_the_csv_path(store, tmp_path):
    directory = write_data_dir(tmp_path)
    database.load_dir(store.db, directory)
    now = database.latest_poll_us(store.db)
    assert now == 1674565200000000
    ids = database.report_store_ids(store.db, now)
    assert ids == ["allday", "late", "worked"]
    from_db = utils.uptime_report(*database.read_chunk(store.db, ids, now - utils.WEEK_US, now), now)
    parsed = sources.read_data_dir(directory)
    from_csv = utils.uptime_report(
        parsed[sources.STATUS_FILE].frame, parsed[sources.HOURS_FILE].frame, parsed[sources.ZONES_FILE].frame, now
    )
    assert from_db.to_dict("records") == from_csv.to_dict("records")


def test_read_chunk_finds_last_poll_long_before_the_window(store):
    database.load_file(store.db, sources.STATUS_FILE,
                       b"store_id,status,timestamp_utc\n"
                       b"old,inactive,2023-01-01T00:00:00Z\nold,active,2022-12-01T00:00:00Z\n"
                       b"new,active,2023-01-24T12:00:00Z\n")
    now = database.latest_poll_us(store.db)
    polls, hours, zones = database.read_chunk(store.db, ["new", "old"], now - utils.WEEK_US, now)
    assert sorted(zip(polls["store_id"], polls["active"])) == [("new", True), ("old", False)]


def test_report_csv_survives_chunking(store, monkeypatch):
    monkeypatch.setattr(database, "CSV_CHUNK_BYTES", 7)
    database.create_report(store.db, "a" * 32, None)
    payload = b"store_id,uptime\n" + b"".join(b"%d,1.0\n" % i for i in range(50))
    database.complete_report(store.db, "a" * 32, payload, 50)
    report = database.find_report(store.db, "a" * 32)
    assert report["csv_chunks"] == int(np.ceil(len(payload) / 7))
    assert database.read_report_csv(store.db, report) == payload


def test_list_reports_newest_first(store):
    for report_id in ("1" * 32, "2" * 32, "3" * 32):
        database.create_report(store.db, report_id, None)
    assert [r["report_id"] for r in database.list_reports(store.db, limit=2)] == ["3" * 32, "2" * 32]


def test_cli_load_prints_counts(tmp_path, capsys):
    directory = write_data_dir(tmp_path, status=TINY_STATUS + "x,active,garbage\n")
    assert database.main(["load", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "store_status.csv: 6 rows read, 5 loaded, 1 rejected" in out
    assert "line 7: unparseable timestamp 'garbage'" in out
