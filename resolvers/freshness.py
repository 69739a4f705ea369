"""Fresh data: refresh schedules (setSchedule, and a plugin's `refresh_s` as its datasets' default),
refreshDataset, and the scheduler that runs due schedules once across the server processes.

What can be refreshed: plugin datasets (fetched again with their recorded parameters) and tables or
queries imported (snapshotted) from a database source (imported again). Uploads have no upstream,
a linked table is read live, and a saved frame's recorded steps are a cache key, not a pipeline
that can be run again (its recipe can: runRecipe): each is refused with a problem saying so.

A refresh makes the dataset's next version and publishes REFRESHED (`resolvers.datasets.dataset_job`),
or keeps the version when the data is the same. A failing one keeps the last good version and is
recorded as a failed job (its own kind, or `refresh` when it failed before its job could start);
its schedule retries with a back-off (`storage.Schedules.finish`).

The scheduler (`schedule_forever`) acts only while this process holds the scheduler's lease
(`storage.Lease`), and claims each due schedule before running it (`storage.Schedules.claim`), so a
period runs once even if two processes both believe they hold the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from datagraph.durations import format_duration, parse_duration
from datagraph.errors import BadInput, DatagraphError
from resolvers.context import Context, Listing
from resolvers.datasets import FRAMES, UPLOADS, require_dataset
from resolvers.jobs import new_job_id
from resolvers.plugins import PLUGINS, fetch_plugin, refresh_defaults
from resolvers.sources import import_table
from storage import CheckStore, DatasetRecord, Lease, ScheduleRecord, Schedules

__all__ = [
    "MAX_EVERY_S",
    "TICK_S",
    "forget_schedule",
    "format_every",
    "parse_every",
    "refresh_dataset",
    "refresh_once",
    "schedule_forever",
    "schedule_of",
    "scheduler_pass",
    "set_schedule",
]

log = logging.getLogger("datagraph.schedules")

MAX_EVERY_S = 365 * 86_400  # a schedule longer than a year is a mistake, not a schedule
TICK_S = 0.5  # how often the lease holder looks for due schedules
TIDY_S = 2.0  # how often it syncs plugins' refresh_s, forgets deleted datasets' schedules, frees dead claims
ACCEPTED = (
    'a duration in whole days, hours, minutes and seconds, such as "30s", "15m", "1h", "1d" or "1h30m"'
    " (null removes the schedule)"
)


def parse_every(text: str, *, min_s: int) -> int:
    """Seconds of a schedule written as "30s", "15m", "1h", "1d", "1h30m" (`datagraph.durations`, any
    case, spaces allowed); BAD_INPUT naming the accepted forms for anything else, zero, under `min_s`
    or over a year."""
    compact = "".join(str(text).split()).lower()
    try:
        seconds = int(parse_duration(compact, zero=True)) if len(compact) <= 40 else None
    except ValueError:
        seconds = None
    if seconds is None:
        raise BadInput(f'setSchedule: "{str(text)[:40]}" is not a schedule; every takes {ACCEPTED}.')
    if seconds > MAX_EVERY_S:
        raise BadInput(f'setSchedule: "{compact}" is longer than a year; every takes {ACCEPTED}, at most 365d.')
    if seconds < min_s:
        raise BadInput(
            f'setSchedule: "{compact}" is shorter than the shortest schedule, {format_every(min_s)}'
            f" (setting schedule_min_s); every takes {ACCEPTED}."
        )
    return seconds


def format_every(seconds: int) -> str:
    """A schedule's interval as setSchedule takes it, normalised: 5400 -> "1h30m"."""
    return format_duration(seconds)


def _schedules(ctx: Context) -> Schedules:
    return Schedules(ctx.resources.metadata.engine)


def _process_id(ctx: Context) -> str:
    return ctx.resources.metadata.owner or "this-process"


def _plugin_default(ctx: Context, record: DatasetRecord) -> int | None:
    """The plugin's `refresh_s` for one of its datasets; None for other datasets."""
    if record.source_id != PLUGINS:
        return None
    entry = ctx.resources.plugins.available().get(str(record.origin.get("plugin", "")))
    return max(1, int(entry[1].refresh_s)) if entry is not None and entry[1].refresh_s else None


def _refreshable(record: DatasetRecord) -> str:
    """How the dataset is refreshed ("plugin" or "import"); BAD_INPUT saying why it cannot be."""
    if record.source_id == PLUGINS:
        return "plugin"
    origin = record.origin
    if origin.get("mode") == "LINK":
        raise BadInput(
            f'The dataset "{record.id}" is a linked database table: it is read live, so it is always fresh and'
            " has no refresh or schedule."
        )
    if origin.get("mode") == "SNAPSHOT" and origin.get("source") and (origin.get("table") or origin.get("query")):
        return "import"
    if record.source_id == FRAMES:
        raise BadInput(
            f'The dataset "{record.id}" is a saved frame; it cannot be refreshed or scheduled. To make it again over'
            " the current versions of its sources, run its recipe (the recipe field of the frame) with runRecipe."
        )
    if record.source_id == UPLOADS:
        raise BadInput(
            f'The dataset "{record.id}" was uploaded (or appended to): it has no upstream to refresh from, so it has'
            " no refresh or schedule. Upload the file again with replace to make a new version."
        )
    raise BadInput(
        f'The dataset "{record.id}" has no upstream to refresh from; imported tables and plugin datasets can be'
        " refreshed and scheduled."
    )


def schedule_of(ctx: Context, record: DatasetRecord, listing: Listing | None = None) -> str | None:
    """Dataset.schedule: the dataset's refresh interval ("15m"), its plugin's refresh_s when setSchedule
    did not set one, or None (read for the whole of its `listing` page at once, when it was listed)."""
    store = _schedules(ctx)
    found = listing.one("schedule", store.get_many, record.id) if listing is not None else store.get(record.id)
    if found is not None:
        return format_every(found.every_s) if found.every_s else None
    default = _plugin_default(ctx, record)
    return format_every(default) if default else None


async def set_schedule(ctx: Context, dataset_id: str, every: str | None) -> DatasetRecord:
    """Give a refreshable dataset a schedule, first due one interval from now; None removes it (a
    plugin dataset's default from refresh_s included)."""
    record = require_dataset(ctx, dataset_id)
    _refreshable(record)
    seconds = parse_every(every, min_s=ctx.settings.schedule_min_s) if every is not None else None
    schedules = _schedules(ctx)
    if seconds is None and _plugin_default(ctx, record) is None:
        await asyncio.to_thread(schedules.remove, record.id)
    else:
        await asyncio.to_thread(schedules.assign, record.id, seconds)
    await ctx.resources.events.touch(record.id)  # answers that showed its schedule are stale
    return require_dataset(ctx, record.id)


async def forget_schedule(ctx: Context, dataset_id: str) -> None:
    """The schedule of a deleted dataset goes with it (the scheduler also forgets those it finds)."""
    await asyncio.to_thread(_schedules(ctx).remove, dataset_id)


async def refresh_once(ctx: Context, record: DatasetRecord, job_id: str) -> DatasetRecord:
    """Fetch or import the dataset again, as job `job_id`: its next version (REFRESHED), or the same
    version when the data is the same. A failure that comes before the job could start (the plugin or
    the source is gone) is recorded as a failed job of kind `refresh`."""
    try:
        origin = record.origin
        if _refreshable(record) == "plugin":
            params = origin.get("params")
            return await fetch_plugin(
                ctx, plugin=str(origin.get("plugin", "")), params=params if isinstance(params, dict) else {},
                name=None, job_id=job_id, into=record,
            )  # fmt: skip
        table, query = origin.get("table"), origin.get("query")
        return await import_table(
            ctx, source_id=str(origin["source"]), table=str(table) if table else None,
            query=str(query) if query and not table else None, name=None, job_id=job_id, into=record,
        )  # fmt: skip
    except DatagraphError as exc:
        metadata = ctx.resources.metadata
        if metadata.get_job(job_id) is None and metadata.start_job(
            job_id, kind="refresh", steps={"refresh": record.id}
        ):  # fmt: skip
            metadata.finish_job(job_id, error=exc.message)
        raise


async def refresh_dataset(ctx: Context, dataset_id: str, *, job_id: str) -> DatasetRecord:
    """refreshDataset: refresh now, whatever the schedule says. BAD_INPUT when a run of the dataset's
    schedule, or another refreshDataset of it in this process, is under way (its version comes when
    it ends). A scheduled dataset's next run stays when it was due; after a failure its back-off applies."""
    record = require_dataset(ctx, dataset_id)
    _refreshable(record)
    refreshing = ctx.resources.refreshing
    if record.id in refreshing:  # a client asking again (or many at once) does not start another import
        raise BadInput(
            f'A refresh of "{record.id}" is already running (refreshDataset started it); its new version is'
            " published when it ends."
        )
    refreshing.add(record.id)
    try:
        return await _refresh_claimed(ctx, record, job_id)
    finally:
        refreshing.discard(record.id)


async def _refresh_claimed(ctx: Context, record: DatasetRecord, job_id: str) -> DatasetRecord:
    schedules = _schedules(ctx)
    token, scheduled = await asyncio.to_thread(schedules.claim_now, record.id, _process_id(ctx))
    if scheduled and token is None:
        raise BadInput(
            f'A refresh of "{record.id}" is already running (its schedule started it); its new version is published'
            " when it ends."
        )
    error: str | None = "The refresh did not finish."
    try:
        done = await refresh_once(ctx, record, job_id)
        error = None
        return done
    except DatagraphError as exc:
        error = exc.message
        raise
    finally:
        if token is not None:
            await asyncio.to_thread(
                schedules.finish, record.id, token, error=error, retry_s=ctx.settings.schedule_retry_s
            )


async def _run_claimed(ctx: Context, found: ScheduleRecord, token: str) -> None:
    """Run one claimed schedule and move it on (or release it, when this server stops meanwhile)."""
    schedules = _schedules(ctx)
    outcome, error = "ok", None
    try:
        record = ctx.resources.metadata.get_dataset(found.dataset_id)
        if record is None:  # deleted meanwhile: its schedule goes too
            await asyncio.to_thread(schedules.remove, found.dataset_id)
            return
        await refresh_once(ctx, record, new_job_id())
    except asyncio.CancelledError:  # this server is stopping: another process runs this period
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.to_thread(schedules.release, found.dataset_id, token))
        raise
    except DatagraphError as exc:
        outcome, error = exc.code, exc.message
    except Exception:
        log.exception("the scheduled refresh of dataset %s failed", found.dataset_id)
        outcome, error = "INTERNAL", "The refresh failed on the server."
    if error is not None:
        log.warning("the scheduled refresh of dataset %s failed: %s", found.dataset_id, error)
    ctx.resources.metrics.scheduled_refreshes.labels(outcome).inc()
    try:
        await asyncio.to_thread(
            schedules.finish, found.dataset_id, token, error=error, retry_s=ctx.settings.schedule_retry_s
        )
    except Exception:  # the database is away: the claim is released when it is back (or this process dies)
        log.exception("could not record the end of the scheduled refresh of dataset %s", found.dataset_id)


def _tidy(ctx: Context, live: Callable[[], set[str]]) -> list[str]:
    """Bring plugin datasets' default schedules in step with their plugins' refresh_s, forget the
    schedules (and checks) of deleted datasets, and free the claims of dead processes; return the datasets whose
    schedule changed."""
    schedules = _schedules(ctx)
    changed = schedules.sync_defaults(refresh_defaults(ctx))
    schedules.forget_orphans()
    CheckStore(ctx.resources.metadata.engine).forget_orphans()  # the same race, with setChecks
    freed = schedules.release_dead(live())
    if freed:
        log.warning("schedules claimed by dead server processes run again: %s", ", ".join(freed))
    return changed


def _forget_when_done(running: dict[str, asyncio.Task[None]], key: str) -> Callable[[asyncio.Task[None]], None]:
    def forget(task: asyncio.Task[None]) -> None:
        if running.get(key) is task:
            del running[key]

    return forget


async def scheduler_pass(
    ctx: Context, running: dict[str, asyncio.Task[None]], *, tidy: Callable[[], set[str]] | None = None
) -> int:
    """One pass of the lease holder: (with `tidy`, the live processes) tidy the schedules, then claim
    and start the due ones, as many as there are workers to run them; return how many it started."""
    if tidy is not None:
        for dataset_id in await asyncio.to_thread(_tidy, ctx, tidy):
            await ctx.resources.events.touch(dataset_id)
    room = max(1, ctx.settings.workers) - len(running)
    if room <= 0:
        return 0
    schedules = _schedules(ctx)
    started = 0
    for found in await asyncio.to_thread(schedules.due, room + len(running)):
        if found.dataset_id in running or len(running) >= max(1, ctx.settings.workers):
            continue
        token = await asyncio.to_thread(schedules.claim, found, _process_id(ctx))
        if token is None:
            continue  # another process claimed it first
        task = asyncio.create_task(_run_claimed(ctx, found, token))
        running[found.dataset_id] = task
        task.add_done_callback(_forget_when_done(running, found.dataset_id))
        started += 1
    return started


async def schedule_forever(ctx: Context, lease: Lease, live: Callable[[], set[str]], *, tick_s: float = TICK_S) -> None:
    """Run due schedules while this process holds `lease` (`live`: the ids of the live server
    processes, whose claims are kept). Refreshes under way when it stops are cancelled; their
    schedules are released for another process."""
    running: dict[str, asyncio.Task[None]] = {}
    tidied = -float("inf")
    try:
        while True:
            await asyncio.sleep(tick_s)
            if not lease.held:
                continue
            try:
                due_tidy = time.monotonic() - tidied >= TIDY_S
                await scheduler_pass(ctx, running, tidy=live if due_tidy else None)
                if due_tidy:
                    tidied = time.monotonic()
            except Exception:  # the database is away, say: the next pass tries again
                log.exception("a scheduler pass failed")
    finally:
        for task in list(running.values()):
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
