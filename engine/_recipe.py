"""Recipes: a plan written out as data (`Step` JSON, the dataset versions it reads) and as a
standalone Polars script that gives the same frame from the datasets' Parquet exports.

The script is generated step by step while the plan is checked: each step is built (lazily, on
an empty frame of the schema the previous step left, so no data is read) and written as the
Polars statement `build` makes of it, with the same options (nulls last, kept order, the join's
renames and key casts, ...). Everything that comes from a user (column names, values, formats,
SQL, dataset ids) reaches the script as `repr` of a Python value, never as code.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from engine._clean import (
    Cast,
    Clean,
    CleanStep,
    DropDuplicates,
    DropNulls,
    FillNulls,
    Rename,
    Trim,
)
from engine._plan import (
    Condition,
    Filter,
    GroupBy,
    Join,
    Plan,
    Select,
    Slice,
    Sort,
    Source,
    SqlRoot,
    Step,
    _kind,
    _literal,
    aggregate_expr,
    build,
    join_right_side,
)
from engine._pysource import call, col, dtype_source, indented, py
from engine._recipe_clean import clean_statements
from engine._recipe_reshape import reshape_json, reshape_statements
from engine._reshape import JoinAsof, Pivot, Unpivot
from engine._timeseries import AGGREGATE_METHODS, Resample, WindowStep, joins_itself, timeseries_json, timeseries_script

__all__ = ["recipe", "step_json"]


# --- steps as the Step JSON that pipeline(steps:) takes -------------------------------------------


def step_json(step: Step) -> dict[str, Any]:
    """One engine step as the GraphQL `Step` input it came from (GraphQL names; optional parts left out)."""
    if isinstance(step, Filter):
        conditions = [
            {"column": c.column, "op": c.op, **({"value": c.value} if c.value is not None else {})}
            for c in step.conditions
        ]
        return {"filter": conditions}
    if isinstance(step, Select):
        return {"select": list(step.columns)}
    if isinstance(step, Sort):
        return {"sort": [{"column": k.column, "descending": k.descending} for k in step.keys]}
    if isinstance(step, Slice):
        return {"slice": {"offset": step.offset, "limit": step.limit}}
    if isinstance(step, GroupBy):
        aggregations = [
            {"column": a.column, "fn": a.fn, **({"alias": a.alias} if a.alias is not None else {})}
            for a in step.aggregations
        ]
        return {"groupBy": {"by": list(step.keys), "aggregations": aggregations}}
    if isinstance(step, Join):
        return {"join": {"right": step.right.dataset_id, "on": list(step.on), "how": step.how}}
    if isinstance(step, WindowStep | Resample):
        return timeseries_json(step)
    if isinstance(step, (JoinAsof, Pivot, Unpivot)):
        return reshape_json(step)
    return {"clean": [_clean_json(s) for s in step.steps]}


def _columns_json(columns: tuple[str, ...] | None) -> dict[str, Any]:
    return {} if columns is None else {"columns": list(columns)}


def _clean_json(s: CleanStep) -> dict[str, Any]:
    if isinstance(s, DropNulls):
        return {"dropNulls": {"how": s.how, **_columns_json(s.columns)}}
    if isinstance(s, FillNulls):
        value = {"value": s.value} if s.value is not None else {}
        return {"fillNulls": {"strategy": s.strategy, **value, **_columns_json(s.columns)}}
    if isinstance(s, Cast):
        return {"cast": {"columns": list(s.columns), "to": s.to}}
    if isinstance(s, Rename):
        return {"rename": [{"from": old, "to": new} for old, new in s.pairs]}
    if isinstance(s, DropDuplicates):
        return {"dropDuplicates": {"keep": s.keep, **_columns_json(s.columns)}}
    if isinstance(s, Trim):
        return {"trim": _columns_json(s.columns)}
    return {"parseDates": {"columns": list(s.columns), "format": s.format, "to": s.to}}


# --- the script -----------------------------------------------------------------------------------


class _Shape:
    """A stand-in `Link`: an empty frame of a schema, with every step left to Polars. Building a
    step on it checks the step and gives the schema after it, without reading any data."""

    def __init__(self, schema: dict[str, pl.DataType]) -> None:
        self.schema = schema

    def scan(self, steps: tuple[Step, ...], *, head: int | None = None) -> tuple[pl.LazyFrame, tuple[Step, ...]]:
        return pl.LazyFrame(schema=self.schema), steps

    def count(self, steps: tuple[Step, ...]) -> int | None:
        return None

    def sql(self, steps: tuple[Step, ...]) -> tuple[str, int]:
        raise NotImplementedError


@dataclass(slots=True)
class _Script:
    """The lines of the script being written, and the command-line option of each source."""

    options: dict[tuple[str, int], tuple[str, str]]  # (dataset, version) -> (--option, dest)
    lines: list[str]
    joined: bool = False  # a window step joined the frame with itself already (as `build` tracks it)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def arg(self, source: Source) -> str:
        return f"args.{self.options[(source.dataset_id, source.version)][1]}"


def _options(sources: list[Source]) -> dict[tuple[str, int], tuple[str, str]]:
    """`--<dataset id>` per source (`--<id>-v<N>` for a dataset read at two versions), and a
    Python name for each (dest). An option the script has already (`--out`, `--help`, or another
    source's: a dataset `items-v1` beside items' version 1) takes `-v<N>`, then `-2`, `-3`, ...
    (each option's help names its dataset and version); a dest is never a Python keyword, which
    `args.<dest>` could not name."""
    ids = [s.dataset_id for s in sources]
    found: dict[tuple[str, int], tuple[str, str]] = {}
    options: set[str] = {"--out", "--help"}
    dests: set[str] = {"out"}
    for s in sources:
        option = f"--{s.dataset_id}" if ids.count(s.dataset_id) == 1 else f"--{s.dataset_id}-v{s.version}"
        if option in options:
            option = f"--{s.dataset_id}-v{s.version}"
        base, n = option, 1
        while option in options:
            n += 1
            option = f"{base}-{n}"
        options.add(option)
        dest = re.sub(r"\W", "_", option[2:].lower(), flags=re.ASCII).strip("_") or "dataset"
        dest = dest if dest[0].isalpha() else f"d_{dest}"
        dest = f"{dest}_" if keyword.iskeyword(dest) else dest
        base, n = dest, 1
        while dest in dests:
            n += 1
            dest = f"{base}_{n}"
        dests.add(dest)
        found[(s.dataset_id, s.version)] = (option, dest)
    return found


def recipe(plan: Plan) -> dict[str, Any]:
    """The plan as a recipe: {steps, sources, polars, sql} (and `query` for a frame over SQL over
    datasets). Checks every step against the schema, as `build` does, without reading data."""
    if plan.refused is not None:
        raise plan.refused_as(plan.refused)
    link = plan.source.link
    sources = plan.sources()
    script = _Script(_options(sources), [])
    polars = _write(plan, script)
    answer: dict[str, Any] = {
        "steps": [step_json(s) for s in plan.steps],
        "sources": [{"dataset": s.dataset_id, "version": s.version} for s in sources],
        "polars": polars,
        "sql": link.sql(plan.steps)[0] if link is not None else None,
    }
    if isinstance(plan.source, SqlRoot):
        answer["query"] = plan.source.sql
    return answer


_HEADER = '''\
"""Recipe written by datagraph: {what}.

Reads the Parquet export of each source dataset version, applies the frame's steps with Polars
and writes the result as Parquet. Run it with one file per source:

    python recipe.py {usage} --out result.parquet
"""

import argparse
{imports}
import polars as pl

parser = argparse.ArgumentParser(description="Rebuild a datagraph frame from Parquet exports.")'''


def _write(plan: Plan, script: _Script) -> str:
    sources = plan.sources()
    usage = " ".join(f"{option} {dest}.parquet" for option, dest in script.options.values())
    if not re.fullmatch(r"[\w .-]*", usage, flags=re.ASCII):  # it goes into the docstring
        usage = "--<dataset id> FILE.parquet ..."
    step_count = f"{len(plan.steps)} step{'s' if len(plan.steps) != 1 else ''}"
    what = f"{step_count} over {len(sources)} source{'s' if len(sources) != 1 else ''}"
    script.add(_HEADER.format(what=what, usage=usage, imports="{imports}"))
    for s in sources:
        option, dest = script.options[(s.dataset_id, s.version)]
        script.add(
            f"parser.add_argument({option!r}, dest={dest!r}, required=True, metavar='PARQUET',"
            f" help={f'dataset {s.dataset_id}, version {s.version}'.replace('%', '%%')!r})"
        )
    script.add(
        "parser.add_argument('--out', required=True, metavar='PARQUET', help='where to write the result')",
        "args = parser.parse_args()",
        "",
    )
    root = plan.source
    if isinstance(root, SqlRoot):
        tables = ", ".join(f"{t.dataset_id!r}: pl.scan_parquet({script.arg(t)})" for t in root.tables)
        script.add(
            "# The frame starts from SQL over datasets: each table is a dataset's Parquet export.",
            f"context = pl.SQLContext({{{tables}}}, register_globals=False)",
            f"query = {py(root.sql)}",
            "frame = context.execute(query, eager=False)",
        )
        schema: dict[str, pl.DataType] = dict(build(Plan(root))[1])
    else:
        script.add(
            f"# Dataset {root.dataset_id!r}, version {root.version}.", f"frame = pl.scan_parquet({script.arg(root)})"
        )
        schema = dict(build(Plan(root), head=0 if root.link is not None else None)[1])
    for number, step in enumerate(plan.steps, 1):
        after = _after(schema, step)  # checked before it is written: BAD_INPUT naming what is wrong
        if isinstance(step, Pivot):  # its columns are its data's values: read them (one pass)
            after = dict(build(Plan(plan.source, plan.steps[:number]))[1])
        script.add("")
        _write_step(script, number, step, schema)
        schema = after
    script.add("", "# Collected as the server collects it, then written as its Parquet export is.")
    script.add("frame.collect().write_parquet(args.out)", "")
    text = "\n".join(script.lines)
    # Dates in filters are written datetime.date(...), a decimal column's values decimal.Decimal(...):
    # each module is imported only when used.
    used = {"datetime": "datetime.date", "decimal": "decimal.Decimal("}
    imports = "".join(f"import {module}\n" for module, mark in used.items() if mark in text)
    return text.replace("{imports}", imports, 1)


def _light(step: Step) -> Step:
    """The step, a linked table joined on it read as its shape only (it fetches no rows), and with no
    size guard (the guards read data; a recipe only writes the steps down)."""
    if isinstance(step, (Join, JoinAsof)):
        step = replace(step, max_rows=0)
    if isinstance(step, Pivot):
        step = replace(step, max_columns=0, max_rows=0)
    if not isinstance(step, (Join, JoinAsof)) or step.right.link is None:
        return step
    right = step.right
    shape = _Shape(dict(right.scan((), head=0)[0].collect_schema()))
    return replace(step, right=Source(right.dataset_id, right.version, Path(), link=shape))


def _after(schema: dict[str, pl.DataType], step: Step) -> dict[str, pl.DataType]:
    """The schema after `step` over a frame of `schema`, built on an empty frame (no data read);
    `BadInput` (or `NotFound`) as `build` says it, when the step is wrong."""
    shaped = Source("", 0, Path(), link=_Shape(schema))
    return dict(build(Plan(shaped, (_light(step),)))[1])


def _write_step(script: _Script, number: int, step: Step, schema: dict[str, pl.DataType]) -> None:
    if isinstance(step, Filter):
        script.add(f"# Step {number}: filter, keeping the rows that match every condition.")
        if not step.conditions:
            script.add("# (no conditions: every row stays)")
            return
        conditions = [_condition(c.column, c.op, c.value, schema) for c in step.conditions]
        script.add(call("frame = frame.filter", conditions))
    elif isinstance(step, Select):
        script.add(f"# Step {number}: select these columns, in this order.")
        script.add(f"frame = frame.select({py(list(step.columns))})")
    elif isinstance(step, Sort):
        script.add(f"# Step {number}: sort; missing values last, ties keep their order.")
        keys = py([k.column for k in step.keys])
        descending = py([k.descending for k in step.keys])
        script.add(f"frame = frame.sort({keys}, descending={descending}, nulls_last=True, maintain_order=True)")
    elif isinstance(step, Slice):
        script.add(f"# Step {number}: slice, {step.limit} rows from row {step.offset}.")
        script.add(f"frame = frame.slice({step.offset}, {step.limit})")
    elif isinstance(step, GroupBy):
        _group_by(script, number, step, schema)
    elif isinstance(step, Join):
        _join(script, number, step, schema)
    elif isinstance(step, WindowStep | Resample):
        join_ties = isinstance(step, WindowStep) and not script.joined  # as `build` writes it
        script.add(*timeseries_script(step, number, schema, aggregate_expr, join_ties=join_ties))
        script.joined = script.joined or (isinstance(step, WindowStep) and joins_itself(step))
    elif isinstance(step, (JoinAsof, Pivot, Unpivot)):
        right = script.arg(step.right) if isinstance(step, JoinAsof) and isinstance(step.right, Source) else ""
        light = _light(step) if isinstance(step, JoinAsof) else None
        assert light is None or isinstance(light, JoinAsof)
        script.add(*reshape_statements(step, number, schema, right, AGGREGATE_METHODS, light))
    else:
        _clean(script, number, step, schema)


_OPERATORS = {"EQ": "==", "NE": "!=", "GT": ">", "GE": ">=", "LT": "<", "LE": "<="}
_TEXT_METHODS = {"STARTS_WITH": "starts_with", "ENDS_WITH": "ends_with"}


def _condition(column: str, op: str, value: Any, schema: dict[str, pl.DataType]) -> str:
    """One filter condition as the expression `engine._plan._condition` makes of it (already checked)."""
    dtype = schema[column]
    kind = _kind(dtype)
    cond = Condition(column, op, value)
    column_expr = col(column)
    if op == "IS_NULL":
        return f"{column_expr}.is_null()"
    if op == "NOT_NULL":
        return f"{column_expr}.is_not_null()"
    if op in _OPERATORS:
        return f"{column_expr} {_OPERATORS[op]} {py(_literal(value, kind, cond, dtype))}"
    if op in ("IN", "NOT_IN"):
        literals = [_literal(v, kind, cond, dtype) for v in value]
        if kind == "number" and (
            dtype.is_float() or any(isinstance(v, float) and not v.is_integer() for v in literals)
        ):
            # Compared as floats, as the server does: 39.5 must not match 39 in an integer column.
            values = py([float(v) for v in literals])
            member = f"{column_expr}.cast(pl.Float64).is_in(pl.Series({values}, dtype=pl.Float64).implode())"
        elif kind == "number":
            values = py([int(v) for v in literals])
            member = f"{column_expr}.is_in(pl.Series({values}).cast({dtype_source(dtype)}, strict=False).implode())"
        else:
            member = f"{column_expr}.is_in(pl.Series({py(literals)}).implode())"
        return member if op == "IN" else f"~{member}"
    if op == "BETWEEN":
        low, high = (py(_literal(v, kind, cond, dtype)) for v in value)
        return f"{column_expr}.is_between(pl.lit({low}), pl.lit({high}), closed='both')"
    text = py(_literal(value, kind, cond, dtype))
    if op == "CONTAINS":
        return f"{column_expr}.str.contains({text}, literal=True)"
    return f"{column_expr}.str.{_TEXT_METHODS[op]}({text})"


def _group_by(script: _Script, number: int, step: GroupBy, schema: dict[str, pl.DataType]) -> None:
    keys = py(list(step.keys))
    ordered = any(a.fn in ("FIRST", "LAST") for a in step.aggregations)
    script.add(f"# Step {number}: groupBy, one row per key; sorted by the keys, missing keys last.")
    aggregations = [f"{col(a.column)}{AGGREGATE_METHODS[a.fn]}.alias({a.output!r})" for a in step.aggregations]
    script.add(
        "frame = (",
        f"    frame.group_by({keys}, maintain_order={ordered})",
        *indented(call(".agg", aggregations), "    "),
        f"    .sort({keys}, nulls_last=True, maintain_order=True)",
        ")",
    )


def _join(script: _Script, number: int, step: Join, schema: dict[str, pl.DataType]) -> None:
    how = "inner" if step.how == "INNER" else "left"
    light = _light(step)
    assert isinstance(light, Join)
    original = dict(light.right.scan()[0].collect_schema())
    prepared = dict(join_right_side(schema, light).collect_schema())  # renamed in place, keys cast
    renames = {old: new for old, new in zip(original, prepared, strict=True) if old != new}
    casts = [k for k in step.on if original[k] != schema[k]]
    script.add(
        f"# Step {number}: join dataset {step.right.dataset_id!r} (version {step.right.version}) on equal keys;"
        " left rows keep their order.",
        f"right = pl.scan_parquet({script.arg(step.right)})",
    )
    if renames:
        script.add("# Right-side names the left side has already get _right (then _right_2, ...).")
        script.add(f"right = right.rename({py(renames)})")
    if casts:
        script.add("# Keys are cast to the left side's types.")
        script.add(call("right = right.with_columns", [f"{col(k)}.cast({dtype_source(schema[k])})" for k in casts]))
    script.add(f"frame = frame.join(right, on={py(list(step.on))}, how={how!r}, maintain_order='left_right')")


# --- clean ----------------------------------------------------------------------------------------


def _clean(script: _Script, number: int, step: Clean, schema: dict[str, pl.DataType]) -> None:
    for part, s in enumerate(step.steps, 1):
        label = f"{number}.{part}" if len(step.steps) > 1 else str(number)
        after = _after(schema, Clean((s,)))
        script.add(f"# Step {label}: clean, {s.name}.", *clean_statements(s, schema))
        schema = after
