"""Recipes of the reshaping steps (`joinAsof`, `pivot`, `unpivot`): their Step JSON, and the Polars
statements `engine._reshape` runs for them, written with the same options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from engine._pysource import call, col, dtype_source, py
from engine._reshape import JoinAsof, Pivot, Unpivot, asof_right_side, unpivot_as_text, unpivot_columns

__all__ = ["reshape_json", "reshape_statements"]


def reshape_json(step: JoinAsof | Pivot | Unpivot) -> dict[str, Any]:
    """The step as the GraphQL `Step` input it came from (optional parts left out)."""
    if isinstance(step, JoinAsof):
        asof: dict[str, Any] = {"right": step.right.dataset_id, "on": step.on}
        if step.right_on is not None:
            asof["rightOn"] = step.right_on
        if step.by:
            asof["by"] = list(step.by)
        asof["strategy"] = step.strategy
        if step.tolerance is not None:
            asof["tolerance"] = step.tolerance
        return {"joinAsof": asof}
    if isinstance(step, Pivot):
        return {"pivot": {"index": list(step.index), "columns": step.columns, "values": step.values, "fn": step.fn}}
    on = {} if step.on is None else {"on": list(step.on)}
    names = {"variableName": step.variable_name, "valueName": step.value_name}
    return {"unpivot": {"index": list(step.index), **on, **names}}


def reshape_statements(
    step: JoinAsof | Pivot | Unpivot,
    number: int,
    schema: Mapping[str, pl.DataType],
    right_arg: str,
    aggregates: Mapping[str, str],
    light: JoinAsof | None = None,
) -> list[str]:
    """The script's lines for the step over a frame of `schema` (already checked). `right_arg` reads the
    right dataset's Parquet; `light` is the as-of step with a linked right side read as its shape only;
    `aggregates` maps each aggregation to its Polars method chain."""
    if isinstance(step, JoinAsof):
        return _join_asof(step, light or step, number, schema, right_arg)
    if isinstance(step, Pivot):
        return _pivot(step, number, schema, aggregates)
    on = unpivot_columns(schema, step)
    text = unpivot_as_text(schema, on)
    return [
        f"# Step {number}: unpivot (pandas melt), column by column; rows keep their order (the streaming"
        " engine unpivots piece by piece: a sort restores it).",
        f"on = {py(on)}",
        *(["# The columns have no common type: their values become text."] if text else []),
        *(["frame = frame.with_columns(pl.col(on).cast(pl.String))"] if text else []),
        "frame = (",
        "    frame.with_row_index('\\x00row')",
        f"    .unpivot(on=on, index=[*{py(list(step.index))}, '\\x00row'], variable_name={py(step.variable_name)},"
        f" value_name={py(step.value_name)})",
        f"    .sort(pl.col({py(step.variable_name)}).replace_strict(on, list(range(len(on))), return_dtype=pl.UInt32),"
        " '\\x00row')",
        "    .drop('\\x00row')",
        ")",
    ]


def _has_time(name: str, dtype: pl.DataType) -> str:
    there = f"{col(name)}.is_not_null()"
    return f"{there} & {col(name)}.is_not_nan()" if dtype.is_float() else there


def _join_asof(
    step: JoinAsof, light: JoinAsof, number: int, schema: Mapping[str, pl.DataType], right_arg: str
) -> list[str]:
    right, renames, casts, tolerance = asof_right_side(schema, light)
    right_on = step.right_on or step.on
    lines = [
        f"# Step {number}: joinAsof dataset {step.right.dataset_id!r} (version {step.right.version}), as pandas"
        " merge_asof: both sides sorted by time (ties keep their order), rows missing a time left out.",
        f"right = pl.scan_parquet({right_arg})",
    ]
    if casts:
        lines.append("# Keys are cast to the left side's types.")
        cast_to = {k: schema[step.on] if k == right_on else schema[k] for k in casts}
        lines.append(
            call("right = right.with_columns", [f"{col(k)}.cast({dtype_source(t)})" for k, t in cast_to.items()])
        )
    if renames:
        lines.append("# Right-side names the left side has already get _right (then _right_2, ...).")
        lines.append(f"right = right.rename({py(renames)})")
    right_on = renames.get(right_on, right_on)
    lines += [
        f"frame = frame.filter({_has_time(step.on, schema[step.on])}).sort({step.on!r}, maintain_order=True)",
        f"right = right.filter({_has_time(right_on, schema[step.on])}).sort({right_on!r}, maintain_order=True)",
    ]
    if step.strategy == "NEAREST":
        payload = [c for c in right.collect_schema() if c not in step.by and not (c == right_on == step.on)]
        lines += _NEAREST.format(
            on=py(step.on), right_on=py(right_on), by=py(list(step.by)), tolerance=py(tolerance), payload=py(payload)
        ).split("\n")
        return lines
    lines.append(
        call(
            "frame = frame.join_asof",
            [
                "right",
                f"left_on={step.on!r}",
                f"right_on={right_on!r}",
                f"by={py(list(step.by)) if step.by else None}",
                f"strategy={step.strategy.lower()!r}",
                f"tolerance={py(tolerance)}",
                "check_sortedness=False",
            ],
        )
    )
    return lines


_NEAREST = """\
# NEAREST as pandas: the right row found backward unless the one found forward is strictly closer:
# a backward then a forward as-of join, each bringing its row's columns, and a choice per row.
by = {by}
payload = {payload}
columns = frame.collect_schema().names()
for tag, strategy in (('\\x00back', 'backward'), ('\\x00ahead', 'forward')):
    brought = (pl.col(c).alias(tag + ' ' + c) for c in payload)
    named = right.select(*by, pl.col({right_on}).alias(tag + ' time'), *brought)
    frame = frame.join_asof(
        named, left_on={on}, right_on=tag + ' time', by=by or None, strategy=strategy, tolerance={tolerance},
        check_sortedness=False,
    )
time, back, ahead = pl.col({on}), pl.col('\\x00back time'), pl.col('\\x00ahead time')
take_back = back.is_not_null() & (ahead.is_null() | ((time - back) <= (ahead - time)))
frame = frame.select(
    *columns,
    *(pl.when(take_back).then(pl.col('\\x00back ' + c)).otherwise(pl.col('\\x00ahead ' + c)).alias(c) for c in payload),
)"""


def _pivot(step: Pivot, number: int, schema: Mapping[str, pl.DataType], aggregates: Mapping[str, str]) -> list[str]:
    column, index = step.columns, py(list(step.index))
    grid = []
    if len(step.index) > 1:
        grid = [
            "# Every combination of the index columns' values gets a row, missing ones too (pandas' dropna=False).",
            f"grid = frame.select({col(step.index[0])}.unique())",
            *(f"grid = grid.join(frame.select({col(k)}.unique()), how='cross')" for k in step.index[1:]),
        ]
    return [
        f"# Step {number}: pivot (pandas pivot_table, dropna=False): one row per index key, missing keys last;"
        f" one column per value of {column!r}, sorted, named by its text; a cell with no rows is missing.",
        f"names = frame.select({col(column)}.unique().sort(nulls_last=True)).collect().to_series().to_list()",
        "# One aggregation per index key and value present, spread into a column per value.",
        call(
            f"cells = frame.group_by([*{index}, {column!r}], maintain_order=True).agg",
            [f"{col(step.values)}{aggregates[step.fn]}.alias('\\x00cell')"],
        ),
        "if names:",
        f"    spread = cells.pivot(on={column!r}, on_columns=names, index={index}, values='\\x00cell')",
        f"    width = {len(step.index)}",
        "    pivoted = spread.select(",
        "        *(pl.nth(i) for i in range(width)),",
        "        *(pl.nth(width + j).alias('null' if n is None else str(n)) for j, n in enumerate(names)),",
        "    )",
        "else:  # no rows: the index columns only",
        f"    pivoted = frame.group_by({index}).agg()",
        *grid,
        *([f"pivoted = grid.join(pivoted, on={index}, how='left', nulls_equal=True)"] if grid else []),
        f"frame = pivoted.sort({index}, nulls_last=True, maintain_order=True)",
    ]
