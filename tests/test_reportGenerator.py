"""The report job (reportGenerator.py): CSV mode, ranges of stores (threads, processes), agreement with
the API and the reference."""

from __future__ import annotations

import ctypes
import datetime as dt
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pytest

import database
import reportGenerator
import sources
import utils
from tests.conftest import TINY_REPORT
from tests.reference import reference_report, reference_ticks

SAMPLE = Path(__file__).resolve().parent.parent / "data"


def test_cli_writes_the_hand_worked_report(data_dir, tmp_path, capsys):
    output = tmp_path / "out" / "report.csv"
    assert reportGenerator.main(["--data-dir", str(data_dir), "--output", str(output)]) == 0
    written = pd.read_csv(output, dtype={"store_id": str})
    assert list(written.columns) == utils.REPORT_COLUMNS
    assert written.to_dict("records") == TINY_REPORT
    assert "wrote 3 stores" in capsys.readouterr().err


def test_cli_tunes_the_allocator_for_its_one_run(data_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reportGenerator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert reportGenerator.main(["--data-dir", str(data_dir), "--output", str(tmp_path / "r.csv")]) == 0
    assert calls == [1]


def test_cli_as_of_and_errors(data_dir, tmp_path, capsys):
    output = tmp_path / "report.csv"
    assert (
        reportGenerator.main(["--data-dir", str(data_dir), "--output", str(output), "--as-of", "2023-01-24T12:00"]) == 0
    )
    assert list(pd.read_csv(output, dtype={"store_id": str})["store_id"]) == ["worked"]
    capsys.readouterr()
    assert reportGenerator.main(["--data-dir", str(tmp_path / "nowhere"), "--output", str(output)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'} does not exist\n"
    only_hours = tmp_path / "only-hours"
    only_hours.mkdir()
    (only_hours / "store_status.csv").write_text("store_id,status,timestamp_utc\nx,asleep,2023-01-24 12:00:00 UTC\n")
    assert reportGenerator.main(["--data-dir", str(only_hours), "--output", str(output)]) == 2
    assert "no valid polls" in capsys.readouterr().err
    assert reportGenerator.main(["--data-dir", str(data_dir), "--output", str(output), "--as-of", "soon"]) == 2


@lru_cache(maxsize=1)
def sample_reference_report() -> list[dict]:
    """The sample's report worked out by tests/reference.py, which shares no code with the engine."""
    return reference_report(SAMPLE)


def assert_is_the_reference(report: pd.DataFrame) -> None:
    expected = sample_reference_report()
    assert len(expected) == 200
    assert report.astype({"store_id": str}).to_dict("records") == expected


@pytest.mark.parametrize("chunk_stores", [1, 7, 10_000])
def test_chunk_size_does_not_change_the_report(chunk_stores):
    whole, now_us, _ = reportGenerator.report_from_dir(SAMPLE, chunk_stores=100_000)
    chunked, _, _ = reportGenerator.report_from_dir(SAMPLE, chunk_stores=chunk_stores)
    pd.testing.assert_frame_equal(whole, chunked)
    assert_is_the_reference(chunked)


def test_worker_processes_give_the_same_report():
    alone, _, _ = reportGenerator.report_from_dir(SAMPLE, chunk_stores=30, processes=1)
    shared, _, _ = reportGenerator.report_from_dir(SAMPLE, chunk_stores=30, processes=2)
    pd.testing.assert_frame_equal(alone, shared)
    assert_is_the_reference(shared)


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_engine_threads_give_the_same_report_in_order(monkeypatch, cores):
    """With two or more cores the ranges are computed by threads; the rows stay in store order."""
    threads, progress = set(), []
    real = utils.coded_uptime_ticks

    def spy(coded, now_us):
        threads.add(threading.current_thread().name.split("_")[0])
        return real(coded, now_us)

    monkeypatch.setattr(reportGenerator, "usable_cores", lambda: cores)
    monkeypatch.setattr(utils, "coded_uptime_ticks", spy)
    report, _, _ = reportGenerator.report_from_dir(SAMPLE, on_progress=lambda done, total: progress.append(done))
    assert_is_the_reference(report)
    workers = min(cores, reportGenerator.ENGINE_THREADS)
    size = 200 if workers == 1 else -(-200 // (utils.RANGES_PER_LOCAL_WORKER * workers))  # 200 stores
    assert progress == [min(done, 200) for done in range(size, 200 + size, size)]
    assert len(progress) == (1 if workers == 1 else utils.RANGES_PER_LOCAL_WORKER * workers)
    assert threads == ({"MainThread"} if workers == 1 else {"engine"})


def test_cli_csv_on_the_sample_is_the_reference(tmp_path):
    """The CLI's CSV file, read back, holds the reference's figures (the API's CSV equals it, below)."""
    output = tmp_path / "cli.csv"
    assert reportGenerator.main(["--data-dir", str(SAMPLE), "--output", str(output)]) == 0
    assert_is_the_reference(pd.read_csv(output, dtype={"store_id": str}))


def test_processes_are_chosen_by_the_size_of_the_work(monkeypatch):
    monkeypatch.setattr(reportGenerator, "usable_cores", lambda: 8)
    per = reportGenerator.POLLS_PER_PROCESS
    # real scale (1.5M polls) and ten times it: one process, which measured faster than two
    assert [reportGenerator.default_processes(n) for n in (0, 1_500_000, 15_000_000)] == [1, 1, 1]
    assert [reportGenerator.default_processes(n) for n in (2 * per - 1, 2 * per, 3 * per, 100 * per)] == [1, 2, 3, 8]
    monkeypatch.setattr(reportGenerator, "usable_cores", lambda: 2)
    assert reportGenerator.default_processes(100 * per) == 2


def test_the_command_line_default_uses_one_process_on_small_data(tmp_path, monkeypatch):
    chosen = []
    real = reportGenerator._ticks_by_range

    def spy(coded, now_us, bounds, processes):
        chosen.append(processes)
        return real(coded, now_us, bounds, processes)

    monkeypatch.setattr(reportGenerator, "_ticks_by_range", spy)
    common = ["--data-dir", str(SAMPLE), "--chunk-stores", "30"]
    assert reportGenerator.main([*common, "--output", str(tmp_path / "r.csv")]) == 0
    assert reportGenerator.main([*common, "--output", str(tmp_path / "r2.csv"), "--processes", "2"]) == 0
    assert chosen == [1, 2]
    assert (tmp_path / "r.csv").read_bytes() == (tmp_path / "r2.csv").read_bytes()


KEEP_FREED_MEMORY = """
import ctypes, sys
import numpy as np
import reportGenerator

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (malloc.h)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert reportGenerator.keep_freed_memory()
array = np.ones(30 << 17)  # 30 MB
held = libc.mallinfo2()
del array
freed = libc.mallinfo2()
print(held.hblkhd >> 20, freed.fordblks >> 20)  # MB in mappings of their own while held; MB the heap keeps, freed
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc 2.33 or later")
def test_the_command_line_keeps_the_memory_it_frees():
    """After keep_freed_memory a 30 MB array comes from the heap, and the heap keeps it once freed
    (by default glibc maps it on its own and unmaps it when it is freed)."""

    def run(mode: str) -> list[int]:
        done = subprocess.run(
            [sys.executable, "-c", KEEP_FREED_MEMORY, mode],
            capture_output=True,
            text=True,
            cwd=Path(reportGenerator.__file__).parent,
            check=True,
        )
        return [int(word) for word in done.stdout.split()]

    mapped, kept = run("default")
    assert mapped >= 30 and kept < 30
    mapped, kept = run("tuned")
    assert mapped < 30 and kept >= 30


RUN_AS_COMMAND = """
import gc, runpy, sys
sys.argv = ["reportGenerator.py", "--help"]
try:
    runpy.run_path("reportGenerator.py", run_name="__main__")
except SystemExit:
    pass
print(gc.isenabled(), gc.get_freeze_count())
"""


def test_the_command_line_freezes_what_its_imports_made_and_collects_the_rest():
    def run(code: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(reportGenerator.__file__).parent,
        )
        return done.stdout.split()[-2:]

    enabled, frozen = run(RUN_AS_COMMAND)
    assert enabled == "True" and int(frozen) > 10_000  # numpy, pandas and pyarrow's objects
    assert run("import gc, reportGenerator; print(gc.isenabled(), gc.get_freeze_count())") == ["True", "0"]


def test_sample_data_matches_the_reference_exactly():
    parsed = sources.read_data_dir(SAMPLE)
    polls = parsed[sources.STATUS_FILE].frame
    hours = parsed[sources.HOURS_FILE].frame
    zones = parsed[sources.ZONES_FILE].frame
    now_us = int(polls["timestamp_us"].max())
    engine = utils.uptime_ticks(polls, hours, zones, now_us)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    to_dt = lambda us: epoch + dt.timedelta(microseconds=int(us))  # noqa: E731
    to_time = lambda s: dt.time(s // 3600, s // 60 % 60, s % 60)  # noqa: E731
    expected = reference_ticks(
        [
            (s, to_dt(t), "active" if a else "inactive")
            for s, t, a in zip(polls["store_id"], polls["timestamp_us"], polls["active"])
        ],
        [
            (s, d, to_time(a), to_time(b))
            for s, d, a, b in zip(hours["store_id"], hours["day"], hours["start_s"], hours["end_s"])
        ],
        dict(zip(zones["store_id"], zones["timezone_str"])),
        to_dt(now_us),
    )
    got = {row.pop("store_id"): row for row in engine.to_dict("records")}
    assert len(got) == 200
    assert got == expected


def test_api_csv_equals_cli_csv_on_the_sample(new_store, tmp_path):
    """The report from each store and the one straight from the CSV files are the same bytes."""
    store = new_store
    database.load_dir(store, SAMPLE)
    generator = reportGenerator.ReportGenerator(store, tmp_path / "reports")
    store.create_report("f" * 32, None)
    generator.run("f" * 32)
    report = store.find_report("f" * 32)
    assert report["status"] == "Complete", report.get("error")
    output = tmp_path / "cli.csv"
    assert reportGenerator.main(["--data-dir", str(SAMPLE), "--output", str(output)]) == 0
    assert store.read_report_csv(report) == output.read_bytes()
    assert (tmp_path / "reports" / f"report_{'f' * 32}.csv").read_bytes() == output.read_bytes()
