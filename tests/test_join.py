"""join(right, on, how): row counts and values as pandas merges them, name clashes suffixed,
the match rate in summary, and clear problems for wrong keys. The pandas merges are checked on the
engine in-process (the same code the workers run); the rest goes through one app for the module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import DATA, Api, as_json, ingested, make_settings, serving

import engine
from engine import Join, Plan, Source

RESULT = "success data error { code message } meta { rowCount cacheKey matchRate columns { name dtype } }"


def _frame(api: Api, chain: str, result: str) -> dict[str, Any]:
    node: Any = api.data('{ dataset(id: "titanic") { %s { %s { %s } } } }' % (chain, result, RESULT))["dataset"]
    while "success" not in node:
        (node,) = node.values()
    answer: dict[str, Any] = node
    return answer


def _classes() -> tuple[pd.DataFrame, pd.DataFrame]:
    """titanic, and a per-class table that lacks one class (so not every left row matches)."""
    left = pd.read_csv(DATA / "titanic.csv")
    right = left.groupby("class", as_index=False).agg(fare=("fare", "mean"), who=("who", "first"))
    return left, right[right["class"] != "Second"]


@pytest.fixture(scope="module")
def titanic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, pd.DataFrame, pd.DataFrame]]:
    """One app for the module (its tests only read) with titanic and classes uploaded once."""
    left, right = _classes()
    with serving(make_settings(tmp_path_factory.mktemp("join"))) as api:
        api.upload_ok(DATA / "titanic.csv")
        api.upload_ok(right.to_csv(index=False).encode(), "classes.csv")
        yield api, left, right


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """The per-class table as an engine `Source`, for joins run in this process."""
    _, right = _classes()
    return ingested(right.to_csv(index=False).encode(), tmp_path_factory.mktemp("classes"), "classes")


@pytest.mark.parametrize("how", ["INNER", "LEFT"])
def test_join_counts_and_values_match_pandas(shared_data: dict[str, Source], classes: Source, how: str) -> None:
    left, right = _classes()
    plan = Plan(shared_data["titanic"], (Join(classes, ("class",), how),))
    expected = left.merge(right, on="class", how=how.lower(), suffixes=("", "_right"))
    assert engine.count(plan) == len(expected)
    rows = engine.rows(plan, limit=len(expected), offset=0)
    assert [c.name for c in rows.columns] == list(expected.columns)
    got = pd.DataFrame(as_json(rows.records))
    # Left rows keep their order; compare the values the right side brought.
    pd.testing.assert_series_equal(got["fare_right"], expected["fare_right"].reset_index(drop=True), check_names=False)
    assert got["who_right"].fillna("").tolist() == expected["who_right"].fillna("").tolist()


def test_summary_reports_row_counts_columns_and_the_match_rate(titanic: tuple[Api, pd.DataFrame, pd.DataFrame]) -> None:
    api, left, right = titanic
    summary = _frame(api, 'join(right: "classes", on: ["class"], how: LEFT)', "summary")
    matched = int(left["class"].isin(right["class"]).sum())
    assert summary["meta"]["matchRate"] == pytest.approx(matched / len(left))
    (info,) = summary["data"]["joins"]
    assert info == {
        "right": "classes",
        "on": ["class"],
        "how": "LEFT",
        "leftRows": len(left),
        "rightRows": len(right),
        "matchedLeftRows": matched,
        "matchRate": pytest.approx(matched / len(left)),
    }
    assert summary["data"]["rows"] == len(left)
    assert [c["name"] for c in summary["data"]["columns"]][-2:] == ["fare_right", "who_right"]
    plain = _frame(api, 'filter(where: [{column: "age", op: GT, value: 30}])', "summary")
    assert plain["meta"]["matchRate"] is None and plain["data"]["joins"] == []


def test_chained_joins_suffix_clashes_without_collisions(titanic: tuple[Api, pd.DataFrame, pd.DataFrame]) -> None:
    api, _, _ = titanic
    chain = 'join(right: "classes", on: ["class"]) { join(right: "classes", on: ["class"])'
    answer = api.data('{ dataset(id: "titanic") { %s { rows(limit: 1) { meta { columns { name } } } } } } }' % chain)
    names = [c["name"] for c in answer["dataset"]["join"]["join"]["rows"]["meta"]["columns"]]
    assert names[-4:] == ["fare_right", "who_right", "fare_right_2", "who_right_2"]
    assert len(names) == len(set(names))


def test_the_steps_form_builds_the_same_plan(titanic: tuple[Api, pd.DataFrame, pd.DataFrame]) -> None:
    api, _, _ = titanic
    nested = _frame(api, 'join(right: "classes", on: ["class"], how: LEFT)', "count")
    steps = _frame(api, 'pipeline(steps: [{join: {right: "classes", on: ["class"], how: LEFT}}])', "count")
    assert nested["meta"]["cacheKey"] == steps["meta"]["cacheKey"] and nested["data"] == steps["data"]


def test_a_self_join_on_several_keys_counts_as_pandas(shared_data: dict[str, Source]) -> None:
    tips = pd.read_csv(DATA / "tips.csv")
    plan = Plan(shared_data["tips"], (Join(shared_data["tips"], ("day", "time", "size"), "LEFT"),))
    expected = len(tips.merge(tips, on=["day", "time", "size"], how="left"))
    assert engine.count(plan) == expected


def test_missing_keys_never_match(tmp_path: Path) -> None:
    left = ingested(b"k,a\n1,x\n,y\n2,z\n", tmp_path, "l")
    right = ingested(b"k,b\n1,p\n,q\n", tmp_path, "r")
    plan = Plan(left, (Join(right, ("k",), "LEFT"),))
    assert as_json(engine.rows(plan, limit=100, offset=0).records) == [
        {"k": 1, "a": "x", "b": "p"},
        {"k": None, "a": "y", "b": None},
        {"k": 2, "a": "z", "b": None},
    ]
    assert engine.summary(plan)["joins"][0]["matchedLeftRows"] == 1


@pytest.mark.parametrize(
    ("chain", "code", "words"),
    [
        ('join(right: "nope", on: ["class"])', "NOT_FOUND", ['"nope"']),
        ('join(right: "classes", on: ["klass"])', "BAD_INPUT", ['"klass"', "left side"]),
        ('join(right: "classes", on: ["age"])', "BAD_INPUT", ['"age"', "right side"]),
        ('join(right: "classes", on: [])', "BAD_INPUT", ["at least one key"]),
    ],
)
def test_bad_joins_are_clear_problems(
    titanic: tuple[Api, pd.DataFrame, pd.DataFrame], chain: str, code: str, words: list[str]
) -> None:
    api, _, _ = titanic
    answer = _frame(api, chain, "count")
    assert answer["success"] is False and answer["error"]["code"] == code
    for word in words:
        assert word in answer["error"]["message"]


def test_keys_of_different_kinds_are_refused(titanic: tuple[Api, pd.DataFrame, pd.DataFrame]) -> None:
    api, _, _ = titanic
    api.upload_ok(b"k,a\n1,x\n", "l.csv")
    api.upload_ok(b"k,b\nx,p\n", "r.csv")
    answer = api.data('{ dataset(id: "l") { join(right: "r", on: ["k"]) { count { error { code message } } } } }')
    error = answer["dataset"]["join"]["count"]["error"]
    assert error["code"] == "BAD_INPUT" and "Int64 on the left and String on the right" in error["message"]
