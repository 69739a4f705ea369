"""describe answers the numbers pandas' describe(include="all") gives, on every shared CSV: checked on
the engine in-process (the same code the workers run), and through the API for the wiring."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from support import DATA, Api, as_json, serving_with

import engine
from engine import Condition, Filter, Plan, Sort, SortKey, Source

DESCRIBE = "query($id: ID!) { dataset(id: $id) { describe { success error { message } data } } }"
NUMERIC_KEYS = {"count": "count", "mean": "mean", "std": "std", "min": "min", "p25": "25%", "p50": "50%", "p75": "75%", "max": "max"}  # fmt: skip
TEMPORAL_KEYS = {k: v for k, v in NUMERIC_KEYS.items() if k != "std"}
TEXT_KEYS = {"count": "count", "unique": "unique", "top": "top", "freq": "freq"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module (its tests only read): tips and titanic uploaded once."""
    with serving_with(tmp_path_factory.mktemp("describe"), "tips.csv", "titanic.csv") as app:
        yield app


def _describe(source: Source) -> list[dict[str, Any]]:
    """describe of a whole dataset, run by the engine in this process, as the API answers it."""
    answer: list[dict[str, Any]] = as_json(engine.describe(Plan(source)))
    return answer


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
def test_describe_matches_pandas_on_shared_csv(shared_data: dict[str, Source], name: str) -> None:
    stats = {row["column"]: row for row in _describe(shared_data[name.removesuffix(".csv")])}
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


def test_taxis_timestamps_are_described_as_datetimes(shared_data: dict[str, Source]) -> None:
    rows = _describe(shared_data["taxis"])
    pickup = next(r for r in rows if r["column"] == "pickup")
    assert pickup["dtype"] == "Datetime"
    assert pickup["min"] < pickup["p50"] < pickup["max"]
    assert "std" not in pickup and "top" not in pickup


def test_describe_selected_columns_and_unknown_column(api: Api) -> None:
    q = "query($id: ID!, $c: [String!]) { dataset(id: $id) { describe(columns: $c) { success error { code message } data } } }"
    ok = api.data(q, {"id": "tips", "c": ["tip", "day"]})["dataset"]["describe"]
    assert [r["column"] for r in ok["data"]] == ["tip", "day"]
    whole = api.data(DESCRIBE, {"id": "tips"})["dataset"]["describe"]  # through the API as in-process
    assert whole["success"], whole["error"]
    oracle = pd.read_csv(DATA / "tips.csv").describe(include="all")
    assert [r["column"] for r in whole["data"]] == list(oracle.columns)
    tip = next(r for r in whole["data"] if r["column"] == "tip")
    assert all(_same(tip[ours], oracle["tip"][theirs]) for ours, theirs in NUMERIC_KEYS.items()), tip
    bad = api.data(q, {"id": "tips", "c": ["tip", "tips"]})["dataset"]["describe"]
    assert bad["success"] is False and bad["data"] is None
    assert bad["error"]["code"] == "BAD_INPUT" and '"tips"' in bad["error"]["message"]


def test_describe_of_a_filtered_frame_matches_pandas(api: Api) -> None:
    q = """query($id: ID!) { dataset(id: $id) {
      filter(where: [{column: "age", op: GT, value: 18}]) { describe(columns: ["fare", "class"]) { data } } } }"""
    rows = {r["column"]: r for r in api.data(q, {"id": "titanic"})["dataset"]["filter"]["describe"]["data"]}
    frame = pd.read_csv(DATA / "titanic.csv")
    adults = frame[frame["age"] > 18]
    assert math.isclose(rows["fare"]["mean"], adults["fare"].mean(), rel_tol=1e-9)
    assert math.isclose(rows["fare"]["p75"], adults["fare"].quantile(0.75), rel_tol=1e-9)
    assert rows["class"]["top"] == adults["class"].value_counts().index[0]
    assert rows["class"]["freq"] == adults["class"].value_counts().iloc[0]


# Text statistics come from each distinct value's count and first row, one column at a time: the
# plan is scanned again per column for a stored dataset (filtered or not) and run once otherwise.
TIES_DATA: dict[str, list[Any]] = {
    "word": ["b", "a", None, "a", "b", "c", None, "c", "d"],
    "flag": [True, False, None, False, True, True, False, None, False],
    "n": [5, 3, 9, 1, 4, 7, 2, 8, 6],
    "gone": [None] * 9,
}
TIES = pd.DataFrame(TIES_DATA)


@pytest.fixture
def ties(tmp_path: Path) -> Source:
    path = tmp_path / "ties.parquet"
    pl.DataFrame(TIES_DATA, schema_overrides={"gone": pl.String}).write_parquet(path)
    return Source("ties", 1, path)


def _text_oracle(frame: pd.DataFrame, column: str) -> dict[str, Any]:
    got = frame[column].dropna().astype(object).describe()
    return {"count": int(got["count"]), "unique": int(got["unique"]), "top": got["top"], "freq": int(got["freq"])}


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ((), TIES),  # read again for each column
        ((Filter((Condition("n", "GE", 2),)),), TIES[TIES["n"] >= 2]),  # read again, filtered
        ((Sort((SortKey("n", descending=True),)),), TIES.sort_values("n", ascending=False, kind="stable")),  # run once
    ],
    ids=["stored", "filtered", "sorted"],
)
def test_text_ties_go_to_the_value_seen_first_as_in_pandas(
    ties: Source, steps: tuple[Any, ...], expected: pd.DataFrame
) -> None:
    rows = {r["column"]: r for r in engine.describe(Plan(ties, steps))}
    assert list(rows) == list(TIES.columns)
    for column in ("word", "flag"):
        want = _text_oracle(expected, column)
        got = {k: rows[column][k] for k in want}
        assert got == want, (column, got, want)
        assert rows[column]["nullCount"] == int(expected[column].isna().sum())
    assert rows["n"]["mean"] == pytest.approx(expected["n"].mean())
    assert rows["gone"] | {"nullCount": 0} == {
        "column": "gone", "dtype": "String", "count": 0, "nullCount": 0, "unique": 0, "top": None, "freq": None,
    }  # fmt: skip


def test_a_column_asked_twice_and_an_empty_result(ties: Source) -> None:
    rows = engine.describe(Plan(ties), columns=["word", "n", "word"])
    assert [r["column"] for r in rows] == ["word", "n", "word"]
    assert rows[0] == rows[2] and rows[0]["top"] == "b" and rows[0]["freq"] == 2
    for steps in [
        (Filter((Condition("n", "GT", 100),)),),
        (Sort((SortKey("n"),)), Filter((Condition("n", "GT", 100),))),
    ]:
        empty = {r["column"]: r for r in engine.describe(Plan(ties, steps))}
        assert {k: empty["word"][k] for k in ("count", "nullCount", "unique", "top", "freq")} == {
            "count": 0, "nullCount": 0, "unique": 0, "top": None, "freq": None,
        }  # fmt: skip
        assert empty["n"]["count"] == 0 and empty["n"]["mean"] is None
