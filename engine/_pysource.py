"""Python source for recipe scripts: values as literals, Polars types and columns, calls laid out
to be read. Whatever comes from a user reaches a script through `py` (a `repr`), never as code."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from typing import Any

import polars as pl

from datagraph.errors import BadInput

__all__ = ["call", "col", "dtype_source", "indented", "py"]


def py(value: Any) -> str:
    """`value` as Python source: a literal (or `datetime.date(...)`, `decimal.Decimal('1.50')`), never
    user text as code."""
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, decimal.Decimal):  # a decimal column's value (SQL over datasets makes them)
        return f"decimal.Decimal({str(value)!r})"
    if isinstance(value, (dt.date, dt.datetime)):  # repr: datetime.date(2024, 1, 31), ...
        return repr(value.replace(tzinfo=None) if isinstance(value, dt.datetime) else value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py(k)}: {py(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Python literal for {type(value).__name__}")


def dtype_source(dtype: pl.DataType) -> str:
    """A Polars type as source (`pl.Int64`, `pl.Datetime(time_unit='us', time_zone=None)`)."""
    text = repr(dtype)
    if not re.fullmatch(r"[A-Za-z0-9_]+(\([A-Za-z0-9_=', /+:-]*\))?", text):  # a time zone: 'Europe/Oslo'
        raise BadInput(f"recipe: a script cannot name the column type {text[:60]}; cast the column first.")
    return f"pl.{text}"


def col(name: str) -> str:
    return f"pl.col({name!r})"


def call(head: str, arguments: list[str]) -> str:
    """`head(a, b)` on one line when short, else one argument a line."""
    line = f"{head}({', '.join(arguments)})"
    if len(line) <= 100 and "\n" not in line:
        return line
    return "\n".join([f"{head}(", *("    " + a.replace("\n", "\n    ") + "," for a in arguments), ")"])


def indented(text: str, prefix: str) -> list[str]:
    return [prefix + line for line in text.split("\n")]
