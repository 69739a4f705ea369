"""Spans for what the connectors send out: each SQL statement to a database source (SQLAlchemy's
cursor events, hooked onto an engine only while tracing is on), named by the source, its dialect
and the statement's first keyword, never its text or parameters."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from datagraph import tracing

__all__ = ["sql_attributes", "trace_statements"]

_KEY = "datagraph_spans"  # on the connection's info: the spans of its statements in flight
_FIRST_WORD = re.compile(r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*([A-Za-z]+)", re.DOTALL)
_OPERATIONS = frozenset({"SELECT", "WITH", "SET", "SHOW", "START", "BEGIN", "ROLLBACK", "COMMIT", "PRAGMA", "EXPLAIN"})


def sql_attributes(source_id: str, dialect: str, statement: str) -> dict[str, tracing.AttributeValue]:
    """What a statement's span says: the source's id, its dialect, and the statement's kind (its
    first keyword when it is one of a known few, else "other")."""
    match = _FIRST_WORD.match(statement)
    word = match.group(1).upper() if match else ""
    return {
        "db.system.name": dialect,
        "db.operation.name": word if word in _OPERATIONS else "other",
        "datagraph.source.id": source_id,
    }


def trace_statements(engine: sa.Engine, source_id: str) -> None:
    """A span for each statement `engine` sends, while tracing is on in this process."""
    if not tracing.enabled():
        return
    dialect = engine.dialect.name

    def before(conn: sa.Connection, _cursor: Any, statement: str, *_rest: Any) -> None:
        started = tracing.begin("sql", sql_attributes(source_id, dialect, statement))
        conn.info.setdefault(_KEY, []).append(started)

    def after(conn: sa.Connection, *_rest: Any) -> None:
        spans = conn.info.get(_KEY)
        if spans:
            tracing.finish(spans.pop())

    def failed(context: sa.engine.ExceptionContext) -> None:
        conn = context.connection
        spans = conn.info.get(_KEY) if conn is not None else None
        if spans:
            tracing.finish(spans.pop(), context.original_exception)

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    sa.event.listen(engine, "handle_error", failed)
