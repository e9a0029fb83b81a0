"""The store contract itself (database.Store), as cachelib's test_interface_uniformity.py does it.

Every store implements exactly the base's public methods, with the base's parameters, and has the
attributes the base declares; the start-up members (`seeds_on_start`, `warning_on_start`, `prepare`,
`ping(timeout, quiet)`) do what each store promises; the pieces both stores share live once in
database.py; and no caller of the stores branches on which one it holds.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

import database
import sources
from app import create_app
from store_mongo import MongoStore
from store_sqlite import SqliteStore
from tests.conftest import free_port, write_data_dir

ROOT = Path(__file__).resolve().parent.parent
STORES = [SqliteStore, MongoStore]
# Public methods a store has beyond the contract, each with why.  Callers never use them.
ENGINE_ONLY: dict[type, set[str]] = {}
# The modules that use a store without being one: they may show `store.kind`, never branch on it.
CALLERS = ["app.py", "api.py", "guards.py", "errors.py", "reportGenerator.py", "cluster.py", "database.py"]
KIND_BRANCH = re.compile(r"\.kind\s*(?:==|!=|\bnot\s+in\b|\bin\b)|(?:==|!=)\s*[\w.]+\.kind\b|\bmatch\s+[\w.]+\.kind\b")


def public_methods(cls) -> set[str]:
    """The public callables of a class (properties and data attributes are not methods)."""
    return {
        name
        for name, value in inspect.getmembers(cls)
        if not name.startswith("_") and callable(value) and not isinstance(inspect.getattr_static(cls, name), property)
    }


# --------------------------------------------------------------------------- uniformity


@pytest.mark.parametrize("store_class", STORES, ids=lambda cls: cls.__name__)
def test_every_store_has_every_method_of_the_base(store_class):
    missing = sorted(public_methods(database.Store) - public_methods(store_class))
    assert missing == [], f"{store_class.__name__} lacks these methods of database.Store"
    assert not inspect.isabstract(store_class), f"{store_class.__name__} leaves abstract methods unimplemented"


@pytest.mark.parametrize("store_class", STORES, ids=lambda cls: cls.__name__)
def test_no_store_has_a_public_method_the_base_does_not_declare(store_class):
    extra = public_methods(store_class) - public_methods(database.Store)
    assert extra == ENGINE_ONLY.get(store_class, set()), (
        f"{store_class.__name__} has public methods database.Store does not declare: declare them in the base "
        f"(with a docstring) or make them private"
    )


@pytest.mark.parametrize("store_class", STORES, ids=lambda cls: cls.__name__)
def test_every_method_takes_the_base_parameters(store_class):
    """A caller holding a Store calls every store the same way (names and kinds of the parameters)."""

    def parameters(function) -> list[tuple[str, object]]:
        return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]

    differ = sorted(
        name
        for name in public_methods(database.Store)
        if parameters(getattr(store_class, name)) != parameters(getattr(database.Store, name))
    )
    assert differ == [], f"{store_class.__name__} takes other parameters than database.Store in these"


def test_every_method_of_the_base_says_what_it_does():
    undocumented = sorted(
        name for name in public_methods(database.Store) if not inspect.getdoc(getattr(database.Store, name))
    )
    assert undocumented == []


@pytest.fixture(params=["sqlite", "mongomock", "mongodb"])
def any_store(request, tmp_path):
    """One store of each kind; the MongoDB one is built for a server that is not there (no I/O until used)."""
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "contract.sqlite3")
    elif request.param == "mongomock":
        store = MongoStore("mongomock://", "contract")
    else:
        store = MongoStore(f"mongodb://127.0.0.1:{free_port()}", "contract")
    yield store
    store.close()


def test_every_store_has_the_attributes_the_base_declares(any_store):
    declared = set(database.Store.__annotations__)
    assert {"kind", "label", "seeds_on_start", "warning_on_start", "schema_version", "migrations_applied"} <= declared
    missing = sorted(name for name in declared if not hasattr(any_store, name))
    assert missing == []
    assert isinstance(any_store.kind, str) and isinstance(any_store.label, str) and any_store.label
    assert isinstance(any_store.seeds_on_start, bool)
    assert any_store.warning_on_start is None or isinstance(any_store.warning_on_start, str)


# --------------------------------------------------------------------------- what each store says at start-up


def test_each_store_says_whether_it_seeds_and_what_it_warns(any_store):
    """Stores of this host seed themselves from DATA_DIR; mongomock warns that it keeps nothing."""
    seeds, warns = {"sqlite": (True, False), "mongomock": (True, True), "mongodb": (False, False)}[any_store.kind]
    assert any_store.seeds_on_start is seeds
    assert (any_store.warning_on_start is not None) is warns


def test_sqlite_and_mongomock_prepare_at_once_and_count_the_stale_reports(new_store):
    """(A server's start-up work runs in a thread instead: the next test.)"""
    any_store = new_store
    any_store.create_report("a" * 32, None)
    assert any_store.prepare(dt.timedelta(seconds=3600)) == 0  # its heartbeat is fresh
    assert any_store.prepare(dt.timedelta(seconds=-1)) == 1
    assert any_store.find_report("a" * 32)["status"] == "Failed"
    assert any_store.migrate() == []  # the indexes are made


def test_a_server_store_prepares_in_the_background_and_answers_at_once(monkeypatch):
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}", "contract")
    started = []
    monkeypatch.setattr(store, "_start_maintenance", lambda stale_after: started.append(stale_after))
    try:
        assert store.prepare(dt.timedelta(seconds=60)) == 0
    finally:
        store.close()
    assert started == [dt.timedelta(seconds=60)]


def test_ping_takes_a_timeout_and_can_be_quiet(any_store, caplog, monkeypatch):
    if any_store.kind == "mongodb":
        any_store.ping(timeout=0.2, quiet=True)  # nothing listens: False, and no line (the server test is below)
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        return
    assert any_store.ping() is True and any_store.ping(timeout=0.5, quiet=True) is True


def test_an_unreachable_server_ping_is_false_and_quiet_when_asked(caplog):
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}", "contract")
    try:
        assert store.ping(timeout=0.2, quiet=True) is False
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert store.ping(timeout=0.2) is False
        assert [r.getMessage().split(":")[0] for r in caplog.records] == ["database ping failed"]
    finally:
        store.close()


def test_a_failing_sqlite_ping_warns_unless_quiet(tmp_path, monkeypatch, caplog):
    store = SqliteStore(tmp_path / "contract.sqlite3")

    def broken():
        raise database.sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_connection", broken)
    assert store.ping(quiet=True) is False
    assert caplog.records == []
    assert store.ping() is False
    assert [r.getMessage() for r in caplog.records] == ["database ping failed: disk I/O error"]


@pytest.mark.parametrize("mongo_uri, warned", [("", False), ("mongomock://", True)])
def test_the_app_logs_the_store_s_start_up_warning(tmp_path, caplog, mongo_uri, warned):
    caplog.set_level(logging.WARNING, logger="app")
    app = create_app(
        {
            "MONGO_URI": mongo_uri,
            "MONGO_DB": "contract",
            "EMBEDDED_DB": str(tmp_path / "db.sqlite3"),
            "DATA_DIR": str(write_data_dir(tmp_path / "data")),
            "REPORTS_DIR": str(tmp_path / "r"),
        }
    )
    try:
        lines = [r.getMessage() for r in caplog.records if r.name == "app"]
        warning = "MONGO_URI=mongomock://: an in-process test double that keeps nothing (tests and demos only)"
        assert (warning in lines) is warned
        assert not app.extensions["store"].is_empty()  # both seed themselves from DATA_DIR
    finally:
        app.extensions["reports"].shutdown(wait=True)


# --------------------------------------------------------------------------- the pieces both stores share


def test_business_hours_text_is_hms_of_each_start_and_end():
    frame = pd.DataFrame(
        {
            "store_id": ["a", "b", "c"],
            "day": [0, 1, 2],
            "start_s": [0, 9 * 3600, 9 * 3600],
            "end_s": [86_399, 17 * 3600 + 61, 9 * 3600],
        }
    )
    assert database.business_hours_text(frame) == (
        [sources.hms(0), "09:00:00", "09:00:00"],
        ["23:59:59", "17:01:01", "09:00:00"],
    )
    assert database.business_hours_text(frame.iloc[:0]) == ([], [])


def test_a_stored_csv_of_another_length_than_the_record_says_is_refused():
    report = {"report_id": "r" * 32, "csv_bytes": 4}
    assert database.checked_report_csv(report, b"a,b\n") == b"a,b\n"
    assert database.checked_report_csv({**report, "csv_bytes": None}, b"a") == b"a"
    for payload in (b"a,", b"a,b\nc"):
        with pytest.raises(ValueError, match=f"report {'r' * 32}: stored CSV is incomplete"):
            database.checked_report_csv(report, payload)


# --------------------------------------------------------------------------- callers never ask which store


@pytest.mark.parametrize(
    "line, branches",
    [
        ('if store.kind == "sqlite":', True),
        ('if store.kind in ("sqlite", "mongomock"):', True),
        ('if self.store.kind != "sqlite":', True),
        ("if store.kind not in KINDS:", True),
        ('if "mongodb" == store.kind:', True),
        ("match store.kind:", True),
        ('return error_response(503, f"the database ({store.kind}) does not answer")', False),
        ('facts = {"database": store.kind}', False),
        ("kind = FIELD_FILES.get(field)", False),
        ('if file_kind == "x":', False),
        ("for kind in kinds:", False),
    ],
)
def test_the_kind_branch_pattern(line, branches):
    assert bool(KIND_BRANCH.search(line)) is branches


@pytest.mark.parametrize("module", CALLERS)
def test_no_caller_branches_on_the_kind_of_store(module):
    lines = (ROOT / module).read_text(encoding="utf-8").splitlines()
    found = [
        f"{module}:{number}: {line.strip()}"
        for number, line in enumerate(lines, 1)
        if KIND_BRANCH.search(line) and not line.lstrip().startswith("#")
    ]
    assert found == [], "ask the store (a method or attribute of database.Store), not which store it is"
