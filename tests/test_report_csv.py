"""The report's CSV text (report_csv.py): pyarrow's writer gives pandas' bytes for every report it
takes, the rest go to pandas; formula-like store ids neutralised and read back; atomic file writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import report_csv
import utils
from tests.conftest import examples


def report_of(store_ids: list[str], *columns) -> pd.DataFrame:
    figures = columns or [[1.5] * len(store_ids)] * 6
    return pd.DataFrame(
        {
            "store_id": pd.array(store_ids, dtype="string"),
            **{name: np.asarray(values, dtype=np.float64) for name, values in zip(utils.REPORT_COLUMNS[1:], figures)},
        }
    )


def test_report_csv_by_arrow_is_pandas_text_for_every_figure_in_a_week():
    """Every whole number of cents from 0 to 168 hours, as the engine rounds it, is written as repr
    writes it (pandas' writer is the reference), in every column."""
    cents = np.arange(0, 168 * 100 + 1)
    figures = np.round(cents / 100, 2)
    report = report_of([f"s{i}" for i in cents], *[np.roll(figures, k) for k in range(6)])
    fast = report_csv._report_csv_arrow(report)
    assert fast is not None
    assert fast == report_csv._report_csv_pandas(report)
    assert fast.splitlines()[1] == b"s0,0.0,168.0,167.99,167.98,167.97,167.96"


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.integers(0, 7 * 86_400 * utils.TICKS_PER_SECOND), min_size=1, max_size=50))
def test_report_csv_by_arrow_is_pandas_text_for_the_engines_figures(ticks):
    ticks = np.array(ticks, dtype=np.int64)
    report = utils.to_report_units(
        utils.ticks_frame([f"s{i}" for i in range(ticks.size)], {name: ticks for name in utils.REPORT_COLUMNS[1:]})
    )
    fast = report_csv._report_csv_arrow(report)
    assert fast is not None and fast == report_csv._report_csv_pandas(report)


def test_report_csv_by_arrow_neutralises_formula_starts_as_pandas_does():
    report = report_of(["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "42", "a-b", "a=b"])
    fast = report_csv._report_csv_arrow(report)
    assert fast is not None and fast == report_csv._report_csv_pandas(report)
    assert fast.decode().splitlines()[1:4] == [
        "'=1+1,1.5,1.5,1.5,1.5,1.5,1.5",
        "'+1,1.5,1.5,1.5,1.5,1.5,1.5",
        "'-2,1.5,1.5,1.5,1.5,1.5,1.5",
    ]


@pytest.mark.parametrize("store_id", ["a,b", 'a"b', "a\rb", "a\nb", "\ry"])
def test_store_ids_that_need_quotes_go_to_pandas_writer(store_id):
    report = report_of(["1", store_id])
    assert report_csv._report_csv_arrow(report) is None
    assert report_csv.report_csv_bytes(report) == report_csv._report_csv_pandas(report)


@pytest.mark.parametrize("figure", [0.125, 1e-5, -1.5, float("nan"), float("inf"), 2.0**53, 0.1 + 0.2])
def test_figures_that_are_not_whole_cents_go_to_pandas_writer(figure):
    report = report_of(["1", "2"], *[[1.5, figure]] * 6)
    assert report_csv._report_csv_arrow(report) is None
    assert report_csv.report_csv_bytes(report) == report_csv._report_csv_pandas(report)


def test_an_empty_report_is_its_header():
    assert report_csv.report_csv_bytes(report_of([])) == (",".join(utils.REPORT_COLUMNS) + "\n").encode()


@pytest.mark.parametrize("store_id", ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\ry", "42", "a-b"])
def test_store_ids_read_back_from_the_csv_are_the_stored_ones(store_id):
    neutralised = report_csv.neutralise_cells(pd.Series([store_id]))
    assert neutralised[0].startswith("'") == store_id.startswith(report_csv.FORMULA_STARTS)
    assert report_csv.store_ids_from_csv(neutralised).tolist() == [store_id]


def test_write_atomically_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "r.csv"
    target.write_bytes(b"old")

    class Boom(Exception):
        pass

    def failing_replace(*args):
        raise Boom()

    monkeypatch.setattr(report_csv.os, "replace", failing_replace)
    with pytest.raises(Boom):
        report_csv.write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]
