"""Push the leading steps of a plan down to a linked database table as one SQLAlchemy Core SELECT.

`push_down` compiles steps in order while each one gives exactly what `engine.build` gives on the
rows `SELECT * FROM table` fetches, and stops at the first that cannot; the rest run in Polars on
the fetched rows. User values only ever travel as bound parameters. What is decided, and why:

- Unknown columns raise `BadInput` here, worded as the engine words it, before any query runs.
  Every other mistake (operator, value type, empty list, alias clash, negative slice) only stops
  the push, so the engine reports it with its own message.
- Null handling matches as is: a comparison with a missing value is never true in Polars or SQL.
  Engine sorts put nulls last in both directions: `ORDER BY (c IS NULL), c [DESC]` on every dialect.
  A sort after a sort is stable in Polars, so the earlier order stays as the tie-breaker.
- Text compares by bytes, as Polars does: PostgreSQL `CAST(c AS TEXT) COLLATE "C"` (enums and citext
  too), DuckDB `c COLLATE "C"` (a column may be declared NOCASE), SQLite `COLLATE BINARY`,
  MySQL/MariaDB `CAST(CAST(c AS CHAR CHARACTER SET utf8mb4) AS BINARY)`
  against UTF-8 byte parameters, because their usual collations ignore case and trailing spaces.
  This applies to filters, sort keys, group keys, MIN/MAX and N_UNIQUE, at the cost of indexes on
  text columns. CONTAINS/STARTS_WITH/ENDS_WITH use strpos/instr and substr rather than LIKE
  (case-blind on SQLite and MySQL, and `%`/`_` in values would be wildcards).
- Group-by works as the engine does: output `<column>_<fn>` or the alias, sorted by the keys, nulls
  last. SUM of nothing is 0 (COALESCE), integer sums come back as BIGINT, and MEAN/STD/VAR/MEDIAN
  are computed on doubles. Counts come back as the database's BIGINT where Polars gives UInt32.
  MEDIAN (`percentile_cont`) is pushed to PostgreSQL and DuckDB only, STD/VAR to all but SQLite.
  FIRST/LAST depend on file order, which a table lacks: never pushed.
- Not pushed: Join and Clean; conditions, keys or aggregations on columns whose values the fetch
  changes or whose SQL comparison differs: single-precision floats (MySQL sends FLOAT rounded to
  6 digits), PostgreSQL `char(n)` (pads), time-zone-aware timestamps, dates and timestamps on SQLite
  (stored as text), and types the engine cannot compare. COUNT and IS_NULL/NOT_NULL push for any type.
  Float values against DECIMAL columns, and non-integral values in IN on integer columns (the engine
  truncates them), are not pushed either.
- A table has no row order: a slice that no sort or group-by has ordered takes whichever rows the
  database returns first, as the engine would slice an unordered fetch. Ties in a sort are likewise
  in no defined order. Float columns are fetched as floats (SQLAlchemy reads MySQL DOUBLE as Decimal).
- A step that needs a finished SELECT (a filter or group-by after a group-by or slice, a sort after
  a slice, anything but a select or slice after a window) wraps it as a subquery; the pushed order
  is re-applied outside, and a step whose order no longer exists as an output column is not pushed.
- Window (PostgreSQL, MySQL/MariaDB, DuckDB; not SQLite): every fn but RANK reads rows in order, and a
  table has none, so a window is pushed only when the rows have one: the spec's `orderBy` (nulls last), then the
  order an earlier sort or group-by gave. Ties are broken by columns that tell rows apart (the
  table's primary key, or the group keys; no such key: not pushed), in each window's ORDER BY and
  in the output's, which makes each row's result what the engine gives on the rows fetched in that
  order (without it a database may break ties one way in the window and another in the output).
  A RANK-only step needs no order. LAG/LEAD shift any comparable column; ROW_NUMBER, RANK
  (`RANK()` among the non-missing values, partitioned also by `IS NULL`) and CUM_COUNT come back
  as BIGINT; CUM_SUM/MIN/MAX are running aggregates (`ROWS BETWEEN UNBOUNDED PRECEDING AND
  CURRENT ROW`) that leave a missing value missing, on integers (CUM_MIN/MAX on dates and
  timestamps too). DIFF and ROLLING_SUM/MEAN/MIN/MAX over `size` rows (`ROWS BETWEEN size-1
  PRECEDING AND CURRENT ROW`, nulls unless `COUNT(x)` reaches minPeriods) work on doubles, as
  the engine casts, of integer and decimal columns only: float columns may hold NaN or
  infinities, which order, compare and overflow differently in SQL. PCT_CHANGE is pushed to
  PostgreSQL and DuckDB only, told to give Polars' infinities and NaN for a zero before (MySQL has neither).
  Period rollings: a `RANGE` frame from (period - 1 µs) to 1 µs before the row's time (times are
  whole microseconds; MariaDB's RANGE takes numbers, so microseconds since 1970), plus a running
  total over the rows of the same time so far: pandas' (t - period, t], ties counted up to this
  row. ROLLING_STD (another summation) is never pushed.
- Resample (PostgreSQL, MySQL/MariaDB, DuckDB; not SQLite) is a WHERE time IS NOT NULL, a GROUP BY of the
  keys (as group-by) and the period's start, sorted by the keys then the time. Only periods that
  start on the same boundaries whatever the data's first day are pushed: "1mo" (`date_trunc('month')`, or
  the day of the month subtracted) and fixed lengths that divide a day ("1d", "6h", "15m", "90s"),
  which the engine, like pandas' origin "start_day", counts from midnight (`date_bin` from a
  midnight, DuckDB's `time_bucket`; MySQL: whole periods of microseconds since midnight, `DIV`). Several days, weeks and
  several months or years count from the data's first day or month: not pushed, nor FIRST/LAST.
- A window is pushed only when a later step that cuts rows (filter, group-by, resample, slice) is
  pushed too: it adds columns to as many rows as it reads, and SQL windows ran slower than Polars'.
- JoinAsof, Pivot and Unpivot are never pushed: the push stops before them.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.sql.elements import FrameClause, FrameClauseType

from datagraph.errors import BadInput
from engine import (
    AGG_FNS,
    OPS,
    WINDOW_FNS,
    Condition,
    Filter,
    GroupBy,
    Resample,
    Select,
    Slice,
    Sort,
    Step,
    WindowSpec,
    WindowStep,
    check_columns,
)
from engine._timeseries import Aggregation as Aggregated
from engine._timeseries import Period, parse_period

__all__ = ["DIALECTS", "Pushed", "count_query", "push_down"]

DIALECTS = ("postgresql", "mysql", "sqlite", "duckdb")
# DuckDB speaks PostgreSQL's SQL where pushdown needs it (collations, boolean and median aggregates, infinities,
# date_trunc, window frames by interval); DuckDB's time_bucket stands for date_bin.
_PG_LIKE = ("postgresql", "duckdb")
_NUMBER = ("integer", "float", "decimal")
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "EQ": operator.eq, "NE": operator.ne, "GT": operator.gt, "GE": operator.ge, "LT": operator.lt, "LE": operator.le,
}  # fmt: skip
_INT64 = range(-(2**63), 2**63)
_DAY_US = 86_400_000_000
_ROLLING: dict[str, Any] = {
    "ROLLING_SUM": sa.func.sum, "ROLLING_MEAN": sa.func.avg, "ROLLING_MIN": sa.func.min, "ROLLING_MAX": sa.func.max,
}  # fmt: skip
Expr = sa.ColumnElement[Any]


@dataclass(frozen=True, slots=True)
class Pushed:
    """The SELECT for the first `pushed` steps, and the steps left to run in Polars on its rows."""

    query: sa.Select[Any]
    pushed: int
    remaining: tuple[Step, ...]


class _Stop(Exception):
    """The step cannot be pushed: it and every step after it run in Polars."""


@dataclass(frozen=True, slots=True)
class _Query:
    """A SELECT kept as parts until it is rendered, whole or as the subquery of the next one."""

    dialect: str
    source: sa.FromClause
    scope: dict[str, Expr]  # name -> expression, including columns a select step has hidden
    outputs: tuple[str, ...]
    where: tuple[Expr, ...] = ()
    group_by: tuple[Expr, ...] | None = None
    order: tuple[tuple[str, bool], ...] = ()  # (name, descending), nulls last
    offset: int = 0
    limit: int | None = None
    unique: tuple[str, ...] = ()  # columns whose values tell every row apart: the tie-breaker of a window
    windowed: bool = False  # the select list has window functions: the next filter, group or sort wraps it

    def kind(self, name: str) -> str | None:
        return _kind(self.scope[name].type, self.dialect)


def push_down(table: sa.Table, steps: Sequence[Step], dialect: str) -> Pushed:
    """Compile as many leading `steps` as give identical results into one SELECT on `table`
    (`dialect`: postgresql, mysql, sqlite or duckdb); raise `BadInput` for a column the table lacks."""
    if dialect not in DIALECTS:
        raise ValueError(f"push_down: unknown dialect {dialect!r}; use one of {', '.join(DIALECTS)}")
    query = _Query(dialect, table, {c.name: c for c in table.columns}, tuple(c.name for c in table.columns))
    key = tuple(c.name for c in table.primary_key.columns)
    if key and all(query.kind(name) is not None for name in key):
        query = replace(query, unique=key)
    done = 0
    made = [query]
    for step in steps:
        try:
            query = _apply(query, step)
        except _Stop:
            break
        made.append(query)
        done += 1
    # A window gives as many rows as it reads, and the database computes it slower than Polars does
    # (bench: 1M rows, 21 s against 7 s on PostgreSQL): push it only when a later step that cuts
    # rows (a filter, group-by, resample or slice) is pushed too.
    trailing = done
    while trailing and isinstance(steps[trailing - 1], WindowStep | Select):
        trailing -= 1
    if any(isinstance(step, WindowStep) for step in steps[trailing:done]):
        done = trailing
    return Pushed(_render(made[done]), done, tuple(steps[done:]))


def count_query(pushed: Pushed) -> sa.Select[Any]:
    """`SELECT count(*)` over the pushed query: the row count when no step remains."""
    if pushed.remaining:
        raise ValueError("count_query: steps remain to run in Polars, so the database cannot count the result")
    inner = pushed.query
    if inner._limit_clause is None and inner._offset_clause is None:
        inner = inner.order_by(None)  # PostgreSQL would still sort rows only to count them
    return sa.select(sa.func.count().label("count")).select_from(inner.subquery())


def _apply(q: _Query, step: Step) -> _Query:
    if isinstance(step, Filter):
        if not step.conditions:
            return q
        if q.group_by is not None or q.limit is not None or q.windowed:
            q = _wrap(q, keep_order=True)
        return replace(q, where=(*q.where, *(_condition(q, c) for c in step.conditions)))
    if isinstance(step, Select):
        check_columns(step.columns, q.outputs, "select")
        if not step.columns or len(set(step.columns)) != len(step.columns):
            raise _Stop
        return replace(q, outputs=tuple(step.columns))
    if isinstance(step, Sort):
        return _sort(q, step)
    if isinstance(step, Slice):
        if step.offset < 0 or step.limit < 0:
            raise _Stop
        if q.limit is None:
            return replace(q, offset=step.offset, limit=step.limit)
        return replace(q, offset=q.offset + step.offset, limit=max(0, min(step.limit, q.limit - step.offset)))
    if isinstance(step, GroupBy):
        return _group_by(q, step)
    if isinstance(step, WindowStep):
        return _window(q, step)
    if isinstance(step, Resample):
        return _resample(q, step)
    raise _Stop  # Join, Clean, JoinAsof, Pivot, Unpivot


def _render(q: _Query, *, ordered: bool = True) -> sa.Select[Any]:
    query = sa.select(*(_fetched(q.scope[n], n) for n in q.outputs)).select_from(q.source)
    if q.where:
        query = query.where(*q.where)
    if q.group_by is not None:
        query = query.group_by(*q.group_by)
    if ordered:
        for name, descending in q.order:
            value = q.scope[name]
            key = _exact(value, q.kind(name), q.dialect)
            query = query.order_by(value.is_(None), key.desc() if descending else key)
    if q.limit is not None:
        query = query.limit(q.limit)
        if q.offset:
            query = query.offset(q.offset)
    return query


def _fetched(value: Expr, name: str) -> Expr:
    """`value` named `name` in a select list."""
    if isinstance(value.type, sa.Float) and value.type.asdecimal:
        # SQLAlchemy reads Float types with asdecimal (MySQL's DOUBLE) as 10-place Decimals: read floats.
        value = sa.type_coerce(value, sa.Double())
    return value if isinstance(value, sa.ColumnClause) and value.name == name else value.label(name)


def _wrap(q: _Query, *, keep_order: bool) -> _Query:
    """The query as a subquery to select from; its order carried outside when `keep_order`."""
    if keep_order and any(name not in q.outputs for name, _ in q.order):
        raise _Stop
    sub = _render(q, ordered=q.limit is not None).subquery()
    scope: dict[str, Expr] = {n: sub.c[n] for n in q.outputs}
    unique = q.unique if all(n in q.outputs for n in q.unique) else ()
    return _Query(q.dialect, sub, scope, q.outputs, order=q.order if keep_order else (), unique=unique)


def _kind(type_: sa.types.TypeEngine[Any], dialect: str) -> str | None:
    """How the engine and the database both compare values of this type, or None when they may not agree."""
    if isinstance(type_, sa.Boolean):
        return "boolean"
    if isinstance(type_, sa.Integer):
        return "integer"
    if isinstance(type_, sa.Float):
        double = (
            dialect == "sqlite"
            or isinstance(type_, sa.Double)
            or (dialect == "postgresql" and not isinstance(type_, sa.REAL) and (type_.precision or 53) > 24)
        )
        return "float" if double else None
    if isinstance(type_, sa.Numeric):
        return "decimal"
    if isinstance(type_, sa.String):
        if (dialect == "postgresql" and isinstance(type_, sa.CHAR | sa.NCHAR)) or isinstance(type_, mysql.SET):
            return None
        return "text"
    if dialect == "sqlite":
        return None
    if isinstance(type_, sa.DateTime):
        return None if type_.timezone else "datetime"
    if isinstance(type_, sa.Date):
        return "date"
    return None


def _exact(value: Expr, kind: str | None, dialect: str) -> Expr:
    """`value` as it compares and sorts in Polars: text by bytes, everything else as it is."""
    if kind != "text":
        return value
    if dialect == "postgresql":
        return sa.cast(value, sa.Text()).collate("C")
    if dialect == "duckdb":
        return value.collate("C")
    if dialect == "mysql":
        return sa.cast(sa.cast(value, mysql.CHAR(charset="utf8mb4")), sa.LargeBinary())
    return value.collate("BINARY")


def _param(value: Any, kind: str, dialect: str) -> Expr:
    """A bound parameter for a filter value, checked as the engine checks it."""
    if kind in _NUMBER and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and kind != "decimal":
            return sa.literal(value, sa.Double())
        if isinstance(value, int) and value in _INT64:
            return sa.literal(value, sa.BigInteger())
    elif kind == "boolean" and isinstance(value, bool):
        return sa.literal(value, sa.Boolean())
    elif kind == "text" and isinstance(value, str):
        return _text(value, dialect)
    elif kind in ("date", "datetime") and isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _Stop from None
        if kind == "date":
            return sa.literal(parsed.date(), sa.Date())
        return sa.literal(parsed.replace(tzinfo=None), sa.DateTime())
    raise _Stop


def _text(value: str, dialect: str) -> Expr:
    if dialect == "mysql":
        return sa.literal(value.encode(), sa.LargeBinary())
    return sa.literal(value, sa.String())


def _member(value: Any, kind: str, dialect: str) -> Expr:
    """An IN value: the engine casts numbers to the column's type, so only exact casts are pushed."""
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind in ("integer", "decimal") and isinstance(value, float):
        raise _Stop
    return _param(value, kind, dialect)


def _condition(q: _Query, cond: Condition) -> Expr:
    check_columns([cond.column], q.outputs, "filter")
    if cond.op not in OPS:
        raise _Stop
    column, kind, op, value = q.scope[cond.column], q.kind(cond.column), cond.op, cond.value
    if op in ("IS_NULL", "NOT_NULL"):
        if value is not None:
            raise _Stop
        return column.is_(None) if op == "IS_NULL" else column.is_not(None)
    if value is None or kind is None:
        raise _Stop
    exact = _exact(column, kind, q.dialect)
    if op in _COMPARE:
        if kind == "boolean" and op not in ("EQ", "NE"):
            raise _Stop
        compared: Expr = _COMPARE[op](exact, _param(value, kind, q.dialect))
        return compared
    if op in ("IN", "NOT_IN"):
        if not isinstance(value, list) or not value:
            raise _Stop
        members = [_member(v, kind, q.dialect) for v in value]
        return exact.in_(members) if op == "IN" else exact.not_in(members)
    if op == "BETWEEN":
        if not isinstance(value, list) or len(value) != 2:
            raise _Stop
        low, high = (_param(v, kind, q.dialect) for v in value)
        return exact.between(low, high)
    if kind != "text" or not isinstance(value, str):
        raise _Stop
    if value == "":
        return column.is_not(None)  # every text contains, starts and ends with ""
    needle = _text(value, q.dialect)
    # Lengths in the unit substr counts: bytes for MySQL's binary strings, characters elsewhere.
    size = sa.literal(len(value.encode()) if q.dialect == "mysql" else len(value), sa.Integer())
    if op == "CONTAINS":
        position = sa.func.strpos if q.dialect == "postgresql" else sa.func.instr
        found: Expr = position(exact, needle) > 0
        return found
    start = 1 if op == "STARTS_WITH" else sa.func.length(exact) - size + 1
    part = sa.func.substr(exact, start, size)
    # substr's result collation is implicit on PostgreSQL: say "C" again so it wins over the parameter's.
    return (part.collate("C") if q.dialect in _PG_LIKE else part) == needle


def _sort(q: _Query, step: Sort) -> _Query:
    if not step.keys:
        raise _Stop
    names = [k.column for k in step.keys]
    check_columns(names, q.outputs, "sort")
    if len(set(names)) != len(names) or any(q.kind(n) is None for n in names):
        raise _Stop
    if q.limit is not None or q.windowed:
        q = _wrap(q, keep_order=True)
    earlier = tuple((n, d) for n, d in q.order if n not in names)
    return replace(q, order=(*((k.column, k.descending) for k in step.keys), *earlier))


def _group_by(q: _Query, step: GroupBy) -> _Query:
    if not step.keys or not step.aggregations:
        raise _Stop
    check_columns(step.keys, q.outputs, "groupBy")
    check_columns([a.column for a in step.aggregations], q.outputs, "groupBy")
    names = (*step.keys, *(a.output for a in step.aggregations))
    folded = names if q.dialect == "postgresql" else tuple(n.casefold() for n in names)  # case-blind names
    if len(set(folded)) != len(names) or any(len(n.encode()) > 63 for n in names):
        raise _Stop
    if any(q.kind(k) is None for k in step.keys):
        raise _Stop
    if q.group_by is not None or q.limit is not None or q.windowed:
        q = _wrap(q, keep_order=False)
    scope: dict[str, Expr] = {}
    groups: list[Expr] = []
    for key in step.keys:
        column = q.scope[key]
        group = _exact(column, q.kind(key), q.dialect)
        groups.append(group)
        # MySQL may not allow selecting the column when grouping by an expression of it; in a group
        # of byte-equal values MIN is that value.
        scope[key] = sa.func.min(column) if q.dialect == "mysql" and group is not column else group
    for agg in step.aggregations:
        scope[agg.output] = _aggregate(q, agg)
    order = tuple((k, False) for k in step.keys)
    return _Query(q.dialect, q.source, scope, names, q.where, tuple(groups), order, unique=tuple(step.keys))


def _aggregate(q: _Query, agg: Aggregated) -> Expr:
    column, kind, fn, dialect = q.scope[agg.column], q.kind(agg.column), agg.fn, q.dialect
    if fn not in AGG_FNS:
        raise _Stop
    if fn == "COUNT":
        return sa.func.count(column)
    if kind is None or (fn in ("SUM", "MEAN", "MEDIAN", "STD", "VAR") and kind not in _NUMBER):
        raise _Stop
    if fn == "N_UNIQUE":
        return sa.func.count(sa.distinct(_exact(column, kind, dialect)))
    if fn in ("MIN", "MAX"):
        if kind == "boolean" and dialect in _PG_LIKE:
            return (sa.func.bool_and if fn == "MIN" else sa.func.bool_or)(column, type_=sa.Boolean())
        extreme = (sa.func.min if fn == "MIN" else sa.func.max)(_exact(column, kind, dialect))
        if kind == "text" and dialect == "mysql":
            return sa.cast(extreme, mysql.CHAR(charset="utf8mb4"))  # the bytes back as text
        return extreme
    if fn == "SUM":
        total = sa.func.coalesce(sa.func.sum(column), 0.0 if kind == "float" else 0)
        return sa.cast(total, sa.BigInteger()) if kind == "integer" else total
    if fn == "MEAN":
        return sa.func.avg(_double(column, dialect), type_=sa.Double())
    if fn in ("STD", "VAR") and dialect != "sqlite":
        spread = sa.func.stddev_samp if fn == "STD" else sa.func.var_samp
        return spread(_double(column, dialect), type_=sa.Double())
    if fn == "MEDIAN" and dialect in _PG_LIKE:
        return sa.func.percentile_cont(0.5).within_group(_double(column, dialect))
    raise _Stop  # FIRST, LAST; MEDIAN, STD, VAR where the database lacks them


def _double(value: Expr, dialect: str) -> Expr:
    if dialect == "mysql":
        # A DOUBLE literal makes the expression DOUBLE on every MySQL/MariaDB version (CAST AS DOUBLE
        # needs MySQL 8.0.17 / MariaDB 10.4.5); AVG of an integer would otherwise be a 4-place DECIMAL.
        return sa.type_coerce(value * sa.literal_column("1e0"), sa.Double())
    return sa.cast(value, sa.Double())


def _names_fit(q: _Query, names: Sequence[str]) -> bool:
    """Output names the database keeps apart (MySQL's are case-blind) and within its 63-byte limit."""
    folded = names if q.dialect == "postgresql" else tuple(n.casefold() for n in names)
    return len(set(folded)) == len(names) and all(len(n.encode()) <= 63 for n in names)


def _order_by(q: _Query, keys: Sequence[tuple[str, bool]]) -> list[Expr]:
    """ORDER BY terms for (name, descending) keys, nulls last as the engine sorts."""
    terms: list[Expr] = []
    for name, descending in keys:
        value = q.scope[name]
        key = _exact(value, q.kind(name), q.dialect)
        terms += [value.is_(None), key.desc() if descending else key]
    return terms


def _window(q: _Query, step: WindowStep) -> _Query:
    if not step.specs or q.dialect == "sqlite":  # PostgreSQL and MySQL/MariaDB only (what is tested)
        raise _Stop
    for spec in step.specs:
        if spec.fn not in WINDOW_FNS:
            raise _Stop  # the engine names the fn
        check_columns([spec.column], q.outputs, "window column")
        check_columns(spec.by, q.outputs, "window by")
        if spec.order_by is not None:
            check_columns([spec.order_by], q.outputs, "window orderBy")
    names = [s.output for s in step.specs]
    if not _names_fit(q, (*q.outputs, *names)):
        raise _Stop
    if q.group_by is not None or q.limit is not None or q.windowed:
        q = _wrap(q, keep_order=True)
    # Every fn but RANK reads the rows in order: the spec's orderBy, then the order the rows are in,
    # which a table only has after a sort or group-by. Ties are broken by a key that tells rows apart
    # (the primary key, or the group keys), in the window and in the output alike, so each row's
    # result is what the engine gives on rows fetched in that order.
    ordered = [s for s in step.specs if s.fn != "RANK"]
    order = q.order
    if ordered:
        if not q.unique or (any(s.order_by is None for s in ordered) and not q.order):
            raise _Stop
        order = (*q.order, *((n, False) for n in q.unique if n not in {o for o, _ in q.order}))
    scope = dict(q.scope)
    for spec in step.specs:
        keys = [(spec.order_by, False)] if spec.order_by is not None else []
        keys += [o for o in order if o[0] != spec.order_by]
        scope[spec.output] = _window_fn(q, spec, keys)
    return replace(q, scope=scope, outputs=(*q.outputs, *names), order=order, windowed=True)


def _window_fn(q: _Query, spec: WindowSpec, keys: list[tuple[str, bool]]) -> Expr:
    """One spec as a window function over its partition, in `keys` order; `_Stop` when not exact."""
    fn, column, kind, dialect = spec.fn, q.scope[spec.column], q.kind(spec.column), q.dialect
    if any(q.kind(b) is None for b in spec.by) or (spec.order_by is not None and q.kind(spec.order_by) is None):
        raise _Stop
    rolling = fn.startswith("ROLLING_")
    if (spec.size is not None or spec.period is not None or spec.min_periods is not None) and not rolling:
        raise _Stop
    if fn in ("LAG", "LEAD", "DIFF", "PCT_CHANGE") and spec.offset < 1:
        raise _Stop
    partition = [_exact(q.scope[b], q.kind(b), dialect) for b in spec.by]
    order = _order_by(q, keys)
    running = (None, 0)  # ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    missing = column.is_(None)
    offset: Expr = sa.literal_column(str(int(spec.offset)))  # a checked number; MySQL wants a literal here

    def over(value: Any, *, rows: tuple[int | None, int] | None = None, by: Sequence[Expr] = ()) -> Expr:
        result: Expr = value.over(partition_by=[*partition, *by] or None, order_by=order or None, rows=rows)
        return result

    if fn == "ROW_NUMBER":
        return over(sa.func.row_number(type_=sa.BigInteger()))
    if fn == "CUM_COUNT":  # non-missing values so far
        return over(sa.func.count(column), rows=running)
    if kind is None:
        raise _Stop
    if fn in ("LAG", "LEAD"):
        shift = sa.func.lag if fn == "LAG" else sa.func.lead
        return over(shift(column, offset, type_=column.type))
    if fn == "RANK":  # rank("min") among the partition's non-missing values; a missing value has none
        if kind not in ("integer", "date", "datetime", "text"):
            raise _Stop
        ranked = sa.func.rank(type_=sa.BigInteger()).over(
            partition_by=[*partition, missing], order_by=_exact(column, kind, dialect)
        )
        return sa.case((missing, sa.null()), else_=ranked)
    if fn in ("CUM_MIN", "CUM_MAX", "CUM_SUM"):
        if kind != "integer" and not (fn != "CUM_SUM" and kind in ("date", "datetime")):
            raise _Stop
        total: Expr
        if fn == "CUM_SUM":
            total = sa.cast(over(sa.func.sum(column), rows=running), sa.BigInteger())
        else:
            extreme = sa.func.min if fn == "CUM_MIN" else sa.func.max
            total = over(extreme(column, type_=column.type), rows=running)
        return sa.case((missing, sa.null()), else_=total)  # a missing value stays missing
    # Arithmetic on doubles, as the engine casts: integers and decimals only (a float column may
    # hold NaN or infinities, which sort and overflow differently in SQL).
    if kind not in ("integer", "decimal"):
        raise _Stop
    x = _double(column, dialect)
    if fn == "DIFF":
        return x - over(sa.func.lag(x, offset, type_=sa.Double()))
    if fn == "PCT_CHANGE":
        if dialect not in _PG_LIKE:
            raise _Stop  # Polars divides by zero to an infinity; MySQL gives NULL and has no infinities
        before = over(sa.func.lag(x, offset, type_=sa.Double()))
        infinity = sa.case((x > 0, "Infinity"), (x < 0, "-Infinity"), else_="NaN")
        return sa.case(
            (missing | before.is_(None), sa.null()),
            (before == 0, sa.cast(infinity, sa.Double())),
            else_=x / before - 1,
        )
    if fn in _ROLLING and spec.period is not None and spec.size is None:
        return _period_window(q, spec, partition, keys)
    if fn not in _ROLLING or spec.size is None or spec.period is not None or spec.size < 1:
        raise _Stop  # ROLLING_STD: left to Polars
    minimum = spec.min_periods if spec.min_periods is not None else spec.size
    if not 1 <= minimum <= spec.size:
        raise _Stop
    frame = (-(spec.size - 1), 0)  # ROWS BETWEEN size-1 PRECEDING AND CURRENT ROW
    value = over(_ROLLING[fn](x, type_=sa.Double()), rows=frame)
    return sa.case((over(sa.func.count(column), rows=frame) >= minimum, value), else_=sa.null())


def _period_window(q: _Query, spec: WindowSpec, partition: list[Expr], keys: list[tuple[str, bool]]) -> Expr:
    """A rolling fn over (t - period, t], as the engine (and pandas) counts it: rows of
    the same time as this one are in its window only up to this row. So: the rows strictly inside
    (t - period, t), a RANGE frame from period - 1 microsecond to 1 microsecond before t (timestamps
    are whole microseconds), plus a running total over the rows of time t so far."""
    order = spec.order_by
    if q.dialect == "sqlite" or order is None or q.kind(order) not in ("date", "datetime"):
        raise _Stop
    try:
        period = parse_period(spec.period or "", "window period", fixed_only=True)
    except BadInput:
        raise _Stop from None
    minimum = spec.min_periods if spec.min_periods is not None else 1
    if minimum < 1:
        raise _Stop
    column, time = q.scope[spec.column], q.scope[order]
    if q.kind(order) == "date":
        time = sa.cast(time, sa.DateTime())
    x = _double(column, q.dialect)
    inside: FrameClause | tuple[int, int]
    if q.dialect in _PG_LIKE:
        key: Expr = time.asc().nulls_last()
        inside = FrameClause(
            dt.timedelta(microseconds=period.micros - 1),
            dt.timedelta(microseconds=1),
            FrameClauseType.PRECEDING,
            FrameClauseType.PRECEDING,
        )
    else:  # MariaDB's RANGE takes numbers only: microseconds since 1970 (missing times sort first, unread)
        epoch: Expr = sa.literal_column("TIMESTAMP '1970-01-01 00:00:00'")
        key = sa.func.timestampdiff(sa.literal_column("MICROSECOND"), epoch, time, type_=sa.BigInteger())
        inside = (-(period.micros - 1), -1)
    so_far_order = _order_by(q, [k for k in keys if k[0] != order])

    def parts(agg: Any) -> tuple[Expr, Expr]:
        within: Expr = agg.over(partition_by=partition or None, order_by=key, range_=inside)
        same: Expr = agg.over(partition_by=[*partition, time], order_by=so_far_order, rows=(None, 0))
        return within, same

    within_n, same_n = parts(sa.func.count(column))
    n = within_n + same_n
    value: Expr
    if spec.fn in ("ROLLING_MIN", "ROLLING_MAX"):
        extreme = sa.func.min if spec.fn == "ROLLING_MIN" else sa.func.max
        within, same = parts(extreme(x, type_=sa.Double()))
        pick = sa.func.least if spec.fn == "ROLLING_MIN" else sa.func.greatest  # MySQL's give NULL for any NULL
        value = pick(sa.func.coalesce(within, same), sa.func.coalesce(same, within), type_=sa.Double())
    else:
        within, same = parts(sa.func.sum(x, type_=sa.Double()))
        total = sa.func.coalesce(within, 0.0) + sa.func.coalesce(same, 0.0)
        value = total if spec.fn == "ROLLING_SUM" else total / n
    return sa.case(((n >= minimum) & q.scope[order].is_not(None), value), else_=sa.null())


def _resample(q: _Query, step: Resample) -> _Query:
    check_columns([step.on], q.outputs, "resample on")
    check_columns(step.by, q.outputs, "resample by")
    check_columns([a.column for a in step.aggregations], q.outputs, "resample aggregations")
    kind = q.kind(step.on)
    if kind not in ("date", "datetime") or q.dialect == "sqlite" or step.on in step.by or not step.aggregations:
        raise _Stop
    try:
        period = parse_period(step.every, "resample every")
    except BadInput:
        raise _Stop from None
    names = (*step.by, step.on, *(a.output for a in step.aggregations))
    if not _names_fit(q, names) or any(q.kind(k) is None for k in step.by):
        raise _Stop
    if q.group_by is not None or q.limit is not None or q.windowed:
        q = _wrap(q, keep_order=False)
    time = q.scope[step.on]
    start = _period_start(time, kind, period, q.dialect)
    scope: dict[str, Expr] = {}
    groups: list[Expr] = []
    for key in step.by:
        column = q.scope[key]
        group = _exact(column, q.kind(key), q.dialect)
        groups.append(group)
        scope[key] = sa.func.min(column) if q.dialect == "mysql" and group is not column else group
    scope[step.on] = start
    groups.append(start)
    for agg in step.aggregations:
        scope[agg.output] = _aggregate(q, agg)
    order = tuple((k, False) for k in (*step.by, step.on))
    where = (*q.where, time.is_not(None))  # rows without a time are left out
    return _Query(q.dialect, q.source, scope, names, where, tuple(groups), order, unique=(*step.by, step.on))


def _period_start(time: Expr, kind: str, period: Period, dialect: str) -> Expr:
    """The start of `time`'s period where it is the same whatever the data's first day: a month, or
    a fixed length that divides a day (the engine, as pandas, counts those from midnight of the
    first day, so they fall on the same boundaries every day). Longer periods, weeks and several
    months start from the data's first day or month: `_Stop`."""
    pg = dialect in _PG_LIKE  # date_trunc
    if period.months == 1:
        if kind == "date":
            if pg:
                return sa.cast(sa.func.date_trunc("month", sa.cast(time, sa.DateTime())), sa.Date())
            return sa.func.subdate(time, sa.func.dayofmonth(time) - 1, type_=sa.Date())
        if pg:
            return sa.func.date_trunc("month", time, type_=sa.DateTime())
        return sa.cast(sa.func.subdate(sa.func.date(time), sa.func.dayofmonth(time) - 1), sa.DateTime())
    n = period.micros
    if period.months or n <= 0 or _DAY_US % n:
        raise _Stop
    if kind == "date":  # midnight starts the period: the date itself, or its midnight as a timestamp
        return time if n == _DAY_US else sa.cast(time, sa.DateTime())
    if n == _DAY_US:
        if pg:
            return sa.func.date_trunc("day", time, type_=sa.DateTime())
        return sa.cast(sa.func.date(time), sa.DateTime())
    every: Expr = sa.literal_column(str(n))  # a whole number of microseconds, made here
    if pg:
        length: Expr = sa.literal_column(f"INTERVAL '{n} microseconds'")
        origin: Expr = sa.literal_column("TIMESTAMP '2000-01-01 00:00:00'")
        bucket = sa.func.time_bucket if dialect == "duckdb" else sa.func.date_bin  # DuckDB has no date_bin
        return bucket(length, time, origin, type_=sa.DateTime())
    midnight = sa.func.date(time)
    since = sa.func.timestampdiff(sa.literal_column("MICROSECOND"), midnight, time)
    return sa.func.timestampadd(
        sa.literal_column("MICROSECOND"), since.op("DIV")(every) * every, midnight, type_=sa.DateTime()
    )
