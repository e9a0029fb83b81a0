"""The command lines on missing or partial input: `python database.py` (load, delete, uploads, migrate)
and `python reportGenerator.py` exit non-zero with one line on a missing folder or file, load single
files recognised by their header, and warn where a report would silently assume hours or zones."""

from __future__ import annotations

import logging

import pytest

import database
import reportGenerator
from app import create_app
from tests.conftest import FAR_FUTURE_US, TINY_STATUS, write_data_dir


@pytest.fixture
def embedded(tmp_path, monkeypatch):
    """The command line's database: a fresh SQLite file named by EMBEDDED_DB."""
    monkeypatch.delenv("MONGO_URI", raising=False)
    monkeypatch.setenv("EMBEDDED_DB", str(tmp_path / "cli.sqlite3"))
    return tmp_path / "cli.sqlite3"


def test_load_of_a_missing_folder_fails_with_one_line_and_creates_nothing(embedded, tmp_path, capsys):
    assert database.main(["load", str(tmp_path / "no" / "such")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {tmp_path / 'no' / 'such'} does not exist\n" and captured.out == ""
    assert not embedded.exists()


def test_load_of_a_folder_without_any_of_the_files_fails(embedded, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert database.main(["load", str(tmp_path / "empty")]) == 2
    assert "holds none of store_status.csv, menu_hours.csv, timezones.csv" in capsys.readouterr().err


def test_load_takes_single_files_recognised_by_their_header(embedded, tmp_path, capsys):
    folder = write_data_dir(tmp_path / "data")
    renamed = tmp_path / "polls-monday.csv"
    renamed.write_text(TINY_STATUS)
    assert database.main(["load", str(renamed), str(folder / "timezones.csv")]) == 0
    out = capsys.readouterr().out
    assert f"{renamed}: 5 rows read, 5 loaded, 0 rejected" in out
    store = database.connect(path=embedded)
    assert store.data_summary()["zones"] == 1 and store.data_summary()["hours_rows"] == 0
    assert [u["file"] for u in store.list_uploads()] == [str(folder / "timezones.csv"), str(renamed)]


def test_load_of_a_file_that_is_none_of_the_three_fails_naming_its_header(embedded, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("name,price\ntea,2\n")
    assert database.main(["load", str(other)]) == 2
    assert "its header 'name,price' is none of the three files'" in capsys.readouterr().err


def test_a_folder_missing_a_file_says_so_and_loads_the_rest(embedded, tmp_path, capsys):
    folder = write_data_dir(tmp_path / "data")
    (folder / "menu_hours.csv").unlink()
    assert database.main(["load", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{folder / 'menu_hours.csv'}: 0 rows read, 0 loaded, 0 rejected\n  note: file not found, not loaded" in out


def test_delete_removes_a_stores_polls_in_the_bounds(embedded, tmp_path, capsys):
    assert database.main(["load", str(write_data_dir(tmp_path / "data"))]) == 0
    assert database.main(["delete", "--store", "allday", "--since", "2023-01-24T12:40:00Z"]) == 0
    assert capsys.readouterr().out.endswith("deleted 1 polls of store allday\n")
    store = database.connect(path=embedded)
    assert store.data_summary()["polls"] == 4
    with pytest.raises(SystemExit):
        database.main(["delete", "--store", "allday", "--since", "2023-01-24 12:40"])  # no zone: refused
    assert "has no time zone" in capsys.readouterr().err


def test_uploads_lists_and_dismisses(embedded, tmp_path, capsys):
    database.main(["load", str(write_data_dir(tmp_path / "data"))])
    capsys.readouterr()
    assert database.main(["uploads"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("Complete" in line for line in lines)
    assert database.main(["uploads", "--dismiss", "0" * 32]) == 1
    assert "no upload with id" in capsys.readouterr().err
    first = lines[-1].split()[0]
    assert database.main(["uploads", "--dismiss", first]) == 0
    assert "(dismissed)" in capsys.readouterr().out


def test_migrate_says_what_it_did(embedded, capsys):
    assert database.main(["migrate"]) == 0
    assert capsys.readouterr().out.endswith(f"schema version {database.SCHEMA_VERSION}; indexes reconciled\n")


def test_a_foreign_database_is_refused_by_the_command_line_in_one_line(tmp_path, monkeypatch, capsys):
    import sqlite3

    foreign = tmp_path / "theirs.sqlite3"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    before = foreign.read_bytes()
    monkeypatch.delenv("MONGO_URI", raising=False)
    monkeypatch.setenv("EMBEDDED_DB", str(foreign))
    assert database.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(foreign) in err and len(err.splitlines()) == 1
    assert foreign.read_bytes() == before


def test_the_service_refuses_a_foreign_database_at_start_up(tmp_path):
    import sqlite3

    foreign = tmp_path / "theirs.sqlite3"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    before = foreign.read_bytes()
    with pytest.raises(SystemExit) as stopped:
        create_app({"MONGO_URI": "", "EMBEDDED_DB": str(foreign), "DATA_DIR": str(write_data_dir(tmp_path / "d"))})
    assert str(foreign) in str(stopped.value) and foreign.read_bytes() == before


def test_data_dir_on_a_database_with_data_logs_that_it_was_not_loaded(tmp_path, caplog):
    config = {
        "MONGO_URI": "",
        "EMBEDDED_DB": str(tmp_path / "db.sqlite3"),
        "DATA_DIR": str(write_data_dir(tmp_path / "data")),
        "REPORTS_DIR": str(tmp_path / "reports"),
    }
    create_app(config).extensions["reports"].shutdown(wait=True)
    with caplog.at_level(logging.INFO, logger="database"):
        create_app(config).extensions["reports"].shutdown(wait=True)
    assert any("was not loaded: the database already holds data" in r.getMessage() for r in caplog.records)


def test_seeding_from_a_folder_with_only_zones_never_says_polls_were_seeded(tmp_path, caplog):
    folder = tmp_path / "zones-only"
    folder.mkdir()
    (folder / "timezones.csv").write_text("store_id,timezone_str\nx,UTC\n")
    with caplog.at_level(logging.INFO):
        app = create_app(
            {
                "MONGO_URI": "",
                "EMBEDDED_DB": str(tmp_path / "db.sqlite3"),
                "DATA_DIR": str(folder),
                "REPORTS_DIR": str(tmp_path / "reports"),
            }
        )
    app.extensions["reports"].shutdown(wait=True)
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith("seeded") and "store_status.csv" in m for m in messages)
    assert any(m.startswith("not seeded from") and "store_status.csv: file not found" in m for m in messages)
    assert app.extensions["store"].report_store_ids(FAR_FUTURE_US) == []


# --------------------------------------------------------------------------- reportGenerator's command line


def test_report_cli_on_a_missing_folder_says_so(tmp_path, capsys):
    assert reportGenerator.main(["--data-dir", str(tmp_path / "nope"), "--output", str(tmp_path / "r.csv")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'} does not exist\n"


def test_report_cli_without_polls_says_which_file_is_missing(tmp_path, capsys):
    folder = write_data_dir(tmp_path / "data")
    (folder / "store_status.csv").unlink()
    assert reportGenerator.main(["--data-dir", str(folder), "--output", str(tmp_path / "r.csv")]) == 2
    assert "has no store_status.csv" in capsys.readouterr().err


def test_report_cli_warns_when_hours_or_zones_are_missing(tmp_path, capsys):
    folder = write_data_dir(tmp_path / "data")
    (folder / "menu_hours.csv").unlink()
    (folder / "timezones.csv").unlink()
    assert reportGenerator.main(["--data-dir", str(folder), "--output", str(tmp_path / "r.csv")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {folder / 'menu_hours.csv'} not found: every store is open 24/7" in err
    assert f"warning: {folder / 'timezones.csv'} not found: every store is in America/Chicago" in err


def test_a_bad_max_future_seconds_stops_start_up_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_FUTURE_SECONDS", "one day")
    with pytest.raises(SystemExit) as stopped:
        create_app(
            {
                "MONGO_URI": "",
                "EMBEDDED_DB": str(tmp_path / "db.sqlite3"),
                "DATA_DIR": str(write_data_dir(tmp_path / "data")),
            }
        )
    assert str(stopped.value).startswith("error: MAX_FUTURE_SECONDS must be a whole number of seconds")
