"""Result fields of a frame: rows, count, describe, export. Each answers an `Outcome`."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import engine
from datagraph.context import Context
from datagraph.errors import BadInput
from engine import Plan
from resolvers._outcome import Outcome, answer, cache_key
from storage import ExportRecord

__all__ = ["count", "describe", "explain", "export", "rows", "value_counts"]


def _check_limit(ctx: Context, where: str, limit: int | None, offset: int | None, default: int) -> tuple[int, int]:
    """The limit and offset to use (`default` for an explicit null), within the server's row cap."""
    limit = default if limit is None else limit
    offset = 0 if offset is None else offset
    cap = ctx.settings.rows_max
    if limit < 0 or offset < 0:
        raise BadInput(f"{where}: limit and offset must be 0 or more.")
    if limit > cap:
        raise BadInput(
            f"{where}: limit {limit:,} is over the server's cap of {cap:,} rows (setting rows_max); page with offset."
        )
    return limit, offset


async def rows(ctx: Context, *, plan: Plan, limit: int | None, offset: int | None, default: int = 100) -> Outcome:
    """Up to `limit` records after `offset` (`default` for an explicit null); `truncated` says more rows follow."""
    args = {"limit": limit, "offset": offset}

    async def work() -> Outcome:
        lim, off = _check_limit(ctx, "rows", limit, offset, default)
        page = await ctx.resources.executor.run(engine.rows, plan, limit=lim, offset=off)
        return Outcome(data=page.records, row_count=len(page.records), columns=page.columns, truncated=page.truncated)

    return await answer(cache_key("rows", args, plan.key()), work, where="rows")


async def count(ctx: Context, *, plan: Plan) -> Outcome:
    async def work() -> Outcome:
        n = await ctx.resources.executor.run(engine.count, plan)
        return Outcome(data={"count": n}, row_count=n)

    return await answer(cache_key("count", {}, plan.key()), work, where="count")


async def describe(ctx: Context, *, plan: Plan, columns: list[str] | None) -> Outcome:
    async def work() -> Outcome:
        stats = await ctx.resources.executor.run(engine.describe, plan, columns=columns)
        return Outcome(data=stats, row_count=len(stats))

    return await answer(cache_key("describe", {"columns": columns}, plan.key()), work, where="describe")


async def export(ctx: Context, *, plan: Plan, fmt: str, name: str) -> Outcome:
    """Write the frame to a file and answer with a download link that expires."""

    async def work() -> Outcome:
        if fmt not in engine.EXPORT_FORMATS:
            raise BadInput(f"export: unknown format {fmt}; use one of {', '.join(engine.EXPORT_FORMATS)}.")
        ext = engine.EXPORT_FORMATS[fmt]
        token = secrets.token_urlsafe(32)
        out = ctx.resources.files.export_file(token, ext)
        n_rows, n_bytes = await ctx.resources.executor.run(engine.export, plan, fmt=fmt, out=out)
        now = dt.datetime.now(dt.UTC)
        record = ExportRecord(
            token=token,
            dataset_id=plan.source.dataset_id,
            filename=f"{name}.{ext}",
            format=fmt,
            rows=n_rows,
            bytes=n_bytes,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ctx.settings.export_ttl_s),
        )
        ctx.resources.metadata.add_export(record)
        data: dict[str, Any] = {
            "url": f"{ctx.base_url}/exports/{token}",
            "format": fmt,
            "rows": n_rows,
            "bytes": n_bytes,
            "expiresAt": record.expires_at.isoformat(),
        }
        return Outcome(data=data, row_count=n_rows)

    return await answer(cache_key("export", {"format": fmt}, plan.key()), work, where="export")


async def value_counts(ctx: Context, *, plan: Plan, column: str, limit: int | None) -> Outcome:
    async def work() -> Outcome:
        lim, _ = _check_limit(ctx, "valueCounts", limit, 0, 20)
        records, distinct = await ctx.resources.executor.run(engine.value_counts, plan, column=column, limit=lim)
        return Outcome(data=records, row_count=len(records), truncated=distinct > len(records))

    args = {"column": column, "limit": limit}
    return await answer(cache_key("valueCounts", args, plan.key()), work, where="valueCounts")


async def explain(ctx: Context, *, plan: Plan) -> Outcome:
    async def work() -> Outcome:
        return Outcome(data=await ctx.resources.executor.run(engine.explain, plan))

    return await answer(cache_key("explain", {}, plan.key()), work, where="explain")
