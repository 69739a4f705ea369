"""Columns as the API reports and checks them: descriptions (name, dtype, null count, missing rate),
the kind of value a column holds, and the messages that name a missing column or a bad value.

Both plan building and cleaning use these, so each message is worded once."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, cast

import polars as pl

from datagraph.errors import BadInput
from storage import ColumnInfo

__all__ = ["ColumnInfo", "check_columns", "column_infos", "dtype_name", "show_value", "value_kind"]


def dtype_name(dtype: pl.DataType) -> str:
    """A short, stable dtype name: Int64, Float64, String, Boolean, Date, Datetime, ..."""
    if isinstance(dtype, pl.Datetime):
        return "Datetime"
    if isinstance(dtype, pl.Duration):
        return "Duration"
    if isinstance(dtype, (pl.List, pl.Array)):
        return f"List({dtype_name(cast(pl.DataType, dtype.inner))})"
    if isinstance(dtype, pl.Struct):
        return "Struct"
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "String"
    return str(dtype)


def column_infos(frame: pl.DataFrame) -> list[ColumnInfo]:
    height = frame.height
    nulls = frame.null_count().row(0) if frame.width else ()
    return [
        ColumnInfo(
            name=name,
            dtype=dtype_name(dtype),
            null_count=int(n),
            missing_rate=(int(n) / height) if height else 0.0,
        )
        for (name, dtype), n in zip(frame.schema.items(), nulls, strict=True)
    ]


def check_columns(columns: Iterable[str], schema: Collection[str], where: str) -> None:
    """Raise `BadInput` naming the first column not in `schema`, and listing the ones that are."""
    for column in columns:
        if column not in schema:
            raise BadInput(f'{where}: there is no column "{column}". Columns: {_listing(schema)}.')


def _listing(schema: Collection[str]) -> str:
    names = list(schema)
    shown = ", ".join(names[:25])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 25 else "")


def value_kind(dtype: pl.DataType) -> str:
    """What a column holds, as messages and checks speak of it: boolean, int, float, date, datetime,
    text, or other."""
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_integer():
        return "int"
    if dtype.is_numeric():
        return "float"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "text"
    return "other"


def show_value(value: Any) -> str:
    """A value as a message quotes it: JSON-like (null, true, "text"), at most 60 characters."""
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    text = {"None": "null", "True": "true", "False": "false"}.get(text, text)
    return text if len(text) <= 60 else text[:57] + "..."
