"""Database sources: their status and tables, read-only SQL, and imports into datasets.

The configured sources come from `sources.yaml` (`connectors.sources`); their status checks are
`connectors.database_sources`. Queries and imports run in the worker pool,
so the server's deadline (the source's statement timeout plus a margin) kills a stuck one along
with its connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import sqlglot
from sqlglot import exp

from connectors import databases as db
from connectors.linked import link_shape
from connectors.sources import DatabaseConfig
from connectors.sqlguard import check_select
from datagraph.errors import BadInput, NotFound, SourceUnavailable, TooLarge
from resolvers._outcome import Outcome, timeout_seconds
from resolvers.context import Context
from resolvers.datasets import Produced, dataset_job, dataset_slug, display_name, import_timeout_message
from resolvers.jobs import recorded_job
from storage import DatasetRecord, data_digest

__all__ = [
    "import_table",
    "require_database",
    "run_sql",
    "table_names",
]

DEADLINE_MARGIN_S = 5.0  # the worker is killed this long after the statement timeout
IMPORT_BATCH_ROWS = 50_000
T = TypeVar("T")


def require_database(ctx: Context, source_id: str) -> DatabaseConfig:
    cfg = ctx.resources.databases.get(source_id)
    if cfg is None:
        raise NotFound(f'There is no database source "{source_id[:80]}"; the sources are listed in sources.yaml.')
    return cfg


async def table_names(ctx: Context, cfg: DatabaseConfig) -> list[str]:
    """The source's tables (its allowlist when it has one), read from its catalogue now."""
    try:
        return await asyncio.wait_for(ctx.resources.databases.in_thread(db.list_tables, cfg), cfg.statement_timeout_s)
    except TimeoutError:
        raise SourceUnavailable(f'The source "{cfg.id}" did not list its tables in time.') from None
    except SourceUnavailable:
        ctx.resources.databases.forget(cfg.id)
        raise


async def _known_table(ctx: Context, cfg: DatabaseConfig, table: str) -> str:
    """The table's name as the database spells it, if the source has it and allows reading it."""
    known = await table_names(ctx, cfg)
    if table not in known:  # exactly as the database spells it
        raise NotFound(f'The source "{cfg.id}" has no table "{table[:80]}" it allows reading.')
    return table


async def _in_worker(
    ctx: Context, cfg: DatabaseConfig, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kw: Any
) -> T:
    try:
        return await ctx.resources.executor.run(fn, *args, timeout=timeout, **kw)
    except SourceUnavailable:
        ctx.resources.databases.forget(cfg.id)  # the next status asks the database again
        raise


async def run_sql(ctx: Context, *, source_id: str, query: str, limit: int | None, timeout_ms: int | None) -> Outcome:
    """One read-only SELECT against a source, at most `limit` rows (1,000 by default)."""
    ctx.refuse_if_read_only("sql")
    cfg = require_database(ctx, source_id)
    cap = ctx.settings.rows_max
    n = 1000 if limit is None else limit
    if n < 0 or n > cap:
        raise BadInput(f"limit must be between 0 and {cap:,} (setting rows_max).")
    timeout = timeout_seconds(ctx, timeout_ms)
    sql = await _checked(ctx, cfg, query, limit=n + 1)
    rows = await _in_worker(
        ctx, cfg, db.query_rows, cfg, sql, n, timeout=timeout,
        deadline_s=cfg.statement_timeout_s + DEADLINE_MARGIN_S,
    )  # fmt: skip
    return Outcome(data=rows.records, row_count=len(rows.records), columns=rows.columns, truncated=rows.truncated)


async def _checked(ctx: Context, cfg: DatabaseConfig, query: str, *, limit: int | None = None) -> str:
    """The read-only SELECT to run for `query` on `cfg`: checked, and regenerated from the check
    (with its own LIMIT set to `limit` when given). On PostgreSQL the check may read the columns of
    the tables the query names (a qualified name that is no column calls a function), so it runs on
    the sources' threads."""

    def check() -> str:
        return check_select(
            query, dialect=cfg.dialect, default_schema=cfg.schema, allowed_tables=cfg.allowed_tables,
            max_chars=ctx.settings.max_query_chars, limit=limit,
            columns=partial(db.table_columns, cfg) if cfg.kind == "postgresql" else None,
        ).sql  # fmt: skip

    if cfg.kind != "postgresql":
        return check()
    try:
        return await asyncio.wait_for(ctx.resources.databases.in_thread(check), cfg.statement_timeout_s)
    except TimeoutError:
        raise SourceUnavailable(f'The source "{cfg.id}" did not list the columns of its tables in time.') from None
    except SourceUnavailable:
        ctx.resources.databases.forget(cfg.id)
        raise


def _table_sql(cfg: DatabaseConfig, table: str) -> str:
    """`SELECT * FROM <schema>.<table>` with both names quoted for the source's dialect."""
    schema = cfg.sql_schema
    ref = exp.Table(
        this=exp.to_identifier(table, quoted=True), db=exp.to_identifier(schema, quoted=True) if schema else None
    )
    return sqlglot.select("*").from_(ref).sql(dialect=cfg.dialect)


async def import_table(
    ctx: Context,
    *,
    source_id: str,
    table: str | None,
    query: str | None,
    name: str | None,
    job_id: str,
    mode: str = "SNAPSHOT",
    into: DatasetRecord | None = None,
) -> DatasetRecord:
    """Snapshot a table, or the rows of one read-only SELECT, into a new dataset (Parquet), streamed
    in batches; recorded as a job. Nothing is visible unless all of it worked. LINK: see link_table.
    With `into` (a snapshot imported before), the rows become its next version (a refresh), or the
    version stays when they are the same rows."""
    cfg = require_database(ctx, source_id)
    if mode == "LINK":
        async with recorded_job(ctx, job_id, "importTable", {"source": cfg.id, "mode": "LINK", "table": table}) as done:
            record = await link_table(ctx, cfg, table=table, query=query, name=name)
            done.made(record, rows_in=record.row_count)
        return record
    if (table is None) == (query is None):
        raise BadInput("importTable needs either a table or a query, not both.")
    if table is not None:
        table = await _known_table(ctx, cfg, table)
        sql = await _checked(ctx, cfg, _table_sql(cfg, table))
        what = {"table": table}
    else:
        assert query is not None
        sql = await _checked(ctx, cfg, query)
        what = {"query": sql}
    title = display_name(name or table or f"{cfg.id} query")
    steps = {"source": cfg.id, "mode": "SNAPSHOT", **what}
    origin: dict[str, Any] = dict(steps)

    async def produce(parquet: Path) -> Produced | None:
        with ctx.resources.jobs.following(job_id, "reading", parquet) as progress:
            rows, columns = await _in_worker(
                ctx, cfg, db.snapshot, cfg, sql, parquet,
                batch_rows=IMPORT_BATCH_ROWS, max_rows=ctx.settings.max_rows, progress=progress,
                deadline_s=ctx.settings.import_timeout_s, timeout_message=import_timeout_message(ctx, "The import"),
            )  # fmt: skip
        if len(columns) > ctx.settings.max_columns:
            raise TooLarge(f"The import has {len(columns):,} columns, more than {ctx.settings.max_columns:,}.")
        # The same rows in any order give the same digest: a refresh that reads them again keeps its version.
        digest = await ctx.resources.executor.run(data_digest, parquet, deadline_s=ctx.settings.import_timeout_s)
        if into is not None and digest == into.origin.get("data_hash"):
            return None  # the same rows: the version stays
        origin["data_hash"] = digest
        return Produced(rows, rows, columns)

    return await dataset_job(
        ctx, job_id=job_id, kind="importTable", steps={**steps, **({"refresh": into.id} if into else {})},
        title=title, source_id=cfg.id, origin=origin, produce=produce, into=into,
    )  # fmt: skip


async def link_table(
    ctx: Context, cfg: DatabaseConfig, *, table: str | None, query: str | None, name: str | None
) -> DatasetRecord:
    """A dataset over a live table: nothing is copied; its frames run in the database as far as the
    steps allow (filter, select, sort, slice, groupBy, count). Its row count and columns are as of
    linking; results are never cached, because the table changes without a new version."""
    if table is None or query is not None:
        raise BadInput("importTable with mode LINK needs a table (a query can be imported as a SNAPSHOT).")
    name_in_db = await _known_table(ctx, cfg, table)
    rows, columns = await _in_worker(
        ctx, cfg, link_shape, cfg, name_in_db, deadline_s=cfg.statement_timeout_s + DEADLINE_MARGIN_S
    )
    title = display_name(name or name_in_db)
    origin = {"kind": "importTable", "mode": "LINK", "source": cfg.id, "table": name_in_db}
    res = ctx.resources
    dataset_id = res.metadata.reserve_dataset(
        wanted_id=dataset_slug(title), name=title, source_id=cfg.id, origin=origin
    )
    record = res.metadata.mark_ready(
        dataset_id, version=1, row_count=rows, columns=columns, origin=origin, made_by="IMPORT"
    )
    await res.events.publish("CREATED", record.id, record.version, record.row_count)
    return record
