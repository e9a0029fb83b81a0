"""The page at GET /, driven in headless Chromium against the real service.

Starts `python app.py` on a free loopback port with a small generated data set
(the embedded SQLite store), opens the page, clicks "Run report", waits for the
table, and checks the table, the chart data, the CSV link, sorting,
filtering, the past-reports list, the changes since the previous report, a
store's history and week, and the error messages against the JSON fetched
straight from the same service.  A second service on 3,000 stores checks that
the table, which draws only the rows in view, shows the right rows in the right
order after every sort, filter and scroll (what is drawn and in view, and the
row count the page states; never how fast: benchmarks/bench_page.py times it).

Needs Debian's `chromium` and `chromium-driver` (run `scripts/install_browser.sh`;
CI installs them) and selenium (requirements-dev.txt); skipped otherwise.
`SAVE_SCREENSHOT=1` also remakes docs/screenshot.png, docs/screenshot-narrow.png and
docs/store-week.png (the README's and docs/page.md's pictures) from the sample data in data/.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import free_port
from tests.reference import reference_report

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STORES = 30
START_TIMEOUT = 90  # seconds for the service to answer /health
REPORT_TIMEOUT = 90  # seconds for a report on the small data set
UI_TIMEOUT = 15  # seconds for the page to react to a click or a keystroke
HTTP_TIMEOUT = 15
COLUMNS = (
    "store_id",
    "uptime_last_hour",
    "uptime_last_day",
    "uptime_last_week",
    "downtime_last_hour",
    "downtime_last_day",
    "downtime_last_week",
)

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER}: run `bash scripts/install_browser.sh` "
        "(apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed: pip install -r requirements-dev.txt"
)
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Loopback only: never route the test's own requests through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- helpers


def http_json(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, dict]:
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with OPENER.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_for_report(base: str, report_id: str) -> dict:
    deadline = time.monotonic() + REPORT_TIMEOUT
    while time.monotonic() < deadline:
        status, body = http_json(f"{base}/get_report?report_id={report_id}")
        assert status == 200, body
        if body["status"] != "Running":
            return body
        time.sleep(0.2)
    raise AssertionError(f"report {report_id} still Running after {REPORT_TIMEOUT} s")


def top_by_week_downtime(rows: list[dict], n: int = 20) -> list[dict]:
    """The page's rule: most downtime_last_week first, ties by store_id."""
    return sorted(rows, key=lambda r: (-r["downtime_last_week"], r["store_id"]))[:n]


def uptime_share(row: dict) -> float | None:
    total = row["uptime_last_week"] + row["downtime_last_week"]
    return row["uptime_last_week"] / total if total > 0 else None


def table_rows(driver) -> list[list[str]]:
    """The report table's body as text, one list of cells per row (read in one call)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#report-table tbody tr[data-store-id]'))"
        ".map(tr => Array.from(tr.children).map(cell => cell.textContent.trim()));"
    )


def chart_items(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#chart-data li')).map(li => ({"
        "store_id: li.dataset.storeId, downtime: li.dataset.downtimeWeek,"
        "uptime: li.dataset.uptimeWeek, share: li.dataset.uptimeShare}));"
    )


def wait(driver, condition, message: str, timeout: float = UI_TIMEOUT):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message)
    except TimeoutException:
        text = driver.find_element(By.ID, "message").get_attribute("textContent")
        raise AssertionError(f"{message} (page message: {text!r})") from None


def click(driver, selector: str, message: str) -> None:
    """Click the element at `selector`, again if the page redrew it in between (lists are redrawn)."""

    def attempt(d) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
            return True
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    wait(driver, attempt, message)


def assert_table_matches(driver, report: dict) -> None:
    columns = report["columns"]
    rows = table_rows(driver)
    assert len(rows) == len(report["data"]) == report["row_count"]
    shown = {cells[0]: cells for cells in rows}
    assert len(shown) == len(rows), "a store appears twice in the table"
    for row in report["data"]:
        cells = shown[row["store_id"]]
        assert len(cells) == len(columns)
        for key, text in zip(columns[1:], cells[1:]):
            assert float(text) == pytest.approx(row[key], abs=1e-9), (row["store_id"], key, text)


# --------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def running_service(base_dir: Path, data_dir: Path, **settings: str):
    """`python app.py` on a free loopback port; yields its base URL; stopped (terminate, then kill) on exit."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("MONGO_URI", "API_TOKEN")}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        DATA_DIR=str(data_dir),
        REPORTS_DIR=str(base_dir / "reports"),
        EMBEDDED_DB=str(base_dir / "db" / "browser.sqlite3"),
        PYTHONUNBUFFERED="1",
        **settings,
    )
    log_path = base_dir / "service.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the service exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                status, body = http_json(f"{base}/health")
                if status == 200 and body.get("database_ok"):
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no /health after {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def data_set(tmp_path_factory) -> Path:
    """A small realistic data set (scripts/generate_data.py), so a report takes about a second."""
    data_dir = tmp_path_factory.mktemp("browser-data")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_data.py"), "--stores", str(STORES), "--out", str(data_dir)],
        check=True,
        cwd=ROOT,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
    return data_dir


@pytest.fixture(scope="module")
def service(tmp_path_factory, data_set):
    """The service on the small data set, open (no API_TOKEN)."""
    with running_service(tmp_path_factory.mktemp("browser"), data_set) as base:
        yield base


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
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
        "--disable-quic",
        "--no-proxy-server",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    if any(os.environ.get(name) for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")):
        with warnings.catch_warnings():  # deprecated, but webdriver.Chrome takes no ClientConfig
            warnings.simplefilter("ignore", DeprecationWarning)
            options.ignore_local_proxy_environment_variables()
    browser = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(profile / "chromedriver.log")), options=options
    )
    browser.set_page_load_timeout(30)
    browser.set_script_timeout(30)
    # every page records what its Content-Security-Policy blocked (checked by the CSP test)
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": (
                "window.__cspViolations = [];"
                "document.addEventListener('securitypolicyviolation', function (e) {"
                "  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI); });"
            )
        },
    )
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shown(service, driver):
    """Open the page, click "Run report", wait for the table; the report's JSON as the API gives it."""
    driver.get(service + "/")
    assert driver.title == "Store uptime reports"
    wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "idle", "page did not start")
    trigger = driver.find_element(By.ID, "trigger")
    assert trigger.is_enabled() and trigger.text == "Run report"
    trigger.click()
    section = driver.find_element(By.ID, "report")
    wait(driver, lambda d: section.get_attribute("data-report-id"), "no report shown", timeout=REPORT_TIMEOUT)
    report_id = section.get_attribute("data-report-id")
    assert driver.execute_script("return document.body.dataset.state") == "complete"
    assert trigger.is_enabled(), "the button stays disabled after the report finished"
    report = wait_for_report(service, report_id)
    assert report["status"] == "Complete" and report["row_count"] == len(report["data"]) > 0
    return report


def test_the_page_works_under_its_content_security_policy(service, driver, shown):
    """The page and Chart.js run under the service's CSP, with nothing blocked; the headers are on the page."""
    with OPENER.open(urllib.request.Request(service + "/"), timeout=HTTP_TIMEOUT) as response:
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert driver.execute_script("return window.__cspViolations") == []
    assert driver.execute_script(
        "return !!(window.Chart && window.Chart.getChart(document.getElementById('chart')))"
    ), "Chart.js did not draw the chart"
    if os.environ.get("CSP_SCREENSHOT"):
        save_screenshot(driver, Path(os.environ["CSP_SCREENSHOT"]))


def save_screenshot(driver, path: Path, selector: str | None = None, max_height: int = 6000) -> None:
    """The page (or the element at `selector`) at the window's width (Chromium's DevTools capture)."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))


# --------------------------------------------------------------------------- tests


def test_the_report_shown_has_the_reference_figures(shown, data_set):
    """The page is checked against the service's JSON; that JSON is checked here against the figures
    tests/reference.py works out from the same files, so the page is not only compared with itself."""
    assert shown["data"] == reference_report(data_set)


def test_table_shows_every_store_of_the_report_in_store_id_order(driver, shown):
    assert driver.find_element(By.ID, "report-table").is_displayed()
    rows = table_rows(driver)
    assert [cells[0] for cells in rows] == sorted(row["store_id"] for row in shown["data"])
    assert_table_matches(driver, shown)
    headers = driver.execute_script(
        "return Array.from(document.querySelectorAll('#report-table thead th')).map(th => th.dataset.key);"
    )
    assert headers == shown["columns"]
    assert driver.find_element(By.ID, "row-count").text == f"{len(rows)} stores"


def test_chart_lists_the_top_20_stores_by_week_downtime(driver, shown):
    items = chart_items(driver)
    expected = top_by_week_downtime(shown["data"])
    assert len(items) == min(20, len(shown["data"]))
    assert [item["store_id"] for item in items] == [row["store_id"] for row in expected]
    for item, row in zip(items, expected):
        assert float(item["downtime"]) == pytest.approx(row["downtime_last_week"], abs=1e-9)
        assert float(item["uptime"]) == pytest.approx(row["uptime_last_week"], abs=1e-9)
        share = uptime_share(row)
        if share is None:
            assert item["share"] == ""
        else:
            assert float(item["share"]) == pytest.approx(share, rel=1e-9)
            assert 0.0 <= float(item["share"]) <= 1.0
    # The chart itself was drawn (Chart.js loaded from static/vendor): one measure, hours, down then up stacked.
    drawn = driver.execute_script(
        "const c = window.Chart && Chart.getChart(document.getElementById('chart'));"
        "return c ? {labels: c.data.labels, down: c.data.datasets[0].data, up: c.data.datasets[1].data,"
        "            axes: Object.keys(c.options.scales).sort()} : null;"
    )
    assert drawn is not None, "Chart.js did not draw the chart"
    assert drawn["labels"] == [row["store_id"] for row in expected]
    assert drawn["down"] == pytest.approx([row["downtime_last_week"] for row in expected])
    assert drawn["up"] == pytest.approx([row["uptime_last_week"] for row in expected])
    assert drawn["axes"] == ["x", "y"], "one value axis"
    assert driver.find_element(By.ID, "chart").size["height"] > 100


def test_csv_link_downloads_this_report(driver, service, shown):
    link = driver.find_element(By.ID, "csv-link")
    assert link.is_displayed()
    href = link.get_attribute("href")
    assert href == f"{service}/get_report?report_id={shown['report_id']}&format=csv"
    with OPENER.open(href, timeout=HTTP_TIMEOUT) as response:
        assert response.headers["Content-Type"].startswith("text/csv")
        lines = response.read().decode().splitlines()
    assert lines[0] == ",".join(shown["columns"])
    assert len(lines) == 1 + shown["row_count"]


def test_past_reports_list_the_report(driver, shown):
    def listed(d) -> list[str] | None:  # read in one call: the list is redrawn as reports finish
        return d.execute_script(
            "const tr = document.querySelector('#past-reports tr[data-report-id=\"' + arguments[0] + '\"]');"
            "return tr && [tr.dataset.status, tr.getAttribute('aria-current'),"
            "              ...Array.from(tr.children).map(td => td.textContent.trim())];",
            shown["report_id"],
        )

    wait(driver, lambda d: (listed(d) or [None])[0] == "Complete", "the report is not listed as Complete")
    status, current, created, as_of, badge, count, actions = listed(driver)
    assert current == "true"  # the report on show is marked in the list
    assert badge == "Complete" and count == str(shown["row_count"])
    assert as_of == shown["as_of"].replace("T", " ").split(".")[0].rstrip("Z")
    assert "View" in actions and "CSV" in actions


def test_sorting_by_a_column_header(driver, shown):
    def click_header(key: str) -> None:
        driver.find_element(By.CSS_SELECTOR, f'#report-table thead button[data-key="{key}"]').click()

    def header_sort(key: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, f'#report-table thead th[data-key="{key}"]').get_attribute(
            "aria-sort"
        )

    def expect(key: str, descending: bool) -> list[str]:
        sign = -1 if descending else 1
        return [r["store_id"] for r in sorted(shown["data"], key=lambda r: (sign * r[key], r["store_id"]))]

    key = "downtime_last_week"
    click_header(key)  # numbers sort biggest first on the first click
    wait(driver, lambda d: [c[0] for c in table_rows(d)] == expect(key, descending=True), "no descending sort")
    assert header_sort(key) == "descending" and header_sort("store_id") == "none"
    click_header(key)
    wait(driver, lambda d: [c[0] for c in table_rows(d)] == expect(key, descending=False), "no ascending sort")
    assert header_sort(key) == "ascending"
    assert_table_matches(driver, shown)  # the same rows, only reordered

    click_header("store_id")
    ids = sorted(r["store_id"] for r in shown["data"])
    wait(driver, lambda d: [c[0] for c in table_rows(d)] == ids, "no sort by store id")
    assert header_sort("store_id") == "ascending"


def test_filtering_by_store_id(driver, shown):
    box = driver.find_element(By.ID, "filter")
    prefix = shown["data"][len(shown["data"]) // 2]["store_id"][:4]
    expected = sorted(r["store_id"] for r in shown["data"] if prefix in r["store_id"])
    assert 0 < len(expected) <= len(shown["data"])
    box.send_keys(prefix)
    wait(driver, lambda d: [c[0] for c in table_rows(d)] == expected, f"filter {prefix!r} did not apply")
    full_id = shown["data"][0]["store_id"]
    box.clear()
    box.send_keys(full_id)
    wait(driver, lambda d: [c[0] for c in table_rows(d)] == [full_id], "filter by a whole id did not apply")
    assert driver.find_element(By.ID, "row-count").text == f"Showing 1 of {len(shown['data'])} stores"
    box.send_keys("no-such-store")
    wait(driver, lambda d: table_rows(d) == [], "a filter matching nothing still shows rows")
    assert "No store id matches" in driver.find_element(By.CSS_SELECTOR, "#report-table tbody").text
    box.clear()
    box.send_keys(" ")  # an input event for the cleared box
    wait(driver, lambda d: len(table_rows(d)) == len(shown["data"]), "clearing the filter did not restore the rows")


def test_clicking_a_past_report_loads_it(driver, service, shown):
    # A second report as of two days earlier, started through the API, then opened from the list.
    earlier = dt.datetime.fromisoformat(shown["as_of"].replace("Z", "+00:00")) - dt.timedelta(days=2)
    status, body = http_json(
        f"{service}/trigger_report", json.dumps({"as_of": earlier.isoformat()}).encode(), method="POST"
    )
    assert status == 202, body
    other = wait_for_report(service, body["report_id"])
    assert other["status"] == "Complete" and other["row_count"] > 0
    assert other["data"] != shown["data"]
    driver.find_element(By.ID, "refresh-reports").click()
    selector = f'#past-reports button.view[data-report-id="{other["report_id"]}"]'
    click(driver, selector, "the new report is not listed")
    wait(
        driver,
        lambda d: d.find_element(By.ID, "report").get_attribute("data-report-id") == other["report_id"],
        "clicking View did not load the report",
    )
    assert_table_matches(driver, other)
    assert [i["store_id"] for i in chart_items(driver)] == [r["store_id"] for r in top_by_week_downtime(other["data"])]
    assert (
        driver.find_element(By.ID, "csv-link")
        .get_attribute("href")
        .endswith(f"report_id={other['report_id']}&format=csv")
    )
    # A #report=<id> address opens a report too; then View goes back to the first one.
    driver.execute_script("location.hash = '#report=' + arguments[0];", shown["report_id"])
    wait(
        driver,
        lambda d: d.find_element(By.ID, "report").get_attribute("data-report-id") == shown["report_id"],
        "#report=<id> did not load the report",
    )
    click(driver, f'#past-reports button.view[data-report-id="{other["report_id"]}"]', "no View button")
    wait(
        driver,
        lambda d: d.find_element(By.ID, "report").get_attribute("data-report-id") == other["report_id"],
        "clicking View did not load the second report again",
    )
    click(driver, f'#past-reports button.view[data-report-id="{shown["report_id"]}"]', "no View button")
    wait(
        driver,
        lambda d: d.find_element(By.ID, "report").get_attribute("data-report-id") == shown["report_id"],
        "clicking View did not load the first report again",
    )
    assert_table_matches(driver, shown)


def test_a_report_after_the_newest_poll_says_so_on_the_page(driver, service, shown):
    later = dt.datetime.fromisoformat(shown["as_of"].replace("Z", "+00:00")) + dt.timedelta(hours=3)
    status, body = http_json(
        f"{service}/trigger_report", json.dumps({"as_of": later.isoformat()}).encode(), method="POST"
    )
    assert status == 202, body
    other = wait_for_report(service, body["report_id"])
    assert other["as_of_after_newest_poll"] is True
    line = driver.find_element(By.ID, "report-after-newest")
    assert not line.is_displayed()  # the report at the newest poll has no such line
    driver.execute_script("location.hash = '#report=' + arguments[0];", other["report_id"])
    wait(driver, lambda d: line.is_displayed(), "no line saying the report is later than the newest poll")
    assert "later than the newest poll" in line.text
    driver.execute_script("location.hash = '#report=' + arguments[0];", shown["report_id"])
    wait(driver, lambda d: not line.is_displayed(), "the line stays for a report at the newest poll")


def test_errors_are_shown(driver, shown):
    message = driver.find_element(By.ID, "message")
    as_of = driver.find_element(By.ID, "as-of")
    trigger = driver.find_element(By.ID, "trigger")

    # An HTTP error (400: as_of is not a date) shows the server's message.
    as_of.send_keys("not-a-date")
    trigger.click()
    wait(driver, lambda d: message.is_displayed() and "HTTP 400" in message.text, "no message for a 400")
    assert "ISO 8601" in message.text
    assert trigger.is_enabled()

    # A report that ends Failed shows its reason.  The real service only fails on broken data or a
    # broken database, so the page's fetch is wrapped to answer /get_report with a Failed body.
    as_of.clear()
    driver.execute_script("""
        window.__realFetch = window.fetch;
        window.fetch = function (url, options) {
          if (String(url).indexOf('/get_report?') !== -1) {
            return Promise.resolve(new Response(JSON.stringify({status: 'Failed', error: 'simulated: disk full'}),
                                                {status: 200, headers: {'Content-Type': 'application/json'}}));
          }
          return window.__realFetch(url, options);
        };""")
    try:
        trigger.click()
        wait(
            driver,
            lambda d: d.execute_script("return document.body.dataset.state") == "failed",
            "the Failed report did not end the run",
        )
        wait(
            driver,
            lambda d: message.is_displayed() and "simulated: disk full" in message.text,
            "no message for a Failed report",
        )
        assert "failed" in message.text
        assert trigger.is_enabled() and trigger.text == "Run report"
        assert not driver.find_element(By.ID, "progress-area").is_displayed()
    finally:
        driver.execute_script("window.fetch = window.__realFetch;")
    # The report on show stays the last good one; the message can be dismissed.
    assert driver.find_element(By.ID, "report").get_attribute("data-report-id") == shown["report_id"]
    message.find_element(By.CSS_SELECTOR, "button.dismiss").click()
    assert not message.is_displayed()


def micros(text: str) -> int:
    """Microseconds since the epoch of an API instant (ISO 8601 UTC, microseconds, Z)."""
    when = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def segment_totals(timeline: dict) -> dict[str, float]:
    """Each window's up and down time added up from the API's segments, in the report's units."""
    totals = {}
    for name, (low, high) in timeline["windows"].items():
        low, high = micros(low), micros(high)
        for status, kind in (("active", "uptime"), ("inactive", "downtime")):
            covered = sum(
                max(0, min(micros(seg["end"]), high) - max(micros(seg["start"]), low))
                for seg in timeline["segments"]
                if seg["status"] == status
            )
            totals[f"{kind}_last_{name}"] = covered / (60e6 if name == "hour" else 3600e6)
    return totals


def local_dates(timeline: dict) -> list[dt.date]:
    """The local calendar dates the week window touches, in the store's zone."""
    zone = ZoneInfo(timeline["timezone"])
    start = dt.datetime.fromtimestamp(micros(timeline["windows"]["week"][0]) / 1e6, zone).date()
    end = dt.datetime.fromtimestamp((micros(timeline["windows"]["week"][1]) - 1) / 1e6, zone).date()
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


def shown_week(driver) -> dict:
    """What the store's week section drew, read in one call."""
    return driver.execute_script("""
        const section = document.getElementById('store-week');
        const cells = Array.from(section.querySelectorAll('#week-totals tbody td[data-key]'));
        return {
          store: section.dataset.storeId, report: section.dataset.reportId,
          meta: document.getElementById('week-meta').textContent,
          days: section.querySelectorAll('.week-day:not(.axis)').length,
          drawn: Object.fromEntries(cells.filter(td => !td.classList.contains('report'))
                                         .map(td => [td.dataset.key, Number(td.dataset.value)])),
          shownText: Object.fromEntries(cells.filter(td => !td.classList.contains('report'))
                                             .map(td => [td.dataset.key, td.textContent])),
          reportText: Object.fromEntries(cells.filter(td => td.classList.contains('report'))
                                              .map(td => [td.dataset.key, td.textContent])),
          segments: Array.from(section.querySelectorAll('.track .seg')).map(el => Number(el.dataset.seg)),
          downPieces: section.querySelectorAll('.track .seg.down').length,
          ticks: Array.from(section.querySelectorAll('.track .tick')).map(el => Number(el.dataset.at)),
          marks: Array.from(section.querySelectorAll('.track .mark')).map(el => el.dataset.label),
        };""")


def assert_week_matches_the_api(driver, service, report_id: str, store_id: str) -> dict:
    wait(
        driver,
        lambda d: (
            d.find_element(By.ID, "store-week").get_attribute("data-state") == "shown"
            and d.find_element(By.ID, "store-week").get_attribute("data-store-id") == store_id
        ),
        f"the week of store {store_id} is not shown",
    )
    status, timeline = http_json(f"{service}/stores/{store_id}/timeline?report_id={report_id}")
    assert status == 200, timeline
    week = shown_week(driver)
    assert week["report"] == report_id and timeline["timezone"] in week["meta"]
    expected = segment_totals(timeline)
    assert set(week["drawn"]) == set(expected) == set(timeline["totals"]) - {"store_id"}
    for key, value in expected.items():
        assert week["drawn"][key] == pytest.approx(value, abs=1e-9), key  # what the page added up
        assert round(week["drawn"][key], 2) == pytest.approx(timeline["totals"][key], abs=0.0100001), key
        unit = " min" if key.endswith("_hour") else " h"
        assert week["reportText"][key] == f"{timeline['totals'][key]:.2f}{unit}", key  # the report's own row
        assert week["shownText"][key] == f"{week['drawn'][key]:.2f}{unit}", key
    assert week["days"] == len(local_dates(timeline))
    assert set(week["segments"]) == set(range(len(timeline["segments"])))  # every segment drawn
    week_start = micros(timeline["windows"]["week"][0])
    polls = {micros(p["timestamp"]) for p in timeline["polls"]}
    assert {t for t in polls if t >= week_start} <= set(week["ticks"]) <= polls  # every poll of the week a tick
    assert sorted(week["marks"]) == ["1 d", "1 h"]
    return timeline


def test_clicking_a_store_id_shows_its_week(driver, service, shown):
    store_id = top_by_week_downtime(shown["data"])[3]["store_id"]
    click(driver, f'#report-table button.store-link[data-store-id="{store_id}"]', "no store link in the table")
    timeline = assert_week_matches_the_api(driver, service, shown["report_id"], store_id)
    assert timeline["totals"] == next(row for row in shown["data"] if row["store_id"] == store_id)
    assert shown_week(driver)["downPieces"] > 0
    driver.find_element(By.ID, "week-close").click()
    assert not driver.find_element(By.ID, "store-week").is_displayed()


def test_clicking_a_bar_of_the_chart_shows_that_stores_week(driver, service, shown):
    index = 2
    store_id = top_by_week_downtime(shown["data"])[index]["store_id"]
    canvas = driver.find_element(By.ID, "chart")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", canvas)
    x, y = driver.execute_script(
        "const bar = Chart.getChart(arguments[0]).getDatasetMeta(0).data[arguments[1]];"
        "return [bar.base + (bar.x - bar.base) / 2, bar.y];",
        canvas,
        index,
    )
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(x - size["width"] / 2), int(y - size["height"] / 2)
    ).click().perform()
    assert_week_matches_the_api(driver, service, shown["report_id"], store_id)


def trigger_and_wait(base: str, as_of: dt.datetime | None = None) -> dict:
    """A report started through the API (at `as_of`, or at the newest poll), once it is Complete."""
    body = json.dumps({"as_of": as_of.isoformat()}).encode() if as_of is not None else b"{}"
    status, answer = http_json(f"{base}/trigger_report", body, method="POST")
    assert status == 202, answer
    report = wait_for_report(base, answer["report_id"])
    assert report["status"] == "Complete", report
    return report


@pytest.fixture(scope="module")
def more_reports(service, shown) -> list[dict]:
    """Two more reports, 12 and 36 hours before the one on show: the stores have a history, and the newest
    report made has one before it to compare with."""
    as_of = dt.datetime.fromisoformat(shown["as_of"].replace("Z", "+00:00"))
    return [trigger_and_wait(service, as_of - dt.timedelta(hours=hours)) for hours in (36, 12)]


def open_report(driver, report_id: str) -> None:
    """Show a report through the address (#report=<id>), as a bookmark does; wait for its rows."""
    driver.execute_script("location.hash = '#report=' + arguments[0];", report_id)
    wait(
        driver,
        lambda d: d.find_element(By.ID, "report").get_attribute("data-report-id") == report_id,
        f"report {report_id} not shown",
    )


def section_state(driver, section_id: str) -> str | None:
    """The data-state of the changes or history section once it has an answer (None while loading)."""
    state = driver.find_element(By.ID, section_id).get_attribute("data-state")
    return state if state not in (None, "", "loading") else None


def fmt(value: float) -> str:
    """The page's figures: two decimals."""
    return f"{value:.2f}"


def fmt_time(iso: str) -> str:
    """The page's times: "2023-01-25T18:13:22.123456Z" is shown as "2023-01-25 18:13:22"."""
    return iso.replace("T", " ").split(".")[0].removesuffix("Z").removesuffix("+00:00")


def shown_changes(driver) -> dict:
    return driver.execute_script("""
        const rows = id => Array.from(document.querySelectorAll('#' + id + ' tbody tr[data-store-id]')).map(tr =>
          [tr.dataset.storeId, ...Array.from(tr.querySelectorAll('td')).map(td => td.textContent)]);
        const box = document.getElementById('changes');
        return {state: box.dataset.state, report: box.dataset.reportId, base: box.dataset.baseReportId,
                meta: document.getElementById('changes-meta').textContent,
                rose: rows('changes-rose'), fell: rows('changes-fell'),
                newText: document.getElementById('changes-new').textContent,
                goneText: document.getElementById('changes-gone').textContent};""")


def test_the_report_shows_the_changes_since_the_previous_report(driver, service, shown):
    """Two reports a day apart: the later one's section lists the API's rose and fell stores with their
    figures and says how many stores moved; the first report of all says it has nothing to compare with."""
    as_of = dt.datetime.fromisoformat(shown["as_of"].replace("Z", "+00:00"))
    earlier = trigger_and_wait(service, as_of - dt.timedelta(days=1, hours=5))
    later = trigger_and_wait(service, as_of - dt.timedelta(hours=5))
    status, changes = http_json(f"{service}/reports/{later['report_id']}/changes?limit=10")
    assert status == 200, changes
    assert changes["base_report_id"] == earlier["report_id"]
    assert changes["rose"] and changes["fell"], "the data set should move some stores both ways in a day"

    open_report(driver, later["report_id"])
    wait(driver, lambda d: section_state(d, "changes"), "the changes section did not load")
    page = shown_changes(driver)
    assert page["state"] == "shown" and page["report"] == later["report_id"], page
    assert page["base"] == earlier["report_id"]
    for kind in ("rose", "fell"):
        assert page[kind] == [
            [
                row["store_id"],
                fmt(row["base_downtime_last_day"]),
                fmt(row["downtime_last_day"]),
                ("+" if row["change"] > 0 else "") + fmt(row["change"]),
            ]
            for row in changes[kind]
        ], kind
    counts = changes["counts"]
    assert f"rose at {counts['rose']} stores and fell at {counts['fell']}" in page["meta"]
    assert f"{counts['new']} new, {counts['gone']} gone" in page["meta"]
    assert fmt_time(changes["base_as_of"]) in page["meta"]
    if counts["new"] + counts["gone"] == 0:
        assert page["newText"] == "No store is new or gone."

    # A store in the list opens its week; "view it" opens the report compared with.
    store_id = changes["rose"][0]["store_id"]
    click(driver, f'#changes-rose button.store-link[data-store-id="{store_id}"]', "no store link in the changes")
    assert_week_matches_the_api(driver, service, later["report_id"], store_id)
    driver.find_element(By.ID, "week-close").click()
    click(driver, "#changes-meta button.view-base", "no button for the report compared with")
    wait(
        driver,
        lambda d: d.find_element(By.ID, "report").get_attribute("data-report-id") == earlier["report_id"],
        "the button did not show the report compared with",
    )

    # The first Complete report of all has nothing before it (the API's 404): the section says so.
    status, listing = http_json(f"{service}/reports?per_page=100")
    first = min((r for r in listing["reports"] if r["status"] == "Complete"), key=lambda r: r["created_at"])
    assert http_json(f"{service}/reports/{first['report_id']}/changes")[0] == 404
    open_report(driver, first["report_id"])
    wait(driver, lambda d: section_state(d, "changes") and shown_changes(d)["report"] == first["report_id"], "")
    page = shown_changes(driver)
    assert page["state"] == "none" and page["meta"] == "No earlier complete report to compare this one with."

    # Past reports carry each report's trigger (all started through the API here).
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#past-reports tbody tr')).map(tr => tr.dataset.trigger);"
    )
    assert rows and set(rows) == {"api"}
    open_report(driver, shown["report_id"])


def listed_changes(driver, list_id: str) -> dict:
    return driver.execute_script(
        "const box = document.getElementById(arguments[0]);"
        "return {text: box.textContent, hidden: box.hidden, items: Array.from(box.querySelectorAll('.change-item'))"
        "  .map(item => [item.dataset.storeId, item.textContent, !!item.querySelector('button.store-link')])};",
        list_id,
    )


def test_new_and_gone_stores_are_listed(driver, service, shown):
    """Reports just after the data begins hold fewer stores: a report compared with a later one lists the
    stores gone, the next one the stores new, as the API answers them, and the page stays within its width."""
    status, data = http_json(f"{service}/data")
    oldest = dt.datetime.fromisoformat(data["oldest_poll"].replace("Z", "+00:00"))
    fuller = trigger_and_wait(service, oldest + dt.timedelta(hours=3))
    early = trigger_and_wait(service, oldest + dt.timedelta(minutes=10))  # compared with `fuller`: stores gone
    again = trigger_and_wait(service, oldest + dt.timedelta(hours=3))  # compared with `early`: stores new
    assert early["row_count"] < fuller["row_count"] == again["row_count"]
    for report, kind, key, clickable in (
        (early, "gone", "base_downtime_last_day", False),
        (again, "new", "downtime_last_day", True),
    ):
        status, changes = http_json(f"{service}/reports/{report['report_id']}/changes?limit=10")
        assert status == 200 and changes[kind], changes
        open_report(driver, report["report_id"])
        wait(driver, lambda d: section_state(d, "changes"), "the changes section did not load")
        assert shown_changes(driver)["state"] == "shown"
        listed = listed_changes(driver, f"changes-{kind}")
        assert not listed["hidden"]
        assert listed["items"] == [
            [row["store_id"], f"{row['store_id']} {fmt(row[key])} h", clickable] for row in changes[kind]
        ]
        total = changes["counts"][kind]
        assert listed["text"].startswith(f"{kind.capitalize()} stores ({total}): ")
        assert listed["text"].endswith(f" and {total - 10} more." if total > 10 else " h")
        sizes = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
        assert sizes[0] <= sizes[1], sizes  # a long list wraps
    open_report(driver, shown["report_id"])


def shown_history(driver) -> dict:
    return driver.execute_script("""
        const box = document.getElementById('history');
        const sparks = {};
        box.querySelectorAll('.spark').forEach(figure => {
          sparks[figure.dataset.key] = Array.from(figure.querySelectorAll('.spark-dot')).map(dot =>
            [dot.dataset.reportId, Number(dot.dataset.value), dot.classList.contains('current')]);
        });
        return {state: box.dataset.state, store: box.dataset.storeId,
                meta: document.getElementById('history-meta').textContent, sparks: sparks,
                table: Array.from(document.querySelectorAll('#history-table tbody tr')).map(tr =>
                  [tr.dataset.reportId, tr.getAttribute('aria-current'),
                   ...Array.from(tr.querySelectorAll('td.num')).map(td => td.textContent)])};""")


def test_the_store_view_shows_the_stores_history_across_reports(driver, service, shown, more_reports):
    """Opening a store draws its downtime in the last day and week across the API's history points,
    oldest on the left, the report on show ringed, and lists the points as a table."""
    store_id = top_by_week_downtime(shown["data"])[1]["store_id"]
    status, history = http_json(f"{service}/stores/{store_id}/history?limit=30")
    assert status == 200, history
    assert len(history["points"]) >= 3  # at least `shown` and `more_reports`
    open_report(driver, shown["report_id"])
    click(driver, f'#report-table button.store-link[data-store-id="{store_id}"]', "no store link in the table")
    wait(driver, lambda d: section_state(d, "history"), "the history did not load")
    page = shown_history(driver)
    assert page["state"] == "shown" and page["store"] == store_id, page
    oldest_first = list(reversed(history["points"]))
    for key in ("downtime_last_day", "downtime_last_week"):
        assert page["sparks"][key] == [
            [p["report_id"], pytest.approx(p[key], abs=1e-9), p["report_id"] == shown["report_id"]]
            for p in oldest_first
        ], key
    assert page["table"] == [
        [
            p["report_id"],
            "true" if p["report_id"] == shown["report_id"] else None,
            fmt(p["downtime_last_day"]),
            fmt(p["downtime_last_week"]),
        ]
        for p in history["points"]
    ]
    assert f"The last {len(history['points'])} reports" in page["meta"]
    assert_week_matches_the_api(driver, service, shown["report_id"], store_id)  # the week is still there
    driver.find_element(By.ID, "week-close").click()


def test_a_section_that_cannot_be_loaded_says_so_in_one_line(driver, service, shown, more_reports):
    """When /changes or /history fail (here the page's fetch answers 503 for them), each section says so in
    one short line and the rest of the page works: the table, the store's week."""
    status, listing = http_json(f"{service}/reports?per_page=100")
    other = next(r for r in listing["reports"] if r["status"] == "Complete" and r["report_id"] != shown["report_id"])
    driver.execute_script("""
        window.__realFetch = window.fetch;
        window.fetch = function (url, options) {
          if (/\\/(history|changes)\\?/.test(String(url))) {
            return Promise.resolve(new Response(JSON.stringify({error: 'simulated: database busy. Try again.',
                                                                status: 503}),
                                                {status: 503, headers: {'Content-Type': 'application/json'}}));
          }
          return window.__realFetch(url, options);
        };""")
    try:
        open_report(driver, other["report_id"])
        wait(driver, lambda d: section_state(d, "changes") and shown_changes(d)["report"] == other["report_id"], "")
        page = shown_changes(driver)
        assert page["state"] == "failed"
        assert page["meta"] == (
            "The changes since the previous report could not be loaded. HTTP 503: simulated: database busy."
        )
        assert not driver.find_element(By.ID, "changes-body").is_displayed()
        assert table_rows(driver), "the table is drawn all the same"
        store_id = table_rows(driver)[0][0]
        click(driver, f'#report-table button.store-link[data-store-id="{store_id}"]', "no store link in the table")
        wait(driver, lambda d: section_state(d, "history"), "the history section did not answer")
        history = shown_history(driver)
        assert history["state"] == "failed"
        assert history["meta"] == "The store's history could not be loaded. HTTP 503: simulated: database busy."
        assert not driver.find_element(By.ID, "history-body").is_displayed()
        assert_week_matches_the_api(driver, service, other["report_id"], store_id)
        driver.find_element(By.ID, "week-close").click()
    finally:
        driver.execute_script("window.fetch = window.__realFetch;")
    open_report(driver, shown["report_id"])


def test_narrow_screen_needs_no_sideways_scrolling(driver, service, shown, more_reports):
    """At 400 px: no page-wide scrolling, the stores table fits its box, past reports' buttons are on screen,
    with the changes since the previous report shown (the newest report has one before it)."""
    status, listing = http_json(f"{service}/reports?per_page=100")
    newest = max((r for r in listing["reports"] if r["status"] == "Complete"), key=lambda r: r["created_at"])
    open_report(driver, newest["report_id"])
    driver.set_window_size(400, 900)
    try:
        wait(driver, lambda d: d.execute_script("return window.innerWidth") <= 420, "the window did not narrow")
        wait(driver, lambda d: section_state(d, "changes") == "shown", "no changes shown")
        sizes = driver.execute_script("""
            const scroll = document.querySelector('#report .table-scroll');
            const buttons = Array.from(document.querySelectorAll(
              '#past-reports td.actions button, #past-reports td.actions a'));
            return {page: document.documentElement.scrollWidth, view: window.innerWidth,
                    table: scroll.scrollWidth, box: scroll.clientWidth,
                    rightmost: Math.max(...buttons.map(b => b.getBoundingClientRect().right))};""")
        assert sizes["page"] <= sizes["view"], sizes
        assert sizes["table"] <= sizes["box"], sizes
        assert 0 < sizes["rightmost"] <= sizes["view"], sizes
        first = table_rows(driver)[0]
        assert len(first) == len(shown["columns"])  # every column still there, stacked
        edges = driver.execute_script(
            "return Array.from(document.querySelectorAll('#changes table')).map(t => t.getBoundingClientRect().right)"
            ".concat([document.getElementById('changes').getBoundingClientRect().right]);"
        )
        assert max(edges[:-1]) <= edges[-1], edges  # the changes tables fit their box
    finally:
        driver.set_window_size(1280, 1000)
        open_report(driver, shown["report_id"])


@pytest.mark.skipif(os.environ.get("SAVE_SCREENSHOT") != "1", reason="set SAVE_SCREENSHOT=1 to remake docs/*.png")
def test_save_the_readme_screenshots(driver, tmp_path):
    """The page on the sample data (data/, 200 stores) as a newcomer sees it after a week of daily reports:
    docs/screenshot.png at 1280 px, docs/screenshot-narrow.png at 400 px, and docs/store-week.png, one
    store's history and week opened from it."""
    with running_service(tmp_path, ROOT / "data") as base:
        status, health = http_json(f"{base}/health")
        newest = dt.datetime.fromisoformat(health["newest_poll"].replace("Z", "+00:00"))
        for days in range(6, 0, -1):  # a report a day before the one run from the page: history and changes
            trigger_and_wait(base, newest - dt.timedelta(days=days))
        driver.set_window_size(1280, 1000)
        driver.get(base + "/")
        driver.find_element(By.ID, "trigger").click()
        section = driver.find_element(By.ID, "report")
        wait(driver, lambda d: section.get_attribute("data-report-id"), "no report shown", timeout=REPORT_TIMEOUT)
        report = wait_for_report(base, section.get_attribute("data-report-id"))
        assert report["row_count"] == 200
        wait(driver, lambda d: section_state(d, "changes") == "shown", "no changes since the previous report")
        driver.execute_script("window.scrollTo(0, 0);")
        save_screenshot(driver, ROOT / "docs" / "screenshot.png", max_height=2400)
        store_id = "6204690224004845394"  # a store with split hours, ups and downs every day
        driver.find_element(By.ID, "filter").send_keys(store_id)  # the table draws only the rows in view
        click(driver, f'#report-table button.store-link[data-store-id="{store_id}"]', "no store link")
        assert_week_matches_the_api(driver, base, report["report_id"], store_id)
        wait(driver, lambda d: section_state(d, "history") == "shown", "no history of the store")
        driver.find_element(By.ID, "filter").clear()
        driver.find_element(By.ID, "filter").send_keys(" ")  # an input event for the cleared box
        save_screenshot(driver, ROOT / "docs" / "store-week.png", selector="#store-week")
        driver.find_element(By.ID, "week-close").click()
        driver.set_window_size(400, 900)
        try:
            wait(driver, lambda d: d.execute_script("return window.innerWidth") <= 420, "the window did not narrow")
            driver.execute_script("window.scrollTo(0, 0);")
            save_screenshot(driver, ROOT / "docs" / "screenshot-narrow.png", max_height=3200)
        finally:
            driver.set_window_size(1280, 1000)


def test_a_scheduled_report_says_so(driver, tmp_path, data_set):
    """With REPORT_EVERY_SECONDS set, the service starts reports on its own: the page marks them "scheduled" in
    the past reports and says "started by the schedule" over the report."""
    with running_service(tmp_path, data_set, REPORT_EVERY_SECONDS="2") as base:
        deadline = time.monotonic() + REPORT_TIMEOUT
        while True:
            status, listing = http_json(f"{base}/reports?per_page=100")
            assert status == 200, listing
            done = [r for r in listing["reports"] if r["trigger"] == "schedule" and r["status"] == "Complete"]
            if done:
                break
            assert time.monotonic() < deadline, f"no scheduled report after {REPORT_TIMEOUT} s: {listing}"
            time.sleep(0.2)
        report_id = done[0]["report_id"]
        driver.get(f"{base}/#report={report_id}")
        wait(
            driver,
            lambda d: d.find_element(By.ID, "report").get_attribute("data-report-id") == report_id,
            "the scheduled report is not shown",
        )
        assert driver.find_element(By.ID, "report-meta").text.endswith(" · started by the schedule")
        tag = wait(
            driver,
            lambda d: d.execute_script(
                "const tr = document.querySelector('#past-reports tr[data-report-id=\"' + arguments[0] + '\"]');"
                "return tr && [tr.dataset.trigger, tr.querySelector('.tag') && tr.querySelector('.tag').textContent];",
                report_id,
            ),
            "the scheduled report is not listed",
        )
        assert tag == ["schedule", "scheduled"]


def test_page_sends_the_api_token(driver, tmp_path, data_set):
    """With API_TOKEN set, the page says so until it has the token, then works (`#token=` in the address:
    the fragment never reaches the server, so the token stays out of access logs and Referer headers)."""
    token = "browser-test-token"
    with running_service(tmp_path, data_set, API_TOKEN=token) as base:
        driver.get(base + "/")
        message = driver.find_element(By.ID, "message")
        wait(driver, lambda d: message.is_displayed() and "HTTP 401" in message.text, "no message for a 401")
        assert "API token" in message.text

        driver.get(f"{base}/#token={token}")
        wait(driver, lambda d: "token" not in d.current_url, "the token stays in the address bar")
        trigger = driver.find_element(By.ID, "trigger")
        trigger.click()
        wait(
            driver,
            lambda d: d.find_element(By.ID, "report").get_attribute("data-report-id"),
            "no report shown",
            timeout=REPORT_TIMEOUT,
        )
        assert driver.execute_script("return document.body.dataset.state") == "complete"
        assert not driver.find_element(By.ID, "message").is_displayed()
        assert len(table_rows(driver)) == STORES
        wait(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#past-reports tr[data-status='Complete']"),
            "past reports not listed with the token",
        )
        # The token is kept in this tab only (sessionStorage), never in localStorage.
        assert driver.execute_script("return sessionStorage.getItem('storeUptime.apiToken')") == token
        assert driver.execute_script("return localStorage.getItem('storeUptime.apiToken')") is None
        driver.execute_script("sessionStorage.clear();")


# --------------------------------------------------------------------------- a report of a few thousand stores

BIG_STORES = 3000


@pytest.fixture(scope="module")
def big_report(tmp_path_factory):
    """The service on 3,000 generated stores (few polls each: the table is what is tested) and one report."""
    data_dir = tmp_path_factory.mktemp("browser-big-data")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_data.py"), "--stores", str(BIG_STORES)]
        + ["--polls-per-store", "20", "--out", str(data_dir)],
        check=True,
        cwd=ROOT,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )
    with running_service(tmp_path_factory.mktemp("browser-big"), data_dir) as base:
        report = trigger_and_wait(base)
        assert report["row_count"] == BIG_STORES
        yield base, report


def drawn_rows(driver) -> dict:
    """What the stores table has in the DOM and on screen, and the count the page states, read in one call:
    `first` the position (0-based) of the first row drawn, `ids` the drawn rows' store ids in order, `in_view`
    those of the rows at least partly visible in the scroller below its header."""
    return driver.execute_script("""
        const scroller = document.querySelector('#report .table-scroll');
        const box = scroller.getBoundingClientRect();
        const head = document.querySelector('#report-table thead').getBoundingClientRect();
        const rows = Array.from(document.querySelectorAll('#report-table tbody tr[data-store-id]'));
        const below = Math.max(box.top, head.bottom) + 1;
        const visible = rows.filter(tr => { const r = tr.getBoundingClientRect();
                                            return r.bottom > below && r.top < box.bottom - 1; });
        const spans = rows.map(tr => tr.getBoundingClientRect());
        return {first: rows.length ? Number(rows[0].getAttribute('aria-rowindex')) - 2 : null,
                drawn_top: spans.length ? spans[0].top - below : null,
                drawn_bottom: spans.length ? spans[spans.length - 1].bottom - (box.bottom - 1) : null,
                ids: rows.map(tr => tr.dataset.storeId),
                positions: rows.map(tr => Number(tr.getAttribute('aria-rowindex')) - 2),
                in_view: visible.map(tr => tr.dataset.storeId),
                cells: rows.map(tr => Array.from(tr.children).map(c => c.textContent)),
                count: document.getElementById('row-count').textContent,
                rowcount: document.getElementById('report-table').getAttribute('aria-rowcount'),
                top: scroller.scrollTop, height: scroller.scrollHeight, client: scroller.clientHeight};""")


def assert_drawn_window(page: dict, expected: list[str], figures: dict[str, dict]) -> None:
    """The drawn rows are the run of `expected` starting at the first one's position, with their figures, and
    cover the whole view; the rows in view are among them and form one run."""
    first, ids = page["first"], page["ids"]
    assert page["positions"] == list(range(first, first + len(ids)))
    assert ids == expected[first : first + len(ids)]
    # no blank band: the drawn rows reach past the top and the bottom of the view, unless the list ends there
    assert first == 0 or page["drawn_top"] <= 0, page["drawn_top"]
    assert first + len(ids) == len(expected) or page["drawn_bottom"] >= 0, page["drawn_bottom"]
    assert page["in_view"], page
    start = ids.index(page["in_view"][0])
    assert ids[start : start + len(page["in_view"])] == page["in_view"]
    for cells in page["cells"]:
        row = figures[cells[0]]
        assert cells[1:] == [fmt(row[key]) for key in COLUMNS[1:]], cells


def scroll_table(driver, where: str) -> dict:
    """Scroll the table (`where`: a JavaScript expression of the scroller `s`), then read it once it is drawn."""
    before = drawn_rows(driver)
    driver.execute_script(f"const s = document.querySelector('#report .table-scroll'); s.scrollTop = {where};")

    def settled(d):
        page = drawn_rows(d)
        return page if page["top"] != before["top"] and page["in_view"] and page["ids"] != before["ids"] else None

    return wait(driver, settled, f"the table did not draw the rows at {where}")


def test_a_big_report_draws_the_rows_in_view_sorted_and_filtered(driver, big_report):
    """3,000 stores: the page draws a window of rows, always the right run of the right order, whatever the
    sort, the filter or the scroll position, and states how many rows there are."""
    base, report = big_report
    figures = {row["store_id"]: row for row in report["data"]}
    driver.set_window_size(1280, 1000)
    driver.get(f"{base}/#report={report['report_id']}")
    wait(driver, lambda d: drawn_rows(d)["ids"], "the big report's rows are not drawn")
    page = drawn_rows(driver)
    by_id = sorted(figures)
    assert page["count"] == f"{BIG_STORES} stores" and page["rowcount"] == str(BIG_STORES + 1)
    assert page["first"] == 0 and len(page["ids"]) < 200, "every row drawn: the table is not windowed"
    assert_drawn_window(page, by_id, figures)
    assert page["in_view"][0] == by_id[0]

    def order(key: str, descending: bool) -> list[str]:
        sign = -1 if descending else 1
        return [r["store_id"] for r in sorted(report["data"], key=lambda r: (sign * r[key], r["store_id"]))]

    for key in COLUMNS[1:]:
        for descending in (True, False):  # numbers sort biggest first on the first click
            expected = order(key, descending)
            driver.find_element(By.CSS_SELECTOR, f'#report-table thead button[data-key="{key}"]').click()
            wait(driver, lambda d, first=expected[:5]: drawn_rows(d)["ids"][:5] == first, f"no sort by {key}")
            page = drawn_rows(driver)
            assert page["first"] == 0 and page["in_view"][0] == expected[0], key  # back at the top
            assert_drawn_window(page, expected, figures)
        # the middle and the end of this order
        page = scroll_table(driver, "s.scrollHeight / 2")
        assert page["first"] > 0
        assert_drawn_window(page, expected, figures)
        middle = expected.index(page["in_view"][0])
        assert abs(middle - BIG_STORES / 2) < 60, (middle, page["top"], page["height"])
        page = scroll_table(driver, "s.scrollHeight")
        assert_drawn_window(page, expected, figures)
        assert page["ids"][-1] == page["in_view"][-1] == expected[-1]

    driver.find_element(By.CSS_SELECTOR, '#report-table thead button[data-key="store_id"]').click()
    wait(driver, lambda d: drawn_rows(d)["ids"][:1] == by_id[:1], "no sort by store id")

    box = driver.find_element(By.ID, "filter")
    needle = "12"
    matching = [store_id for store_id in by_id if needle in store_id]
    assert 100 < len(matching) < BIG_STORES
    box.send_keys(needle)
    wait(driver, lambda d: drawn_rows(d)["count"] == f"Showing {len(matching)} of {BIG_STORES} stores", "no filter")
    page = drawn_rows(driver)
    assert page["rowcount"] == str(len(matching) + 1)
    assert page["first"] == 0
    assert_drawn_window(page, matching, figures)
    page = scroll_table(driver, "s.scrollHeight")
    assert_drawn_window(page, matching, figures)
    assert page["in_view"][-1] == matching[-1]

    # the filter and a sort together: the matching rows in the sort's order
    driver.find_element(By.CSS_SELECTOR, '#report-table thead button[data-key="downtime_last_day"]').click()
    expected = [store_id for store_id in order("downtime_last_day", True) if needle in store_id]
    wait(driver, lambda d: drawn_rows(d)["ids"][:5] == expected[:5], "no sort of the filtered rows")
    assert_drawn_window(drawn_rows(driver), expected, figures)

    box.clear()
    box.send_keys(" ")  # an input event for the cleared box
    wait(driver, lambda d: drawn_rows(d)["count"] == f"{BIG_STORES} stores", "clearing the filter did not restore")
    assert_drawn_window(drawn_rows(driver), order("downtime_last_day", True), figures)

    # at phone width every row is a card, taller than a line: the window follows
    driver.set_window_size(400, 900)
    try:
        wait(driver, lambda d: d.execute_script("return window.innerWidth") <= 420, "the window did not narrow")
        page = scroll_table(driver, "s.scrollHeight / 3")
        assert_drawn_window(page, order("downtime_last_day", True), figures)
        assert abs(order("downtime_last_day", True).index(page["in_view"][0]) - BIG_STORES / 3) < 60
    finally:
        driver.set_window_size(1280, 1000)
