"""groupBy, valueCounts and explain, checked against pandas on the shared data."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd
import pytest
from support import DATA, Api

GROUP = """query($id: ID!, $by: [String!]!, $aggs: [Aggregation!]!) { dataset(id: $id) {
  groupBy(by: $by, aggregations: $aggs) { rows(limit: 10000) { success error { code message } data } } } }"""
PANDAS_FN = {"COUNT": "count", "SUM": "sum", "MEAN": "mean", "MEDIAN": "median", "MIN": "min", "MAX": "max",
             "STD": "std", "VAR": "var", "N_UNIQUE": "nunique", "FIRST": "first", "LAST": "last"}  # fmt: skip


def _group(api: Api, dataset_id: str, by: list[str], aggs: list[dict[str, Any]]) -> dict[str, Any]:
    answer: dict[str, Any] = api.data(GROUP, {"id": dataset_id, "by": by, "aggs": aggs})["dataset"]["groupBy"]["rows"]
    return answer


def _close(a: Any, b: Any) -> bool:
    if isinstance(b, float) and math.isnan(b):
        return a is None
    if isinstance(b, (int, float)) and isinstance(a, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


@pytest.mark.parametrize(
    ("file", "by", "column"),
    [
        ("tips.csv", ["day", "time"], "tip"),
        ("titanic.csv", ["class"], "age"),
        ("diamonds.csv", ["cut", "color"], "price"),
    ],
)
def test_every_aggregation_matches_pandas(api: Api, file: str, by: list[str], column: str) -> None:
    dataset_id = api.upload_ok(DATA / file)
    aggs = [{"column": column, "fn": fn} for fn in PANDAS_FN]
    answer = _group(api, dataset_id, by, aggs)
    assert answer["success"], answer["error"]
    frame = pd.read_csv(DATA / file)
    expected = (
        frame.groupby(by, dropna=False, sort=True)[column]
        .agg(list(PANDAS_FN.values()))
        .reset_index()
        .sort_values(by, na_position="last")
    )
    got = answer["data"]
    assert len(got) == len(expected)
    assert [tuple(r[k] for k in by) for r in got] == [tuple(x) for x in expected[by].itertuples(index=False)]
    for row, (_, want) in zip(got, expected.iterrows(), strict=True):
        for fn, pandas_fn in PANDAS_FN.items():
            assert _close(row[f"{column}_{fn.lower()}"], want[pandas_fn]), (fn, row, want.to_dict())


def test_first_and_last_skip_missing_values_as_pandas_does(api: Api) -> None:
    dataset_id = api.upload_ok(b"g,v\na,\na,1\na,2\na,\nb,\n", "gaps.csv")
    rows = _group(api, dataset_id, ["g"], [{"column": "v", "fn": "FIRST"}, {"column": "v", "fn": "LAST"}])["data"]
    frame = pd.DataFrame({"g": ["a", "a", "a", "a", "b"], "v": [None, 1, 2, None, None]})
    expected = frame.groupby("g")["v"].agg(["first", "last"])
    assert rows == [{"g": "a", "v_first": 1, "v_last": 2}, {"g": "b", "v_first": None, "v_last": None}]
    assert (expected.loc["a"].tolist(), expected.loc["b"].isna().all()) == ([1.0, 2.0], True)


def test_missing_keys_form_a_group_sorted_last_and_aliases_name_columns(api: Api) -> None:
    dataset_id = api.upload_ok(DATA / "titanic.csv")
    answer = _group(
        api,
        dataset_id,
        ["deck"],
        [{"column": "fare", "fn": "MEAN", "alias": "avg_fare"}, {"column": "fare", "fn": "COUNT"}],
    )
    rows = answer["data"]
    assert [r["deck"] for r in rows] == ["A", "B", "C", "D", "E", "F", "G", None]
    assert list(rows[0]) == ["deck", "avg_fare", "fare_count"]
    frame = pd.read_csv(DATA / "titanic.csv")
    assert rows[-1]["fare_count"] == int(frame["deck"].isna().sum())


@pytest.mark.parametrize(
    ("by", "aggs", "words"),
    [
        (["ghost"], [{"column": "tip", "fn": "SUM"}], ['"ghost"']),
        (["day"], [{"column": "sex", "fn": "MEAN"}], ["MEAN", "numeric", '"sex"', "String"]),
        (["day"], [{"column": "tip", "fn": "SUM"}, {"column": "tip", "fn": "SUM"}], ['"tip_sum"', "alias"]),
        (["day"], [{"column": "tip", "fn": "SUM", "alias": "day"}], ['"day"', "twice"]),
        ([], [{"column": "tip", "fn": "SUM"}], ["key"]),
        (["day"], [], ["aggregation"]),
    ],
    ids=["unknown-key", "mean-of-text", "same-output-twice", "alias-clashes-with-key", "no-keys", "no-aggregations"],
)
def test_bad_group_by_names_the_problem(api: Api, by: list[str], aggs: list[dict[str, Any]], words: list[str]) -> None:
    dataset_id = api.upload_ok(DATA / "tips.csv")
    answer = _group(api, dataset_id, by, aggs)
    assert answer["success"] is False and answer["error"]["code"] == "BAD_INPUT"
    for word in words:
        assert word in answer["error"]["message"], (word, answer["error"]["message"])


def test_group_by_in_a_pipeline_and_nested_share_a_cache_key(api: Api) -> None:
    dataset_id = api.upload_ok(DATA / "tips.csv")
    nested = """query($id: ID!) { dataset(id: $id) { filter(where: [{column: "size", op: GE, value: 2}]) {
      groupBy(by: ["day"], aggregations: [{column: "tip", fn: MEAN}]) { rows { data meta { cacheKey } } } } } }"""
    piped = """query($id: ID!) { dataset(id: $id) { pipeline(steps: [{filter: [{column: "size", op: GE, value: 2}]},
      {groupBy: {by: ["day"], aggregations: [{column: "tip", fn: MEAN}]}}]) { rows { data meta { cacheKey } } } } }"""
    a = api.data(nested, {"id": dataset_id})["dataset"]["filter"]["groupBy"]["rows"]
    b = api.data(piped, {"id": dataset_id})["dataset"]["pipeline"]["rows"]
    assert a == b and [r["day"] for r in a["data"]] == ["Fri", "Sat", "Sun", "Thur"]


def test_value_counts_match_pandas(api: Api) -> None:
    dataset_id = api.upload_ok(DATA / "titanic.csv")
    q = 'query($id: ID!) { dataset(id: $id) { valueCounts(column: "embark_town", limit: 2) { success data meta { rowCount truncated } } } }'
    answer = api.data(q, {"id": dataset_id})["dataset"]["valueCounts"]
    expected = pd.read_csv(DATA / "titanic.csv")["embark_town"].value_counts()
    assert [(r["value"], r["count"]) for r in answer["data"]] == list(expected.head(2).items())
    assert answer["data"][0]["share"] == pytest.approx(expected.iloc[0] / expected.sum())
    assert answer["meta"] == {"rowCount": 2, "truncated": True}
    bad = api.data(
        'query($id: ID!) { dataset(id: $id) { valueCounts(column: "nope") { success error { code message } } } }',
        {"id": dataset_id},
    )
    assert bad["dataset"]["valueCounts"]["error"]["code"] == "BAD_INPUT"
    over = api.data(
        'query($id: ID!) { dataset(id: $id) { valueCounts(column: "sex", limit: 20000) { success error { code message } } } }',
        {"id": dataset_id},
    )
    message = over["dataset"]["valueCounts"]["error"]["message"]
    assert "valueCounts" in message and "10,000" in message and "rows_max" in message


def test_explain_shows_plan_and_columns_without_server_paths(api: Api) -> None:
    dataset_id = api.upload_ok(DATA / "tips.csv")
    q = """query($id: ID!) { dataset(id: $id) { filter(where: [{column: "tip", op: GT, value: 5}]) {
      groupBy(by: ["day"], aggregations: [{column: "tip", fn: MAX}]) { explain { success data } } } } }"""
    data = api.data(q, {"id": dataset_id})["dataset"]["filter"]["groupBy"]["explain"]["data"]
    assert data["columns"] == [{"name": "day", "dtype": "String"}, {"name": "tip_max", "dtype": "Float64"}]
    assert "dataset tips v1" in data["plan"]
    assert str(api.settings.data_dir.resolve()) not in data["plan"] and not re.search(r"/tmp/|/work/", data["plan"])
