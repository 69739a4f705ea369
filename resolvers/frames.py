"""Result fields of a frame: rows, count, describe, valueCounts, summary, chart, explain, export.

Each answers an `Outcome` through `analysed`, which keys the cache on the operation, its
arguments and the plan (every dataset version it reads), and runs the work in a worker with the
request's deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import shutil
from dataclasses import replace
from typing import Any

import engine
from datagraph.errors import BadInput, TooLarge
from datagraph.jsonutil import Encoded, canonical_hash
from engine import Page, Plan, Source
from resolvers._outcome import Options, Outcome, Problem, analysed
from resolvers.context import Context, Resources, read_only_message
from storage import ExportRecord

__all__ = ["chart", "count", "describe", "explain", "export", "rows", "summary", "value_counts"]


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


async def rows(
    ctx: Context, *, plan: Plan, limit: int | None, offset: int | None, options: Options, default: int = 100
) -> Outcome:
    """Up to `limit` records after `offset` (`default` for an explicit null); `truncated` says more rows follow."""

    async def work(timeout: float | None) -> Outcome:
        lim, off = _check_limit(ctx, "rows", limit, offset, default)
        page = await _small_page(ctx, plan, lim, off)
        if page is None:
            page = await _in_worker(ctx, plan, ("page", {"limit": lim, "offset": off}), timeout)
        return Outcome(
            data=Encoded(page.json),
            row_count=page.count,
            columns=page.columns,
            truncated=page.truncated,
            null_keys=page.null_keys,
        )

    args = {"limit": default if limit is None else limit, "offset": offset or 0}
    _keep_pages_hot(ctx, plan)
    return await analysed(ctx, "rows", args, plan.key(), work, options)


async def _in_worker(ctx: Context, plan: Plan, request: tuple[str, dict[str, Any]], timeout: float | None) -> Any:
    """A count or a page of the plan, in a worker: in one job with the other results of the same plan
    asked for at the same moment (a frame's `count` and `rows` in one request), so that they do not
    compete for workers and cores. A plan with no steps (whose count Parquet's metadata answers), a
    linked table and SQL run alone, as they always did: each waits for nothing."""
    op, kwargs = request
    executor = ctx.resources.executor
    if not isinstance(plan.source, Source) or plan.live or not plan.steps:
        return await executor.run(engine.count if op == "count" else engine.page, plan, **kwargs, timeout=timeout)
    key = ("together", canonical_hash(plan.key()), timeout)
    return await executor.run_together(key, engine.together, plan, request=request, timeout=timeout)


async def _small_page(ctx: Context, plan: Plan, limit: int, offset: int) -> Page | None:
    """The page read from the version's page blocks in the server's own threads, when the plan is
    provably small (only selects and slices on a stored version that has blocks) and the page is within
    `page_thread_rows` and the answer cap; None sends it to a worker, with its deadline and byte cap."""
    window = engine.page_window(plan)
    if window is None or limit > ctx.settings.page_thread_rows:
        return None
    source = plan.source
    assert isinstance(source, Source)
    res = ctx.resources
    index = res.files.page_blocks(source.dataset_id, source.version, source.generation)
    cap = res.executor.result_bytes
    if index is None or (cap and (limit + 1) * index.row_bytes > cap) or not res.executor.small_free():
        return None
    try:
        page = await res.executor.run_small(engine.block_page, index, window, limit=limit, offset=offset)
    except FileNotFoundError:  # the version (and its blocks) went meanwhile: the worker path says how
        res.files.forget_blocks(index.folder)
        return None
    if page is not None and cap and len(page.json) > cap:
        raise TooLarge(
            f"The answer is larger than {ctx.settings.max_result_mb:g} MiB (setting max_result_mb); ask for fewer"
            " rows or columns, or filter or group first."
        )
    return page


def _keep_pages_hot(ctx: Context, plan: Plan) -> None:
    """Make page blocks for the version a page is asked of, in the background (a worker writes them
    from its Parquet), once per version and process, for versions within `page_blocks_max_mb`."""
    source = plan.source
    cap = ctx.settings.page_blocks_max_mb
    if not cap or not isinstance(source, Source) or source.link is not None or source.dataset_id == "":
        return
    res = ctx.resources
    if res.files.page_blocks(source.dataset_id, source.version, source.generation) is not None:
        return
    key = f"page-blocks:{source.dataset_id}:{source.version}:{source.generation}"
    res.executor.in_background(key, lambda: _make_page_blocks(res, source, cap))


async def _make_page_blocks(res: Resources, source: Source, cap_mb: float) -> None:
    files = res.files
    await res.executor.quiet()
    try:  # the version as it is now: appended parts may have been compacted into one file meanwhile
        parts = files.version_parts(source.dataset_id, source.version)
        size = sum(part.stat().st_size for part in parts)
    except OSError:  # gone meanwhile (deleted, pruned)
        return
    if size > cap_mb * 1024 * 1024:
        return
    current = replace(source, path=files.version_path(source.dataset_id, source.version))
    staged = files.staging_path(".blocks")
    try:
        await res.executor.run(engine.write_page_blocks, current, staged, block_bytes=_BLOCK_BYTES, upkeep=True)
        await res.executor.run_io(files.commit_blocks, staged, source.dataset_id, source.version, source.generation)
    finally:
        with contextlib.suppress(OSError):
            await res.executor.run_io(shutil.rmtree, staged, ignore_errors=True)


# About this many bytes a block (at least 1,024 rows): a page of 1,000 reads one or two small files.
_BLOCK_BYTES = 256 * 1024


async def count(ctx: Context, *, plan: Plan, options: Options) -> Outcome:
    async def work(timeout: float | None) -> Outcome:
        n = await _in_worker(ctx, plan, ("count", {}), timeout)
        return Outcome(data={"count": n}, row_count=n)

    return await analysed(ctx, "count", {}, plan.key(), work, options)


async def describe(ctx: Context, *, plan: Plan, columns: list[str] | None, options: Options) -> Outcome:
    async def work(timeout: float | None) -> Outcome:
        stats = await ctx.resources.executor.run(engine.describe, plan, columns=columns, timeout=timeout)
        return Outcome(data=stats, row_count=len(stats))

    return await analysed(ctx, "describe", {"columns": columns}, plan.key(), work, options)


async def value_counts(ctx: Context, *, plan: Plan, column: str, limit: int | None, options: Options) -> Outcome:
    async def work(timeout: float | None) -> Outcome:
        lim, _ = _check_limit(ctx, "valueCounts", limit, 0, 20)
        records, distinct = await ctx.resources.executor.run(
            engine.value_counts, plan, column=column, limit=lim, timeout=timeout
        )
        return Outcome(data=records, row_count=len(records), truncated=distinct > len(records))

    args = {"column": column, "limit": 20 if limit is None else limit}
    return await analysed(ctx, "valueCounts", args, plan.key(), work, options)


async def summary(ctx: Context, *, plan: Plan, options: Options) -> Outcome:
    """Row count and columns of the frame, and for each join in it the rows on each side and how
    many left rows found a match; `meta.matchRate` is the last join's."""

    async def work(timeout: float | None) -> Outcome:
        facts = await ctx.resources.executor.run(engine.summary, plan, timeout=timeout)
        joins = facts["joins"]
        return Outcome(data=facts, row_count=facts["rows"], match_rate=joins[-1]["matchRate"] if joins else None)

    return await analysed(ctx, "summary", {}, plan.key(), work, options)


async def chart(ctx: Context, *, plan: Plan, spec: dict[str, Any], options: Options) -> Outcome:
    """A Vega-Lite spec of the frame with its values inline (at most `chart_max_points`)."""

    async def work(timeout: float | None) -> Outcome:
        vega = await ctx.resources.executor.run(
            engine.chart, plan, **spec, max_points=ctx.settings.chart_max_points, timeout=timeout
        )
        values = vega.get("data", {}).get("values", [])
        truncated = bool(vega.get("usermeta", {}).get("truncated"))
        return Outcome(data=vega, row_count=len(values), truncated=truncated)

    args = {**spec, "maxPoints": ctx.settings.chart_max_points}
    return await analysed(ctx, "chart", args, plan.key(), work, options)


async def explain(ctx: Context, *, plan: Plan, options: Options) -> Outcome:
    async def work(timeout: float | None) -> Outcome:
        return Outcome(data=await ctx.resources.executor.run(engine.explain, plan, timeout=timeout))

    return await analysed(ctx, "explain", {}, plan.key(), work, options)


def _keep_exports_within(res: Resources, quota: int, made: str) -> int:
    """Remove the oldest exports until all of them take at most `quota` bytes (never the one just
    `made`, which fits on its own); return how many went. Their links answer NOT_FOUND from then on."""
    total, removed = 0, 0
    for record in res.metadata.exports_newest_first():
        total += record.bytes
        if total > quota and record.token != made:
            res.metadata.delete_export(record.token)  # the row first: the link stops answering at once
            res.files.export_file(record.token, record.filename.rsplit(".", 1)[-1]).unlink(missing_ok=True)
            removed += 1
    return removed


async def export(ctx: Context, *, plan: Plan, fmt: str, name: str, options: Options) -> Outcome:
    """Write the frame to a file and answer with a download link that expires. A cached export is
    answered only while its file has at least a tenth of its lifetime left."""
    if ctx.read_only:
        return Outcome(problem=Problem("BAD_INPUT", read_only_message("export")))  # before the cache, too
    metadata = ctx.resources.metadata

    async def work(timeout: float | None) -> Outcome:
        if fmt not in engine.EXPORT_FORMATS:
            raise BadInput(f"export: unknown format {fmt}; use one of {', '.join(engine.EXPORT_FORMATS)}.")
        ext = engine.EXPORT_FORMATS[fmt]
        token = secrets.token_urlsafe(32)
        out = ctx.resources.files.export_file(token, ext)
        n_rows, n_bytes = await ctx.resources.executor.run(engine.export, plan, fmt=fmt, out=out, timeout=timeout)
        quota = ctx.settings.export_quota_mb * 1024 * 1024
        if n_bytes > quota:
            out.unlink(missing_ok=True)
            raise TooLarge(
                f"The export would take {n_bytes / 2**20:,.1f} MiB, more than the {ctx.settings.export_quota_mb:,} MiB"
                " all exports may take together (setting export_quota_mb); filter or select fewer columns first."
            )
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
        metadata.add_export(record)
        await ctx.resources.executor.run_io(_keep_exports_within, ctx.resources, quota, token)
        data: dict[str, Any] = {
            "token": token,
            "url": f"{ctx.base_url}/exports/{token}",
            "format": fmt,
            "rows": n_rows,
            "bytes": n_bytes,
            "expiresAt": record.expires_at.isoformat(),
        }
        return Outcome(data=data, row_count=n_rows)

    def still_valid(hit: Outcome) -> bool:
        record = metadata.get_export(str(hit.data.get("token", ""))) if isinstance(hit.data, dict) else None
        margin = dt.timedelta(seconds=ctx.settings.export_ttl_s / 10)
        if record is None or record.expires_at - dt.datetime.now(dt.UTC) < margin:
            return False
        hit.data["url"] = f"{ctx.base_url}/exports/{record.token}"  # the link as this client reached us
        return True

    return await analysed(ctx, "export", {"format": fmt}, plan.key(), work, options, still_valid=still_valid)
