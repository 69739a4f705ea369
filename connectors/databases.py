"""Reading the databases in `sources.yaml`: checks, catalogues, read-only queries, snapshots.

Everything here is a plain function of a `DatabaseConfig`, so it runs where the caller puts it:
queries and imports in a worker process (killable at the deadline, which also closes the
connection), checks and catalogues on a thread. Each process keeps one SQLAlchemy engine per
source (its own pool; `pool_pre_ping`, so a connection the database dropped is replaced).

A query runs inside a read-only transaction with a statement timeout set for that transaction:
PostgreSQL `BEGIN; SET TRANSACTION READ ONLY` + `SET LOCAL statement_timeout`; MySQL `START TRANSACTION READ ONLY`
+ `max_execution_time`, MariaDB `max_statement_time`; SQLite opened `mode=ro` with
`PRAGMA query_only`; DuckDB opened `read_only` with external access off (connectors._duckdb), its
timeout an interrupt. The caller's deadline (the worker kill) sits a few seconds past it.

Failures become datagraph errors with messages of our own: the driver's text can carry a host, a
user or a statement, so it is never passed on, and only the exception's class is logged.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connectors import _duckdb
from connectors._tracing import sql_attributes, trace_statements
from connectors.sources import DatabaseConfig
from datagraph import tracing
from datagraph.errors import BadInput, DatagraphError, ReadOnly, SourceUnavailable, Timeout, TooLarge
from engine import ColumnInfo, Rows, column_infos, dtype_name

__all__ = [
    "dispose_engines", "list_tables", "ping", "query_rows", "read_only", "snapshot", "table_columns", "translate",
]  # fmt: skip

log = logging.getLogger("datagraph.databases")

CONNECT_TIMEOUT_S = 3
_engines: dict[str, tuple[str, Engine]] = {}  # source id -> (the URL it was made for, its engine)
_engines_lock = threading.Lock()


def _engine(cfg: DatabaseConfig) -> Engine:
    with _engines_lock:
        known = _engines.get(cfg.id)
        if known is not None and known[0] == cfg.url:
            return known[1]
        if known is not None:
            known[1].dispose()
        engine = _create(cfg)
        trace_statements(engine, cfg.id)  # a span per statement while tracing is on
        _engines[cfg.id] = (cfg.url, engine)
        return engine


def _create(cfg: DatabaseConfig) -> Engine:
    if cfg.kind == "duckdb":
        return _duckdb.create_engine(cfg.url, cfg.memory_limit_mb)
    if cfg.kind == "sqlite":
        path = cfg.url.removeprefix("sqlite:///")
        return sa.create_engine(
            "sqlite://",
            creator=lambda: _sqlite_readonly(path),
            pool_pre_ping=True,
        )
    connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
    # A database that stops answering mid-conversation (a black hole) must not hold a thread or a
    # worker forever: the socket gives up a little after the statement timeout could have fired.
    socket_timeout_s = int(cfg.statement_timeout_s) + 10
    if cfg.kind == "mysql":
        connect_args["client_flag"] = 0  # never CLIENT_MULTI_STATEMENTS
        connect_args["read_timeout"] = socket_timeout_s
        connect_args["write_timeout"] = socket_timeout_s
    else:
        connect_args.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        connect_args["tcp_user_timeout"] = socket_timeout_s * 1000
    return sa.create_engine(
        cfg.url,
        pool_size=cfg.pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=cfg.statement_timeout_s,
        connect_args=connect_args,
    )


def _sqlite_readonly(path: str) -> Any:
    import sqlite3

    if not os.path.exists(path):
        raise sqlite3.OperationalError("missing database file")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    return conn


def dispose_engines() -> None:
    with _engines_lock:
        for _, engine in _engines.values():
            engine.dispose()
        _engines.clear()


# ---- failures ---------------------------------------------------------------------------------------------------

# PostgreSQL SQLSTATEs and MySQL/MariaDB error numbers we answer with our own words.
_PG_STATES = {
    "57014": (Timeout, "The query ran past the source's statement timeout of {timeout:g} s and was stopped."),
    "25006": (ReadOnly, "The query tried to change data; sources are read-only."),
    "42501": (ReadOnly, "The source's database user may not read that."),
    "42P01": (BadInput, "The query names a table the source does not have."),
    "42703": (BadInput, "The query names a column the table does not have."),
    "42883": (BadInput, "The query calls a function or operator the source does not have for those types."),
    "22012": (BadInput, "The query divides by zero."),
    "53200": (TooLarge, "The database ran out of memory for the query."),
    "54000": (TooLarge, "The query is over one of the database's limits."),
}
_MY_ERRORS = {
    3024: (Timeout, "The query ran past the source's statement timeout of {timeout:g} s and was stopped."),
    1969: (Timeout, "The query ran past the source's statement timeout of {timeout:g} s and was stopped."),
    1792: (ReadOnly, "The query tried to change data; sources are read-only."),
    1142: (ReadOnly, "The source's database user may not read that."),
    1044: (ReadOnly, "The source's database user may not read that."),
    1146: (BadInput, "The query names a table the source does not have."),
    1054: (BadInput, "The query names a column the table does not have."),
    1305: (BadInput, "The query calls a function the source does not have."),
}


# MySQL client errors that mean the connection is gone or never came: can't connect, gone away, lost.
_MY_CONNECTION = frozenset({1045, 2002, 2003, 2005, 2006, 2013, 2055})


def translate(exc: BaseException, cfg: DatabaseConfig) -> DatagraphError:
    """Our error for a driver or SQLAlchemy failure on `cfg`, without the driver's text."""
    if isinstance(exc, DatagraphError):
        return exc
    orig = getattr(exc, "orig", None) or exc
    if (duck := _duckdb.problem(orig)) is not None:
        return _duck_error(*duck, cfg, orig)
    state = getattr(orig, "sqlstate", None)
    args = getattr(orig, "args", None)
    number = args[0] if isinstance(args, tuple) and args and isinstance(args[0], int) else None
    # PyMySQL carries both; MySQL's error numbers are the precise ones.
    known = _MY_ERRORS.get(number) if number is not None else _PG_STATES.get(state) if state else None
    if known is not None:
        cls, message = known
        return cls(message.format(timeout=cfg.statement_timeout_s))
    log.warning(
        "source %s: %s (%s)", cfg.id, type(orig).__name__, state or number or "no code"
    )  # the class and code only: the text may name a host or user
    if number in _MY_CONNECTION or (isinstance(state, str) and state[:2] in ("08", "57", "28")):
        if number == 1045 or (isinstance(state, str) and state.startswith("28")):
            return SourceUnavailable(f'The source "{cfg.id}" refused the server\'s credentials; check sources.yaml.')
        return SourceUnavailable(f'The source "{cfg.id}" did not answer; it may be down. Try again shortly.')
    # No code at all: the connection went away (psycopg's "server closed the connection", PyMySQL's
    # InterfaceError(0, "") on a closed one), whether SQLAlchemy wrapped the error or a raw cursor raised it.
    if number in (None, 0) and state is None and (isinstance(exc, _LOST) or isinstance(orig, _LOST)):
        return SourceUnavailable(f'The source "{cfg.id}" did not answer; it may be down. Try again shortly.')
    return BadInput(f'The source "{cfg.id}" refused the query as written.')


def _duck_error(kind: str, message: str, cfg: DatabaseConfig, orig: BaseException) -> DatagraphError:
    log.warning("source %s: %s", cfg.id, type(orig).__name__)  # the class only: the text names the file
    if kind == "timeout":
        return Timeout(
            f"The query ran past the source's statement timeout of {cfg.statement_timeout_s:g} s and was stopped."
        )
    if kind == "unavailable":
        return SourceUnavailable(f'The source "{cfg.id}" cannot be opened: {message}.')
    if kind == "read_only":
        return ReadOnly(message)
    if kind == "too_large":
        return TooLarge(
            f"The query needed more memory than the source allows ({cfg.memory_limit_mb:,} MiB, memory_limit_mb in"
            " sources.yaml); filter or group it first."
        )
    return BadInput(message or f'The source "{cfg.id}" refused the query as written.')


@contextmanager
def _translated(cfg: DatabaseConfig) -> Iterator[None]:
    """A driver's or SQLAlchemy's failure in the block raised as the problem it is (`translate`); the
    caller's own failures (a full disk, ...) pass through as they are."""
    try:
        yield
    except Exception as exc:
        if not driver_error(exc):
            raise
        raise translate(exc, cfg) from None


@contextmanager
def read_only(cfg: DatabaseConfig) -> Iterator[Connection]:
    """A connection inside a read-only transaction with the statement timeout, rolled back after."""
    with _translated(cfg), _engine(cfg).connect() as conn:
        if cfg.kind == "postgresql":
            # The driver has just opened the transaction (BEGIN); this is its first statement.
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            ms = int(cfg.statement_timeout_s * 1000)
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")  # an int we made, not user text
            # The guard qualifies every table with its schema, so the path needs none of the user's
            # schemas. Pinned to the built-ins, nothing planted in a schema someone can write to (a
            # lower(varchar), an operator, a type) can shadow one (CVE-2018-1058). pg_temp goes last, as
            # PostgreSQL's docs advise; functions and operators are never looked up there anyway.
            conn.exec_driver_sql("SET LOCAL search_path = pg_catalog, pg_temp")
        elif cfg.kind == "mysql":
            conn.exec_driver_sql("ROLLBACK")  # SQLAlchemy's implicit transaction, if any
            if getattr(conn.dialect, "is_mariadb", False):
                conn.exec_driver_sql(f"SET SESSION max_statement_time = {cfg.statement_timeout_s:.3f}")
            else:
                conn.exec_driver_sql(f"SET SESSION max_execution_time = {int(cfg.statement_timeout_s * 1000)}")
            conn.exec_driver_sql("START TRANSACTION READ ONLY")
        try:
            # DuckDB: read-only by the way the file is opened; its timeout is an interrupt.
            timed = _duckdb.interrupt_after(conn, cfg.statement_timeout_s) if cfg.kind == "duckdb" else nullcontext()
            with timed:
                yield conn
        except BaseException:
            # On a lost connection the rollback fails too (PyMySQL: InterfaceError(0, "")); the first
            # error says what happened, so it is the one translated.
            with suppress(*DRIVER_ERRORS):
                conn.rollback()
            raise
        conn.rollback()


def _driver_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    import psycopg
    import pymysql

    return (sa.exc.SQLAlchemyError, psycopg.Error, pymysql.err.Error, sqlite3.Error, ConnectionError, TimeoutError)


DRIVER_ERRORS = _driver_errors()


def driver_error(exc: BaseException) -> bool:
    """Whether `exc` is a driver's or SQLAlchemy's failure (DuckDB's included, once it is loaded)."""
    return isinstance(exc, DRIVER_ERRORS) or _duckdb.is_duckdb_error(exc)


def _lost_connection_errors() -> tuple[type[BaseException], ...]:
    import psycopg
    import pymysql

    return (
        sa.exc.OperationalError, sa.exc.InterfaceError, psycopg.OperationalError, psycopg.InterfaceError,
        pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError,
    )  # fmt: skip


_LOST = _lost_connection_errors()


# ---- what callers run ---------------------------------------------------------------------------------------------


def ping(cfg: DatabaseConfig) -> None:
    """`SELECT 1` on a pooled connection; SourceUnavailable when the source does not answer."""
    with _translated(cfg), _engine(cfg).connect() as conn:
        conn.exec_driver_sql("SELECT 1").scalar()


def list_tables(cfg: DatabaseConfig) -> list[str]:
    """Tables and views in the source's schema, limited to its allowlist when it has one."""
    with _translated(cfg), _engine(cfg).connect() as conn:
        if cfg.kind == "duckdb":
            names = _duckdb.table_names(conn, cfg.schema)
        else:
            inspector = sa.inspect(conn)
            schema = cfg.sql_schema
            names = inspector.get_table_names(schema=schema) + inspector.get_view_names(schema=schema)
    # Exactly as the database spells them: in PostgreSQL "ALLOWED_T" and allowed_t are two tables.
    return sorted({n for n in names if cfg.allows(n)})


_COLUMNS_SQL = sa.text(
    "SELECT n.nspname, c.relname, a.attname FROM pg_catalog.pg_attribute AS a"
    " JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid"
    " JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname || '.' || c.relname = ANY(:keys)"
    " ORDER BY n.nspname, c.relname, a.attnum"
)


def table_columns(cfg: DatabaseConfig, tables: Sequence[str]) -> dict[str, list[str]]:
    """The columns of PostgreSQL tables named "schema.table", in their order, read from the catalogue
    now; a table it does not have is left out. (The guard needs them: see connectors._pgnames.)"""
    if cfg.kind != "postgresql":
        raise ValueError("table_columns reads PostgreSQL's catalogue")
    found: dict[str, list[str]] = {}
    with read_only(cfg) as conn:
        for schema, table, column in conn.execute(_COLUMNS_SQL, {"keys": list(tables)}):
            found.setdefault(f"{schema}.{table}", []).append(column)
    return found


def _run(conn: Connection, sql: str) -> sa.CursorResult[Any]:
    # Handed to the cursor as it is, with no parameter collection, so a `%` or `:name` in a string
    # literal is never taken for a placeholder (the SQL was regenerated from a checked tree).
    return conn.execution_options(no_parameters=True).exec_driver_sql(sql)


_PLAIN = (bool, int, float, str, bytes, dt.date, dt.time, dt.timedelta)


def _plain(value: Any) -> Any:
    """A value Polars and JSON can hold: Decimal as float (NaN as null), anything else as text."""
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, decimal.Decimal):
        return None if value.is_nan() else float(value)
    return str(value)  # inet, ranges, arrays of those, ...


def _rows_frame(names: list[str], rows: Sequence[Any]) -> pl.DataFrame:
    """Rows as a DataFrame. Duplicate names are the query's mistake; values Polars cannot hold
    (a NaN numeric panics it, a network address becomes an Object column) are made plain first."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadInput(f'The query returns two columns named "{name[:60]}"; name them apart with AS.')
        seen.add(name)
    try:
        frame = pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)
        if any(t == pl.Object for t in frame.schema.values()):
            raise TypeError("object column")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # pyo3's PanicException is a BaseException
        frame = pl.DataFrame(
            [tuple(_plain(v) for v in row) for row in rows], schema=names, orient="row", infer_schema_length=None
        )
    decimals = [n for n, t in frame.schema.items() if isinstance(t, pl.Decimal)]
    return frame.with_columns(pl.col(decimals).cast(pl.Float64)) if decimals else frame


def query_rows(cfg: DatabaseConfig, sql: str, limit: int) -> Rows:
    """Run checked, limit-wrapped SQL (asking for `limit + 1` rows) read-only; at most `limit` come back."""
    with read_only(cfg) as conn:
        result = _run(conn, sql)
        frame = _rows_frame(list(result.keys()), [tuple(r) for r in result.fetchall()])
    truncated = frame.height > limit
    frame = frame.head(limit)
    return Rows(frame.to_dicts(), column_infos(frame), truncated)


def _batches(conn: Connection, cfg: DatabaseConfig, sql: str, size: int) -> Iterator[tuple[list[str], list[Any]]]:
    """Rows of `sql` in batches of `size`, read through the driver's own streaming cursor (a
    PostgreSQL server-side cursor, PyMySQL's unbuffered cursor): SQLAlchemy's row objects and
    psycopg's default of 100 rows per round trip cost more than the database here."""
    raw: Any = conn.connection.dbapi_connection
    if cfg.kind == "postgresql":
        cursor = raw.cursor(name="datagraph_import")
        cursor.itersize = size
    elif cfg.kind == "mysql":
        import pymysql.cursors

        cursor = raw.cursor(pymysql.cursors.SSCursor)
    else:
        cursor = raw.cursor()
    try:
        with tracing.span("sql", sql_attributes(cfg.id, cfg.kind, sql)):  # a raw cursor: no SQLAlchemy events
            cursor.execute(sql)  # no parameters: a `%` in the checked SQL is not a placeholder
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchmany(size)
        yield names, rows  # at least once, so an empty result still names its columns
        while rows := cursor.fetchmany(size):
            yield names, rows
    except BaseException:
        with suppress(Exception):  # after a lost connection PyMySQL's close() fails too (AttributeError)
            cursor.close()
        raise
    cursor.close()


def snapshot(
    cfg: DatabaseConfig, sql: str, out: Path, *, batch_rows: int, max_rows: int, progress: Path | None = None
) -> tuple[int, list[ColumnInfo]]:
    """Stream the rows of checked SQL into one Parquet file, `batch_rows` at a time, so a table larger
    than memory still imports; the batches are written as parts and joined by a streaming sink. The
    rows read so far are kept in the file `progress`, which the server follows (jobProgress). The
    column descriptions are summed from the batches, so the file is not read again for them."""
    parts: list[Path] = []
    total = 0
    names: list[str] = []
    nulls: dict[str, int] = {}
    try:
        with read_only(cfg) as conn:
            for names, rows in _batches(conn, cfg, sql, batch_rows):
                if not rows:
                    continue
                total += len(rows)
                if total > max_rows:
                    raise TooLarge(
                        f"The import has more than {max_rows:,} rows (setting max_rows); import a query"
                        " that filters or groups it, or link the table instead."
                    )
                part = out.with_name(f"{out.stem}.part{len(parts):05d}.parquet")
                frame = _rows_frame(names, rows)
                for name, n in zip(frame.columns, frame.null_count().row(0), strict=True):
                    nulls[name] = nulls.get(name, 0) + n
                frame.write_parquet(part, compression="lz4")
                parts.append(part)
                if progress is not None:
                    partial = progress.with_name(progress.name + ".tmp")
                    partial.write_text(str(total), "ascii")
                    partial.replace(progress)
        if not parts:
            empty = pl.DataFrame(schema=dict.fromkeys(names, pl.String))
            empty.write_parquet(out)
            return 0, column_infos(empty)
        # Relaxed concatenation casts a column to its batches' common type, which adds no nulls.
        joined = pl.concat([pl.scan_parquet(p) for p in parts], how="vertical_relaxed")
        schema = joined.collect_schema()
        joined.sink_parquet(out)
        return total, [ColumnInfo(n, dtype_name(t), nulls[n], nulls[n] / total) for n, t in schema.items()]
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
