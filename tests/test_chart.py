"""chart: Vega-Lite specs whose inline values are the numbers pandas and numpy give on the shared data."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient
from support import DATA, Api, make_settings

from server.app import create_app

RESULT = "chart(spec: $spec, cache: $cache) { success error { code message } data meta { rowCount } }"
CHART = f"query($id: ID!, $spec: ChartInput!, $cache: CacheMode) {{ dataset(id: $id) {{ {RESULT} }} }}"
FILTERED = CHART.replace(RESULT, f'filter(where: [{{column: "time", op: EQ, value: "Dinner"}}]) {{ {RESULT} }}')
NOTHING = CHART.replace(RESULT, f'filter(where: [{{column: "tip", op: GT, value: 1000}}]) {{ {RESULT} }}')
FILES = ("tips.csv", "titanic.csv", "penguins.csv", "taxis.csv")
TYPES = {"quantitative", "nominal", "ordinal", "temporal"}
MARKS = {"bar", "line", "point", "rule", "tick"}
PANDAS_FN = {"MEAN": "mean", "SUM": "sum", "MEDIAN": "median", "MAX": "max", "STD": "std", "COUNT": "count",
             "N_UNIQUE": "nunique"}  # fmt: skip


def _app(tmp_path: Path, **overrides: Any) -> Iterator[Api]:
    """A real app with the shared files uploaded once (charts only read, so tests can share it)."""
    settings = make_settings(tmp_path, **overrides)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        for file in FILES:
            assert api.upload_ok(DATA / file) == file.removesuffix(".csv")
        yield api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the whole module (instead of conftest's one per test): uploads happen once."""
    yield from _app(tmp_path_factory.mktemp("chart"))


@pytest.fixture(scope="module")
def small_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The app with room for 50 chart points."""
    yield from _app(tmp_path_factory.mktemp("chart-small"), chart_max_points=50)


def _answer(api: Api, dataset_id: str, query: str = CHART, cache: str = "USE", **spec: Any) -> dict[str, Any]:
    body = api.query(query, {"id": dataset_id, "spec": spec, "cache": cache})
    assert "errors" not in body, body["errors"]
    frame = body["data"]["dataset"]
    answer: dict[str, Any] = frame["filter"]["chart"] if "filter" in frame else frame["chart"]
    return answer


def _chart(api: Api, dataset_id: str, query: str = CHART, cache: str = "USE", **spec: Any) -> dict[str, Any]:
    """The spec of a chart that must succeed, checked to be a well-formed Vega-Lite spec."""
    answer = _answer(api, dataset_id, query, cache, **spec)
    assert answer["success"], answer["error"]
    vega: dict[str, Any] = answer["data"]
    _assert_vega_lite(vega)
    assert answer["meta"]["rowCount"] == len(vega["data"]["values"])
    return vega


def _field(channel: dict[str, Any]) -> str:
    return re.sub(r"\\(.)", r"\1", channel["field"])  # Vega-Lite escapes . [ ] in field names


def _assert_vega_lite(spec: dict[str, Any]) -> None:
    """$schema, a title, inline values, a mark (or layers of marks), and every encoded field a key
    of the values, typed; the whole JSON with no NaN."""
    assert spec["$schema"] == "https://vega.github.io/schema/vega-lite/v6.json"
    assert isinstance(spec["title"], str) and spec["title"]
    json.dumps(spec, allow_nan=False)
    values = spec["data"]["values"]
    keys = {k for row in values for k in row}
    assert ("mark" in spec) != ("layer" in spec)
    views = spec.get("layer", [spec])
    for view in views:
        assert view["mark"]["type"] in MARKS
        encoding = {**spec.get("encoding", {}), **view.get("encoding", {})}
        assert {"x", "y"} & set(encoding)
        for name, channels in encoding.items():
            for channel in channels if isinstance(channels, list) else [channels]:
                if values:
                    assert _field(channel) in keys, (name, channel, keys)
                if name in ("x2", "y2"):
                    assert "type" not in channel
                else:
                    assert channel["type"] in TYPES, (name, channel)
    meta = spec["usermeta"]
    assert meta["points"] == len(values) <= meta["totalPoints"]
    assert meta["truncated"] == (meta["points"] < meta["totalPoints"])


def _by(values: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, Any]]:
    return {tuple(row[k] for k in keys) if len(keys) > 1 else row[keys[0]]: row for row in values}


def test_bar_of_mean_tip_by_day_matches_pandas(api: Api) -> None:
    spec = _chart(api, "tips", kind="BAR", x="day", y="tip")
    expected = pd.read_csv(DATA / "tips.csv").groupby("day")["tip"].mean()
    assert spec["mark"]["type"] == "bar"
    assert spec["encoding"]["x"] == {"field": "day", "type": "nominal", "title": "day"}
    assert spec["encoding"]["y"]["field"] == "tip_mean" and spec["encoding"]["y"]["type"] == "quantitative"
    assert [r["day"] for r in spec["data"]["values"]] == sorted(expected.index)
    for row in spec["data"]["values"]:
        assert row["tip_mean"] == pytest.approx(expected[row["day"]], rel=1e-12)
    assert spec["usermeta"] == {"truncated": False, "points": 4, "totalPoints": 4}


@pytest.mark.parametrize("fn", list(PANDAS_FN))
def test_bar_by_day_and_sex_matches_pandas_for_each_aggregate(api: Api, fn: str) -> None:
    spec = _chart(api, "tips", kind="BAR", x="day", y="tip", color="sex", aggregate=fn)
    expected = pd.read_csv(DATA / "tips.csv").groupby(["day", "sex"])["tip"].agg(PANDAS_FN[fn])
    values = spec["data"]["values"]
    assert [(r["day"], r["sex"]) for r in values] == sorted(expected.index)
    for row in values:
        assert row[f"tip_{fn.lower()}"] == pytest.approx(expected[(row["day"], row["sex"])], rel=1e-12)
    assert spec["encoding"]["color"]["field"] == spec["encoding"]["xOffset"]["field"] == "sex"


def test_bar_without_y_counts_rows_with_missing_x_a_group_of_its_own_last(api: Api) -> None:
    spec = _chart(api, "titanic", kind="BAR", x="deck")
    counts = pd.read_csv(DATA / "titanic.csv")["deck"].value_counts(dropna=False)
    values = spec["data"]["values"]
    assert [r["deck"] for r in values] == [*sorted(counts.index.dropna()), None]
    assert {r["deck"]: r["count"] for r in values} == {(None if pd.isna(k) else k): int(v) for k, v in counts.items()}
    assert spec["title"] == "count of rows by deck"


def test_chart_draws_the_frame_it_is_asked_on(api: Api) -> None:
    spec = _chart(api, "tips", FILTERED, kind="BAR", x="size", y="total_bill", aggregate="MAX")
    tips = pd.read_csv(DATA / "tips.csv")
    expected = tips[tips["time"] == "Dinner"].groupby("size")["total_bill"].max()
    assert {r["size"]: r["total_bill_max"] for r in spec["data"]["values"]} == expected.to_dict()
    assert spec["encoding"]["x"]["type"] == "ordinal"  # one band per party size


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "BAR", "x": "day", "y": "tip", "color": "sex"},
        {"kind": "LINE", "x": "size"},
        {"kind": "SCATTER", "x": "total_bill", "y": "tip"},
        {"kind": "HISTOGRAM", "x": "tip", "color": "day"},
        {"kind": "BOX", "x": "day", "y": "tip"},
        {"kind": "BOX", "x": "tip"},
    ],
)
def test_a_frame_with_no_rows_charts_as_no_values(api: Api, spec: dict[str, Any]) -> None:
    vega = _chart(api, "tips", NOTHING, **spec)
    assert vega["data"]["values"] == []
    assert vega["usermeta"] == {"truncated": False, "points": 0, "totalPoints": 0}


def test_bar_over_max_points_keeps_the_largest_bars(small_api: Api) -> None:
    spec = _chart(small_api, "taxis", kind="BAR", x="pickup_zone", y="fare", aggregate="SUM")
    sums = pd.read_csv(DATA / "taxis.csv").groupby("pickup_zone", dropna=False)["fare"].sum()
    values = spec["data"]["values"]
    assert spec["usermeta"] == {"truncated": True, "points": 50, "totalPoints": len(sums)}
    assert sorted(r["fare_sum"] for r in values) == pytest.approx(sorted(sums.nlargest(50)))
    zones = [r["pickup_zone"] for r in values]
    assert zones == sorted(zones, key=lambda z: (z is None, z or ""))  # by x, the missing zone last


def test_line_over_max_points_is_thinned_in_time_order(small_api: Api) -> None:
    spec = _chart(small_api, "taxis", kind="LINE", x="pickup", y="fare", color="color")
    taxis = pd.read_csv(DATA / "taxis.csv")
    means = taxis.groupby(["pickup", "color"])["fare"].mean()
    values = spec["data"]["values"]
    assert spec["encoding"]["x"]["type"] == "temporal"
    assert spec["usermeta"]["totalPoints"] == len(means) and 40 <= len(values) <= 50
    assert [r["pickup"] for r in values] == sorted(r["pickup"] for r in values)
    assert {r["color"] for r in values} == {"green", "yellow"}
    for row in values:  # each kept point is the true mean at its time, the time as ISO text
        assert row["fare_mean"] == pytest.approx(means[(row["pickup"].replace("T", " "), row["color"])])


def test_line_over_dates_with_dotted_names_and_missing_values(api: Api) -> None:
    content = b"day,amount.usd,kind\n2024-01-02,1.5,a\n2024-01-01,2,a\n2024-01-01,4,b\n,9,a\n2024-01-02,NaN,b\n"
    dataset_id = api.upload_ok(content, "sales.csv")
    spec = _chart(api, dataset_id, kind="LINE", x="day", y="amount.usd", aggregate="SUM")
    assert spec["encoding"]["y"]["field"] == "amount\\.usd_sum"  # else Vega-Lite reads amount, then usd_sum
    # A missing day has no place on a time axis; a missing amount adds nothing, as in pandas.
    assert spec["data"]["values"] == [
        {"day": "2024-01-01", "amount.usd_sum": 6.0},
        {"day": "2024-01-02", "amount.usd_sum": 1.5},
    ]


@pytest.mark.parametrize(
    ("file", "column", "bins"),
    [("tips.csv", "total_bill", 10), ("tips.csv", "tip", None), ("titanic.csv", "age", 7), ("tips.csv", "size", 3)],
)
def test_histogram_counts_and_edges_match_numpy(api: Api, file: str, column: str, bins: int | None) -> None:
    spec = _chart(api, file.removesuffix(".csv"), kind="HISTOGRAM", x=column, bins=bins)
    counts, edges = np.histogram(pd.read_csv(DATA / file)[column].dropna(), bins=bins or 20)
    values = spec["data"]["values"]
    assert [r["count"] for r in values] == counts.tolist()
    assert [r["bin_start"] for r in values] == edges[:-1].tolist()
    assert [r["bin_end"] for r in values] == edges[1:].tolist()
    assert spec["encoding"]["x"]["bin"] == {"binned": True} and spec["encoding"]["x2"]["field"] == "bin_end"


def test_histogram_with_color_gives_each_color_every_bin(api: Api) -> None:
    spec = _chart(api, "tips", kind="HISTOGRAM", x="tip", color="sex", bins=8)
    tips = pd.read_csv(DATA / "tips.csv")
    _, edges = np.histogram(tips["tip"], bins=8)
    values = spec["data"]["values"]
    assert len(values) == 16
    for sex in ("Female", "Male"):
        counts, _ = np.histogram(tips.loc[tips["sex"] == sex, "tip"], bins=edges)
        assert [r["count"] for r in values if r["sex"] == sex] == counts.tolist()


def test_histogram_puts_values_on_rounded_edges_where_numpy_does(api: Api) -> None:
    # 0.3 * 10 rounds up to just over 3, but the edge 3 * 0.1 is just over 0.3: 0.3 is in the third bin.
    dataset_id = api.upload_ok(b"v\n0\n0.3\n0.7\n1\n", "edges.csv")
    values = _chart(api, dataset_id, kind="HISTOGRAM", x="v", bins=10)["data"]["values"]
    counts, edges = np.histogram([0, 0.3, 0.7, 1], bins=10)
    assert [r["count"] for r in values] == counts.tolist() and counts[2] == counts[6] == 1
    assert [r["bin_start"] for r in values] == edges[:-1].tolist()


def test_histogram_of_one_repeated_value_has_numpy_unit_range(api: Api) -> None:
    dataset_id = api.upload_ok(b"v\n3\n3\n\n3\n", "flat.csv")
    values = _chart(api, dataset_id, kind="HISTOGRAM", x="v", bins=2)["data"]["values"]
    assert values == [{"bin_start": 2.5, "bin_end": 3.0, "count": 0}, {"bin_start": 3.0, "bin_end": 3.5, "count": 3}]


def _five_numbers(series: pd.Series) -> list[float]:
    return [series.min(), *series.quantile([0.25, 0.5, 0.75]).tolist(), series.max()]


def test_box_per_day_has_pandas_quartiles(api: Api) -> None:
    spec = _chart(api, "tips", kind="BOX", x="day", y="tip")
    tips = pd.read_csv(DATA / "tips.csv")
    values = spec["data"]["values"]
    assert [r["day"] for r in values] == sorted(tips["day"].unique())
    for row in values:
        tip = tips.loc[tips["day"] == row["day"], "tip"]
        got = [row[k] for k in ("min", "p25", "median", "p75", "max")]
        assert got == pytest.approx(_five_numbers(tip), rel=1e-12) and row["count"] == len(tip)
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rule", "bar", "tick"]


def test_box_without_y_is_one_box_of_x_per_color_skipping_missing_values(api: Api) -> None:
    spec = _chart(api, "penguins", kind="BOX", x="body_mass_g", color="sex")
    penguins = pd.read_csv(DATA / "penguins.csv")
    values = _by(spec["data"]["values"], "sex")
    assert list(values) == ["FEMALE", "MALE", None]  # missing sex is a box of its own, last
    for sex, row in values.items():
        mass = penguins.loc[penguins["sex"].isna() if sex is None else penguins["sex"] == sex, "body_mass_g"].dropna()
        assert [row[k] for k in ("min", "p25", "median", "p75", "max")] == pytest.approx(_five_numbers(mass))
    assert spec["layer"][1]["encoding"]["x"]["field"] == "p25" and spec["encoding"]["y"]["field"] == "sex"
    one = _chart(api, "penguins", kind="BOX", x="body_mass_g")["data"]["values"]
    assert len(one) == 1 and one[0]["median"] == penguins["body_mass_g"].median()


def test_scatter_over_max_points_is_a_stable_sample_of_real_rows(small_api: Api) -> None:
    spec = _chart(small_api, "taxis", kind="SCATTER", x="distance", y="tip", color="payment")
    again = _chart(small_api, "taxis", cache="BYPASS", kind="SCATTER", x="distance", y="tip", color="payment")
    taxis = pd.read_csv(DATA / "taxis.csv")
    rows = {(r.distance, r.tip, None if pd.isna(r.payment) else r.payment) for r in taxis.itertuples()}
    values = spec["data"]["values"]
    assert spec["usermeta"] == {"truncated": True, "points": 50, "totalPoints": len(taxis)}
    assert all((r["distance"], r["tip"], r["payment"]) in rows for r in values)
    assert values == again["data"]["values"]
    first = list(zip(taxis["distance"].head(50), taxis["tip"].head(50), strict=True))
    assert [(r["distance"], r["tip"]) for r in values] != first  # a sample, not the first rows
    assert spec["mark"]["type"] == "point" and spec["encoding"]["color"]["type"] == "nominal"


def test_scatter_under_max_points_keeps_every_row_with_both_values(api: Api) -> None:
    spec = _chart(api, "titanic", kind="SCATTER", x="age", y="fare")
    titanic = pd.read_csv(DATA / "titanic.csv").dropna(subset=["age", "fare"])
    assert [(r["age"], r["fare"]) for r in spec["data"]["values"]] == list(
        zip(titanic["age"], titanic["fare"], strict=True)
    )
    assert spec["usermeta"]["truncated"] is False


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"kind": "BAR", "x": "day", "y": "sex", "aggregate": "SUM"}, '"sex"'),
        ({"kind": "LINE", "x": "day", "y": "smoker", "aggregate": "MAX"}, '"smoker"'),
        ({"kind": "BAR", "x": "day", "aggregate": "MEAN"}, "y column"),
        ({"kind": "BAR", "x": "weekday"}, '"weekday"'),
        ({"kind": "BAR", "x": "day", "color": "gender"}, '"gender"'),
        ({"kind": "HISTOGRAM", "x": "day"}, '"day"'),
        ({"kind": "HISTOGRAM", "x": "tip", "y": "size"}, "leave y out"),
        ({"kind": "HISTOGRAM", "x": "tip", "bins": 0}, "bins"),
        ({"kind": "HISTOGRAM", "x": "tip", "bins": 10_000_000}, "bins"),
        ({"kind": "SCATTER", "x": "tip"}, "y column"),
        ({"kind": "SCATTER", "x": "day", "y": "tip"}, '"day"'),
        ({"kind": "BOX", "x": "day", "y": "time"}, '"time"'),
        ({"kind": "BOX", "x": "day"}, '"day"'),
        ({"kind": "BAR", "x": "day", "bins": 5}, "bins"),
        ({"kind": "SCATTER", "x": "tip", "y": "size", "aggregate": "MEAN"}, "aggregate"),
    ],
)
def test_bad_chart_inputs_are_problems_that_say_what_is_wrong(api: Api, spec: dict[str, Any], needle: str) -> None:
    answer = _answer(api, "tips", **spec)
    assert answer["success"] is False and answer["data"] is None
    assert answer["error"]["code"] == "BAD_INPUT"
    assert needle in answer["error"]["message"]


def test_bins_above_max_points_are_refused_with_the_limit(small_api: Api) -> None:
    answer = _answer(small_api, "tips", kind="HISTOGRAM", x="tip", bins=51)
    assert answer["error"] == {"code": "BAD_INPUT", "message": "chart: bins must be between 1 and 50, got 51."}
