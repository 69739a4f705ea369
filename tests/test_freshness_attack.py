"""Attacks on schedules, refreshes and data checks (issue 22) as a careless or hostile client, or a
second server process, would make them: each test is a defect found and fixed.

The engine's rules are tested in-process on real Parquet files (the same code runs in the worker);
the rest through one real app for the module."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import polars as pl

import engine


def _evaluated(tmp_path: Path, frame: pl.DataFrame, rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rules checked against `frame`'s columns and run on it, as a new version's checks are."""
    path = tmp_path / "version.parquet"
    frame.write_parquet(path)
    columns = {name: engine.dtype_name(dtype) for name, dtype in frame.schema.items()}
    checked = engine.checked_rules(rules, columns, max_rules=50, max_values=1_000)
    return engine.evaluate(path, checked, time.time())


# --- the rules' values and columns ------------------------------------------------------------------


def test_freshness_on_a_date_at_the_end_of_the_calendar_does_not_void_every_check(tmp_path: Path) -> None:
    """A date column whose newest value is 9999-12-31 (a "never expires" marker) is fresh; the run
    of the dataset's other checks goes on (it failed whole, as an internal error)."""
    frame = pl.DataFrame({"until": [dt.date(2020, 1, 1), dt.date(9999, 12, 31)], "n": [1, None]})
    found = _evaluated(tmp_path, frame, [{"freshness": {"column": "until", "maxAge": "1d"}}, {"notNull": ["n"]}])
    assert found["freshness(until, 1d)"] == {"passed": True, "message": "the newest until is 9999-12-31, within 1d"}
    assert found["notNull(n)"] == {"passed": False, "message": "n has 1 null"}
