"""Plans: a dataset and a list of steps, kept as plain data, turned into one Polars LazyFrame.

A `Plan` is what a GraphQL frame chain (or a `pipeline(steps:)` variable) means. It is hashable
data, so it can key the cache, travel to a worker process and be saved. `build` checks every step
against the schema as it goes, so a wrong column, operator or value is a `BadInput` that names it,
before any data is read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from datagraph.errors import BadInput, DatagraphError, NotFound
from engine._clean import Clean, apply_clean, clean_key
from engine._columns import check_columns, dtype_name, show_value, value_kind
from engine._reshape import (
    JoinAsof,
    Pivot,
    Unpivot,
    check_join_size,
    join_asof,
    join_max_rows_default,
    pivot,
    reshape_key,
    right_renames,
    unpivot,
)
from engine._sql import run_sql
from engine._timeseries import Resample, WindowStep, apply_resample, apply_window, joins_itself, timeseries_key

__all__ = [
    "AGG_FNS",
    "OPS",
    "Aggregation",
    "Condition",
    "Filter",
    "GroupBy",
    "Join",
    "Link",
    "Plan",
    "Select",
    "Slice",
    "Sort",
    "SortKey",
    "Source",
    "SqlRoot",
    "Step",
    "aggregate_expr",
    "build",
    "join_right_side",
    "right_renames",
    "step_size",
    "too_many_steps",
]

OPS = (
    "EQ", "NE", "GT", "GE", "LT", "LE", "IN", "NOT_IN", "BETWEEN",
    "CONTAINS", "STARTS_WITH", "ENDS_WITH", "IS_NULL", "NOT_NULL",
)  # fmt: skip
AGG_FNS = ("COUNT", "SUM", "MEAN", "MEDIAN", "MIN", "MAX", "STD", "VAR", "N_UNIQUE", "FIRST", "LAST")
_NUMERIC_FNS = {"SUM", "MEAN", "MEDIAN", "STD", "VAR"}
_COMPARE = {"EQ": "eq", "NE": "ne", "GT": "gt", "GE": "ge", "LT": "lt", "LE": "le"}
_TEXT_OPS = {"CONTAINS": "contains", "STARTS_WITH": "starts_with", "ENDS_WITH": "ends_with"}


class Link(Protocol):
    """A live table a dataset reads instead of its Parquet file (connectors.linked.LinkedTable):
    it runs the leading steps it can where the data lives and gives back the rest."""

    def scan(self, steps: tuple[Step, ...], *, head: int | None = None) -> tuple[pl.LazyFrame, tuple[Step, ...]]: ...

    def count(self, steps: tuple[Step, ...]) -> int | None: ...

    def sql(self, steps: tuple[Step, ...]) -> tuple[str, int]: ...


@dataclass(frozen=True, slots=True)
class Source:
    """One stored dataset version a plan reads (or, with `link`, a live database table)."""

    dataset_id: str
    version: int
    path: Path
    # When this dataset id was created: an id deleted and uploaded again starts at version 1 anew.
    generation: str = ""
    link: Link | None = None

    def key(self) -> list[Any]:
        return [self.version, self.generation, *(["live"] if self.link is not None else [])]

    def scan(self, steps: tuple[Step, ...] = (), *, head: int | None = None) -> tuple[pl.LazyFrame, tuple[Step, ...]]:
        """The source's rows as a LazyFrame and the steps still to apply to it (a linked table reads
        at most `head` rows when given: enough to learn the shape of a plan without its data)."""
        if self.link is not None:
            return self.link.scan(steps, head=head)
        return pl.scan_parquet(self.path), steps


@dataclass(frozen=True, slots=True)
class SqlRoot:
    """Checked SQL over dataset versions (`connectors.datasetsql`), each registered as a table named by
    its dataset id: a plan root in place of a `Source`, which steps chain on as on any other."""

    sql: str
    tables: tuple[Source, ...]
    link: None = None  # never a linked table: those are refused before a plan is made

    @property
    def dataset_id(self) -> str:
        """The first dataset the query reads: what an export of it belongs to."""
        return self.tables[0].dataset_id if self.tables else ""

    def scan(self, steps: tuple[Step, ...] = (), *, head: int | None = None) -> tuple[pl.LazyFrame, tuple[Step, ...]]:
        """The query's rows (raising `BadInput` for SQL Polars refuses) and the steps to apply."""
        frame, _ = run_sql(self.sql, self.paths())
        return frame, steps

    def paths(self) -> dict[str, Path]:
        return {t.dataset_id: t.path for t in self.tables}


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class SortKey:
    column: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Filter:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Select:
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sort:
    keys: tuple[SortKey, ...]


@dataclass(frozen=True, slots=True)
class Slice:
    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class Aggregation:
    column: str
    fn: str
    alias: str | None = None

    @property
    def output(self) -> str:
        return self.alias or f"{self.column}_{self.fn.lower()}"


@dataclass(frozen=True, slots=True)
class GroupBy:
    keys: tuple[str, ...]
    aggregations: tuple[Aggregation, ...]


@dataclass(frozen=True, slots=True)
class Join:
    """Join another dataset on equal keys; clashing right-side names get `_right`, `_right_2`, ..."""

    right: Source
    on: tuple[str, ...]
    how: str = "INNER"
    # The server's join_max_rows when the step was made (0: no guard).
    max_rows: int = field(default_factory=join_max_rows_default)


JOIN_HOWS = ("INNER", "LEFT")

Step = Filter | Select | Sort | Slice | GroupBy | Join | Clean | WindowStep | Resample | JoinAsof | Pivot | Unpivot


@dataclass(frozen=True, slots=True)
class Plan:
    """A dataset version and the steps applied to it, in order."""

    source: Source | SqlRoot
    steps: tuple[Step, ...] = ()
    # Why the plan may not run (too many steps), said instead of every result; its steps are not kept.
    refused: str | None = None
    refused_as: type[DatagraphError] = BadInput  # or NotFound, TooLarge (refused SQL over datasets)

    def then(self, *steps: Step) -> Plan:
        return Plan(self.source, (*self.steps, *steps), self.refused, self.refused_as)

    def refuse(self, message: str, error: type[DatagraphError] = BadInput) -> Plan:
        """The same source with no steps, answering `message` (a problem of `error`'s kind) for every result."""
        return Plan(self.source, (), message, error)

    @property
    def size(self) -> int:
        """How many steps the plan has, a clean step counting each of its own (setting max_steps)."""
        return sum(step_size(s) for s in self.steps)

    def key(self) -> dict[str, Any]:
        """Canonical plain-data form: what the result cache hashes."""
        if self.refused is not None:
            return {"refused": self.refused, "code": self.refused_as.code}
        key: dict[str, Any] = {
            "datasets": {s.dataset_id: s.key() for s in self.sources()},
            "steps": [_step_key(s) for s in self.steps],
        }
        if isinstance(self.source, SqlRoot):
            key["sql"] = self.source.sql
        if self.live:
            key["live"] = True
        return key

    @property
    def live(self) -> bool:
        """Whether the plan reads a linked table, whose rows change without a new version."""
        return any(s.link is not None for s in self.sources())

    def sources(self) -> list[Source]:
        """Every dataset version the plan reads: its own (an SQL root's tables), then each joined one."""
        found = list(self.source.tables) if isinstance(self.source, SqlRoot) else [self.source]
        for step in self.steps:
            right = step.right if isinstance(step, (Join, JoinAsof)) else None
            if isinstance(right, Source) and right not in found:
                found.append(right)
        return found


def step_size(step: Step) -> int:
    """A step's weight against max_steps: a clean step weighs as many steps as it has, a window step
    as many as its specs (each is a column computed over every row)."""
    if isinstance(step, Clean):
        return max(1, len(step.steps))
    if isinstance(step, WindowStep):
        return max(1, len(step.specs))
    return 1


def too_many_steps(size: int, limit: int) -> str | None:
    """The message refusing a plan of `size` steps, or None when it is within `limit`."""
    if size <= limit:
        return None
    return (
        f"A plan may have at most {limit:,} steps (setting max_steps); this one has {size:,}."
        " Save part of it with saveFrame and go on from there."
    )


def _step_key(step: Step) -> dict[str, Any]:
    if isinstance(step, Filter):
        return {"filter": [[c.column, c.op, c.value] for c in step.conditions]}
    if isinstance(step, Select):
        return {"select": list(step.columns)}
    if isinstance(step, Sort):
        return {"sort": [[k.column, k.descending] for k in step.keys]}
    if isinstance(step, GroupBy):
        return {"groupBy": [list(step.keys), [[a.column, a.fn, a.output] for a in step.aggregations]]}
    if isinstance(step, Join):
        return {"join": [step.right.dataset_id, list(step.on), step.how]}
    if isinstance(step, Clean):
        return {"clean": clean_key(step)}
    if isinstance(step, WindowStep | Resample):
        return timeseries_key(step)
    if isinstance(step, (JoinAsof, Pivot, Unpivot)):
        return reshape_key(step)
    return {"slice": [step.offset, step.limit]}


def build(plan: Plan, *, head: int | None = None) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """The plan as one LazyFrame, and its output schema; raise `BadInput` on the first wrong step.
    `head`: see `Source.scan`."""
    if plan.refused is not None:
        raise plan.refused_as(plan.refused)
    frame, steps = plan.source.scan(plan.steps, head=head)
    schema: dict[str, pl.DataType] = dict(frame.collect_schema())
    joined = False  # a window step joined the frame with itself already (allowed once: see apply_window)
    for step in steps:
        if isinstance(step, Filter):
            frame = frame.filter(*[_condition(c, schema) for c in step.conditions]) if step.conditions else frame
        elif isinstance(step, Select):
            check_columns(step.columns, schema, "select")
            if len(set(step.columns)) != len(step.columns):
                raise BadInput("select names a column more than once.")
            if not step.columns:
                raise BadInput("select needs at least one column.")
            frame = frame.select(step.columns)
            schema = {c: schema[c] for c in step.columns}
        elif isinstance(step, Sort):
            if not step.keys:
                raise BadInput("sort needs at least one key.")
            check_columns([k.column for k in step.keys], schema, "sort")
            frame = frame.sort(
                [k.column for k in step.keys],
                descending=[k.descending for k in step.keys],
                nulls_last=True,
                maintain_order=True,
            )
        elif isinstance(step, GroupBy):
            frame, schema = _group_by(frame, schema, step)
        elif isinstance(step, Join):
            frame, schema = _join(frame, schema, step)
        elif isinstance(step, Clean):
            frame, schema = apply_clean(frame, schema, step)
        elif isinstance(step, WindowStep):
            frame, schema = apply_window(frame, schema, step, join_ties=not joined)
            joined = joined or joins_itself(step)
        elif isinstance(step, Resample):
            frame, schema = apply_resample(frame, schema, step, aggregate_expr)
        elif isinstance(step, JoinAsof):
            frame, schema = join_asof(frame, schema, step)
        elif isinstance(step, Pivot):
            frame, schema = pivot(frame, schema, step)
        elif isinstance(step, Unpivot):
            frame, schema = unpivot(frame, schema, step)
        else:
            if step.offset < 0 or step.limit < 0:
                raise BadInput("slice needs an offset and a limit of 0 or more.")
            frame = frame.slice(step.offset, step.limit)
    return frame, schema


def _kind(dtype: pl.DataType) -> str:
    """`value_kind`, with integers and floats both "number" (filter values compare across them)."""
    kind = value_kind(dtype)
    return "number" if kind in ("int", "float") else kind


def _literal(value: Any, kind: str, cond: Condition, dtype: pl.DataType) -> Any:
    """Check one filter value against the column's type and convert it to a Polars literal."""
    expected = {"number": "a number", "boolean": "true or false", "text": "text",
                "date": 'a date like "2024-01-31"', "datetime": 'a timestamp like "2024-01-31T12:00:00"'}  # fmt: skip
    ok: Any = None
    plain_types = {"number": (int, float), "boolean": (bool,), "text": (str,)}
    if kind in plain_types and isinstance(value, plain_types[kind]) and (kind == "boolean") == isinstance(value, bool):
        ok = value
    elif kind in ("date", "datetime") and isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None:
            ok = parsed.date() if kind == "date" else parsed.replace(tzinfo=None)
    if ok is None:
        raise BadInput(
            f'filter on "{cond.column}" ({dtype_name(dtype)}) with {cond.op} needs'
            f" {expected.get(kind, 'a value of the column type')}, got {show_value(value)}."
        )
    return ok


def _condition(cond: Condition, schema: Mapping[str, pl.DataType]) -> pl.Expr:
    check_columns([cond.column], schema, "filter")
    if cond.op not in OPS:
        raise BadInput(f'filter: unknown operator "{cond.op}"; use one of {", ".join(OPS)}.')
    dtype = schema[cond.column]
    kind = _kind(dtype)
    col = pl.col(cond.column)
    op, value = cond.op, cond.value
    if op in ("IS_NULL", "NOT_NULL"):
        if value is not None:
            raise BadInput(f'filter: {op} takes no value (got {show_value(value)} for "{cond.column}").')
        return col.is_null() if op == "IS_NULL" else col.is_not_null()
    if value is None:
        raise BadInput(
            f'filter on "{cond.column}" with {op} needs a value; use IS_NULL or NOT_NULL for missing values.'
        )
    if kind == "other":
        raise BadInput(f'filter: column "{cond.column}" ({dtype_name(dtype)}) cannot be compared.')
    if op in _COMPARE:
        if kind == "boolean" and op not in ("EQ", "NE"):
            raise BadInput(f'filter: {op} does not apply to the true/false column "{cond.column}"; use EQ or NE.')
        compared: pl.Expr = getattr(col, _COMPARE[op])(_literal(value, kind, cond, dtype))
        return compared
    if op in ("IN", "NOT_IN"):
        if not isinstance(value, list) or not value:
            raise BadInput(
                f'filter on "{cond.column}" with {op} needs a non-empty list of values, got {show_value(value)}.'
            )
        literals = [_literal(v, kind, cond, dtype) for v in value]
        if kind == "number" and (
            dtype.is_float() or any(isinstance(v, float) and not v.is_integer() for v in literals)
        ):
            # Compared as floats: 39.5 must not match 39 in an integer column (a cast would truncate it).
            member = col.cast(pl.Float64).is_in(pl.Series([float(v) for v in literals], dtype=pl.Float64).implode())
        elif kind == "number":
            member = col.is_in(pl.Series([int(v) for v in literals]).cast(dtype, strict=False).implode())
        else:
            member = col.is_in(pl.Series(literals).implode())
        return member if op == "IN" else ~member
    if op == "BETWEEN":
        if not isinstance(value, list) or len(value) != 2:
            raise BadInput(f'filter on "{cond.column}" with BETWEEN needs [low, high], got {show_value(value)}.')
        low, high = (_literal(v, kind, cond, dtype) for v in value)
        return col.is_between(pl.lit(low), pl.lit(high), closed="both")  # a bare string would name a column
    if kind != "text":
        raise BadInput(f'filter: {op} works on text columns; "{cond.column}" is {dtype_name(dtype)}.')
    text = _literal(value, kind, cond, dtype)
    if op == "CONTAINS":
        return col.str.contains(text, literal=True)
    matched: pl.Expr = getattr(col.str, _TEXT_OPS[op])(text)
    return matched


def aggregate_expr(agg: Aggregation, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(agg.column)
    numeric = dtype.is_numeric() and dtype != pl.Boolean
    if agg.fn not in AGG_FNS:
        raise BadInput(f'groupBy: unknown aggregation "{agg.fn}"; use one of {", ".join(AGG_FNS)}.')
    if agg.fn in _NUMERIC_FNS and not numeric:
        raise BadInput(f'groupBy: {agg.fn} needs a numeric column; "{agg.column}" is {dtype_name(dtype)}.')
    exprs = {
        "COUNT": col.count(),  # non-missing values, as pandas' count
        "SUM": col.sum(),
        "MEAN": col.mean(),
        "MEDIAN": col.median(),
        "MIN": col.min(),
        "MAX": col.max(),
        "STD": col.std(ddof=1),
        "VAR": col.var(ddof=1),
        "N_UNIQUE": col.drop_nulls().n_unique(),
        "FIRST": col.drop_nulls().first(),  # the first non-missing value, as pandas' first
        "LAST": col.drop_nulls().last(),
    }
    return exprs[agg.fn].alias(agg.output)


def _group_by(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], step: GroupBy
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """Group by the keys (missing keys form a group), aggregate, and sort by the keys, nulls last."""
    if not step.keys:
        raise BadInput("groupBy needs at least one key column.")
    if not step.aggregations:
        raise BadInput("groupBy needs at least one aggregation.")
    check_columns(step.keys, schema, "groupBy")
    check_columns([a.column for a in step.aggregations], schema, "groupBy")
    names = [*step.keys, *(a.output for a in step.aggregations)]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise BadInput(f'groupBy: the output column "{clash[0]}" would appear twice; give one an alias.')
    ordered = any(a.fn in ("FIRST", "LAST") for a in step.aggregations)  # first/last in file order
    grouped = (
        frame.group_by(list(step.keys), maintain_order=ordered)
        .agg(aggregate_expr(a, schema[a.column]) for a in step.aggregations)
        .sort(list(step.keys), nulls_last=True, maintain_order=True)
    )
    return grouped, dict(grouped.collect_schema())


def _join(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], step: Join
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """Join the right dataset on equal keys (missing keys never match, as in SQL); left rows keep
    their order, and each left row's matches keep the right side's order."""
    right = join_right_side(schema, step)
    check_join_size(frame, right, list(step.on), step.how, step.max_rows)  # TOO_LARGE before it runs
    joined = frame.join(
        right, on=list(step.on), how="inner" if step.how == "INNER" else "left", maintain_order="left_right"
    )
    return joined, dict(joined.collect_schema())


def join_right_side(schema: Mapping[str, pl.DataType], step: Join) -> pl.LazyFrame:
    """The right dataset ready to join onto a frame of `schema`: checked, keys cast to the left's
    types, and clashing names renamed (`_right`, then `_right_2`, ... so chained joins never collide)."""
    if step.right.version == 0:
        raise NotFound(f'join: there is no dataset "{step.right.dataset_id}".')
    if step.how not in JOIN_HOWS:
        raise BadInput(f'join: unknown kind "{step.how}"; use one of {", ".join(JOIN_HOWS)}.')
    if not step.on:
        raise BadInput("join needs at least one key column in on.")
    if len(set(step.on)) != len(step.on):
        raise BadInput("join names a key column more than once in on.")
    right, _ = step.right.scan()
    right_schema: dict[str, pl.DataType] = dict(right.collect_schema())
    check_columns(step.on, schema, "join (left side)")
    check_columns(step.on, right_schema, f'join (right side, dataset "{step.right.dataset_id}")')
    for key in step.on:
        left_type, right_type = schema[key], right_schema[key]
        if _kind(left_type) != _kind(right_type) or _kind(left_type) == "other":
            raise BadInput(
                f'join: key "{key}" is {dtype_name(left_type)} on the left and {dtype_name(right_type)} on the right;'
                " clean(cast) one side first."
            )
    renames = right_renames(schema, right_schema, step.on)
    if renames:
        right = right.rename(renames)
    casts = [pl.col(k).cast(schema[k]) for k in step.on if right_schema[k] != schema[k]]
    if casts:  # both numeric (or both text) but of different widths
        right = right.with_columns(casts)
    return right
