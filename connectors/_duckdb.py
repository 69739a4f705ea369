"""DuckDB files as database sources: opened read-only, walled off from files and the network.

A DuckDB source is a file the server reads and never writes. Each connection opens it with
`access_mode = read_only` (a write of any kind fails in the database itself) and with external
access off (`read_csv`, `read_parquet`, `glob`, `COPY`, `ATTACH`, `INSTALL`/`LOAD`, `EXPORT`, a
string as a table: all refused by DuckDB, whatever got past the guard), extensions never loaded or
installed, no spilling beside the file (`temp_directory` empty), memory capped (the source's
`memory_limit_mb`: past it a query fails with OutOfMemory, TOO_LARGE) and the configuration locked,
so no `SET` can lift any of it. The statement timeout is an interrupt from a timer.

Connections are not pooled: DuckDB lets one process write a file while no other holds it, so
the server opens the file for each query and lets go after it; whoever owns the file can write it
between queries. A file that is missing, not a DuckDB database, or held by a writer fails at
connect time with `OpenFailed`, which says which in our words (the driver's text names the path).

SQLAlchemy's PostgreSQL reflection (that duckdb-engine inherits) reads `pg_collation`, which
DuckDB does not have (duckdb_engine issue 1379), so tables are described from `duckdb_columns()`.

duckdb and duckdb-engine are imported only when a DuckDB source is used: they add about a
tenth to the import time of the server and of every worker.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

__all__ = [
    "CONFIG", "OpenFailed", "create_engine", "interrupt_after", "is_duckdb_error", "problem", "reflect_table",
    "table_names",
]  # fmt: skip

CONFIG: dict[str, str | bool | int] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "temp_directory": "",
    "lock_configuration": True,
}


class OpenFailed(Exception):
    """The file could not be opened; `reason` says why in the user's terms (no path)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _open(path: str, memory_limit_mb: int) -> Any:
    import duckdb
    from duckdb_engine import ConnectionWrapper

    if not os.path.exists(path):
        raise OpenFailed("its file does not exist")
    if not os.path.isfile(path):
        raise OpenFailed("its path is not a file")
    try:
        config: dict[str, str | bool | int | float | list[str]] = {**CONFIG, "memory_limit": f"{memory_limit_mb}MB"}
        conn = duckdb.connect(path, read_only=True, config=config)
    except duckdb.Error as exc:
        text = str(exc).replace(path, "")  # what DuckDB says, without the path (which may hold any word)
        if "could not set lock" in text.lower():
            raise OpenFailed(
                "its file is locked by a process writing to it; try again when the writer is done"
            ) from None
        if "different configuration" in text:
            raise OpenFailed("its file is open in this server under other settings") from None
        raise OpenFailed("its file is not a DuckDB database (or one this DuckDB cannot read)") from None
    return ConnectionWrapper(conn)


def create_engine(url: str, memory_limit_mb: int) -> sa.Engine:
    """An engine that opens the file of `url` (duckdb:///path) read-only for each connection."""
    path = url.removeprefix("duckdb:///")
    return sa.create_engine("duckdb://", creator=lambda: _open(path, memory_limit_mb), poolclass=sa.pool.NullPool)


@contextmanager
def interrupt_after(conn: sa.Connection, seconds: float) -> Iterator[None]:
    """Interrupt whatever the connection runs once `seconds` have passed (DuckDB has no
    statement timeout); the query fails with DuckDB's InterruptException."""
    raw: Any = conn.connection.dbapi_connection
    timer = threading.Timer(seconds, raw.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def is_duckdb_error(exc: BaseException) -> bool:
    """Whether `exc` is DuckDB's (or ours on opening a file); without duckdb imported, none can be."""
    duckdb = sys.modules.get("duckdb")
    return isinstance(exc, OpenFailed) or (duckdb is not None and isinstance(exc, duckdb.Error))


def problem(orig: BaseException) -> tuple[str, str] | None:
    """(kind, message) for a DuckDB failure: kind is one of timeout, read_only, too_large,
    unavailable, bad_input; None when it is no DuckDB error."""
    if isinstance(orig, OpenFailed):
        return "unavailable", orig.reason
    if not is_duckdb_error(orig):
        return None
    import duckdb

    if isinstance(orig, duckdb.InterruptException):
        return "timeout", ""
    if isinstance(orig, duckdb.OutOfMemoryException):
        return "too_large", ""
    if isinstance(orig, duckdb.PermissionException):
        return "read_only", "The query tried to read files, the network or extensions; the source may not."
    text = str(orig)
    if isinstance(orig, duckdb.InvalidInputException) and "read-only" in text:
        return "read_only", "The query tried to change data; sources are read-only."
    if isinstance(orig, duckdb.InvalidInputException) and "configuration" in text:
        return "read_only", "The query tried to change the source's settings; it may not."
    if isinstance(orig, duckdb.CatalogException | duckdb.BinderException):
        return "bad_input", "The query names a table, column or function the source does not have."
    if isinstance(orig, duckdb.ConversionException | duckdb.OutOfRangeException):
        return "bad_input", "The query converts or computes a value out of range for its type."
    return "bad_input", ""


# DuckDB type names (duckdb_columns().data_type) and the SQLAlchemy types the pushdown reasons about.
# Types whose values the fetch changes (nanosecond timestamps, integers past 64 bits) or that
# compare differently in SQL (ENUM by its order) get NullType: never pushed, fetched as they come.
# FLOAT (single precision) is REAL, which the pushdown does not push either.
_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "BOOLEAN": sa.Boolean(),
    "TINYINT": sa.SmallInteger(), "SMALLINT": sa.SmallInteger(), "UTINYINT": sa.SmallInteger(),
    "INTEGER": sa.Integer(), "USMALLINT": sa.Integer(), "BIGINT": sa.BigInteger(), "UINTEGER": sa.BigInteger(),
    "DOUBLE": sa.Double(), "FLOAT": sa.REAL(),
    "VARCHAR": sa.String(),
    "DATE": sa.Date(), "TIMESTAMP": sa.DateTime(), "TIMESTAMP WITH TIME ZONE": sa.DateTime(timezone=True),
    "TIME": sa.Time(), "INTERVAL": sa.Interval(), "BLOB": sa.LargeBinary(), "UUID": sa.Uuid(),
}  # fmt: skip


def _sql_type(name: str, precision: int | None, scale: int | None) -> sa.types.TypeEngine[Any]:
    if name.startswith("DECIMAL(") and precision is not None:
        return sa.Numeric(precision, scale or 0)
    return _TYPES.get(name, sa.types.NullType())


_COLUMNS = (
    "SELECT column_name, data_type, numeric_precision, numeric_scale FROM duckdb_columns()"
    " WHERE database_name = current_database() AND schema_name = $1 AND table_name = $2 ORDER BY column_index"
)
_KEY = (
    "SELECT constraint_column_names FROM duckdb_constraints() WHERE database_name = current_database()"
    " AND schema_name = $1 AND table_name = $2 AND constraint_type = 'PRIMARY KEY'"
)


_TABLES = (
    "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = $1"
    " UNION SELECT view_name FROM duckdb_views()"
    " WHERE database_name = current_database() AND schema_name = $1 AND NOT internal"
)


def table_names(conn: sa.Connection, schema: str) -> list[str]:
    """The tables and views of the file's `schema` (not DuckDB's own views, nor attached databases')."""
    raw: Any = conn.connection.dbapi_connection
    return [name for (name,) in raw.execute(_TABLES, [schema]).fetchall()]


def reflect_table(conn: sa.Connection, schema: str, name: str) -> sa.Table:
    """The table `schema.name` of the file, its columns typed for the pushdown, its primary key kept;
    `NoSuchTableError` when the file has no such table or view."""
    raw: Any = conn.connection.dbapi_connection
    columns = raw.execute(_COLUMNS, [schema, name]).fetchall()
    if not columns:
        raise sa.exc.NoSuchTableError(name)
    key_row = raw.execute(_KEY, [schema, name]).fetchone()
    key = set(key_row[0]) if key_row else set()
    return sa.Table(
        name,
        sa.MetaData(),
        *(sa.Column(c, _sql_type(t, p, s), primary_key=c in key) for c, t, p, s in columns),
        schema=schema,
    )
