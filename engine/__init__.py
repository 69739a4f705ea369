"""Plans (steps -> one Polars LazyFrame), the operations that collect them, and where they run."""

from engine._executor import Executor
from engine._ops import EXPORT_FORMATS, Rows, count, describe, explain, export, rows, value_counts
from engine._plan import (
    AGG_FNS,
    OPS,
    Aggregation,
    Condition,
    Filter,
    GroupBy,
    Plan,
    Select,
    Slice,
    Sort,
    SortKey,
    Source,
    Step,
    build,
)

__all__ = [
    "AGG_FNS",
    "EXPORT_FORMATS",
    "OPS",
    "Aggregation",
    "Condition",
    "Executor",
    "Filter",
    "GroupBy",
    "Plan",
    "Rows",
    "Select",
    "Slice",
    "Sort",
    "SortKey",
    "Source",
    "Step",
    "build",
    "count",
    "describe",
    "explain",
    "export",
    "rows",
    "value_counts",
]
