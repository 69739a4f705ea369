"""Linked tables: a dataset over a live database table, whose plans start in the database.

A `LinkedTable` is what `engine.Source.link` holds for a dataset imported with `mode: LINK`. In
a worker, `engine.build` hands it the plan's steps: the leading ones that can run as SQL are
compiled by `connectors.pushdown` into one SELECT (bound parameters only), run read-only with the
source's statement timeout, and the rows come back as a Polars frame; the remaining steps run in
Polars on it. The fetch is streamed and stops past `max_rows`, so a step that cannot be pushed
over a huge table answers TOO_LARGE instead of filling memory. A count whose steps all push
down is a `SELECT count(*)` in the database.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import polars as pl
import sqlalchemy as sa

from connectors._duckdb import reflect_table
from connectors.databases import read_only
from connectors.pushdown import Pushed, count_query, push_down
from connectors.sources import DatabaseConfig
from datagraph.errors import DatagraphError, ReadOnly, SourceUnavailable, TooLarge
from engine import ColumnInfo, Step, dtype_name

__all__ = ["LinkedTable", "fetch_frame", "link_shape", "polars_type"]

_BATCH_ROWS = 50_000
_POLARS_TYPES: tuple[tuple[type, pl.DataType], ...] = (
    (bool, pl.Boolean()), (int, pl.Int64()), (float, pl.Float64()), (decimal.Decimal, pl.Float64()),
    (str, pl.String()), (dt.datetime, pl.Datetime("us")), (dt.date, pl.Date()),
)  # fmt: skip
# Reflected tables, trusted for a short while: a table altered in the database is seen again within
# this long, and at once after a query on it fails.
_REFLECTION_TTL_S = 10.0
_tables: dict[tuple[str, str, str], tuple[float, sa.Table]] = {}
_tables_lock = threading.Lock()


def polars_type(type_: sa.types.TypeEngine[Any]) -> pl.DataType | None:
    """The Polars type a fetched column of this SQL type gets (None: let Polars infer it).
    DECIMAL/NUMERIC become floats; time-zone-aware timestamps are left to Polars."""
    if isinstance(type_, sa.DateTime) and getattr(type_, "timezone", False):
        return None
    try:
        python = type_.python_type
    except NotImplementedError:
        return None
    for kind, dtype in _POLARS_TYPES:  # bool before int: a bool is an int in Python
        if issubclass(python, kind):
            return dtype
    return None


def fetch_frame(conn: sa.Connection, query: sa.Select[Any], *, max_rows: int | None = None) -> pl.DataFrame:
    """The rows of `query`, typed from the query's columns (so an empty or all-null column keeps its
    type); TooLarge past `max_rows`.

    The query is capped at `max_rows + 1` rows in SQL and read with an ordinary cursor, not a
    server-side one: PostgreSQL plans a cursor's query without parallel workers, which made a
    pushed-down group-by over 10M rows 1.7 s slower than the same SQL run directly (measured)."""
    types = {c.name: polars_type(c.type) for c in query.selected_columns}
    overrides = {name: t for name, t in types.items() if t is not None}
    if max_rows is not None:
        limit = query._limit  # the pushed LIMIT, if any; the OFFSET is kept either way
        if limit is None or limit > max_rows + 1:
            query = query.limit(max_rows + 1)
    result = conn.execute(query)
    names = list(result.keys())
    frames: list[pl.DataFrame] = []
    total = 0
    for batch in result.partitions(_BATCH_ROWS):
        total += len(batch)
        if max_rows is not None and total > max_rows:
            result.close()
            raise TooLarge(
                f"The linked table gives more than {max_rows:,} rows to work on in the server (setting max_rows);"
                " filter, select or group it first, so the database does that part."
            )
        frames.append(
            pl.DataFrame(
                [tuple(r) for r in batch],
                schema=names,
                schema_overrides=overrides,
                orient="row",
                infer_schema_length=None,
                strict=False,
            )
        )
    if not frames:
        return pl.DataFrame(schema={n: overrides.get(n, pl.String()) for n in names})
    return pl.concat(frames, how="vertical_relaxed")


def _table(conn: sa.Connection, cfg: DatabaseConfig, name: str) -> sa.Table:
    key = (cfg.id, cfg.schema, name)
    with _tables_lock:
        known = _tables.get(key)
    if known is not None and time.monotonic() - known[0] < _REFLECTION_TTL_S:
        return known[1]
    if cfg.kind == "duckdb":
        table = reflect_table(conn, cfg.schema, name)
    else:
        table = sa.Table(name, sa.MetaData(), schema=cfg.sql_schema, autoload_with=conn)
    with _tables_lock:
        _tables[key] = (time.monotonic(), table)
    return table


def _forget(cfg: DatabaseConfig, name: str) -> None:
    with _tables_lock:
        _tables.pop((cfg.id, cfg.schema, name), None)


@dataclass(frozen=True, slots=True)
class LinkedTable:
    """A live table of a database source (None when the source left sources.yaml)."""

    source_id: str
    table: str
    config: DatabaseConfig | None
    max_rows: int

    def _cfg(self) -> DatabaseConfig:
        """The source's configuration as it is now: checked on every query, so a table taken off the
        source's allowlist (or a source taken out of sources.yaml) stops answering at the next start."""
        cfg = self.config
        if cfg is None:
            raise SourceUnavailable(
                f'The dataset is linked to the source "{self.source_id}", which is no longer in sources.yaml.'
            )
        if not cfg.allows(self.table):
            raise ReadOnly(
                f'The dataset is linked to the table "{self.table}", which the source "{self.source_id}" no longer'
                " allows (its tables list in sources.yaml)."
            )
        return cfg

    @contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        """A read-only connection; a failure also forgets the table's reflection (it may have changed)."""
        cfg = self._cfg()
        try:
            with read_only(cfg) as conn:
                yield conn
        except DatagraphError:
            _forget(cfg, self.table)
            raise

    def _pushed(self, conn: sa.Connection, steps: Sequence[Step]) -> Pushed:
        cfg = self._cfg()
        return push_down(_table(conn, cfg, self.table), steps, cfg.kind)

    def scan(self, steps: tuple[Step, ...], *, head: int | None = None) -> tuple[pl.LazyFrame, tuple[Step, ...]]:
        """The rows after the steps the database can run, and the steps left for Polars; at most
        `head` rows when given (for the shape of a plan, not its answer)."""
        with self._connection() as conn:  # failures come out of it as our errors
            pushed = self._pushed(conn, steps)
            query = pushed.query if head is None else sa.select(pushed.query.subquery()).limit(head)
            frame = fetch_frame(conn, query, max_rows=self.max_rows)
        return frame.lazy(), pushed.remaining

    def count(self, steps: tuple[Step, ...]) -> int | None:
        """The row count, counted by the database, when every step pushes down; else None."""
        with self._connection() as conn:
            pushed = self._pushed(conn, steps)
            if pushed.remaining:
                return None
            return int(conn.execute(count_query(pushed)).scalar_one())

    def sql(self, steps: tuple[Step, ...]) -> tuple[str, int]:
        """The SELECT the database would run (parameters as placeholders) and how many steps it covers."""
        with self._connection() as conn:
            pushed = self._pushed(conn, steps)
            return str(pushed.query.compile(dialect=conn.dialect)), pushed.pushed


def link_shape(cfg: DatabaseConfig, table: str) -> tuple[int, list[ColumnInfo]]:
    """Rows and columns of a table as it is now, counted by the database in one pass."""
    with read_only(cfg) as conn:
        t = _table(conn, cfg, table)
        counts = [sa.func.count().label("rows_")] + [sa.func.count(c).label(f"c{i}") for i, c in enumerate(t.columns)]
        row = conn.execute(sa.select(*counts).select_from(t)).one()
    rows = int(row[0])
    columns = []
    for column, present in zip(t.columns, row[1:], strict=True):
        dtype = polars_type(column.type)
        nulls = rows - int(present)
        columns.append(
            ColumnInfo(
                column.name, dtype_name(dtype) if dtype is not None else "String", nulls, nulls / rows if rows else 0.0
            )
        )
    return rows, columns
