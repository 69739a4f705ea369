"""Attack review of issue 21's steps (window, resample, joinAsof, pivot, unpivot): what one careless
or hostile request can do. Each test drives the real app (pipeline(steps:), saveFrame) with small
guard settings, so a guard that failed would be seen here rather than as a worker out of memory;
a few check in-process inputs that parse and run fine (huge sizes and periods, nested columns).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from support import Api, make_settings, serving

import engine
from datagraph.errors import BadInput
from engine import Plan, Resample, Source, WindowSpec, WindowStep
from engine._clean import Clean, Rename
from engine._plan import Aggregation

PIPELINE = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  rows(limit: 50) { success error { code message } data meta { columns { name } } } } } }"""
RUN = """mutation($r: JSON!, $n: String!) { runRecipe(recipe: $r, name: $n) { success error { code message } } }"""
SAVE = """mutation($d: ID!, $steps: [Step!]!, $n: String!) { saveFrame(dataset: $d, steps: $steps, name: $n) {
  success error { code message } dataset { id } } }"""
JOIN_MAX_ROWS = 5_000


def _csv(header: str, rows: Iterator[str]) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app with a small join_max_rows (the guards' limit) and these datasets: `tall` (2,000 rows,
    2,000 distinct keys, 50 distinct values) and `wide` (100 rows, 60 columns)."""
    settings = make_settings(tmp_path_factory.mktemp("attack21"), join_max_rows=JOIN_MAX_ROWS, pivot_max_columns=100)
    with serving(settings) as api:
        tall = _csv("k,c,v", (f"k{i},c{i % 50},{i}" for i in range(2_000)))
        assert api.upload_ok(tall, "tall.csv") == "tall"
        wide = _csv(",".join(["id", *(f"m{j}" for j in range(60))]), (",".join([str(i)] * 61) for i in range(100)))
        assert api.upload_ok(wide, "wide.csv") == "wide"
        yield api


def _pipeline(app: Api, dataset: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    answer: dict[str, Any] = app.data(PIPELINE, {"d": dataset, "steps": steps})["dataset"]["pipeline"]["rows"]
    return answer


def _clear(message: str) -> None:
    """A Problem in the user's terms: no traceback, path or Polars text."""
    for leak in ("Traceback", "/", "polars", "Error", "FAILED HERE", "error id"):
        assert leak not in message, message


# --- guards -----------------------------------------------------------------------------------------


def test_a_pivot_whose_cells_pass_the_limit_is_too_large(app: Api) -> None:
    """2,000 index keys x 50 new columns = 100,000 cells, each column under pivot_max_columns: the
    pivot's output is rows x columns, and a million-row index under the column limit would be
    tens of gigabytes. Refused by the rows x columns count, through pipeline, saveFrame and runRecipe alike."""
    step = {"pivot": {"index": ["k"], "columns": "c", "values": "v"}}
    answer = _pipeline(app, "tall", [step])
    assert answer["error"]["code"] == "TOO_LARGE", answer
    message = answer["error"]["message"]
    assert "2,000 rows" in message and "50 columns" in message and "join_max_rows" in message, message
    saved = app.data(SAVE, {"d": "tall", "steps": [step], "n": "pivot saved"})["saveFrame"]
    assert saved["error"]["code"] == "TOO_LARGE", saved
    run = app.data(RUN, {"r": {"steps": [step], "sources": [{"dataset": "tall"}]}, "n": "pivot run"})["runRecipe"]
    assert run["error"]["code"] == "TOO_LARGE", run
    fits = _pipeline(app, "tall", [{"filter": [{"column": "v", "op": "LT", "value": 100}]}, step])
    assert fits["success"] and len(fits["meta"]["columns"]) == 51, fits


def test_an_unpivot_whose_rows_pass_the_limit_is_too_large(app: Api) -> None:
    """100 rows x 60 columns melted = 6,000 rows, over join_max_rows (5,000): an unpivot makes rows x
    columns rows (2,000 columns x a million rows would be two billion)."""
    step = {"unpivot": {"index": ["id"]}}
    answer = _pipeline(app, "wide", [step])
    assert answer["error"]["code"] == "TOO_LARGE", answer
    assert "6,000 rows" in answer["error"]["message"] and "join_max_rows" in answer["error"]["message"]
    saved = app.data(SAVE, {"d": "wide", "steps": [step], "n": "melt saved"})["saveFrame"]
    assert saved["error"]["code"] == "TOO_LARGE", saved
    recipe = {"steps": [step], "sources": [{"dataset": "wide"}]}
    run = app.data(RUN, {"r": recipe, "n": "melt run"})["runRecipe"]
    assert run["error"]["code"] == "TOO_LARGE", run
    fits = _pipeline(app, "wide", [{"slice": {"offset": 0, "limit": 50}}, step])
    assert fits["success"], fits


# --- bad input that reached Polars ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["variableName", "valueName"])
def test_unpivot_names_that_clash_with_a_column_are_a_problem(app: Api, name: str) -> None:
    answer = _pipeline(app, "tall", [{"unpivot": {"index": ["k"], "on": ["v"], name: "c"}}])
    assert answer["error"]["code"] == "BAD_INPUT", answer
    assert f'{name} "c"' in answer["error"]["message"], answer
    _clear(answer["error"]["message"])
    same = _pipeline(app, "tall", [{"unpivot": {"index": ["k"], "on": ["v"], name: "v"}}])
    assert same["error"]["code"] == "BAD_INPUT", same


# --- in-process: nested columns, extreme sizes ---------------------------------------------------------


@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """Hourly rows with a list and a struct column (what a JSON upload can hold)."""
    n = 48
    frame = pl.DataFrame(
        {
            "t": pl.datetime_range(dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2, 23), "1h", eager=True),
            "x": [float(i) for i in range(n)],
            "l": [[i % 2] for i in range(n)],
            "st": [{"a": i % 3} for i in range(n)],
        }
    )
    path = Path(tmp_path_factory.mktemp("nested")) / "nested.parquet"
    frame.write_parquet(path)
    return Source("nested", 1, path)


def test_pivot_and_unpivot_over_nested_columns_are_problems(nested: Source) -> None:
    with pytest.raises(BadInput, match='pivot columns: "l" is a List'):
        engine.count(Plan(nested, (engine.Pivot(("x",), "l", "t"),)))
    with pytest.raises(BadInput, match=r'unpivot: "l" is a List.*no common type'):
        engine.count(Plan(nested, (engine.Unpivot(("t",), ("l", "st")),)))


def test_extreme_sizes_offsets_and_periods_run_without_blowing_up(nested: Source) -> None:
    """A size or offset of 2^31 - 1 (GraphQL's largest Int) and the longest periods that parse
    allocate nothing in proportion: the same rows, all missing or all in one window."""
    big = 2**31 - 1
    specs = (
        WindowSpec("x", "ROLLING_MEAN", size=big),
        WindowSpec("x", "ROLLING_SUM", alias="s1", size=big, min_periods=1),
        WindowSpec("x", "LAG", offset=big),
        WindowSpec("x", "ROLLING_MAX", alias="wk", period="999999w", order_by="t"),
        WindowSpec("x", "CUM_SUM", alias="by_list", by=("l",), order_by="st"),
    )
    got = engine.rows(Plan(nested, (WindowStep(specs),)), limit=100, offset=0).records
    assert len(got) == 48
    assert all(r["x_rolling_mean"] is None and r["x_lag"] is None for r in got)
    assert [r["s1"] for r in got] == [sum(range(i + 1)) for i in range(48)]
    assert [r["wk"] for r in got] == [float(i) for i in range(48)]
    one = Resample("t", "999999y", (), (Aggregation("x", "SUM", None),))
    assert engine.rows(Plan(nested, (one,)), limit=10, offset=0).records == [
        {"t": dt.datetime(2024, 1, 1), "x_sum": float(sum(range(48)))}
    ]
    for bad in ("1.5d", "-1d", "0d", "1ns", "1e9d", "9999999d"):
        with pytest.raises(BadInput, match="does not parse"):
            engine.count(Plan(nested, (Resample("t", bad, (), (Aggregation("x", "SUM", None),)),)))


def test_pivot_values_whose_names_clash_are_a_problem(tmp_path: Path) -> None:
    """The text "null" and a missing value would both name the column "null"."""
    path = tmp_path / "words.parquet"
    pl.DataFrame({"k": [1, 1, 2], "c": ["null", None, "a"], "v": [1.0, 2.0, 3.0]}).write_parquet(path)
    with pytest.raises(BadInput, match='would both name the column "null"') as caught:
        engine.count(Plan(Source("words", 1, path), (engine.Pivot(("k",), "c", "v"),)))
    _clear(caught.value.message)


def test_an_asof_by_key_of_whole_numbers_against_decimals_is_a_problem(tmp_path: Path) -> None:
    """Cast to the left's integers, 1.5 would become 1 and match the wrong group; pandas refuses the
    pair ("incompatible merge keys")."""
    left, right = tmp_path / "left.parquet", tmp_path / "right.parquet"
    pl.DataFrame({"t": [1, 2, 3], "g": [1, 1, 2]}).write_parquet(left)
    pl.DataFrame({"t": [1, 2, 3], "g": [1.5, 1.5, 2.5], "y": [10, 20, 30]}).write_parquet(right)
    step = engine.JoinAsof(Source("right", 1, right), "t", by=("g",))
    with pytest.raises(BadInput, match='by column "g" holds whole numbers on the left and decimals on the right'):
        engine.count(Plan(Source("left", 1, left), (step,)))


@pytest.mark.parametrize(
    ("renamed", "step", "where"),
    [
        ("k", engine.Unpivot(("\x00row",)), "unpivot"),
        ("b", engine.Unpivot(("k",), ("a",)), "unpivot"),
        ("k", engine.Pivot(("\x00cell",), "c", "a"), "pivot index"),
    ],
)
def test_a_column_named_like_a_helper_is_a_problem(tmp_path: Path, renamed: str, step: Any, where: str) -> None:
    """A rename can give a column any name, the helpers' too (a row number, a pivot's cell): a
    Problem, not Polars' duplicate-column error."""
    path = tmp_path / "named.parquet"
    pl.DataFrame({"k": [1, 2, 2], "a": [1.0, 2.0, 3.0], "b": [3.0, 4.0, 5.0], "c": ["x", "y", "x"]}).write_parquet(path)
    helper = "\x00row" if isinstance(step, engine.Unpivot) else "\x00cell"
    plan = Plan(Source("named", 1, path), (Clean((Rename(((renamed, helper),)),)), step))
    with pytest.raises(BadInput, match=f"{where}: the column .* has a name used inside the step"):
        engine.count(plan)


def test_pivot_max_columns_zero_means_no_limit_not_one_column(tmp_path: Path) -> None:
    """The setting's 0 is "no limit"; the distinct values were cut to the limit + 1, so one column."""
    path = tmp_path / "three.parquet"
    pl.DataFrame({"k": [1, 1, 2], "c": ["x", "y", "z"], "v": [1.0, 2.0, 3.0]}).write_parquet(path)
    got = engine.rows(
        Plan(Source("three", 1, path), (engine.Pivot(("k",), "c", "v", max_columns=0),)), limit=5, offset=0
    )
    assert got.records == [{"k": 1, "x": 1.0, "y": 2.0, "z": None}, {"k": 2, "x": None, "y": None, "z": 3.0}]


@pytest.mark.parametrize("fn", ["MIN", "MAX"])
@pytest.mark.parametrize("column", ["l", "st"])
def test_min_and_max_of_lists_or_structs_are_problems(nested: Source, fn: str, column: str) -> None:
    """Polars has no order on them: a Problem naming the fn, not an INTERNAL error."""
    pivoted = engine.Pivot(("x",), "t", column, fn)
    with pytest.raises(BadInput, match=f'pivot: fn {fn} needs values with an order; "{column}" is a'):
        engine.count(Plan(nested, (pivoted,)))
    resampled = Resample("t", "1d", (), (Aggregation(column, fn, None),))
    with pytest.raises(BadInput, match=f'resample aggregations: {fn} needs values with an order; "{column}" is a'):
        engine.count(Plan(nested, (resampled,)))


def test_an_asof_join_of_zoned_and_naive_times_is_a_problem(tmp_path: Path) -> None:
    """A naive right time was read as UTC against a zoned left one; pandas refuses the pair."""
    left, right = tmp_path / "left.parquet", tmp_path / "right.parquet"
    zoned = pl.DataFrame({"t": [dt.datetime(2024, 1, 1, 12)]}).with_columns(
        pl.col("t").dt.replace_time_zone("Asia/Tokyo")
    )
    zoned.write_parquet(left)
    pl.DataFrame({"t": [dt.datetime(2024, 1, 1, 11, 30)], "y": [1]}).write_parquet(right)
    for a, b in ((left, right), (right, left)):
        step = engine.JoinAsof(Source("b", 1, b), "t")
        with pytest.raises(BadInput, match="one has a time zone and the other none"):
            engine.count(Plan(Source("a", 1, a), (step,)))


# --- a window of many specs counts against max_steps ---------------------------------------------------

WINDOW_FIELD = """query($d: ID!, $specs: [WindowInput!]!) { dataset(id: $d) { window(specs: $specs) {
  rows(limit: 1) { success error { code message } } } } }"""


def test_a_window_weighs_as_many_steps_as_it_has_specs(app: Api) -> None:
    """Each spec is a column computed over every row: hundreds of period specs in one window step would
    hold a worker until the deadline. They count against max_steps (200) as a clean step's steps do,
    on every path: the Frame field, pipeline(steps:) and runRecipe; nothing is computed or created."""
    spec = {"column": "v", "fn": "CUM_SUM"}
    many = [{**spec, "alias": f"s{i}"} for i in range(201)]
    field = app.data(WINDOW_FIELD, {"d": "tall", "specs": many})["dataset"]["window"]["rows"]
    piped = _pipeline(app, "tall", [{"window": many}])
    before = len(app.data("{ datasets { id } }")["datasets"])
    recipe = {"steps": [{"window": many}], "sources": [{"dataset": "tall"}]}
    ran = app.data(RUN, {"r": recipe, "n": "too wide"})["runRecipe"]
    for answer in (field, piped, ran):
        assert not answer["success"] and answer["error"]["code"] == "BAD_INPUT", answer
        assert "at most 200 steps" in answer["error"]["message"] and "201" in answer["error"]["message"]
    assert len(app.data("{ datasets { id } }")["datasets"]) == before
    fits = app.data(WINDOW_FIELD, {"d": "tall", "specs": many[:200]})["dataset"]["window"]["rows"]
    assert fits["success"], fits
