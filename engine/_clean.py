"""`clean(steps)`: the cleaning transforms (drop/fill nulls, cast, rename, dedupe, trim, parse dates).

Each step is plain frozen data. `apply_clean` checks every step against the schema as it goes
(columns, types, values, formats), so a wrong step is a `BadInput` before any data is read. The
conversions that can meet values they cannot read (`cast`, `parseDates`) run through `_checked`:
it converts whole columns and, if a value does not convert, raises a `BadInput` naming the column,
how many values failed and the first few of them, so the user never sees Polars' text.
Every step keeps the row order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import polars as pl

from datagraph.errors import BadInput
from engine._columns import check_columns, dtype_name, show_value, value_kind

__all__ = [
    "CAST_TYPES",
    "DATE_TYPES",
    "DUPLICATE_KEEPS",
    "FILL_STRATEGIES",
    "NULL_HOWS",
    "Cast",
    "Clean",
    "CleanStep",
    "DropDuplicates",
    "DropNulls",
    "FillNulls",
    "ParseDates",
    "Rename",
    "Trim",
    "apply_clean",
    "clean_key",
    "translate_error",
]

NULL_HOWS = ("ANY", "ALL")
FILL_STRATEGIES = ("VALUE", "FORWARD", "MEAN")
CAST_TYPES = ("INT", "FLOAT", "TEXT", "BOOLEAN", "DATE", "DATETIME")
DUPLICATE_KEEPS = ("FIRST", "LAST", "NONE")
DATE_TYPES = ("DATE", "DATETIME")

_TARGETS: dict[str, pl.DataType] = {
    "INT": pl.Int64(),
    "FLOAT": pl.Float64(),
    "TEXT": pl.String(),
    "BOOLEAN": pl.Boolean(),
    "DATE": pl.Date(),
    "DATETIME": pl.Datetime("us"),
}
_NEEDS = {
    "INT": "INT needs whole numbers",
    "FLOAT": "FLOAT needs numbers",
    "BOOLEAN": "BOOLEAN needs true/false, yes/no or 1/0",
    "DATE": "DATE reads ISO dates like 2024-01-31; parseDates reads other formats",
    "DATETIME": "DATETIME reads ISO timestamps like 2024-01-31 12:00:00; parseDates reads other formats",
}
_BOOLEAN_WORDS = {"true": True, "t": True, "yes": True, "y": True, "1": True,
                  "false": False, "f": False, "no": False, "n": False, "0": False}  # fmt: skip
_ISO_TIMESTAMPS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d")
_TIMESTAMP_TEXT = "%Y-%m-%d %H:%M:%S%.f"  # as pandas prints a Timestamp: fractions only when there are some


@dataclass(frozen=True, slots=True)
class DropNulls:
    """Drop the rows missing a value in ANY of `columns` (every column when None), or in ALL of them."""

    name: ClassVar[str] = "dropNulls"
    how: str = "ANY"
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class FillNulls:
    """Fill missing values with `value` (VALUE), the previous value (FORWARD) or the column's MEAN,
    in `columns`, or when None in every column the value or strategy applies to."""

    name: ClassVar[str] = "fillNulls"
    strategy: str = "VALUE"
    value: Any = None
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Cast:
    """Convert `columns` to `to` (one of `CAST_TYPES`)."""

    name: ClassVar[str] = "cast"
    columns: tuple[str, ...]
    to: str


@dataclass(frozen=True, slots=True)
class Rename:
    """Rename columns, all at once: `(from, to)` pairs."""

    name: ClassVar[str] = "rename"
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class DropDuplicates:
    """Keep one row (the FIRST or LAST) of rows equal on `columns` (every column when None), or NONE of them."""

    name: ClassVar[str] = "dropDuplicates"
    columns: tuple[str, ...] | None = None
    keep: str = "FIRST"


@dataclass(frozen=True, slots=True)
class Trim:
    """Strip whitespace from both ends of the text in `columns` (every text column when None)."""

    name: ClassVar[str] = "trim"
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ParseDates:
    """Read the text in `columns` as dates (DATE) or timestamps (DATETIME) with a strftime `format`."""

    name: ClassVar[str] = "parseDates"
    columns: tuple[str, ...]
    format: str
    to: str = "DATE"


CleanStep = DropNulls | FillNulls | Cast | Rename | DropDuplicates | Trim | ParseDates


@dataclass(frozen=True, slots=True)
class Clean:
    """One `clean(steps)` transform: its cleaning steps, applied in order."""

    steps: tuple[CleanStep, ...]


def clean_key(step: Clean) -> list[Any]:
    """Canonical plain-data form of the step, for the cache key."""
    return [{s.name: {f.name: _plain(getattr(s, f.name)) for f in dataclasses.fields(s)}} for s in step.steps]


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def apply_clean(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], step: Clean
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """The frame with every cleaning step applied, and its new schema; `BadInput` on a wrong step."""
    if not step.steps:
        raise BadInput("clean needs at least one step.")
    for s in step.steps:
        where = f"clean {s.name}"
        if isinstance(s, DropNulls):
            frame = _drop_nulls(frame, schema, s, where)
        elif isinstance(s, FillNulls):
            frame = _fill_nulls(frame, schema, s, where)
        elif isinstance(s, Cast):
            frame = _cast(frame, schema, s, where)
        elif isinstance(s, Rename):
            frame = _rename(frame, schema, s, where)
        elif isinstance(s, DropDuplicates):
            frame = _drop_duplicates(frame, schema, s, where)
        elif isinstance(s, Trim):
            frame = _trim(frame, schema, s, where)
        else:
            frame = _parse_dates(frame, schema, s, where)
        schema = dict(frame.collect_schema())
    return frame, schema


# --- checks shared by the steps ------------------------------------------------------------------


def _columns(named: tuple[str, ...] | None, schema: Mapping[str, pl.DataType], where: str) -> list[str] | None:
    """The named columns, checked to exist (None when none are named)."""
    if named is None:
        return None
    if not named:
        raise BadInput(f"{where}: name at least one column, or leave columns out for all of them.")
    check_columns(named, schema, where)
    return list(dict.fromkeys(named))


def _text_only(columns: Iterable[str], schema: Mapping[str, pl.DataType], where: str, hint: str) -> None:
    for column in columns:
        if value_kind(schema[column]) != "text":
            raise BadInput(f'{where}: "{column}" is {dtype_name(schema[column])}, not text; {hint}.')


# --- dropNulls, fillNulls, rename, dropDuplicates, trim ------------------------------------------


def _drop_nulls(frame: pl.LazyFrame, schema: dict[str, pl.DataType], s: DropNulls, where: str) -> pl.LazyFrame:
    if s.how not in NULL_HOWS:
        raise BadInput(f'{where}: unknown how "{s.how}"; use one of {", ".join(NULL_HOWS)}.')
    columns = _columns(s.columns, schema, where) or list(schema)
    if s.how == "ANY":
        return frame.drop_nulls(columns)
    return frame.filter(~pl.all_horizontal(pl.col(c).is_null() for c in columns))


def _fill_nulls(frame: pl.LazyFrame, schema: dict[str, pl.DataType], s: FillNulls, where: str) -> pl.LazyFrame:
    if s.strategy not in FILL_STRATEGIES:
        raise BadInput(f'{where}: unknown strategy "{s.strategy}"; use one of {", ".join(FILL_STRATEGIES)}.')
    named = _columns(s.columns, schema, where)
    if s.strategy != "VALUE":
        if s.value is not None:
            raise BadInput(f"{where}: strategy {s.strategy} takes no value; leave value out.")
        if s.strategy == "FORWARD":
            return frame.with_columns(pl.col(c).forward_fill() for c in (named or list(schema)))
        numeric = [c for c in schema if value_kind(schema[c]) in ("int", "float")]
        for column in named or ():
            if column not in numeric:
                raise BadInput(f'{where}: MEAN needs a numeric column; "{column}" is {dtype_name(schema[column])}.')
        # Integer columns become Float64: the mean is rarely whole (pandas' integer columns with
        # missing values are floats already).
        means = [pl.col(c).cast(pl.Float64) for c in (numeric if named is None else named)]
        return frame.with_columns(m.fill_null(m.mean()) for m in means)
    if s.value is None:
        raise BadInput(f"{where} needs a value, or strategy FORWARD or MEAN.")
    if not isinstance(s.value, (str, int, float)):
        raise BadInput(f"{where}: value must be one number, text, true or false; got {show_value(s.value)}.")
    fills: list[pl.Expr] = []
    for column, dtype in schema.items():
        if named is not None and column not in named:
            continue
        literal = _fill_literal(s.value, dtype)
        # With no columns named, text fills only text columns (not dates that it might spell).
        if named is None and (literal is None or (isinstance(s.value, str) and value_kind(dtype) != "text")):
            continue
        if literal is None:
            raise BadInput(
                f'{where}: the value {show_value(s.value)} does not fit "{column}" ({dtype_name(dtype)});'
                f" it needs {_expected(dtype)}."
            )
        fills.append(pl.col(column).fill_null(pl.lit(literal, dtype=dtype)))
    return frame.with_columns(fills) if fills else frame


def _fill_literal(value: Any, dtype: pl.DataType) -> Any:
    """`value` as a value of `dtype`, or None when it does not fit."""
    kind = value_kind(dtype)
    if isinstance(value, bool):
        return value if kind == "boolean" else None
    if isinstance(value, (int, float)) and kind in ("int", "float"):
        try:
            if kind == "int" and not float(value).is_integer():
                return None
            converted = pl.Series([int(value) if kind == "int" else value]).cast(dtype, strict=False)  # in range?
        except (OverflowError, pl.exceptions.PolarsError):
            return None
        return converted.item()
    if isinstance(value, str):
        if kind == "text":
            return value
        if kind in ("date", "datetime"):
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                return None
            return parsed.date() if kind == "date" else parsed.replace(tzinfo=None)
    return None


def _expected(dtype: pl.DataType) -> str:
    return {
        "int": "a whole number",
        "float": "a number",
        "boolean": "true or false",
        "text": "text",
        "date": 'a date like "2024-01-31"',
        "datetime": 'a timestamp like "2024-01-31T12:00:00"',
    }.get(value_kind(dtype), "a value of its type (FORWARD fills any column)")


def _rename(frame: pl.LazyFrame, schema: dict[str, pl.DataType], s: Rename, where: str) -> pl.LazyFrame:
    if not s.pairs:
        raise BadInput(f"{where} needs at least one {{from, to}} pair.")
    check_columns([old for old, _ in s.pairs], schema, where)
    mapping: dict[str, str] = {}
    for old, new in s.pairs:
        if old in mapping:
            raise BadInput(f'{where}: "{old}" is renamed twice.')
        if not new.strip():
            raise BadInput(f'{where}: the new name for "{old}" is empty.')
        mapping[old] = new
    names = [mapping.get(c, c) for c in schema]
    for new in dict.fromkeys(n for n in names if names.count(n) > 1):
        sources = [f'"{c}"' for c in schema if mapping.get(c, c) == new]
        raise BadInput(
            f'{where}: {" and ".join(sources)} would both be called "{new}"; choose another name or rename both.'
        )
    return frame.rename(mapping)


def _drop_duplicates(
    frame: pl.LazyFrame, schema: dict[str, pl.DataType], s: DropDuplicates, where: str
) -> pl.LazyFrame:
    if s.keep not in DUPLICATE_KEEPS:
        raise BadInput(f'{where}: unknown keep "{s.keep}"; use one of {", ".join(DUPLICATE_KEEPS)}.')
    columns = _columns(s.columns, schema, where)
    keep: dict[str, Literal["first", "last", "none"]] = {"FIRST": "first", "LAST": "last", "NONE": "none"}
    # maintain_order: the streaming engine does not keep row order in unique otherwise.
    return frame.unique(columns, keep=keep[s.keep], maintain_order=True)


def _trim(frame: pl.LazyFrame, schema: dict[str, pl.DataType], s: Trim, where: str) -> pl.LazyFrame:
    named = _columns(s.columns, schema, where)
    if named is not None:
        _text_only(named, schema, where, "trim works on text")
    columns = named if named is not None else [c for c, d in schema.items() if value_kind(d) == "text"]
    return frame.with_columns(pl.col(c).cast(pl.String).str.strip_chars() for c in columns)


# --- cast and parseDates: conversions that can fail ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Conversion:
    """One column's conversion that can fail, and the message for its failure(count, examples)."""

    column: str
    convert: Callable[[pl.Expr], pl.Expr]
    dtype: pl.DataType
    failure: Callable[[int, str], str]


_SCRATCH = "\x1fclean"  # a name no column has: holds the converted columns for a moment


def _checked(frame: pl.LazyFrame, conversions: list[_Conversion]) -> pl.LazyFrame:
    """The frame with each conversion applied to the whole of its column, in one pass. A value
    that is present, not blank, and yet converts to null is a failure: the first column (in the
    order given) with failures raises `BadInput`, so the same input always gets the same message."""
    if not conversions:
        return frame

    def run(packed: pl.Series, **_: Any) -> pl.Series:
        sources = packed.struct.unnest()
        outputs: list[pl.Series] = []
        for conversion in conversions:
            source = sources[conversion.column]
            out = source.to_frame("v").select(conversion.convert(pl.col("v"))).to_series()
            failed = source.is_not_null() & out.is_null()
            if value_kind(source.dtype) == "text":  # blank text is a missing value, as on upload
                failed = failed & (source.cast(pl.String).str.strip_chars() != "")
            bad = source.filter(failed)
            if bad.len():
                shown = ", ".join(show_value(v) for v in bad.unique(maintain_order=True).head(3).to_list())
                raise BadInput(conversion.failure(bad.len(), shown))
            if out.dtype.is_float():
                out = out.fill_nan(None)  # "nan" text is a missing value, as on upload
            outputs.append(out.alias(conversion.column))
        return pl.DataFrame(outputs).to_struct(_SCRATCH)

    dtype = pl.Struct({c.column: c.dtype for c in conversions})
    packed = pl.struct(c.column for c in conversions).map_batches(run, return_dtype=dtype)
    # One UDF for all the columns (unnesting it in place would run it once per column).
    return frame.with_columns(packed.alias(_SCRATCH)).with_columns(pl.col(_SCRATCH).struct.unnest()).drop(_SCRATCH)


def _cast(frame: pl.LazyFrame, schema: dict[str, pl.DataType], s: Cast, where: str) -> pl.LazyFrame:
    if s.to not in CAST_TYPES:
        raise BadInput(f'{where}: unknown type "{s.to}"; use one of {", ".join(CAST_TYPES)}.')
    columns = _columns(s.columns, schema, where)
    if columns is None:
        raise BadInput(f"{where} needs the columns to convert.")
    plain: list[pl.Expr] = []
    checked: list[_Conversion] = []
    for column in columns:
        converted = _cast_column(column, schema[column], s.to, where)
        if isinstance(converted, _Conversion):
            checked.append(converted)
        else:
            plain.append(converted)
    return _checked(frame.with_columns(plain) if plain else frame, checked)


def _cast_column(column: str, dtype: pl.DataType, to: str, where: str) -> pl.Expr | _Conversion:
    """A conversion that cannot fail as an expression; one that can as a `_Conversion`."""
    kind, target, col = value_kind(dtype), _TARGETS[to], pl.col(column)
    if dtype == target:
        return col
    if to == "TEXT" and kind != "other":
        return col.dt.to_string(_TIMESTAMP_TEXT) if kind == "datetime" else col.cast(pl.String)
    allowed = {"text": CAST_TYPES, "int": ("INT", "FLOAT", "BOOLEAN"), "float": ("INT", "FLOAT", "BOOLEAN"),
               "boolean": ("INT", "FLOAT"), "date": ("DATETIME",), "datetime": ("DATE", "DATETIME")}  # fmt: skip
    if to not in allowed.get(kind, ()):
        hint = "; cast it to TEXT, then parseDates" if kind in ("int", "float") and to in DATE_TYPES else ""
        raise BadInput(f'{where}: "{column}" is {dtype_name(dtype)} and cannot become {to}{hint}.')
    if kind in ("date", "datetime") or kind == "boolean" or (kind == "int" and to == "FLOAT"):
        return col.dt.date() if to == "DATE" else col.cast(target)  # these never fail

    def failure(count: int, shown: str) -> str:
        values = f"{count} values" if count != 1 else "1 value"
        return f'{where}: "{column}" to {to} failed for {values}, e.g. {shown}; {_NEEDS[to]}.'

    return _Conversion(column, lambda v: _convert(v, kind, to), target, failure)


def _convert(v: pl.Expr, kind: str, to: str) -> pl.Expr:
    """The conversion of `v` (of `kind`) to `to`, null where a value does not convert."""
    target = _TARGETS[to]
    if kind == "text":
        text = v.cast(pl.String).str.strip_chars()
        if to in ("INT", "FLOAT"):
            return text.cast(target, strict=False)
        if to == "BOOLEAN":
            return text.str.to_lowercase().replace_strict(_BOOLEAN_WORDS, default=None, return_dtype=pl.Boolean)
        if to == "DATE":
            return text.str.to_date("%Y-%m-%d", strict=False)
        return pl.coalesce(text.str.to_datetime(f, strict=False, time_unit="us") for f in _ISO_TIMESTAMPS)
    if to == "BOOLEAN":
        return pl.when(v == 1).then(True).when(v == 0).then(False).otherwise(None)
    if to == "INT" and kind == "float":
        return pl.when(v == v.floor()).then(v.cast(pl.Int64, strict=False))  # no silent truncation
    return v.cast(target, strict=False)


def _parse_dates(frame: pl.LazyFrame, schema: dict[str, pl.DataType], s: ParseDates, where: str) -> pl.LazyFrame:
    if s.to not in DATE_TYPES:
        raise BadInput(f'{where}: unknown type "{s.to}"; use one of {", ".join(DATE_TYPES)}.')
    columns = _columns(s.columns, schema, where)
    if columns is None:
        raise BadInput(f"{where} needs the columns to read.")
    _text_only(columns, schema, where, "parseDates reads text (cast it to TEXT first)")
    zoned = _check_format(s.format, where)

    def parse(v: pl.Expr) -> pl.Expr:
        parsed = v.cast(pl.String).str.strip_chars().str.to_datetime(s.format, strict=False, time_unit="us")
        if zoned:  # values with an offset: keep the instant, in UTC
            parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return parsed.dt.date() if s.to == "DATE" else parsed

    def failure_for(column: str) -> Callable[[int, str], str]:
        def failure(count: int, shown: str) -> str:
            values, verb = (f"{count} values", "do") if count != 1 else ("1 value", "does")
            return f'{where}: {values} of "{column}" {verb} not match the format "{s.format}", e.g. {shown}.'

        return failure

    return _checked(frame, [_Conversion(c, parse, _TARGETS[s.to], failure_for(c)) for c in columns])


def _check_format(fmt: str, where: str) -> bool:
    """Raise `BadInput` unless `fmt` reads back a date it wrote (with its year); say whether the
    parsed values carry a time zone (an offset such as %z in the format)."""
    sample = dt.datetime(2024, 11, 23, 13, 45, 30)
    for probe in (sample, sample.replace(tzinfo=dt.UTC)):
        try:
            written = pl.Series([probe]).dt.to_string(fmt)
            parsed = written.str.to_datetime(fmt, strict=False, time_unit="us")
        except pl.exceptions.PolarsError:
            continue
        value = parsed.item()
        if value is not None and value.year == sample.year:
            dtype = parsed.dtype
            return isinstance(dtype, pl.Datetime) and dtype.time_zone is not None
        break
    raise BadInput(
        f'{where}: the format "{fmt}" does not read a date with its year; use strftime codes,'
        ' e.g. "%d/%m/%Y" or "%Y-%m-%d %H:%M".'
    )


# --- errors while collecting ---------------------------------------------------------------------

_CONVERSION_FAILED = re.compile(
    r"conversion from `[^`]*` to `([^`]*)` failed in column '([^']*)' for \d+ out of \d+ values: \[(.{0,200}?)\]"
)
_TYPE_NAMES = {"i64": "INT", "f64": "FLOAT", "bool": "BOOLEAN", "str": "TEXT", "date": "DATE"}


def translate_error(exc: Exception) -> Exception | None:
    """A `BadInput` in the user's terms for a Polars error raised while collecting a cleaned frame
    (a value that does not convert), or None when `exc` is not one of those."""
    if not isinstance(exc, (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError)):
        return None
    found = _CONVERSION_FAILED.search(str(exc))
    if found is None:
        return None
    target, column, shown = found.groups()
    name = _TYPE_NAMES.get(target, "DATETIME" if target.startswith("datetime") else "another type")
    return BadInput(f'clean: "{column}" does not convert to {name}; values such as {shown} cannot be read.')
