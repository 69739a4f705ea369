"""Plans (steps -> one Polars LazyFrame) and the operations that collect them.

Light on purpose: worker processes import this and nothing of the server. The pool that runs the
operations and the result cache are in `engine.runtime`.
"""

from engine._chart import CHART_KINDS, chart
from engine._clean import Clean
from engine._columns import ColumnInfo, column_infos, dtype_name
from engine._ops import (
    EXPORT_FORMATS,
    Rows,
    append_rows,
    count,
    describe,
    explain,
    export,
    lazy_column_infos,
    materialise,
    rows,
    summary,
    value_counts,
)
from engine._plan import (
    AGG_FNS,
    OPS,
    Aggregation,
    Condition,
    Filter,
    GroupBy,
    Join,
    Plan,
    Select,
    Slice,
    Sort,
    SortKey,
    Source,
    Step,
    build,
    check_columns,
)

__all__ = [
    "AGG_FNS",
    "CHART_KINDS",
    "EXPORT_FORMATS",
    "OPS",
    "Aggregation",
    "Clean",
    "ColumnInfo",
    "Condition",
    "Filter",
    "GroupBy",
    "Join",
    "Plan",
    "PoolStats",
    "ResultCache",
    "Rows",
    "Select",
    "Slice",
    "Sort",
    "SortKey",
    "Source",
    "Step",
    "WorkerCrashed",
    "append_rows",
    "build",
    "chart",
    "check_columns",
    "column_infos",
    "count",
    "describe",
    "dtype_name",
    "explain",
    "export",
    "lazy_column_infos",
    "materialise",
    "rows",
    "summary",
    "value_counts",
]
