"""API-pull plugins as the API shows them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from enum import Enum
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from connectors.registry import PluginRegistry
from gql.datasets import DatasetPayload, chosen_job, dataset_payload
from resolvers import plugins
from resolvers.context import Context
from resolvers.jobs import DatasetOutcome, run_job
from storage import DatasetRecord

__all__ = ["Plugin", "PluginFetchInput", "PluginMutation", "PluginQuery", "PluginStatus", "list_plugins"]


@strawberry.enum
class PluginStatus(Enum):
    AVAILABLE = "AVAILABLE"
    UNAVAILABLE = "UNAVAILABLE"


@strawberry.type(description="A DataSourcePlugin found in the plugins folder, or a file there that failed to load.")
class Plugin:
    name: str
    version: str | None
    description: str | None
    status: PluginStatus
    reason: str | None = strawberry.field(description="Why UNAVAILABLE, in one line.")
    params: JSON | None = strawberry.field(description="The parameters it takes: name, type, required, default, ...")
    schema: JSON | None = strawberry.field(description="The columns and types it declares it returns, if it does.")
    file: str = strawberry.field(description="The file it comes from, without the folder.")


@strawberry.input(description="One fetch in fetchPlugins: a plugin, its parameters, and a name for a new dataset.")
class PluginFetchInput:
    plugin: str
    params: JSON | None = None
    name: str | None = None


def list_plugins(ctx: Context) -> list[Plugin]:
    """Available plugins by name, then files that failed, by file name."""
    registry: PluginRegistry = ctx.resources.plugins
    listed = [
        Plugin(
            name=info.name,
            version=info.version,
            description=info.description,
            status=PluginStatus.AVAILABLE,
            reason=None,
            params=cast(JSON, info.params),
            schema=cast(JSON, info.schema),
            file=f"{file.stem}.py",
        )
        for name, (file, info) in sorted(registry.available().items())
    ]
    broken = [
        Plugin(
            name=stem,
            version=None,
            description=None,
            status=PluginStatus.UNAVAILABLE,
            reason=reason,
            params=None,
            schema=None,
            file=f"{stem}.py",
        )
        for stem, reason in registry.unavailable()
    ]
    return listed + broken


@strawberry.type
class PluginQuery:
    @strawberry.field(description="The API-pull plugins in the plugins folder, and files there that failed to load.")
    def plugins(self, info: strawberry.Info[Context, None]) -> list[Plugin]:
        return list_plugins(info.context)


@strawberry.type
class PluginMutation:
    @strawberry.mutation(
        description="Run a plugin's fetch and store the result as a dataset (source plugins); the same plugin and"
        " params again make a new version of that dataset, or keep the version when nothing changed."
    )
    async def fetch_plugin(
        self,
        info: strawberry.Info[Context, None],
        plugin: str,
        params: JSON | None = None,
        name: str | None = None,
        job_id: strawberry.ID | None = None,
    ) -> DatasetPayload:
        ctx = info.context

        def work(job: str) -> Awaitable[DatasetRecord]:
            return plugins.fetch_plugin(ctx, plugin=plugin, params=cast(Any, params), name=name, job_id=job)

        return dataset_payload(ctx, await run_job(ctx, "fetchPlugin", work, chosen_job(job_id)))

    @strawberry.mutation(
        description="Several plugin fetches at once, run in parallel (at most one per worker process at a time);"
        " one payload per fetch, in order."
    )
    async def fetch_plugins(
        self, info: strawberry.Info[Context, None], fetches: list[PluginFetchInput]
    ) -> list[DatasetPayload]:
        ctx = info.context
        if len(fetches) > 20:
            return [dataset_payload(ctx, DatasetOutcome.refused("fetchPlugins takes at most 20 fetches at once."))]
        limit = asyncio.Semaphore(ctx.settings.workers)

        async def one(f: PluginFetchInput) -> DatasetPayload:
            async with limit:
                params = cast(Any, f.params)

                def work(job: str) -> Awaitable[DatasetRecord]:
                    return plugins.fetch_plugin(ctx, plugin=f.plugin, params=params, name=f.name, job_id=job)

                return dataset_payload(ctx, await run_job(ctx, "fetchPlugin", work, None))

        return list(await asyncio.gather(*(one(f) for f in fetches)))
