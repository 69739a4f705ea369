"""Frame.recipe and runRecipe (issue 20, item 3): every step kind's recipe, its Polars script run on
the Parquet exports of its sources, gives the frame the server gives (same columns, types, values
and order); its steps run again through pipeline(steps:) and runRecipe; bad recipes are problems
that leave nothing behind."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal
from support import DATA, ROOT, Api, make_settings, require_service, serving

# A script per case is run in one child process, each as `__main__` with its own argv (runpy).
RUNNER = """
import json, runpy, sys
for script, argv in json.loads(sys.argv[1]):
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")
"""


def _items_csv() -> bytes:
    rows = []
    for i in range(1, 41):
        qty = "" if i % 7 == 0 else str(i % 5)
        price = "" if i % 9 == 0 else f"{(i * 37 % 100) / 4:.2f}"
        name = "" if i % 11 == 0 else ["  apple", "pear ", "plum", "apricot", "Peach"][i % 5]
        day = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}" if i % 8 else ""
        at = f"2024-03-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00"
        flag = "" if i % 6 == 0 else ("true" if i % 2 else "false")
        code = f" {i % 13} " if i % 4 else str(i % 13)
        stamp = f"{1 + i % 28:02d}/{1 + i % 12:02d}/2023"
        answer = ["yes", "no", "Y", "N"][i % 4]
        region = str(i % 4) if i % 10 else ""
        zoned = f"2024-01-{1 + i % 28:02d} {i % 24:02d}:30:00{'+' if i % 3 else '-'}0{i % 5}00"
        rows.append(",".join([str(i), qty, price, name, day, at, flag, code, stamp, answer, region, zoned]))
    header = "id,qty,price,name,day,at,flag,code,stamp,answer,region,zoned"
    return ("\n".join([header, *rows]) + "\n").encode()


# The join's right side: its key is read as floats (a cast to the left's Int64), and "name" and
# "price" clash with the left's names.
REGIONS = (
    b"region,name,price,area\n0.0,north,1.5,10\n1.0,south,2.5,20\n2.0,east,,30\n2.0,east-2,4.5,31\n5.0,none,9.9,50\n"
)
VERSION_1 = b"id,qty,name\n1,5,old\n2,,older\n3,7,oldest\n"


# Column names and values that would be code if a script pasted them in.
HOSTILE = '"); import os; os.system("touch PWNED") #'
HOSTILE_CSV = (
    'id,"'
    + HOSTILE.replace('"', '""')
    + "\",\"line\nbreak ''' \\\"\n"
    + "".join(f'{i},"{HOSTILE.replace(chr(34), chr(34) * 2) if i % 2 else "x"}",{i % 3}\n' for i in range(1, 9))
).encode()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module: `items` (two versions; the first is VERSION_1), `regions`, `tips`
    (for the docs' example) and `hostile` (column names that are code)."""
    with serving(make_settings(tmp_path_factory.mktemp("recipe"))) as api:
        assert api.upload_ok(VERSION_1, "items.csv") == "items"
        api.replace_ok("items", _items_csv(), "items.csv")
        assert api.upload_ok(REGIONS, "regions.csv") == "regions"
        assert api.upload_ok(DATA / "tips.csv") == "tips"
        assert api.upload_ok(HOSTILE_CSV, "hostile.csv") == "hostile"
        yield api


FRAME = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  recipe { success data error { code message } }
  export(format: PARQUET) { success data error { code message } } } } }"""
AT_FRAME = """query($d: ID!, $v: Int!, $steps: [Step!]!) { dataset(id: $d) { at(version: $v) { pipeline(steps: $steps) {
  recipe { success data error { code message } }
  export(format: PARQUET) { success data error { code message } } } } } }"""
SQL_FRAME = """query($q: String!, $steps: [Step!]!) { datasetSql(query: $q) { pipeline(steps: $steps) {
  recipe { success data error { code message } }
  export(format: PARQUET) { success data error { code message } } } } }"""
SOURCE_EXPORT = """query($d: ID!, $v: Int!) { dataset(id: $d) { at(version: $v) {
  export(format: PARQUET) { success data error { message } } } } }"""
RUN = """mutation($r: JSON!, $n: String!) { runRecipe(recipe: $r, name: $n) {
  success error { code message } dataset { id version versions { origin } } } }"""
SAVE = """mutation($d: ID!, $steps: [Step!]!, $n: String!) { saveFrame(dataset: $d, steps: $steps, name: $n) {
  success error { code message } dataset { id } } }"""
COUNTS = "{ datasetCount jobs { id } }"


def _cond(column: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"column": column, "op": op, **({"value": value} if value is not None else {})}


# Every step kind, and every operator on every kind of column it applies to.
CASES: dict[str, list[dict[str, Any]]] = {
    "compare numbers": [
        {"filter": [_cond("qty", "GT", 1), _cond("price", "LE", 20.5), _cond("id", "NE", 3)]},
        {"filter": [_cond("qty", "GE", 2.5), _cond("price", "LT", 24)]},
    ],
    "compare text, dates, datetimes, booleans": [
        {"filter": [_cond("name", "GE", "pe"), _cond("day", "LT", "2024-10-01")]},
        {"filter": [_cond("at", "GT", "2024-03-05T06:00:00"), _cond("flag", "EQ", True)]},
        {"filter": [_cond("day", "NE", "2024-02-02"), _cond("flag", "NE", False), _cond("name", "EQ", "plum")]},
    ],
    "in and not in": [
        {"filter": [_cond("qty", "IN", [1, 3, 4]), _cond("price", "NOT_IN", [9.25, 2.5, 12])]},
        {"filter": [_cond("id", "NOT_IN", [39.5, 4, 8.0])]},  # an integer column compared as floats
        {"filter": [_cond("name", "IN", ["plum", "pear ", "x"]), _cond("day", "NOT_IN", ["2024-03-03"])]},
    ],
    "between and text matches": [
        {"filter": [_cond("price", "BETWEEN", [5, 20.25]), _cond("day", "BETWEEN", ["2024-02-01", "2024-09-30"])]},
        {"filter": [_cond("name", "CONTAINS", "p"), _cond("stamp", "STARTS_WITH", "1"), _cond("answer", "ENDS_WITH", "s")]},
        {"filter": [_cond("name", "BETWEEN", ["b", "q"]), _cond("at", "BETWEEN", ["2024-03-02", "2024-03-20 12:00"])]},
    ],
    "nulls": [{"filter": [_cond("qty", "IS_NULL")]}, {"select": ["id", "price", "qty"]}],
    "not null": [{"filter": [_cond("price", "NOT_NULL"), _cond("flag", "NOT_NULL")]}],
    "select, sort and slice": [
        {"select": ["name", "qty", "price", "id"]},
        {"sort": [{"column": "qty", "descending": True}, {"column": "name"}, {"column": "price", "descending": False}]},
        {"slice": {"offset": 3, "limit": 25}},
    ],
    "group by every aggregation": [
        {
            "groupBy": {
                "by": ["qty"],
                "aggregations": [
                    {"column": "price", "fn": fn}
                    for fn in ("COUNT", "SUM", "MEAN", "MEDIAN", "MIN", "MAX", "STD", "VAR", "N_UNIQUE", "FIRST")
                ]
                + [{"column": "name", "fn": "LAST", "alias": "last name"}, {"column": "day", "fn": "MIN"}],
            }
        }
    ],
    "group by two keys": [
        {"groupBy": {"by": ["flag", "region"], "aggregations": [{"column": "id", "fn": "COUNT", "alias": "n"}]}}
    ],
    "inner join": [{"join": {"right": "regions", "on": ["region"], "how": "INNER"}}],
    "left join, twice": [
        {"join": {"right": "regions", "on": ["region"], "how": "LEFT"}},
        {"join": {"right": "regions", "on": ["region"], "how": "LEFT"}},
        {"select": ["id", "name", "name_right", "name_right_2", "price_right_2", "area"]},
    ],
    "clean nulls and duplicates": [
        {"clean": [{"dropNulls": {"how": "ANY", "columns": ["qty"]}}, {"dropNulls": {"how": "ALL", "columns": ["price", "flag"]}}]},
        {"clean": [{"fillNulls": {"value": 0, "columns": ["price"]}}, {"fillNulls": {"value": "none"}}]},
        {"clean": [{"fillNulls": {"strategy": "FORWARD", "columns": ["flag"]}}, {"fillNulls": {"strategy": "MEAN"}}]},
        {"clean": [{"dropDuplicates": {"columns": ["qty", "flag"], "keep": "LAST"}}]},
        {"clean": [{"dropDuplicates": {"columns": ["region"], "keep": "NONE"}}, {"dropNulls": {}}]},
    ],
    "clean casts and names": [
        {
            "clean": [
                {"cast": {"columns": ["code"], "to": "INT"}},
                {"cast": {"columns": ["qty", "id"], "to": "FLOAT"}},
                {"cast": {"columns": ["answer"], "to": "BOOLEAN"}},
                {"cast": {"columns": ["at"], "to": "TEXT"}},
                {"cast": {"columns": ["day"], "to": "DATETIME"}},
                {"cast": {"columns": ["flag"], "to": "INT"}},
                {"rename": [{"from": "name", "to": "fruit"}, {"from": "qty", "to": "quantity"}]},
                {"trim": {}},
                {"parseDates": {"columns": ["stamp"], "format": "%d/%m/%Y", "to": "DATE"}},
                {"dropDuplicates": {"keep": "FIRST"}},
            ]
        },
        {"clean": [{"cast": {"columns": ["quantity"], "to": "INT"}}, {"cast": {"columns": ["at"], "to": "DATETIME"}}]},
        {"clean": [{"cast": {"columns": ["flag"], "to": "BOOLEAN"}}, {"cast": {"columns": ["stamp"], "to": "TEXT"}}]},
        {"clean": [{"cast": {"columns": ["stamp"], "to": "DATE"}}, {"fillNulls": {"value": "2024-06-30T12:00:00", "columns": ["day"]}}]},
        {"clean": [{"parseDates": {"columns": ["zoned"], "format": "%Y-%m-%d %H:%M:%S%z", "to": "DATETIME"}}]},
        {"clean": [{"cast": {"columns": ["at"], "to": "DATE"}}, {"cast": {"columns": ["price"], "to": "TEXT"}}]},
        {"clean": [{"cast": {"columns": ["price"], "to": "FLOAT"}}, {"trim": {"columns": ["fruit"]}}]},
    ],
    "a chain": [
        {"filter": [_cond("price", "NOT_NULL")]},
        {"clean": [{"fillNulls": {"value": 1, "columns": ["qty"]}}, {"parseDates": {"columns": ["stamp"], "format": "%d/%m/%Y", "to": "DATETIME"}}]},
        {"join": {"right": "regions", "on": ["region"], "how": "LEFT"}},
        {"groupBy": {"by": ["name_right"], "aggregations": [{"column": "price", "fn": "SUM"}, {"column": "stamp", "fn": "MAX"}]}},
        {"sort": [{"column": "price_sum", "descending": True}]},
        {"slice": {"offset": 0, "limit": 3}},
    ],
}  # fmt: skip


def _download(api: Api, export: dict[str, Any], into: Path) -> Path:
    assert export["success"], export["error"]
    response = api.client.get(export["data"]["url"])
    assert response.status_code == 200
    into.write_bytes(response.content)
    return into


@pytest.fixture(scope="module")
def exports(app: Api, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Parquet export of a dataset version, downloaded once: (dataset, version) -> path."""
    folder = tmp_path_factory.mktemp("exports")
    made: dict[tuple[str, int], Path] = {}

    def get(dataset: str, version: int) -> Path:
        if (dataset, version) not in made:
            answer = app.data(SOURCE_EXPORT, {"d": dataset, "v": version})["dataset"]["at"]["export"]
            made[(dataset, version)] = _download(app, answer, folder / f"{dataset}-v{version}.parquet")
        return made[(dataset, version)]

    return get


@pytest.fixture
def scripts(tmp_path: Path) -> Iterator[Any]:
    """Collects (script, argv, expected) and runs every script in one child process at the end of
    the test, then compares each output with the server's own frame."""
    queued: list[tuple[Path, list[str], Path, str]] = []

    def add(recipe: dict[str, Any], sources: dict[tuple[str, int], Path], expected: Path, label: str) -> None:
        n = len(queued)
        script = tmp_path / f"recipe{n}.py"
        script.write_text(recipe["polars"])
        out = tmp_path / f"out{n}.parquet"
        argv = []
        ids = [source["dataset"] for source in recipe["sources"]]
        for source in recipe["sources"]:  # a dataset read at two versions: --<id>-v<N> for each
            dataset, version = source["dataset"], source["version"]
            option = f"--{dataset}" if ids.count(dataset) == 1 else f"--{dataset}-v{version}"
            argv += [option, str(sources[(dataset, version)])]
        queued.append((script, [*argv, "--out", str(out)], expected, label))

    yield add
    if not queued:
        return
    plan = json.dumps([[str(s), argv] for s, argv, _, _ in queued])
    done = subprocess.run([sys.executable, "-c", RUNNER, plan], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for script, argv, expected, label in queued:
        out = Path(argv[-1])
        try:
            assert_frame_equal(pl.read_parquet(out), pl.read_parquet(expected), check_dtypes=True, check_row_order=True)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}\n{script.read_text()}") from None


def _frame(api: Api, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    node: Any = api.data(query, variables)
    while "recipe" not in node:
        (node,) = node.values()
    recipe = node["recipe"]
    assert recipe["success"], recipe["error"]
    assert node["export"]["success"], node["export"]["error"]
    result: dict[str, Any] = node
    return result


def _check(
    app: Api, exports: Any, scripts: Any, tmp_path: Path, label: str, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    """Queue the round trip of one frame: its script on its sources' exports against its own export."""
    node = _frame(app, query, variables)
    recipe = node["recipe"]["data"]
    sources = {(s["dataset"], s["version"]): exports(s["dataset"], s["version"]) for s in recipe["sources"]}
    expected = _download(app, node["export"], tmp_path / f"expected-{len(list(tmp_path.iterdir()))}.parquet")
    scripts(recipe, sources, expected, label)
    result: dict[str, Any] = recipe
    return result


def test_every_step_kind_round_trips_through_its_script(app: Api, exports: Any, scripts: Any, tmp_path: Path) -> None:
    for label, steps in CASES.items():
        recipe = _check(app, exports, scripts, tmp_path, label, FRAME, {"d": "items", "steps": steps})
        assert recipe["steps"] == _normalised(steps), label
        assert recipe["sql"] is None and "query" not in recipe
        read = [s["dataset"] for s in recipe["sources"]]
        assert read == (["items", "regions"] if any("join" in s for s in steps) else ["items"]), label
        assert {s["version"] for s in recipe["sources"]} <= {1, 2}


def _normalised(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps as the recipe gives them back: defaults filled in."""
    data = json.loads(json.dumps(steps))
    for step in data:
        if "sort" in step:
            step["sort"] = [{"descending": False, **k} for k in step["sort"]]
        if "slice" in step:
            step["slice"] = {"offset": 0, **step["slice"]}
        if "clean" in step:
            for part in step["clean"]:
                ((kind, body),) = part.items()
                defaults = {
                    "dropNulls": {"how": "ANY"},
                    "fillNulls": {"strategy": "VALUE"},
                    "dropDuplicates": {"keep": "FIRST"},
                }
                if kind in defaults:
                    part[kind] = {**defaults[kind], **body}
    return data


def test_a_frame_at_an_old_version_and_sql_over_datasets_round_trip(
    app: Api, exports: Any, scripts: Any, tmp_path: Path
) -> None:
    steps = [{"filter": [_cond("qty", "NOT_NULL")]}, {"sort": [{"column": "qty", "descending": True}]}]
    old = _check(app, exports, scripts, tmp_path, "version 1", AT_FRAME, {"d": "items", "v": 1, "steps": steps})
    assert old["sources"] == [{"dataset": "items", "version": 1}]
    joined = [{"join": {"right": "items", "on": ["id"], "how": "LEFT"}}]  # version 1 joined with version 2
    both = _check(app, exports, scripts, tmp_path, "two versions", AT_FRAME, {"d": "items", "v": 1, "steps": joined})
    assert both["sources"] == [{"dataset": "items", "version": 1}, {"dataset": "items", "version": 2}]
    assert "'--items-v1'" in both["polars"] and "'--items-v2'" in both["polars"]
    query = (
        "SELECT i.id, i.name, r.area, i.price * 2 AS double_price FROM items i"
        ' JOIN "regions" r ON CAST(i.region AS DOUBLE) = r.region'
        " WHERE i.qty > 1"
    )
    sql_steps = [{"filter": [_cond("area", "GE", 20)]}, {"sort": [{"column": "id"}, {"column": "area"}]}]
    recipe = _check(app, exports, scripts, tmp_path, "sql", SQL_FRAME, {"q": query, "steps": sql_steps})
    assert recipe["sources"] == [{"dataset": "items", "version": 2}, {"dataset": "regions", "version": 1}]
    assert "SQLContext" in recipe["polars"] and recipe["query"].startswith("SELECT")


PIPELINE_ROWS = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  rows(limit: 1000) { success data error { message } } } } }"""


def test_recipe_steps_fed_back_to_pipeline_give_the_same_rows(app: Api) -> None:
    for label, steps in CASES.items():
        recipe = _frame(app, FRAME, {"d": "items", "steps": steps})["recipe"]["data"]
        again = app.data(PIPELINE_ROWS, {"d": "items", "steps": recipe["steps"]})["dataset"]["pipeline"]["rows"]
        first = app.data(PIPELINE_ROWS, {"d": "items", "steps": steps})["dataset"]["pipeline"]["rows"]
        assert again["success"] and first["success"], (label, again["error"], first["error"])
        assert again["data"] == first["data"], label
        assert recipe["steps"] == _normalised(steps), label


def _parquet(api: Api, dataset: str) -> pl.DataFrame:
    query = '{ dataset(id: "%s") { export(format: PARQUET) { success data error { message } } } }' % dataset
    answer = api.data(query)["dataset"]["export"]
    assert answer["success"], answer["error"]
    return pl.read_parquet(io.BytesIO(api.client.get(answer["data"]["url"]).content))


def test_run_recipe_makes_the_dataset_save_frame_makes(app: Api) -> None:
    steps = CASES["a chain"]
    recipe = _frame(app, FRAME, {"d": "items", "steps": steps})["recipe"]["data"]
    saved = app.data(SAVE, {"d": "items", "steps": steps, "n": "chain saved"})["saveFrame"]
    run = app.data(RUN, {"r": recipe, "n": "chain run"})["runRecipe"]  # the whole answer, polars and all
    assert saved["success"] and run["success"], (saved["error"], run["error"])
    assert run["dataset"]["versions"] == [{"origin": "SAVE"}] and run["dataset"]["version"] == 1
    assert_frame_equal(_parquet(app, run["dataset"]["id"]), _parquet(app, saved["dataset"]["id"]))
    # A recipe of an old version runs over that version; with the version left out, over the current one.
    old = _frame(app, AT_FRAME, {"d": "items", "v": 1, "steps": [{"select": ["id", "name"]}]})["recipe"]["data"]
    at_one = app.data(RUN, {"r": old, "n": "from v1"})["runRecipe"]
    current = app.data(RUN, {"r": {**old, "sources": [{"dataset": "items"}]}, "n": "from now"})["runRecipe"]
    assert at_one["success"] and current["success"], (at_one["error"], current["error"])
    assert _parquet(app, at_one["dataset"]["id"])["name"].to_list() == ["old", "older", "oldest"]
    assert _parquet(app, current["dataset"]["id"]).height == 40


def test_run_recipe_over_sql_reads_the_versions_it_names(app: Api) -> None:
    query = "SELECT id, name FROM items WHERE id < 3"
    recipe = _frame(app, SQL_FRAME, {"q": query, "steps": [{"sort": [{"column": "id", "descending": True}]}]})
    data = recipe["recipe"]["data"]
    run = app.data(RUN, {"r": {**data, "sources": [{"dataset": "items", "version": 1}]}, "n": "sql v1"})["runRecipe"]
    assert run["success"], run["error"]
    assert _parquet(app, run["dataset"]["id"]).rows() == [(2, "older"), (1, "old")]


def _runs(app: Api, recipe: Any, name: str = "never made") -> dict[str, Any]:
    before = app.data(COUNTS)
    answer: dict[str, Any] = app.data(RUN, {"r": recipe, "n": name})["runRecipe"]
    assert not answer["success"] and answer["dataset"] is None
    assert app.data(COUNTS) == before  # no dataset, not even a failed job
    return answer


ITEMS = [{"dataset": "items", "version": 2}]
BAD_RECIPES = [
    ({"steps": [{"filter": [{"column": "qty", "op": "ALMOST"}]}], "sources": ITEMS}, "BAD_INPUT", "recipe.steps[0].filter[0].op"),
    ({"steps": [{"select": ["id"]}, {"slice": {"limit": 2, "step": 1}}], "sources": ITEMS}, "BAD_INPUT", "recipe.steps[1].slice"),
    ({"steps": [{"slice": {"offset": 1}}], "sources": ITEMS}, "BAD_INPUT", "recipe.steps[0].slice"),
    ({"steps": [{"select": ["id"], "sort": [{"column": "id"}]}], "sources": ITEMS}, "BAD_INPUT", "recipe.steps[0] must set exactly one"),
    ({"steps": [{"filter": [_cond("nope", "EQ", 1)]}], "sources": ITEMS}, "BAD_INPUT", '"nope"'),
    ({"steps": [{"clean": [{"cast": {"columns": ["qty"], "to": "DATE"}}]}], "sources": ITEMS}, "BAD_INPUT", "cannot become DATE"),
    ({"steps": [{"join": {"right": "nowhere", "on": ["id"]}}], "sources": ITEMS}, "NOT_FOUND", '"nowhere"'),
    ({"steps": [], "sources": [{"dataset": "missing-one", "version": 1}]}, "NOT_FOUND", '"missing-one"'),
    ({"steps": [], "sources": [{"dataset": "items", "version": 7}]}, "BAD_INPUT", "no version 7"),
    ({"steps": [], "sources": [{"dataset": "items", "version": 10**30}]}, "BAD_INPUT", "recipe.sources[0].version"),
    ({"steps": [], "sources": [{"dataset": "items", "version": -1}]}, "BAD_INPUT", "no version -1"),
    ({"steps": [], "sources": []}, "BAD_INPUT", "at least one"),
    ({"steps": [], "sources": ITEMS, "extra": 1}, "BAD_INPUT", '"extra"'),
    ({"steps": {"select": ["id"]}, "sources": ITEMS}, "BAD_INPUT", "recipe.steps must be a list"),
    ({"steps": [], "sources": [{"dataset": "items", "version": "2"}]}, "BAD_INPUT", "recipe.sources[0].version"),
    ({"steps": [{"select": ["id"]}] * 201, "sources": ITEMS}, "BAD_INPUT", "at most 200 steps"),
    ([], "BAD_INPUT", "recipe must be an object"),
]  # fmt: skip


@pytest.mark.parametrize(("recipe", "code", "named"), BAD_RECIPES)
def test_a_bad_recipe_is_a_problem_naming_it_and_creates_nothing(app: Api, recipe: Any, code: str, named: str) -> None:
    answer = _runs(app, recipe)
    assert answer["error"]["code"] == code and named in answer["error"]["message"], answer["error"]
    assert "Traceback" not in answer["error"]["message"] and "/" not in answer["error"]["message"].replace("/T", "")


def test_a_value_that_does_not_convert_fails_the_job_and_makes_no_dataset(app: Api) -> None:
    """Known only once the rows are read: the job runs, and fails as saveFrame's does."""
    count = app.data(COUNTS)["datasetCount"]
    recipe = {"steps": [{"clean": [{"cast": {"columns": ["name"], "to": "DATE"}}]}], "sources": ITEMS}
    answer = app.data(RUN, {"r": recipe, "n": "never made"})["runRecipe"]
    assert answer["error"]["code"] == "BAD_INPUT" and '"name" to DATE failed' in answer["error"]["message"]
    assert answer["dataset"] is None and app.data(COUNTS)["datasetCount"] == count


def test_run_recipe_needs_a_name(app: Api) -> None:
    answer = _runs(app, {"steps": [], "sources": ITEMS}, name=" ")
    assert answer["error"]["code"] == "BAD_INPUT" and "name" in answer["error"]["message"]


def test_the_recipe_of_a_bad_or_refused_frame_is_the_usual_problem(app: Api) -> None:
    query = """query($steps: [Step!]!) { dataset(id: "items") { pipeline(steps: $steps) {
      recipe { success data error { code message } } } } }"""
    wrong = app.data(query, {"steps": [{"sort": [{"column": "ghost"}]}]})["dataset"]["pipeline"]["recipe"]
    assert wrong["error"]["code"] == "BAD_INPUT" and '"ghost"' in wrong["error"]["message"] and wrong["data"] is None
    inline = ", ".join(['{select: ["id"]}'] * 201)  # in the query: variables are counted before it runs
    many = '{ dataset(id: "items") { pipeline(steps: [%s]) { recipe { error { code message } } } } }' % inline
    refused = app.data(many)["dataset"]["pipeline"]["recipe"]["error"]
    assert refused["code"] == "BAD_INPUT" and "at most 200 steps" in refused["message"]


@pytest.mark.slow  # two app starts
def test_a_pruned_version_is_a_problem(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, keep_versions=1)
    with serving(settings) as api:
        api.upload_ok(VERSION_1, "items.csv")
        api.replace_ok("items", _items_csv(), "items.csv")
    for path in [settings.data_dir / "datasets", *(settings.data_dir / "datasets").rglob("*")]:
        os.utime(path, (time.time() - 3600, time.time() - 3600))  # past the grace queries still reading get
    with serving(settings) as api:  # the start-up sweep prunes version 1
        answer = _runs(api, {"steps": [], "sources": [{"dataset": "items", "version": 1}]})
        assert answer["error"]["code"] == "BAD_INPUT" and "pruned" in answer["error"]["message"]


def test_hostile_column_names_and_values_stay_string_literals(
    app: Api, exports: Any, scripts: Any, tmp_path: Path
) -> None:
    columns = [c["name"] for c in app.data('{ dataset(id: "hostile") { columns { name } } }')["dataset"]["columns"]]
    assert HOSTILE in columns, columns
    odd = next(c for c in columns if c.startswith("line"))
    steps = [
        {"filter": [_cond(HOSTILE, "EQ", HOSTILE), _cond(odd, "IN", [1, 2])]},
        {"clean": [{"rename": [{"from": HOSTILE, "to": HOSTILE + "'''"}]}]},
        {"groupBy": {"by": [odd], "aggregations": [{"column": "id", "fn": "SUM", "alias": '"""' + HOSTILE}]}},
    ]
    recipe = _check(app, exports, scripts, tmp_path, "hostile", FRAME, {"d": "hostile", "steps": steps})
    tree = ast.parse(recipe["polars"])
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"argparse", "polars"}
    assert not any(isinstance(node, ast.Attribute) and node.attr == "system" for node in ast.walk(tree))
    assert not (tmp_path / "PWNED").exists() and not (ROOT / "PWNED").exists()


def test_the_docs_example_runs(app: Api, exports: Any, scripts: Any, tmp_path: Path) -> None:
    section = (ROOT / "docs/datasets.md").read_text("utf-8").split("### Recipes\n", 1)[1].split("\n## ", 1)[0]
    query, mutation = re.findall(r"```graphql\n(.*?)```", section, flags=re.DOTALL)
    node = app.data(query)["dataset"]["pipeline"]
    assert node["recipe"]["success"], node["recipe"]["error"]
    recipe = node["recipe"]["data"]
    expected = _parquet_of(app, node["export"], tmp_path / "docs.parquet")
    scripts(
        recipe,
        {(s["dataset"], s["version"]): exports(s["dataset"], s["version"]) for s in recipe["sources"]},
        expected,
        "docs",
    )
    made = app.data(mutation)["runRecipe"]
    assert made["success"], made["error"]


def _parquet_of(api: Api, export: dict[str, Any], into: Path) -> Path:
    return _download(api, export, into)


@pytest.mark.slow  # a database source: an app start, a worker's connections
def test_a_linked_tables_recipe_gives_its_pushdown_sql(tmp_path: Path, exports: Any) -> None:
    require_service(5432, "PostgreSQL")
    schema = f"dg_recipe_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        conn.exec_driver_sql(f"CREATE TABLE {schema}.sales (id BIGINT, city TEXT, amount DOUBLE PRECISION)")
        conn.exec_driver_sql(
            f"INSERT INTO {schema}.sales VALUES (1, 'Oslo', 10.5), (2, 'Rome', 3.0), (3, 'Oslo', NULL), (4, 'Lima', 8.0)"
        )
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        f"sources:\n  live:\n    kind: postgresql\n    url: postgresql://postgres@127.0.0.1:5432/test\n    schema: {schema}\n"
    )
    try:
        with serving(make_settings(tmp_path, sources=str(sources))) as api:
            link = 'mutation { importTable(source: "live", table: "sales", mode: LINK) { success error { message } dataset { id } } }'
            made = api.data(link)["importTable"]
            assert made["success"], made["error"]
            query = """query($d: ID!) { dataset(id: $d) { filter(where: [{column: "city", op: EQ, value: "Oslo"}]) {
              sort(by: [{column: "id", descending: true}]) {
                recipe { success data error { message } } explain { data } export(format: PARQUET) { success data error { message } } } } } }"""
            node = api.data(query, {"d": made["dataset"]["id"]})["dataset"]["filter"]["sort"]
            recipe = node["recipe"]["data"]
            assert node["recipe"]["success"] and recipe["sql"] == node["explain"]["data"]["sql"]
            assert "WHERE" in recipe["sql"].upper() and "Oslo" not in recipe["sql"]  # a bound parameter
            whole = '{ dataset(id: "%s") { export(format: PARQUET) { success data error { message } } } }'
            source = _download(
                api, api.data(whole % made["dataset"]["id"])["dataset"]["export"], tmp_path / "s.parquet"
            )
            expected = _download(api, node["export"], tmp_path / "e.parquet")
            script = tmp_path / "linked.py"
            script.write_text(recipe["polars"])
            out = tmp_path / "out.parquet"
            done = subprocess.run(
                [sys.executable, str(script), f"--{made['dataset']['id']}", str(source), "--out", str(out)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert_frame_equal(pl.read_parquet(out), pl.read_parquet(expected))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def test_a_datasets_own_recipe_reads_it_whole_and_is_cached_under_its_version(app: Api) -> None:
    query = '{ dataset(id: "regions") { recipe { success data meta { cached } } } }'
    first, second = (app.data(query)["dataset"]["recipe"] for _ in range(2))
    assert first["success"] and first["data"] == second["data"]
    assert first["data"]["steps"] == [] and first["data"]["sources"] == [{"dataset": "regions", "version": 1}]
    assert "frame = pl.scan_parquet(args.regions)" in first["data"]["polars"]
    assert (first["meta"]["cached"], second["meta"]["cached"]) == (False, True)
