"""Recipes: a plan written out as data (`Step` JSON, the dataset versions it reads) and as a
standalone Polars script that gives the same frame from the datasets' Parquet exports.

The script is generated step by step while the plan is checked: each step is built (lazily, on
an empty frame of the schema the previous step left, so no data is read) and written as the
Polars statement `build` makes of it, with the same options (nulls last, kept order, the join's
renames and key casts, ...). Everything that comes from a user (column names, values, formats,
SQL, dataset ids) reaches the script as `repr` of a Python value, never as code.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from engine._clean import (
    _BOOLEAN_WORDS,
    _ISO_TIMESTAMPS,
    _TARGETS,
    _TIMESTAMP_TEXT,
    Cast,
    Clean,
    CleanStep,
    DropDuplicates,
    DropNulls,
    FillNulls,
    ParseDates,
    Rename,
    Trim,
    _check_format,
    _fill_literal,
)
from engine._columns import value_kind
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
    build,
    join_right_side,
)

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


# --- Python literals ------------------------------------------------------------------------------


def _py(value: Any) -> str:
    """`value` as Python source: a literal (or `datetime.date(...)`), never user text as code."""
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, (dt.date, dt.datetime)):  # repr: datetime.date(2024, 1, 31), ...
        return repr(value.replace(tzinfo=None) if isinstance(value, dt.datetime) else value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py(k)}: {_py(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Python literal for {type(value).__name__}")


def _dtype(dtype: pl.DataType) -> str:
    """A Polars type as source (`pl.Int64`, `pl.Datetime(time_unit='us', time_zone=None)`)."""
    text = repr(dtype)
    if not re.fullmatch(r"[A-Za-z0-9_]+(\([A-Za-z0-9_=', ]*\))?", text):
        raise TypeError(f"no source for the type {text}")
    return f"pl.{text}"


def _col(name: str) -> str:
    return f"pl.col({name!r})"


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

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def arg(self, source: Source) -> str:
        return f"args.{self.options[(source.dataset_id, source.version)][1]}"


def _options(sources: list[Source]) -> dict[tuple[str, int], tuple[str, str]]:
    """`--<dataset id>` per source (`--<id>-v<N>` for a dataset read at two versions), and a
    Python name for each (dest)."""
    ids = [s.dataset_id for s in sources]
    found: dict[tuple[str, int], tuple[str, str]] = {}
    dests: set[str] = {"out"}
    for s in sources:
        option = s.dataset_id if ids.count(s.dataset_id) == 1 else f"{s.dataset_id}-v{s.version}"
        dest = re.sub(r"\W", "_", option.lower(), flags=re.ASCII).strip("_") or "dataset"
        dest = dest if dest[0].isalpha() else f"d_{dest}"
        base, n = dest, 1
        while dest in dests:
            n += 1
            dest = f"{base}_{n}"
        dests.add(dest)
        found[(s.dataset_id, s.version)] = (f"--{option}", dest)
    return found


def recipe(plan: Plan) -> dict[str, Any]:
    """The plan as a recipe: {steps, sources, polars, sql} (and `query` for a frame over SQL over
    datasets). Checks every step against the schema, as `build` does, without reading data."""
    link = plan.source.link
    build(plan, head=0 if link is not None else None)  # the refusal or the first wrong step, as results say it
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
            f"query = {_py(root.sql)}",
            "frame = context.execute(query, eager=False)",
        )
        schema: dict[str, pl.DataType] = dict(build(Plan(root))[1])
    else:
        script.add(
            f"# Dataset {root.dataset_id!r}, version {root.version}.", f"frame = pl.scan_parquet({script.arg(root)})"
        )
        schema = dict(build(Plan(root), head=0 if root.link is not None else None)[1])
    for number, step in enumerate(plan.steps, 1):
        script.add("")
        _write_step(script, number, step, schema)
        shaped = Source("", 0, Path(), link=_Shape(schema))
        schema = dict(build(Plan(shaped, (step,)))[1])
    script.add("", "# Collected as the server collects it, then written as its Parquet export is.")
    script.add("frame.collect().write_parquet(args.out)", "")
    text = "\n".join(script.lines)
    # Dates in filters are written datetime.date(...); the module is imported only when used.
    return text.replace("{imports}", "import datetime\n" if "datetime.date" in text else "", 1)


def _write_step(script: _Script, number: int, step: Step, schema: dict[str, pl.DataType]) -> None:
    if isinstance(step, Filter):
        script.add(f"# Step {number}: filter, keeping the rows that match every condition.")
        if not step.conditions:
            script.add("# (no conditions: every row stays)")
            return
        conditions = [_condition(c.column, c.op, c.value, schema) for c in step.conditions]
        script.add(_call("frame = frame.filter", conditions))
    elif isinstance(step, Select):
        script.add(f"# Step {number}: select these columns, in this order.")
        script.add(f"frame = frame.select({_py(list(step.columns))})")
    elif isinstance(step, Sort):
        script.add(f"# Step {number}: sort; missing values last, ties keep their order.")
        keys = _py([k.column for k in step.keys])
        descending = _py([k.descending for k in step.keys])
        script.add(f"frame = frame.sort({keys}, descending={descending}, nulls_last=True, maintain_order=True)")
    elif isinstance(step, Slice):
        script.add(f"# Step {number}: slice, {step.limit} rows from row {step.offset}.")
        script.add(f"frame = frame.slice({step.offset}, {step.limit})")
    elif isinstance(step, GroupBy):
        _group_by(script, number, step, schema)
    elif isinstance(step, Join):
        _join(script, number, step, schema)
    else:
        _clean(script, number, step, schema)


def _call(head: str, arguments: list[str]) -> str:
    """`head(a, b)` on one line when short, else one argument a line."""
    line = f"{head}({', '.join(arguments)})"
    if len(line) <= 100 and "\n" not in line:
        return line
    return "\n".join([f"{head}(", *("    " + a.replace("\n", "\n    ") + "," for a in arguments), ")"])


_OPERATORS = {"EQ": "==", "NE": "!=", "GT": ">", "GE": ">=", "LT": "<", "LE": "<="}
_TEXT_METHODS = {"STARTS_WITH": "starts_with", "ENDS_WITH": "ends_with"}


def _condition(column: str, op: str, value: Any, schema: dict[str, pl.DataType]) -> str:
    """One filter condition as the expression `engine._plan._condition` makes of it (already checked)."""
    dtype = schema[column]
    kind = _kind(dtype)
    cond = Condition(column, op, value)
    col = _col(column)
    if op == "IS_NULL":
        return f"{col}.is_null()"
    if op == "NOT_NULL":
        return f"{col}.is_not_null()"
    if op in _OPERATORS:
        return f"{col} {_OPERATORS[op]} {_py(_literal(value, kind, cond, dtype))}"
    if op in ("IN", "NOT_IN"):
        literals = [_literal(v, kind, cond, dtype) for v in value]
        if kind == "number" and (
            dtype.is_float() or any(isinstance(v, float) and not v.is_integer() for v in literals)
        ):
            # Compared as floats, as the server does: 39.5 must not match 39 in an integer column.
            values = _py([float(v) for v in literals])
            member = f"{col}.cast(pl.Float64).is_in(pl.Series({values}, dtype=pl.Float64).implode())"
        elif kind == "number":
            values = _py([int(v) for v in literals])
            member = f"{col}.is_in(pl.Series({values}).cast({_dtype(dtype)}, strict=False).implode())"
        else:
            member = f"{col}.is_in(pl.Series({_py(literals)}).implode())"
        return member if op == "IN" else f"~{member}"
    if op == "BETWEEN":
        low, high = (_py(_literal(v, kind, cond, dtype)) for v in value)
        return f"{col}.is_between(pl.lit({low}), pl.lit({high}), closed='both')"
    text = _py(_literal(value, kind, cond, dtype))
    if op == "CONTAINS":
        return f"{col}.str.contains({text}, literal=True)"
    return f"{col}.str.{_TEXT_METHODS[op]}({text})"


_AGGREGATES = {
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


def _group_by(script: _Script, number: int, step: GroupBy, schema: dict[str, pl.DataType]) -> None:
    keys = _py(list(step.keys))
    ordered = any(a.fn in ("FIRST", "LAST") for a in step.aggregations)
    script.add(f"# Step {number}: groupBy, one row per key; sorted by the keys, missing keys last.")
    aggregations = [f"{_col(a.column)}{_AGGREGATES[a.fn]}.alias({a.output!r})" for a in step.aggregations]
    script.add(
        "frame = (",
        f"    frame.group_by({keys}, maintain_order={ordered})",
        *_indented(_call(".agg", aggregations), "    "),
        f"    .sort({keys}, nulls_last=True, maintain_order=True)",
        ")",
    )


def _indented(text: str, prefix: str) -> list[str]:
    return [prefix + line for line in text.split("\n")]


def _join(script: _Script, number: int, step: Join, schema: dict[str, pl.DataType]) -> None:
    how = "inner" if step.how == "INNER" else "left"
    original = dict(step.right.scan()[0].collect_schema())
    prepared = dict(join_right_side(schema, step).collect_schema())  # renamed in place, keys cast
    renames = {old: new for old, new in zip(original, prepared, strict=True) if old != new}
    casts = [k for k in step.on if original[k] != schema[k]]
    script.add(
        f"# Step {number}: join dataset {step.right.dataset_id!r} (version {step.right.version}) on equal keys;"
        " left rows keep their order.",
        f"right = pl.scan_parquet({script.arg(step.right)})",
    )
    if renames:
        script.add("# Right-side names the left side has already get _right (then _right_2, ...).")
        script.add(f"right = right.rename({_py(renames)})")
    if casts:
        script.add("# Keys are cast to the left side's types.")
        script.add(_call("right = right.with_columns", [f"{_col(k)}.cast({_dtype(schema[k])})" for k in casts]))
    script.add(f"frame = frame.join(right, on={_py(list(step.on))}, how={how!r}, maintain_order='left_right')")


# --- clean ----------------------------------------------------------------------------------------


def _clean(script: _Script, number: int, step: Clean, schema: dict[str, pl.DataType]) -> None:
    for part, s in enumerate(step.steps, 1):
        label = f"{number}.{part}" if len(step.steps) > 1 else str(number)
        script.add(f"# Step {label}: clean, {s.name}.")
        expressions = _clean_step(script, s, schema)
        if expressions is not None:
            if expressions:
                script.add(_call("frame = frame.with_columns", expressions))
            else:
                script.add("# (no column it applies to: nothing changes)")
        shaped = Source("", 0, Path(), link=_Shape(schema))
        schema = dict(build(Plan(shaped, (Clean((s,)),)))[1])


def _clean_step(script: _Script, s: CleanStep, schema: dict[str, pl.DataType]) -> list[str] | None:
    """The expressions of a step that replaces columns (None when the step wrote its own statement)."""
    if isinstance(s, DropNulls):
        columns = list(dict.fromkeys(s.columns)) if s.columns is not None else list(schema)
        if s.how == "ANY":
            script.add(f"frame = frame.drop_nulls({_py(columns)})")
        else:
            nulls = ", ".join(f"{_col(c)}.is_null()" for c in columns)
            script.add(f"frame = frame.filter(~pl.all_horizontal({nulls}))")
        return None
    if isinstance(s, FillNulls):
        return _fill_nulls(s, schema)
    if isinstance(s, Cast):
        if s.to == "BOOLEAN" and any(value_kind(schema[c]) == "text" for c in s.columns):
            script.add(f"BOOLEAN_WORDS = {_py(_BOOLEAN_WORDS)}  # the words read as true and false")
        return [e for c in dict.fromkeys(s.columns) if (e := _cast(c, schema[c], s.to)) is not None]
    if isinstance(s, Rename):
        script.add(f"frame = frame.rename({_py(dict(s.pairs))})")
        return None
    if isinstance(s, DropDuplicates):
        subset = f"{_py(list(dict.fromkeys(s.columns)))}, " if s.columns is not None else ""
        script.add(f"frame = frame.unique({subset}keep={s.keep.lower()!r}, maintain_order=True)")
        return None
    if isinstance(s, Trim):
        named = list(dict.fromkeys(s.columns)) if s.columns is not None else None
        columns = named if named is not None else [c for c, d in schema.items() if value_kind(d) == "text"]
        return [f"{_text(c, schema[c])}.str.strip_chars()" for c in columns]
    return _parse_dates(s, schema)


def _text(column: str, dtype: pl.DataType) -> str:
    return _col(column) if dtype == pl.String else f"{_col(column)}.cast(pl.String)"


def _fill_nulls(s: FillNulls, schema: dict[str, pl.DataType]) -> list[str]:
    named = list(dict.fromkeys(s.columns)) if s.columns is not None else None
    if s.strategy == "FORWARD":
        return [f"{_col(c)}.forward_fill()" for c in (named or list(schema))]
    if s.strategy == "MEAN":  # integer columns become floats: the mean is rarely whole
        numeric = [c for c in schema if value_kind(schema[c]) in ("int", "float")]
        columns = numeric if named is None else named
        return [f"{_col(c)}.cast(pl.Float64).fill_null({_col(c)}.cast(pl.Float64).mean())" for c in columns]
    fills = []
    for column, dtype in schema.items():
        if named is not None and column not in named:
            continue
        literal = _fill_literal(s.value, dtype)
        if named is None and (literal is None or (isinstance(s.value, str) and value_kind(dtype) != "text")):
            continue  # with no columns named, the value fills only the columns it fits
        fills.append(f"{_col(column)}.fill_null(pl.lit({_py(literal)}, dtype={_dtype(dtype)}))")
    return fills


def _cast(column: str, dtype: pl.DataType, to: str) -> str | None:
    """The conversion `engine._clean._cast_column` makes, as source (None: nothing to do)."""
    kind, target, col = value_kind(dtype), _TARGETS[to], _col(column)
    if dtype == target:
        return None
    if to == "TEXT":
        return f"{col}.dt.to_string({_TIMESTAMP_TEXT!r})" if kind == "datetime" else f"{col}.cast(pl.String)"
    if kind in ("date", "datetime") or kind == "boolean" or (kind == "int" and to == "FLOAT"):
        return f"{col}.dt.date()" if to == "DATE" else f"{col}.cast({_dtype(target)})"
    # Conversions that can fail: the server refuses a frame where a value does not convert, so
    # on the data it answered, these give the same values.
    if kind == "text":
        text = f"{_text(column, dtype)}.str.strip_chars()"
        if to in ("INT", "FLOAT"):
            converted = f"{text}.cast({_dtype(target)}, strict=False)"
        elif to == "BOOLEAN":
            words = "BOOLEAN_WORDS, default=None, return_dtype=pl.Boolean"
            converted = f"{text}.str.to_lowercase().replace_strict({words})"
        elif to == "DATE":
            converted = f"{text}.str.to_date('%Y-%m-%d', strict=False)"
        else:
            # The first ISO shape that reads the value.
            parsed = [f"{text}.str.to_datetime({f!r}, strict=False, time_unit='us')" for f in _ISO_TIMESTAMPS]
            converted = _call("pl.coalesce", parsed)
    elif to == "BOOLEAN":
        converted = f"pl.when({col} == 1).then(True).when({col} == 0).then(False).otherwise(None)"
    elif to == "INT" and kind == "float":
        converted = f"pl.when({col} == {col}.floor()).then({col}.cast(pl.Int64, strict=False))"
    else:
        converted = f"{col}.cast({_dtype(target)}, strict=False)"
    if target.is_float():
        converted += ".fill_nan(None)"  # "nan" text is a missing value, as on upload
    return f"{converted}.alias({column!r})"


def _parse_dates(s: ParseDates, schema: dict[str, pl.DataType]) -> list[str]:
    zoned = _check_format(s.format, f"clean {s.name}")
    out = []
    for column in dict.fromkeys(s.columns):
        parsed = (
            f"{_text(column, schema[column])}.str.strip_chars()"
            f".str.to_datetime({s.format!r}, strict=False, time_unit='us')"
        )
        if zoned:  # values with an offset: the instant, in UTC
            parsed += ".dt.convert_time_zone('UTC').dt.replace_time_zone(None)"
        if s.to == "DATE":
            parsed += ".dt.date()"
        out.append(f"{parsed}.alias({column!r})")
    return out
