"""Frames: every filter operator, select, sort, slice, rows and count, checked against pandas. The
filter operators are counted by the engine in-process (the same code the workers run); the rest goes
through one app for the module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from support import DATA, Api, serving_with

import engine
from engine import Condition, Filter, Plan, Source

COUNT = "query($id: ID!, $w: [Condition!]!) { dataset(id: $id) { filter(where: $w) { count { success error { code message } data } } } }"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module (its tests only read): titanic and taxis uploaded once."""
    with serving_with(tmp_path_factory.mktemp("frames"), "titanic.csv", "taxis.csv") as app:
        yield app


@pytest.fixture
def titanic() -> str:
    return "titanic"


def _count_here(source: Source, where: list[dict[str, Any]]) -> int:
    """The filtered count from the engine in this process."""
    return engine.count(Plan(source, (Filter(tuple(Condition(**c) for c in where)),)))


def _count(api: Api, dataset_id: str, where: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = api.data(COUNT, {"id": dataset_id, "w": where})["dataset"]["filter"]["count"]
    return result


T = pd.read_csv(DATA / "titanic.csv")
FILTERS = [
    ({"column": "age", "op": "EQ", "value": 30}, T["age"] == 30),
    ({"column": "sex", "op": "NE", "value": "male"}, T["sex"] != "male"),
    ({"column": "fare", "op": "GT", "value": 50}, T["fare"] > 50),
    ({"column": "fare", "op": "GE", "value": 7.25}, T["fare"] >= 7.25),
    ({"column": "age", "op": "LT", "value": 18}, T["age"] < 18),
    ({"column": "age", "op": "LE", "value": 18.5}, T["age"] <= 18.5),
    ({"column": "class", "op": "IN", "value": ["First", "Second"]}, T["class"].isin(["First", "Second"])),
    ({"column": "pclass", "op": "NOT_IN", "value": [1, 2]}, ~T["pclass"].isin([1, 2])),
    ({"column": "age", "op": "BETWEEN", "value": [20, 30]}, T["age"].between(20, 30)),
    ({"column": "class", "op": "BETWEEN", "value": ["First", "Second"]}, T["class"].between("First", "Second")),
    ({"column": "age", "op": "IN", "value": [22, 38.0, 0.92]}, T["age"].isin([22, 38.0, 0.92])),
    ({"column": "pclass", "op": "IN", "value": [1, 2.5]}, T["pclass"].isin([1, 2.5])),
    ({"column": "pclass", "op": "IN", "value": [2.0]}, T["pclass"].isin([2])),
    (
        {"column": "embark_town", "op": "CONTAINS", "value": "amp"},
        T["embark_town"].str.contains("amp", regex=False) == True,
    ),
    ({"column": "who", "op": "STARTS_WITH", "value": "wo"}, T["who"].str.startswith("wo")),
    ({"column": "embark_town", "op": "ENDS_WITH", "value": "town"}, T["embark_town"].str.endswith("town") == True),
    ({"column": "deck", "op": "IS_NULL"}, T["deck"].isna()),
    ({"column": "deck", "op": "NOT_NULL"}, T["deck"].notna()),
    ({"column": "alone", "op": "EQ", "value": True}, T["alone"]),
    (
        {"column": "embark_town", "op": "CONTAINS", "value": "(.*)"},
        T["embark_town"].str.contains("(.*)", regex=False) == True,
    ),
]


@pytest.mark.parametrize(("condition", "mask"), FILTERS, ids=[f"{f[0]['op']}-{f[0]['column']}" for f in FILTERS])
def test_each_operator_counts_what_pandas_counts(
    shared_data: dict[str, Source], condition: dict[str, Any], mask: pd.Series
) -> None:
    expected = int(mask.sum())
    assert 0 < expected < len(T) or condition["value"] == "(.*)"
    assert _count_here(shared_data["titanic"], [condition]) == expected


def test_ne_and_not_in_leave_out_missing_values(shared_data: dict[str, Source]) -> None:
    # Missing values match no comparison (as in SQL); use IS_NULL to find them.
    counted = _count_here(shared_data["titanic"], [{"column": "deck", "op": "NE", "value": "C"}])
    assert counted == int((T["deck"].notna() & (T["deck"] != "C")).sum())


def test_conditions_are_anded_and_chained_filters_compose(api: Api, titanic: str) -> None:
    where = [{"column": "age", "op": "GT", "value": 18}, {"column": "sex", "op": "EQ", "value": "female"}]
    expected = int(((T["age"] > 18) & (T["sex"] == "female")).sum())
    assert _count(api, titanic, where)["data"] == {"count": expected}
    q = """query($id: ID!) { dataset(id: $id) { filter(where: [{column: "age", op: GT, value: 18}]) {
      filter(where: [{column: "sex", op: EQ, value: "female"}]) { count { data } } } } }"""
    assert api.data(q, {"id": titanic})["dataset"]["filter"]["filter"]["count"]["data"] == {"count": expected}


def test_select_sort_slice_rows_match_pandas(api: Api, titanic: str) -> None:
    q = """query($id: ID!) { dataset(id: $id) {
      select(columns: ["fare", "age", "class"]) { sort(by: [{column: "fare", descending: true}, {column: "age"}]) {
        slice(offset: 3, limit: 10) { rows { data meta { rowCount truncated columns { name dtype nullCount } } } } } } } }"""
    rows = api.data(q, {"id": titanic})["dataset"]["select"]["sort"]["slice"]["rows"]
    expected = (
        T[["fare", "age", "class"]]
        .sort_values(["fare", "age"], ascending=[False, True], na_position="last", kind="stable")
        .iloc[3:13]
    )
    assert [list(r) for r in rows["data"]] == [["fare", "age", "class"]] * 10
    got = pd.DataFrame(rows["data"])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
    assert rows["meta"]["rowCount"] == 10 and rows["meta"]["truncated"] is False
    assert [c["name"] for c in rows["meta"]["columns"]] == ["fare", "age", "class"]


def test_pipeline_steps_build_the_same_plan_as_nested_fields(api: Api, titanic: str) -> None:
    nested = """query($id: ID!) { dataset(id: $id) { filter(where: [{column: "age", op: GT, value: 18}]) {
      select(columns: ["age", "fare"]) { sort(by: [{column: "age"}]) { rows(limit: 5) { data meta { cacheKey } } } } } } }"""
    steps = [
        {"filter": [{"column": "age", "op": "GT", "value": 18}]},
        {"select": ["age", "fare"]},
        {"sort": [{"column": "age"}]},
    ]
    piped = "query($id: ID!, $s: [Step!]!) { dataset(id: $id) { pipeline(steps: $s) { rows(limit: 5) { data meta { cacheKey } } } } }"
    a = api.data(nested, {"id": titanic})["dataset"]["filter"]["select"]["sort"]["rows"]
    b = api.data(piped, {"id": titanic, "s": steps})["dataset"]["pipeline"]["rows"]
    assert a == b and len(a["data"]) == 5


def test_rows_truncated_when_more_follow_and_the_cap_is_a_clear_problem(api: Api, titanic: str) -> None:
    q = "query($id: ID!, $l: Int, $o: Int) { dataset(id: $id) { rows(limit: $l, offset: $o) { success error { code message } data meta { rowCount truncated } } } }"
    page = api.data(q, {"id": titanic, "l": 100, "o": 0})["dataset"]["rows"]
    assert page["meta"] == {"rowCount": 100, "truncated": True}
    last = api.data(q, {"id": titanic, "l": 100, "o": 800})["dataset"]["rows"]
    assert last["meta"] == {"rowCount": 91, "truncated": False}
    default = api.data(q, {"id": titanic, "l": None, "o": None})["dataset"]["rows"]
    assert default["meta"]["rowCount"] == 100  # an explicit null means the default
    over = api.data(q, {"id": titanic, "l": 1_000_000_000, "o": 0})["dataset"]["rows"]
    assert over["success"] is False and over["error"]["code"] == "BAD_INPUT"
    assert "10,000" in over["error"]["message"] and "rows_max" in over["error"]["message"]


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ([{"column": "nope", "op": "EQ", "value": 1}], ['"nope"', "survived"]),
        ([{"column": "age", "op": "GT", "value": "old"}], ['"age"', "Float64", "GT", "number", '"old"']),
        ([{"column": "sex", "op": "GT", "value": 3}], ['"sex"', "text", "3"]),
        ([{"column": "age", "op": "IN", "value": 3}], ['"age"', "IN", "list"]),
        ([{"column": "age", "op": "BETWEEN", "value": [1]}], ["BETWEEN", "[low, high]"]),
        ([{"column": "age", "op": "CONTAINS", "value": "3"}], ["CONTAINS", "text columns", '"age"']),
        ([{"column": "age", "op": "EQ"}], ['"age"', "needs a value", "IS_NULL"]),
        ([{"column": "age", "op": "IS_NULL", "value": 3}], ["IS_NULL", "takes no value"]),
        ([{"column": "alone", "op": "GT", "value": True}], ["GT", '"alone"', "EQ or NE"]),
    ],
    ids=["unknown-column", "text-for-number", "number-for-text", "in-not-list", "between-one", "contains-number",
         "no-value", "null-op-value", "bool-order"],
)  # fmt: skip
def test_bad_conditions_name_the_column_and_operator(api: Api, titanic: str, where: list, words: list[str]) -> None:
    answer = _count(api, titanic, where)
    assert answer["success"] is False and answer["data"] is None
    assert answer["error"]["code"] == "BAD_INPUT"
    for word in words:
        assert word in answer["error"]["message"], (word, answer["error"]["message"])


def test_bad_select_and_sort_are_problems_not_errors(api: Api, titanic: str) -> None:
    q = """query($id: ID!) { dataset(id: $id) {
      a: select(columns: ["age", "ghost"]) { count { success error { code message } } }
      b: sort(by: [{column: "ghost"}]) { rows { success error { code message } } }
      c: slice(offset: -1, limit: 2) { rows { success error { code message } } } } }"""
    ds = api.data(q, {"id": titanic})["dataset"]
    assert ds["a"]["count"]["error"]["code"] == "BAD_INPUT" and '"ghost"' in ds["a"]["count"]["error"]["message"]
    assert ds["b"]["rows"]["error"]["code"] == "BAD_INPUT" and "sort" in ds["b"]["rows"]["error"]["message"]
    assert ds["c"]["rows"]["error"]["code"] == "BAD_INPUT" and "offset" in ds["c"]["rows"]["error"]["message"]


def test_dates_filter_with_iso_text(api: Api) -> None:
    taxis = "taxis"
    frame = pd.read_csv(DATA / "taxis.csv", parse_dates=["pickup"])
    where = [{"column": "pickup", "op": "GE", "value": "2019-03-15T00:00:00"}]
    assert _count(api, taxis, where)["data"] == {"count": int((frame["pickup"] >= "2019-03-15").sum())}
    bad = _count(api, taxis, [{"column": "pickup", "op": "GE", "value": "mid-March"}])
    assert bad["error"]["code"] == "BAD_INPUT" and "timestamp" in bad["error"]["message"]


def test_nan_and_infinity_serialise_as_null(api: Api) -> None:
    dataset_id = api.upload_ok(b"x,y\n1,inf\n2,-inf\n3,1.5\n", "weird.csv")
    rows = api.data("query($id: ID!) { dataset(id: $id) { rows { data } } }", {"id": dataset_id})
    assert rows["dataset"]["rows"]["data"] == [{"x": 1, "y": None}, {"x": 2, "y": None}, {"x": 3, "y": 1.5}]
