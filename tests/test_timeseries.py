"""window and resample (issue 21): every window fn and resample period checked against pandas (the
oracle) in-process on the taxis data and on generated events with missing values, ties and unsorted
times; then the wiring through GraphQL (Frame fields, pipeline(steps:), saveFrame, explain, the cache
key, meta.nullKeys), the recipe round trip, and every bad input as a BAD_INPUT naming the argument."""

from __future__ import annotations

import datetime as dt
import io
import math
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
import sqlalchemy as sa
import test_recipe
from support import DATA, Api, as_json, ingested, make_settings, serving

import engine
from connectors.pushdown import push_down
from engine import Aggregation, Plan, Resample, Source, WindowSpec, WindowStep
from engine._plan import build
from engine._timeseries import window_statements

# pandas' name of each period the tests use (fixed periods count from midnight of the first day).
PANDAS_PERIOD = {"1d": "1D", "7d": "7D", "6h": "6h", "90m": "90min", "1w": "7D", "2d": "2D", "12h": "12h",
                 "1mo": "MS", "3mo": "3MS", "1y": "YS", "1D": "1D", "15min": "15min", "MS": "MS"}  # fmt: skip
PANDAS_FN = {"COUNT": "count", "SUM": "sum", "MEAN": "mean", "MEDIAN": "median", "MIN": "min", "MAX": "max",
             "STD": "std", "VAR": "var", "N_UNIQUE": "nunique", "FIRST": "first", "LAST": "last"}  # fmt: skip


def _events_csv(rows: int = 400, seed: int = 21) -> bytes:
    """Events out of time order, many at the same time, with missing times, groups and values."""
    rng = random.Random(seed)
    start = pd.Timestamp("2024-01-30 00:00:00")
    lines = ["t,d,g,v,n,name"]
    for _ in range(rows):
        t = start + pd.Timedelta(hours=3 * rng.randrange(0, 8 * 75))  # about 75 days, every 3 hours
        t_text = "" if rng.random() < 0.06 else str(t)
        d_text = "" if rng.random() < 0.05 else str((t + pd.Timedelta(days=rng.randrange(0, 30))).date())
        g = rng.choice(["a", "b", "c", ""])
        v = "" if rng.random() < 0.12 else str(round(rng.gauss(10, 4), 2))
        n = "" if rng.random() < 0.1 else str(rng.randrange(-5, 20))
        name = rng.choice(["plum", "pear", "fig", "apple", ""])
        lines.append(f"{t_text},{d_text},{g},{v},{n},{name}")
    return ("\n".join(lines) + "\n").encode()


EVENTS = _events_csv()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return ingested(EVENTS, tmp_path_factory.mktemp("events"), "events")


def _pandas_events() -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(EVENTS), parse_dates=["t", "d"])


def _close(got: Any, want: Any) -> bool:
    if want is None or (isinstance(want, float) and not math.isfinite(want)) or want is pd.NaT:
        return got is None  # NaN and infinities reach a client as null
    if isinstance(want, pd.Timestamp):
        return bool(got == want.isoformat()) or bool(got == want.date().isoformat())
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return bool(got == want)


def _here(source: Source, step: engine.Step) -> list[dict[str, Any]]:
    found = engine.rows(Plan(source, (step,)), limit=100_000, offset=0)
    assert not found.truncated
    records: list[dict[str, Any]] = as_json(found.records)
    return records


def _spec(data: dict[str, Any]) -> WindowSpec:
    return WindowSpec(
        column=data["column"],
        fn=data["fn"],
        alias=data.get("alias"),
        size=data.get("size"),
        period=data.get("period"),
        min_periods=data.get("minPeriods"),
        offset=data.get("offset", 1),
        by=tuple(data.get("by", ())),
        order_by=data.get("orderBy"),
    )


def pandas_window(frame: pd.DataFrame, spec: dict[str, Any]) -> list[Any]:
    """The window's column as pandas computes it: sorted by orderBy (stably, missing last), grouped by
    `by` (missing keys a group), then put back in the frame's row order."""
    column, fn, by, order = spec["column"], spec["fn"], spec.get("by", []), spec.get("orderBy")
    offset = spec.get("offset", 1)
    data = frame.sort_values(order, kind="stable", na_position="last") if order else frame
    if fn.startswith("ROLLING_") and "period" in spec:
        out = pd.Series(float("nan"), index=frame.index)
        timed = data[data[order].notna()]
        parts = timed.groupby(by, dropna=False, sort=False) if by else [(None, timed)]
        for _, part in parts:
            rolling = part.rolling(PANDAS_PERIOD[spec["period"]], on=order, min_periods=spec.get("minPeriods", 1))
            out.loc[part.index] = getattr(rolling[column], fn.removeprefix("ROLLING_").lower())().to_numpy()
        return out.tolist()
    series: Any = data.groupby(by, dropna=False, sort=False)[column] if by else data[column]
    if fn.startswith("ROLLING_"):
        size = spec["size"]
        result = getattr(series.rolling(size, min_periods=spec.get("minPeriods", size)), fn[8:].lower())()
        if by:
            result = result.reset_index(level=list(range(len(by))), drop=True)
    elif fn == "CUM_COUNT":
        result = series.transform(lambda s: s.notna().cumsum()) if by else series.notna().cumsum()
    elif fn == "ROW_NUMBER":
        counted = (
            data.groupby(by, dropna=False, sort=False).cumcount() if by else pd.Series(range(len(data)), data.index)
        )
        result = counted + 1
    else:
        calls = {
            "CUM_SUM": lambda s: s.cumsum(),
            "CUM_MIN": lambda s: s.cummin(),
            "CUM_MAX": lambda s: s.cummax(),
            "LAG": lambda s: s.shift(offset),
            "LEAD": lambda s: s.shift(-offset),
            "DIFF": lambda s: s.diff(offset),
            "PCT_CHANGE": lambda s: s.pct_change(offset, fill_method=None),
            "RANK": lambda s: s.rank(method="min"),
        }
        result = calls[fn](series)
    return list(result.reindex(frame.index))


def _check_window(source: Source, frame: pd.DataFrame, specs: list[dict[str, Any]]) -> None:
    got = _here(source, WindowStep(tuple(_spec(s) for s in specs)))
    assert len(got) == len(frame)
    for spec in specs:
        output = spec.get("alias") or f"{spec['column']}_{spec['fn'].lower()}"
        want = pandas_window(frame, spec)
        mismatched = [
            (i, row[output], w) for i, (row, w) in enumerate(zip(got, want, strict=True)) if not _close(row[output], w)
        ]
        assert not mismatched, (spec, mismatched[:5])


# --- the oracle, in-process -----------------------------------------------------------------------

ROLLING = ["ROLLING_MEAN", "ROLLING_SUM", "ROLLING_MIN", "ROLLING_MAX", "ROLLING_STD"]
EVENT_SPECS: dict[str, list[dict[str, Any]]] = {
    "rolling rows by group in time order": [
        {"column": "v", "fn": fn, "size": 3, "minPeriods": 2, "by": ["g"], "orderBy": "t"} for fn in ROLLING
    ],
    "rolling rows in file order": [{"column": "n", "fn": fn, "size": 4} for fn in ROLLING],
    "rolling 2 days by group (ties, missing times)": [
        {"column": "v", "fn": fn, "period": "2d", "by": ["g"], "orderBy": "t"} for fn in ROLLING
    ],
    "rolling 12 hours, at least 3 values": [
        {"column": "n", "fn": fn, "period": "12h", "minPeriods": 3, "orderBy": "t"} for fn in ROLLING
    ],
    "rolling 7 days over a date column": [{"column": "v", "fn": "ROLLING_MEAN", "period": "7d", "orderBy": "d"}],
    "cumulative": [
        {"column": "v", "fn": "CUM_SUM", "by": ["g"], "orderBy": "t"},
        {"column": "n", "fn": "CUM_MIN", "orderBy": "t"},
        {"column": "v", "fn": "CUM_MAX"},
        {"column": "v", "fn": "CUM_COUNT", "by": ["g"]},
        {"column": "t", "fn": "CUM_MAX", "by": ["name"], "alias": "latest"},
    ],
    "shifted": [
        {"column": "v", "fn": "LAG", "offset": 2, "by": ["g"], "orderBy": "t"},
        {"column": "name", "fn": "LEAD", "orderBy": "d"},
        {"column": "n", "fn": "DIFF", "by": ["g"], "orderBy": "t"},
        {"column": "v", "fn": "DIFF", "offset": 3, "alias": "v_diff3"},
        {"column": "v", "fn": "PCT_CHANGE", "by": ["g"]},
        {"column": "n", "fn": "PCT_CHANGE", "offset": 2, "orderBy": "t"},
    ],
    "ranked and numbered": [
        {"column": "v", "fn": "RANK", "by": ["g"]},
        {"column": "n", "fn": "RANK", "orderBy": "t", "alias": "n_rank_t"},
        {"column": "name", "fn": "RANK", "by": ["g"], "alias": "name_rank"},
        {"column": "t", "fn": "RANK", "alias": "t_rank"},
        {"column": "v", "fn": "ROW_NUMBER", "by": ["g"], "orderBy": "t"},
        {"column": "n", "fn": "ROW_NUMBER"},
    ],
}


@pytest.mark.parametrize("label", list(EVENT_SPECS))
def test_every_window_fn_matches_pandas_with_nulls_ties_and_unsorted_times(events: Source, label: str) -> None:
    _check_window(events, _pandas_events(), EVENT_SPECS[label])


def test_added_columns_follow_the_specs_order(events: Source) -> None:
    specs = [("v", "RANK", None), ("v", "LAG", "t"), ("n", "CUM_SUM", None), ("n", "ROW_NUMBER", "d")]
    got = _here(events, WindowStep(tuple(WindowSpec(c, fn, order_by=o) for c, fn, o in specs)))
    assert list(got[0]) == ["t", "d", "g", "v", "n", "name", "v_rank", "v_lag", "n_cum_sum", "n_row_number"]


def test_windows_on_the_taxis_match_pandas(shared_data: dict[str, Source]) -> None:
    frame = pd.read_csv(DATA / "taxis.csv", parse_dates=["pickup", "dropoff"])
    specs = [
        {"column": "fare", "fn": "ROLLING_MEAN", "period": "1d", "by": ["payment"], "orderBy": "pickup"},
        {"column": "tip", "fn": "ROLLING_SUM", "size": 5, "by": ["color"], "orderBy": "pickup"},
        {"column": "total", "fn": "ROLLING_STD", "period": "7d", "orderBy": "pickup", "minPeriods": 3},
        {"column": "fare", "fn": "RANK", "by": ["color"]},
        {"column": "fare", "fn": "ROW_NUMBER", "by": ["payment"], "orderBy": "pickup"},
        {"column": "total", "fn": "PCT_CHANGE", "orderBy": "pickup"},
        {"column": "distance", "fn": "CUM_SUM", "by": ["pickup_borough"], "orderBy": "dropoff"},
    ]
    _check_window(shared_data["taxis"], frame, specs)


def pandas_resample(frame: pd.DataFrame, on: str, every: str, by: list[str], column: str) -> pd.DataFrame:
    """df.groupby([*by, pd.Grouper(key=on, freq=every)]).agg(...), empty periods left out, sorted by
    `by` then time (missing keys a group, last, as groupBy has them)."""
    grouper = pd.Grouper(key=on, freq=PANDAS_PERIOD[every])
    table = frame.groupby([*by, grouper], dropna=False)[column].agg([*PANDAS_FN.values(), "size"]).reset_index()
    table = table[table["size"] > 0]
    return table.sort_values([*by, on], na_position="last", kind="stable").reset_index(drop=True)


def _check_resample(source: Source, frame: pd.DataFrame, on: str, every: str, by: list[str], column: str) -> None:
    aggs = tuple(Aggregation(column, fn) for fn in PANDAS_FN)
    got = _here(source, Resample(on, every, tuple(by), aggs))
    want = pandas_resample(frame, on, every, by, column)
    assert len(got) == len(want), (every, by)
    assert list(got[0]) == [*by, on, *(f"{column}_{fn.lower()}" for fn in PANDAS_FN)]
    for row, (_, expected) in zip(got, want.iterrows(), strict=True):
        for key in [*by, on]:
            assert _close(row[key], expected[key]), (every, key, row, expected.to_dict())
        for fn, pandas_fn in PANDAS_FN.items():
            assert _close(row[f"{column}_{fn.lower()}"], expected[pandas_fn]), (every, fn, row, expected.to_dict())


@pytest.mark.parametrize("every", ["1d", "7d", "6h", "90m", "1w", "1mo", "3mo", "1y", "1D", "15min", "MS"])
@pytest.mark.parametrize("by", [[], ["g"]])
def test_resample_matches_pandas_grouper_with_nulls_ties_and_unsorted_times(
    events: Source, every: str, by: list[str]
) -> None:
    _check_resample(events, _pandas_events(), "t", every, by, "v")


@pytest.mark.parametrize("every", ["1d", "1w", "1mo"])
def test_resample_of_a_date_column_matches_pandas_and_keeps_dates(events: Source, every: str) -> None:
    _check_resample(events, _pandas_events(), "d", every, ["name"], "n")
    got = _here(events, Resample("d", every, (), (Aggregation("v", "COUNT"),)))
    assert all(len(r["d"]) == 10 for r in got)  # "2024-02-01": still dates


@pytest.mark.parametrize("every", ["1d", "1mo"])
def test_resample_of_zoned_times_across_a_clock_change_matches_pandas(tmp_path: Path, every: str) -> None:
    rng = random.Random(3)
    start = pd.Timestamp("2024-03-28", tz="Europe/Oslo")  # summer time begins on the 31st
    times = [start + pd.Timedelta(minutes=rng.randrange(0, 6 * 24 * 60)) for _ in range(300)]
    frame = pd.DataFrame({"t": times, "v": [rng.gauss(0, 1) for _ in times]})
    path = tmp_path / "zoned.parquet"
    zoned = pl.Series("t", [t.to_pydatetime() for t in times]).dt.convert_time_zone("Europe/Oslo")
    pl.DataFrame([zoned, pl.Series("v", frame["v"].to_list())]).write_parquet(path)
    _check_resample(Source("zoned", 1, path), frame, "t", every, [], "v")


def test_a_daily_resample_of_the_taxis_matches_pandas(shared_data: dict[str, Source]) -> None:
    frame = pd.read_csv(DATA / "taxis.csv", parse_dates=["pickup", "dropoff"])
    _check_resample(shared_data["taxis"], frame, "pickup", "1d", ["color"], "fare")
    _check_resample(shared_data["taxis"], frame, "dropoff", "6h", ["payment", "pickup_borough"], "tip")


# --- through GraphQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module (its tests only read, but for the saved frame): taxis and events."""
    with serving(make_settings(tmp_path_factory.mktemp("timeseries"))) as api:
        assert api.upload_ok(DATA / "taxis.csv") == "taxis"
        assert api.upload_ok(EVENTS, "events.csv") == "events"
        api.warm_workers()  # a worker's imports are charged to the fixture, not to the first test
        yield api


RESULT = "success data error { code message } meta { nullKeys truncated cacheKey rowCount }"
WINDOW = f"""query($d: ID!, $specs: [WindowInput!]!, $limit: Int = 10000) {{ dataset(id: $d) {{ window(specs: $specs) {{
  rows(limit: $limit) {{ {RESULT} }} }} }} }}"""
RESAMPLE = f"""query($d: ID!, $on: String!, $every: String!, $by: [String!], $aggs: [Aggregation!]!, $limit: Int) {{
  dataset(id: $d) {{ resample(on: $on, every: $every, by: $by, aggregations: $aggs) {{
  rows(limit: $limit) {{ {RESULT} }} }} }} }}"""
PIPELINE = f"""query($d: ID!, $steps: [Step!]!, $limit: Int = 10000) {{ dataset(id: $d) {{ pipeline(steps: $steps) {{
  rows(limit: $limit) {{ {RESULT} }} }} }} }}"""
SAVE = """mutation($d: ID!, $steps: [Step!]!, $n: String!) { saveFrame(dataset: $d, steps: $steps, name: $n) {
  success error { code message } dataset { id } job { status } } }"""
EXPLAIN = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  explain { success data error { code message } } } } }"""
COUNTS = "{ datasetCount }"

TAXI_SPECS = [
    {"column": "fare", "fn": "ROLLING_MEAN", "period": "7d", "by": ["payment"], "orderBy": "pickup"},
    {"column": "tip", "fn": "LAG", "offset": 2, "orderBy": "pickup", "alias": "tip_before"},
]
TAXI_RESAMPLE = {"on": "pickup", "every": "1d", "by": ["color"],
                 "aggregations": [{"column": "fare", "fn": "MEAN"}, {"column": "tip", "fn": "SUM", "alias": "tips"}]}  # fmt: skip


def _rows(api: Api, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    node: Any = api.data(query, variables)
    while "rows" not in node:
        (node,) = node.values()
    rows: dict[str, Any] = node["rows"]
    return rows


def test_window_as_a_frame_field_and_a_step_gives_the_engines_rows(app: Api, shared_data: dict[str, Source]) -> None:
    # 300 rows: the whole frame's numbers are checked in-process above; here, the wiring.
    field = _rows(app, WINDOW, {"d": "taxis", "specs": TAXI_SPECS, "limit": 300})
    step = _rows(app, PIPELINE, {"d": "taxis", "steps": [{"window": TAXI_SPECS}], "limit": 300})
    assert field["success"] and step["success"], (field["error"], step["error"])
    expected = _here(shared_data["taxis"], WindowStep(tuple(_spec(s) for s in TAXI_SPECS)))
    assert field["data"] == step["data"] == expected[:300] and field["meta"]["truncated"]
    assert list(field["data"][0])[-2:] == ["fare_rolling_mean", "tip_before"]
    assert field["meta"]["nullKeys"] == 0 and field["meta"]["cacheKey"] == step["meta"]["cacheKey"]
    other = _rows(app, WINDOW, {"d": "taxis", "specs": [{**TAXI_SPECS[0], "period": "6d"}], "limit": 300})
    assert other["meta"]["cacheKey"] != field["meta"]["cacheKey"]  # the period is part of the cache key


def test_resample_as_a_frame_field_and_a_step_gives_the_engines_rows(app: Api, shared_data: dict[str, Source]) -> None:
    variables = {"d": "taxis", "on": "pickup", "every": "1d", "by": ["color"], "aggs": TAXI_RESAMPLE["aggregations"]}
    field = _rows(app, RESAMPLE, {**variables, "limit": 10_000})
    step = _rows(app, PIPELINE, {"d": "taxis", "steps": [{"resample": TAXI_RESAMPLE}]})
    assert field["success"] and step["success"], (field["error"], step["error"])
    aggs = (Aggregation("fare", "MEAN"), Aggregation("tip", "SUM", "tips"))
    expected = _here(shared_data["taxis"], Resample("pickup", "1d", ("color",), aggs))
    assert field["data"] == step["data"] == expected
    assert list(expected[0]) == ["color", "pickup", "fare_mean", "tips"]
    capped = _rows(app, RESAMPLE, {**variables, "limit": 5})  # groups past the limit: capped as usual
    assert capped["data"] == expected[:5] and capped["meta"]["truncated"] is True


def test_rows_without_a_time_are_counted_in_meta(app: Api) -> None:
    missing = _pandas_events()["t"].isna().sum()
    assert missing > 0
    aggs = [{"column": "v", "fn": "COUNT"}]
    resampled = _rows(app, RESAMPLE, {"d": "events", "on": "t", "every": "1d", "aggs": aggs, "limit": 10_000})
    assert resampled["meta"]["nullKeys"] == missing
    assert sum(r["v_count"] for r in resampled["data"]) == _pandas_events()["v"][_pandas_events()["t"].notna()].count()
    windowed = _rows(
        app, WINDOW, {"d": "events", "specs": [{"column": "v", "fn": "ROLLING_SUM", "period": "1d", "orderBy": "t"}]}
    )
    assert windowed["meta"]["nullKeys"] == missing and windowed["meta"]["rowCount"] == len(_pandas_events())
    plain = _rows(app, WINDOW, {"d": "events", "specs": [{"column": "v", "fn": "CUM_SUM", "orderBy": "t"}]})
    assert plain["success"] and plain["meta"]["nullKeys"] is None  # no time key left out


def test_save_frame_of_a_pipeline_with_window_and_resample(app: Api) -> None:
    steps = [
        {"window": TAXI_SPECS},
        {"resample": {**TAXI_RESAMPLE, "aggregations": [{"column": "fare_rolling_mean", "fn": "MAX"}]}},
    ]
    payload = app.data(SAVE, {"d": "taxis", "steps": steps, "n": "weekly fares"})["saveFrame"]
    assert payload["success"], payload["error"]
    saved = _rows(app, PIPELINE, {"d": payload["dataset"]["id"], "steps": []})
    assert saved["data"] == _rows(app, PIPELINE, {"d": "taxis", "steps": steps})["data"]
    assert len(saved["data"]) > 10


def test_explain_shows_the_added_columns(app: Api) -> None:
    answer = app.data(EXPLAIN, {"d": "taxis", "steps": [{"window": TAXI_SPECS}]})["dataset"]["pipeline"]["explain"]
    assert answer["success"], answer["error"]
    assert [c["name"] for c in answer["data"]["columns"]][-2:] == ["fare_rolling_mean", "tip_before"]


def _window(**spec: Any) -> list[dict[str, Any]]:
    return [{"window": [{"column": "v", "fn": "ROLLING_MEAN", **spec}]}]


def _resample(**changes: Any) -> list[dict[str, Any]]:
    return [{"resample": {"on": "t", "every": "1d", "aggregations": [{"column": "v", "fn": "MEAN"}], **changes}}]


BAD = [
    (_window(period="7 dayz", orderBy="t"), ['period "7 dayz" does not parse']),
    (_window(period="1M", orderBy="t"), ["1M", '"1mo"']),
    (_window(period="0d", orderBy="t"), ['"0d"']),
    (_window(period="1mo", orderBy="t"), ['period "1mo"', "fixed length"]),
    (_window(period="7d"), ["needs orderBy"]),
    (_window(period="7d", orderBy="n"), ["orderBy", '"n" is']),
    (_window(size=3, period="7d", orderBy="t"), ["size", "period", "not both"]),
    (_window(), ["size", "period"]),
    (_window(size=0), ["size must be 1 or more"]),
    (_window(size=3, minPeriods=4), ["minPeriods"]),
    (_window(column="name"), ['"name"', "numeric"]),
    (_window(column="nope", size=2), ['window column: there is no column "nope"']),
    (_window(size=2, by=["nope"]), ['window by: there is no column "nope"']),
    (_window(size=2, orderBy="nope"), ['window orderBy: there is no column "nope"']),
    ([{"window": [{"column": "name", "fn": "CUM_SUM"}]}], ['"name"', "numeric"]),
    ([{"window": [{"column": "v", "fn": "LAG", "offset": 0}]}], ["offset must be 1 or more"]),
    ([{"window": [{"column": "v", "fn": "LAG", "size": 2}]}], ["size, period and minPeriods"]),
    ([{"window": [{"column": "v", "fn": "LAG", "alias": "n"}]}], ['"n" would appear twice', "alias"]),
    ([{"window": []}], ["at least one"]),
    (_resample(every="fortnight"), ["resample every", "fortnight", "does not parse"]),
    (_resample(every="1M"), ['"1mo"']),
    (_resample(on="name"), ['on "name"', "date or timestamp"]),
    (_resample(on="nope"), ['resample on: there is no column "nope"']),
    (_resample(by=["nope"]), ['resample by: there is no column "nope"']),
    (_resample(by=["t"]), ["leave it out of by"]),
    (_resample(aggregations=[{"column": "name", "fn": "SUM"}]), ["resample aggregations", '"name"']),
    (_resample(aggregations=[]), ["at least one aggregation"]),
    (_resample(aggregations=[{"column": "v", "fn": "MEAN", "alias": "t"}]), ['"t" would appear twice']),
]


@pytest.mark.parametrize(("steps", "named"), BAD, ids=[f"{i}-{next(iter(s[0]))}" for i, (s, _) in enumerate(BAD)])
def test_bad_input_is_a_problem_naming_the_argument_and_nothing_runs(
    app: Api, steps: list[dict[str, Any]], named: list[str]
) -> None:
    answer = _rows(app, PIPELINE, {"d": "events", "steps": steps})
    assert not answer["success"] and answer["error"]["code"] == "BAD_INPUT", answer
    message = answer["error"]["message"]
    assert all(part in message for part in named), message
    assert "Traceback" not in message and "polars" not in message.lower() and "/" not in message.split(". Columns")[0]
    before = app.data(COUNTS)["datasetCount"]
    saved = app.data(SAVE, {"d": "events", "steps": steps, "n": "never made"})["saveFrame"]
    assert not saved["success"] and saved["error"] == answer["error"]
    assert saved["job"]["status"] == "FAILED" and saved["dataset"] is None
    assert app.data(COUNTS)["datasetCount"] == before  # the failed job is recorded; no dataset is made


# --- recipes and linked tables --------------------------------------------------------------------

exports = test_recipe.exports  # the round trip's fixtures (they use this module's `app`)
scripts = test_recipe.scripts

RECIPE_CASES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "windows over events": (
        "events",
        [
            {
                "window": [
                    {**s, "alias": f"w{i}"} for i, s in enumerate(s for specs in EVENT_SPECS.values() for s in specs)
                ]
            }
        ],
    ),
    "resample every 90 minutes by group": ("events", _resample(every="90m", by=["g"])),
    "resample a date column by month": (
        "events",
        _resample(
            on="d",
            every="1mo",
            aggregations=[
                {"column": fn_column, "fn": fn}
                for fn_column, fn in [("v", "FIRST"), ("n", "SUM"), ("name", "N_UNIQUE")]
            ],
        ),
    ),
    "window then resample then window": (
        "taxis",
        [
            {"window": TAXI_SPECS},
            {"resample": {**TAXI_RESAMPLE, "aggregations": [{"column": "fare_rolling_mean", "fn": "MAX"}]}},
            {"window": [{"column": "fare_rolling_mean_max", "fn": "DIFF", "by": ["color"], "orderBy": "pickup"}]},
        ],
    ),
}


def test_window_and_resample_round_trip_through_their_recipe(
    app: Api, exports: Any, scripts: Any, tmp_path: Path
) -> None:
    for label, (dataset, steps) in RECIPE_CASES.items():
        variables = {"d": dataset, "steps": steps}
        recipe = test_recipe._check(app, exports, scripts, tmp_path, label, test_recipe.FRAME, variables)
        assert [next(iter(s)) for s in recipe["steps"]] == [next(iter(s)) for s in steps], label
        again = _rows(app, PIPELINE, {"d": dataset, "steps": recipe["steps"]})  # the steps run again
        assert again["data"] == _rows(app, PIPELINE, variables)["data"], label


RECIPE = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  recipe { success data error { code message } } } } }"""
RUN = """mutation($r: JSON!, $n: String!) { runRecipe(recipe: $r, name: $n) {
  success error { code message } dataset { id } } }"""


def test_run_recipe_with_window_and_resample_makes_the_frame(app: Api) -> None:
    steps = RECIPE_CASES["window then resample then window"][1]
    recipe = app.data(RECIPE, {"d": "taxis", "steps": steps})["dataset"]["pipeline"]["recipe"]
    assert recipe["success"], recipe["error"]
    made = app.data(RUN, {"r": {k: recipe["data"][k] for k in ("steps", "sources")}, "n": "recipe weeks"})["runRecipe"]
    assert made["success"], made["error"]
    rows = _rows(app, PIPELINE, {"d": made["dataset"]["id"], "steps": []})
    assert rows["data"] == _rows(app, PIPELINE, {"d": "taxis", "steps": steps})["data"]


WATCH = """subscription($d: ID!, $steps: [Step!]) { watch(dataset: $d, result: ROWS, limit: 3, steps: $steps) {
  success data error { code message } } }"""


def test_a_watch_answers_a_pipeline_with_window_and_resample(app: Api) -> None:
    steps = [{"window": TAXI_SPECS}, {"resample": TAXI_RESAMPLE}]
    with app.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json(
            {"id": "1", "type": "subscribe", "payload": {"query": WATCH, "variables": {"d": "taxis", "steps": steps}}}
        )
        first = ws.receive_json()
        ws.send_json({"id": "1", "type": "complete"})
    assert first["type"] == "next", first
    answer = first["payload"]["data"]["watch"]
    assert answer["success"], answer["error"]
    assert answer["data"] == _rows(app, PIPELINE, {"d": "taxis", "steps": steps, "limit": 3})["data"]


def test_hostile_names_stay_names(tmp_path: Path) -> None:
    hostile = test_recipe.HOSTILE  # a column name that is code
    path = tmp_path / "hostile.parquet"
    pl.DataFrame({hostile: [3.0, 1.0, 2.0], "t": [dt.datetime(2024, 1, d) for d in (3, 1, 2)]}).write_parquet(path)
    source = Source("hostile", 1, path)
    window = WindowStep((WindowSpec(hostile, "CUM_SUM", alias=f"{hostile}'", by=(hostile,), order_by="t"),))
    assert [r[f"{hostile}'"] for r in _here(source, window)] == [3.0, 1.0, 2.0]
    alias = "\nimport os; os.system('touch PWNED')  # "  # in the script's comment line, it stays a comment
    rolling = WindowStep((WindowSpec(hostile, "ROLLING_SUM", alias=alias, period=" 2d\n", order_by="t"),))
    assert [r[alias] for r in _here(source, rolling)] == [5.0, 1.0, 3.0]  # rows in file order
    assert all(
        line.startswith(("frame = ", "#", " ", ")"))
        for line in window_statements(rolling, {hostile: pl.Float64, "t": pl.Datetime()})
    )
    resampled = _here(source, Resample("t", "1d", (), (Aggregation(hostile, "SUM", alias=hostile),)))
    assert [r[hostile] for r in resampled] == [1.0, 2.0, 3.0]
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_a_linked_table_leaves_window_and_resample_to_polars() -> None:
    table = sa.Table("events", sa.MetaData(), sa.Column("t", sa.DateTime), sa.Column("v", sa.Float))
    steps = (
        engine.Select(("t", "v")),
        WindowStep((WindowSpec("v", "CUM_SUM"),)),
        Resample("t", "1d", (), (Aggregation("v", "SUM"),)),
    )
    for dialect in ("postgresql", "mysql", "sqlite"):
        pushed = push_down(table, steps, dialect)
        assert pushed.pushed == 1 and pushed.remaining == steps[1:]


def test_a_chain_of_period_windows_reads_its_input_at_most_twice(events: Source) -> None:
    """Every period window once joined the frame with itself, so n of them in a pipeline read the input
    2^n times (twelve passed a minute on 400 rows). Only the first joins now (the faster way for one
    window on a large frame), the others total the ties on every row; each still counts them."""
    spec = WindowSpec("v", "ROLLING_SUM", period="2d", by=("g",), order_by="t")
    chain = tuple(WindowStep((replace(spec, alias=f"w{i}"),)) for i in range(12))
    frame, _ = build(Plan(events, chain))
    assert frame.explain(optimized=False).count("SCAN") == 2, frame.explain(optimized=False)[:2000]
    rows = engine.rows(Plan(events, chain), limit=100_000, offset=0).records
    alone = _here(events, WindowStep((spec,)))
    assert [r["w0"] for r in rows] == [r["w11"] for r in rows] == [r["v_rolling_sum"] for r in alone]
