"""joinAsof, pivot and unpivot, and the guards that refuse a join or a pivot that would blow up.

The numbers are checked against pandas (`merge_asof`, `pivot_table(dropna=False)`, `melt`) on the
engine in-process, on the shared data and on generated data with nulls, ties and unsorted input;
one module-scoped app proves the wiring: Frame fields and `pipeline(steps:)`, `meta.columns`,
saveFrame, XLSX export, recipes, every bad input as a Problem naming its argument, and the guards.
"""

from __future__ import annotations

import io
import math
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal
from support import DATA, GUARDED, Api, ingested, make_settings, require_service, serving
from test_recipe import FRAME, RUN, SAVE, _check, _frame, _normalised, _parquet, exports, scripts

import engine
from connectors.linked import fetch_frame
from connectors.pushdown import push_down
from datagraph.errors import BadInput, TooLarge
from engine import Join, JoinAsof, Pivot, Plan, Source, Unpivot

__all__ = ["exports", "scripts"]  # the recipe round trip's fixtures, shared with tests/test_recipe.py

PANDAS_FN = {"COUNT": "count", "SUM": "sum", "MEAN": "mean", "MEDIAN": "median", "MIN": "min", "MAX": "max",
             "STD": "std", "VAR": "var", "N_UNIQUE": "nunique", "FIRST": "first", "LAST": "last"}  # fmt: skip


# --- generated data: nulls, ties, unsorted ----------------------------------------------------------


def _ticks_csv(seed: int, rows: int, value: str) -> bytes:
    """Integer times 0..60 in random order with ties and missing times, groups a/b/c, a float value."""
    rng = random.Random(seed)
    lines = [f"t,g,{value},label"]
    for i in range(rows):
        t = "" if rng.random() < 0.06 else str(rng.randrange(0, 61))
        v = "" if rng.random() < 0.1 else f"{rng.uniform(-5, 5):.3f}"
        lines.append(f"{t},{rng.choice('abc')},{v},r{i}")
    return ("\n".join(lines) + "\n").encode()


def _cells_csv(seed: int, rows: int) -> bytes:
    """For pivots: an index with missing keys, an integer columns column with missing values, values
    with missing ones and ties."""
    rng = random.Random(seed)
    lines = ["k,c,v,w"]
    for _ in range(rows):
        k = "" if rng.random() < 0.08 else rng.choice(["x", "y", "z", "w"])
        c = "" if rng.random() < 0.08 else str(rng.randrange(1, 6) * 10)
        v = "" if rng.random() < 0.15 else str(rng.randrange(0, 4))
        w = rng.choice(["p", "q", "r"])
        lines.append(f"{k},{c},{v},{w}")
    return ("\n".join(lines) + "\n").encode()


LEFT, RIGHT, CELLS = _ticks_csv(1, 400, "x"), _ticks_csv(2, 300, "y"), _cells_csv(3, 500)


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """The generated data parsed as an upload is, for the engine in this process."""
    folder = tmp_path_factory.mktemp("reshape-data")
    return {
        name: ingested(content, folder, name) for name, content in [("left", LEFT), ("right", RIGHT), ("cells", CELLS)]
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module: tips, penguins, taxis and the generated data. Workers under a 2 GiB cap,
    so a guard that failed to refuse a join would stop a worker, not the machine."""
    settings = make_settings(tmp_path_factory.mktemp("reshape"), worker_memory_mb=2048, **GUARDED)
    with serving(settings) as api:
        for path in ("tips.csv", "penguins.csv", "taxis.csv"):
            api.upload_ok(DATA / path)
        for name, content in [("left", LEFT), ("right", RIGHT), ("cells", CELLS)]:
            assert api.upload_ok(content, f"{name}.csv") == name
        yield api


def _pandas(source: Source) -> pd.DataFrame:
    """A dataset as pandas reads its Parquet (no pyarrow here: through plain Python columns)."""
    frame = pl.read_parquet(source.path)
    return pd.DataFrame(
        {name: pd.Series(frame[name].to_list(), dtype=_pd_dtype(frame[name])) for name in frame.columns}
    )


def _pd_dtype(series: pl.Series) -> Any:
    if series.dtype.is_integer():
        return "float64" if series.null_count() else "int64"
    if series.dtype.is_float():
        return "float64"
    if series.dtype == pl.Datetime:
        return "datetime64[us]"
    return "object"


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value.item() if hasattr(value, "item") else value


def _same(got: list[dict[str, Any]], expected: pd.DataFrame, label: str) -> None:
    """Our records equal pandas' rows: the same columns in order, values equal (floats closely,
    missing as missing)."""
    assert len(got) == len(expected), (label, len(got), len(expected))
    assert (list(got[0]) if got else []) == [str(c) for c in expected.columns], label
    for i, (row, want) in enumerate(zip(got, expected.itertuples(index=False), strict=True)):
        for (name, a), b in zip(row.items(), want, strict=True):
            b = _plain(b)
            if isinstance(a, float) and isinstance(b, (int, float)):
                ok = math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
            else:
                ok = a == b
            assert ok, (label, i, name, a, b, row)


def _rows(plan: Plan) -> list[dict[str, Any]]:
    found = engine.rows(plan, limit=10_000, offset=0)
    assert not found.truncated
    return found.records


# --- joinAsof against pandas.merge_asof -----------------------------------------------------------


def _merge_asof(
    left: pd.DataFrame, right: pd.DataFrame, on: str, right_on: str, by: list[str], strategy: str, tolerance: Any
) -> pd.DataFrame:
    left = left[left[on].notna()].sort_values(on, kind="stable").reset_index(drop=True)
    right = right[right[right_on].notna()].sort_values(right_on, kind="stable").reset_index(drop=True)
    return pd.merge_asof(
        left,
        right,
        left_on=on,
        right_on=right_on,
        by=by or None,
        direction=strategy.lower(),
        tolerance=tolerance,
        suffixes=("", "_right"),
    )


@pytest.mark.parametrize("strategy", ["BACKWARD", "FORWARD", "NEAREST"])
@pytest.mark.parametrize(("by", "tolerance"), [((), None), (("g",), None), (("g",), 3), ((), 0)])
def test_join_asof_on_numbers_matches_pandas(
    here: dict[str, Source], strategy: str, by: tuple[str, ...], tolerance: int | None
) -> None:
    step = JoinAsof(here["right"], "t", by=by, strategy=strategy, tolerance=tolerance)
    got = _rows(Plan(here["left"], (step,)))
    left, right = _pandas(here["left"]), _pandas(here["right"])
    expected = _merge_asof(left, right, "t", "t", list(by), strategy, tolerance)
    _same(got, expected, f"{strategy} by={by} tolerance={tolerance}")
    assert sum(r["label_right"] is not None for r in got) > 0  # some rows matched


@pytest.mark.parametrize("strategy", ["BACKWARD", "FORWARD", "NEAREST"])
def test_join_asof_on_timestamps_with_a_duration_matches_pandas(shared_data: dict[str, Source], strategy: str) -> None:
    """Each taxi's pickup against the dropoffs in its borough, within 5 minutes."""
    taxis = shared_data["taxis"]
    step = JoinAsof(taxis, "pickup", "dropoff", ("pickup_borough",), strategy, "5m")
    got = _rows(Plan(taxis, (step,)))
    frame = _pandas(taxis)
    frame = frame[frame["pickup_borough"].notna()]  # pandas cannot match missing by-keys; see the next test
    expected = _merge_asof(frame, frame, "pickup", "dropoff", ["pickup_borough"], strategy, pd.Timedelta(minutes=5))
    got = [r for r in got if r["pickup_borough"] is not None]
    assert "dropoff_right" in got[0] and "pickup_right" in got[0]
    _same(got, expected, strategy)
    assert 0 < sum(r["fare_right"] is not None for r in got) < len(got)


def test_join_asof_leaves_rows_without_a_time_out_and_gives_missing_groups_no_match(
    here: dict[str, Source], shared_data: dict[str, Source]
) -> None:
    """Rows missing their time are left out (pandas refuses them); a missing by-key matches nothing,
    as in `join` (pandas would match missing to missing: the one place we differ, on purpose)."""
    left = pl.read_parquet(here["left"].path)
    got = _rows(Plan(here["left"], (JoinAsof(here["right"], "t", by=("g",)),)))
    assert len(got) == left.filter(pl.col("t").is_not_null()).height < left.height
    times = [r["t"] for r in got]
    assert times == sorted(times)
    taxis = shared_data["taxis"]
    joined = _rows(Plan(taxis, (JoinAsof(taxis, "pickup", "dropoff", ("pickup_borough",), "NEAREST"),)))
    missing = [r for r in joined if r["pickup_borough"] is None]
    assert missing and all(r["fare_right"] is None for r in missing)
    assert all(r["fare_right"] is not None for r in joined if r["pickup_borough"] is not None)


# --- pivot against pandas.pivot_table --------------------------------------------------------------


def _pivot_table(
    frame: pd.DataFrame, index: list[str], columns: str, values: str, fn: str, whole: bool
) -> pd.DataFrame:
    table = pd.pivot_table(frame, index=index, columns=columns, values=values, aggfunc=PANDAS_FN[fn], dropna=False)
    table.columns = [_label(c, whole) for c in table.columns]
    return table.reset_index()


def _label(value: Any, whole: bool) -> str:
    """A pivoted column's name as ours: the value's text as its column holds it (pandas turns an integer
    column with missing values into floats: 10.0 is the value 10), "null" for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if whole and isinstance(value, float):
        return str(int(value))
    return str(value)


@pytest.mark.parametrize("fn", list(PANDAS_FN))
@pytest.mark.parametrize(
    ("data", "index", "columns", "values"),
    [
        ("tips", ["day"], "time", "tip"),
        ("tips", ["sex", "smoker"], "size", "total_bill"),
        ("penguins", ["species", "island"], "sex", "body_mass_g"),
        ("cells", ["k"], "c", "v"),
        ("cells", ["w", "k"], "c", "v"),
    ],
)
def test_pivot_matches_pandas_pivot_table(
    shared_data: dict[str, Source],
    here: dict[str, Source],
    fn: str,
    data: str,
    index: list[str],
    columns: str,
    values: str,
) -> None:
    source = here.get(data) or shared_data[data]
    got = _rows(Plan(source, (Pivot(tuple(index), columns, values, fn),)))
    whole = pl.read_parquet(source.path)[columns].dtype.is_integer()
    expected = _pivot_table(_pandas(source), index, columns, values, fn, whole)
    assert list(got[0]) == list(expected.columns)
    _same(got, expected, f"{data} {fn}")


def test_pivot_columns_are_sorted_values_and_missing_cells_are_missing(here: dict[str, Source]) -> None:
    got = _rows(Plan(here["cells"], (Pivot(("k",), "c", "w", "COUNT"),)))
    assert list(got[0]) == ["k", "10", "20", "30", "40", "50", "null"]
    assert [r["k"] for r in got] == ["w", "x", "y", "z", None]


# --- unpivot against pandas.melt -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "index", "on"),
    [
        ("tips", ["day", "time"], ["total_bill", "tip"]),
        ("penguins", ["species"], ["bill_length_mm", "body_mass_g", "flipper_length_mm"]),
        ("cells", ["k", "w"], None),
        ("diamonds", ["cut"], ["price", "carat"]),
    ],
)
def test_unpivot_matches_pandas_melt(
    shared_data: dict[str, Source], here: dict[str, Source], data: str, index: list[str], on: list[str] | None
) -> None:
    source = here.get(data) or shared_data[data]
    step = Unpivot(tuple(index), tuple(on) if on else None, "measure", "amount")
    found = engine.rows(Plan(source, (step,)), limit=10_000, offset=0)
    frame = _pandas(source)
    expected = pd.melt(frame, id_vars=index, value_vars=on, var_name="measure", value_name="amount")
    _same(found.records, expected.head(10_000), data)
    assert engine.count(Plan(source, (step,))) == len(expected)


# --- the guards, in process ------------------------------------------------------------------------


def test_the_join_estimate_is_exact_for_inner_and_left_joins(here: dict[str, Source]) -> None:
    """The estimate is the join's size: a limit one under it refuses, the size itself passes."""
    for how in ("INNER", "LEFT"):
        size = engine.count(Plan(here["left"], (Join(here["right"], ("t",), how, max_rows=0),)))
        assert size > 400
        assert engine.count(Plan(here["left"], (Join(here["right"], ("t",), how, max_rows=size),))) == size
        with pytest.raises(TooLarge, match=rf"about {size:,} rows, more than the {size - 1:,} .*setting join_max_rows"):
            engine.count(Plan(here["left"], (Join(here["right"], ("t",), how, max_rows=size - 1),)))


def test_an_as_of_join_is_refused_when_its_left_side_is_over_the_limit(here: dict[str, Source]) -> None:
    rows = pl.read_parquet(here["left"].path).height
    with pytest.raises(TooLarge, match=rf"as-of join would make about {rows:,} rows.*join_max_rows"):
        engine.count(Plan(here["left"], (JoinAsof(here["right"], "t", max_rows=rows - 1),)))


def test_a_pivot_over_pivot_max_columns_is_refused(here: dict[str, Source]) -> None:
    with pytest.raises(TooLarge, match=r'"c" has 6 distinct values, more than the 5 .*setting pivot_max_columns'):
        engine.count(Plan(here["cells"], (Pivot(("k",), "c", "v", "SUM", max_columns=5),)))
    assert engine.count(Plan(here["cells"], (Pivot(("k",), "c", "v", "SUM", max_columns=6),))) == 5


# --- through the API -------------------------------------------------------------------------------

FIELDS = """query { dataset(id: "left") {
  asof: joinAsof(right: "right", on: "t", by: ["g"], strategy: NEAREST, tolerance: 2) {
    rows(limit: 1000) { success error { code message } data } }
  pivot(index: ["g"], columns: "t", values: "x", fn: MEAN) {
    rows(limit: 1000) { success error { code message } data meta { columns { name dtype } } } }
  unpivot(index: ["label"], on: ["x", "t"], variableName: "what") { rows(limit: 1000) { success data } }
} }"""
PIPELINE = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  rows(limit: 1000) { success error { code message } data meta { columns { name dtype } } } } } }"""
EXPORT = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  export(format: XLSX) { success error { code message } data } } } }"""
ASOF_STEP = {"joinAsof": {"right": "right", "on": "t", "by": ["g"], "strategy": "NEAREST", "tolerance": 2}}
PIVOT_STEP = {"pivot": {"index": ["g"], "columns": "t", "values": "x", "fn": "MEAN"}}
UNPIVOT_STEP = {"unpivot": {"index": ["label"], "on": ["x", "t"], "variableName": "what", "valueName": "value"}}


def _pipeline(app: Api, dataset: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    answer: dict[str, Any] = app.data(PIPELINE, {"d": dataset, "steps": steps})["dataset"]["pipeline"]["rows"]
    return answer


def test_frame_fields_and_pipeline_steps_give_the_same_rows(app: Api, here: dict[str, Source]) -> None:
    fields = app.data(FIELDS)["dataset"]
    for field, step in [("asof", ASOF_STEP), ("pivot", PIVOT_STEP), ("unpivot", UNPIVOT_STEP)]:
        assert fields[field]["rows"]["success"], fields[field]["rows"]
        assert _pipeline(app, "left", [step])["data"] == fields[field]["rows"]["data"], field
    in_process = _rows(Plan(here["left"], (JoinAsof(here["right"], "t", by=("g",), strategy="NEAREST", tolerance=2),)))
    assert fields["asof"]["rows"]["data"] == in_process


def test_pivoted_columns_are_typed_in_meta(app: Api) -> None:
    pivot = app.data(FIELDS)["dataset"]["pivot"]["rows"]
    columns = pivot["meta"]["columns"]
    assert columns[0] == {"name": "g", "dtype": "String"}
    names = [c["name"] for c in columns[1:]]
    assert names[-1] == "null"  # rows missing their time: a column of their own, last
    assert names[:-1] == sorted(names[:-1], key=int) and len(names) > 50  # the times, sorted as numbers
    assert {c["dtype"] for c in columns[1:]} == {"Float64"}
    counted = _pipeline(
        app, "penguins", [{"pivot": {"index": ["species"], "columns": "island", "values": "sex", "fn": "COUNT"}}]
    )
    assert counted["meta"]["columns"] == [
        {"name": "species", "dtype": "String"},
        {"name": "Biscoe", "dtype": "UInt32"},
        {"name": "Dream", "dtype": "UInt32"},
        {"name": "Torgersen", "dtype": "UInt32"},
    ]


def test_save_frame_of_a_pipeline_with_a_pivot_makes_its_dataset(app: Api) -> None:
    steps = [
        {"filter": [{"column": "t", "op": "NOT_NULL"}]},
        ASOF_STEP,
        {"pivot": {"index": ["g"], "columns": "t", "values": "y", "fn": "MEAN"}},
        {"unpivot": {"index": ["g"], "variableName": "t", "valueName": "mean"}},
    ]
    saved = app.data(SAVE, {"d": "left", "steps": steps, "n": "asof pivot"})["saveFrame"]
    assert saved["success"], saved["error"]
    dataset = _parquet(app, saved["dataset"]["id"])
    shown = _pipeline(app, "left", steps)
    assert dataset.columns == ["g", "t", "mean"]
    assert dataset.to_dicts() == shown["data"]
    # The frame's recipe, run again, makes the same dataset (the right side read at its version).
    recipe = _frame(app, FRAME, {"d": "left", "steps": steps})["recipe"]["data"]
    run = app.data(RUN, {"r": recipe, "n": "asof pivot again"})["runRecipe"]
    assert run["success"], run["error"]
    assert_frame_equal(_parquet(app, run["dataset"]["id"]), dataset)


EXPLAIN = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  explain { success error { code message } data } } } }"""


def test_explain_shows_the_reshaped_columns_and_the_cache_key_tells_steps_apart(
    app: Api, here: dict[str, Source]
) -> None:
    answer = app.data(EXPLAIN, {"d": "left", "steps": [ASOF_STEP, PIVOT_STEP]})["dataset"]["pipeline"]["explain"]
    assert answer["success"], answer["error"]
    assert answer["data"]["columns"][0] == {"name": "g", "dtype": "String"}
    assert "ASOF" in answer["data"]["plan"].upper()
    base = JoinAsof(here["right"], "t", by=("g",), strategy="NEAREST", tolerance=2)
    variants = [
        base,
        JoinAsof(here["right"], "t", by=("g",), strategy="NEAREST", tolerance=3),
        JoinAsof(here["right"], "t", by=("g",), strategy="BACKWARD", tolerance=2),
        JoinAsof(here["right"], "t", by=(), strategy="NEAREST", tolerance=2),
        JoinAsof(here["left"], "t", by=("g",), strategy="NEAREST", tolerance=2),
        Pivot(("g",), "t", "x", "MEAN"),
        Pivot(("g",), "t", "x", "SUM"),
        Unpivot(("g",)),
        Unpivot(("g",), ("x",)),
        Unpivot(("g",), None, "name"),
    ]
    keys = [repr(Plan(here["left"], (step,)).key()) for step in variants]
    assert len(set(keys)) == len(keys)
    assert (
        Plan(here["left"], (base,)).key()
        == Plan(here["left"], (JoinAsof(here["right"], "t", None, ("g",), "NEAREST", 2, 5),)).key()
    )


def test_an_xlsx_export_of_a_pivot_has_one_header_row_of_the_pivoted_names(app: Api) -> None:
    steps = [{"pivot": {"index": ["day"], "columns": "time", "values": "tip", "fn": "SUM"}}]
    answer = app.data(EXPORT, {"d": "tips", "steps": steps})["dataset"]["pipeline"]["export"]
    assert answer["success"], answer["error"]
    content = app.client.get(answer["data"]["url"]).content
    sheet = pl.read_excel(io.BytesIO(content), has_header=False, infer_schema_length=None)
    assert sheet.row(0) == ("day", "Dinner", "Lunch")
    assert sheet.height == 1 + 4  # the header, then Fri Sat Sun Thur
    assert sheet.row(1)[0] == "Fri" and float(sheet.row(1)[1]) == pytest.approx(35.28)


RECIPE_CASES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "as-of join by group, nearest within 3": ("left", [{"joinAsof": {"right": "right", "on": "t", "by": ["g"], "strategy": "NEAREST", "tolerance": 3}}]),
    "as-of join on timestamps within 5 minutes": ("taxis", [
        {"joinAsof": {"right": "taxis", "on": "pickup", "rightOn": "dropoff", "by": ["pickup_borough"], "strategy": "BACKWARD", "tolerance": "5m"}},
        {"select": ["pickup", "dropoff_right", "fare", "fare_right"]},
    ]),
    "pivot": ("tips", [{"pivot": {"index": ["day", "sex"], "columns": "size", "values": "tip", "fn": "MEDIAN"}}]),
    "pivot with missing values, then unpivot": ("cells", [
        {"pivot": {"index": ["k"], "columns": "c", "values": "v", "fn": "FIRST"}},
        {"unpivot": {"index": ["k"], "variableName": "variable", "valueName": "value"}},
    ]),
    "unpivot": ("penguins", [{"unpivot": {"index": ["species"], "on": ["bill_length_mm", "body_mass_g"], "variableName": "m", "valueName": "v"}}]),
    "as-of join on decimal times, backward within 2.5": ("left", [
        {"clean": [{"cast": {"columns": ["t"], "to": "FLOAT"}}]},
        {"joinAsof": {"right": "right", "on": "t", "strategy": "BACKWARD", "tolerance": 2.5}},
    ]),
    "unpivot of text, numbers and dates as text": ("taxis", [
        {"unpivot": {"index": ["color"], "on": ["payment", "fare", "pickup", "passengers"], "variableName": "m", "valueName": "v"}},
    ]),
}  # fmt: skip


def test_reshaping_steps_round_trip_through_their_recipe_script(
    app: Api, exports: Any, scripts: Any, tmp_path: Path
) -> None:
    for label, (dataset, steps) in RECIPE_CASES.items():
        recipe = _check(app, exports, scripts, tmp_path, label, FRAME, {"d": dataset, "steps": steps})
        assert recipe["steps"] == _normalised(steps), label
        fed_back = _pipeline(app, dataset, recipe["steps"])
        assert fed_back["success"] and fed_back["data"] == _pipeline(app, dataset, steps)["data"], label


BAD: list[tuple[str, list[dict[str, Any]], str, str]] = [
    ("left", [{"joinAsof": {"right": "right", "on": "when"}}], "BAD_INPUT", 'joinAsof on (left side): there is no column "when"'),
    ("left", [{"joinAsof": {"right": "right", "on": "t", "rightOn": "when"}}], "BAD_INPUT", "joinAsof rightOn (right side"),
    ("left", [{"joinAsof": {"right": "tips", "on": "t"}}], "BAD_INPUT", 'rightOn'),
    ("left", [{"joinAsof": {"right": "right", "on": "t", "by": ["nope"]}}], "BAD_INPUT", "by (left side)"),
    ("left", [{"joinAsof": {"right": "taxis", "on": "t", "rightOn": "fare", "by": ["g"]}}], "BAD_INPUT", 'by (right side, dataset "taxis")'),
    ("left", [{"joinAsof": {"right": "right", "on": "t", "tolerance": "5m"}}], "BAD_INPUT", "tolerance must be a whole number"),
    ("left", [{"joinAsof": {"right": "right", "on": "t", "tolerance": 1.5}}], "BAD_INPUT", "tolerance must be a whole number"),
    ("left", [{"joinAsof": {"right": "right", "on": "t", "tolerance": -1}}], "BAD_INPUT", "tolerance must be from 0 to"),
    ("left", [{"joinAsof": {"right": "right", "on": "t", "tolerance": 10**30}}], "BAD_INPUT", "tolerance must be from 0 to"),
    ("taxis", [{"joinAsof": {"right": "taxis", "on": "pickup", "tolerance": "9999999999d"}}], "BAD_INPUT", "tolerance must be a duration"),
    ("taxis", [{"joinAsof": {"right": "taxis", "on": "pickup", "tolerance": 5}}], "BAD_INPUT", "tolerance must be a duration"),
    ("taxis", [{"joinAsof": {"right": "taxis", "on": "pickup", "tolerance": "5 minutes"}}], "BAD_INPUT", "tolerance must be a duration"),
    ("taxis", [{"joinAsof": {"right": "taxis", "on": "pickup", "tolerance": ["5m"]}}], "BAD_INPUT", "tolerance must be a duration"),
    ("taxis", [{"joinAsof": {"right": "left", "on": "pickup", "rightOn": "t"}}], "BAD_INPUT", "time columns must be"),
    ("left", [{"joinAsof": {"right": "right", "on": "label"}}], "BAD_INPUT", "time columns must be"),
    ("left", [{"joinAsof": {"right": "right", "on": "t", "by": ["t"]}}], "BAD_INPUT", "cannot also be in by"),
    ("left", [{"joinAsof": {"right": "gone", "on": "t"}}], "NOT_FOUND", 'no dataset "gone"'),
    ("tips", [{"pivot": {"index": ["nope"], "columns": "time", "values": "tip"}}], "BAD_INPUT", 'pivot index: there is no column "nope"'),
    ("tips", [{"pivot": {"index": ["day"], "columns": "nope", "values": "tip"}}], "BAD_INPUT", "pivot columns:"),
    ("tips", [{"pivot": {"index": ["day"], "columns": "time", "values": "nope"}}], "BAD_INPUT", "pivot values:"),
    ("tips", [{"pivot": {"index": [], "columns": "time", "values": "tip"}}], "BAD_INPUT", "at least one index column"),
    ("tips", [{"pivot": {"index": ["day"], "columns": "day", "values": "tip"}}], "BAD_INPUT", "must not be index columns"),
    ("tips", [{"pivot": {"index": ["day"], "columns": "time", "values": "sex", "fn": "MEAN"}}], "BAD_INPUT", 'MEAN needs a numeric values column; "sex"'),
    ("tips", [{"unpivot": {"index": ["day"], "on": ["nope"]}}], "BAD_INPUT", 'unpivot on: there is no column "nope"'),
    ("tips", [{"unpivot": {"index": ["nope"]}}], "BAD_INPUT", "unpivot index:"),
    ("tips", [{"unpivot": {"index": ["day"], "on": ["day"]}}], "BAD_INPUT", "both index and on"),
    ("tips", [{"unpivot": {"index": ["day"], "variableName": "x", "valueName": "x"}}], "BAD_INPUT", "variableName and valueName must differ"),
    ("tips", [{"unpivot": {"index": ["day"], "variableName": "day"}}], "BAD_INPUT", 'variableName "day" is already an index column'),
    ("tips", [{"select": ["day"]}, {"unpivot": {"index": ["day"]}}], "BAD_INPUT", "at least one column in on"),
]  # fmt: skip


@pytest.mark.parametrize(("dataset", "steps", "code", "named"), BAD)
def test_bad_input_is_a_problem_naming_the_argument(
    app: Api, dataset: str, steps: list[dict[str, Any]], code: str, named: str
) -> None:
    answer = _pipeline(app, dataset, steps)
    assert not answer["success"] and answer["error"]["code"] == code, answer
    message = answer["error"]["message"]
    assert named in message, message
    assert "Traceback" not in message and "/" not in message.replace("and/or", "")


def test_a_pivot_with_too_many_columns_is_too_large(app: Api) -> None:
    wide = "\n".join(["k,c,v", *(f"a,{i},{i}" for i in range(1_001))]) + "\n"
    assert app.upload_ok(wide.encode(), "wide.csv") == "wide"
    answer = _pipeline(app, "wide", [{"pivot": {"index": ["k"], "columns": "c", "values": "v"}}])
    assert answer["error"]["code"] == "TOO_LARGE", answer
    assert "1,001 distinct values" in answer["error"]["message"]
    assert "more than the 1,000" in answer["error"]["message"] and "pivot_max_columns" in answer["error"]["message"]
    fits = _pipeline(
        app,
        "wide",
        [
            {"filter": [{"column": "c", "op": "LT", "value": 1000}]},
            {"pivot": {"index": ["k"], "columns": "c", "values": "v"}},
        ],
    )
    assert fits["success"] and len(fits["meta"]["columns"]) == 1_001


def test_a_join_of_ten_billion_rows_is_refused_before_it_runs(app: Api) -> None:
    """Two 100,000-row datasets whose rows all share one key: joined, 10^10 rows (160 GB of keys
    alone), far past the worker's 2 GiB cap; the guard counts the keys and refuses, and the worker
    that did so is still there to answer the next request."""
    side = "\n".join(["k,i", *(f"1,{i}" for i in range(100_000))]) + "\n"
    assert app.upload_ok(side.encode(), "big_left.csv") == "big_left"
    assert app.upload_ok(side.encode(), "big_right.csv") == "big_right"
    for step in (
        {"join": {"right": "big_right", "on": ["k"]}},
        {"join": {"right": "big_right", "on": ["k"], "how": "LEFT"}},
    ):
        answer = _pipeline(app, "big_left", [step])
        assert answer["error"]["code"] == "TOO_LARGE", answer
        message = answer["error"]["message"]
        assert "about 10,000,000,000 rows" in message and "50,000,000" in message and "join_max_rows" in message
    executor = app.client.app.state.resources.executor  # type: ignore[attr-defined]
    assert executor.stats().killed == 0 and executor.stats().crashed == 0  # refused, not run out of memory
    small = _pipeline(
        app, "big_left", [{"slice": {"offset": 0, "limit": 10}}, {"join": {"right": "right", "on": ["g"]}}]
    )
    assert small["error"]["code"] == "BAD_INPUT"  # no column g on the left: the app still answers


def test_bad_in_process_plans_raise_before_reading(here: dict[str, Source]) -> None:
    with pytest.raises(BadInput, match="unknown strategy"):
        engine.count(Plan(here["left"], (JoinAsof(here["right"], "t", strategy="SIDEWAYS"),)))


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_linked_table_pushes_what_it_can_and_leaves_reshaping_to_polars(
    here: dict[str, Source], dialect: str, tmp_path: Path
) -> None:
    """Pushdown stops at the first reshaping step (it has no SQL for them) and the rest runs in
    Polars on what the database sent: the same rows as over the stored dataset."""
    frame = pl.read_parquet(here["cells"].path)
    if dialect == "sqlite":
        db = sa.create_engine(f"sqlite:///{tmp_path / 'linked.sqlite'}")
    else:
        require_service(5432, "PostgreSQL")
        db = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"reshape_{uuid.uuid4().hex[:12]}"
    types = {pl.Int64: sa.BigInteger(), pl.String: sa.String(16)}
    table = sa.Table(name, sa.MetaData(), *(sa.Column(c, types[type(t)]) for c, t in frame.schema.items()))
    try:
        with db.begin() as conn:
            table.create(conn)
            conn.execute(table.insert(), frame.to_dicts())
        steps = (
            engine.Filter((engine.Condition("v", "NOT_NULL"),)),
            Pivot(("k",), "c", "v", "SUM"),
            Unpivot(("k",), None, "c", "total"),
            JoinAsof(here["right"], "total", "t", strategy="NEAREST"),
        )
        pushed = push_down(table, steps, dialect)
        assert pushed.remaining == steps[1:]
        with db.connect() as conn:
            fetched = fetch_frame(conn, pushed.query)
        stored = tmp_path / "fetched.parquet"
        fetched.write_parquet(stored)
        linked = pl.DataFrame(_rows(Plan(Source("linked", 1, stored), pushed.remaining)))
        assert_frame_equal(linked, pl.DataFrame(_rows(Plan(here["cells"], steps))), check_dtypes=False)
        assert linked.height > 0
    finally:
        with db.begin() as conn:
            table.drop(conn, checkfirst=True)
        db.dispose()


def test_a_pivot_of_no_rows_has_only_its_index_columns(here: dict[str, Source]) -> None:
    nothing = engine.Filter((engine.Condition("v", "GT", 100),))
    found = engine.rows(Plan(here["cells"], (nothing, Pivot(("k", "w"), "c", "v", "SUM"))), limit=10, offset=0)
    assert found.records == [] and [c.name for c in found.columns] == ["k", "w"]


def test_unpivoting_columns_of_no_common_type_gives_text(
    here: dict[str, Source], shared_data: dict[str, Source]
) -> None:
    """Text, numbers, dates and booleans have no common type: their values become text (pandas' melt
    gives objects); numbers of two types become the wider."""
    taxis = shared_data["taxis"]
    mixed = engine.rows(Plan(taxis, (Unpivot(("color",), ("payment", "fare", "pickup")),)), limit=20_000, offset=0)
    assert {c.name: c.dtype for c in mixed.columns}["value"] == "String"
    first = pl.read_parquet(taxis.path).row(0, named=True)
    values = [r["value"] for r in mixed.records]
    assert len(values) == 3 * pl.read_parquet(taxis.path).height
    assert first["payment"] in values and str(first["fare"]) in values
    assert f"{first['pickup']}.000000" in values  # timestamps as Polars writes them
    numbers = engine.rows(Plan(here["left"], (Unpivot(("g",), ("t", "x")),)), limit=10, offset=0)
    assert {c.name: c.dtype for c in numbers.columns}["value"] == "Float64"


def test_a_nan_time_is_missing_as_pandas_counts_it(tmp_path: Path, here: dict[str, Source]) -> None:
    pl.DataFrame({"t": [1.0, float("nan"), 3.0, None], "x": [1, 2, 3, 4]}).write_parquet(tmp_path / "nan.parquet")
    got = _rows(Plan(Source("nan", 1, tmp_path / "nan.parquet"), (JoinAsof(here["right"], "t", strategy="NEAREST"),)))
    assert [r["x"] for r in got] == [1, 3]


def test_a_pivot_over_two_index_columns_is_refused_past_join_max_rows_combinations(here: dict[str, Source]) -> None:
    """k has 5 values (one missing) and w 3: 15 rows, one per combination, as pandas' dropna=False;
    with c's 6 values (one missing), 90 cells, also counted against the limit."""
    assert engine.count(Plan(here["cells"], (Pivot(("k", "w"), "c", "v", "SUM", max_rows=90),))) == 15
    with pytest.raises(TooLarge, match=r"15 rows x 6 columns make 90 cells, more than the 89 .*setting join_max_rows"):
        engine.count(Plan(here["cells"], (Pivot(("k", "w"), "c", "v", "SUM", max_rows=89),)))
    with pytest.raises(TooLarge, match=r"make 15 combinations, a row each, more than the 14 .*setting join_max_rows"):
        engine.count(Plan(here["cells"], (Pivot(("k", "w"), "c", "v", "SUM", max_rows=14),)))


def test_join_asof_counts_the_left_rows_it_leaves_out_for_a_missing_time_in_meta(app: Api) -> None:
    """Rows of the left side without a time are left out of an as-of join and counted in meta.nullKeys,
    as a resample counts them; a join of rows that all have a time counts 0."""
    query = """{ dataset(id: "left") { joinAsof(right: "right", on: "t", by: ["g"]) {
      rows(limit: 1000) { success data meta { nullKeys rowCount } } } } }"""
    rows = app.data(query)["dataset"]["joinAsof"]["rows"]
    assert rows["success"], rows
    left = pl.read_csv(io.BytesIO(LEFT))
    missing = left.filter(pl.col("t").is_null()).height
    assert missing > 0
    assert rows["meta"]["nullKeys"] == missing
    assert rows["meta"]["rowCount"] == left.height - missing
    filtered = """{ dataset(id: "left") { filter(where: [{column: "t", op: NOT_NULL}]) {
      joinAsof(right: "right", on: "t", by: ["g"]) { rows(limit: 1) { success meta { nullKeys } } } } } }"""
    assert app.data(filtered)["dataset"]["filter"]["joinAsof"]["rows"]["meta"]["nullKeys"] == 0
