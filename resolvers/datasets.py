"""Datasets and the upload source: list, look up, upload (stream, sniff, parse, commit), delete."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import engine
from connectors import ingest, sniff
from connectors.linked import LinkedTable
from datagraph.answers import ANY_DATASET
from datagraph.errors import BadInput, NotFound, TooLarge
from engine import ColumnInfo, Join, Plan, Source
from resolvers import checks
from resolvers.context import FRAMES, Context, Listing, Resources
from resolvers.jobs import recorded_job
from storage import DatasetRecord, VersionRecord, storage_guard

__all__ = [
    "FRAMES",
    "UPLOADS",
    "Produced",
    "SourceInfo",
    "append_rows",
    "commit_version",
    "compact_dataset",
    "compact_soon",
    "count_datasets",
    "dataset_at",
    "dataset_job",
    "dataset_plan",
    "dataset_slug",
    "dataset_source",
    "delete_dataset",
    "display_name",
    "find_source",
    "get_dataset",
    "join_step",
    "list_datasets",
    "list_sources",
    "list_versions",
    "rename_dataset",
    "require_dataset",
    "restore_version",
    "save_frame",
    "upload_dataset",
]

log = logging.getLogger("datagraph")

UPLOADS = "uploads"
_CHUNK = 1 << 20


class AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SourceInfo:
    id: str
    name: str
    kind: str  # FILE | DATABASE | PLUGIN


def list_sources(ctx: Context) -> list[SourceInfo]:
    """The upload area, saved frames, the databases in sources.yaml in file order, and the plugins."""
    files = [SourceInfo(UPLOADS, "Uploaded files", "FILE"), SourceInfo(FRAMES, "Saved frames", "FILE")]
    databases = [SourceInfo(c.id, c.name, "DATABASE") for c in ctx.resources.databases.configs.values()]
    return [*files, *databases, SourceInfo("plugins", "API plugins", "PLUGIN")]


def find_source(ctx: Context, source_id: str) -> SourceInfo | None:
    return next((s for s in list_sources(ctx) if s.id == source_id), None)


def list_datasets(
    ctx: Context,
    *,
    limit: int | None = None,
    offset: int | None = 0,
    search: str | None = None,
    source_id: str | None = None,
) -> list[DatasetRecord]:
    """Ready datasets, oldest first: a page of at most `limit` (None: every one) from `offset`, of those
    whose id or name contains `search` (any case) and of `source_id`. BAD_INPUT for a negative offset,
    and for a limit under 1 or over the setting datasets_max_page."""
    cap = ctx.settings.datasets_max_page
    if limit is not None and not 1 <= limit <= cap:
        raise BadInput(f"limit must be between 1 and {cap:,} (setting datasets_max_page); page with offset.")
    if offset is not None and offset < 0:
        raise BadInput("offset must be 0 or more.")
    if ctx.reads is not None:  # the answer cache: any change to the list makes this answer stale
        ctx.reads.dataset(ANY_DATASET)
    return ctx.resources.metadata.list_datasets(
        limit=limit, offset=offset or 0, search=_searched(search), source_id=source_id
    )


def count_datasets(ctx: Context, *, search: str | None = None, source_id: str | None = None) -> int:
    """How many datasets `list_datasets` lists with the same search and source (for paging)."""
    if ctx.reads is not None:
        ctx.reads.dataset(ANY_DATASET)
    return ctx.resources.metadata.count_datasets(search=_searched(search), source_id=source_id)


def _searched(search: str | None) -> str | None:
    text = (search or "").strip()
    if len(text) > 200:
        raise BadInput("search takes at most 200 characters (an id or a part of a name).")
    return text or None


def get_dataset(ctx: Context, dataset_id: str) -> DatasetRecord | None:
    if ctx.reads is not None:  # before the lookup: a change from now on makes the answer stale
        ctx.reads.dataset(dataset_id)
    return ctx.resources.metadata.get_dataset(dataset_id)


def require_dataset(ctx: Context, dataset_id: str) -> DatasetRecord:
    record = get_dataset(ctx, dataset_id)
    if record is None:
        raise NotFound(f'There is no dataset "{_clip(dataset_id)}".')
    return record


VERSIONS_MAX_PAGE = 1_000


def list_versions(
    ctx: Context, record: DatasetRecord, limit: int | None, listing: Listing | None = None
) -> list[VersionRecord]:
    """The kept versions of a dataset, newest first, at most `limit`; BAD_INPUT for a limit out of bounds
    (read for the whole of its `listing` page at once, when it was listed)."""
    if limit is not None and not 1 <= limit <= VERSIONS_MAX_PAGE:
        raise BadInput(f"versions takes a limit between 1 and {VERSIONS_MAX_PAGE:,}.")
    if ctx.reads is not None:  # a new version, or one pruned, changes the list
        ctx.reads.dataset(record.id)
    # An explicit null is not "all": the page stays bounded however many versions retention keeps.
    most = limit or VERSIONS_MAX_PAGE
    metadata = ctx.resources.metadata
    if listing is None:
        return metadata.list_versions(record.id, limit=most)
    found = listing.one(("versions", most), lambda ids: metadata.list_versions_many(ids, limit=most), record.id)
    return found or []


def dataset_at(
    ctx: Context, record: DatasetRecord, *, version: int | None, as_of: dt.datetime | None
) -> DatasetRecord | None:
    """The dataset as it was at `version`, or at the newest version made at or before `as_of` (exactly
    one of the two; BAD_INPUT otherwise): a record whose version is that one, so that its plan reads
    that version's files and its results are cached under it. None when that version was never made or
    is pruned."""
    if (version is None) == (as_of is None):
        raise BadInput("at takes either version (a version number) or asOf (a date and time), and not both.")
    if ctx.reads is not None:  # pruning or a restore changes what this answers
        ctx.reads.dataset(record.id)
    if as_of is not None:
        try:
            as_of = (as_of if as_of.tzinfo else as_of.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        except OverflowError:  # within a day of year 1 or 9999, past what UTC can hold
            if as_of.year == 1:
                return None  # before any version
            as_of = dt.datetime.max.replace(tzinfo=dt.UTC)
    found = ctx.resources.metadata.get_version(record.id, number=version, as_of=as_of)
    if found is None or found.number > record.version:
        return None
    if found.number == record.version:
        return record
    if record.origin.get("mode") == "LINK" or not ctx.resources.files.version_path(record.id, found.number).exists():
        return None  # its files are gone (pruned a moment ago)
    return _as_of_version(record, found)


def _as_of_version(record: DatasetRecord, version: VersionRecord) -> DatasetRecord:
    return dataclasses.replace(
        record,
        version=version.number,
        row_count=version.row_count,
        columns_json=version.columns_json,
        updated_at=version.created_at,
    )


def dataset_plan(ctx: Context, record: DatasetRecord) -> Plan:
    return Plan(dataset_source(ctx, record))


def dataset_source(ctx: Context, record: DatasetRecord) -> Source:
    generation = record.created_at.isoformat()
    if record.origin.get("mode") == "LINK":
        if ctx.reads is not None:  # its rows change without an event
            ctx.reads.refuse("a linked table")
        config = ctx.resources.databases.get(record.source_id)
        link = LinkedTable(record.source_id, str(record.origin["table"]), config, ctx.settings.max_rows)
        return Source(record.id, record.version, Path(), generation=generation, link=link)
    path = ctx.resources.files.version_path(record.id, record.version)
    return Source(record.id, record.version, path, generation=generation)


def join_step(ctx: Context, right: str, on: list[str], how: str) -> Join:
    """A join with the right dataset's current version; a missing one answers NOT_FOUND when run."""
    record = get_dataset(ctx, right)
    source = dataset_source(ctx, record) if record else Source(right, 0, Path())
    return Join(source, tuple(on), how, ctx.settings.join_max_rows)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# Control, format (bidi overrides, zero-width) and separator characters never reach a name.
def display_name(raw: str, *, fallback: str = "dataset", limit: int = 100) -> str:
    """A safe display name: no path, no control or bidi characters, at most `limit` characters."""
    base = re.split(r"[\\/]", raw)[-1]
    clean = "".join(ch for ch in base if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " ")
    clean = " ".join(clean.split())[:limit].strip(" .")
    return clean or fallback


def dataset_slug(name: str) -> str:
    """The id a new dataset named `name` asks for: lower-case ASCII letters, digits, '-' and '_'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_]+", "-", ascii_name.lower()).strip("-_")[:60].strip("-_")
    return slug or "dataset"


async def _stage(ctx: Context, stream: AsyncReadable, dest: Path, job_id: str) -> int:
    """Copy the upload to a staging file, stopping at the byte limit."""
    limit = ctx.settings.max_upload_bytes
    written = 0
    with storage_guard(), open(dest, "wb") as out:
        while chunk := await stream.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise TooLarge(
                    f"The file is larger than the upload limit of {ctx.settings.max_upload_mb:g} MiB"
                    " (setting max_upload_mb)."
                )
            out.write(chunk)
            ctx.resources.metrics.upload_bytes.inc(len(chunk))
            await ctx.resources.jobs.progress(job_id, "staging", size=written)
    return written


async def upload_dataset(
    ctx: Context,
    *,
    stream: AsyncReadable,
    filename: str,
    name: str | None,
    job_id: str,
    replace: str | None = None,
) -> DatasetRecord:
    """Stage, sniff, parse and commit an uploaded file; nothing is visible unless all of it worked.
    With `replace`, the file becomes the next version of that dataset (REPLACED) instead."""
    res = ctx.resources
    target = None
    if replace is not None:
        target = require_dataset(ctx, replace)
        if target.source_id != UPLOADS:
            raise BadInput(f'The dataset "{target.id}" did not come from an upload; only uploads can be replaced.')
    stem, dot, ext = display_name(filename.replace("\x00", ""), fallback="upload", limit=10_000).rpartition(".")
    safe_filename = f"{display_name(stem, fallback='upload')}.{ext[:10]}" if dot else display_name(ext[:100])
    title = display_name(name or safe_filename.rsplit(".", 1)[0])
    staged = res.files.staging_path(".upload")
    steps = {"filename": safe_filename, "name": title, **({"replace": replace} if replace else {})}
    origin: dict[str, Any] = {"filename": safe_filename}

    async def produce(parquet: Path) -> Produced:
        size = await _stage(ctx, stream, staged, job_id)
        await res.jobs.progress(job_id, "parsing", size=size)
        fmt = await res.executor.run_io(sniff, staged, safe_filename, res.ingest_limits)
        origin.update(format=fmt, bytes=size)
        result = await res.executor.run(
            ingest,
            staged,
            fmt,
            parquet,
            res.ingest_limits,
            deadline_s=ctx.settings.import_timeout_s,
            timeout_message=import_timeout_message(ctx, "Reading the file"),
        )
        return Produced(result.row_count, result.row_count, result.columns, raw=(staged, fmt))

    return await dataset_job(
        ctx, job_id=job_id, kind="uploadDataset", steps=steps, title=title, source_id=UPLOADS,
        origin=origin, produce=produce, into=target, staged=(staged,),
    )  # fmt: skip


async def delete_dataset(ctx: Context, dataset_id: str) -> DatasetRecord:
    """Delete the dataset's rows first, then its files: its Parquet versions, the raw upload and its
    exports. A crash in between leaves only files no row names, which the start-up sweep removes."""
    res = ctx.resources
    record = require_dataset(ctx, dataset_id)
    for export in res.metadata.delete_dataset(record.id):
        res.files.export_file(export.token, export.filename.rsplit(".", 1)[-1]).unlink(missing_ok=True)
    res.files.remove_dataset(record.id)
    res.files.remove_upload(str(record.origin.get("stored_as", "")))
    checks.forget(ctx, record.id)
    await res.events.publish("DELETED", record.id, record.version, 0)
    return record


def compact_soon(res: Resources, dataset_id: str) -> None:
    """Compact the dataset's current version in the background, unless that is under way already."""
    running = res.compactions.get(dataset_id)
    if running is None or running.done():
        task = asyncio.create_task(compact_dataset(res, dataset_id))
        res.compactions[dataset_id] = task
        task.add_done_callback(
            lambda t: res.compactions.pop(dataset_id, None) if res.compactions.get(dataset_id) is t else None
        )


async def compact_dataset(res: Resources, dataset_id: str) -> bool:
    """Write the dataset's current version, kept as appended parts, as one file beside them, which
    queries read from then on (same rows, same version, so cached answers stay valid); True when
    done. A failure (a full disk, a deadline) leaves the parts, which still answer every query."""
    record = res.metadata.get_dataset(dataset_id)
    if record is None or record.status != "ready" or record.origin.get("mode") == "LINK":
        return False
    parts = res.files.version_parts(record.id, record.version)
    if len(parts) < 2:
        return False
    staged = res.files.staging_path(".parquet")
    try:
        with storage_guard():
            await res.executor.run(engine.compact, parts, out=staged, deadline_s=res.settings.import_timeout_s)
            return await res.executor.run_io(res.files.commit_compacted, staged, record.id, record.version)
    except Exception:
        log.warning(
            "could not compact dataset %s v%d; its parts still answer", record.id, record.version, exc_info=True
        )
        return False
    finally:
        res.files.discard_staged(staged)


async def rename_dataset(ctx: Context, dataset_id: str, name: str) -> DatasetRecord:
    """Give a dataset another display name: its id, version, data and links stay as they are."""
    record = require_dataset(ctx, dataset_id)
    if not isinstance(name, str) or not name.strip():
        raise BadInput("renameDataset needs a name: some text (its id stays the same).")
    renamed = ctx.resources.metadata.rename_dataset(record.id, display_name(name, fallback=record.name))
    if renamed is None:
        raise NotFound(f'There is no dataset "{_clip(dataset_id)}".')
    await ctx.resources.events.touch(record.id)  # answers that showed the old name are stale
    return renamed


def import_timeout_message(ctx: Context, what: str) -> str:
    seconds = ctx.settings.import_timeout_s
    return f"{what} did not finish within {seconds:g} s and was stopped (setting import_timeout_s)."


async def save_frame(ctx: Context, *, plan: Plan, name: str, job_id: str) -> DatasetRecord:
    """Materialise a pipeline as a new dataset, as a transform job recorded in the metadata store
    (status, timings, row counts and its steps); nothing is visible unless all of it worked."""
    if not name or not name.strip():
        raise BadInput("saveFrame needs a name for the new dataset.")
    steps = {"dataset": plan.source.dataset_id, **plan.key()}

    async def produce(parquet: Path) -> Produced:
        rows_in, rows_out, columns = await ctx.resources.executor.run(engine.materialise, plan, out=parquet)
        if rows_out > ctx.settings.max_rows:
            raise TooLarge(
                f"The frame has {rows_out:,} rows, more than a dataset may hold ({ctx.settings.max_rows:,},"
                " setting max_rows); filter or group it first."
            )
        return Produced(rows_in, rows_out, columns)

    origin = {"kind": "saveFrame", "from": plan.source.dataset_id, "steps": steps["steps"]}
    if "sql" in steps:  # a frame over SQL: the checked query it starts from, and the datasets it read
        origin.update(sql=steps["sql"], reads=sorted(steps["datasets"]))
    return await dataset_job(
        ctx, job_id=job_id, kind="saveFrame", steps=steps, title=display_name(name), source_id=FRAMES,
        origin=origin, produce=produce,
    )  # fmt: skip


# The origin of the version a job makes, by its kind: of a new dataset, of an existing one's next version.
_MADE_BY = {
    "uploadDataset": ("UPLOAD", "REPLACE"),
    "importTable": ("IMPORT", "REFRESH"),
    "fetchPlugin": ("FETCH", "FETCH"),
    "saveFrame": ("SAVE", "SAVE"),
}


@dataclass(frozen=True, slots=True)
class Produced:
    """What a job's `produce` wrote: rows read, rows in the new Parquet file and its columns; for an
    upload, the raw file it staged and its format, kept beside the dataset once committed."""

    rows_in: int
    rows_out: int
    columns: list[ColumnInfo]
    raw: tuple[Path, str] | None = None


async def dataset_job(
    ctx: Context,
    *,
    job_id: str,
    kind: str,
    steps: dict[str, Any],
    title: str,
    source_id: str,
    origin: dict[str, Any],
    produce: Callable[[Path], Awaitable[Produced | None]],
    into: DatasetRecord | None = None,
    staged: tuple[Path, ...] = (),
) -> DatasetRecord:
    """The one commit path of every job that makes a dataset (upload, import, plugin fetch,
    saveFrame): recorded as started, `produce` writes the Parquet file, then the file is committed
    and the row made visible (CREATED), and the job recorded as succeeded, or failed with the
    problem's message. Nothing half-made stays.

    With `into`, the file becomes that dataset's next version instead, one change at a time per
    dataset (REPLACED for an upload, REFRESHED otherwise); `produce` answering None there means
    nothing changed, and the version stays. Files in `staged` (a raw upload) are removed with the
    job's own staging file, before the job's end is recorded."""
    res = ctx.resources
    parquet = res.files.staging_path(".parquet")
    async with recorded_job(ctx, job_id, kind, steps) as done:
        # Cleaned up inside the job, before a failure is recorded: what it staged may have filled the disk.
        try:
            with storage_guard():
                produced = await produce(parquet)
                await res.jobs.progress(job_id, "committing", rows=produced.rows_out if produced else None)
                origin = {**origin, "kind": kind, "job": job_id}
                made_new, made_next = _MADE_BY.get(kind, ("IMPORT", "REFRESH"))
                if into is None:
                    if produced is None:
                        raise ValueError("produce answered 'unchanged' for a dataset that does not exist yet")
                    record = await _commit_new(ctx, parquet, produced, title, source_id, origin, made_new)
                    event = "CREATED"
                else:
                    async with res.dataset_locks.hold(into.id):
                        current = require_dataset(ctx, into.id)  # the latest version, after any change before us
                        digest = origin.get("data_hash")
                        if digest and digest == current.origin.get("data_hash"):
                            produced = None  # a refresh that ran beside ours committed these rows already
                        if produced is None:
                            record = res.metadata.set_origin(current.id, {**current.origin, **origin})
                            done.made(record, rows_in=current.row_count)
                            return record
                        record = await _commit_next(ctx, current, parquet, produced, origin, made_next)
                    event = "REPLACED" if produced.raw else "REFRESHED"
            done.made(record, rows_in=produced.rows_in)
        finally:
            for path in (parquet, *staged):
                res.files.discard_staged(path)
    await _announce(ctx, event, record)
    return record


async def _keep_raw(ctx: Context, produced: Produced, origin: dict[str, Any]) -> dict[str, Any]:
    """Keep an upload's raw file under a generated name; the origin that names it."""
    if produced.raw is None:
        return origin
    res = ctx.resources
    staged, fmt = produced.raw
    kept = await res.executor.run_io(res.files.keep_upload, staged, fmt)
    return {**origin, "stored_as": kept}


async def _commit_new(
    ctx: Context,
    parquet: Path,
    produced: Produced,
    title: str,
    source_id: str,
    origin: dict[str, Any],
    made_by: str,
) -> DatasetRecord:
    res = ctx.resources
    dataset_id = res.metadata.reserve_dataset(
        wanted_id=dataset_slug(title), name=title, source_id=source_id, origin=origin
    )
    committed = False
    try:
        # fsync and rename off the event loop: a large file's fsync takes a while.
        await res.executor.run_io(res.files.commit, parquet, res.files.dataset_file(dataset_id, 1))
        origin = await _keep_raw(ctx, produced, origin)
        size = res.files.version_bytes(dataset_id, 1)
        record = res.metadata.mark_ready(
            dataset_id, version=1, row_count=produced.rows_out, columns=produced.columns, origin=origin,
            made_by=made_by, size=size,
        )  # fmt: skip
        committed = True
        return record
    finally:
        if not committed:
            res.metadata.discard_pending(dataset_id)
            res.files.remove_dataset(dataset_id)
            if "stored_as" in origin:
                res.files.remove_upload(str(origin["stored_as"]))


async def _commit_next(
    ctx: Context, current: DatasetRecord, parquet: Path, produced: Produced, origin: dict[str, Any], made_by: str
) -> DatasetRecord:
    res = ctx.resources
    kept = await _keep_raw(ctx, produced, {})
    try:
        new = await commit_version(
            ctx, current, parquet, rows=produced.rows_out, columns=produced.columns,
            origin={**current.origin, **origin, **kept}, made_by=made_by,
        )  # fmt: skip
    except BaseException:
        if kept:
            res.files.remove_upload(str(kept["stored_as"]))
        raise
    if kept:
        res.files.remove_upload(str(current.origin.get("stored_as", "")))
    return new


async def commit_version(
    ctx: Context,
    record: DatasetRecord,
    staged: Path,
    *,
    rows: int,
    columns: list[ColumnInfo],
    origin: dict[str, Any],
    made_by: str,
    appended: bool = False,
) -> DatasetRecord:
    """Make the fully written `staged` file the next version of `record` (with `appended`, the
    rows after the current version's, which the new version links to instead of copying): claim the
    number beside the others, then move the metadata row on, if nobody else did meanwhile. Older
    versions stay for queries still reading them; a sweep removes them later."""
    res = ctx.resources
    version = record.version + 1
    changed = BadInput(f'The dataset "{record.id}" changed meanwhile (another change came first); try again.')
    won = await _commit_files(res, staged, record.id, version, appended=appended)
    if not won and await asyncio.to_thread(clear_leftover_version, res, record.id, version):
        won = await _commit_files(res, staged, record.id, version, appended=appended)  # once more, in its place
    if not won:
        raise changed  # another writer (another server process) made this version first
    return _record_next(ctx, record, rows=rows, columns=columns, origin=origin, made_by=made_by)


async def _commit_files(res: Resources, staged: Path, dataset_id: str, version: int, *, appended: bool) -> bool:
    """Put the staged file (or appended part) in place as `version`; False when that number is taken."""
    if appended:
        return await res.executor.run_io(res.files.commit_appended, staged, dataset_id, version) is not None
    return bool(await res.executor.run_io(res.files.commit_version, staged, dataset_id, version))


# A next version's files that no metadata row names this long after they were put in place were left
# by a writer that died between its files and its row (a server killed mid-append or mid-refresh):
# they would refuse every later version of the dataset, so the next writer removes them. A live
# writer records its row at once after putting its files in place (which sets their time).
LEFTOVER_GRACE_S = 10.0


def clear_leftover_version(res: Resources, dataset_id: str, version: int) -> bool:
    """Remove the files of `version` of the dataset when no row names them (the dataset's current
    version is below it) and they were put in place long enough ago; whether they were removed."""
    record = res.metadata.get_dataset(dataset_id)
    if record is None or record.version >= version:
        return False
    files = res.files
    entries = [
        p for p in (files.dataset_file(dataset_id, version), files.parts_folder(dataset_id, version)) if p.exists()
    ]
    cutoff = time.time() - LEFTOVER_GRACE_S
    try:
        if not entries or any(p.stat().st_mtime >= cutoff for p in entries):
            return False
    except OSError:
        return False
    log.warning("removing version %d of dataset %s, which a dead writer left unrecorded", version, dataset_id)
    files.remove_version(dataset_id, version)
    return True


def _record_next(
    ctx: Context,
    record: DatasetRecord,
    *,
    rows: int,
    columns: list[ColumnInfo],
    origin: dict[str, Any],
    made_by: str,
) -> DatasetRecord:
    """Move the metadata row of `record` on to its next version, whose files this writer has just
    committed; remove those files when that fails."""
    res = ctx.resources
    version = record.version + 1
    changed = BadInput(f'The dataset "{record.id}" changed meanwhile (another change came first); try again.')
    try:
        size = res.files.version_bytes(record.id, version)
        return res.metadata.add_version(
            record.id, version=version, row_count=rows, columns=columns, origin=origin, made_by=made_by, size=size
        )
    except LookupError:
        res.files.remove_version(record.id, version)  # ours: the claim above made it
        raise changed from None
    except Exception:
        # Not recorded (a full disk, a locked database)? Left there, it would block every next version.
        with contextlib.suppress(Exception):
            now = res.metadata.get_dataset(record.id)
            if now is None or now.version != version:
                res.files.remove_version(record.id, version)
        raise


async def _announce(ctx: Context, kind: str, record: DatasetRecord) -> None:
    """Publish the dataset's new version (`kind`: CREATED, REPLACED, APPENDED, ...), then check it:
    schema drift and the dataset's rules (`checks.after_commit`)."""
    await ctx.resources.events.publish(kind, record.id, record.version, record.row_count)
    await checks.after_commit(ctx, record)


def _not_fetched(origin: dict[str, Any]) -> dict[str, Any]:
    """The origin of a version whose rows were not fetched or imported (restored, appended to): without
    the digest and validators of the rows fetched before, so the next refresh does not take the
    upstream's rows for this version's and keep it."""
    return {k: v for k, v in origin.items() if k not in ("data_hash", "validators")}


async def restore_version(ctx: Context, dataset_id: str, version: int) -> DatasetRecord:
    """Make a new version of the dataset equal to its kept version `version` (its files linked, not
    copied) and publish REPLACED; BAD_INPUT naming the version when it is unknown or pruned. When the
    current version already is those rows (it is that version, or was restored from it), nothing changes."""
    res = ctx.resources
    record = require_dataset(ctx, dataset_id)
    if record.origin.get("mode") == "LINK":
        raise BadInput(f'The dataset "{record.id}" is a linked database table; it has no versions to restore.')
    async with res.dataset_locks.hold(record.id):
        record = require_dataset(ctx, dataset_id)  # the latest version, after any change before us
        missing = BadInput(
            f'The dataset "{record.id}" has no version {version}: it was never made or has been pruned'
            " (settings keep_versions and keep_versions_days); the versions field lists those kept."
        )
        found = res.metadata.get_version(record.id, number=version) if 1 <= version <= record.version else None
        if found is None:
            raise missing
        if found.number == record.version or res.files.same_files(record.id, found.number, record.version):
            # Already those rows: a new version would only push real history out of keep_versions
            # (a client retrying, or restoring in a loop); nothing changes.
            return record
        try:
            won = await res.executor.run_io(res.files.commit_restored, record.id, found.number, record.version + 1)
        except FileNotFoundError:
            raise missing from None
        if not won:
            raise BadInput(f'The dataset "{record.id}" changed meanwhile (another change came first); try again.')
        origin = _not_fetched(record.origin)
        new = _record_next(
            ctx, record, rows=found.row_count, columns=list(found.columns), origin=origin, made_by="RESTORE"
        )
    await _announce(ctx, "REPLACED", new)
    return new


def _merged_columns(before: tuple[ColumnInfo, ...], added: list[ColumnInfo], rows: int) -> list[ColumnInfo]:
    """A dataset's columns after an append (`rows` in all), from its columns before it and those of
    the rows added: no row is read twice."""
    added_nulls = {c.name: c.null_count for c in added}
    merged = []
    for column in before:
        nulls = column.null_count + added_nulls.get(column.name, 0)
        merged.append(ColumnInfo(column.name, column.dtype, nulls, nulls / rows if rows else 0.0))
    return merged


async def append_rows(ctx: Context, dataset_id: str, rows: Any) -> DatasetRecord:
    """Append records to a dataset as its next version, all or nothing, and publish APPENDED."""
    res = ctx.resources
    record = require_dataset(ctx, dataset_id)
    if record.origin.get("mode") == "LINK":
        raise BadInput(f'The dataset "{record.id}" is a linked database table; add rows in the database.')
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise BadInput("appendRows needs rows: a non-empty list of objects, one per row ({column: value}).")
    if len(rows) > ctx.settings.rows_max:
        raise TooLarge(f"appendRows takes at most {ctx.settings.rows_max:,} rows at once (setting rows_max).")
    async with res.dataset_locks.hold(record.id):
        record = require_dataset(ctx, dataset_id)  # the latest version, after any append before us
        total = record.row_count + len(rows)
        if total > ctx.settings.max_rows:
            raise TooLarge(
                f"The dataset would have {total:,} rows, more than {ctx.settings.max_rows:,} (setting max_rows)."
            )
        current = res.files.version_parts(record.id, record.version)
        parts = len(current)
        staged = res.files.staging_path(".parquet")
        try:
            with storage_guard():
                if parts + 1 < 4 * ctx.settings.compact_parts:
                    # Only the new rows are written; the new version links the current one's parts.
                    added = await res.executor.run(engine.append_part, current[0], rows, out=staged)
                    columns = _merged_columns(record.columns, added, total)
                    new = await commit_version(
                        ctx, record, staged, rows=total, columns=columns, origin=_not_fetched(record.origin),
                        made_by="APPEND", appended=True,
                    )  # fmt: skip
                else:  # compaction has fallen far behind (it failed, or is slow): rewrite it whole
                    total, columns = await res.executor.run(engine.append_rows, current, rows, out=staged)
                    origin = _not_fetched(record.origin)
                    new = await commit_version(
                        ctx, record, staged, rows=total, columns=columns, origin=origin, made_by="APPEND"
                    )
        finally:
            res.files.discard_staged(staged)
    if parts + 1 >= ctx.settings.compact_parts:
        compact_soon(res, new.id)
    await _announce(ctx, "APPENDED", new)
    return new
