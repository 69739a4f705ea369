"""The GraphQL inputs of the reshaping transforms (`joinAsof`, `pivot`, `unpivot`) and their
conversion to the engine's steps, with the server's guard settings in them. (`PivotInput` is in
`gql.frames`, beside `GroupByInput`: its `fn` is the `AggFn` enum defined there.)"""

from __future__ import annotations

from enum import Enum
from typing import Any

import strawberry
from strawberry.scalars import JSON

import engine
from resolvers import datasets as ds
from resolvers.context import Context

__all__ = [
    "AsofStrategy",
    "JoinAsofInput",
    "UnpivotInput",
    "to_join_asof",
    "to_pivot",
    "to_unpivot",
]


@strawberry.enum(
    description="Which right row an as-of join takes: the last at or before the left time (BACKWARD), the first at"
    " or after it (FORWARD), or the closer of the two (NEAREST)."
)
class AsofStrategy(Enum):
    BACKWARD = "BACKWARD"
    FORWARD = "FORWARD"
    NEAREST = "NEAREST"


@strawberry.input(
    name="JoinAsofInput",
    description="pandas.merge_asof with the dataset `right`: time column `on` (`rightOn` on the right), by-groups,"
    ' tolerance a number (numeric keys) or a duration like "5m" or "2d" (dates, timestamps).',
)
class JoinAsofInput:
    right: strawberry.ID
    on: str
    right_on: str | None = None
    by: list[str] | None = None
    strategy: AsofStrategy | None = AsofStrategy.BACKWARD
    tolerance: JSON | None = None


@strawberry.input(name="UnpivotInput", description="pandas.melt: the `on` columns (else all but index) become rows.")
class UnpivotInput:
    index: list[str]
    on: list[str] | None = None
    variable_name: str | None = "variable"
    value_name: str | None = "value"


def _frozen(value: Any) -> Any:
    """A JSON value as hashable data (lists as tuples), so the step stays hashable even when wrong."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    return value


def to_join_asof(
    ctx: Context,
    right: str,
    on: str,
    right_on: str | None,
    by: list[str] | None,
    strategy: AsofStrategy | None,
    tolerance: Any,
) -> engine.JoinAsof:
    source = ds.join_step(ctx, right, [on], "INNER").right  # the right dataset's current version
    return engine.JoinAsof(
        source,
        on,
        right_on,
        tuple(by or ()),
        (strategy or AsofStrategy.BACKWARD).value,
        _frozen(tolerance),
        ctx.settings.join_max_rows,
    )


def to_pivot(ctx: Context, index: list[str], columns: str, values: str, fn: Enum | None) -> engine.Pivot:
    fn_name = fn.value if fn else "FIRST"
    settings = ctx.settings
    return engine.Pivot(tuple(index), columns, values, fn_name, settings.pivot_max_columns, settings.join_max_rows)


def to_unpivot(
    ctx: Context, index: list[str], on: list[str] | None, variable_name: str | None, value_name: str | None
) -> engine.Unpivot:
    return engine.Unpivot(
        tuple(index),
        tuple(on) if on is not None else None,
        "variable" if variable_name is None else variable_name,
        "value" if value_name is None else value_name,
        ctx.settings.join_max_rows,
    )
