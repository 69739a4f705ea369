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
import pytest

import engine
from datagraph.errors import BadInput


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


@pytest.mark.parametrize(
    "rule",
    [{"range": {"column": "n", "min": 2**64}}, {"range": {"column": "n", "max": -(2**63) - 1}},
     {"allowed": {"column": "n", "values": [1, 10**400]}}],
)  # fmt: skip
def test_a_number_past_64_bits_in_a_rule_is_refused_in_the_users_terms(rule: dict[str, Any]) -> None:
    """A GraphQL literal may be any integer; one that no column can hold (and the metadata cannot
    keep) is refused, where it made an internal error."""
    with pytest.raises(BadInput, match=r"is not a number of at most 64 bits"):
        engine.checked_rules([rule], {"n": "Int64"}, max_rules=5, max_values=5)
    largest = {"range": {"column": "n", "min": -(2**63), "max": 2**64 - 1}}
    assert engine.checked_rules([largest], {"n": "UInt64"}, max_rules=5, max_values=5) == [largest]


def test_a_range_on_times_of_a_local_time_zone_runs(tmp_path: Path) -> None:
    """A plugin may give times in a time zone of its own (Europe/Paris): a range on them compares
    the same instants (the run failed whole, on a literal in UTC)."""
    noon = pl.Series("at", [dt.datetime(2026, 1, 1, 12), dt.datetime(2026, 1, 1, 13)], dtype=pl.Datetime("ms"))
    frame = pl.DataFrame([noon.dt.replace_time_zone("Europe/Paris")])  # 11:00 and 12:00 UTC
    found = _evaluated(
        tmp_path, frame,
        [{"range": {"column": "at", "min": "2026-01-01T11:00:00Z", "max": "2026-01-01T12:30:00+01:00"}},
         {"range": {"column": "at", "max": "2026-01-01T11:30:00"}}],
    )  # fmt: skip
    assert found["range(at, 2026-01-01T11:00:00Z..2026-01-01T12:30:00+01:00)"]["passed"] is False
    assert "1 value of at outside" in found["range(at, 2026-01-01T11:00:00Z..2026-01-01T12:30:00+01:00)"]["message"]
    assert found["range(at, ..2026-01-01T11:30:00)"]["passed"] is False  # naive: UTC; 12:00 UTC is past it
