"""The GraphQL inputs of `window(specs:)` and `resample(...)` and their conversion to engine steps."""

from __future__ import annotations

from enum import Enum
from typing import Any

import strawberry

import engine

__all__ = ["WindowFn", "WindowInput", "to_resample", "to_window"]


@strawberry.enum(
    description="Window functions: ROLLING_* over size rows or a period over orderBy (sample std); CUM_COUNT"
    " counts non-missing values; LAG/LEAD/DIFF/PCT_CHANGE shift by offset; RANK ties take the lowest rank;"
    " ROW_NUMBER starts at 1."
)
class WindowFn(Enum):
    ROLLING_MEAN = "ROLLING_MEAN"
    ROLLING_SUM = "ROLLING_SUM"
    ROLLING_MIN = "ROLLING_MIN"
    ROLLING_MAX = "ROLLING_MAX"
    ROLLING_STD = "ROLLING_STD"
    CUM_SUM = "CUM_SUM"
    CUM_MIN = "CUM_MIN"
    CUM_MAX = "CUM_MAX"
    CUM_COUNT = "CUM_COUNT"
    LAG = "LAG"
    LEAD = "LEAD"
    DIFF = "DIFF"
    PCT_CHANGE = "PCT_CHANGE"
    RANK = "RANK"
    ROW_NUMBER = "ROW_NUMBER"


@strawberry.input(
    name="WindowInput",
    description="One added column: alias, else <column>_<fn> in lower case. size is a row count, period a"
    ' duration ("7d") over orderBy (a date or timestamp column); by partitions; rows keep their order.',
)
class WindowInput:
    column: str
    fn: WindowFn
    alias: str | None = None
    size: int | None = None
    period: str | None = None
    min_periods: int | None = None
    offset: int | None = 1
    by: list[str] | None = None
    order_by: str | None = None


def to_window(specs: list[WindowInput]) -> engine.WindowStep:
    return engine.WindowStep(
        tuple(
            engine.WindowSpec(
                column=s.column,
                fn=s.fn.value,
                alias=s.alias,
                size=s.size,
                period=s.period,
                min_periods=s.min_periods,
                offset=1 if s.offset is None else s.offset,
                by=tuple(s.by or ()),
                order_by=s.order_by,
            )
            for s in specs
        )
    )


def to_resample(on: str, every: str, by: list[str] | None, aggregations: list[Any]) -> engine.Resample:
    aggs = tuple(engine.Aggregation(a.column, a.fn.value, a.alias) for a in aggregations)
    return engine.Resample(on, every, tuple(by or ()), aggs)
