"""Period windows beside row windows in one `window` step (issue 21's faster period windows): the period
specs run in the file's order, with the running totals over rows of one time made only for times that
occur more than once; the other specs sort by their own orderBy. Each column still equals pandas, on the
same events (missing times, ties within and across groups, unsorted) as tests/test_timeseries.py."""

from __future__ import annotations

import polars as pl
import pytest
import test_timeseries as ts
from support import ingested

from engine import Source, WindowSpec, WindowStep
from engine._timeseries import window_statements

MIXED = [
    {"column": "v", "fn": "LAG", "by": ["g"], "orderBy": "t"},
    {"column": "v", "fn": "ROLLING_MEAN", "period": "1d", "by": ["g"], "orderBy": "t", "alias": "day_mean"},
    {"column": "n", "fn": "CUM_SUM", "orderBy": "d"},
    {"column": "n", "fn": "ROLLING_MAX", "period": "7d", "orderBy": "d", "alias": "week_max"},
    {"column": "v", "fn": "ROLLING_STD", "period": "12h", "minPeriods": 2, "orderBy": "t", "alias": "half_std"},
    {"column": "v", "fn": "ROW_NUMBER"},
]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return ingested(ts.EVENTS, tmp_path_factory.mktemp("mixed"), "events")


def test_period_and_row_windows_in_one_step_match_pandas(events: Source) -> None:
    ts._check_window(events, ts._pandas_events(), MIXED)


def test_mixed_specs_keep_the_specs_order_and_leave_no_helper_columns(events: Source) -> None:
    got = ts._here(events, WindowStep(tuple(ts._spec(s) for s in MIXED)))
    outputs = ["v_lag", "day_mean", "n_cum_sum", "week_max", "half_std", "v_row_number"]
    assert list(got[0]) == ["t", "d", "g", "v", "n", "name", *outputs]


def test_a_period_window_alone_does_not_sort_the_frame(events: Source) -> None:
    schema = dict(pl.scan_parquet(events.path).collect_schema())
    period = WindowStep((WindowSpec("v", "ROLLING_SUM", period="2d", by=("g",), order_by="t"),))
    lines = window_statements(period, schema, join_ties=True)  # a plan's first period window
    assert not any(".sort(" in line for line in lines), lines
    assert any("is_duplicated()" in line for line in lines), lines  # ties: only the times that repeat
    later = window_statements(period, schema)  # any other: no join of the frame with itself, no sort
    assert not any(".sort(" in line or ".join(" in line for line in later), later
    shifted = WindowStep((WindowSpec("v", "LAG", order_by="t"),))
    assert any(".sort(" in line for line in window_statements(shifted, schema))
