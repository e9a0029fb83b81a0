"""openapi.json: it describes every route and nothing else, it is served, and the app keeps to it.

The last part is property-based: schemathesis generates requests from the description
(valid ones and deliberately invalid ones) for every operation, sends them to the app
in-process (WSGI, no server), on each store (SQLite and mongomock), and checks every answer:
no 5xx, a documented status code and content type, a body matching the documented schema,
invalid input refused with 4xx.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import api
import app as app_module
from app import create_app
from tests.conftest import (
    STORE_KINDS,
    TINY_HOURS,
    TINY_STATUS,
    TINY_ZONES,
    force_report_state,
    store_config,
    write_data_dir,
)

SPEC_PATH = Path(app_module.__file__).resolve().parent / "openapi.json"
SPEC = json.loads(SPEC_PATH.read_text())
COLUMNS = [
    "store_id",
    "uptime_last_hour",
    "uptime_last_day",
    "uptime_last_week",
    "downtime_last_hour",
    "downtime_last_day",
    "downtime_last_week",
]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# Valid-looking uploads to /ingest are still refused (400) when the bytes are not one of the
# three CSV files; the schema cannot say what a valid CSV is, so 400 counts as an acceptable
# answer to generated "valid" multipart bodies there (the body must still match the schema).
SCHEMATHESIS_CONFIG = {
    "operations": [
        {
            "include-path": "/ingest",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "413"]}},
        },
        {
            # an as_of can match the pattern and still name no real instant (month 13, year 0): 400;
            # generated triggers can outrun the reports on a busy machine, and the quota then answers
            # 429 (documented; its own tests are in test_hostile.py)
            "include-path": "/trigger_report",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "429"]}},
        },
        {
            # a since or until can match the pattern and still name no real instant (month 13), or come after
            # the other: 400; a store_id holding "/" names no route: 404
            "include-path": "/stores/{store_id}/polls",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "404"]}},
        },
        {
            # limit, after or store_id with format=csv is a 400, which the description cannot express
            "include-path": "/get_report",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "404", "409"]}},
        },
        {
            # a since or until can match the pattern and still name no real instant, or come after the other: 400
            "include-path": "/stores/{store_id}/history",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401"]}},
        },
        {
            # generated ids name no report (404), or one a generated trigger started that is not Complete (409)
            "include-path": "/reports/{report_id}/changes",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "404", "409"]}},
        },
        {
            # the same for DELETE: no such report (404), or one still Running (409)
            "include-path": "/reports/{report_id}",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "404", "409"]}},
        },
    ],
}
MAX_EXAMPLES = 50


def _openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: /x/<int:y> -> /x/{y}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _app_operations(application) -> dict[tuple[str, str], str]:
    """(path, method) -> endpoint for every route of the app but Flask's static files."""
    operations = {}
    for rule in application.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operations[(_openapi_path(rule.rule), method.lower())] = rule.endpoint
    return operations


def _spec_operations() -> dict[tuple[str, str], dict]:
    return {
        (path, method): operation
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


# --------------------------------------------------------------------------- the document itself


def test_openapi_document_is_valid():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(SPEC)


def test_every_route_is_documented_and_every_documented_route_exists(app):
    in_app = set(_app_operations(app))
    in_spec = set(_spec_operations())
    assert not in_app - in_spec, f"routes missing from openapi.json: {sorted(in_app - in_spec)}"
    assert not in_spec - in_app, f"openapi.json describes routes the app does not have: {sorted(in_spec - in_app)}"


def test_every_operation_is_described_with_success_and_error_answers():
    for (path, method), operation in _spec_operations().items():
        where = f"{method.upper()} {path}"
        assert operation.get("operationId") and operation.get("summary") and operation.get("description"), where
        statuses = set(operation["responses"])
        assert any(s.startswith("2") for s in statuses), f"{where}: no success response"
        for status, response in operation["responses"].items():
            response = _resolve(response)
            assert response.get("description"), f"{where} {status}: no description"
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                for body in _error_bodies(schema):
                    assert {"error", "status"} <= set(body.get("required", ())), (
                        f"{where} {status}: an error answer must be the error body ({{error, status}}, maybe more)"
                    )
                    assert body["properties"]["status"]["type"] == "integer", where
                    allowed = body["properties"]["status"].get("enum")
                    assert allowed is None or int(status) in allowed, f"{where} {status}: status {allowed}"


def test_security_matches_the_token_check(app):
    """Open operations declare no security; the others the bearer scheme, optional (no token set)."""
    endpoints = _app_operations(app)
    for key, operation in _spec_operations().items():
        where = f"{key[1].upper()} {key[0]}"
        if endpoints[key].rsplit(".", 1)[-1] in api.OPEN_ENDPOINTS:  # "api.health": the view "health"
            assert operation["security"] == [], f"{where} needs no token"
            assert "401" not in operation["responses"], where
        else:
            assert operation["security"] == [{}, {"bearerAuth": []}], f"{where}: bearer token, optional"
            assert operation["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}, where
    scheme = SPEC["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


def _resolve(node: dict) -> dict:
    while "$ref" in node and node["$ref"].startswith("#/components/responses/"):
        node = SPEC["components"]["responses"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _error_bodies(schema: dict) -> list[dict]:
    """The object schemas an error answer may be (a component, or each alternative of a oneOf of them)."""
    assert "$ref" in schema and schema["$ref"].startswith("#/components/schemas/"), schema
    schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in schema:
        return [body for alternative in schema["oneOf"] for body in _error_bodies(alternative)]
    assert schema["type"] == "object" and schema["additionalProperties"] is False, schema
    return [schema]


def test_every_write_and_database_call_documents_its_faults():
    """SPEC §4: a permanent database fault is 500, a transient one 503 with Retry-After, a full disk 507;
    every API call refuses unknown query parameters (400)."""
    unavailable = SPEC["components"]["responses"]["DatabaseUnavailable"]
    assert unavailable["headers"]["Retry-After"]["required"] is True
    writes = {("/trigger_report", "post"), ("/ingest", "post"), ("/stores/{store_id}/polls", "delete")}
    for (path, method), operation in _spec_operations().items():
        where = f"{method.upper()} {path}"
        if path == "/":
            continue  # the page: a static file, no database and no query string
        assert {"400", "500"} <= set(operation["responses"]), where
        if path != "/openapi.json":
            assert "503" in operation["responses"], where
        assert ("507" in operation["responses"]) == ((path, method) in writes), where
        assert ("403" in operation["responses"]) == (method in ("post", "put", "patch", "delete")), where


# --------------------------------------------------------------------------- serving it


def test_openapi_json_is_served(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == SPEC


def test_openapi_json_needs_no_token(locked_client):
    assert locked_client.get("/openapi.json").get_json() == SPEC
    assert locked_client.get("/health").status_code == 200
    answer = locked_client.get("/reports")
    assert answer.status_code == 401
    assert answer.get_json()["status"] == 401
    assert locked_client.get("/reports", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# --------------------------------------------------------------------------- the app keeps to it


@pytest.fixture(scope="module", params=STORE_KINDS)
def api_app(request, tmp_path_factory):
    """One app for all generated requests on each store (SQLite file, mongomock), seeded with the tiny data set."""
    tmp = tmp_path_factory.mktemp("openapi")
    application = create_app(
        {
            **store_config(request.param, tmp),
            "DATA_DIR": str(write_data_dir(tmp / "data")),
            "REPORTS_DIR": str(tmp / "reports"),
            "TESTING": True,
        }
    )
    yield application
    application.extensions["reports"].shutdown(wait=True)


def _reload_tiny_data(client) -> None:
    """Load the tiny data set again: generated DELETE /stores/{id}/polls calls may have removed some of it."""
    files = {"store_status": TINY_STATUS, "menu_hours": TINY_HOURS, "timezones": TINY_ZONES}
    form = {field: (io.BytesIO(content.encode()), f"{field}.csv") for field, content in files.items()}
    response = client.post("/ingest", data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.fixture(scope="module")
def api_schema(api_app):
    """The description as the app serves it, bound to the app (requests go to it in-process)."""
    return schemathesis.openapi.from_wsgi(
        "/openapi.json", api_app, config=SchemathesisConfig.from_dict(SCHEMATHESIS_CONFIG)
    )


# Loaded from the file at import, so that pytest gets one test per operation; the requests go to
# the module's app through `app=` (schemathesis.pytest.from_fixture would do this for us, but
# schemathesis 4.32 sets `Function._nodeid` there, which pytest 9.2 no longer has).
schema = schemathesis.openapi.from_path(SPEC_PATH, config=SchemathesisConfig.from_dict(SCHEMATHESIS_CONFIG))


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_app_keeps_to_its_openapi_description(case, api_app):
    """Every operation, valid and invalid input: all of schemathesis's checks."""
    case.call_and_validate(app=api_app)


def test_report_states_keep_to_the_description(api_app, api_schema):
    """The states random ids never reach: Running, Complete (JSON and CSV), Failed, and the listing."""
    client = api_app.test_client()
    _reload_tiny_data(client)
    get_report = api_schema["/get_report"]["GET"]

    def check(query, headers=None):
        case = get_report.Case(query=query, headers=headers or {})
        response = case.call()
        case.validate_response(response, checks=CONFORMANCE)
        return response

    report_id = client.post("/trigger_report", json={"as_of": "2023-01-24T13:00:00Z"}).get_json()["report_id"]
    first = check({"report_id": report_id})
    assert first.json()["status"] in ("Running", "Complete")
    deadline = time.monotonic() + 30
    while client.get(f"/get_report?report_id={report_id}").get_json()["status"] == "Running":
        assert time.monotonic() < deadline, "report still Running after 30 s"
        time.sleep(0.05)
    complete = check({"report_id": report_id})
    assert complete.json()["status"] == "Complete"
    assert complete.json()["row_count"] == 3
    as_csv = check({"report_id": report_id, "format": "csv"})
    assert as_csv.headers["content-type"][0].startswith("text/csv")
    assert as_csv.text.splitlines()[0] == ",".join(COLUMNS)
    by_accept = check({"report_id": report_id}, headers={"Accept": "text/csv"})
    assert by_accept.headers["content-type"][0].startswith("text/csv")
    timeline = api_schema["/stores/{store_id}/timeline"]["GET"]
    for store_id in ("worked", "allday", "late"):
        case = timeline.Case(path_parameters={"store_id": store_id}, query={"report_id": report_id})
        response = case.call()
        case.validate_response(response, checks=CONFORMANCE)
        assert response.status_code == 200 and response.json()["store_id"] == store_id

    store = api_app.extensions["store"]
    force_report_state(store, report_id, status="Running", progress={"done": 1, "total": 3})
    assert check({"report_id": report_id}).json() == {
        "status": "Running",
        "trigger": "api",
        "phase": "computing",
        "progress": {"done": 1, "total": 3},
    }
    force_report_state(store, report_id, progress={"done": 0, "total": None, "phase": "counting"})
    assert check({"report_id": report_id}).json() == {
        "status": "Running",
        "trigger": "api",
        "phase": "counting",
        "progress": {"done": 0, "total": None},
    }
    assert check({"report_id": report_id, "format": "csv"}).status_code == 409
    force_report_state(store, report_id, status="Failed", error="boom")
    assert check({"report_id": report_id}).json() == {"status": "Failed", "trigger": "api", "error": "boom"}
    assert check({"report_id": report_id, "format": "csv"}).status_code == 409

    listing = api_schema["/reports"]["GET"].Case(query={"page": 1, "per_page": 100})
    listing.validate_response(listing.call(), checks=CONFORMANCE)


def test_ingest_answers_keep_to_the_description(api_app, api_schema):
    """A file loaded, one recognised by its header, none loaded, none sent."""
    client = api_app.test_client()
    ingest = api_schema["/ingest"]["POST"]

    def check(files, expected_status):
        form = {field: (io.BytesIO(content), f"{field}.csv") for field, content in files.items()}
        response = client.post("/ingest", data=form, content_type="multipart/form-data")
        ingest.Case(body={}, media_type="multipart/form-data").validate_response(response, checks=CONFORMANCE)
        assert response.status_code == expected_status, response.get_data(as_text=True)
        return response.get_json()

    loaded = check({"timezones": b"store_id,timezone_str\nlate,America/New_York\nbad,Not/AZone\n"}, 200)
    assert loaded["files"][0]["loaded"] == 1 and loaded["files"][0]["rejected"] == 1
    by_header = check({"upload": b"store_id,timezone_str\nlate,America/New_York\n"}, 200)
    assert by_header["files"][0]["kind"] == "timezones.csv"
    check({}, 400)
    nothing = check({"menu_hours": b"not,a,header\n1,2,3\n"}, 400)  # the error body, with the files' reasons
    assert nothing["status"] == 400 and nothing["error"] and nothing["files"][0]["error"]


def _check(operation, response_or_none=None, **case_args):
    """Send a Case of `operation` (or validate a response already had) against the description."""
    case = operation.Case(**case_args)
    response = case.call() if response_or_none is None else response_or_none
    case.validate_response(response, checks=CONFORMANCE)
    return response


def test_data_health_and_deletes_keep_to_the_description(api_app, api_schema):
    """GET /data with uploads, GET /health, DELETE polls with bounds, and the 400s of both calls."""
    client = api_app.test_client()
    _reload_tiny_data(client)
    data = _check(api_schema["/data"]["GET"])
    assert data.status_code == 200
    body = data.json()
    assert body["stores"] == 3 and body["polls"] == 5
    assert body["newest_poll"] == "2023-01-24T13:00:00Z" and body["oldest_poll"] == "2023-01-24T10:14:00Z"
    assert 1 <= len(body["uploads"]) <= api.UPLOADS_SHOWN
    assert {upload["status"] for upload in body["uploads"]} == {"Complete"}
    assert _check(api_schema["/data"]["GET"], query={"limit": "5"}).status_code == 400

    health = _check(api_schema["/health"]["GET"])
    assert health.status_code == 200, health.text
    assert health.json()["newest_poll"] == "2023-01-24T13:00:00Z"
    assert _check(api_schema["/health"]["GET"], query={"verbose": "1"}).status_code == 400

    delete = api_schema["/stores/{store_id}/polls"]["DELETE"]
    kept = _check(
        delete, path_parameters={"store_id": "worked"}, query={"since": "2023-01-24T11:00:00Z", "until": "2023-01-24"}
    )  # until before since
    assert kept.status_code == 400 and "since is after until" in kept.json()["error"]
    assert _check(delete, path_parameters={"store_id": "worked"}, query={"since": "2023-02-30"}).status_code == 400
    assert _check(delete, path_parameters={"store_id": "worked"}, query={"from": "2023-01-24"}).status_code == 400
    one = _check(
        delete,
        path_parameters={"store_id": "worked"},
        query={"since": "2023-01-24T11:00:00Z", "until": "2023-01-24T11:15:00Z"},
    )
    assert one.status_code == 200 and one.json() == {"deleted": 1, "store_id": "worked"}
    none = _check(delete, path_parameters={"store_id": "nobody"})
    assert none.json() == {"deleted": 0, "store_id": "nobody"}
    everything = _check(delete, path_parameters={"store_id": "allday"})
    assert everything.json() == {"deleted": 2, "store_id": "allday"}
    after = client.get("/data").get_json()
    assert after["polls"] == 2 and after["stores"] == 2
    _reload_tiny_data(client)


def test_health_problems_keep_to_the_description(api_app, api_schema, monkeypatch):
    """The 503 of /health: the plain error when the database does not answer, the problems body otherwise."""
    store = api_app.extensions["store"]
    health = api_schema["/health"]["GET"]
    real = store.health(0)
    problem = "the disk holding the database has 12 MB free, under MIN_FREE_MB (200 MB)"
    monkeypatch.setattr(store, "health", lambda min_free: {**real, "problems": [problem]})
    answer = _check(health)
    assert answer.status_code == 503
    body = answer.json()
    assert body["error"] == problem and body["problems"] == [problem] and body["database_ok"] is False
    monkeypatch.setattr(store, "ping", lambda: False)
    silent = _check(health)
    assert silent.status_code == 503 and set(silent.json()) == {"error", "status"}


def test_unfinished_upload_and_late_as_of_keep_to_the_description(api_app, api_schema, monkeypatch):
    """409 of POST /trigger_report, and `as_of_after_newest_poll` in get_report and the listing."""
    client = api_app.test_client()
    _reload_tiny_data(client)
    trigger = api_schema["/trigger_report"]["POST"]
    late = _check(trigger, body={"as_of": "2023-01-26T00:00:00Z"}, media_type="application/json")
    assert late.status_code == 202, late.text
    report_id = late.json()["report_id"]
    deadline = time.monotonic() + 30
    while client.get(f"/get_report?report_id={report_id}").get_json()["status"] == "Running":
        assert time.monotonic() < deadline, "report still Running after 30 s"
        time.sleep(0.05)
    complete = _check(api_schema["/get_report"]["GET"], query={"report_id": report_id})
    assert complete.json()["status"] == "Complete", complete.text
    assert complete.json()["as_of_after_newest_poll"] is True
    listing = _check(api_schema["/reports"]["GET"], query={"per_page": 100})
    row = next(row for row in listing.json()["reports"] if row["report_id"] == report_id)
    assert row["as_of_after_newest_poll"] is True
    in_query = _check(trigger, query={"as_of": "2023-01-26T00:00:00Z"})
    assert in_query.status_code == 400 and "JSON body" in in_query.json()["error"]

    store = api_app.extensions["store"]
    unfinished = {
        "upload_id": "ab" * 16,
        "file": "store_status.csv",
        "kind": "store_status.csv",
        "written": 10,
        "loaded": 100,
        "status": "Failed",
    }
    monkeypatch.setattr(store, "unfinished_upload", lambda: unfinished)
    refused = _check(trigger, body={}, media_type="application/json")
    assert refused.status_code == 409
    assert refused.json()["upload_id"] == "ab" * 16 and refused.json()["status"] == 409


def test_report_workflow_through_links(api_schema):
    """Stateful: trigger a report, then follow the documented link to poll it."""
    workflow = api_schema.as_state_machine()
    workflow.run(
        settings=hypothesis.settings(
            max_examples=10,
            stateful_step_count=4,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# --------------------------------------------------------------------------- answers the description promises
# Each of these reproduces, with one fixed request, a failure schemathesis found (or could find):
# a 500 where the description promises a 4xx, or a documented header missing.


@pytest.mark.parametrize(
    "path", ["/health", "/trigger_report", "/get_report", "/reports", "/ingest", "/", "/stores/x/timeline"]
)
def test_wrong_method_is_405_json_with_allow_header(client, path):
    """RFC 9110: a 405 answer MUST name the allowed methods in `Allow`."""
    response = client.open(path, method="DELETE")
    assert response.status_code == 405
    assert response.get_json()["status"] == 405
    assert response.headers.get("Allow"), "405 without an Allow header"


@pytest.mark.parametrize("as_of", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_as_of_outside_the_datetime_range_in_utc_is_400(client, as_of):
    """Valid ISO 8601, but not representable once moved to UTC: a client error, not a 500."""
    response = client.post("/trigger_report", json={"as_of": as_of})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["status"] == 400


@pytest.mark.parametrize("query", ["page=%C2%B2", "per_page=%C2%B2", "page=%E2%91%A0"])
def test_page_with_a_non_ascii_digit_is_400(client, query):
    """'²'.isdigit() is True but int('²') raises: a 400, not a 500."""
    response = client.get(f"/reports?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["status"] == 400


def test_report_id_with_a_trailing_newline_is_malformed(client):
    """`$` in re.match also matches before a final newline; the id must be exactly 32 hex characters."""
    response = client.get("/get_report?report_id=" + "a" * 32 + "%0A")
    assert response.status_code == 400
    assert response.get_json()["status"] == 400


@pytest.mark.parametrize(
    "field, content",
    [
        ("store_status", b"a\rb\n"),  # a bare CR inside the header line
        ("upload", b"a\rb\n"),  # the same, in a field recognised by its header
        ("timezones", b"store_id,timezone_str\rlate,UTC\r"),  # old Mac line ends
    ],
)
def test_ingest_of_a_file_with_carriage_returns_is_not_a_500(client, field, content):
    response = client.post("/ingest", data={field: (io.BytesIO(content), "f.csv")}, content_type="multipart/form-data")
    assert response.status_code in (200, 400), response.get_data(as_text=True)


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_ingest_of_a_poll_outside_the_datetime_range_rejects_the_row(client, stamp):
    """SPEC §2: bad input never crashes the ingest; the row is rejected with its line and reason."""
    content = f"store_id,status,timestamp_utc\nx,active,{stamp}\ny,active,2023-01-24 12:00:00 UTC\n".encode()
    response = client.post(
        "/ingest", data={"store_status": (io.BytesIO(content), "s.csv")}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    summary = response.get_json()["files"][0]
    assert summary["loaded"] == 1 and summary["rejected"] == 1
    assert summary["rejects"][0]["line"] == 2
