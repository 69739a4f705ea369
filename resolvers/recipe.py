"""Recipes: a frame written out as {steps, sources, polars, sql}, and `runRecipe`, which makes the
saved frame a recipe describes.

The recipe of a frame is built in a worker (it looks at the schemas of the versions it reads, and
a linked table's SQL asks the database for its table) and cached like any result, under the plan's
versions. Running a recipe reads its sources first: the first is the dataset the steps apply to;
each is read at the version named (`dataset_at`), or the current one when the version is left out.
A version that is no longer kept is BAD_INPUT, not a silent switch to another version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import engine
from connectors.datasetsql import check_dataset_sql
from datagraph.errors import BadInput, DatagraphError, NotFound
from engine import Join, JoinAsof, Plan, Source, SqlRoot
from resolvers import datasets as ds
from resolvers._outcome import Options, Outcome, analysed
from resolvers.context import Context
from storage import DatasetRecord

__all__ = ["RecipeSource", "check_recipe", "recipe", "recipe_plan", "run_recipe"]


async def recipe(ctx: Context, *, plan: Plan, options: Options) -> Outcome:
    """{steps, sources, polars, sql} of the frame; BAD_INPUT naming a wrong step, as its results would."""

    async def work(timeout: float | None) -> Outcome:
        data = await ctx.resources.executor.run(engine.recipe, plan, timeout=timeout)
        return Outcome(data=data)

    return await analysed(ctx, "recipe", {}, plan.key(), work, options)


@dataclass(frozen=True, slots=True)
class RecipeSource:
    """One `{dataset, version}` of a recipe's sources (version None: the current one)."""

    dataset: str
    version: int | None = None


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _read(ctx: Context, source: RecipeSource, index: int) -> DatasetRecord:
    """The dataset at the source's version; NOT_FOUND for no such dataset, BAD_INPUT for a version not kept."""
    where = f"recipe.sources[{index}]"
    record = ds.get_dataset(ctx, source.dataset)
    if record is None:
        raise NotFound(f'runRecipe: there is no dataset "{_clip(source.dataset)}" ({where}).')
    if source.version is None or source.version == record.version:
        return record
    known = 1 <= source.version < record.version  # a later one was never made
    found = ds.dataset_at(ctx, record, version=source.version, as_of=None) if known else None
    if found is None:
        raise BadInput(
            f'runRecipe: dataset "{record.id}" has no version {source.version} ({where}): it was never made or has'
            " been pruned (settings keep_versions and keep_versions_days). Leave the version out to run the recipe"
            " over the current version."
        )
    return found


def recipe_plan(
    ctx: Context, *, steps: Sequence[engine.Step], sources: Sequence[RecipeSource], query: str | None = None
) -> Plan:
    """The plan a recipe describes: its steps over its first source (or over `query`, SQL over
    datasets, reading the sources named), each joined dataset read at the version the sources give it."""
    if not sources:
        raise BadInput(
            "runRecipe: recipe.sources needs at least one {dataset, version}; the first is the dataset the steps"
            " apply to."
        )
    records = [_read(ctx, s, i) for i, s in enumerate(sources)]
    by_id: dict[str, DatasetRecord] = {}
    for record in [*records[1:], records[0]]:  # a join reads the later entry of a dataset listed twice
        by_id.setdefault(record.id, record)
    root: Source | SqlRoot
    if query is not None:
        checked = check_dataset_sql(query)
        tables = []
        for table in checked.tables:
            table_record = by_id.get(table) or ds.get_dataset(ctx, table)
            if table_record is None:
                raise NotFound(f'runRecipe: there is no dataset "{_clip(table)}" (a table of recipe.query).')
            if table_record.origin.get("mode") == "LINK":
                raise BadInput(
                    f'runRecipe: the dataset "{table}" is a linked table, which SQL over datasets does not read.'
                )
            tables.append(ds.dataset_source(ctx, table_record))
        root = SqlRoot(checked.sql, tuple(tables))
    else:
        root = ds.dataset_source(ctx, records[0])
    chosen: list[engine.Step] = []
    for step in steps:
        if isinstance(step, (Join, JoinAsof)) and step.right.dataset_id in by_id:
            step = dataclasses.replace(step, right=ds.dataset_source(ctx, by_id[step.right.dataset_id]))
        chosen.append(step)
    plan = Plan(root).then(*chosen)
    refused = engine.too_many_steps(plan.size, ctx.settings.max_steps)
    if refused is not None:
        raise BadInput(refused)
    return plan


async def check_recipe(ctx: Context, plan: Plan) -> None:
    """Build the plan (in a worker, reading no data): BAD_INPUT naming its first wrong step."""
    try:
        await ctx.resources.executor.run(engine.recipe, plan)
    except DatagraphError:
        raise
    except Exception:
        _raise_if_gone(ctx, plan)
        raise


async def run_recipe(ctx: Context, *, plan: Plan, name: str, job_id: str) -> DatasetRecord:
    """The saved frame of a checked recipe, as saveFrame makes it."""
    try:
        return await ds.save_frame(ctx, plan=plan, name=name, job_id=job_id)
    except DatagraphError:
        raise
    except Exception:
        _raise_if_gone(ctx, plan)
        raise


def _raise_if_gone(ctx: Context, plan: Plan) -> None:
    """NOT_FOUND naming the source that went while the recipe ran (another request, or another server
    process, deleted the dataset or pruned the version: its file is missing), rather than an
    unexpected error; nothing is made either way."""
    for source in plan.sources():
        where = f'dataset "{_clip(source.dataset_id)}"'
        if ds.get_dataset(ctx, source.dataset_id) is None:
            raise NotFound(f"runRecipe: the {where} was deleted while the recipe ran; nothing was made.") from None
        if source.link is None and not source.path.exists():
            raise NotFound(
                f"runRecipe: version {source.version} of the {where} was removed (deleted or pruned) while the recipe"
                " ran; nothing was made. Run it again, leaving the version out to read the current one."
            ) from None
