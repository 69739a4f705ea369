"""join(right, on, how): row counts and values as pandas merges them, name clashes suffixed,
the match rate in summary, and clear problems for wrong keys."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from support import DATA, Api

RESULT = "success data error { code message } meta { rowCount cacheKey matchRate columns { name dtype } }"


def _frame(api: Api, chain: str, result: str) -> dict[str, Any]:
    node: Any = api.data('{ dataset(id: "titanic") { %s { %s { %s } } } }' % (chain, result, RESULT))["dataset"]
    while "success" not in node:
        (node,) = node.values()
    answer: dict[str, Any] = node
    return answer


@pytest.fixture
def titanic(api: Api) -> tuple[Api, pd.DataFrame, pd.DataFrame]:
    """titanic, and a per-class table that lacks one class (so not every left row matches)."""
    left = pd.read_csv(DATA / "titanic.csv")
    right = left.groupby("class", as_index=False).agg(fare=("fare", "mean"), who=("who", "first"))
    right = right[right["class"] != "Second"]
    api.upload_ok(DATA / "titanic.csv")
    api.upload_ok(right.to_csv(index=False).encode(), "classes.csv")
    return api, left, right


@pytest.mark.parametrize("how", ["INNER", "LEFT"])
def test_join_counts_and_values_match_pandas(titanic: tuple[Api, pd.DataFrame, pd.DataFrame], how: str) -> None:
    api, left, right = titanic
    chain = f'join(right: "classes", on: ["class"], how: {how})'
    expected = left.merge(right, on="class", how=how.lower(), suffixes=("", "_right"))
    counted = _frame(api, chain, "count")
    assert counted["data"] == {"count": len(expected)}
    rows = _frame(api, chain, f"rows(limit: {len(expected)})")
    assert [c["name"] for c in rows["meta"]["columns"]] == list(expected.columns)
    got = pd.DataFrame(rows["data"])
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


def test_a_self_join_on_several_keys_counts_as_pandas(api: Api) -> None:
    api.upload_ok(DATA / "tips.csv")
    tips = pd.read_csv(DATA / "tips.csv")
    q = '{ dataset(id: "tips") { join(right: "tips", on: ["day", "time", "size"], how: LEFT) { count { data } } } }'
    expected = len(tips.merge(tips, on=["day", "time", "size"], how="left"))
    assert api.data(q)["dataset"]["join"]["count"]["data"] == {"count": expected}


def test_missing_keys_never_match(api: Api) -> None:
    api.upload_ok(b"k,a\n1,x\n,y\n2,z\n", "l.csv")
    api.upload_ok(b"k,b\n1,p\n,q\n", "r.csv")
    q = '{ dataset(id: "l") { join(right: "r", on: ["k"], how: LEFT) { rows { data } summary { data } } } }'
    join = api.data(q)["dataset"]["join"]
    assert join["rows"]["data"] == [
        {"k": 1, "a": "x", "b": "p"},
        {"k": None, "a": "y", "b": None},
        {"k": 2, "a": "z", "b": None},
    ]
    assert join["summary"]["data"]["joins"][0]["matchedLeftRows"] == 1


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


def test_keys_of_different_kinds_are_refused(api: Api) -> None:
    api.upload_ok(b"k,a\n1,x\n", "l.csv")
    api.upload_ok(b"k,b\nx,p\n", "r.csv")
    answer = api.data('{ dataset(id: "l") { join(right: "r", on: ["k"]) { count { error { code message } } } } }')
    error = answer["dataset"]["join"]["count"]["error"]
    assert error["code"] == "BAD_INPUT" and "Int64 on the left and String on the right" in error["message"]
