"""What the server starts once and stops on shutdown: the resolvers' resources (metadata, files,
pool, cache, sources, plugins, events, jobs), the web state (API keys, rate limits), and the
background duties (sweeps, the plugin folder's watch, plugin refreshes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from connectors.database_sources import DatabaseSources
from connectors.registry import PluginRegistry
from connectors.sources import configured_sources
from datagraph.events import EventBus
from datagraph.metrics import Metrics
from datagraph.settings import Settings, keys_required
from engine.runtime import Executor, JobTracker, ResultCache
from resolvers.context import Context, Resources
from resolvers.plugins import refresh_forever
from server.auth import NO_KEYS_MESSAGE, KeyRing
from server.observe import count_job, count_stop
from server.ratelimit import Limiter, SocketCounts
from storage import DataDir, MetadataStore

__all__ = ["WebState", "open_resources", "running"]

log = logging.getLogger("datagraph")


@dataclass(frozen=True, slots=True)
class WebState:
    """What only the web layer uses: the API keys, the rate limiter (None: no rate limit) and the
    count of open websockets per key or address."""

    keys: KeyRing
    limiter: Limiter | None
    sockets: SocketCounts

    async def close(self) -> None:
        if self.limiter is not None:
            await self.limiter.close()


def _sweep_exports(res: Resources) -> None:
    """Expired exports, and dataset versions two or more behind that stopped being current a while ago."""
    res.files.sweep_versions({r.id: r.version for r in res.metadata.list_datasets()}, grace_s=300)
    for record in res.metadata.expired_exports():
        res.files.export_file(record.token, record.filename.rsplit(".", 1)[-1]).unlink(missing_ok=True)
        res.metadata.delete_export(record.token)


async def _sweep_forever(res: Resources, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(_sweep_exports, res)
        except Exception:  # a failed sweep is retried next time; it must not stop the server
            log.exception("export sweep failed")


async def open_resources(settings: Settings, metrics: Metrics) -> tuple[Resources, WebState]:
    """Create the data directory, metadata store, cache and worker pool; clear what a crash left behind."""
    files = DataDir(settings.data_dir)
    metadata = MetadataStore(settings.resolved_metadata_url)
    metadata.sweep_pending()
    metadata.sweep_jobs()
    records = metadata.list_datasets()
    files.sweep(
        {r.id: r.version for r in records},
        metadata.export_tokens(),
        kept_uploads={str(r.origin["stored_as"]) for r in records if r.origin.get("stored_as")},
    )
    executor = Executor(
        settings.workers,
        memory_mb=settings.worker_memory_mb,
        timeout_s=settings.timeout_s,
        metrics=metrics,
        on_job=count_job,
        on_kill=count_stop,
        result_mb=settings.max_result_mb,
    )
    await executor.start()
    cache = ResultCache(
        memory_bytes=settings.cache_memory_mb * 1024 * 1024,
        url=settings.cache_url,
        timeout_s=settings.cache_timeout_s,
        ttl_s=settings.cache_ttl_s,
        metrics=metrics,
    )
    databases = DatabaseSources(configured_sources(settings.sources))
    plugins = PluginRegistry(Path(settings.plugins) if settings.plugins else None)
    events = EventBus(
        settings.cache_url if settings.cache_url.startswith("redis") else "", timeout_s=settings.cache_timeout_s
    )
    await events.start()
    res = Resources(
        settings=settings, metadata=metadata, files=files, executor=executor, cache=cache, databases=databases,
        plugins=plugins, events=events, jobs=JobTracker(events), metrics=metrics,
    )  # fmt: skip
    web = WebState(
        keys=KeyRing(metadata),
        limiter=Limiter(settings) if settings.rate_limit else None,
        sockets=SocketCounts(settings.max_ws_per_client),
    )
    if keys_required(settings) and web.keys.count() == 0:
        await web.close()
        await res.close()
        raise RuntimeError(NO_KEYS_MESSAGE)
    await plugins.scan(executor)
    _sweep_exports(res)
    return res, web


@contextlib.asynccontextmanager
async def running(settings: Settings, metrics: Metrics) -> AsyncIterator[tuple[Resources, WebState]]:
    """The resources and web state, with the background duties running, for the block."""
    res, web = await open_resources(settings, metrics)
    duties = [
        asyncio.create_task(_sweep_forever(res, 60)),
        asyncio.create_task(res.plugins.watch(res.executor)),
        asyncio.create_task(refresh_forever(Context(res))),
    ]
    try:
        yield res, web
    finally:
        for task in duties:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*duties)
        await web.close()
        await res.close()
