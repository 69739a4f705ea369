"""What the server starts once and stops on shutdown: the resolvers' resources (metadata, files,
pool, cache, sources, plugins, events, jobs), the web state (API keys, rate limits), and the
background duties (the heartbeat, leases, sweeps, the scheduler, the folder watches).

Each server process registers under an id of its own in the metadata database and keeps a
heartbeat there; sweeps remove only what dead processes left (`storage.sweep_leftovers`).

Duties that write shared state run once across the processes sharing the metadata database: each
only while this process holds its lease (`storage.Lease`, renewed every `lease_s / 3`): the
scheduler (schedules and plugins' refresh_s, lease "scheduler"), the periodic sweep (every `sweep_s`: exports, version
pruning, compaction kicks, dead processes' leftovers) and the start-up sweep (lease "sweep": a
process starting while another holds it leaves the sweep to that one). The heartbeat and the
per-process loaders run in every process: each loads its own plugin code (the plugins folder's
watch) and its own persisted documents (the documents watch), which it needs to serve requests."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from connectors.database_sources import DatabaseSources
from connectors.registry import PluginRegistry
from connectors.sources import DEFAULT_FILE as SOURCES_DEFAULT
from connectors.sources import configured_sources
from connectors.webhook import Webhook, blocked_webhook
from datagraph import tracing
from datagraph.events import EventBus
from datagraph.metrics import Metrics
from datagraph.settings import Settings, keys_required
from engine.runtime import Executor, JobTracker, ResultCache
from resolvers.context import Context, Resources
from resolvers.datasets import compact_soon
from resolvers.freshness import schedule_forever
from resolvers.plugins import http_settings
from server.auth import NO_KEYS_MESSAGE, KeyRing
from server.documents import DocumentRegistry
from server.observe import count_job, count_stop
from server.ratelimit import Limiter, SocketCounts
from storage import DataDir, Documents, Lease, Leases, MetadataStore, Processes, sweep_leftovers

__all__ = ["SCHEDULER", "SWEEP", "Duties", "WebState", "open_resources", "running"]

log = logging.getLogger("datagraph")

PLUGINS_DEFAULT = Settings.model_fields["plugins"].default  # a folder beside where the server starts
STALE_BEATS = 3  # a process whose heartbeat is this many periods old is dead
SCHEDULER, SWEEP = "scheduler", "sweep"  # the leases on background duties


@dataclass(frozen=True, slots=True)
class WebState:
    """What only the web layer uses: the API keys, the rate limiter (None: no rate limit), the
    count of open websockets per key or address, and the persisted documents."""

    keys: KeyRing
    limiter: Limiter | None
    sockets: SocketCounts
    documents: DocumentRegistry

    async def close(self) -> None:
        if self.limiter is not None:
            await self.limiter.close()


VERSION_GRACE_S = 300  # a version past its keeping, or compacted, stays this long for queries reading it


def _sweep_exports(res: Resources) -> tuple[list[str], list[str]]:
    """Expired exports, dataset versions past `keep_versions` or older than `keep_versions_days` (and
    parts folders compacted) that stopped being current a while ago, with the records of the versions
    whose files are gone; return the datasets whose current version waits for compaction, and those
    that lost versions."""
    current = {r.id: r.version for r in res.metadata.list_datasets()}
    days = res.settings.keep_versions_days
    expired = res.metadata.versions_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=days)) if days else {}
    res.files.sweep_versions(current, keep=res.settings.keep_versions, grace_s=VERSION_GRACE_S, expired=expired)
    pruned = []
    for dataset_id, numbers in res.metadata.recorded_versions().items():
        gone = [
            n for n in numbers if n != current.get(dataset_id) and not res.files.version_path(dataset_id, n).exists()
        ]
        if gone and dataset_id in current:
            res.metadata.forget_versions(dataset_id, gone)
            pruned.append(dataset_id)
    for record in res.metadata.expired_exports():
        res.files.export_file(record.token, record.filename.rsplit(".", 1)[-1]).unlink(missing_ok=True)
        res.metadata.delete_export(record.token)
    threshold = res.settings.compact_parts
    return [d for d, v in current.items() if len(res.files.version_parts(d, v)) >= threshold], pruned


def _sweep_leftovers(settings: Settings, metadata: MetadataStore, files: DataDir, processes: Processes, *,
                     starting: bool = False) -> None:  # fmt: skip
    swept = sweep_leftovers(
        metadata, files, processes, stale_s=settings.heartbeat_s * STALE_BEATS,
        deadline_s=settings.import_timeout_s, starting=starting,
    )  # fmt: skip
    if swept.dead or swept.pending or swept.jobs:
        log.warning(
            "swept what %d dead server process(es) left: %d pending dataset(s), %d job(s) marked failed",
            len(swept.dead), len(swept.pending), swept.jobs,
        )  # fmt: skip


async def _sweep_forever(res: Resources, processes: Processes, lease: Lease, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        if not lease.held:
            continue  # another process sweeps
        try:
            waiting, pruned = await asyncio.to_thread(_sweep_exports, res)
            for dataset_id in waiting:
                compact_soon(res, dataset_id)  # one a previous process left, or whose compaction failed
            for dataset_id in pruned:
                await res.events.touch(dataset_id)  # answers that listed or read a pruned version are stale
            await asyncio.to_thread(_sweep_leftovers, res.settings, res.metadata, res.files, processes)
        except Exception:  # a failed sweep is retried next time; it must not stop the server
            log.exception("a sweep failed")


async def _beat_forever(processes: Processes, every_s: float) -> None:
    """Keep this process's heartbeat fresh, so other processes leave its work alone."""
    while True:
        await asyncio.sleep(every_s)
        try:
            if not await asyncio.to_thread(processes.beat):
                log.warning(
                    "this server process was taken for dead (no heartbeat for %g s) and has registered again;"
                    " what it was staging may have been swept",
                    every_s * STALE_BEATS,
                )
        except Exception:  # the database is away: try again next time
            log.exception("heartbeat failed")


# How often the event loop's lag is sampled, and from what lag a sample is also logged.
LAG_EVERY_S, LAG_LOGGED_S = 0.05, 1.0


async def _watch_loop_forever(metrics: Metrics) -> None:
    """Sample how late the event loop runs a timer (datagraph_event_loop_lag_seconds): every request
    waits that long behind whatever held the loop. A hold of a second or more is logged too."""
    while True:
        due = time.monotonic() + LAG_EVERY_S
        await asyncio.sleep(LAG_EVERY_S)
        lag = max(0.0, time.monotonic() - due)
        metrics.loop_lag.observe(lag)
        if lag >= LAG_LOGGED_S:
            log.warning("the event loop was held for %.1f s: every request waited that long", lag)


async def _hold_forever(duties: Duties, metrics: Metrics, every_s: float, stale_s: float) -> None:
    """Take or renew this process's leases every `every_s` (a third of lease_s), from dead holders too,
    and say which it holds."""
    while True:
        try:
            dead = await asyncio.to_thread(duties.processes.dead, stale_s)
        except Exception:  # the database is away: the renewals say so
            dead = []
        for lease in duties.leases:
            held = await asyncio.to_thread(lease.renew, dead=dead)
            metrics.lease_held.labels(lease.name).set(1 if held else 0)
        await asyncio.sleep(every_s)


def _live(processes: Processes, stale_s: float) -> set[str]:
    """The ids of the server processes alive now (whose schedule claims stand)."""
    return processes.known() - set(processes.dead(stale_s))


def _leave(files: DataDir, processes: Processes) -> None:
    """On a clean shutdown: this process's staging area, then its row, go."""
    try:
        files.remove_staging_area()
        processes.leave()
    except Exception:  # a dead process's leftovers are swept by the next one
        log.exception("could not unregister this server process")


def _plugins_folder(settings: Settings) -> Path | None:
    """The plugins folder to load and watch: None when the setting is empty, or when it is the
    default and no such folder is where the server started (it is not made for the user; a folder
    named explicitly is)."""
    if not settings.plugins:
        return None
    folder = Path(settings.plugins)
    if not folder.is_dir() and settings.plugins == PLUGINS_DEFAULT:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _report_start(settings: Settings, *, created: bool, sources: list[str], plugins: PluginRegistry) -> None:
    """Say at start-up which data directory, sources file and plugins folder are in use, as absolute
    paths, and what was not found: a server started from another folder says so instead of silently
    running without the checkout's sources and plugins."""
    here = Path.cwd()
    state = "created now" if created else "existing"
    log.info("data directory: %s (%s)", settings.data_dir.resolve(), state)
    if not settings.sources:
        log.info("sources file: none (setting sources is empty)")
    elif settings.sources == SOURCES_DEFAULT and not Path(settings.sources).exists():
        log.info("sources file: none (no %s in %s; setting sources names one)", SOURCES_DEFAULT, here)
    else:
        listed = ", ".join(sources) or "no databases"
        log.info("sources file: %s (%s)", Path(settings.sources).resolve(), listed)
    if plugins.folder is None:
        why = "setting plugins is empty" if not settings.plugins else f"no {PLUGINS_DEFAULT}/ folder in {here}"
        log.info("plugins folder: none (%s)", why)
    else:
        names = ", ".join(sorted(plugins.available())) or "no plugins yet"
        log.info("plugins folder: %s (%s)", plugins.folder.resolve(), names)


@dataclass(frozen=True, slots=True)
class Duties:
    """This process's registration and its leases on the background duties."""

    processes: Processes
    scheduler: Lease
    sweep: Lease

    @property
    def leases(self) -> list[Lease]:
        return [self.scheduler, self.sweep]


async def open_resources(settings: Settings, metrics: Metrics) -> tuple[Resources, WebState, Duties]:
    """Create the data directory, metadata store, cache and worker pool; register this process
    (its heartbeat starts with `running`) and, unless another process holds the sweep's lease, clear
    what dead ones left behind."""
    if settings.webhook_url:  # refused before anything starts: every delivery would be refused
        refused = await blocked_webhook(settings.webhook_url, http_settings(settings).blocked_networks)
        if refused:
            raise RuntimeError(refused)
    process_id = uuid.uuid4().hex
    data_dir_existed = settings.data_dir.is_dir()
    files = DataDir(settings.data_dir, process_id)
    metadata = MetadataStore(settings.resolved_metadata_url, owner=process_id)
    processes = Processes(metadata.engine, process_id)
    processes.join()
    leases = Leases(metadata.engine, process_id)
    duties = Duties(processes, Lease(leases, SCHEDULER, settings.lease_s), Lease(leases, SWEEP, settings.lease_s))
    if duties.sweep.renew(dead=processes.dead(settings.heartbeat_s * STALE_BEATS)):
        _sweep_leftovers(settings, metadata, files, processes, starting=True)
    metadata.backfill_versions(files.version_bytes)  # datasets made before versions were recorded
    executor = Executor(
        settings.workers,
        memory_mb=settings.worker_memory_mb,
        timeout_s=settings.timeout_s,
        metrics=metrics,
        on_job=count_job,
        on_kill=count_stop,
        result_mb=settings.max_result_mb,
        idle_s=settings.worker_idle_s,
    )
    await executor.start()
    cache = ResultCache(
        memory_bytes=settings.cache_memory_mb * 1024 * 1024,
        url=settings.cache_url,
        timeout_s=settings.cache_timeout_s,
        ttl_s=settings.cache_ttl_s,
        metrics=metrics,
    )
    sources = configured_sources(settings.sources)
    databases = DatabaseSources(sources)
    plugins = PluginRegistry(_plugins_folder(settings))
    events = EventBus(
        settings.cache_url if settings.cache_url.startswith("redis") else "", timeout_s=settings.cache_timeout_s
    )
    await events.start()
    res = Resources(
        settings=settings, metadata=metadata, files=files, executor=executor, cache=cache, databases=databases,
        plugins=plugins, events=events, jobs=JobTracker(events), metrics=metrics, webhook=_webhook(settings, metrics),
    )  # fmt: skip
    web = WebState(
        keys=KeyRing(metadata),
        limiter=Limiter(settings) if settings.rate_limit else None,
        sockets=SocketCounts(settings.max_ws_per_client),
        documents=DocumentRegistry(settings, Documents(metadata.engine)),
    )
    await asyncio.to_thread(web.documents.load_folder)
    if keys_required(settings) and web.keys.count() == 0:
        await web.close()
        duties.sweep.release()
        _leave(files, processes)
        await res.close()
        raise RuntimeError(NO_KEYS_MESSAGE)
    await plugins.scan(executor)
    executor.release_idle()  # the plugin inspections' workers go: an idle server is one process
    _report_start(settings, created=not data_dir_existed, sources=[c.id for c in sources], plugins=plugins)
    if duties.sweep.held:
        for dataset_id in _sweep_exports(res)[0]:
            compact_soon(res, dataset_id)
    return res, web, duties


def _webhook(settings: Settings, metrics: Metrics) -> Webhook | None:
    if not settings.webhook_url:
        return None
    webhook = Webhook(
        settings.webhook_url, http_settings(settings), metrics, queue_size=settings.webhook_queue,
        deadline_s=settings.webhook_deadline_s,
    )  # fmt: skip
    webhook.start()
    return webhook


@contextlib.asynccontextmanager
async def running(settings: Settings, metrics: Metrics) -> AsyncIterator[tuple[Resources, WebState]]:
    """The resources and web state, with the background duties running, for the block (traced to the
    `otel_endpoint` collector when it is set)."""
    # Starlette hands blocking work (an upload's file writes) to AnyIO's threads, whose backend AnyIO
    # imports on first use: on the event loop, a quarter of a second during the first upload. Now instead.
    await anyio.to_thread.run_sync(int)
    traced = tracing.configure(settings.otel_endpoint)  # before the pool starts: its workers trace too
    try:
        res, web, duties = await open_resources(settings, metrics)
    except BaseException:
        if traced is not None:
            await asyncio.to_thread(traced.close)
        raise
    processes = duties.processes
    stale_s = settings.heartbeat_s * STALE_BEATS
    tasks = [
        asyncio.create_task(_watch_loop_forever(res.metrics)),
        asyncio.create_task(_beat_forever(processes, settings.heartbeat_s)),
        asyncio.create_task(_hold_forever(duties, res.metrics, settings.lease_s / 3, stale_s)),
        asyncio.create_task(_sweep_forever(res, processes, duties.sweep, settings.sweep_s)),
        asyncio.create_task(schedule_forever(Context(res), duties.scheduler, lambda: _live(processes, stale_s))),
        # In every process: each loads its own plugin code and documents, which it serves with.
        asyncio.create_task(res.plugins.watch(res.executor)),
        asyncio.create_task(web.documents.watch()),
    ]
    try:
        yield res, web
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
        for lease in duties.leases:  # another process takes the duties over at once
            await asyncio.to_thread(lease.release)
        await web.close()
        await asyncio.to_thread(_leave, res.files, processes)
        await res.close()
        if traced is not None:  # the spans still queued go (bounded by the export timeout)
            await asyncio.to_thread(traced.close)
