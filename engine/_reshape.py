"""Reshaping steps: as-of joins, pivots and unpivots, and the guards that see a join or a pivot
blow up before memory does (issue 21).

`joinAsof` is `pandas.merge_asof` after sorting both sides by the time column; `pivot` is
`pandas.pivot_table(..., dropna=False)` reset to columns; `unpivot` is `pandas.melt`.

The guards run inside `build`, so in the worker that runs the plan and before anything large is
collected: a join's output rows are counted from two group-by counts of its keys (one pass over
each side, a table of distinct keys in memory, never the join itself); an as-of join makes one row
per left row, so its size is the left's row count; a pivot's columns (and, over two or more index
columns, its rows: one per combination of their values) come from one pass over the distinct
values, which it needs anyway to know its schema. Each guard's limit travels in its step (the
server's setting when the step was made), as a linked table carries `max_rows`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from datagraph.errors import BadInput, NotFound, TooLarge
from engine._columns import check_columns, dtype_name, show_value, value_kind

__all__ = [
    "ASOF_STRATEGIES",
    "JoinAsof",
    "Pivot",
    "Unpivot",
    "asof_right_side",
    "check_join_size",
    "join_asof",
    "join_max_rows_default",
    "pivot",
    "pivot_max_columns_default",
    "pivot_names",
    "reshape_key",
    "right_renames",
    "unpivot",
    "unpivot_as_text",
    "unpivot_columns",
]


def _setting_default(name: str) -> int:
    """The product default of setting `name`, read when a step is made without the server's value: the
    settings (pydantic) are imported then, never in a worker process, which receives its steps made."""
    from datagraph.settings import Settings

    value: int = Settings.model_fields[name].default
    return value


def join_max_rows_default() -> int:
    return _setting_default("join_max_rows")


def pivot_max_columns_default() -> int:
    return _setting_default("pivot_max_columns")


ASOF_STRATEGIES = ("BACKWARD", "FORWARD", "NEAREST")
# A duration pandas' Timedelta and Polars read alike: whole numbers of weeks, days, hours, minutes,
# seconds, milli-, micro- or nanoseconds ("5m", "2d", "1h30m"); months and years have no fixed length.
_DURATION = re.compile(r"(?:\d{1,9}(?:ns|us|ms|s|m|h|d|w)){1,8}", flags=re.ASCII)
_MAX_TOLERANCE = 2**53  # a number beyond any key's range would overflow Polars' integer tolerance
_PIVOT_CELL, _UNPIVOT_ROW = "\x00cell", "\x00row"  # helper columns (the recipe scripts name them too)


def _reserved(name: str, where: str) -> BadInput:
    return BadInput(f"{where}: the column {name!r} has a name used inside the step; rename it first (clean).")


AGG_FNS = ("COUNT", "SUM", "MEAN", "MEDIAN", "MIN", "MAX", "STD", "VAR", "N_UNIQUE", "FIRST", "LAST")
_NUMERIC_FNS = {"SUM", "MEAN", "MEDIAN", "STD", "VAR"}


class Right(Protocol):
    """The dataset an as-of join reads on its right (an `engine._plan.Source`)."""

    @property
    def dataset_id(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def link(self) -> Any: ...

    def scan(self, steps: tuple[Any, ...] = (), *, head: int | None = None) -> tuple[pl.LazyFrame, tuple[Any, ...]]: ...


def _kind(dtype: pl.DataType) -> str:
    """`value_kind`, with integers and floats both "number" (as `engine._plan` compares keys)."""
    kind = value_kind(dtype)
    return "number" if kind in ("int", "float") else kind


def right_renames(
    left: Mapping[str, pl.DataType], right: Mapping[str, pl.DataType], keys: tuple[str, ...] | list[str]
) -> dict[str, str]:
    """New names for right-side columns (not `keys`) the left side already has: `_right`, then
    `_right_2`, ... so that chained joins never collide."""
    renames: dict[str, str] = {}
    taken = set(left)
    for name in right:
        if name in keys:
            continue
        if name in taken:
            suffix, n = "_right", 1
            while f"{name}{suffix}" in taken or f"{name}{suffix}" in right:
                n += 1
                suffix = f"_right_{n}"
            renames[name] = f"{name}{suffix}"
        taken.add(renames.get(name, name))
    return renames


@dataclass(frozen=True, slots=True)
class JoinAsof:
    """For each left row, the right row whose `right_on` is nearest its `on` in the direction of
    `strategy` (within `tolerance`, in the same `by` groups); right-side name clashes get `_right`.
    `max_rows` is the server's join_max_rows when the step was made."""

    right: Right
    on: str
    right_on: str | None = None
    by: tuple[str, ...] = ()
    strategy: str = "BACKWARD"
    tolerance: Any = None  # a number, a duration string, or (wrong) anything a client sent, frozen
    max_rows: int = field(default_factory=join_max_rows_default)


@dataclass(frozen=True, slots=True)
class Pivot:
    """One row per `index` key, one column per distinct value of `columns` holding `fn` of `values`."""

    index: tuple[str, ...]
    columns: str
    values: str
    fn: str = "FIRST"
    max_columns: int = field(default_factory=pivot_max_columns_default)
    # With two or more index columns a pivot has a row for every combination of their values (as
    # pandas' dropna=False): more than join_max_rows of them is refused as a join would be.
    max_rows: int = field(default_factory=join_max_rows_default)


@dataclass(frozen=True, slots=True)
class Unpivot:
    """Long form: the `index` columns, then one row per other column (or each of `on`) and row."""

    index: tuple[str, ...]
    on: tuple[str, ...] | None = None
    variable_name: str = "variable"
    value_name: str = "value"
    # It makes rows x len(on) rows: more than join_max_rows of them is refused as a join would be.
    max_rows: int = field(default_factory=join_max_rows_default)


def reshape_key(step: JoinAsof | Pivot | Unpivot) -> dict[str, Any]:
    """The step's part of a plan's cache key (the right side's version is in the plan's datasets)."""
    if isinstance(step, JoinAsof):
        tolerance = step.tolerance if isinstance(step.tolerance, (int, float, str)) else repr(step.tolerance)
        return {"joinAsof": [step.right.dataset_id, step.on, step.right_on, list(step.by), step.strategy, tolerance]}
    if isinstance(step, Pivot):
        return {"pivot": [list(step.index), step.columns, step.values, step.fn]}
    on = list(step.on) if step.on is not None else None
    return {"unpivot": [list(step.index), on, step.variable_name, step.value_name]}


# --- join guards ----------------------------------------------------------------------------------


def _too_many_rows(what: str, estimate: int, limit: int) -> TooLarge:
    return TooLarge(
        f"{what} would make about {estimate:,} rows, more than the {limit:,} the server allows (setting"
        " join_max_rows); filter either side first, or join on more keys."
    )


def check_join_size(left: pl.LazyFrame, right: pl.LazyFrame, on: list[str], how: str, limit: int) -> None:
    """Refuse (`TooLarge`) an equi-join whose output would pass `limit` rows: the sum over keys of
    left rows x right rows (each unmatched left row once for LEFT), from a group-by count of each side.
    A limit of 0 or less checks nothing."""
    if limit <= 0:
        return
    left_rows, right_rows = "\x00left rows", "\x00right rows"
    counted = (
        left.group_by(on)
        .agg(pl.len().alias(left_rows))
        .join(right.group_by(on).agg(pl.len().alias(right_rows)), on=on, how="left")
    )
    per_key = pl.col(right_rows).fill_null(0 if how == "INNER" else 1).cast(pl.Float64)
    estimate = counted.select((pl.col(left_rows).cast(pl.Float64) * per_key).sum()).collect().item()
    if estimate and estimate > limit:
        raise _too_many_rows("This join", round(estimate), limit)


# --- joinAsof -------------------------------------------------------------------------------------


def _key_kind(dtype: pl.DataType) -> str:
    kind = _kind(dtype)
    return kind if kind in ("number", "date", "datetime") else "other"  # what an as-of key can be


def _tolerance(step: JoinAsof, key_type: pl.DataType) -> int | float | str | None:
    value = step.tolerance
    if value is None:
        return None
    kind = _key_kind(key_type)
    if kind == "number":
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (key_type.is_integer() and not whole):
            wanted = "a whole number" if key_type.is_integer() else "a number"
            raise BadInput(
                f'joinAsof: tolerance must be {wanted} for the {dtype_name(key_type)} key "{step.on}",'
                f" got {show_value(value)}."
            )
        if not 0 <= value <= _MAX_TOLERANCE:
            raise BadInput(f"joinAsof: tolerance must be from 0 to {_MAX_TOLERANCE:,}, got {show_value(value)}.")
        return int(value) if key_type.is_integer() else float(value)
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise BadInput(
            f'joinAsof: tolerance must be a duration like "5m", "2h" or "7d" for the {dtype_name(key_type)} key'
            f' "{step.on}", got {show_value(value)}.'
        )
    return value


def asof_right_side(
    schema: Mapping[str, pl.DataType], step: JoinAsof
) -> tuple[pl.LazyFrame, dict[str, str], list[str], int | float | str | None]:
    """The right dataset checked against a left frame of `schema`: the right frame (renamed and
    cast), its renames, the right columns cast to the left's types, and the tolerance to use."""
    if step.right.version == 0:
        raise NotFound(f'joinAsof: there is no dataset "{step.right.dataset_id}".')
    if step.strategy not in ASOF_STRATEGIES:
        raise BadInput(f'joinAsof: unknown strategy "{step.strategy}"; use one of {", ".join(ASOF_STRATEGIES)}.')
    if len(set(step.by)) != len(step.by):
        raise BadInput("joinAsof names a column more than once in by.")
    right_on = step.right_on or step.on
    if step.on in step.by or right_on in step.by:
        raise BadInput(f'joinAsof: the time column "{step.on}" cannot also be in by.')
    right, _ = step.right.scan()
    right_schema: dict[str, pl.DataType] = dict(right.collect_schema())
    side = f'right side, dataset "{step.right.dataset_id}"'
    check_columns([step.on], schema, "joinAsof on (left side)")
    if step.right_on is None and step.on not in right_schema:
        raise BadInput(
            f'joinAsof on: the {side} has no column "{step.on}"; name its time column with rightOn.'
            f" Its columns: {', '.join(list(right_schema)[:25])}."
        )
    check_columns([right_on], right_schema, f"joinAsof rightOn ({side})")
    check_columns(step.by, schema, "joinAsof by (left side)")
    check_columns(step.by, right_schema, f"joinAsof by ({side})")
    left_type, right_type = schema[step.on], right_schema[right_on]
    if _key_kind(left_type) == "other" or _key_kind(left_type) != _key_kind(right_type):
        raise BadInput(
            f'joinAsof: the time columns must be numbers, dates or timestamps of one kind on both sides; "{step.on}"'
            f' is {dtype_name(left_type)} on the left and "{right_on}" {dtype_name(right_type)} on the right.'
            " clean(cast) one side first."
        )
    zones = [t.time_zone for t in (left_type, right_type) if isinstance(t, pl.Datetime)]
    if len(zones) == 2 and (zones[0] is None) != (zones[1] is None):  # a cast would read the naive one as UTC
        raise BadInput(
            f'joinAsof: of the timestamps "{step.on}" (left) and "{right_on}" (right), one has a time zone and the'
            " other none; clean one side first so that both have a zone or neither does."
        )
    if left_type.is_integer() and right_type.is_float():  # a cast to the left's type would cut decimals off
        raise BadInput(
            f'joinAsof: "{step.on}" holds whole numbers on the left and "{right_on}" decimals on the right;'
            " clean(cast) the left one to a decimal type first."
        )
    for key in step.by:
        if _kind(schema[key]) != _kind(right_schema[key]) or _kind(schema[key]) == "other":
            raise BadInput(
                f'joinAsof: by column "{key}" is {dtype_name(schema[key])} on the left and'
                f" {dtype_name(right_schema[key])} on the right; clean(cast) one side first."
            )
        if schema[key].is_integer() and right_schema[key].is_float():  # the cast would cut 1.5 to 1
            raise BadInput(
                f'joinAsof: by column "{key}" holds whole numbers on the left and decimals on the right;'
                " clean(cast) the left one to a decimal type first."
            )
    tolerance = _tolerance(step, left_type)
    keys = [*step.by, *([right_on] if right_on == step.on else [])]
    renames = right_renames(schema, right_schema, keys)
    casts = [k for k in [*step.by, right_on] if right_schema[k] != schema.get(step.on if k == right_on else k)]
    right = right.with_columns(pl.col(k).cast(schema[step.on] if k == right_on else schema[k]) for k in casts).rename(
        renames
    )
    return right, renames, casts, tolerance


def _has_time(name: str, dtype: pl.DataType) -> pl.Expr:
    """Rows whose time is there: not missing, and (decimals) not NaN, which pandas counts as missing."""
    there = pl.col(name).is_not_null()
    return there & pl.col(name).is_not_nan() if dtype.is_float() else there


def join_asof(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], step: JoinAsof
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """`pandas.merge_asof` of the frame and the right dataset, both sorted by their time column (a
    stable sort: ties keep their order); rows whose time is missing are left out on both sides."""
    right, renames, _, tolerance = asof_right_side(schema, step)
    right_on = renames.get(step.right_on or step.on, step.right_on or step.on)
    if step.max_rows > 0:  # each left row finds at most one right row: the output is the left's rows
        left_rows = frame.select(pl.len()).collect().item()
        if left_rows > step.max_rows:
            raise _too_many_rows("This as-of join", left_rows, step.max_rows)
    left = frame.filter(_has_time(step.on, schema[step.on])).sort(step.on, maintain_order=True)
    right = right.filter(_has_time(right_on, schema[step.on])).sort(right_on, maintain_order=True)
    by = list(step.by)
    if step.strategy == "NEAREST":
        joined = _nearest(left, right, step.on, right_on, by, tolerance)
    else:
        joined = left.join_asof(
            right,
            left_on=step.on,
            right_on=right_on,
            by=by or None,
            strategy="backward" if step.strategy == "BACKWARD" else "forward",
            tolerance=tolerance,
            check_sortedness=False,  # sorted just above; Polars cannot check it with by groups
        )
    return joined, dict(joined.collect_schema())


def _nearest(
    left: pl.LazyFrame, right: pl.LazyFrame, on: str, right_on: str, by: list[str], tolerance: Any
) -> pl.LazyFrame:
    """NEAREST as pandas: the right row found backward unless the one found forward is strictly
    closer (Polars' own nearest takes the forward one on a tie). Both sides sorted by time: a
    backward then a forward as-of join, each bringing its row's columns, and a choice per row."""
    payload = [c for c in right.collect_schema() if c not in by and not (c == right_on == on)]
    sides = []
    for tag, strategy in (("\x00back", "backward"), ("\x00ahead", "forward")):
        named = right.select(
            *by, pl.col(right_on).alias(f"{tag} time"), *(pl.col(c).alias(f"{tag} {c}") for c in payload)
        )
        sides.append((tag, strategy, named))
    both = left
    for tag, strategy, named in sides:
        both = both.join_asof(
            named,
            left_on=on,
            right_on=f"{tag} time",
            by=by or None,
            strategy=strategy,  # type: ignore[arg-type]
            tolerance=tolerance,
            check_sortedness=False,
        )
    time, back, ahead = pl.col(on), pl.col("\x00back time"), pl.col("\x00ahead time")
    take_back = back.is_not_null() & (ahead.is_null() | ((time - back) <= (ahead - time)))
    chosen = (
        pl.when(take_back).then(pl.col(f"\x00back {c}")).otherwise(pl.col(f"\x00ahead {c}")).alias(c) for c in payload
    )
    return both.select(*left.collect_schema().names(), *chosen)


# --- pivot ----------------------------------------------------------------------------------------


def _pivot_checks(schema: Mapping[str, pl.DataType], step: Pivot) -> None:
    if not step.index:
        raise BadInput("pivot needs at least one index column.")
    if len(set(step.index)) != len(step.index):
        raise BadInput("pivot names a column more than once in index.")
    check_columns(step.index, schema, "pivot index")
    check_columns([step.columns], schema, "pivot columns")
    check_columns([step.values], schema, "pivot values")
    if schema[step.columns].is_nested():
        raise BadInput(
            f'pivot columns: "{step.columns}" is a {dtype_name(schema[step.columns])} column; its values cannot'
            " name columns. Pivot on a column of text, numbers, dates or booleans."
        )
    if step.columns in step.index or step.values in step.index:
        raise BadInput("pivot: columns and values must not be index columns.")
    if step.columns == step.values:
        raise BadInput("pivot: columns and values must be different columns.")
    if _PIVOT_CELL in step.index:
        raise _reserved(_PIVOT_CELL, "pivot index")
    if step.fn not in AGG_FNS:
        raise BadInput(f'pivot: unknown fn "{step.fn}"; use one of {", ".join(AGG_FNS)}.')
    dtype = schema[step.values]
    if step.fn in _NUMERIC_FNS and not (dtype.is_numeric() and dtype != pl.Boolean):
        raise BadInput(f'pivot: fn {step.fn} needs a numeric values column; "{step.values}" is {dtype_name(dtype)}.')
    if step.fn in ("MIN", "MAX") and dtype.is_nested():
        raise BadInput(
            f'pivot: fn {step.fn} needs values with an order; "{step.values}" is a {dtype_name(dtype)} column.'
        )


def pivot_names(frame: pl.LazyFrame, schema: Mapping[str, pl.DataType], step: Pivot) -> list[tuple[Any, str]]:
    """The distinct values of the `columns` column, sorted (missing last), each with the name of its
    column: the value's text ("null" for missing). `TooLarge` past `max_columns` distinct values."""
    _pivot_checks(schema, step)
    col = pl.col(step.columns)
    limit = step.max_columns
    levels = [pl.col(k).n_unique().alias(f"\x00{i}") for i, k in enumerate(step.index)]
    distinct = col.unique().sort(nulls_last=True)
    found = frame.select(
        col.n_unique().alias("n"),
        (distinct.head(limit + 1) if limit > 0 else distinct).implode().alias("v"),  # 0: no limit
        *levels,
    ).collect()
    count, values = int(found["n"][0]), found["v"][0].to_list()
    combinations = math.prod(int(found[f"\x00{i}"][0]) for i in range(len(levels)))
    if len(levels) > 1 and step.max_rows > 0 and combinations > step.max_rows:
        raise TooLarge(
            f"pivot: the index columns' values make {combinations:,} combinations, a row each, more than the"
            f" {step.max_rows:,} rows the server allows (setting join_max_rows); pivot on fewer index columns."
        )
    if limit > 0 and count > limit:
        raise TooLarge(
            f'pivot: column "{step.columns}" has {count:,} distinct values, more than the {limit:,} columns a pivot'
            " may make (setting pivot_max_columns); filter first, or pivot on a column with fewer values."
        )
    # Its output holds rows x columns cells (each column under pivot_max_columns, a million index keys
    # would still be gigabytes): counted against join_max_rows, as a join's rows are.
    if step.max_rows > 0 and combinations * count > step.max_rows:
        raise TooLarge(
            f"pivot: {combinations:,} rows x {count:,} columns make {combinations * count:,} cells, more than the"
            f" {step.max_rows:,} the server allows (setting join_max_rows); filter first, or pivot on fewer keys."
        )
    named = [(v, "null" if v is None else str(v)) for v in values]
    names = [name for _, name in named]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BadInput(
            f'pivot: two values of column "{step.columns}" would both name the column "{twice[0]}" (a missing'
            ' value is named "null"); clean one of them first.'
        )
    clash = [name for _, name in named if name in step.index]
    if clash:
        raise BadInput(
            f'pivot: the value "{clash[0]}" of column "{step.columns}" would make a column index already has;'
            " rename that index column first."
        )
    return named


def _cell(fn: str, values: pl.Expr) -> pl.Expr:
    """`fn` of the values of one cell, as `aggregate_expr` (and pandas) compute it."""
    exprs = {
        "COUNT": values.count(),
        "SUM": values.sum(),
        "MEAN": values.mean(),
        "MEDIAN": values.median(),
        "MIN": values.min(),
        "MAX": values.max(),
        "STD": values.std(ddof=1),
        "VAR": values.var(ddof=1),
        "N_UNIQUE": values.drop_nulls().n_unique(),
        "FIRST": values.drop_nulls().first(),
        "LAST": values.drop_nulls().last(),
    }
    return exprs[fn]


def pivot(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], step: Pivot
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """`pandas.pivot_table(index, columns, values, aggfunc=fn, dropna=False).reset_index()`: one row per
    index key (missing keys form a group, sorted last), a cell with no rows is missing."""
    named = pivot_names(frame, schema, step)
    index = list(step.index)
    cell = _PIVOT_CELL
    # One aggregation per (index key, value) present (FIRST and LAST in the frame's order, as pandas),
    # spread into a column per value: a cell with no rows is missing, one whose values all are has
    # the aggregation of nothing (COUNT 0), as pandas.
    cells = frame.group_by([*index, step.columns], maintain_order=True).agg(
        _cell(step.fn, pl.col(step.values)).alias(cell)
    )
    if named:
        spread = cells.pivot(on=step.columns, on_columns=[v for v, _ in named], index=index, values=cell)
        width = len(index)
        pivoted = spread.select(
            *(pl.nth(i) for i in range(width)), *(pl.nth(width + j).alias(n) for j, (_, n) in enumerate(named))
        )
    else:  # no rows: the index columns only
        pivoted = frame.group_by(index).agg()
    if len(index) > 1:  # every combination of the index columns' values, missing ones too (pandas' dropna=False)
        grid = frame.select(pl.col(index[0]).unique())
        for key in index[1:]:
            grid = grid.join(frame.select(pl.col(key).unique()), how="cross")
        pivoted = grid.join(pivoted, on=index, how="left", nulls_equal=True)
    pivoted = pivoted.sort(index, nulls_last=True, maintain_order=True)
    return pivoted, dict(pivoted.collect_schema())


# --- unpivot --------------------------------------------------------------------------------------


def unpivot_columns(schema: Mapping[str, pl.DataType], step: Unpivot) -> list[str]:
    """The columns that become rows, checked: `on`, or every column not in `index`."""
    if len(set(step.index)) != len(step.index):
        raise BadInput("unpivot names a column more than once in index.")
    check_columns(step.index, schema, "unpivot index")
    if step.on is not None:
        check_columns(step.on, schema, "unpivot on")
        if len(set(step.on)) != len(step.on):
            raise BadInput("unpivot names a column more than once in on.")
        if set(step.on) & set(step.index):
            raise BadInput("unpivot: a column cannot be in both index and on.")
    if _UNPIVOT_ROW in schema:
        raise _reserved(_UNPIVOT_ROW, "unpivot")
    on = list(step.on) if step.on is not None else [c for c in schema if c not in step.index]
    if not on:
        raise BadInput("unpivot needs at least one column in on (or a column that is not in index).")
    for arg, name in (("variableName", step.variable_name), ("valueName", step.value_name)):
        if not name:
            raise BadInput(f"unpivot: {arg} must not be empty.")
        if name in step.index:
            raise BadInput(f'unpivot: {arg} "{name}" is already an index column; choose another name.')
        if name in schema:
            raise BadInput(f'unpivot: {arg} "{name}" is already a column; choose another name.')
    if step.variable_name == step.value_name:
        raise BadInput("unpivot: variableName and valueName must differ.")
    return on


def unpivot_as_text(schema: Mapping[str, pl.DataType], on: list[str]) -> bool:
    """Whether the `on` columns are of kinds with no common type (text and numbers, dates and
    booleans, ...): then their values become text, as their pandas melt would be objects."""
    kinds = {_kind(schema[c]) for c in on}
    same = len({schema[c] for c in on}) == 1
    text = not same and kinds != {"number"}
    nested = [c for c in on if schema[c].is_nested()]
    if text and nested:
        raise BadInput(
            f'unpivot: "{nested[0]}" is a {dtype_name(schema[nested[0]])} column and the other columns are not of'
            " its type, so their values have no common type; unpivot it on its own (on), or select it out first."
        )
    return text


def unpivot(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], step: Unpivot
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """`pandas.melt(id_vars=index, value_vars=on)`: column by column, rows in order; the values take
    the type all of them fit: one type as it is, numbers of two types the wider, anything else text."""
    on = unpivot_columns(schema, step)
    text = unpivot_as_text(schema, on)
    if step.max_rows > 0 and len(on) > 1:  # one row per row and column: counted before it runs
        rows = frame.select(pl.len()).collect().item()
        if rows * len(on) > step.max_rows:
            raise TooLarge(
                f"unpivot: {rows:,} rows x {len(on):,} columns make {rows * len(on):,} rows, more than the"
                f" {step.max_rows:,} the server allows (setting join_max_rows); unpivot fewer columns (on) or filter"
                " first."
            )
    if text:  # Polars finds no common type for some pairs (and panics on them)
        frame = frame.with_columns(pl.col(on).cast(pl.String))
    row = _UNPIVOT_ROW
    # Polars' streaming engine unpivots piece by piece: the order melt gives is restored by a sort.
    melted = (
        frame.with_row_index(row)
        .unpivot(on=on, index=[*step.index, row], variable_name=step.variable_name, value_name=step.value_name)
        .sort(pl.col(step.variable_name).replace_strict(on, list(range(len(on))), return_dtype=pl.UInt32), row)
        .drop(row)
    )
    return melted, dict(melted.collect_schema())
