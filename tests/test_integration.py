"""The same flows against a real MongoDB: run when MONGO_URI is set, skipped (with the reason) otherwise.

    MONGO_URI=mongodb://localhost:27017 python -m pytest tests/test_integration.py

Each test works in its own throw-away database and drops it afterwards.
"""
from __future__ import annotations

import os
import uuid

import pytest

import database
import reportGenerator
import utils
from tests.conftest import TINY_REPORT, wait_for_report, write_data_dir

MONGO_URI = os.environ.get("MONGO_URI", "")
pytestmark = pytest.mark.skipif(
    not MONGO_URI,
    reason="MONGO_URI is not set: no MongoDB server to test against (none can be installed here); "
    "set MONGO_URI=mongodb://host:27017 to run these",
)


@pytest.fixture
def real_store():
    """A connected real MongoDB with a fresh database, dropped afterwards."""
    name = f"uptime_test_{uuid.uuid4().hex[:12]}"
    store = database.connect(MONGO_URI, name)
    assert database.ping(store), f"MongoDB at {MONGO_URI} does not answer"
    yield store
    store.client.drop_database(name)
    store.client.close()


def test_load_is_idempotent_and_indexed(real_store, tmp_path):
    directory = write_data_dir(tmp_path)
    first = database.load_dir(real_store.db, directory)
    second = database.load_dir(real_store.db, directory)
    assert [s["loaded"] for s in first] == [s["loaded"] for s in second] == [5, 1, 1]
    assert real_store.db[database.STATUS].count_documents({}) == 5
    assert real_store.db[database.STATUS].index_information()["store_time"]["unique"] is True
    since = utils.us_to_datetime(0)
    plan = real_store.db[database.STATUS].find({"store_id": "late", "timestamp_utc": {"$gte": since}}).explain()
    assert "IXSCAN" in str(plan)


def test_report_job_on_real_mongodb(real_store, tmp_path):
    database.load_dir(real_store.db, write_data_dir(tmp_path))
    generator = reportGenerator.ReportGenerator(real_store, tmp_path / "reports", chunk_stores=2)
    database.create_report(real_store.db, "e" * 32, None)
    generator.run("e" * 32)
    report = database.find_report(real_store.db, "e" * 32)
    assert report["status"] == "Complete", report.get("error")
    csv_text = database.read_report_csv(real_store.db, report).decode()
    assert csv_text.splitlines()[1].startswith("allday,40.0,23.67,167.67,20.0,0.33,0.33")
    assert report["progress"] == {"done": 3, "total": 3}


def test_api_flow_on_real_mongodb(tmp_path):
    from app import create_app

    name = f"uptime_test_{uuid.uuid4().hex[:12]}"
    app = create_app({"MONGO_URI": MONGO_URI, "MONGO_DB": name, "REPORTS_DIR": str(tmp_path / "reports")})
    store = app.extensions["store"]
    try:
        database.load_dir(store.db, write_data_dir(tmp_path / "data"))
        client = app.test_client()
        assert client.get("/health").get_json()["database"] == "mongodb"
        report_id = client.post("/trigger_report").get_json()["report_id"]
        body = wait_for_report(client, report_id)
        assert body["data"] == TINY_REPORT
        # a second app (another worker) answers for the report the first one ran
        other = create_app({"MONGO_URI": MONGO_URI, "MONGO_DB": name, "REPORTS_DIR": str(tmp_path / "r2")})
        assert other.test_client().get(f"/get_report?report_id={report_id}").get_json()["data"] == TINY_REPORT
        other.extensions["reports"].shutdown(wait=True)
    finally:
        app.extensions["reports"].shutdown(wait=True)
        store.client.drop_database(name)
