"""Result operations: each takes a `Plan`, builds its LazyFrame, collects once, returns plain data.

These are the only places a LazyFrame is collected. They take and return plain values so that
the executor can run them wherever it runs work.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import polars as pl

from datagraph import jsonutil
from datagraph.errors import BadInput
from engine._clean import Clean, translate_error
from engine._columns import ColumnInfo, check_columns, column_infos, dtype_name
from engine._plan import Filter, Join, Plan, Select, Slice, Source, SqlRoot, build, join_right_side
from engine._sql import scrub_paths, sql_error
from engine._timekeys import null_time_keys

__all__ = [
    "EXPORT_FORMATS",
    "Page",
    "Rows",
    "collect",
    "count",
    "describe",
    "explain",
    "export",
    "page",
    "records_json",
    "rows",
    "sql_errors",
    "summary",
    "value_counts",
]

P = ParamSpec("P")
R = TypeVar("R")

EXPORT_FORMATS = {"CSV": "csv", "PARQUET": "parquet", "XLSX": "xlsx", "JSON": "json"}
# Cells a spreadsheet would run as a formula (OWASP CSV injection): prefixed with ' on CSV export.
_FORMULA_START = r"^[=+\-@\t\r]"


def collect(*frames: pl.LazyFrame) -> list[pl.DataFrame]:
    """Collect the frames together (shared scans run once), turning a value that does not convert
    in a cleaning step into a `BadInput`."""
    try:
        return pl.collect_all(list(frames)) if len(frames) > 1 else [frames[0].collect()]
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        translated = translate_error(exc)
        if translated is None:
            raise
        raise translated from exc  # the cause: SQL that failed a cast is told in SQL's terms (sql_errors)


def sql_errors(op: Callable[P, R]) -> Callable[P, R]:
    """Wrap a result operation whose first argument is a plan: on a plan over SQL, an error Polars
    raises while running the user's query (a failed cast, a type mismatch) is a `BadInput` in the
    user's terms, not a crash. Other plans are checked step by step before they run, so there an
    error from Polars stays unexpected."""

    @functools.wraps(op)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        plan = args[0] if args else None
        if not (isinstance(plan, Plan) and isinstance(plan.source, SqlRoot)):
            return op(*args, **kwargs)
        try:
            return op(*args, **kwargs)
        except pl.exceptions.PolarsError as exc:
            raise sql_error(exc, plan.source.paths()) from None
        except BadInput as exc:
            # `collect` tells a failed conversion as a clean step's; with none in the plan, the SQL failed it.
            cleaned = any(isinstance(step, Clean) for step in plan.steps)
            if cleaned or not isinstance(exc.__cause__, pl.exceptions.PolarsError):
                raise
            raise sql_error(exc.__cause__, plan.source.paths()) from None

    return run


@dataclass(frozen=True, slots=True)
class Rows:
    records: list[dict[str, Any]]
    columns: list[ColumnInfo]
    truncated: bool


def _slice(plan: Plan, limit: int, offset: int) -> tuple[pl.DataFrame, bool]:
    """Up to `limit` rows after `offset`, and whether more follow."""
    frame, _ = build(plan.then(Slice(offset, limit + 1)))  # a step, so a linked table pushes the LIMIT down
    (found,) = collect(frame)
    return found.head(limit), found.height > limit


@sql_errors
def rows(plan: Plan, *, limit: int, offset: int) -> Rows:
    """Up to `limit` rows after `offset`; `truncated` when more follow."""
    found, truncated = _slice(plan, limit, offset)
    return Rows(records=found.to_dicts(), columns=column_infos(found), truncated=truncated)


@dataclass(frozen=True, slots=True)
class Page:
    """A page of rows already encoded as a JSON array of records (`jsonutil.dumps` of `rows`' records)."""

    json: bytes
    count: int
    columns: list[ColumnInfo]
    truncated: bool
    null_keys: int | None = None  # rows a time series step found without a time (engine._timekeys)


@sql_errors
def page(plan: Plan, *, limit: int, offset: int) -> Page:
    """`rows`, encoded to JSON where it runs (in a worker): bytes cross the pipe instead of a pickle of
    Python objects, and the server writes them into the response without decoding them."""
    found, truncated = _slice(plan, limit, offset)
    return Page(records_json(found), found.height, column_infos(found), truncated, null_keys(plan))


def null_keys(plan: Plan) -> int | None:
    """The rows the plan's time series steps found without a time (`meta.nullKeys`), None without such steps."""
    query = null_time_keys(plan)
    return None if query is None else int(collect(query)[0].item() or 0)


# Column types Polars' own JSON writer encodes exactly as `jsonutil.dumps` encodes the Python values
# `to_dicts` gives (shortest round-trip floats, NaN and infinities as null, the same string escapes),
# checked byte for byte by tests/test_rows_encoding.py; timestamps become ISO text first, as Python's
# `isoformat` writes them.
_NATIVE_JSON = (
    pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64,
    pl.Float64, pl.String, pl.Boolean, pl.Date, pl.Null,
)  # fmt: skip


def _iso(name: str) -> pl.Expr:
    col = pl.col(name)
    whole = col.dt.strftime("%Y-%m-%dT%H:%M:%S")
    return (
        pl.when(col.dt.microsecond() == 0).then(whole).otherwise(col.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f")).alias(name)
    )


def records_json(frame: pl.DataFrame) -> bytes:
    """`jsonutil.dumps(frame.to_dicts())`, byte for byte: written by Polars (about 4x faster) when
    every column is of a type whose encoding is known to match, else through Python objects."""
    stamps = [
        n for n, d in frame.schema.items() if isinstance(d, pl.Datetime) and d.time_zone is None and d.time_unit != "ns"
    ]
    native = frame.width > 0 and all(isinstance(d, _NATIVE_JSON) or n in stamps for n, d in frame.schema.items())
    if not native:
        return jsonutil.dumps(frame.to_dicts())
    return frame.with_columns(_iso(n) for n in stamps).write_json().encode() if stamps else frame.write_json().encode()


@sql_errors
def count(plan: Plan) -> int:
    if plan.source.link is not None:
        counted = plan.source.link.count(plan.steps)
        if counted is not None:
            return counted
    frame, _ = build(plan)
    return int(collect(frame.select(pl.len()))[0].item())


def _is_temporal(dtype: pl.DataType) -> bool:
    return dtype == pl.Date or isinstance(dtype, pl.Datetime)


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() and dtype != pl.Boolean


@sql_errors
def describe(plan: Plan, *, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """pandas `describe(include="all")` per column, one column at a time.

    Numbers: count, mean, std (sample), min, quartiles (linear interpolation), max. Dates and
    timestamps: the same but std. Text and booleans: count, unique, top (ties go to the value
    seen first, as pandas does), freq.

    Each column is a query of its own, so the work of one (for text, a table of its distinct
    values) is freed before the next starts: the peak is the largest column's, not all of them
    at once. A stored dataset, filtered or not, is read again for each column (Parquet reads only
    that column); any other plan is run once and its result described.
    """
    frame, schema = build(plan)
    wanted = list(schema) if columns is None else columns
    check_columns(wanted, schema, "describe")
    names = list(dict.fromkeys(wanted))
    if not names:
        return []
    if not _cheap_to_read_again(plan):
        frame = collect(frame.select(names))[0].lazy()
    # Text first, while the heap is empty: its table of distinct values is the largest piece of work,
    # and freed blocks left by the numeric columns would otherwise add to it.
    names.sort(key=lambda name: _is_numeric(schema[name]) or _is_temporal(schema[name]))
    stats = {name: _column_stats(frame, name, schema[name]) for name in names}
    out: list[dict[str, Any]] = []
    for name in wanted:
        dtype = schema[name]
        record: dict[str, Any] = {"column": name, "dtype": dtype_name(dtype), **stats[name]}
        if not (_is_numeric(dtype) or _is_temporal(dtype)) and record["count"] == 0:
            record["unique"], record["top"], record["freq"] = 0, None, None
        out.append(record)
    return out


def _cheap_to_read_again(plan: Plan) -> bool:
    """Whether each column may scan the plan again: a stored dataset with filters or selections
    at most (anything else, such as a join, a group-by or a database table, runs once)."""
    source = plan.source
    return (
        isinstance(source, Source)
        and source.link is None
        and all(isinstance(step, (Filter, Select)) for step in plan.steps)
    )


def _column_stats(frame: pl.LazyFrame, name: str, dtype: pl.DataType) -> dict[str, Any]:
    col = pl.col(name)
    if _is_numeric(dtype) or _is_temporal(dtype):
        base = col.cast(pl.Float64) if _is_numeric(dtype) else col
        exprs = [
            col.count().alias("count"),
            col.null_count().alias("nullCount"),
            base.mean().alias("mean"),
            *([base.std(ddof=1).alias("std")] if _is_numeric(dtype) else []),
            base.min().alias("min"),
            base.quantile(0.25, "linear").alias("p25"),
            base.quantile(0.5, "linear").alias("p50"),
            base.quantile(0.75, "linear").alias("p75"),
            base.max().alias("max"),
        ]
        query = frame.select(exprs)
    else:
        # Each distinct value once with how often it occurs and where it first occurs: a
        # streaming group-by holds the distinct values, where n-unique and mode side by side
        # held the column several times over.
        present = col.is_not_null()
        n, first = pl.col("\x1fn"), pl.col("\x1fi")
        query = (
            frame.select(name)
            .with_row_index("\x1fi")
            .group_by(name)
            .agg(pl.len().alias("\x1fn"), first.min())
            .select(
                n.filter(present).sum().alias("count"),
                n.filter(col.is_null()).sum().alias("nullCount"),
                present.sum().alias("unique"),
                col.filter(present)
                .sort_by([n.filter(present), first.filter(present)], descending=[True, False])
                .first()
                .alias("top"),
                n.filter(present).max().alias("freq"),
            )
        )
    return {key: _plain(value) for key, value in collect(query)[0].row(0, named=True).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


@sql_errors
def export(plan: Plan, *, fmt: str, out: Path) -> tuple[int, int]:
    """Write the plan's result to `out` (via a temporary name); return (rows, bytes)."""
    frame, schema = build(plan)
    if fmt == "CSV":
        text = [n for n, d in schema.items() if d == pl.String]
        frame = frame.with_columns(
            pl.when(pl.col(n).str.contains(_FORMULA_START)).then(pl.lit("'") + pl.col(n)).otherwise(pl.col(n)).alias(n)
            for n in text
        )
    (data,) = collect(frame)
    tmp = out.with_name(out.name + ".tmp")
    try:
        if fmt == "CSV":
            data.write_csv(tmp)
        elif fmt == "PARQUET":
            data.write_parquet(tmp)
        elif fmt == "XLSX":
            data.write_excel(tmp, autofit=False)
        else:
            data.write_json(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return data.height, out.stat().st_size


@sql_errors
def value_counts(plan: Plan, *, column: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The most frequent values of `column` (missing values left out, as pandas does), most
    frequent first, ties by value; and how many distinct values there are in all."""
    frame, schema = build(plan)
    check_columns([column], schema, "valueCounts")
    counts = frame.select(pl.col(column)).drop_nulls().group_by(column).agg(pl.len().alias("count"))
    totals, top = collect(
        frame.select(pl.col(column).count()), counts.sort(["count", column], descending=[True, False])
    )
    total = totals.item()
    records = [
        {"value": _plain(v), "count": int(n), "share": (int(n) / total) if total else 0.0}
        for v, n in top.head(limit).iter_rows()
    ]
    return records, top.height


@sql_errors
def explain(plan: Plan) -> dict[str, Any]:
    """The optimised plan as text and the output columns, without reading any data (a linked
    table: the SQL the database runs and how many steps it covers, then the Polars plan)."""
    if plan.source.link is not None:
        sql, pushed = plan.source.link.sql(plan.steps)
        frame, schema = build(plan, head=0)
        return {
            "plan": frame.explain(),
            "sql": sql,
            "pushedSteps": pushed,
            "columns": [{"name": n, "dtype": dtype_name(d)} for n, d in schema.items()],
        }
    frame, schema = build(plan)
    text = frame.explain()
    # The plan names the Parquet files; show the datasets instead of server paths.
    text = scrub_paths(text, {s.path: f"dataset {s.dataset_id} v{s.version}" for s in plan.sources()})
    return {"plan": text, "columns": [{"name": n, "dtype": dtype_name(d)} for n, d in schema.items()]}


@sql_errors
def materialise(plan: Plan, *, out: Path) -> tuple[int, int, list[ColumnInfo]]:
    """Write the plan's result as Parquet to `out` (via a temporary name); return (rows read from
    the source, rows written, columns)."""
    frame, _ = build(plan)
    if plan.source.link is not None:  # the database counts its table
        (data,) = collect(frame)
        source_rows = plan.source.link.count(()) or 0
    else:  # the rows of the plan's own dataset, or of every dataset its SQL reads
        read = plan.source.tables if isinstance(plan.source, SqlRoot) else (plan.source,)
        data, *counted = collect(frame, *(pl.scan_parquet(s.path).select(pl.len()) for s in read))
        source_rows = sum(int(c.item()) for c in counted)
    _write_parquet(data, out)
    return source_rows, data.height, column_infos(data)


@sql_errors
def summary(plan: Plan) -> dict[str, Any]:
    """Rows and columns of the plan's result; for each join, the rows on each side and how many
    left rows matched at least one right row (the match rate)."""
    frame, schema = build(plan)
    queries = [frame.select(pl.len())]
    joins: list[dict[str, Any]] = []
    for i, step in enumerate(plan.steps):
        if not isinstance(step, Join):
            continue
        left, left_schema = build(Plan(plan.source, plan.steps[:i]))
        right = join_right_side(left_schema, step)
        keys = list(step.on)
        matched = left.join(right.select(keys).unique(), on=keys, how="semi")
        queries += [left.select(pl.len()), right.select(pl.len()), matched.select(pl.len())]
        joins.append({"right": step.right.dataset_id, "on": keys, "how": step.how})
    counts = [int(df.item()) for df in collect(*queries)]
    for j, info in enumerate(joins):
        left_rows, right_rows, matched_rows = counts[1 + 3 * j : 4 + 3 * j]
        info.update(
            leftRows=left_rows,
            rightRows=right_rows,
            matchedLeftRows=matched_rows,
            matchRate=matched_rows / left_rows if left_rows else None,
        )
    return {
        "rows": counts[0],
        "columns": [{"name": n, "dtype": dtype_name(d)} for n, d in schema.items()],
        "joins": joins,
    }


def lazy_column_infos(frame: pl.LazyFrame) -> list[ColumnInfo]:
    """Column descriptions of a (large) lazy frame, without holding its rows: two streaming passes."""
    schema = frame.collect_schema()
    nulls = frame.select(pl.all().null_count()).collect().row(0) if schema else ()
    rows = frame.select(pl.len()).collect().item()
    return [
        ColumnInfo(name, dtype_name(dtype), int(n), (int(n) / rows) if rows else 0.0)
        for (name, dtype), n in zip(schema.items(), nulls, strict=True)
    ]


def _column_values(name: str, dtype: pl.DataType, values: list[Any]) -> pl.Series:
    """One column of appended values, typed as the dataset's column; BadInput names the first misfit."""
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        parsed: list[Any] = []
        for i, value in enumerate(values):
            try:
                moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
            except ValueError:
                moment = None
            if value is not None and moment is None:
                raise BadInput(
                    f'appendRows: row {i + 1}, column "{name}" needs an ISO date like "2024-01-31", got {value!r}.'
                )
            if moment is None:
                parsed.append(None)
            else:
                parsed.append(moment.date() if dtype == pl.Date else moment.replace(tzinfo=None))
        values = parsed
    try:
        return pl.Series(name, values, dtype=dtype, strict=True)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        for i, value in enumerate(values):
            try:
                pl.Series(name, [value], dtype=dtype, strict=True)
            except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise BadInput(
                    f'appendRows: row {i + 1}, column "{name}" is {dtype_name(dtype)} and cannot hold {shown}.'
                ) from None
        raise


def _appended(schema: Mapping[str, pl.DataType], rows: list[dict[str, Any]]) -> pl.DataFrame:
    """`rows` as a frame of the dataset's columns: every row checked against them (a missing key is
    null, an unknown one or a value of the wrong type is refused)."""
    unknown = sorted({key for row in rows for key in row} - set(schema))
    if unknown:
        raise BadInput(f'appendRows: the dataset has no column "{unknown[0]}". Columns: {", ".join(schema)}.')
    return pl.DataFrame([_column_values(n, t, [row.get(n) for row in rows]) for n, t in schema.items()])


def _write_parquet(frame: pl.LazyFrame | pl.DataFrame, out: Path) -> None:
    """Write `frame` to `out` through a temporary name beside it, so `out` is whole or absent."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(tmp, compression="lz4")
        else:
            frame.write_parquet(tmp, compression="lz4")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def append_rows(source: list[Path], rows: list[dict[str, Any]], *, out: Path) -> tuple[int, list[ColumnInfo]]:
    """The dataset in the files `source` with `rows` after it, written whole to `out`; (rows, columns)."""
    current = pl.scan_parquet(source)
    added = _appended(current.collect_schema(), rows)
    _write_parquet(pl.concat([current, added.lazy()], how="vertical"), out)
    written = pl.scan_parquet(out)
    return int(written.select(pl.len()).collect().item()), lazy_column_infos(written)


def append_part(first: Path, rows: list[dict[str, Any]], *, out: Path) -> list[ColumnInfo]:
    """Only `rows`, typed as the dataset's columns (read from the footer of its `first` file, not its
    data), written to `out` as the dataset's next part; their columns."""
    added = _appended(pl.read_parquet_schema(first), rows)
    _write_parquet(added, out)
    return column_infos(added)


def compact(parts: list[Path], *, out: Path) -> None:
    """The rows of `parts`, in order, written to `out` as one file."""
    _write_parquet(pl.scan_parquet(parts), out)
