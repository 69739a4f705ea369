"""DuckDB files for tests: built with a writable engine, then read as the server reads them.

DuckDB refuses a second open of one file in a process under other settings, so the writer is
disposed before the read-only engine (the connector's own, `connectors._duckdb.create_engine`)
opens it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from connectors._duckdb import create_engine, reflect_table
from connectors.sources import DUCKDB_MEMORY_MB

__all__ = ["build", "reflect"]


def build(path: Path, fill: Callable[[sa.Connection], None]) -> sa.Engine:
    """Write a DuckDB file at `path` with `fill`, and return the server's read-only engine on it."""
    writer = sa.create_engine(f"duckdb:///{path}", poolclass=sa.pool.NullPool)
    with writer.begin() as conn:
        fill(conn)
    writer.dispose()
    return create_engine(f"duckdb:///{path}", DUCKDB_MEMORY_MB)


def reflect(engine: sa.Engine, names: list[str], schema: str = "main") -> dict[str, sa.Table]:
    """The tables as a linked table reflects them."""
    with engine.connect() as conn:
        return {name: reflect_table(conn, schema, name) for name in names}
