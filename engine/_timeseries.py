"""Time series steps: `WindowStep` (rolling, cumulative, shifted and ranked columns) and `Resample`
(group rows into time periods), each the numbers pandas gives (docs/queries.md, "Time series").

Each step is written once, as the Polars statements a recipe script shows; `apply_*` runs those
same statements, so a recipe's script and the server build the same frame. Every value that comes
from a user reaches a statement as the `repr` of a checked Python value (`py`), never as code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from datagraph.errors import BadInput
from engine._columns import check_columns, dtype_name
from engine._pysource import call, col, py


class Aggregation(Protocol):
    """`engine._plan.Aggregation`, as far as a resample reads it."""

    @property
    def column(self) -> str: ...

    @property
    def fn(self) -> str: ...

    @property
    def alias(self) -> str | None: ...

    @property
    def output(self) -> str: ...


# `engine._plan.aggregate_expr`: checks an aggregation against its column's type (BadInput when wrong).
CheckAggregation = Callable[[Any, pl.DataType], object]

__all__ = [
    "WINDOW_FNS",
    "Period",
    "Resample",
    "WindowSpec",
    "WindowStep",
    "apply_resample",
    "apply_window",
    "joins_itself",
    "parse_period",
    "resample_statements",
    "timeseries_json",
    "timeseries_key",
    "timeseries_script",
    "window_statements",
]

WINDOW_FNS = (
    "ROLLING_MEAN", "ROLLING_SUM", "ROLLING_MIN", "ROLLING_MAX", "ROLLING_STD",
    "CUM_SUM", "CUM_MIN", "CUM_MAX", "CUM_COUNT", "LAG", "LEAD", "DIFF", "PCT_CHANGE", "RANK", "ROW_NUMBER",
)  # fmt: skip
_ROLLING = {"ROLLING_MEAN", "ROLLING_SUM", "ROLLING_MIN", "ROLLING_MAX", "ROLLING_STD"}
_NUMERIC = _ROLLING | {"CUM_SUM", "DIFF", "PCT_CHANGE"}
_ORDERED = {"CUM_MIN", "CUM_MAX"}  # numbers, dates or timestamps
_SHIFTED = {"LAG", "LEAD", "DIFF", "PCT_CHANGE"}
_DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One output column of a `WindowStep` step (the GraphQL `WindowInput`)."""

    column: str
    fn: str
    alias: str | None = None
    size: int | None = None
    period: str | None = None
    min_periods: int | None = None
    offset: int = 1
    by: tuple[str, ...] = ()
    order_by: str | None = None

    @property
    def output(self) -> str:
        return self.alias or f"{self.column}_{self.fn.lower()}"


@dataclass(frozen=True, slots=True)
class WindowStep:
    """Add one column per spec; rows keep their order."""

    specs: tuple[WindowSpec, ...]


@dataclass(frozen=True, slots=True)
class Resample:
    """One row per `by` keys and period of `every` on the time column `on`; sorted by `by` then time."""

    on: str
    every: str
    by: tuple[str, ...]
    aggregations: tuple[Aggregation, ...]


@dataclass(frozen=True, slots=True)
class Period:
    """A parsed period: a fixed length in microseconds, or a number of calendar months."""

    text: str
    micros: int = 0
    months: int = 0

    @property
    def polars(self) -> str:
        """The fixed length as a Polars duration string."""
        return f"{self.micros // 1_000_000}s"


# Pandas-like and Polars-like unit names; "M" (pandas' month end) is refused as ambiguous with minutes.
_FIXED_UNITS = {"s": 1, "S": 1, "sec": 1, "m": 60, "min": 60, "T": 60, "h": 3600, "H": 3600, "d": 86_400, "D": 86_400,
                "w": 604_800}  # fmt: skip
_MONTH_UNITS = {"mo": 1, "MS": 1, "y": 12, "YS": 12, "AS": 12}
_PERIOD = re.compile(r"\s*(\d{1,6})?\s*([A-Za-z]{1,3})\s*")
_PERIOD_HELP = 'a count and a unit: "30s", "15m", "1h", "7d", "2w", "1mo" or "1y" (pandas\' "15min", "1D", "MS", "YS")'


def parse_period(text: str, where: str, *, fixed_only: bool = False) -> Period:
    """`text` as a `Period`, or `BadInput` naming `where` (the argument) and what to write instead."""
    match = _PERIOD.fullmatch(text) if isinstance(text, str) else None
    count = int(match.group(1) or 1) if match else 0
    unit = match.group(2) if match else ""
    if match is None or count < 1 or (unit not in _FIXED_UNITS and unit not in _MONTH_UNITS):
        hint = ' ("M" is ambiguous: write "1mo" for a month or "1m" for a minute)' if unit == "M" else ""
        shown = str(text)[:40]
        raise BadInput(f'{where}: the period "{shown}" does not parse{hint}; use {_PERIOD_HELP}.')
    if unit in _MONTH_UNITS:
        if fixed_only:
            raise BadInput(
                f'{where}: the period "{text}" is in months or years; a rolling window needs a fixed length'
                ' (seconds, minutes, hours, days or weeks: "30d" for about a month).'
            )
        return Period(text, months=count * _MONTH_UNITS[unit])
    return Period(text, micros=count * _FIXED_UNITS[unit] * 1_000_000)


def _is_temporal(dtype: pl.DataType) -> bool:
    return dtype == pl.Date or isinstance(dtype, pl.Datetime)


def _is_number(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() and dtype != pl.Boolean


def _run(frame: pl.LazyFrame, statements: list[str]) -> pl.LazyFrame:
    """Run `frame = ...` statements (made here from checked values, user text only as literals)."""
    scope: dict[str, Any] = {"pl": pl, "frame": frame, "__builtins__": {}}
    for statement in statements:
        if statement.startswith("#"):  # a comment for the recipe's reader
            continue
        target, _, expression = statement.partition(" = ")
        assert target == "frame", statement
        scope["frame"] = eval(expression, scope)  # noqa: S307 - our own text; user values are repr'd literals
    result: pl.LazyFrame = scope["frame"]
    return result


def _free_name(schema: Mapping[str, Any], base: str) -> str:
    name = base
    while name in schema:
        name += "_"
    return name


# --- window ---------------------------------------------------------------------------------------


def _check_spec(spec: WindowSpec, schema: Mapping[str, pl.DataType]) -> Period | None:
    if spec.fn not in WINDOW_FNS:
        raise BadInput(f'window: unknown fn "{spec.fn}"; use one of {", ".join(WINDOW_FNS)}.')
    check_columns([spec.column], schema, "window column")
    check_columns(spec.by, schema, "window by")
    if spec.order_by is not None:
        check_columns([spec.order_by], schema, "window orderBy")
    dtype = schema[spec.column]
    what = f'window: {spec.fn} of "{spec.column}"'
    if spec.fn in _NUMERIC and not _is_number(dtype):
        raise BadInput(f"{what} needs a numeric column; {spec.column!r} is {dtype_name(dtype)}.")
    if spec.fn in _ORDERED and not (_is_number(dtype) or _is_temporal(dtype)):
        raise BadInput(f"{what} needs numbers, dates or timestamps; {spec.column!r} is {dtype_name(dtype)}.")
    if spec.fn == "RANK" and not (_is_number(dtype) or _is_temporal(dtype) or dtype == pl.String):
        raise BadInput(f"{what} needs numbers, dates, timestamps or text; {spec.column!r} is {dtype_name(dtype)}.")
    if spec.fn in _SHIFTED and spec.offset < 1:
        raise BadInput(f"{what}: offset must be 1 or more (got {spec.offset}).")
    if spec.fn not in _ROLLING:
        if spec.size is not None or spec.period is not None or spec.min_periods is not None:
            raise BadInput(f"{what}: size, period and minPeriods apply to ROLLING_* fns only.")
        return None
    if (spec.size is None) == (spec.period is None):
        raise BadInput(f'{what} needs either size (a row count) or period (a duration like "7d"), not both.')
    if spec.size is not None:
        if spec.size < 1:
            raise BadInput(f"{what}: size must be 1 or more (got {spec.size}).")
        if spec.min_periods is not None and not 1 <= spec.min_periods <= spec.size:
            raise BadInput(f"{what}: minPeriods must be between 1 and size ({spec.size}), got {spec.min_periods}.")
        return None
    period = parse_period(spec.period or "", f"{what}, period", fixed_only=True)
    if spec.order_by is None or not _is_temporal(schema[spec.order_by]):
        found = "" if spec.order_by is None else f'; "{spec.order_by}" is {dtype_name(schema[spec.order_by])}'
        raise BadInput(f"{what}: a period window needs orderBy, a date or timestamp column{found}.")
    if spec.min_periods is not None and spec.min_periods < 1:
        raise BadInput(f"{what}: minPeriods must be 1 or more, got {spec.min_periods}.")
    return period


def _over(expr: str, by: tuple[str, ...] | list[str]) -> str:
    return f"{expr}.over({py(list(by))})" if by else expr


def _spec_expr(spec: WindowSpec, period: Period | None, schema: Mapping[str, pl.DataType]) -> str:
    c = col(spec.column)
    x = f"{c}.cast(pl.Float64)"
    fn, off = spec.fn, int(spec.offset)  # int(): only ever a number reaches the statement
    if fn in _ROLLING and period is None:
        size = int(spec.size or 1)
        name = fn.removeprefix("ROLLING_").lower()
        minimum = int(spec.min_periods) if spec.min_periods is not None else size
        return _over(f"{x}.rolling_{name}({size}, min_samples={minimum})", spec.by)
    plain = {
        "CUM_SUM": f"{c}.cum_sum()",
        "CUM_MIN": f"{c}.cum_min()",
        "CUM_MAX": f"{c}.cum_max()",
        "CUM_COUNT": f"{c}.cum_count()",  # non-missing values so far
        "LAG": f"{c}.shift({off})",
        "LEAD": f"{c}.shift({-off})",
        "DIFF": f"{x}.diff({off})",
        "PCT_CHANGE": f"({x} / {x}.shift({off}) - 1)",  # no filling of missing values
        "RANK": f"{c}.rank('min')",
        "ROW_NUMBER": "pl.int_range(1, pl.len() + 1, dtype=pl.UInt32)",
    }
    return _over(plain[fn], spec.by)


def _period_statements(
    spec: WindowSpec, period: Period, schema: Mapping[str, pl.DataType], temp: str, *, join: bool
) -> tuple[list[str], str, list[str]]:
    """A rolling fn over (t - period, t], as pandas counts it: rows of the same time as this one are
    in its window only up to this row. Polars' window takes every row of time t, so the window is
    the rows strictly inside (t - period, t) plus a running total over the rows of time t so far.
    Returns the statements that make its helper columns (named from `temp`), the expression of the
    result over them, and the helper columns to drop."""
    order = spec.order_by
    assert order is not None
    time = col(order) if schema[order] != pl.Date else f"{col(order)}.cast(pl.Datetime('us'))"
    k = f"{temp}_k"  # the time, as a column: an expression inside `over` would be evaluated per partition
    key = col(k)
    tie = py([*spec.by, order])
    x = f"{col(spec.column)}.cast(pl.Float64)"
    minimum = int(spec.min_periods) if spec.min_periods is not None else 1
    n, s, q, m = (f"{temp}_{part}" for part in "nsqm")
    parts = {n: f"{x}.is_not_null().cast(pl.Int64)"}  # values in the window, missing ones not counted
    if spec.fn not in ("ROLLING_MIN", "ROLLING_MAX"):
        parts[s] = f"{x}.fill_null(0)"
    if spec.fn == "ROLLING_STD":
        parts[q] = f"({x}.fill_null(0) ** 2)"
    # The running totals over the rows of one time. With `join`, made only for the rows whose time occurs
    # more than once and joined back by row (on a large frame, a group-by over by and time on every row
    # costs more than the window itself); else on every row (a row alone at its time is its own total).
    # A frame joined with itself reads its input twice, so a plan joins at most once: n such windows
    # read it 2^n times (12 window steps on 2,400 rows passed a minute; tests/test_timeseries.py).
    r, tied = f"{temp}_r", {name: f"{temp}_t{name[-1]}" for name in (*parts, m)}
    running = [f"{col(name)}.cum_sum().over({tie}).alias({tied[name]!r})" for name in parts]

    def so_far(name: str, alone: str) -> str:
        return f"pl.coalesce({col(tied[name])}, {alone})" if join else col(tied[name])

    totals = [
        f"({_over(f'{col(name)}.rolling_sum_by({key}, {period.polars!r}, closed={chr(39)}none{chr(39)})', spec.by)}"
        f".fill_null(0) + {so_far(name, col(name))}).alias({name!r})"
        for name in parts
    ]
    helpers = [k, *([r] if join else []), *parts, *(tied[name] for name in parts)]
    if spec.fn in ("ROLLING_MIN", "ROLLING_MAX"):
        fn = spec.fn.removeprefix("ROLLING_").lower()
        inside = _over(f"{x}.rolling_{fn}_by({key}, {period.polars!r}, closed='none')", spec.by)
        running.append(f"{x}.cum_{fn}().fill_null(strategy='forward').over({tie}).alias({tied[m]!r})")
        totals.append(f"pl.{fn}_horizontal({inside}, {so_far(m, x)}).alias({m!r})")
        helpers += [tied[m], m]
    made = call(
        "frame = frame.with_columns",
        [
            f"{time}.fill_null({time}.max()).alias({k!r})",  # missing times last; their results are null
            *(f"{e}.alias({name!r})" for name, e in parts.items()),
        ],
    )
    if join:
        statements = [
            f"frame = frame.with_row_index({r!r})",
            made,
            f"frame = frame.join(frame.filter({col(order)}.is_duplicated()).select({r!r}, {', '.join(running)}),"
            f" on={r!r}, how='left', maintain_order='left')",
        ]
    else:
        statements = [made, call("frame = frame.with_columns", running)]
    statements.append(call("frame = frame.with_columns", totals))
    values = {
        "ROLLING_SUM": col(s),
        "ROLLING_MEAN": f"{col(s)} / {col(n)}",
        "ROLLING_MIN": col(m),
        "ROLLING_MAX": col(m),
        "ROLLING_STD": f"pl.when({col(n)} > 1).then((({col(q)} - {col(s)} ** 2 / {col(n)}) / ({col(n)} - 1))"
        ".clip(lower_bound=0).sqrt())",
    }
    result = f"pl.when(({col(n)} >= {minimum}) & {col(order)}.is_not_null()).then({values[spec.fn]})"
    return statements, result, helpers


def joins_itself(step: WindowStep) -> bool:
    """Whether the step's statements join the frame with itself when allowed to (`join_ties`): it
    has a period window."""
    return any(spec.period is not None for spec in step.specs)


def window_statements(step: WindowStep, schema: Mapping[str, pl.DataType], *, join_ties: bool = False) -> list[str]:
    """The step as `frame = ...` statements; `BadInput` naming the argument that is wrong. `join_ties`:
    its first period window may join the frame with itself (the faster way on a large frame; allowed
    once in a plan, see `_period_statements`)."""
    if not step.specs:
        raise BadInput("window needs at least one spec.")
    periods = [_check_spec(spec, schema) for spec in step.specs]
    outputs = [s.output for s in step.specs]
    for name in outputs:
        if name in schema or outputs.count(name) > 1:
            raise BadInput(f'window: the output column "{name}" would appear twice; give the spec an alias.')
    taken = {*schema, *outputs}
    lines: list[str] = []
    # Period windows first, in the file's order: a window over (t - period, t) plus a running total over
    # the rows of time t needs no sort (the rows of one time keep the file's order), and sorting a large
    # frame and back costs more than the windows themselves.
    timed = [(n, s, p) for n, (s, p) in enumerate(zip(step.specs, periods, strict=True)) if p is not None]
    exprs: list[str] = []
    helpers: list[str] = []
    for number, spec, period in timed:
        temp = f"__w{number}"
        while any(f"{temp}_{part}" in taken for part in ("n", "s", "q", "m", "k", "r", "tn", "ts", "tq", "tm")):
            temp += "_"
        statements, result, made = _period_statements(spec, period, schema, temp, join=join_ties and not exprs)
        lines.append(
            f"# {spec.output!r}: {spec.fn} over ({spec.order_by!r} - {period.text!r}, {spec.order_by!r}];"
            " rows at the same time count up to this one, as in pandas."
        )
        lines.extend(statements)
        exprs.append(f"{result}.alias({spec.output!r})")
        helpers.extend(made)
    if timed:
        lines.append(call("frame = frame.with_columns", exprs))
        lines.append(f"frame = frame.drop({py(helpers)})")
    rest = [spec for spec, period in zip(step.specs, periods, strict=True) if period is None]
    orders = list(dict.fromkeys(s.order_by for s in rest))
    orders.sort(key=lambda o: o is not None)  # file order first: it needs no sort
    row = _free_name(dict.fromkeys(taken), "__row")
    sorted_ = any(o is not None for o in orders)
    if sorted_:
        lines.append(f"frame = frame.with_row_index({row!r})")
    for order in orders:
        if order is not None:  # ties (and missing times, last) keep the file's order
            lines.append(f"frame = frame.sort({py([order, row])}, nulls_last=True)")
        exprs = [f"{_spec_expr(spec, None, schema)}.alias({spec.output!r})" for spec in rest if spec.order_by == order]
        lines.append(call("frame = frame.with_columns", exprs))
    if sorted_:
        lines.append(f"frame = frame.sort({row!r}).drop({row!r})")
    done = [s.output for _, s, _ in timed] + [s.output for order in orders for s in rest if s.order_by == order]
    if done != outputs:  # the added columns in the order of the specs
        lines.append(f"frame = frame.select({py([*schema, *outputs])})")
    return lines


def apply_window(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], step: WindowStep, *, join_ties: bool = False
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    out = _run(frame, window_statements(step, schema, join_ties=join_ties))
    return out, dict(out.collect_schema())


# --- resample -------------------------------------------------------------------------------------

# Each aggregation fn as the method chain a script writes after `pl.col(...)`: `aggregate_expr`'s
# expressions as text (the recipe's group-by and pivot statements use it too).
AGGREGATE_METHODS = {
    "COUNT": ".count()",
    "SUM": ".sum()",
    "MEAN": ".mean()",
    "MEDIAN": ".median()",
    "MIN": ".min()",
    "MAX": ".max()",
    "STD": ".std(ddof=1)",
    "VAR": ".var(ddof=1)",
    "N_UNIQUE": ".drop_nulls().n_unique()",
    "FIRST": ".drop_nulls().first()",  # the first value that is not missing
    "LAST": ".drop_nulls().last()",
}


def _bucket(on: str, dtype: pl.DataType, period: Period, helper: str) -> list[str]:
    """Statements that put the start of each row's period in the column `helper`: periods of a fixed
    length count from midnight of the first day (pandas' origin "start_day"); months and years start
    on the first of a month."""
    time = col(on)
    zone = dtype.time_zone if isinstance(dtype, pl.Datetime) else None
    if zone is not None:  # periods follow the local clock
        time = f"{time}.dt.replace_time_zone(None)"
    h = col(helper)
    if period.months:
        n = period.months
        lines = [
            f"# Periods of {n} month(s), from the first month in the data; labelled by their first day.",
            call(
                "frame = frame.with_columns",
                [f"({time}.dt.year().cast(pl.Int64) * 12 + {time}.dt.month().cast(pl.Int64) - 1).alias({helper!r})"],
            ),
            *(
                [
                    call(
                        "frame = frame.with_columns",
                        [f"({h}.min() + ({h} - {h}.min()) // {n} * {n}).alias({helper!r})"],
                    )
                ]
                if n > 1
                else []
            ),
            call("frame = frame.with_columns", [f"pl.date({h} // 12, {h} % 12 + 1, 1).alias({helper!r})"]),
        ]
        label, whole_days = "pl.Date", True
    else:
        n = period.micros
        origin = f"({h}.min() // {_DAY_US:_} * {_DAY_US:_})"
        lines = [
            f"# Periods of {n:_} microseconds from midnight of the first day; labelled by their start.",
            call("frame = frame.with_columns", [f"{time}.cast(pl.Datetime('us')).cast(pl.Int64).alias({helper!r})"]),
            call("frame = frame.with_columns", [f"({origin} + ({h} - {origin}) // {n:_} * {n:_}).alias({helper!r})"]),
        ]
        label, whole_days = "pl.Int64", n % _DAY_US == 0
    casts = ["pl.Datetime('us')"] if label == "pl.Int64" else []  # microseconds become a timestamp
    if dtype == pl.Date and whole_days:
        casts.append("pl.Date")
    elif isinstance(dtype, pl.Datetime) and (dtype.time_unit != "us" or label == "pl.Date"):
        casts.append(f"pl.Datetime({dtype.time_unit!r})")
    expr = h + "".join(f".cast({c})" for c in casts)
    if zone is not None:
        expr = f"{expr}.dt.replace_time_zone({zone!r}, ambiguous='earliest', non_existent='null')"
    lines.append(call("frame = frame.with_columns", [f"{expr}.alias({helper!r})"]))
    return lines


def resample_statements(step: Resample, schema: Mapping[str, pl.DataType], check: CheckAggregation) -> list[str]:
    """The step as `frame = ...` statements; `BadInput` naming the argument that is wrong."""

    check_columns([step.on], schema, "resample on")
    check_columns(step.by, schema, "resample by")
    dtype = schema[step.on]
    if not _is_temporal(dtype):
        raise BadInput(
            f'resample: on "{step.on}" is {dtype_name(dtype)}; it needs a date or timestamp column'
            " (clean it with parseDates first)."
        )
    if step.on in step.by:
        raise BadInput(f'resample: "{step.on}" is the time column (on); leave it out of by.')
    period = parse_period(step.every, "resample every")
    if not step.aggregations:
        raise BadInput("resample needs at least one aggregation.")
    check_columns([a.column for a in step.aggregations], schema, "resample aggregations")
    for agg in step.aggregations:
        try:
            check(agg, schema[agg.column])  # BadInput for an unknown fn or a text column's SUM
        except BadInput as exc:
            raise BadInput(exc.message.replace("groupBy:", "resample aggregations:", 1)) from None
        if agg.fn in ("MIN", "MAX") and schema[agg.column].is_nested():  # Polars has no order on lists, structs
            raise BadInput(
                f'resample aggregations: {agg.fn} needs values with an order; "{agg.column}" is a'
                f" {dtype_name(schema[agg.column])} column."
            )
    names = [*step.by, step.on, *(a.output for a in step.aggregations)]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise BadInput(f'resample: the output column "{clash[0]}" would appear twice; give one an alias.')
    bucket = _free_name(schema, "__period")
    keys = [*step.by, bucket]
    ordered = any(a.fn in ("FIRST", "LAST") for a in step.aggregations)
    aggs = [f"{col(a.column)}{AGGREGATE_METHODS[a.fn]}.alias({a.output!r})" for a in step.aggregations]
    return [
        f"frame = frame.filter({col(step.on)}.is_not_null())",  # rows without a time are left out
        *_bucket(step.on, dtype, period, bucket),
        f"frame = frame.group_by({py(keys)}, maintain_order={ordered}).agg({', '.join(aggs)})",
        f"frame = frame.rename({py({bucket: step.on})}).select({py(names)})",
        f"frame = frame.sort({py([*step.by, step.on])}, nulls_last=True, maintain_order=True)",
    ]


def apply_resample(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], step: Resample, check: CheckAggregation
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    out = _run(frame, resample_statements(step, schema, check))
    return out, dict(out.collect_schema())


def timeseries_key(step: WindowStep | Resample) -> dict[str, Any]:
    """The step's part of a plan's cache key."""
    if isinstance(step, WindowStep):
        return {
            "window": [
                [s.column, s.fn, s.output, s.size, s.period, s.min_periods, s.offset, list(s.by), s.order_by]
                for s in step.specs
            ]
        }
    aggs = [[a.column, a.fn, a.output] for a in step.aggregations]
    return {"resample": [step.on, step.every, list(step.by), aggs]}


def timeseries_json(step: WindowStep | Resample) -> dict[str, Any]:
    """The step as the GraphQL `Step` input it came from (optional parts left out)."""
    if isinstance(step, Resample):
        aggregations = [
            {"column": a.column, "fn": a.fn, **({"alias": a.alias} if a.alias is not None else {})}
            for a in step.aggregations
        ]
        body: dict[str, Any] = {"on": step.on, "every": step.every, "aggregations": aggregations}
        return {"resample": {**body, **({"by": list(step.by)} if step.by else {})}}
    specs = []
    for s in step.specs:
        optional = {"alias": s.alias, "size": s.size, "period": s.period, "minPeriods": s.min_periods,
                    "by": list(s.by) or None, "orderBy": s.order_by}  # fmt: skip
        specs.append({"column": s.column, "fn": s.fn, "offset": s.offset,
                      **{k: v for k, v in optional.items() if v is not None}})  # fmt: skip
    return {"window": specs}


def timeseries_script(
    step: WindowStep | Resample,
    number: int,
    schema: Mapping[str, pl.DataType],
    check: CheckAggregation,
    *,
    join_ties: bool = False,
) -> list[str]:
    """The step as recipe script lines: a comment, then the statements the server runs."""
    if isinstance(step, Resample):
        head = (
            f"# Step {number}: resample {step.on!r} every {step.every!r}; rows without a time left out;"
            " sorted by the keys then time."
        )
        return [head, *resample_statements(step, schema, check)]
    head = f"# Step {number}: window, one added column per spec; rows keep their order."
    return [head, *window_statements(step, schema, join_ties=join_ties)]
