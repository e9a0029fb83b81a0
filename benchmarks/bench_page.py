"""Benchmark of the page at GET / on a 14,000-store report, in headless Chromium.

Generates realistic data (``scripts/generate_data.py``: 14,000 stores, ~107 polls a store by default;
cached under ``--cache-dir``), starts the service on it (``python app.py`` on a free loopback port,
``DATA_DIR``, ``EMBEDDED_DB`` and ``REPORTS_DIR`` in a temporary directory), runs ``--reports``
reports a day apart in ``as_of`` (so a store has a history and the newest report has changes), then
opens ``/#report=<newest>`` in headless Chromium through selenium ``--runs`` times, each in a fresh
page, and measures in the page (``performance.now()``, the page's own clock):

* ``usable``: from the moment the report's JSON has arrived (the Resource Timing ``responseEnd`` of
  its ``/get_report``) to the frame after the table's first rows are in the document (a
  MutationObserver set before the page's scripts run, then the next animation frame and task: the
  rows are on screen and the page answers input); also from the navigation's start;
* ``sort <column>``: the click on a column heading (its first click: the order is worked out then),
  from before the click to the next frame, for every column;
* ``filter keystroke``: a store id typed one character at a time (an ``input`` event per character, as
  a keystroke makes), then deleted one at a time, each from before the event to the next frame;
* ``scroll``: the table scrolled by a screenful and jumped to its middle, each to the next frame;
* ``store view``: from a click on a store id to its week drawn, and to its history drawn (each the frame
  after its section's ``data-state`` turned final);
* ``changes``: from the navigation's start to the frame after "changes since the previous report" is drawn.

Prints a table of the median, lowest and highest over the runs, in milliseconds, with the machine
(CPU, cores, load average, Chromium's version), and ``--json`` writes every figure. The targets
(usable within 1 s of the data arriving, a sort or filter within 200 ms) are printed beside the
figures, never asserted. ``--screenshots DIR`` also saves the page with the 14,000-store report
at 1280 px and 400 px wide, and the store view, to look at.

    python benchmarks/bench_page.py                          # 14,000 stores, 5 runs
    python benchmarks/bench_page.py --runs 9 --json page.json
    python benchmarks/bench_page.py --stores 2000 --polls-per-store 40 --screenshots /tmp/shots

Needs Debian's chromium and chromedriver (``bash scripts/install_browser.sh``) and selenium
(requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATOR = REPO / "scripts" / "generate_data.py"
DATA_FILES = ("store_status.csv", "menu_hours.csv", "timezones.csv")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
COLUMNS = (
    "store_id",
    "uptime_last_hour",
    "uptime_last_day",
    "uptime_last_week",
    "downtime_last_hour",
    "downtime_last_day",
    "downtime_last_week",
)
TARGET_USABLE_MS = 1000.0
TARGET_ANSWER_MS = 200.0
START_TIMEOUT = 600  # seconds: the first start seeds the embedded store from the CSV files
REPORT_TIMEOUT = 600
UI_TIMEOUT = 60
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy

# Set before the page's own scripts: the time the report table's first rows are in the document, and the
# frame after it (a task queued from the next animation frame runs once that frame is on screen).
PROBE = """
window.__bench = {};
new MutationObserver(function (records, observer) {
  if (!document.querySelector('#report-table tbody tr[data-store-id]')) { return; }
  observer.disconnect();
  window.__bench.rowsInDom = performance.now();
  requestAnimationFrame(function () {
    setTimeout(function () { window.__bench.rowsPainted = performance.now(); }, 0);
  });
}).observe(document, {childList: true, subtree: true});
// the frame after a section's data-state turns final ("changes:shown", "history:failed", ...)
window.__bench.states = {};
new MutationObserver(function (records) {
  records.forEach(function (record) {
    var name = record.target.id + ":" + record.target.dataset.state;
    if (record.target.dataset.state === "loading") { return; }
    requestAnimationFrame(function () {
      setTimeout(function () { window.__bench.states[name] = performance.now(); }, 0);
    });
  });
}).observe(document, {attributes: true, attributeFilter: ["data-state"], subtree: true});
"""

# Runs `action` (a function body) and answers [ms in the handler, ms to the next frame].
TIMED = """
var done = arguments[arguments.length - 1];
var action = new Function(arguments[0]);
var t0 = performance.now();
action();
var t1 = performance.now();
requestAnimationFrame(function () {
  setTimeout(function () { done([t1 - t0, performance.now() - t0]); }, 0);
});
"""


# --------------------------------------------------------------------------- data and service


def ensure_data(stores: int, seed: int, polls_per_store: float, cache_dir: Path) -> Path:
    folder = cache_dir / f"stores{stores}_seed{seed}_pps{polls_per_store:g}"
    if all((folder / name).is_file() for name in DATA_FILES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(GENERATOR), "--stores", str(stores), "--seed", str(seed), "--out", str(folder)]
    command += ["--force", "--polls-per-store", f"{polls_per_store:g}"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, timeout=1800)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {})}
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET", headers=headers)
    try:
        with OPENER.open(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@contextlib.contextmanager
def running_service(root: Path, work: Path, data_dir: Path):
    """`python app.py` from `root` on a free loopback port; yields its base URL."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("MONGO_URI", "API_TOKEN")}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        DATA_DIR=str(data_dir),
        REPORTS_DIR=str(work / "reports"),
        EMBEDDED_DB=str(work / "db" / "bench.sqlite3"),
        PYTHONUNBUFFERED="1",
    )
    log_path = work / "service.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(root / "app.py")], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the service exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError, ValueError):
                status, body = http_json(f"{base}/health")
                if status == 200 and body.get("database_ok"):
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"no /health after {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def run_reports(base: str, count: int) -> list[str]:
    """`count` reports a day apart in as_of, the newest at the newest poll; their ids, oldest first."""
    status, health = http_json(f"{base}/health")
    newest = dt.datetime.fromisoformat(health["newest_poll"].replace("Z", "+00:00"))
    ids = []
    for back in range(count - 1, -1, -1):
        body = {"as_of": (newest - dt.timedelta(days=back)).isoformat()} if back else None
        status, answer = http_json(f"{base}/trigger_report", body if body is not None else {})
        if status != 202:
            raise SystemExit(f"trigger_report answered {status}: {answer}")
        report_id = answer["report_id"]
        deadline = time.monotonic() + REPORT_TIMEOUT
        while True:
            status, report = http_json(f"{base}/get_report?report_id={report_id}")
            if status == 200 and report.get("status") == "Complete":
                break
            if status != 200 or report.get("status") == "Failed" or time.monotonic() > deadline:
                raise SystemExit(f"report {report_id}: {status} {str(report)[:500]}")
            time.sleep(0.3)
        ids.append(report_id)
    return ids


# --------------------------------------------------------------------------- the browser


def start_browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile.mkdir(parents=True, exist_ok=True)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-proxy-server",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(profile / "driver.log")), options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
    return driver


def wait_for(driver, script: str, what: str, timeout: float = UI_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def timed(driver, action: str) -> tuple[float, float]:
    handler, frame = driver.execute_async_script(TIMED, action)
    return handler, frame


def one_run(driver, base: str, report_id: str, measures: dict[str, list[float]]) -> None:
    def add(name: str, value: float) -> None:
        measures.setdefault(name, []).append(value)

    driver.get("about:blank")
    driver.get(f"{base}/#report={report_id}")
    wait_for(driver, "return window.__bench && window.__bench.rowsPainted", "the report's first rows")
    painted = driver.execute_script("return window.__bench.rowsPainted")
    arrived = driver.execute_script(
        "const e = performance.getEntriesByType('resource').filter(r => r.name.includes('/get_report?report_id='));"
        "return e.length ? e[e.length - 1].responseEnd : null;"
    )
    add("usable: data arrived -> first rows on screen", painted - arrived)
    add("usable: navigation -> first rows on screen", painted)
    changes_state = wait_for(
        driver,
        "const s = document.getElementById('changes'); const st = s ? s.dataset.state : 'absent';"
        "return st && st !== 'loading' ? st : null;",
        "the changes section",
    )
    if changes_state == "shown":
        shown_at = wait_for(driver, "return window.__bench.states['changes:shown']", "the changes drawn")
        add("changes: navigation -> drawn", shown_at)

    for key in COLUMNS[1:] + COLUMNS[:1]:  # store_id last: the table opens in store id order
        _, frame = timed(driver, f"document.querySelector('#report-table thead button[data-key=\"{key}\"]').click();")
        add(f"sort by {key}", frame)
    timed(driver, "document.querySelector('#report-table thead button[data-key=\"store_id\"]').click();")

    typed = driver.execute_script(
        "return document.querySelector('#report-table tbody tr[data-store-id]').dataset.storeId;"
    )[:6]
    keystrokes = [typed[:n] for n in range(1, len(typed) + 1)] + [typed[:n] for n in range(len(typed) - 1, -1, -1)]
    for value in keystrokes:
        _, frame = timed(
            driver,
            "const box = document.getElementById('filter');"
            f"box.value = {json.dumps(value)}; box.dispatchEvent(new Event('input', {{bubbles: true}}));",
        )
        add("filter keystroke", frame)

    scroller = "const s = document.querySelector('#report .table-scroll');"
    for _ in range(3):
        _, frame = timed(driver, scroller + "s.scrollTop += s.clientHeight;")
        add("scroll a screenful", frame)
    _, frame = timed(driver, scroller + "s.scrollTop = s.scrollHeight / 2;")
    add("scroll to the middle", frame)

    store_id = driver.execute_script(
        "const rows = document.querySelectorAll('#report-table tbody tr[data-store-id]');"
        "return rows[Math.floor(rows.length / 2)].dataset.storeId;"
    )
    clicked = driver.execute_script(
        "window.__bench.states = {};"
        "const t0 = performance.now();"
        "document.querySelector('#report-table button.store-link[data-store-id=\"' + arguments[0] + '\"]').click();"
        "return t0;",
        store_id,
    )
    week = wait_for(driver, "return window.__bench.states['store-week:shown']", "the store's week")
    add("store view: click -> week drawn", week - clicked)
    if driver.execute_script("return !!document.getElementById('history')"):
        history = wait_for(
            driver,
            "const s = window.__bench.states; return s['history:shown'] || s['history:failed'] || s['history:empty'];",
            "the store's history",
        )
        add("store view: click -> history drawn", history - clicked)


def screenshot(driver, path: Path, selector: str | None = None, max_height: int = 6000) -> None:
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
    if selector:
        top, height = driver.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return [r.top + window.scrollY, r.height];",
            selector,
        )
        clip.update(y=max(0, top - 12), height=min(height + 24, max_height))
    options = {"format": "png", "captureBeyondViewport": True, "clip": clip}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", options)
    path.write_bytes(base64.b64decode(shot["data"]))


def take_screenshots(driver, base: str, report_id: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for width in (1280, 400):
        driver.set_window_size(width, 1000)
        driver.get("about:blank")
        driver.get(f"{base}/#report={report_id}")
        wait_for(driver, "return window.__bench && window.__bench.rowsPainted", "the report's first rows")
        wait_for(driver, "return document.getElementById('changes').dataset.state !== 'loading'", "the changes")
        screenshot(driver, folder / f"page-{width}.png", max_height=4000)
        store_id = driver.execute_script(
            "return document.querySelector('#changes button.store-link, #report-table button.store-link')"
            ".dataset.storeId;"
        )
        driver.execute_script(
            "document.querySelector('#report-table button.store-link, #changes button.store-link').click();"
        )
        wait_for(
            driver,
            "const w = document.getElementById('store-week').dataset;"
            "return w.state === 'shown' && document.getElementById('history').dataset.state !== 'loading';",
            f"the store view of {store_id}",
        )
        screenshot(driver, folder / f"store-{width}.png", selector="#store-week")
    driver.set_window_size(1280, 1000)


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    try:
        chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        chromium = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "os": f"{platform.system()} {platform.release()}",
        "chromium": chromium,
    }


def target_of(name: str) -> str:
    if name.startswith("usable: data"):
        return f"< {TARGET_USABLE_MS:.0f}"
    if name.startswith(("sort", "filter")):
        return f"< {TARGET_ANSWER_MS:.0f}"
    return ""


def print_table(measures: dict[str, list[float]], header: str) -> None:
    print(header)
    width = max(len(name) for name in measures)
    print(f"{'measure':<{width}}  {'median':>8}  {'lowest':>8}  {'highest':>8}  {'n':>3}  target (ms)")
    for name, values in measures.items():
        print(
            f"{name:<{width}}  {statistics.median(values):8.1f}  {min(values):8.1f}  {max(values):8.1f}"
            f"  {len(values):3d}  {target_of(name)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=int, default=14_000)
    parser.add_argument("--polls-per-store", type=float, default=107.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reports", type=int, default=5, help="reports a day apart (history, changes); default 5")
    parser.add_argument("--runs", type=int, default=5, help="fresh page loads measured; default 5")
    parser.add_argument("--root", type=Path, default=REPO, help="the checkout whose app.py and static/ to serve")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "store-uptime-bench")
    parser.add_argument("--screenshots", type=Path, help="save the page and store view at 1280 and 400 px here")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        raise SystemExit(f"needs {CHROMIUM} and {CHROMEDRIVER}: bash scripts/install_browser.sh")

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    data_dir = ensure_data(args.stores, args.seed, args.polls_per_store, args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="bench-page-", dir=args.cache_dir))
    try:
        with running_service(args.root.resolve(), work, data_dir) as base:
            report_ids = run_reports(base, args.reports)
            newest = report_ids[-1]
            _, body = http_json(f"{base}/get_report?report_id={newest}")
            size_mb = len(json.dumps(body)) / 1e6
            driver = start_browser(work / "profile")
            try:
                measures: dict[str, list[float]] = {}
                for _ in range(args.runs):
                    one_run(driver, base, newest, measures)
                if args.screenshots:
                    take_screenshots(driver, base, newest, args.screenshots)
            finally:
                driver.quit()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    facts = machine()
    header = (
        f"page benchmark: {body['row_count']} stores ({size_mb:.1f} MB of JSON), {args.reports} reports, "
        f"{args.runs} fresh page loads; ms, median of the runs\n"
        f"machine: {facts['cpu']}, {facts['cores']} cores, load average {facts['load_average']}, "
        f"{facts['chromium']} headless, {facts['os']}"
    )
    print_table(measures, header)
    if args.json:
        figures = {"machine": facts, "stores": body["row_count"], "measures": measures}
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
