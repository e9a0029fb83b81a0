"""DELETE /reports/<report_id> on each store: a finished report goes with its stored CSV, its history points
and its file under REPORTS_DIR; a Running one is a 409 and stays whole; an unknown one (also the second
DELETE) is a 404; and the guards of a write (403 from another site, 401 without the token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import force_report_state, wait_for_report


def make_report(client, as_of: str | None = None) -> dict:
    response = client.post("/trigger_report", json={"as_of": as_of} if as_of else {})
    body = wait_for_report(client, response.get_json()["report_id"])
    assert body["status"] == "Complete"
    return body


def report_file(app, report_id: str) -> Path:
    return Path(app.config["REPORTS_DIR"]) / f"report_{report_id}.csv"


def test_deleting_a_complete_report_removes_all_of_it(app, client):
    kept = make_report(client, "2023-01-24T12:45:00Z")
    gone = make_report(client)
    kept_csv = client.get(f"/get_report?report_id={kept['report_id']}&format=csv").get_data()
    assert report_file(app, gone["report_id"]).is_file()
    assert len(client.get("/stores/allday/history").get_json()["points"]) == 2

    response = client.delete(f"/reports/{gone['report_id']}")
    assert response.status_code == 200
    assert response.get_json() == {"deleted": True, "report_id": gone["report_id"], "status": "Complete"}

    assert client.get(f"/get_report?report_id={gone['report_id']}").status_code == 404
    assert client.get(f"/get_report?report_id={gone['report_id']}&format=csv").status_code == 404
    assert not report_file(app, gone["report_id"]).exists()
    points = client.get("/stores/allday/history").get_json()["points"]
    assert [point["report_id"] for point in points] == [kept["report_id"]]
    listed = client.get("/reports?per_page=100").get_json()
    assert [row["report_id"] for row in listed["reports"]] == [kept["report_id"]] and listed["total"] == 1
    assert client.get(f"/stores/allday/timeline?report_id={gone['report_id']}").status_code == 404
    # the other report is untouched
    assert client.get(f"/get_report?report_id={kept['report_id']}&format=csv").get_data() == kept_csv
    assert report_file(app, kept["report_id"]).is_file()


def test_a_second_delete_is_404(client):
    report_id = make_report(client)["report_id"]
    assert client.delete(f"/reports/{report_id}").status_code == 200
    response = client.delete(f"/reports/{report_id}")
    assert response.status_code == 404
    assert response.get_json() == {"error": f"no report with id {report_id}", "status": 404}


def test_deleting_the_base_moves_changes_to_the_report_before_it(client):
    first = make_report(client, "2023-01-24T12:00:00Z")
    second = make_report(client, "2023-01-24T12:45:00Z")
    third = make_report(client)
    assert client.get(f"/reports/{third['report_id']}/changes").get_json()["base_report_id"] == second["report_id"]
    assert client.delete(f"/reports/{second['report_id']}").status_code == 200
    assert client.get(f"/reports/{third['report_id']}/changes").get_json()["base_report_id"] == first["report_id"]
    assert client.get(f"/reports/{third['report_id']}/changes?base={second['report_id']}").status_code == 404


def test_a_failed_report_can_be_deleted(client, store):
    report_id = make_report(client)["report_id"]
    force_report_state(store, report_id, status="Failed", error="boom")
    response = client.delete(f"/reports/{report_id}")
    assert response.status_code == 200
    assert response.get_json() == {"deleted": True, "report_id": report_id, "status": "Failed"}
    assert store.find_report(report_id) is None


def test_a_running_report_is_409_and_stays_whole(app, client, store):
    report = make_report(client)
    report_id = report["report_id"]
    payload = client.get(f"/get_report?report_id={report_id}&format=csv").get_data()
    force_report_state(store, report_id, status="Running", heartbeat_age=0, progress={"done": 2, "total": 3})
    response = client.delete(f"/reports/{report_id}")
    assert response.status_code == 409
    assert response.get_json() == {
        "error": f"report {report_id} is still Running (2 of 3 stores): delete it once it is Complete or Failed",
        "status": 409,
    }
    assert report_file(app, report_id).read_bytes() == payload
    force_report_state(store, report_id, status="Complete")
    assert client.get(f"/get_report?report_id={report_id}&format=csv").get_data() == payload
    assert client.get(f"/get_report?report_id={report_id}").get_json() == report


def test_a_running_report_whose_worker_stopped_is_failed_then_deleted(client, store):
    report_id = make_report(client)["report_id"]
    force_report_state(store, report_id, status="Running", heartbeat_age=3600)
    response = client.delete(f"/reports/{report_id}")
    assert response.status_code == 200
    assert response.get_json()["status"] == "Failed"
    assert store.find_report(report_id) is None


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/reports/" + "f" * 32, 404, "no report with id " + "f" * 32),
        ("/reports/nope", 400, "malformed report_id: expected 32 lowercase hex characters"),
        ("/reports/" + "A" * 32, 400, "malformed report_id: expected 32 lowercase hex characters"),
        (
            "/reports/" + "f" * 32 + "?force=1",
            400,
            "unknown query parameter(s) force on /reports/" + "f" * 32 + "; this call takes: none",
        ),
    ],
)
def test_bad_deletes(client, path, status, error):
    response = client.delete(path)
    assert response.status_code == status
    assert response.get_json() == {"error": error, "status": status}


def test_get_on_a_report_path_is_405_naming_delete(client):
    response = client.get("/reports/" + "f" * 32)
    assert response.status_code == 405
    assert response.headers["Allow"] and "DELETE" in response.headers["Allow"]
    assert response.get_json()["error"] == "GET is not allowed on /reports/" + "f" * 32 + ": use DELETE"


def test_a_delete_from_another_site_is_refused(client, store):
    report_id = make_report(client)["report_id"]
    response = client.delete(f"/reports/{report_id}", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    assert store.find_report(report_id)["status"] == "Complete"


def test_a_delete_needs_the_token(locked_client):
    path = "/reports/" + "f" * 32
    assert locked_client.delete(path).status_code == 401
    assert locked_client.delete(path, headers={"Authorization": "Bearer s3cret"}).status_code == 404
