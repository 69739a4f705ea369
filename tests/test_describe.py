"""describe answers the numbers pandas' describe(include="all") gives, on every shared CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import DATA, Api

DESCRIBE = "query($id: ID!) { dataset(id: $id) { describe { success error { message } data } } }"
NUMERIC_KEYS = {"count": "count", "mean": "mean", "std": "std", "min": "min", "p25": "25%", "p50": "50%", "p75": "75%", "max": "max"}  # fmt: skip
TEMPORAL_KEYS = {k: v for k, v in NUMERIC_KEYS.items() if k != "std"}
TEXT_KEYS = {"count": "count", "unique": "unique", "top": "top", "freq": "freq"}


def _oracle(path: Path, temporal: set[str]) -> pd.DataFrame:
    frame = pd.read_csv(path)
    for column in temporal:  # pandas leaves dates as text unless asked; we parse ISO dates
        frame[column] = pd.to_datetime(frame[column])
    return frame.describe(include="all")


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(theirs, pd.Timestamp):
        # We store microseconds; pandas truncates a mean where Polars rounds it.
        return abs(pd.Timestamp(ours) - theirs) <= pd.Timedelta(microseconds=1)
    if isinstance(theirs, float) and math.isnan(theirs):
        return ours is None
    if isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and isinstance(ours, (int, float)):
        return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=0.0) or ours == theirs
    return bool(ours == theirs)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.csv")))
def test_describe_matches_pandas_on_shared_csv(api: Api, name: str) -> None:
    dataset_id = api.upload_ok(DATA / name)
    answer = api.data(DESCRIBE, {"id": dataset_id})["dataset"]["describe"]
    assert answer["success"], answer["error"]
    stats = {row["column"]: row for row in answer["data"]}
    temporal = {c for c, row in stats.items() if row["dtype"] in ("Date", "Datetime")}
    oracle = _oracle(DATA / name, temporal)
    assert list(stats) == list(oracle.columns)
    compared = 0
    for column, row in stats.items():
        expected = oracle[column]
        if column in temporal:
            keys = TEMPORAL_KEYS
        elif "mean" in expected and not pd.isna(expected["mean"]):
            keys = NUMERIC_KEYS
        else:
            keys = TEXT_KEYS
        for ours_key, pandas_key in keys.items():
            assert _same(row[ours_key], expected[pandas_key]), (column, ours_key, row[ours_key], expected[pandas_key])
            compared += 1
    assert compared >= 4 * len(stats)


def test_taxis_timestamps_are_described_as_datetimes(api: Api) -> None:
    dataset_id = api.upload_ok(DATA / "taxis.csv")
    rows = api.data(DESCRIBE, {"id": dataset_id})["dataset"]["describe"]["data"]
    pickup = next(r for r in rows if r["column"] == "pickup")
    assert pickup["dtype"] == "Datetime"
    assert pickup["min"] < pickup["p50"] < pickup["max"]
    assert "std" not in pickup and "top" not in pickup


def test_describe_selected_columns_and_unknown_column(api: Api) -> None:
    dataset_id = api.upload_ok(DATA / "tips.csv")
    q = "query($id: ID!, $c: [String!]) { dataset(id: $id) { describe(columns: $c) { success error { code message } data } } }"
    ok = api.data(q, {"id": dataset_id, "c": ["tip", "day"]})["dataset"]["describe"]
    assert [r["column"] for r in ok["data"]] == ["tip", "day"]
    bad = api.data(q, {"id": dataset_id, "c": ["tip", "tips"]})["dataset"]["describe"]
    assert bad["success"] is False and bad["data"] is None
    assert bad["error"]["code"] == "BAD_INPUT" and '"tips"' in bad["error"]["message"]


def test_describe_of_a_filtered_frame_matches_pandas(api: Api) -> None:
    dataset_id = api.upload_ok(DATA / "titanic.csv")
    q = """query($id: ID!) { dataset(id: $id) {
      filter(where: [{column: "age", op: GT, value: 18}]) { describe(columns: ["fare", "class"]) { data } } } }"""
    rows = {r["column"]: r for r in api.data(q, {"id": dataset_id})["dataset"]["filter"]["describe"]["data"]}
    frame = pd.read_csv(DATA / "titanic.csv")
    adults = frame[frame["age"] > 18]
    assert math.isclose(rows["fare"]["mean"], adults["fare"].mean(), rel_tol=1e-9)
    assert math.isclose(rows["fare"]["p75"], adults["fare"].quantile(0.75), rel_tol=1e-9)
    assert rows["class"]["top"] == adults["class"].value_counts().index[0]
    assert rows["class"]["freq"] == adults["class"].value_counts().iloc[0]
