"""How many rows a plan's time series steps found without a time: left out of a `Resample` or a
`JoinAsof` (a missing or NaN time on the left), given no value by a period `WindowStep` (`meta.nullKeys`
of a frame's rows)."""

from __future__ import annotations

import polars as pl

from engine._plan import Plan, build
from engine._reshape import JoinAsof
from engine._timeseries import Resample, WindowStep

__all__ = ["null_time_keys", "time_keys"]


def time_keys(step: object) -> list[str]:
    """The time columns `step` leaves missing values of out: a resample's or an as-of join's `on`, a
    period window's orderBy."""
    if isinstance(step, Resample | JoinAsof):
        return [step.on]
    if isinstance(step, WindowStep):
        return list(dict.fromkeys(s.order_by for s in step.specs if s.period is not None and s.order_by is not None))
    return []


def null_time_keys(plan: Plan) -> pl.LazyFrame | None:
    """A one-row query of the missing time keys each such step meets (summed over steps), or None when
    the plan has no such step. Each step's count is of the frame just before it."""
    counts: list[pl.LazyFrame] = []
    for number, step in enumerate(plan.steps):
        keys = time_keys(step)
        if not keys:
            continue
        before, _ = build(Plan(plan.source, plan.steps[:number]))
        schema = before.collect_schema()
        # An as-of join leaves a NaN time out too, as missing (pandas counts NaN as missing).
        missing = pl.any_horizontal(
            pl.col(k).is_null() | pl.col(k).is_nan() if schema.get(k, pl.Null).is_float() else pl.col(k).is_null()
            for k in keys
        )
        counts.append(before.select(missing.sum().cast(pl.Int64).alias("n")))
    if not counts:
        return None
    return pl.concat(counts).select(pl.col("n").sum())
