"""groupBy, valueCounts and explain, checked against pandas on the shared data: the aggregations on
the engine in-process (the same code the workers run), the rest through the API."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from support import DATA, Api, as_json, serving_with

import engine
from datagraph.errors import BadInput
from engine import Aggregation, GroupBy, Plan, Source

GROUP = """query($id: ID!, $by: [String!]!, $aggs: [Aggregation!]!) { dataset(id: $id) {
  groupBy(by: $by, aggregations: $aggs) { rows(limit: 10000) { success error { code message } data } } } }"""
PANDAS_FN = {"COUNT": "count", "SUM": "sum", "MEAN": "mean", "MEDIAN": "median", "MIN": "min", "MAX": "max",
             "STD": "std", "VAR": "var", "N_UNIQUE": "nunique", "FIRST": "first", "LAST": "last"}  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module (its tests only read): tips and titanic uploaded once."""
    with serving_with(tmp_path_factory.mktemp("groupby"), "tips.csv", "titanic.csv") as app:
        yield app


def _group(api: Api, dataset_id: str, by: list[str], aggs: list[dict[str, Any]]) -> dict[str, Any]:
    answer: dict[str, Any] = api.data(GROUP, {"id": dataset_id, "by": by, "aggs": aggs})["dataset"]["groupBy"]["rows"]
    return answer


def _group_here(source: Source, by: list[str], aggs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groupBy's rows (limit 10,000) from the engine in this process, as the API answers them."""
    step = GroupBy(tuple(by), tuple(Aggregation(a["column"], a["fn"], a.get("alias")) for a in aggs))
    found = engine.rows(Plan(source, (step,)), limit=10_000, offset=0)
    assert not found.truncated
    records: list[dict[str, Any]] = as_json(found.records)
    return records


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
def test_every_aggregation_matches_pandas(
    shared_data: dict[str, Source], file: str, by: list[str], column: str
) -> None:
    aggs = [{"column": column, "fn": fn} for fn in PANDAS_FN]
    got = _group_here(shared_data[file.removesuffix(".csv")], by, aggs)
    frame = pd.read_csv(DATA / file)
    expected = (
        frame.groupby(by, dropna=False, sort=True)[column]
        .agg(list(PANDAS_FN.values()))
        .reset_index()
        .sort_values(by, na_position="last")
    )
    assert len(got) == len(expected)
    assert [tuple(r[k] for k in by) for r in got] == [tuple(x) for x in expected[by].itertuples(index=False)]
    for row, (_, want) in zip(got, expected.iterrows(), strict=True):
        for fn, pandas_fn in PANDAS_FN.items():
            assert _close(row[f"{column}_{fn.lower()}"], want[pandas_fn]), (fn, row, want.to_dict())


def test_first_and_last_skip_missing_values_as_pandas_does(api: Api) -> None:
    dataset_id = api.upload_ok(b"g,v\na,\na,1\na,2\na,\nb,\n", "gaps.csv")  # through the API: the wiring
    rows = _group(api, dataset_id, ["g"], [{"column": "v", "fn": "FIRST"}, {"column": "v", "fn": "LAST"}])["data"]
    frame = pd.DataFrame({"g": ["a", "a", "a", "a", "b"], "v": [None, 1, 2, None, None]})
    expected = frame.groupby("g")["v"].agg(["first", "last"])
    assert rows == [{"g": "a", "v_first": 1, "v_last": 2}, {"g": "b", "v_first": None, "v_last": None}]
    assert (expected.loc["a"].tolist(), expected.loc["b"].isna().all()) == ([1.0, 2.0], True)


def test_missing_keys_form_a_group_sorted_last_and_aliases_name_columns(shared_data: dict[str, Source]) -> None:
    rows = _group_here(
        shared_data["titanic"],
        ["deck"],
        [{"column": "fare", "fn": "MEAN", "alias": "avg_fare"}, {"column": "fare", "fn": "COUNT"}],
    )
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
def test_bad_group_by_names_the_problem(
    shared_data: dict[str, Source], by: list[str], aggs: list[dict[str, Any]], words: list[str]
) -> None:
    with pytest.raises(BadInput) as refused:
        _group_here(shared_data["tips"], by, aggs)
    assert refused.value.code == "BAD_INPUT"
    for word in words:
        assert word in refused.value.message, (word, refused.value.message)


def test_a_bad_group_by_is_a_bad_input_problem_through_the_api(api: Api) -> None:
    answer = _group(api, "tips", ["day"], [{"column": "sex", "fn": "MEAN"}])
    assert answer["success"] is False and answer["data"] is None and answer["error"]["code"] == "BAD_INPUT"
    assert answer["error"]["message"] == 'groupBy: MEAN needs a numeric column; "sex" is String.'


def test_group_by_in_a_pipeline_and_nested_share_a_cache_key(api: Api) -> None:
    dataset_id = "tips"
    nested = """query($id: ID!) { dataset(id: $id) { filter(where: [{column: "size", op: GE, value: 2}]) {
      groupBy(by: ["day"], aggregations: [{column: "tip", fn: MEAN}]) { rows { data meta { cacheKey } } } } } }"""
    piped = """query($id: ID!) { dataset(id: $id) { pipeline(steps: [{filter: [{column: "size", op: GE, value: 2}]},
      {groupBy: {by: ["day"], aggregations: [{column: "tip", fn: MEAN}]}}]) { rows { data meta { cacheKey } } } } }"""
    a = api.data(nested, {"id": dataset_id})["dataset"]["filter"]["groupBy"]["rows"]
    b = api.data(piped, {"id": dataset_id})["dataset"]["pipeline"]["rows"]
    assert a == b and [r["day"] for r in a["data"]] == ["Fri", "Sat", "Sun", "Thur"]


def test_value_counts_match_pandas(api: Api) -> None:
    dataset_id = "titanic"
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
    dataset_id = "tips"
    q = """query($id: ID!) { dataset(id: $id) { filter(where: [{column: "tip", op: GT, value: 5}]) {
      groupBy(by: ["day"], aggregations: [{column: "tip", fn: MAX}]) { explain { success data } } } } }"""
    data = api.data(q, {"id": dataset_id})["dataset"]["filter"]["groupBy"]["explain"]["data"]
    assert data["columns"] == [{"name": "day", "dtype": "String"}, {"name": "tip_max", "dtype": "Float64"}]
    assert "dataset tips v1" in data["plan"]
    assert str(api.settings.data_dir.resolve()) not in data["plan"] and not re.search(r"/tmp/|/work/", data["plan"])
