"""Recipe scripts: the Polars statements of each cleaning step, as `engine._clean` applies it (the
same conversions, literals and options; a conversion the server checks value by value is written
as the expression it checks)."""

from __future__ import annotations

import polars as pl

from engine._clean import (
    _BOOLEAN_WORDS,
    _ISO_TIMESTAMPS,
    _TARGETS,
    _TIMESTAMP_TEXT,
    Cast,
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
from engine._pysource import call, col, dtype_source, py

__all__ = ["clean_statements"]


def clean_statements(s: CleanStep, schema: dict[str, pl.DataType]) -> list[str]:
    """The statements of one cleaning step over a frame of `schema` (already checked by the engine)."""
    if isinstance(s, DropNulls):
        columns = list(dict.fromkeys(s.columns)) if s.columns is not None else list(schema)
        if s.how == "ANY":
            return [f"frame = frame.drop_nulls({py(columns)})"]
        nulls = ", ".join(f"{col(c)}.is_null()" for c in columns)
        return [f"frame = frame.filter(~pl.all_horizontal({nulls}))"]
    if isinstance(s, Rename):
        return [f"frame = frame.rename({py(dict(s.pairs))})"]
    if isinstance(s, DropDuplicates):
        subset = f"{py(list(dict.fromkeys(s.columns)))}, " if s.columns is not None else ""
        return [f"frame = frame.unique({subset}keep={s.keep.lower()!r}, maintain_order=True)"]
    before: list[str] = []
    if isinstance(s, FillNulls):
        expressions = _fill_nulls(s, schema)
    elif isinstance(s, Cast):
        if s.to == "BOOLEAN" and any(value_kind(schema[c]) == "text" for c in s.columns):
            before.append(f"BOOLEAN_WORDS = {py(_BOOLEAN_WORDS)}  # the words read as true and false")
        expressions = [e for c in dict.fromkeys(s.columns) if (e := _cast(c, schema[c], s.to)) is not None]
    elif isinstance(s, Trim):
        named = list(dict.fromkeys(s.columns)) if s.columns is not None else None
        columns = named if named is not None else [c for c, d in schema.items() if value_kind(d) == "text"]
        expressions = [f"{_text(c, schema[c])}.str.strip_chars()" for c in columns]
    else:
        expressions = _parse_dates(s, schema)
    if not expressions:
        return ["# (no column it applies to: nothing changes)"]
    return [*before, call("frame = frame.with_columns", expressions)]


def _text(column: str, dtype: pl.DataType) -> str:
    return col(column) if dtype == pl.String else f"{col(column)}.cast(pl.String)"


def _fill_nulls(s: FillNulls, schema: dict[str, pl.DataType]) -> list[str]:
    named = list(dict.fromkeys(s.columns)) if s.columns is not None else None
    if s.strategy == "FORWARD":
        return [f"{col(c)}.forward_fill()" for c in (named or list(schema))]
    if s.strategy == "MEAN":  # integer columns become floats: the mean is rarely whole
        numeric = [c for c in schema if value_kind(schema[c]) in ("int", "float")]
        columns = numeric if named is None else named
        return [f"{col(c)}.cast(pl.Float64).fill_null({col(c)}.cast(pl.Float64).mean())" for c in columns]
    fills = []
    for column, dtype in schema.items():
        if named is not None and column not in named:
            continue
        literal = _fill_literal(s.value, dtype)
        if named is None and (literal is None or (isinstance(s.value, str) and value_kind(dtype) != "text")):
            continue  # with no columns named, the value fills only the columns it fits
        fills.append(f"{col(column)}.fill_null(pl.lit({py(literal)}, dtype={dtype_source(dtype)}))")
    return fills


def _cast(column: str, dtype: pl.DataType, to: str) -> str | None:
    """The conversion `engine._clean._cast_column` makes, as source (None: nothing to do)."""
    kind, target, source = value_kind(dtype), _TARGETS[to], col(column)
    if dtype == target:
        return None
    if to == "TEXT":
        return f"{source}.dt.to_string({_TIMESTAMP_TEXT!r})" if kind == "datetime" else f"{source}.cast(pl.String)"
    if kind in ("date", "datetime") or kind == "boolean" or (kind == "int" and to == "FLOAT"):
        return f"{source}.dt.date()" if to == "DATE" else f"{source}.cast({dtype_source(target)})"
    # Conversions that can fail: the server refuses a frame where a value does not convert, so
    # on the data it answered, these give the same values.
    if kind == "text":
        text = f"{_text(column, dtype)}.str.strip_chars()"
        if to in ("INT", "FLOAT"):
            converted = f"{text}.cast({dtype_source(target)}, strict=False)"
        elif to == "BOOLEAN":
            words = "BOOLEAN_WORDS, default=None, return_dtype=pl.Boolean"
            converted = f"{text}.str.to_lowercase().replace_strict({words})"
        elif to == "DATE":
            converted = f"{text}.str.to_date('%Y-%m-%d', strict=False)"
        else:
            # The first ISO shape that reads the value.
            parsed = [f"{text}.str.to_datetime({f!r}, strict=False, time_unit='us')" for f in _ISO_TIMESTAMPS]
            converted = call("pl.coalesce", parsed)
    elif to == "BOOLEAN":
        converted = f"pl.when({source} == 1).then(True).when({source} == 0).then(False).otherwise(None)"
    elif to == "INT" and kind == "float":
        converted = f"pl.when({source} == {source}.floor()).then({source}.cast(pl.Int64, strict=False))"
    else:
        converted = f"{source}.cast({dtype_source(target)}, strict=False)"
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
