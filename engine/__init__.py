"""Plans (steps -> one Polars LazyFrame) and the operations that collect them.

Layer: below `connectors`, above `storage` (server -> gql -> resolvers -> connectors -> engine ->
storage -> datagraph). Light on purpose: worker processes import this and nothing of the server.
The pool that runs the operations, the result cache and the job tracker are in `engine.runtime`.
"""

from engine._chart import CHART_KINDS, chart
from engine._clean import Cast, Clean, CleanStep, DropDuplicates, DropNulls, FillNulls, ParseDates, Rename, Trim
from engine._columns import ColumnInfo, check_columns, column_infos, dtype_name
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
)

__all__ = [
    "AGG_FNS",
    "CHART_KINDS",
    "EXPORT_FORMATS",
    "OPS",
    "Aggregation",
    "Cast",
    "Clean",
    "CleanStep",
    "ColumnInfo",
    "Condition",
    "DropDuplicates",
    "DropNulls",
    "FillNulls",
    "Filter",
    "GroupBy",
    "Join",
    "ParseDates",
    "Plan",
    "Rename",
    "Rows",
    "Select",
    "Slice",
    "Sort",
    "SortKey",
    "Source",
    "Step",
    "Trim",
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
