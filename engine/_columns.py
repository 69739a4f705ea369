"""Column descriptions (name, dtype, null count, missing rate) as the API reports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import polars as pl

__all__ = ["ColumnInfo", "column_infos", "dtype_name"]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    dtype: str
    null_count: int
    missing_rate: float


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
