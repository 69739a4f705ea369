"""`chart`: a Vega-Lite v6 spec of a plan's result, its values computed here and carried inline.

Each kind is one lazy query, collected once, whose result is already the few values the chart
draws: BAR and LINE aggregate y per x (and color), SCATTER samples rows, HISTOGRAM counts rows in
equal-width bins, BOX gives the five-number summary per category. No spec carries more than
`max_points` values; `usermeta` says how many there were before any were left out.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from datagraph.errors import BadInput
from engine._columns import check_columns, dtype_name
from engine._ops import collect, sql_errors
from engine._plan import AGG_FNS, Aggregation, Plan, aggregate_expr, build

__all__ = ["CHART_KINDS", "DEFAULT_BINS", "MAX_BINS", "VEGA_LITE_SCHEMA", "chart"]

CHART_KINDS = ("BAR", "LINE", "SCATTER", "HISTOGRAM", "BOX")
VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
DEFAULT_BINS = 20
MAX_BINS = 1000
_SEED = 20240131  # fixed, so the same data always gives the same scatter sample
_NUMERIC_FNS = {"SUM", "MEAN", "MEDIAN", "STD", "VAR"}
_VALUE_FNS = {"MIN", "MAX", "FIRST", "LAST"}  # the aggregate has the column's own type
# Internal column names start with a control character no uploaded header carries.
_TOTAL, _ROW, _V, _LO, _HI, _BIN, _N = (f"\x1f{n}" for n in ("total", "row", "v", "lo", "hi", "bin", "n"))


@dataclass(frozen=True, slots=True)
class _Drawn:
    """One chart's inline values and how they are drawn (a `mark`, or `layer`s sharing `encoding`)."""

    values: list[dict[str, Any]]
    total: int  # values before any were left out for max_points
    title: str
    encoding: dict[str, Any]
    mark: dict[str, Any] | None = None
    layer: list[dict[str, Any]] | None = None


@sql_errors
def chart(
    plan: Plan,
    *,
    kind: str,
    x: str,
    y: str | None = None,
    color: str | None = None,
    aggregate: str | None = None,
    bins: int | None = None,
    max_points: int = 5000,
) -> dict[str, Any]:
    """A Vega-Lite v6 spec for the plan's result, values inline, at most `max_points` of them."""
    if kind not in CHART_KINDS:
        raise BadInput(f'chart: unknown kind "{kind}"; use one of {", ".join(CHART_KINDS)}.')
    if max_points < 1:
        raise BadInput("chart: max_points must be at least 1.")
    frame, schema = build(plan)
    used = [c for c in (x, y, color) if c is not None]
    check_columns(used, schema, "chart")
    for name in used:
        if _role(schema[name]) is None:
            raise BadInput(f'chart: column "{name}" ({dtype_name(schema[name])}) cannot be charted.')
    if bins is not None and kind != "HISTOGRAM":
        raise BadInput(f"chart: bins applies to HISTOGRAM only, not {kind}; leave it out.")
    if aggregate is not None and kind not in ("BAR", "LINE"):
        raise BadInput(f"chart: aggregate applies to BAR and LINE only, not {kind}; leave it out.")
    # NaN is a missing value here, as in pandas: it has no place on an axis and is no category.
    frame = frame.with_columns(pl.col(c).fill_nan(None) for c in set(used) if schema[c].is_float())
    if kind in ("BAR", "LINE"):
        drawn = _bar_or_line(frame, schema, kind, x, y, color, aggregate, max_points)
    elif kind == "SCATTER":
        drawn = _scatter(frame, schema, x, y, color, max_points)
    elif kind == "HISTOGRAM":
        drawn = _histogram(frame, schema, x, y, color, bins, max_points)
    else:
        drawn = _box(frame, schema, x, y, color, max_points)
    spec: dict[str, Any] = {"$schema": VEGA_LITE_SCHEMA, "title": drawn.title, "data": {"values": drawn.values}}
    spec.update({"mark": drawn.mark} if drawn.layer is None else {"layer": drawn.layer})
    spec["encoding"] = drawn.encoding
    spec["usermeta"] = {
        "truncated": len(drawn.values) < drawn.total,
        "points": len(drawn.values),
        "totalPoints": drawn.total,
    }
    return spec


def _role(dtype: pl.DataType) -> str | None:
    """number, time or category; None for what a chart cannot show (lists, structs, durations, ...)."""
    if dtype.is_numeric() and dtype != pl.Boolean:
        return "number"
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        return "time"
    if dtype in (pl.String, pl.Categorical, pl.Boolean) or isinstance(dtype, pl.Enum):
        return "category"
    return None


def _axis_type(kind: str, dtype: pl.DataType) -> str:
    """The Vega-Lite type of x: LINE runs along numbers and time; BAR and BOX have one band per value."""
    role = _role(dtype)
    if role == "time":
        return "ordinal" if kind == "BOX" else "temporal"
    if role == "number":
        return "quantitative" if kind in ("LINE", "SCATTER") else "ordinal"
    return "nominal"


def _bar_or_line(
    frame: pl.LazyFrame,
    schema: Mapping[str, pl.DataType],
    kind: str,
    x: str,
    y: str | None,
    color: str | None,
    aggregate: str | None,
    max_points: int,
) -> _Drawn:
    """y aggregated per x (and color), sorted by x. A BAR keeps its `max_points` largest bars;
    a LINE keeps every k-th point of each line."""
    keys = _distinct([x, color])
    x_type = _axis_type(kind, schema[x])
    if x_type in ("quantitative", "temporal"):  # no place on a continuous axis for a missing x
        frame = frame.filter(pl.col(x).is_not_null())
    fn, expr, name, value_type, label = _measure(schema, kind, y, aggregate, taken=keys)
    grouped = (
        frame.group_by(keys, maintain_order=fn in ("FIRST", "LAST"))  # first/last in file order
        .agg(expr)
        .with_columns(pl.len().alias(_TOTAL))
    )
    if kind == "BAR":
        order = [name, *keys]
        kept = grouped.sort(order, descending=[True] + [False] * len(keys), nulls_last=True, maintain_order=True)
        kept = kept.head(max_points)
    else:
        every = pl.max_horizontal((pl.len() + max_points - 1) // max_points, 1)
        kept = grouped.sort(keys[::-1], nulls_last=True, maintain_order=True).with_row_index(_ROW)
        kept = kept.filter(pl.col(_ROW) % every == 0).drop(_ROW)
    values, total = _run(kept.sort(keys, nulls_last=True, maintain_order=True))
    encoding = {"x": _channel(x, x_type, x), "y": _channel(name, value_type, label)}
    if color is not None:
        encoding["color"] = _channel(color, "nominal", color)
        if kind == "BAR":  # bars side by side: stacked means or maxima would add up to nonsense
            encoding["xOffset"] = _channel(color, "nominal")
    mark = {"type": "bar", "tooltip": True} if kind == "BAR" else {"type": "line", "point": True, "tooltip": True}
    title = f"{label} by {x}" + (f" and {color}" if color is not None and color != x else "")
    return _Drawn(values, total, title, encoding, mark=mark)


def _measure(
    schema: Mapping[str, pl.DataType], kind: str, y: str | None, aggregate: str | None, taken: list[str]
) -> tuple[str, pl.Expr, str, str, str]:
    """What a BAR or LINE plots: (fn, expression, field, Vega-Lite type, axis title). Without y it
    counts rows; with y the default is MEAN for numbers and COUNT (non-missing values) otherwise."""
    if aggregate is not None and aggregate not in AGG_FNS:
        raise BadInput(f'chart: unknown aggregate "{aggregate}"; use one of {", ".join(AGG_FNS)}.')
    if y is None:
        if aggregate not in (None, "COUNT"):
            raise BadInput(f"chart: {aggregate} needs a y column to aggregate; give y, or use COUNT to count rows.")
        name = _free("count", taken)
        return "COUNT", pl.len().alias(name), name, "quantitative", "count of rows"
    dtype = schema[y]
    role = _role(dtype)
    fn = aggregate or ("MEAN" if role == "number" else "COUNT")
    if fn in _NUMERIC_FNS and role != "number":
        raise BadInput(f'chart: {fn} needs a numeric y column; "{y}" is {dtype_name(dtype)}.')
    if fn in _VALUE_FNS and role == "category":
        raise BadInput(
            f'chart: {fn} of "{y}" ({dtype_name(dtype)}) is not a number or a date a {kind} can plot;'
            " use COUNT or N_UNIQUE."
        )
    name = _free(f"{y}_{fn.lower()}", taken)
    value_type = "temporal" if fn in _VALUE_FNS and role == "time" else "quantitative"
    return fn, aggregate_expr(Aggregation(y, fn, alias=name), dtype), name, value_type, f"{fn.lower()} of {y}"


def _scatter(
    frame: pl.LazyFrame, schema: Mapping[str, pl.DataType], x: str, y: str | None, color: str | None, max_points: int
) -> _Drawn:
    """Rows with both x and y, in their order; over `max_points` of them, a seeded uniform sample."""
    if y is None:
        raise BadInput("chart: SCATTER needs a y column as well as x (numbers or dates).")
    for name in (x, y):
        if _role(schema[name]) not in ("number", "time"):
            raise BadInput(
                f'chart: SCATTER needs numbers or dates on both axes; "{name}" is {dtype_name(schema[name])}.'
                " Use BAR or BOX to compare categories."
            )
    points = (
        frame.select(_distinct([x, y, color]))
        .filter(pl.col(x).is_not_null(), pl.col(y).is_not_null())
        .with_row_index(_ROW)
        .with_columns(pl.len().alias(_TOTAL))
        .filter(pl.col(_ROW).shuffle(seed=_SEED) < max_points)  # a random subset of positions, order kept
        .drop(_ROW)
    )
    values, total = _run(points)
    encoding = {
        "x": _channel(x, _axis_type("SCATTER", schema[x]), x),
        "y": _channel(y, _axis_type("SCATTER", schema[y]), y),
    }
    if color is not None:
        encoding["color"] = _channel(color, _axis_type("SCATTER", schema[color]), color)
    return _Drawn(values, total, f"{y} against {x}", encoding, mark={"type": "point", "tooltip": True})


def _histogram(
    frame: pl.LazyFrame,
    schema: Mapping[str, pl.DataType],
    x: str,
    y: str | None,
    color: str | None,
    bins: int | None,
    max_points: int,
) -> _Drawn:
    """Rows per equal-width bin of x between its min and max, with numpy.histogram's edges and
    rule (each bin holds its left edge, the last also its right). With color, every color has
    every bin; over `max_points`, the colors with the most rows are kept."""
    if y is not None:
        raise BadInput("chart: HISTOGRAM counts the rows in each bin of x; leave y out (BAR aggregates a y per x).")
    if _role(schema[x]) != "number":
        raise BadInput(f'chart: HISTOGRAM needs a numeric x column; "{x}" is {dtype_name(schema[x])}.')
    limit = min(MAX_BINS, max_points)
    if bins is not None and not 1 <= bins <= limit:
        raise BadInput(f"chart: bins must be between 1 and {limit}, got {bins}.")
    n_bins = bins if bins is not None else min(DEFAULT_BINS, limit)
    groups = _distinct([color])
    v, lo, hi, index = pl.col(_V), pl.col(_LO), pl.col(_HI), pl.col(_BIN)
    low, high = v.min(), v.max()
    width = (hi - lo) / n_bins

    def edge(i: pl.Expr) -> pl.Expr:  # as numpy.linspace: i * step + start, the last edge exactly the max
        return pl.when(i == n_bins).then(hi).otherwise(i.cast(pl.Float64) * width + lo)

    counts = (
        frame.select(pl.col(x).cast(pl.Float64).alias(_V), *groups)
        .filter(v.is_finite())  # a missing or infinite value is in no bin
        .with_columns(  # one value everywhere: numpy widens an empty range to half a unit either side
            pl.when(low == high).then(low - 0.5).otherwise(low).alias(_LO),
            pl.when(low == high).then(high + 0.5).otherwise(high).alias(_HI),
        )
        .with_columns(((v - lo) / (hi - lo) * n_bins).floor().cast(pl.Int64).clip(0, n_bins - 1).alias(_BIN))
        # Float rounding can put a value one bin off its edges; numpy corrects the same way.
        .with_columns(pl.when(v < edge(index)).then(index - 1).otherwise(index).alias(_BIN))
        .with_columns(
            pl.when((v >= edge(index + 1)) & (index < n_bins - 1)).then(index + 1).otherwise(index).alias(_BIN)
        )
        .group_by([*groups, _BIN])
        .agg(pl.len().alias(_N), lo.first(), hi.first())
    )
    if color is not None:
        totals = counts.group_by(color).agg(pl.col(_N).sum().alias(_ROW)).with_columns(pl.len().alias(_TOTAL))
        kept = totals.sort([_ROW, color], descending=[True, False], nulls_last=True, maintain_order=True)
        counts = counts.join(kept.head(max_points // n_bins), on=color, how="inner", nulls_equal=True)
    (found,) = collect(counts)
    start, end, count = (_free(n, groups) for n in ("bin_start", "bin_end", "count"))
    values: list[dict[str, Any]] = []
    total = 0
    if found.height:
        bottom, top = found[_LO][0], found[_HI][0]
        step = (top - bottom) / n_bins
        edges = [i * step + bottom for i in range(n_bins)] + [top]
        got = {(None if color is None else r[color], r[_BIN]): r[_N] for r in found.iter_rows(named=True)}
        series = sorted({c for c, _ in got}, key=lambda c: (c is None, 0 if c is None else c))
        for c in series:
            for i in range(n_bins):
                values.append({start: edges[i], end: edges[i + 1], count: got.get((c, i), 0)} | _color(color, c))
        total = n_bins * (1 if color is None else found[_TOTAL][0])
    encoding = {
        "x": _channel(start, "quantitative", x, bin={"binned": True}),
        "x2": {"field": _escape(end)},
        "y": _channel(count, "quantitative", "rows"),
    }
    if color is not None:
        encoding["color"] = _channel(color, "nominal", color)
    return _Drawn(
        [{k: _plain(value) for k, value in row.items()} for row in values],
        total,
        f"rows per bin of {x} ({n_bins} bins)",
        encoding,
        mark={"type": "bar", "tooltip": True},
    )


def _box(
    frame: pl.LazyFrame, schema: Mapping[str, pl.DataType], x: str, y: str | None, color: str | None, max_points: int
) -> _Drawn:
    """min, p25, median, p75 and max (quartiles interpolated linearly, as pandas) of y per x (and
    color), drawn upright; without y, of x, drawn lying (one box, or one per color). Over
    `max_points` boxes, the ones with the most values are kept."""
    measure, category = (x, color) if y is None else (y, x)
    if _role(schema[measure]) != "number":
        hint = " To compare categories, give the numbers as y and the category as x." if y is None else ""
        raise BadInput(f'chart: BOX needs a numeric column; "{measure}" is {dtype_name(schema[measure])}.{hint}')
    along, across = ("x", "y") if y is None else ("y", "x")
    keys = _distinct([category, color])
    names = {n: _free(n, keys) for n in ("count", "min", "p25", "median", "p75", "max")}
    m = pl.col(measure).cast(pl.Float64)
    stats = [
        m.count().alias(names["count"]),
        m.min().alias(names["min"]),
        m.quantile(0.25, "linear").alias(names["p25"]),
        m.quantile(0.5, "linear").alias(names["median"]),
        m.quantile(0.75, "linear").alias(names["p75"]),
        m.max().alias(names["max"]),
    ]
    boxes = frame.group_by(keys).agg(stats) if keys else frame.select(stats)
    boxes = boxes.filter(pl.col(names["count"]) > 0).with_columns(pl.len().alias(_TOTAL))  # no values, no box
    if keys:
        order = [names["count"], *keys]
        boxes = boxes.sort(order, descending=[True] + [False] * len(keys), nulls_last=True, maintain_order=True)
        boxes = boxes.head(max_points).sort(keys, nulls_last=True, maintain_order=True)
    values, total = _run(boxes)
    encoding: dict[str, Any] = {}
    if category is not None:
        encoding[across] = _channel(category, _axis_type("BOX", schema[category]), category)
    if color is not None:
        encoding["color"] = _channel(color, "nominal", color)
        if color != category:
            encoding[f"{across}Offset"] = _channel(color, "nominal")
    m2 = f"{along}2"

    tooltip = [_channel(c, "nominal") for c in keys] + [_channel(n, "quantitative", s) for s, n in names.items()]

    def span(low: str, high: str | None) -> dict[str, Any]:
        ends = {along: _channel(names[low], "quantitative", measure)}
        return ends if high is None else ends | {m2: {"field": _escape(names[high])}}

    layer = [  # whiskers from min to max, the box from p25 to p75, a white tick at the median
        {"mark": {"type": "rule"}, "encoding": span("min", "max")},
        {"mark": {"type": "bar"}, "encoding": span("p25", "p75") | {"tooltip": tooltip}},
        {"mark": {"type": "tick", "color": "white"}, "encoding": span("median", None)},
    ]
    title = f"{measure} by {category}" if category is not None else f"distribution of {measure}"
    return _Drawn(values, total, title, encoding, layer=layer)


def _run(query: pl.LazyFrame) -> tuple[list[dict[str, Any]], int]:
    """Collect the query once; its records as plain JSON values, and the `_TOTAL` they came from."""
    (found,) = collect(query)
    total = int(found[_TOTAL][0]) if found.height else 0
    records = found.drop(_TOTAL).to_dicts()
    return [{k: _plain(v) for k, v in row.items()} for row in records], total


def _plain(value: Any) -> Any:
    """A JSON value: dates and times as ISO text, NaN and infinities as null, decimals as floats."""
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _channel(field: str, vl_type: str, title: str | None = None, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"field": _escape(field), "type": vl_type}
    if title is not None:
        out["title"] = title
    return out | more


def _escape(field: str) -> str:
    """Vega-Lite reads `.` and `[` in a field as nested access; a column named `a.b` needs `a\\.b`."""
    for char in "\\.[]":
        field = field.replace(char, "\\" + char)
    return field


def _color(color: str | None, value: Any) -> dict[str, Any]:
    return {} if color is None else {color: value}


def _distinct(names: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n is not None))


def _free(name: str, taken: Iterable[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... when a column of the chart already has that name."""
    used = set(taken)
    found, n = name, 1
    while found in used:
        n += 1
        found = f"{name}_{n}"
    return found
