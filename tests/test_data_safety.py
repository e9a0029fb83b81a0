"""Whole data or none (the contract on every store): the upload journal, a writer that stops part-way,
removing polls, what is stored, a report's life (Complete only with its CSV stored and written), the
lease given back when its holder raises, and retention as each report finishes."""

from __future__ import annotations

import threading

import pytest

import database
import sources
from reportGenerator import ReportGenerator
from tests.conftest import FAR_FUTURE_US, TINY_HOURS, TINY_STATUS, TINY_ZONES, polls_of

POLLS = TINY_STATUS.encode()
MANY_POLLS = (
    "store_id,status,timestamp_utc\n"
    + "".join(
        f"s{i % 50},{'active' if i % 3 else 'inactive'},2023-01-2{i % 7} {i % 24:02d}:{i % 60:02d}:00.{i:06d} UTC\n"
        for i in range(2_500)
    )
).encode()
SMALL_BATCH = 1_000  # so MANY_POLLS is written in three batches by every store


@pytest.fixture
def store(new_store, monkeypatch):
    """A fresh, empty store of each kind, writing in batches of SMALL_BATCH rows."""
    import store_sqlite

    monkeypatch.setattr(database, "BATCH_SIZE", SMALL_BATCH)
    monkeypatch.setattr(store_sqlite, "WRITE_BATCH_ROWS", SMALL_BATCH)
    return new_store


class Stop(RuntimeError):
    """Raised by a writer's progress callback to stop it part-way, as a lost lease or a crash would."""


def stored_polls(store: database.Store) -> int:
    return store.data_summary()["polls"]


# --------------------------------------------------------------------------- the journal


def test_an_upload_is_journaled_complete_with_its_counts(store):
    bad = POLLS + b"worked,asleep,2023-01-24 10:00:00 UTC\n"
    database.load_file(store, sources.STATUS_FILE, bad, label="polls.csv")
    [upload] = store.list_uploads()
    assert (upload["file"], upload["kind"], upload["status"]) == ("polls.csv", sources.STATUS_FILE, "Complete")
    assert (upload["loaded"], upload["rejected"], upload["written"]) == (5, 1, 5)
    assert upload["at"].tzinfo is not None and upload["finished_at"] >= upload["at"]
    assert len(upload["upload_id"]) == 32 and upload["error"] is None
    assert store.unfinished_upload() is None


def test_uploads_are_listed_newest_first_and_limited(store):
    for name in ("a.csv", "b.csv", "c.csv"):
        database.load_file(store, sources.ZONES_FILE, TINY_ZONES.encode(), label=name)
    assert [u["file"] for u in store.list_uploads()] == ["c.csv", "b.csv", "a.csv"]
    assert [u["file"] for u in store.list_uploads(limit=2)] == ["c.csv", "b.csv"]


def _stop_after_first_batch(store, monkeypatch):
    """Make the data writer stop after its first batch (the progress callback raises there)."""
    real = database._write_upload

    def stopping(store_, kind, parsed, label, digest, lost, on_rows=database.no_progress):
        def on_first(rows):
            raise Stop("stopped part-way")

        return real(store_, kind, parsed, label, digest, lost, on_first)

    monkeypatch.setattr(database, "_write_upload", stopping)


def test_a_writer_stopped_part_way_marks_its_upload_failed_and_reports_refuse_partial_data(store, monkeypatch):
    database.load_file(store, sources.STATUS_FILE, POLLS)
    before = stored_polls(store)
    _stop_after_first_batch(store, monkeypatch)
    with pytest.raises(Stop):
        database.load_file(store, sources.STATUS_FILE, MANY_POLLS, label="big.csv")
    newest = store.list_uploads(1)[0]
    assert (newest["file"], newest["status"], newest["error"]) == ("big.csv", "Failed", "stopped part-way")
    unfinished = store.unfinished_upload()
    if newest["written"] == 0:  # all or nothing (SQLite): nothing of it is visible, nothing is unfinished
        assert stored_polls(store) == before and unfinished is None
    else:  # journaled (MongoDB): the partial rows are visible, so reports refuse to run until it is finished
        assert stored_polls(store) > before
        assert unfinished["upload_id"] == newest["upload_id"]
        generator = ReportGenerator(store, "unused", workers=1)
        store.create_report("f" * 32, None)
        generator.run("f" * 32)
        failed = store.find_report("f" * 32)
        assert failed["status"] == "Failed" and newest["upload_id"] in failed["error"]
        assert "upload the same file again" in failed["error"]


def test_uploading_the_same_file_again_finishes_an_unfinished_upload(store, monkeypatch):
    _stop_after_first_batch(store, monkeypatch)
    with pytest.raises(Stop):
        database.load_file(store, sources.STATUS_FILE, MANY_POLLS)
    monkeypatch.undo()
    database.load_file(store, sources.STATUS_FILE, MANY_POLLS)
    assert store.unfinished_upload() is None
    assert stored_polls(store) == len(
        {line.split(",")[0] + line.split(",")[2] for line in MANY_POLLS.decode().splitlines()[1:]}
    )


def test_another_file_does_not_finish_an_unfinished_upload_but_dismissing_it_does(store, monkeypatch):
    _stop_after_first_batch(store, monkeypatch)
    with pytest.raises(Stop):
        database.load_file(store, sources.STATUS_FILE, MANY_POLLS)
    monkeypatch.undo()
    failed = store.list_uploads(1)[0]
    database.load_file(store, sources.STATUS_FILE, POLLS)
    if failed["written"]:
        assert store.unfinished_upload()["upload_id"] == failed["upload_id"]
    assert store.dismiss_upload(failed["upload_id"]) is True
    assert store.unfinished_upload() is None
    assert store.dismiss_upload("0" * 32) is False


def test_a_lost_lease_stops_the_writer_and_its_upload_fails(store):
    parsed = sources.read_store_status(MANY_POLLS)
    lost = threading.Event()
    lost.set()
    with pytest.raises(database.LeaseLost):
        database._write_upload(store, sources.STATUS_FILE, parsed, "big.csv", "d" * 64, lost)
    upload = store.list_uploads(1)[0]
    assert upload["status"] == "Failed" and "lease was lost" in upload["error"]
    assert upload["written"] <= SMALL_BATCH  # it stopped at its first batch


# --------------------------------------------------------------------------- removing and summarising


def test_delete_polls_by_store_and_inclusive_bounds(store):
    database.load_file(store, sources.STATUS_FILE, POLLS)
    first, second = sorted(polls_of(store, "worked")["timestamp_us"])
    assert store.delete_polls("worked", first + 1, second - 1) == 0
    assert store.delete_polls("worked", second, second) == 1
    assert list(polls_of(store, "worked")["timestamp_us"]) == [first]
    assert store.delete_polls("allday") == 2
    assert store.delete_polls("no such store") == 0
    assert sorted(store.report_store_ids(FAR_FUTURE_US)) == ["late", "worked"]


def test_data_summary_counts_what_is_stored(store):
    empty = store.data_summary()
    assert empty == {
        "stores": 0,
        "polls": 0,
        "hours_rows": 0,
        "zones": 0,
        "oldest_poll_us": None,
        "newest_poll_us": None,
    }
    database.load_file(store, sources.STATUS_FILE, POLLS)
    database.load_file(store, sources.HOURS_FILE, TINY_HOURS.encode())
    database.load_file(store, sources.ZONES_FILE, TINY_ZONES.encode())
    summary = store.data_summary()
    assert {k: summary[k] for k in ("stores", "polls", "hours_rows", "zones")} == {
        "stores": 3,
        "polls": 5,
        "hours_rows": 1,
        "zones": 1,
    }
    assert summary["oldest_poll_us"] == 1674555240000000  # 2023-01-24 10:14 UTC
    assert summary["newest_poll_us"] == 1674565200000000  # 2023-01-24 13:00 UTC


def test_health_names_too_little_free_disk(store):
    healthy = store.health(0)
    assert healthy["schema_version"] == database.SCHEMA_VERSION and healthy["problems"] == []
    if healthy["free_disk_mb"] is None:
        pytest.skip("mongomock has no disk to measure")
    starved = store.health(2**62)
    assert any("MB free" in problem for problem in starved["problems"])


# --------------------------------------------------------------------------- a report's life


def test_a_report_failed_meanwhile_never_turns_complete_and_keeps_no_csv(store, tmp_path):
    database.load_file(store, sources.STATUS_FILE, POLLS)
    report_id = "a" * 32
    store.create_report(report_id, None)
    real_read = store.read_chunk

    def read_then_swept(*args):
        store.fail_report(report_id, database.STALE_ERROR)  # a sweep in another process, for real
        return real_read(*args)

    store.read_chunk = read_then_swept
    ReportGenerator(store, tmp_path / "reports", workers=1).run(report_id)
    report = store.find_report(report_id)
    assert report["status"] == "Failed" and report["error"] == database.STALE_ERROR
    assert not (tmp_path / "reports" / f"report_{report_id}.csv").exists()
    assert store.complete_report(report_id, b"x\n", 1) is False
    assert store.find_report(report_id)["status"] == "Failed"


def test_a_report_whose_file_cannot_be_written_is_failed_not_complete(store, tmp_path):
    database.load_file(store, sources.STATUS_FILE, POLLS)
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the reports folder should be")
    store.create_report("b" * 32, None)
    ReportGenerator(store, blocker, workers=1).run("b" * 32)
    report = store.find_report("b" * 32)
    assert report["status"] == "Failed" and "could not be saved" in report["error"]


def test_a_report_whose_csv_cannot_be_stored_is_failed_and_its_file_removed(store, tmp_path):
    database.load_file(store, sources.STATUS_FILE, POLLS)

    def refuse(*args):
        raise database.DiskFull("the database", 0, what="report")

    store.complete_report = refuse
    store.create_report("c" * 32, None)
    ReportGenerator(store, tmp_path / "reports", workers=1).run("c" * 32)
    report = store.find_report("c" * 32)
    assert report["status"] == "Failed" and "is full" in report["error"]
    assert list((tmp_path / "reports").iterdir()) == []


def test_a_report_after_the_newest_poll_says_so(store, tmp_path):
    database.load_file(store, sources.STATUS_FILE, POLLS)
    generator = ReportGenerator(store, tmp_path / "reports", workers=1)
    store.create_report("d" * 32, 1674565200000001)
    generator.run("d" * 32, 1674565200000001)
    store.create_report("e" * 32, 1674565200000000)
    generator.run("e" * 32, 1674565200000000)
    assert store.find_report("d" * 32)["as_of_after_newest_poll"] is True
    assert store.find_report("e" * 32)["as_of_after_newest_poll"] is False


def test_retention_holds_as_each_report_finishes(store, tmp_path):
    database.load_file(store, sources.STATUS_FILE, POLLS)
    generator = ReportGenerator(store, tmp_path / "reports", workers=1)
    generator._retention = (30, 2)  # as start_retention sets it, without its hourly thread
    for n in range(5):
        report_id = f"{n:032x}"
        store.create_report(report_id, None)
        generator.run(report_id)
        assert store.count_reports() <= 2
    assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == [f"report_{n:032x}.csv" for n in (3, 4)]


# --------------------------------------------------------------------------- the lease


def test_a_lease_is_given_back_and_its_renewal_stops_when_its_holder_raises(store):
    before = {thread.name for thread in threading.enumerate()}
    with pytest.raises(Stop):
        with store.data_lease("write"):
            renewers = [t for t in threading.enumerate() if t.name.startswith("lease-") and t.name not in before]
            assert len(renewers) == 1
            raise Stop("the holder failed")
    renewers[0].join(5)
    assert not renewers[0].is_alive()
    with store.data_lease("read", wait_seconds=0.5):  # a reader gets in at once: the writer left
        pass
