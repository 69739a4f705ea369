"""`diff`: a frame (after) against a version of its dataset, another dataset, or steps over its
dataset (before). Cached under both sides' versions; run in a worker under the request's deadline."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import engine
from datagraph.errors import BadInput, DatagraphError
from engine import Plan, Source
from resolvers import datasets as ds
from resolvers import frames
from resolvers._outcome import Options, Outcome, Problem, analysed
from resolvers.context import Context

__all__ = ["DiffTarget", "diff"]


@dataclass(frozen=True, slots=True)
class DiffTarget:
    """What a frame is compared against: exactly one of a version of its dataset, another dataset,
    or steps over its dataset (as the frame reads it)."""

    version: int | None = None
    dataset: str | None = None
    steps: list[engine.Step] | None = None
    step_count: int = 0


def _own_dataset(ctx: Context, plan: Plan, what: str) -> Any:
    source = plan.source
    if not isinstance(source, Source) or not source.dataset_id:
        raise BadInput(f"diff: against {{{what}}} needs a frame over one dataset; this one is SQL over datasets.")
    record = ds.get_dataset(ctx, source.dataset_id)
    if record is None:
        raise BadInput(f'diff: there is no dataset "{source.dataset_id}".')
    return record, source.version


def before_plan(ctx: Context, plan: Plan, target: DiffTarget) -> Plan:
    """The plan of the frame compared against; BAD_INPUT naming an unknown version or dataset."""
    if target.dataset is not None:
        record = ds.get_dataset(ctx, target.dataset)
        if record is None:
            raise BadInput(f'diff: there is no dataset "{target.dataset[:80]}".')
        return ds.dataset_plan(ctx, record)
    if target.version is not None:
        record, _ = _own_dataset(ctx, plan, "version")
        found = ds.dataset_at(ctx, record, version=target.version, as_of=None)
        if found is None:
            raise BadInput(
                f'diff: dataset "{record.name}" has no version {target.version} (unknown or pruned); see its versions.'
            )
        return ds.dataset_plan(ctx, found)
    if target.steps is not None:
        record, version = _own_dataset(ctx, plan, "steps")
        refused = engine.too_many_steps(target.step_count, ctx.settings.max_steps)
        if refused is not None:
            raise BadInput(refused)
        found = ds.dataset_at(ctx, record, version=version, as_of=None)
        if found is None:
            raise BadInput(f'diff: version {version} of dataset "{record.name}" is gone (pruned).')
        return ds.dataset_plan(ctx, found).then(*target.steps)
    raise BadInput("diff: against takes one of version, dataset or steps.")


async def diff(ctx: Context, *, plan: Plan, against: DiffTarget, key: list[str] | None, options: Options) -> Outcome:
    """{summary, rows, stats} of this frame (after) against `against` (before); rows capped by rows_max."""
    try:
        before = before_plan(ctx, plan, against)
    except DatagraphError as exc:
        return Outcome(problem=Problem(exc.code, exc.message))
    cap = ctx.settings.rows_max

    async def work(timeout: float | None) -> Outcome:
        # Each side's statistics are its `describe` answer, cached on its own: a version described
        # once (or diffed against another) is not described again.
        changes, after_stats, before_stats = await asyncio.gather(
            ctx.resources.executor.run(engine.diff, plan, before, key=key, limit=cap, timeout=timeout),
            frames.describe(ctx, plan=plan, columns=None, options=options),
            frames.describe(ctx, plan=before, columns=None, options=options),
        )
        data, truncated = changes
        for stats in (after_stats, before_stats):
            if stats.problem is not None:
                return Outcome(problem=stats.problem)
        data["stats"] = engine.paired_stats(after_stats.data, before_stats.data)
        return Outcome(data=data, row_count=len(data["rows"]), truncated=truncated)

    after_key, before_key = plan.key(), before.key()
    if "refused" in after_key or "refused" in before_key:
        plan_key = after_key if "refused" in after_key else before_key
    else:
        plan_key = {"after": after_key, "before": before_key}
        if after_key.get("live") or before_key.get("live"):
            plan_key["live"] = True
    return await analysed(ctx, "diff", {"key": key, "rowsMax": cap}, plan_key, work, options)
