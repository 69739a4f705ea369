"""Recipes under attack (review of issue 20, item 3): what one hostile or careless `runRecipe` or
`recipe` request can do. The recipe's JSON is held to the limits `pipeline(steps:)` is held to;
a script runs whatever its sources are called (a Python keyword, its own `--out` or `--help`, a
name another source's option takes); a cached recipe never names a replaced version."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from support import Api, budget, make_settings, require_service, serving
from tcpproxy import TcpProxy

RUN = """mutation($r: JSON!, $n: String!) { runRecipe(recipe: $r, name: $n) {
  success error { code message } dataset { id } } }"""
PIPELINE = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  recipe { success data error { code message } } } } }"""
FRAME = """query($d: ID!, $v: Int!, $steps: [Step!]!) { dataset(id: $d) { at(version: $v) { pipeline(steps: $steps) {
  recipe { success data error { code message } }
  export(format: PARQUET) { success data error { code message } } } } } }"""
SOURCE_EXPORT = """query($d: ID!, $v: Int!) { dataset(id: $d) { at(version: $v) {
  export(format: PARQUET) { success data error { message } } } } }"""
COUNTS = "{ datasetCount jobs { id } }"

ROWS = b"id,name,qty\n1,a,10\n2,b,20\n3,c,30\n"
ROWS_2 = b"id,name,qty\n1,a2,11\n2,b2,21\n4,d2,41\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Datasets whose ids are Python keywords (`class`, `import`), the script's own options (`out`,
    `help`), and `items` (two versions) beside `items-v1`, the option of items' version 1 in a join."""
    with serving(make_settings(tmp_path_factory.mktemp("attack"))) as api:
        for name in ("class", "import", "out", "help", "items"):
            assert api.upload_ok(ROWS, f"{name}.csv") == name
        api.replace_ok("items", ROWS_2, "items.csv")
        assert api.upload_ok(ROWS_2, "items v1.csv") == "items-v1"
        yield api


def _runs(api: Api, recipe: Any) -> dict[str, Any]:
    """runRecipe, refused: nothing made, not even a failed job."""
    before = api.data(COUNTS)
    answer: dict[str, Any] = api.data(RUN, {"r": recipe, "n": "never made"})["runRecipe"]
    assert not answer["success"] and answer["dataset"] is None, answer
    assert api.data(COUNTS) == before
    return answer


# --- the recipe's JSON is held to the limits of pipeline(steps:) ----------------------------------

ITEMS = [{"dataset": "items"}]
TOO_BIG = {
    "2,000 conditions in one filter": {
        "steps": [{"filter": [{"column": "id", "op": "GT", "value": i} for i in range(2_000)]}],
        "sources": ITEMS,
    },
    "6,000 sources": {"steps": [], "sources": ITEMS * 6_000},
    "a select of 6,000 names": {"steps": [{"select": [f"c{i}" for i in range(6_000)]}], "sources": ITEMS},
}


@pytest.mark.parametrize("recipe", TOO_BIG.values(), ids=TOO_BIG.keys())
def test_a_recipe_holding_more_values_than_max_input_values_is_refused_before_it_is_read(
    app: Api, recipe: dict[str, Any]
) -> None:
    """pipeline(steps:) refuses these steps before coercing them (setting max_input_values: 5,000);
    inside runRecipe's JSON they were coerced on the event loop, and the first two ran."""
    answer = _runs(app, recipe)
    assert answer["error"]["code"] == "BAD_INPUT", answer["error"]
    assert "max_input_values" in answer["error"]["message"], answer["error"]
    if recipe["steps"]:  # the same steps as variables of pipeline(steps:): refused by the same setting
        body = app.query(PIPELINE, {"d": "items", "steps": recipe["steps"]})
        assert "max_input_values" in body["errors"][0]["message"], body


def test_a_recipe_of_too_many_steps_says_so_before_counting_its_values(app: Api) -> None:
    recipe = {"steps": [{"select": ["id", "name"]}] * 3_000, "sources": ITEMS}
    answer = _runs(app, recipe)
    assert answer["error"]["code"] == "BAD_INPUT" and "at most 200 steps" in answer["error"]["message"]
    body = app.query(PIPELINE, {"d": "items", "steps": recipe["steps"]})
    assert "at most 200 steps" in body["errors"][0]["message"], body


def test_a_recipe_within_the_limits_still_runs(app: Api) -> None:
    """Counted as pipeline(steps:) counts: a filter's value is one JSON value, however long its list."""
    recipe = {
        "steps": [{"filter": [{"column": "id", "op": "IN", "value": list(range(6_000))}]}],
        "sources": [{"dataset": "items", "version": 1}],
    }
    made = app.data(RUN, {"r": recipe, "n": "a thousand ids"})["runRecipe"]
    assert made["success"], made["error"]


# --- the script runs whatever its sources are called ----------------------------------------------


def _run_and_compare(app: Api, node: dict[str, Any], script: Path, tmp_path: Path) -> None:
    """Run the recipe's script (written to `script`) on the Parquet exports of its sources, each given
    by the option the script names for it, and compare its output with the frame's own export."""
    recipe = node["recipe"]["data"]
    options = _options(recipe["polars"])
    argv = []
    for source in recipe["sources"]:
        key = (source["dataset"], source["version"])
        answer = app.data(SOURCE_EXPORT, {"d": key[0], "v": key[1]})["dataset"]["at"]["export"]
        argv += [options[key], str(_download(app, answer, tmp_path / f"{key[0]}-{key[1]}.parquet"))]
    out = tmp_path / "out.parquet"
    done = subprocess.run(
        [sys.executable, str(script), *argv, "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = _download(app, node["export"], tmp_path / "expected.parquet")
    assert_frame_equal(pl.read_parquet(out), pl.read_parquet(expected), check_row_order=True)


def _options(script: str) -> dict[tuple[str, int], str]:
    """(dataset, version) -> its command-line option, read from the script's parser (its help text)."""
    found = {}
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            option = ast.literal_eval(node.args[0])
            helps = [ast.literal_eval(k.value) for k in node.keywords if k.arg == "help"]
            if helps and helps[0].startswith("dataset "):
                dataset, version = helps[0].removeprefix("dataset ").split(", version ")
                found[(dataset, int(version))] = option
    return found


def _download(api: Api, export: dict[str, Any], into: Path) -> Path:
    assert export["success"], export["error"]
    into.write_bytes(api.client.get(export["data"]["url"]).content)
    return into


JOINS = {
    "keywords": ("class", 1, [{"join": {"right": "import", "on": ["id"], "how": "LEFT"}}]),
    "the script's own options": (
        "out",
        1,
        [{"join": {"right": "help", "on": ["id"], "how": "LEFT"}}, {"select": ["id", "name", "name_right"]}],
    ),
    "a dataset named as another's version": (
        "items",
        1,
        [
            {"join": {"right": "items", "on": ["id"], "how": "LEFT"}},
            {"join": {"right": "items-v1", "on": ["id"], "how": "LEFT"}},
        ],
    ),
    "keyword alone": ("class", 1, []),
    "out alone": ("out", 1, [{"sort": [{"column": "qty", "descending": True}]}]),
}


@pytest.mark.parametrize(("dataset", "version", "steps"), JOINS.values(), ids=JOINS.keys())
def test_a_script_runs_whatever_its_sources_are_called(
    app: Api, tmp_path: Path, dataset: str, version: int, steps: list[dict[str, Any]]
) -> None:
    node = app.data(FRAME, {"d": dataset, "v": version, "steps": steps})["dataset"]["at"]["pipeline"]
    assert node["recipe"]["success"], node["recipe"]["error"]
    recipe = node["recipe"]["data"]
    script = tmp_path / "recipe.py"
    script.write_text(recipe["polars"])
    compile(recipe["polars"], str(script), "exec")  # a keyword as `args.class` was a SyntaxError
    options = _options(recipe["polars"])
    assert len(set(options.values())) == len(options) == len(recipe["sources"]), options
    assert "--out" not in options.values() and "--help" not in options.values()
    _run_and_compare(app, node, script, tmp_path)


def test_a_dataset_read_at_two_versions_keeps_the_documented_options(app: Api) -> None:
    steps = [{"join": {"right": "items", "on": ["id"], "how": "LEFT"}}]
    node = app.data(FRAME, {"d": "items", "v": 1, "steps": steps})["dataset"]["at"]["pipeline"]
    options = _options(node["recipe"]["data"]["polars"])
    assert options == {("items", 1): "--items-v1", ("items", 2): "--items-v2"}


# --- caching ---------------------------------------------------------------------------------------


@pytest.mark.slow  # an app of its own
def test_a_cached_recipe_never_names_a_replaced_version(tmp_path: Path) -> None:
    query = """query($steps: [Step!]!) { dataset(id: "t") { pipeline(steps: $steps) {
      recipe { success data meta { cached } } } } }"""
    with serving(make_settings(tmp_path)) as api:
        api.upload_ok(ROWS, "t.csv")
        first = api.data(query, {"steps": [{"select": ["id"]}]})["dataset"]["pipeline"]["recipe"]
        other = api.data(query, {"steps": [{"select": ["name"]}]})["dataset"]["pipeline"]["recipe"]
        assert first["data"]["steps"] != other["data"]["steps"] and not other["meta"]["cached"]
        assert json.dumps(first["data"]["sources"]) == '[{"dataset": "t", "version": 1}]'
        api.replace_ok("t", ROWS_2, "t.csv")
        again = api.data(query, {"steps": [{"select": ["id"]}]})["dataset"]["pipeline"]["recipe"]
        assert again["data"]["sources"] == [{"dataset": "t", "version": 2}] and not again["meta"]["cached"]


# --- a decimal column (SQL over datasets makes one) -----------------------------------------------

SQL_FRAME = """query($q: String!, $steps: [Step!]!) { datasetSql(query: $q) { pipeline(steps: $steps) {
  recipe { success data error { code message } }
  export(format: PARQUET) { success data error { code message } } } } }"""
DECIMALS = "SELECT id, CAST(qty AS DECIMAL(10, 2)) AS amount, name FROM items"
DECIMAL_STEPS = {
    "fill with a number": [{"clean": [{"fillNulls": {"value": 7}}]}],
    "fill one column": [{"clean": [{"fillNulls": {"value": 2.5, "columns": ["amount"]}}]}],
    "compare and list": [{"filter": [{"column": "amount", "op": "IN", "value": [20, 41, 7.5]}]}],
    "between": [{"filter": [{"column": "amount", "op": "BETWEEN", "value": [15, 40.5]}]}],
    "cast and group": [
        {"clean": [{"cast": {"columns": ["amount"], "to": "FLOAT"}}]},
        {"groupBy": {"by": ["name"], "aggregations": [{"column": "amount", "fn": "SUM"}]}},
    ],
}


@pytest.mark.parametrize("steps", DECIMAL_STEPS.values(), ids=DECIMAL_STEPS.keys())
def test_a_decimal_columns_recipe_is_written_and_its_script_gives_the_frame(
    app: Api, tmp_path: Path, steps: list[dict[str, Any]]
) -> None:
    """A fill of a decimal column answered INTERNAL: its literal (a Decimal) had no Python source."""
    query = DECIMALS.replace("qty", "CASE WHEN qty > 30 THEN NULL ELSE qty END")
    node = app.data(SQL_FRAME, {"q": query, "steps": steps})["datasetSql"]["pipeline"]
    assert node["recipe"]["success"], node["recipe"]["error"]
    recipe = node["recipe"]["data"]
    script = tmp_path / "recipe.py"
    script.write_text(recipe["polars"])
    _run_and_compare(app, node, script, tmp_path)
    made = app.data(RUN, {"r": recipe, "n": "decimal"})["runRecipe"]
    assert made["success"], made["error"]


# --- a linked table: no DSN, password or driver text, up or down ----------------------------------

SECRET = "s3cret-Pw"
LINKED = """query($d: ID!) { dataset(id: $d) { filter(where: [{column: "city", op: EQ, value: "Oslo"}]) {
  join(right: "cities", on: ["city"]) { recipe { success data error { code message } } } } } }"""


def _no_secrets(text: str, port: int) -> None:
    for leak in (SECRET, str(port), "postgresql://", "psycopg", "Traceback", "sqlalchemy", "/tmp/", 'File "'):
        assert leak.lower() not in text.lower(), (leak, text[:2000])


@pytest.mark.slow  # an app start, a database, a proxy cut
def test_a_linked_tables_recipe_tells_no_dsn_password_or_driver_text_up_or_down(tmp_path: Path) -> None:
    require_service(5432, "PostgreSQL")
    schema = f"dg_recipe_attack_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        conn.exec_driver_sql(f"CREATE TABLE {schema}.sales (id BIGINT, city TEXT, amount DOUBLE PRECISION)")
        conn.exec_driver_sql(f"INSERT INTO {schema}.sales VALUES (1, 'Oslo', 10.5), (2, 'Rome', 3.0)")
    proxy = TcpProxy(5432)
    proxy.start()
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{proxy.port}/test"  # trust: any password is taken
    (tmp_path / "sources.yaml").write_text(
        f"sources:\n  live:\n    kind: postgresql\n    url: {url}\n    schema: {schema}\n"
    )
    try:
        with serving(make_settings(tmp_path, sources=str(tmp_path / "sources.yaml"))) as api:
            link = 'mutation { importTable(source: "live", table: "sales", mode: LINK) { success error { message } dataset { id } } }'
            made = api.data(link)["importTable"]
            assert made["success"], made["error"]
            linked = made["dataset"]["id"]
            assert api.upload_ok(b"city,country\nOslo,NO\nRome,IT\n", "cities.csv") == "cities"
            up = api.query(LINKED, {"d": linked})
            recipe = up["data"]["dataset"]["filter"]["join"]["recipe"]
            assert recipe["success"] and "WHERE" in recipe["data"]["sql"].upper(), recipe
            _no_secrets(json.dumps(up), proxy.port)
            run_up = api.query(RUN, {"r": recipe["data"], "n": "from a link"})
            assert run_up["data"]["runRecipe"]["success"], run_up
            proxy.cut()
            down = api.query(LINKED, {"d": linked})
            assert down["data"]["dataset"]["filter"]["join"]["recipe"]["success"] is False, down
            _no_secrets(json.dumps(down), proxy.port)
            before = api.data(COUNTS)
            run_down = api.query(RUN, {"r": recipe["data"], "n": "never made"})
            assert run_down["data"]["runRecipe"]["success"] is False, run_down
            _no_secrets(json.dumps(run_down), proxy.port)
            assert api.data(COUNTS) == before
    finally:
        proxy.cut()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


# --- a source that goes while the recipe runs -------------------------------------------------------


@pytest.mark.slow  # an app of its own
def test_a_source_whose_file_went_while_the_recipe_ran_is_not_found_and_nothing_is_made(tmp_path: Path) -> None:
    """Another request (or server process) deleting the dataset, or pruning the version, removes its
    file: the worker then failed with a missing file, answered INTERNAL (an unexpected error)."""
    with serving(make_settings(tmp_path)) as api:
        assert api.upload_ok(ROWS, "vanishing.csv") == "vanishing"
        recipe = {"steps": [{"select": ["id"]}], "sources": [{"dataset": "vanishing", "version": 1}]}
        for part in (api.settings.data_dir / "datasets" / "vanishing").iterdir():
            part.unlink()  # the row still names version 1: what a delete or prune in flight leaves
        answer = _runs(api, recipe)
        assert answer["error"]["code"] == "NOT_FOUND", answer["error"]
        assert 'version 1 of the dataset "vanishing" was removed' in answer["error"]["message"]


JOINED = """query($steps: [Step!]!) { dataset(id: "left") { pipeline(steps: $steps) {
  recipe { success data meta { cached } } } } }"""
OVER_SQL = """query($q: String!) { datasetSql(query: $q) { recipe { success data meta { cached } } } }"""


@pytest.mark.slow  # an app of its own
def test_a_cached_recipe_never_names_a_replaced_version_of_a_joined_or_queried_dataset(tmp_path: Path) -> None:
    """The whole answer is kept too (server/answers.py): it must go when any dataset the recipe
    names changes, not only the one the frame starts from."""
    steps = [{"join": {"right": "right", "on": ["id"], "how": "LEFT"}}]
    query = "SELECT l.id, r.name FROM left l JOIN right r ON l.id = r.id"
    with serving(make_settings(tmp_path)) as api:
        api.upload_ok(ROWS, "left.csv")
        api.upload_ok(ROWS, "right.csv")
        for _ in range(2):  # the second is an answer served again
            joined = api.data(JOINED, {"steps": steps})["dataset"]["pipeline"]["recipe"]
            over_sql = api.data(OVER_SQL, {"q": query})["datasetSql"]["recipe"]
        assert joined["meta"]["cached"] and over_sql["meta"]["cached"]
        api.replace_ok("right", ROWS_2, "right.csv")
        joined = api.data(JOINED, {"steps": steps})["dataset"]["pipeline"]["recipe"]
        assert joined["data"]["sources"] == [{"dataset": "left", "version": 1}, {"dataset": "right", "version": 2}]
        over_sql = api.data(OVER_SQL, {"q": query})["datasetSql"]["recipe"]
        assert over_sql["data"]["sources"] == [{"dataset": "left", "version": 1}, {"dataset": "right", "version": 2}]


# --- random recipes: a problem or a dataset, never an unexpected error ----------------------------

COLUMNS = ["id", "name", "qty", "amount", "when", "nope", ""]
ODD = st.sampled_from(
    [None, True, 0, -1, 2**63, -(2**64), 1.5, -0.0, 1e308, "", "a2", "2024-01-01", "2024-13-45", "%Y", "\x00", [], {}]
)
VALUES = st.one_of(ODD, st.lists(ODD, max_size=3), st.sampled_from([1, 20, 2.5, "b2", "2024-01-02", [1, 2], ["a2"]]))


def _clean_parts() -> st.SearchStrategy[dict[str, Any]]:
    columns = st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=2)
    fill = st.builds(lambda v: {"fillNulls": {"value": v}}, st.sampled_from([0, 7, 2.5, -1, "x", "2024-01-01"]))
    return st.one_of(
        fill,
        fill,
        st.builds(lambda how, c: {"dropNulls": {"how": how, "columns": c}}, st.sampled_from(["ANY", "ALL"]), columns),
        st.builds(
            lambda s, v: {"fillNulls": {"strategy": s, "value": v}},
            st.sampled_from(["VALUE", "FORWARD", "MEAN"]),
            VALUES,
        ),
        st.builds(
            lambda c, to: {"cast": {"columns": c, "to": to}},
            columns,
            st.sampled_from(["INT", "FLOAT", "TEXT", "DATE", "DATETIME", "BOOLEAN"]),
        ),
        st.builds(lambda a, b: {"rename": [{"from": a, "to": b}]}, st.sampled_from(COLUMNS), st.sampled_from(COLUMNS)),
        st.builds(lambda keep: {"dropDuplicates": {"keep": keep}}, st.sampled_from(["FIRST", "LAST", "NONE"])),
        st.builds(lambda c: {"trim": {"columns": c}}, columns),
        st.builds(
            lambda c, f: {"parseDates": {"columns": c, "format": f, "to": "DATE"}},
            columns,
            st.sampled_from(["%Y-%m-%d", "%d/%m/%Y %z", "%", ""]),
        ),
    )


STEP = st.one_of(
    st.builds(
        lambda c, op, v: {"filter": [{"column": c, "op": op, **({"value": v} if v is not None else {})}]},
        st.sampled_from(COLUMNS),
        st.sampled_from(["EQ", "GT", "IN", "NOT_IN", "BETWEEN", "CONTAINS", "IS_NULL"]),
        VALUES,
    ),
    st.builds(lambda c: {"select": c}, st.lists(st.sampled_from(COLUMNS), max_size=3)),
    st.builds(lambda c, d: {"sort": [{"column": c, "descending": d}]}, st.sampled_from(COLUMNS), st.booleans()),
    st.builds(
        lambda c, fn: {"groupBy": {"by": [c], "aggregations": [{"column": "amount", "fn": fn}]}},
        st.sampled_from(COLUMNS),
        st.sampled_from(["SUM", "MEAN", "FIRST", "N_UNIQUE"]),
    ),
    st.builds(lambda on: {"join": {"right": "items", "on": [on], "how": "LEFT"}}, st.sampled_from(COLUMNS)),
    st.builds(lambda parts: {"clean": parts}, st.lists(_clean_parts(), min_size=1, max_size=2)),
)
# Over SQL: a decimal, a date and a timestamp column beside the text and numbers.
FUZZ_SQL = (
    "SELECT id, name, qty, CAST(qty AS DECIMAL(10, 2)) AS amount, CAST('2024-01-0' || CAST(id AS VARCHAR) AS DATE)"
    ' AS "when" FROM items'
)
RECIPES = st.builds(
    lambda steps, sql, version: {
        "steps": steps,
        "sources": [{"dataset": "items", **({"version": version} if version else {})}],
        **({"query": FUZZ_SQL} if sql else {}),
    },
    st.lists(STEP, max_size=3),
    st.booleans(),
    st.sampled_from([None, 1, 2]),
)


@pytest.mark.slow  # a fuzz budget
def test_random_recipes_make_a_dataset_or_a_problem_never_an_unexpected_error(tmp_path: Path) -> None:
    """The full budget (CI) found the fill of a decimal column over SQL that answered INTERNAL."""
    seen: dict[str, int] = {}

    @settings(max_examples=budget(60, 400), deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(RECIPES)
    def each(recipe: dict[str, Any]) -> None:
        body = app.query(RUN, {"r": recipe, "n": "fuzzed"})
        assert "errors" not in body, (recipe, body)
        answer = body["data"]["runRecipe"]
        code = "MADE" if answer["success"] else answer["error"]["code"]
        seen[code] = seen.get(code, 0) + 1
        assert code in ("MADE", "BAD_INPUT", "NOT_FOUND"), (recipe, answer)
        if not answer["success"]:
            assert not any(leak in answer["error"]["message"] for leak in ("Traceback", 'File "', "/tmp/")), answer
        frame = SQL_FRAME if "query" in recipe else PIPELINE
        variables = {"q": recipe.get("query"), "d": "items", "steps": recipe["steps"]}
        node = app.query(frame, {k: v for k, v in variables.items() if f"${k}" in frame})
        assert "errors" not in node, (recipe, node)
        written = (node["data"]["datasetSql"] if "query" in recipe else node["data"]["dataset"])["pipeline"]["recipe"]
        assert written["success"] or written["error"]["code"] in ("BAD_INPUT", "NOT_FOUND"), (recipe, written)

    with serving(make_settings(tmp_path, rate_limit="")) as app:  # hundreds of requests a minute
        app.upload_ok(ROWS, "items.csv")
        app.replace_ok("items", ROWS_2, "items.csv")
        each()
    assert seen.get("MADE", 0) >= 5 and seen.get("BAD_INPUT", 0) >= 5, seen  # both sides are reached
