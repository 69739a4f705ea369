"""`Frame`: a lazy view that transforms chain on and result fields answer from.

Each transform returns a new `View` holding a longer `Plan`; nothing runs until a result field
(`rows`, `count`, `describe`, `export`) is selected. The nested form and `pipeline(steps:)` build
the same plan.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import strawberry
from strawberry.scalars import JSON

import engine
from datagraph.errors import BadInput
from engine import Plan
from gql.clean import CleanStepInput, to_clean
from gql.reshape import AsofStrategy, JoinAsofInput, UnpivotInput, to_join_asof, to_pivot, to_unpivot
from gql.results import Result, result
from gql.timeseries import WindowInput, to_resample, to_window
from resolvers import Options, dataset_sql, frames
from resolvers import datasets as ds
from resolvers import diff as diffs
from resolvers import recipe as recipes
from resolvers.context import Context

__all__ = [
    "CacheMode",
    "ChartInput",
    "ChartKind",
    "ConditionInput",
    "DiffTargetInput",
    "ExportFormat",
    "Frame",
    "JoinHow",
    "Op",
    "PivotInput",
    "SliceInput",
    "SortKeyInput",
    "StepInput",
    "View",
    "chart_spec",
    "count_steps",
    "pipeline_plan",
    "sql_pipeline_plan",
    "to_steps",
]


@strawberry.enum(description="Filter operators; conditions in one filter are ANDed.")
class Op(Enum):
    EQ = "EQ"
    NE = "NE"
    GT = "GT"
    GE = "GE"
    LT = "LT"
    LE = "LE"
    IN = "IN"
    NOT_IN = "NOT_IN"
    BETWEEN = "BETWEEN"
    CONTAINS = "CONTAINS"
    STARTS_WITH = "STARTS_WITH"
    ENDS_WITH = "ENDS_WITH"
    IS_NULL = "IS_NULL"
    NOT_NULL = "NOT_NULL"


@strawberry.enum(description="Aggregations for groupBy; SUM, MEAN, MEDIAN, STD and VAR need numbers.")
class AggFn(Enum):
    COUNT = "COUNT"
    SUM = "SUM"
    MEAN = "MEAN"
    MEDIAN = "MEDIAN"
    MIN = "MIN"
    MAX = "MAX"
    STD = "STD"
    VAR = "VAR"
    N_UNIQUE = "N_UNIQUE"
    FIRST = "FIRST"
    LAST = "LAST"


@strawberry.enum(description="File formats an export can be written in.")
class ExportFormat(Enum):
    CSV = "CSV"
    PARQUET = "PARQUET"
    XLSX = "XLSX"
    JSON = "JSON"


@strawberry.enum(description="USE answers from the cache when it can; REFRESH recomputes and stores; BYPASS neither.")
class CacheMode(Enum):
    USE = "USE"
    REFRESH = "REFRESH"
    BYPASS = "BYPASS"


@strawberry.enum(description="INNER keeps rows with a match on both sides; LEFT keeps every left row.")
class JoinHow(Enum):
    INNER = "INNER"
    LEFT = "LEFT"


@strawberry.enum(description="Chart kinds; each becomes a Vega-Lite mark.")
class ChartKind(Enum):
    BAR = "BAR"
    LINE = "LINE"
    SCATTER = "SCATTER"
    HISTOGRAM = "HISTOGRAM"
    BOX = "BOX"


@strawberry.input(
    name="ChartInput",
    description="x (and y) columns; color splits series; aggregate combines y per x (BAR, LINE); bins for HISTOGRAM.",
)
class ChartInput:
    kind: ChartKind
    x: str
    y: str | None = None
    color: str | None = None
    aggregate: AggFn | None = None
    bins: int | None = None


@strawberry.input(name="Condition", description="column op value; IN/NOT_IN take a list, BETWEEN [low, high].")
class ConditionInput:
    column: str
    op: Op
    value: JSON | None = None


@strawberry.input(name="SortKey")
class SortKeyInput:
    column: str
    descending: bool | None = False


@strawberry.input(name="SliceInput")
class SliceInput:
    offset: int | None = 0
    limit: int


@strawberry.input(name="Aggregation", description="The output column is alias, else <column>_<fn> in lower case.")
class AggregationInput:
    column: str
    fn: AggFn
    alias: str | None = None


@strawberry.input(name="GroupByInput")
class GroupByInput:
    by: list[str]
    aggregations: list[AggregationInput]


@strawberry.input(
    name="PivotInput",
    description="pandas.pivot_table(dropna=False): one row per index key, one column per value of `columns`.",
)
class PivotInput:
    index: list[str]
    columns: str
    values: str
    fn: AggFn | None = AggFn.FIRST


@strawberry.input(name="JoinInput", description="Join the dataset `right` on equal `on` columns.")
class JoinInput:
    right: strawberry.ID
    on: list[str]
    how: JoinHow | None = JoinHow.INNER


@strawberry.input(
    name="ResampleInput",
    description='Rows grouped by `by` and periods of `every` ("1d", "1h", "1mo") on the time column `on`.',
)
class ResampleInput:
    on: str
    every: str
    by: list[str] | None = None
    aggregations: list[AggregationInput]


@strawberry.input(name="Step", one_of=True, description="One transform, as data; a list of steps is a pipeline.")
class StepInput:
    filter: list[ConditionInput] | None = strawberry.UNSET
    select: list[str] | None = strawberry.UNSET
    sort: list[SortKeyInput] | None = strawberry.UNSET
    slice: SliceInput | None = strawberry.UNSET
    group_by: GroupByInput | None = strawberry.UNSET
    join: JoinInput | None = strawberry.UNSET
    clean: list[CleanStepInput] | None = strawberry.UNSET
    window: list[WindowInput] | None = strawberry.UNSET
    resample: ResampleInput | None = strawberry.UNSET
    join_asof: JoinAsofInput | None = strawberry.UNSET
    pivot: PivotInput | None = strawberry.UNSET
    unpivot: UnpivotInput | None = strawberry.UNSET


@strawberry.input(
    name="DiffTarget",
    one_of=True,
    description="What a frame is compared against (before): a version of its dataset, another dataset, or"
    " steps over its dataset.",
)
class DiffTargetInput:
    version: int | None = strawberry.UNSET
    dataset: strawberry.ID | None = strawberry.UNSET
    steps: list[StepInput] | None = strawberry.UNSET


def _diff_target(ctx: Context, against: DiffTargetInput) -> diffs.DiffTarget:
    if isinstance(against.version, int):
        return diffs.DiffTarget(version=against.version)
    if isinstance(against.dataset, str):
        return diffs.DiffTarget(dataset=str(against.dataset))
    steps = against.steps if isinstance(against.steps, list) else []
    if engine.too_many_steps(count_steps(steps), ctx.settings.max_steps) is not None:
        return diffs.DiffTarget(steps=[], step_count=count_steps(steps))  # refused before converting
    return diffs.DiffTarget(steps=to_steps(ctx, steps), step_count=count_steps(steps))


def pipeline_plan(ctx: Context, dataset_id: str, steps: list[StepInput] | None) -> Plan:
    """The plan of `steps` over the dataset's current version (BAD_INPUT past max_steps)."""
    return _steps_over(ctx, steps, lambda: ds.dataset_plan(ctx, ds.require_dataset(ctx, dataset_id)))


def sql_pipeline_plan(ctx: Context, query: str, steps: list[StepInput] | None) -> Plan:
    """The plan of `steps` over the result of SQL over datasets (BAD_INPUT past max_steps)."""
    return _steps_over(ctx, steps, lambda: dataset_sql.dataset_sql_plan(ctx, query))


def _steps_over(ctx: Context, steps: list[StepInput] | None, root: Callable[[], Plan]) -> Plan:
    """`steps` after the plan `root` makes, counted against max_steps before anything is built."""
    refused = engine.too_many_steps(count_steps(steps or []), ctx.settings.max_steps)
    if refused is not None:
        raise BadInput(refused)
    return root().then(*to_steps(ctx, steps or []))


def count_steps(steps: list[StepInput]) -> int:
    """How many steps a pipeline has against max_steps, counted before any is converted (a clean step
    weighs as many as its steps, a window as many as its specs)."""
    listed = (s.clean if isinstance(s.clean, list) else s.window if isinstance(s.window, list) else [] for s in steps)
    return sum(max(1, len(inner)) for inner in listed)


def chart_spec(spec: ChartInput) -> dict[str, Any]:
    """A chart input as the plain spec the engine takes."""
    return {
        "kind": spec.kind.value,
        "x": spec.x,
        "y": spec.y,
        "color": spec.color,
        "aggregate": spec.aggregate.value if spec.aggregate else None,
        "bins": spec.bins,
    }


def _filter(where: list[ConditionInput]) -> engine.Filter:
    return engine.Filter(tuple(engine.Condition(c.column, c.op.value, c.value) for c in where))


def _sort(by: list[SortKeyInput]) -> engine.Sort:
    return engine.Sort(tuple(engine.SortKey(k.column, bool(k.descending)) for k in by))


def _slice(offset: int | None, limit: int) -> engine.Slice:
    return engine.Slice(offset or 0, limit)


def _group_by(by: list[str], aggregations: list[AggregationInput]) -> engine.GroupBy:
    aggs = tuple(engine.Aggregation(a.column, a.fn.value, a.alias) for a in aggregations)
    return engine.GroupBy(tuple(by), aggs)


def _join(ctx: Context, right: str, on: list[str], how: JoinHow | None) -> engine.Join:
    return ds.join_step(ctx, right, on, (how or JoinHow.INNER).value)


def to_steps(ctx: Context, steps: list[StepInput]) -> list[engine.Step]:
    out: list[engine.Step] = []
    for s in steps:  # @oneOf: exactly one field of each step is set; the others are UNSET
        if isinstance(s.filter, list):
            out.append(_filter(s.filter))
        elif isinstance(s.select, list):
            out.append(engine.Select(tuple(s.select)))
        elif isinstance(s.sort, list):
            out.append(_sort(s.sort))
        elif isinstance(s.slice, SliceInput):
            out.append(_slice(s.slice.offset, s.slice.limit))
        elif isinstance(s.group_by, GroupByInput):
            out.append(_group_by(s.group_by.by, s.group_by.aggregations))
        elif isinstance(s.join, JoinInput):
            out.append(_join(ctx, str(s.join.right), s.join.on, s.join.how))
        elif isinstance(s.clean, list):
            out.append(to_clean(s.clean))
        elif isinstance(s.window, list):
            out.append(to_window(s.window))
        elif isinstance(s.resample, ResampleInput):
            out.append(to_resample(s.resample.on, s.resample.every, s.resample.by, s.resample.aggregations))
        elif isinstance(s.join_asof, JoinAsofInput):
            a = s.join_asof
            out.append(to_join_asof(ctx, str(a.right), a.on, a.right_on, a.by, a.strategy, a.tolerance))
        elif isinstance(s.pivot, PivotInput):
            out.append(to_pivot(ctx, s.pivot.index, s.pivot.columns, s.pivot.values, s.pivot.fn))
        elif isinstance(s.unpivot, UnpivotInput):
            u = s.unpivot
            out.append(to_unpivot(ctx, u.index, u.on, u.variable_name, u.value_name))
    return out


def _options(cache: CacheMode | None, timeout_ms: int | None) -> Options:
    return Options(cache=(cache or CacheMode.USE).value, timeout_ms=timeout_ms)


@strawberry.interface(
    description="A lazy table: transform it, then ask for a result. Nothing runs until a result field is selected."
)
class Frame:
    plan: strawberry.Private[Plan]
    label: strawberry.Private[str]

    def _then(self, *steps: engine.Step) -> View:
        return View(plan=self.plan.then(*steps), label=self.label)

    def _refused(self, ctx: Context, adding: int) -> View | None:
        """A view whose every result answers BAD_INPUT, when `adding` steps would pass max_steps."""
        refused = engine.too_many_steps(self.plan.size + adding, ctx.settings.max_steps)
        return View(plan=self.plan.refuse(refused), label=self.label) if refused is not None else None

    @strawberry.field(description="Keep the rows matching every condition.")
    def filter(self, where: list[ConditionInput]) -> Frame:
        return self._then(_filter(where))

    @strawberry.field(description="Keep these columns, in this order.")
    def select(self, columns: list[str]) -> Frame:
        return self._then(engine.Select(tuple(columns)))

    @strawberry.field(description="Order rows by these keys; nulls last; ties keep their order.")
    def sort(self, by: list[SortKeyInput]) -> Frame:
        return self._then(_sort(by))

    @strawberry.field(description="Rows offset .. offset+limit.")
    def slice(self, offset: int | None = 0, *, limit: int) -> Frame:
        return self._then(_slice(offset, limit))

    @strawberry.field(description="One row per distinct key; sorted by the keys, missing keys last.")
    def group_by(self, by: list[str], aggregations: list[AggregationInput]) -> Frame:
        return self._then(_group_by(by, aggregations))

    @strawberry.field(description="Join the dataset `right` on equal `on` columns; clashing right names get _right.")
    def join(
        self,
        info: strawberry.Info[Context, None],
        right: strawberry.ID,
        on: list[str],
        how: JoinHow | None = JoinHow.INNER,
    ) -> Frame:
        return self._then(_join(info.context, str(right), on, how))

    @strawberry.field(
        description="pandas.merge_asof with the dataset `right` after sorting both sides by time: for each left row"
        " the right row nearest in time (strategy), in the same `by` groups, within `tolerance` (a number, or a"
        ' duration like "5m" or "2d" for dates and timestamps); clashing right names get _right.'
    )
    def join_asof(
        self,
        info: strawberry.Info[Context, None],
        right: strawberry.ID,
        on: str,
        right_on: str | None = None,
        by: list[str] | None = None,
        strategy: AsofStrategy | None = AsofStrategy.BACKWARD,
        tolerance: JSON | None = None,
    ) -> Frame:
        return self._then(to_join_asof(info.context, str(right), on, right_on, by, strategy, tolerance))

    @strawberry.field(
        description="pandas.pivot_table(dropna=False) reset to columns: one row per index key, one column per"
        " distinct value of `columns` (named by its text, sorted) holding fn of `values`."
    )
    def pivot(
        self,
        info: strawberry.Info[Context, None],
        index: list[str],
        columns: str,
        values: str,
        fn: AggFn | None = AggFn.FIRST,
    ) -> Frame:
        return self._then(to_pivot(info.context, index, columns, values, fn))

    @strawberry.field(description="pandas.melt: the `on` columns (else every column not in index) become rows.")
    def unpivot(
        self,
        info: strawberry.Info[Context, None],
        index: list[str],
        on: list[str] | None = None,
        variable_name: str | None = "variable",
        value_name: str | None = "value",
    ) -> Frame:
        return self._then(to_unpivot(info.context, index, on, variable_name, value_name))

    @strawberry.field(
        description="Drop or fill nulls, cast, rename, drop duplicates, trim text, parse dates; in order."
    )
    def clean(self, info: strawberry.Info[Context, None], steps: list[CleanStepInput]) -> Frame:
        return self._refused(info.context, max(1, len(steps))) or self._then(to_clean(steps))

    @strawberry.field(
        description="Add one column per spec (rolling, cumulative, shifted, ranked); rows keep their order."
    )
    def window(self, info: strawberry.Info[Context, None], specs: list[WindowInput]) -> Frame:
        return self._refused(info.context, max(1, len(specs))) or self._then(to_window(specs))

    @strawberry.field(
        description='One row per by keys and period of `every` ("1d", "1h", "1mo") on the time column `on`; periods'
        " start at midnight of the first day (months on the 1st), empty ones left out; sorted by `by` then time."
    )
    def resample(
        self, on: str, every: str, by: list[str] | None = None, *, aggregations: list[AggregationInput]
    ) -> Frame:
        return self._then(to_resample(on, every, by, aggregations))

    @strawberry.field(description="The same transforms as data, applied in order.")
    def pipeline(self, info: strawberry.Info[Context, None], steps: list[StepInput]) -> Frame:
        return self._refused(info.context, count_steps(steps)) or self._then(*to_steps(info.context, steps))

    @strawberry.field(description="Records {column: value}; meta.truncated when more rows follow.")
    async def rows(
        self,
        info: strawberry.Info[Context, None],
        limit: int | None = 100,
        offset: int | None = 0,
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        options = _options(cache, timeout_ms)
        return result(await frames.rows(info.context, plan=self.plan, limit=limit, offset=offset, options=options))

    @strawberry.field(description="data: {count: N}.")
    async def count(
        self,
        info: strawberry.Info[Context, None],
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        return result(await frames.count(info.context, plan=self.plan, options=_options(cache, timeout_ms)))

    @strawberry.field(description="Per-column statistics, the same numbers pandas' describe(include='all') gives.")
    async def describe(
        self,
        info: strawberry.Info[Context, None],
        columns: list[str] | None = None,
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        options = _options(cache, timeout_ms)
        return result(await frames.describe(info.context, plan=self.plan, columns=columns, options=options))

    @strawberry.field(description="The most frequent values: [{value, count, share}], missing values left out.")
    async def value_counts(
        self,
        info: strawberry.Info[Context, None],
        column: str,
        limit: int | None = 20,
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        options = _options(cache, timeout_ms)
        return result(
            await frames.value_counts(info.context, plan=self.plan, column=column, limit=limit, options=options)
        )

    @strawberry.field(
        description="data: {rows, columns, joins}; for each join: leftRows, rightRows, matchedLeftRows, matchRate."
    )
    async def summary(
        self,
        info: strawberry.Info[Context, None],
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        return result(await frames.summary(info.context, plan=self.plan, options=_options(cache, timeout_ms)))

    @strawberry.field(
        description="A Vega-Lite spec with its values inline (aggregated, a few thousand points at most)."
    )
    async def chart(
        self,
        info: strawberry.Info[Context, None],
        spec: ChartInput,
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        options = _options(cache, timeout_ms)
        return result(await frames.chart(info.context, plan=self.plan, spec=chart_spec(spec), options=options))

    @strawberry.field(description="data: {plan, columns}: the optimised plan and output columns, without running it.")
    async def explain(
        self,
        info: strawberry.Info[Context, None],
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        return result(await frames.explain(info.context, plan=self.plan, options=_options(cache, timeout_ms)))

    @strawberry.field(
        description="This frame (after) against another (before): data {summary, rows, stats}. With key, rows"
        " match by key (added, removed, changed); without, whole rows compare as multisets. rows: capped by"
        " rows_max, with meta.truncated."
    )
    async def diff(
        self,
        info: strawberry.Info[Context, None],
        against: DiffTargetInput,
        key: list[str] | None = None,
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        target = _diff_target(info.context, against)
        options = _options(cache, timeout_ms)
        return result(await diffs.diff(info.context, plan=self.plan, against=target, key=key, options=options))

    @strawberry.field(
        description="The frame as a recipe, data {steps, sources, polars, sql}: its steps as pipeline(steps:) takes"
        " them, the dataset versions it reads, a standalone Polars script that rebuilds it from their Parquet"
        " exports, and a linked table's pushdown SQL (else null). runRecipe runs it again."
    )
    async def recipe(self, info: strawberry.Info[Context, None]) -> Result:
        return result(await recipes.recipe(info.context, plan=self.plan, options=Options()))

    @strawberry.field(description="Write the frame to a file; data: {url, format, rows, bytes, expiresAt}.")
    async def export(
        self,
        info: strawberry.Info[Context, None],
        format: ExportFormat | None = ExportFormat.CSV,
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        fmt = (format or ExportFormat.CSV).value
        options = _options(cache, timeout_ms)
        return result(await frames.export(info.context, plan=self.plan, fmt=fmt, name=self.label, options=options))


@strawberry.type(description="A frame derived from a dataset by transforms.")
class View(Frame):
    pass
