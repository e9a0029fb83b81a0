"""Benchmark of the uptime report: CSV parse, engine, CSV write, end to end, and the per-store reference.

Generates realistic data (``scripts/generate_data.py``; by default 14,000
stores and about 107 polls a store, i.e. ~1.5M polls for one week, like the
real files), then times each stage in a fresh Python process so that the peak
memory of one stage does not leak into the next:

* startup   ``python -c "import reportGenerator"`` (interpreter and imports)
* parse     ``sources.read_data_dir`` on the three CSV files
* engine    ``reportGenerator.report_from_frames`` on the parsed frames
* write     ``reportGenerator.report_csv_bytes`` and writing the file
* e2e       ``python reportGenerator.py --data-dir DIR --output FILE`` (the CLI, wall clock)
* reference ``tests.reference.reference_ticks`` (pure Python, one store at a
  time) on a random sample of stores; its time per store is extrapolated to
  all stores to give the engine's speed-up over it.

It also checks the results: the engine's exact ticks (``utils.uptime_ticks``)
equal the reference's on every sampled store, the full report's rounded
figures for those stores equal the reference's ticks rounded the same way
(minutes for the ``_hour`` columns, hours for ``_day`` and ``_week``, 2
decimals), and the CLI's CSV equals the one written in process. It prints
"results identical to the reference on N stores: yes/no" and exits 1 when
any check fails. Timings are measured and compared with the targets, never
asserted.

Peak memory is the process's high-water resident set size (``VmHWM``) at the
end of the stage, so it includes the interpreter, the imports and the
stage's inputs (e.g. the parsed frames for the engine); the "inputs MB"
column is the resident size just before the stage started.

Generated data is cached under ``--cache-dir`` (default
``$TMPDIR/store-uptime-bench``), keyed by stores, seed and polls per store,
so repeated runs skip generation; generation time is never part of the
figures.

Usage::

    python benchmarks/bench_report.py                         # 14,000 stores, ~1.5M polls
    python benchmarks/bench_report.py --scales 1,2,4,10       # growth curve up to 140k stores, ~15M polls
    python benchmarks/bench_report.py --stores 2000 --reference-stores all
    python benchmarks/bench_report.py --data-dir data         # existing CSV files, no generation
    python benchmarks/bench_report.py --json results.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GENERATOR = REPO / "scripts" / "generate_data.py"
CLI = REPO / "reportGenerator.py"
DATA_FILES = ("store_status.csv", "menu_hours.csv", "timezones.csv")
DEFAULT_STORES = 14_000
DEFAULT_POLLS_PER_STORE = 107.0  # ~1.5M polls for 14,000 stores, as in the real data
DEFAULT_REFERENCE_STORES = 300

# Targets from the issue: measured and printed, never asserted.
TARGET_E2E_SECONDS = 3.0
TARGET_SPEEDUP = 25.0
TARGET_10X_TIME_RATIO = 12.0
TARGET_10X_PEAK_MB = 2048.0

MEASURES = [
    "uptime_last_hour",
    "uptime_last_day",
    "uptime_last_week",
    "downtime_last_hour",
    "downtime_last_day",
    "downtime_last_week",
]


# --------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """High-water resident set size of this process so far, in MB."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return kb / 1024


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


# --------------------------------------------------------------------------- stage workers (run in fresh processes)


def worker_parse(data_dir: Path, work: Path) -> dict:
    """Time `sources.read_data_dir`; save the parsed frames for the next stages."""
    import sources

    started = time.perf_counter()
    parsed = sources.read_data_dir(data_dir)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()

    polls = parsed[sources.STATUS_FILE].frame
    hours = parsed[sources.HOURS_FILE].frame
    zones = parsed[sources.ZONES_FILE].frame
    now_us = int(polls["timestamp_us"].max())
    with open(work / "frames.pkl", "wb") as out:
        pickle.dump((polls, hours, zones, now_us), out, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "polls": len(polls),
        "hour_rows": len(hours),
        "zone_rows": len(zones),
        "stores": int(polls["store_id"].nunique()),
        "rejected": sum(p.rejected for p in parsed.values()),
        "now_us": now_us,
    }


def worker_engine(work: Path, chunk_stores: int, sample_size: int, seed: int) -> dict:
    """Time `report_from_frames` on the parsed frames; save the report and a sample of stores."""
    import numpy as np

    import reportGenerator

    with open(work / "frames.pkl", "rb") as source:
        polls, hours, zones, now_us = pickle.load(source)
    inputs = current_rss_mb()

    started = time.perf_counter()
    report = reportGenerator.report_from_frames(polls, hours, zones, now_us, chunk_stores)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()

    with open(work / "report.pkl", "wb") as out:
        pickle.dump(report, out, protocol=pickle.HIGHEST_PROTOCOL)

    # The sample the reference runs on: random stores that have a poll at or before now.
    reported = polls.loc[polls["timestamp_us"].to_numpy() <= now_us, "store_id"].unique()
    one_row_per_store = len(report) == len(reported) and set(report["store_id"]) == set(reported)
    if sample_size == 0:  # no reference run
        return {"seconds": seconds, "peak_mb": peak, "inputs_mb": inputs, "report_rows": len(report),
                "one_row_per_store": bool(one_row_per_store)}
    rng = np.random.default_rng(seed)
    size = len(reported) if sample_size < 0 else min(sample_size, len(reported))
    chosen = set(rng.choice(np.sort(reported), size=size, replace=False).tolist())
    sample = (
        polls[polls["store_id"].isin(chosen)][["store_id", "timestamp_us", "status", "active"]],
        hours[hours["store_id"].isin(chosen)][["store_id", "day", "start_s", "end_s"]],
        zones[zones["store_id"].isin(chosen)][["store_id", "timezone_str"]],
        now_us,
        sorted(chosen),
    )
    with open(work / "sample.pkl", "wb") as out:
        pickle.dump(sample, out, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "inputs_mb": inputs,
        "report_rows": len(report),
        "one_row_per_store": bool(one_row_per_store),
    }


def worker_write(work: Path) -> dict:
    """Time `report_csv_bytes` plus writing the file, as the CLI does."""
    import reportGenerator

    with open(work / "report.pkl", "rb") as source:
        report = pickle.load(source)
    inputs = current_rss_mb()

    started = time.perf_counter()
    payload = reportGenerator.report_csv_bytes(report)
    reportGenerator.write_atomically(work / "report_inprocess.csv", payload)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "inputs_mb": inputs, "bytes": len(payload)}


def _reference_inputs(polls, hours, zones, now_us: int):
    """The sample frames as the plain Python lists `reference_ticks` takes."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

    def instant(us: int) -> dt.datetime:
        return epoch + dt.timedelta(microseconds=int(us))

    def clock(seconds: int) -> dt.time:
        seconds = int(seconds)
        return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60)

    ref_polls = [
        (store, instant(us), status)
        for store, us, status in zip(polls["store_id"], polls["timestamp_us"], polls["status"])
    ]
    ref_hours = [
        (store, int(day), clock(start), clock(end))
        for store, day, start, end in zip(hours["store_id"], hours["day"], hours["start_s"], hours["end_s"])
    ]
    ref_zones = dict(zip(zones["store_id"], zones["timezone_str"]))
    return ref_polls, ref_hours, ref_zones, instant(now_us)


def _rounded(ticks: int, column: str) -> float:
    """Report units: minutes for the hour columns, hours for day and week, 2 decimals."""
    import numpy as np

    import utils

    unit = 60 if column.endswith("_hour") else 3_600
    return float(np.round(ticks / (unit * utils.TICKS_PER_SECOND), 2))


def worker_reference(work: Path) -> dict:
    """Time the per-store reference and the engine on the same sample; compare them and the full report."""
    import utils
    from tests.reference import reference_ticks

    with open(work / "sample.pkl", "rb") as source:
        polls, hours, zones, now_us, stores = pickle.load(source)
    ref_polls, ref_hours, ref_zones, now = _reference_inputs(polls, hours, zones, now_us)
    inputs = current_rss_mb()

    started = time.perf_counter()
    expected = reference_ticks(ref_polls, ref_hours, ref_zones, now)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()

    started = time.perf_counter()
    engine_ticks = utils.uptime_ticks(polls[["store_id", "timestamp_us", "active"]], hours, zones, now_us)
    engine_seconds = time.perf_counter() - started

    mismatches = []
    got = {row.pop("store_id"): row for row in engine_ticks.to_dict("records")}
    for store in stores:
        want, have = expected.get(store), got.get(store)
        if have is not None:
            have = {column: int(value) for column, value in have.items()}
        if want != have:
            mismatches.append({"store_id": store, "check": "exact ticks", "reference": want, "engine": have})

    with open(work / "report.pkl", "rb") as source:
        report = pickle.load(source)
    rows = report[report["store_id"].isin(set(stores))].set_index("store_id")
    for store in stores:
        want = {c: _rounded(t, c) for c, t in expected.get(store, {}).items()}
        have = {c: float(rows.at[store, c]) for c in MEASURES} if store in rows.index else None
        if want != have:
            mismatches.append({"store_id": store, "check": "rounded report", "reference": want, "engine": have})

    return {
        "seconds": seconds,
        "peak_mb": peak,
        "inputs_mb": inputs,
        "stores": len(stores),
        "engine_sample_seconds": engine_seconds,
        "ticks_identical": not any(m["check"] == "exact ticks" for m in mismatches),
        "rounded_identical": not any(m["check"] == "rounded report" for m in mismatches),
        "mismatches": len(mismatches),
        "first_mismatches": mismatches[:5],
    }


def run_worker(args: argparse.Namespace) -> None:
    work = Path(args.work)
    if args.worker == "parse":
        result = worker_parse(Path(args.data_dir), work)
    elif args.worker == "engine":
        result = worker_engine(work, args.chunk_stores, args.sample_size, args.seed)
    elif args.worker == "write":
        result = worker_write(work)
    else:
        result = worker_reference(work)
    (work / f"{args.worker}.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- running processes


def run_measured(command: list[str], log: Path) -> tuple[float, float]:
    """Run a command to completion; return (wall seconds, peak RSS MB of that process)."""
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}:\n{tail}")
    return seconds, usage.ru_maxrss / 1024  # KB on Linux


def run_stage(name: str, work: Path, extra: list[str]) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--work", str(work), *extra]
    run_measured(command, work / f"{name}.log")
    return json.loads((work / f"{name}.json").read_text())


def ensure_data(stores: int, seed: int, polls_per_store: float, cache_dir: Path) -> tuple[Path, float | None]:
    """The data folder for these settings, generated once; returns (folder, generation seconds or None)."""
    folder = cache_dir / f"stores{stores}_seed{seed}_pps{polls_per_store:g}"
    done = folder / ".complete"
    if done.exists() and all((folder / name).exists() for name in DATA_FILES):
        return folder, None
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = [
        sys.executable, str(GENERATOR), "--stores", str(stores), "--seed", str(seed),
        "--polls-per-store", f"{polls_per_store:g}", "--out", str(folder),
    ]
    print(f"generating {stores:,} stores into {folder} ...", flush=True)
    seconds, _ = run_measured(command, cache_dir / f"generate_{stores}.log")
    done.write_text(" ".join(command) + "\n")
    return folder, seconds


# --------------------------------------------------------------------------- one scale


def bench_scale(data_dir: Path, args: argparse.Namespace, label: str) -> dict:
    """All stages on one data folder; returns the measurements."""
    work = Path(tempfile.mkdtemp(prefix="bench-report-", dir=args.work_root))
    result: dict = {"label": label, "data_dir": str(data_dir), "code": code_version()}
    try:
        seconds, peak = run_measured([sys.executable, "-c", "import reportGenerator"], work / "startup.log")
        result["startup"] = {"seconds": seconds, "peak_mb": peak}

        best: dict = {}
        for _ in range(args.repeat):
            runs = {
                "parse": run_stage("parse", work, ["--data-dir", str(data_dir)]),
                "engine": run_stage(
                    "engine", work,
                    ["--chunk-stores", str(args.chunk_stores), "--sample-size", str(args.reference_stores_n),
                     "--seed", str(args.seed)],
                ),
                "write": run_stage("write", work, []),
            }
            output = work / "report_cli.csv"
            seconds, peak = run_measured(
                [sys.executable, str(CLI), "--data-dir", str(data_dir), "--output", str(output),
                 "--chunk-stores", str(args.chunk_stores)],
                work / "cli.log",
            )
            runs["e2e"] = {"seconds": seconds, "peak_mb": peak}
            for stage, measured in runs.items():  # the fastest run's figures, the highest peak of all runs
                previous = best.get(stage)
                fastest = measured if previous is None or measured["seconds"] < previous["seconds"] else previous
                highest = max(measured["peak_mb"], previous["peak_mb"] if previous else 0.0)
                best[stage] = {**fastest, "peak_mb": highest}
        result.update(best)
        result["cli_matches_inprocess"] = (work / "report_cli.csv").read_bytes() == (
            work / "report_inprocess.csv"
        ).read_bytes()

        if args.reference_stores_n != 0 or args.reference_all:
            result["reference"] = run_stage("reference", work, [])
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    result["code_changed"] = code_version() != result["code"]
    result["work"] = str(work) if args.keep_work else None
    return result


def speedup(result: dict) -> tuple[float, float] | None:
    """(extrapolated full reference seconds, engine speed-up over it)."""
    reference = result.get("reference")
    if not reference or not reference["stores"]:
        return None
    full = reference["seconds"] / reference["stores"] * result["parse"]["stores"]
    return full, full / result["engine"]["seconds"]


def identical(result: dict) -> bool:
    reference = result.get("reference")
    checks = [result["cli_matches_inprocess"], result["engine"]["one_row_per_store"]]
    if reference:
        checks += [reference["ticks_identical"], reference["rounded_identical"]]
    return all(checks)


# --------------------------------------------------------------------------- printing


def machine_info() -> dict:
    import numpy
    import pandas

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    try:
        import pyarrow

        arrow = pyarrow.__version__
    except ImportError:
        arrow = "not installed"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gb": memory_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "pyarrow": arrow,  # when installed, pandas 3 keeps str columns in Arrow: different speed and memory
        "string_dtype": repr(pandas.Series(["x"]).dtype),
        "code": code_version(),
    }


ENGINE_FILES = ("utils.py", "sources.py", "reportGenerator.py", "database.py")


def code_version() -> str:
    """The code benchmarked: git commit, files changed since, and short content hashes of the engine files.

    Others may be editing the engine while a benchmark runs; the hashes tell runs apart.
    """
    import hashlib

    hashes = ", ".join(
        f"{name} {hashlib.sha1((REPO / name).read_bytes()).hexdigest()[:8]}"
        for name in ENGINE_FILES if (REPO / name).exists()
    )
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", *ENGINE_FILES], cwd=REPO,
                                 capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return f"not a git checkout ({hashes})"
    changed = [line[3:] for line in changed if line.strip()]
    state = f"uncommitted changes in {', '.join(changed)}" if changed else "clean"
    return f"git {head}, {state} ({hashes})"


def print_machine(info: dict) -> None:
    memory = f", {info['memory_gb']:.1f} GB RAM" if info["memory_gb"] else ""
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable){memory}, {info['os']}")
    print(f"python {info['python']} ({sys.executable}), numpy {info['numpy']}, pandas {info['pandas']}, "
          f"pyarrow {info['pyarrow']} (str columns: {info['string_dtype']})")
    print(f"code: {info['code']}")


def fmt_mb(value) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def print_scale(result: dict) -> None:
    parse = result["parse"]
    print()
    print(
        f"{result['label']}: {parse['stores']:,} stores, {parse['polls']:,} polls, {parse['hour_rows']:,} hour rows, "
        f"{parse['zone_rows']:,} zone rows, {parse['rejected']:,} rejected rows"
    )
    if result.get("code_changed"):
        print("  WARNING: the engine files changed while this scale was measured; its figures mix two versions")
    print(f"  data: {result['data_dir']}" + (f" (generated in {result['generated_s']:.1f} s, not counted)"
                                           if result.get("generated_s") else ""))
    rows = [
        ("startup: python + imports", result["startup"], "python -c 'import reportGenerator'"),
        ("CSV parse", parse, "sources.read_data_dir"),
        ("engine", result["engine"], "report_from_frames on the parsed frames"),
        ("CSV write", result["write"], f"report_csv_bytes + write_atomically ({result['write']['bytes']:,} bytes)"),
        ("end to end (CLI)", result["e2e"], "python reportGenerator.py --data-dir DIR --output FILE"),
    ]
    reference = result.get("reference")
    if reference:
        per_store_ms = reference["seconds"] / reference["stores"] * 1000
        rows.append((f"reference ({reference['stores']:,} stores)", reference,
                     f"tests/reference.py, {per_store_ms:.2f} ms a store"))
        rows.append((f"engine on the same {reference['stores']:,}", {"seconds": reference["engine_sample_seconds"]},
                     "utils.uptime_ticks on the sampled stores only"))
    print(f"  {'stage':<30} {'wall s':>8} {'peak MB':>9} {'inputs MB':>10}  notes")
    for name, measured, note in rows:
        print(
            f"  {name:<30} {measured['seconds']:>8.3f} {fmt_mb(measured.get('peak_mb')):>9} "
            f"{fmt_mb(measured.get('inputs_mb')):>10}  {note}"
        )
    print("  (peak MB: the stage process's high-water RSS, including interpreter, imports and inputs;"
          " inputs MB: RSS before the stage began)")

    gain = speedup(result)
    if gain:
        full, factor = gain
        sampled = reference["stores"] == parse["stores"]
        how = "measured on all stores" if sampled else f"extrapolated from {reference['stores']:,} sampled stores"
        print(
            f"  engine speed-up over the per-store reference: {factor:,.0f}x (engine {result['engine']['seconds']:.2f} s "
            f"for {parse['stores']:,} stores vs reference {full:,.1f} s, {how})"
        )
        print(f"  same-sample speed-up: {reference['seconds'] / reference['engine_sample_seconds']:,.0f}x "
              f"(both on the {reference['stores']:,} sampled stores)")
    if reference:
        verdict = "yes" if reference["ticks_identical"] and reference["rounded_identical"] else "NO"
        print(
            f"  results identical to the reference on {reference['stores']:,} stores: {verdict} "
            f"(exact ticks: {'yes' if reference['ticks_identical'] else 'no'}, "
            f"rounded report: {'yes' if reference['rounded_identical'] else 'no'})"
        )
        for mismatch in reference["first_mismatches"]:
            print(f"    mismatch {mismatch}")
    print(f"  CLI output identical to the in-process report: {'yes' if result['cli_matches_inprocess'] else 'NO'}; "
          f"one row per store with a poll: {'yes' if result['engine']['one_row_per_store'] else 'NO'}")


def print_growth(results: list[dict], scales: list[int]) -> None:
    print()
    print("growth curve (time ratio = end-to-end seconds / the 1x end-to-end seconds; peak MB = CLI process)")
    header = (
        f"{'scale':>5} {'stores':>9} {'polls':>11} {'parse s':>8} {'engine s':>9} {'write s':>8} {'e2e s':>7} "
        f"{'peak MB':>8} {'engine MB':>10} {'ratio':>6} {'speed-up':>9} {'identical':>10}"
    )
    print(header)
    base = results[0]["e2e"]["seconds"] / scales[0]  # per unit of scale
    for scale, result in zip(scales, results):
        gain = speedup(result)
        print(
            f"{scale:>4}x {result['parse']['stores']:>9,} {result['parse']['polls']:>11,} "
            f"{result['parse']['seconds']:>8.2f} {result['engine']['seconds']:>9.2f} {result['write']['seconds']:>8.2f} "
            f"{result['e2e']['seconds']:>7.2f} {result['e2e']['peak_mb']:>8,.0f} {result['engine']['peak_mb']:>10,.0f} "
            f"{result['e2e']['seconds'] / base:>6.2f} "
            f"{(f'{gain[1]:,.0f}x' if gain else '-'):>9} {('yes' if identical(result) else 'NO'):>10}"
        )


def print_targets(results: list[dict], scales: list[int]) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print()
    print("targets (measured, not asserted):")
    by_scale = dict(zip(scales, results))
    one = by_scale.get(1)
    if one:
        e2e = one["e2e"]["seconds"]
        size = f"{one['label']}, {one['parse']['stores']:,} stores, {one['parse']['polls']:,} polls"
        print(f"  end to end under {TARGET_E2E_SECONDS:g} s ({size}): {e2e:.2f} s -> {verdict(e2e < TARGET_E2E_SECONDS)}")
        gain = speedup(one)
        if gain:
            print(f"  engine at least {TARGET_SPEEDUP:g}x faster than the reference: {gain[1]:,.0f}x "
                  f"-> {verdict(gain[1] >= TARGET_SPEEDUP)}")
    ten = by_scale.get(10)
    if one and ten:
        ratio = ten["e2e"]["seconds"] / one["e2e"]["seconds"]
        print(f"  10x end to end within {TARGET_10X_TIME_RATIO:g}x of 1x: {ratio:.2f}x "
              f"-> {verdict(ratio <= TARGET_10X_TIME_RATIO)}")
        peak = max(ten["e2e"]["peak_mb"], ten["parse"]["peak_mb"], ten["engine"]["peak_mb"])
        print(f"  10x peak memory under {TARGET_10X_PEAK_MB / 1024:g} GB: CLI {ten['e2e']['peak_mb']:,.0f} MB "
              f"(largest stage {peak:,.0f} MB) -> {verdict(ten['e2e']['peak_mb'] < TARGET_10X_PEAK_MB)}")
    checked = [r for r in results if r.get("reference")]
    if checked:
        ok = all(identical(r) for r in checked)
        print(f"  results identical to the reference: {'yes' if ok else 'NO'} "
              f"(at {', '.join(r['label'] for r in checked)})")


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", type=int, default=DEFAULT_STORES,
                        help=f"stores at scale 1 (default {DEFAULT_STORES:,})")
    parser.add_argument("--polls-per-store", type=float, default=DEFAULT_POLLS_PER_STORE,
                        help=f"average polls a store over the week (default {DEFAULT_POLLS_PER_STORE:g}, ~1.5M polls "
                             "for 14,000 stores)")
    parser.add_argument("--seed", type=int, default=7, help="data and sampling seed (default 7)")
    parser.add_argument("--scales", default="1", help="comma-separated multiples of --stores, e.g. 1,2,4,10 (default 1)")
    parser.add_argument("--data-dir", type=Path, help="benchmark these CSV files instead of generated data (one scale)")
    parser.add_argument("--reference-stores", default=str(DEFAULT_REFERENCE_STORES),
                        help=f"stores sampled for the per-store reference, 'all', or 0 to skip it "
                             f"(default {DEFAULT_REFERENCE_STORES})")
    parser.add_argument("--chunk-stores", type=int, default=None,
                        help="stores per engine chunk (default: reportGenerator.DEFAULT_CHUNK_STORES)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the parse, engine, write and CLI stages this many times; keep the fastest time "
                             "and the highest peak (default 1)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "store-uptime-bench",
                        help="where generated data is kept between runs (default $TMPDIR/store-uptime-bench)")
    parser.add_argument("--keep-work", action="store_true", help="keep the intermediate files and logs")
    parser.add_argument("--json", type=Path, help="also save the results as JSON here")
    # internal: one stage in a fresh process
    parser.add_argument("--worker", choices=["parse", "engine", "write", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--sample-size", type=int, default=DEFAULT_REFERENCE_STORES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return args
    try:
        args.scale_list = [int(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        parser.error("--scales takes whole numbers separated by commas, e.g. 1,2,4,10")
    if not args.scale_list or any(s < 1 for s in args.scale_list):
        parser.error("--scales must list positive whole numbers")
    if args.data_dir and args.scale_list != [1]:
        parser.error("--data-dir benchmarks the given files only: it cannot be combined with --scales")
    if args.stores < 1 or args.polls_per_store <= 0 or args.repeat < 1:
        parser.error("--stores, --polls-per-store and --repeat must be positive")
    args.reference_all = args.reference_stores.strip().lower() == "all"
    if args.reference_all:
        args.reference_stores_n = -1  # every store
    else:
        try:
            args.reference_stores_n = int(args.reference_stores)
        except ValueError:
            parser.error("--reference-stores takes a number or 'all'")
        if args.reference_stores_n < 0:
            parser.error("--reference-stores must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0

    import reportGenerator

    if args.chunk_stores is None:
        args.chunk_stores = reportGenerator.DEFAULT_CHUNK_STORES
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    args.work_root = str(args.cache_dir)

    info = machine_info()
    print("store uptime report benchmark")
    print_machine(info)
    if args.data_dir:
        print(f"data: {args.data_dir}; engine chunks of {args.chunk_stores:,} stores")
    else:
        print(f"data: scripts/generate_data.py, seed {args.seed}, ~{args.polls_per_store:g} polls a store a week, "
              f"cached in {args.cache_dir}; engine chunks of {args.chunk_stores:,} stores")
    print(f"reference: {'all stores' if args.reference_all else f'{args.reference_stores_n:,} random stores'}"
          f"{' (skipped)' if args.reference_stores_n == 0 else ''}; repeat {args.repeat} (fastest time, highest peak kept)")
    sys.stdout.flush()

    results = []
    for scale in args.scale_list:
        if args.data_dir:
            data_dir, generated = args.data_dir, None
            label = "given data"
        else:
            data_dir, generated = ensure_data(args.stores * scale, args.seed, args.polls_per_store, args.cache_dir)
            label = f"scale {scale}x"
        result = bench_scale(data_dir, args, label)
        result["scale"] = scale
        result["generated_s"] = generated
        results.append(result)
        print_scale(result)
        sys.stdout.flush()

    if len(results) > 1:
        print_growth(results, args.scale_list)
    print_targets(results, args.scale_list)
    ok = all(identical(r) for r in results)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results, "all_identical": ok}, indent=2, default=str))
        print(f"\nresults saved to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
