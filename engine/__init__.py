"""Plans (steps -> one Polars LazyFrame), the operations that collect them, and where they run."""

from engine._executor import Executor
from engine._ops import EXPORT_FORMATS, Rows, count, describe, export, rows
from engine._plan import OPS, Condition, Filter, Plan, Select, Slice, Sort, SortKey, Source, Step, build

__all__ = [
    "EXPORT_FORMATS",
    "OPS",
    "Condition",
    "Executor",
    "Filter",
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
    "export",
    "rows",
]
