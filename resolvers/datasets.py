"""Datasets and the upload source: list, look up, upload (stream, sniff, parse, commit), delete."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import engine
from connectors import ingest, sniff
from datagraph.context import Context
from datagraph.errors import BadInput, DatagraphError, NotFound, TooLarge
from engine import Join, Plan, Source
from storage import DatasetRecord, JobRecord, storage_guard

__all__ = [
    "FRAMES",
    "UPLOADS",
    "SourceInfo",
    "dataset_plan",
    "dataset_source",
    "delete_dataset",
    "display_name",
    "get_dataset",
    "get_job",
    "join_step",
    "list_datasets",
    "list_jobs",
    "list_sources",
    "new_job_id",
    "require_dataset",
    "save_frame",
    "upload_dataset",
]

UPLOADS = "uploads"
FRAMES = "frames"
_CHUNK = 1 << 20


class AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SourceInfo:
    id: str
    name: str
    kind: str
    status: str


def list_sources(ctx: Context) -> list[SourceInfo]:
    return [
        SourceInfo(id=UPLOADS, name="Uploaded files", kind="FILE", status="OK"),
        SourceInfo(id=FRAMES, name="Saved frames", kind="FILE", status="OK"),
    ]


def list_datasets(ctx: Context, *, source_id: str | None = None) -> list[DatasetRecord]:
    records = ctx.resources.metadata.list_datasets()
    return [r for r in records if source_id is None or r.source_id == source_id]


def get_dataset(ctx: Context, dataset_id: str) -> DatasetRecord | None:
    return ctx.resources.metadata.get_dataset(dataset_id)


def require_dataset(ctx: Context, dataset_id: str) -> DatasetRecord:
    record = get_dataset(ctx, dataset_id)
    if record is None:
        raise NotFound(f'There is no dataset "{_clip(dataset_id)}".')
    return record


def dataset_plan(ctx: Context, record: DatasetRecord) -> Plan:
    return Plan(dataset_source(ctx, record))


def dataset_source(ctx: Context, record: DatasetRecord) -> Source:
    path = ctx.resources.files.dataset_file(record.id, record.version)
    return Source(record.id, record.version, path, generation=record.created_at.isoformat())


def join_step(ctx: Context, right: str, on: list[str], how: str) -> Join:
    """A join with the right dataset's current version; a missing one answers NOT_FOUND when run."""
    record = get_dataset(ctx, right)
    source = dataset_source(ctx, record) if record else Source(right, 0, Path())
    return Join(source, tuple(on), how)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# Control, format (bidi overrides, zero-width) and separator characters never reach a name.
def display_name(raw: str, *, fallback: str = "dataset", limit: int = 100) -> str:
    """A safe display name: no path, no control or bidi characters, at most `limit` characters."""
    base = re.split(r"[\\/]", raw)[-1]
    clean = "".join(ch for ch in base if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " ")
    clean = " ".join(clean.split())[:limit].strip(" .")
    return clean or fallback


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_]+", "-", ascii_name.lower()).strip("-_")[:60].strip("-_")
    return slug or "dataset"


async def _stage(ctx: Context, stream: AsyncReadable, dest: Path) -> int:
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
    return written


async def upload_dataset(ctx: Context, *, stream: AsyncReadable, filename: str, name: str | None) -> DatasetRecord:
    """Stage, sniff, parse and commit an uploaded file; nothing is visible unless all of it worked."""
    res = ctx.resources
    stem, dot, ext = display_name(filename.replace("\x00", ""), fallback="upload", limit=10_000).rpartition(".")
    safe_filename = f"{display_name(stem, fallback='upload')}.{ext[:10]}" if dot else display_name(ext[:100])
    title = display_name(name) if name else display_name(safe_filename.rsplit(".", 1)[0])
    staged = res.files.staging_path(".upload")
    parquet = res.files.staging_path(".parquet")
    dataset_id: str | None = None
    committed = False
    try:
        size = await _stage(ctx, stream, staged)
        fmt = await res.executor.run_io(sniff, staged, safe_filename, res.ingest_limits)
        origin = {"format": fmt, "filename": safe_filename, "bytes": size}
        dataset_id = res.metadata.reserve_dataset(wanted_id=_slug(title), name=title, source_id=UPLOADS, origin=origin)
        with storage_guard():
            result = await res.executor.run(ingest, staged, fmt, parquet, res.ingest_limits)
            # fsync and rename off the event loop: a large file's fsync takes a while.
            await res.executor.run_io(res.files.commit, parquet, res.files.dataset_file(dataset_id, 1))
            kept = await res.executor.run_io(res.files.keep_upload, staged, fmt)
        record = res.metadata.mark_ready(
            dataset_id,
            version=1,
            row_count=result.row_count,
            columns=result.columns,
            origin={**origin, "stored_as": kept},
        )
        committed = True
        return record
    finally:
        staged.unlink(missing_ok=True)
        parquet.unlink(missing_ok=True)
        if dataset_id is not None and not committed:
            res.metadata.discard_pending(dataset_id)
            res.files.remove_dataset(dataset_id)


def delete_dataset(ctx: Context, dataset_id: str) -> DatasetRecord:
    """Delete the dataset's rows first, then its files: its Parquet versions, the raw upload and its
    exports. A crash in between leaves only files no row names, which the start-up sweep removes."""
    res = ctx.resources
    record = require_dataset(ctx, dataset_id)
    for export in res.metadata.delete_dataset(record.id):
        res.files.export_file(export.token, export.filename.rsplit(".", 1)[-1]).unlink(missing_ok=True)
    res.files.remove_dataset(record.id)
    res.files.remove_upload(str(record.origin.get("stored_as", "")))
    return record


def new_job_id() -> str:
    return uuid.uuid4().hex


def get_job(ctx: Context, job_id: str) -> JobRecord | None:
    return ctx.resources.metadata.get_job(job_id)


def list_jobs(ctx: Context, limit: int) -> list[JobRecord]:
    return ctx.resources.metadata.list_jobs(limit)


async def save_frame(ctx: Context, *, plan: Plan, name: str, job_id: str) -> DatasetRecord:
    """Materialise a pipeline as a new dataset, as a transform job recorded in the metadata store
    (status, timings, row counts and its steps); nothing is visible unless all of it worked."""
    res = ctx.resources
    if not name or not name.strip():
        raise BadInput("saveFrame needs a name for the new dataset.")
    title = display_name(name)
    steps = {"dataset": plan.source.dataset_id, **plan.key()}
    job = res.metadata.start_job(job_id, kind="saveFrame", steps=steps)
    parquet = res.files.staging_path(".parquet")
    dataset_id: str | None = None
    committed = False
    try:
        with storage_guard():
            rows_in, rows_out, columns = await res.executor.run(engine.materialise, plan, out=parquet)
            if rows_out > ctx.settings.max_rows:
                raise TooLarge(
                    f"The frame has {rows_out:,} rows, more than a dataset may hold ({ctx.settings.max_rows:,},"
                    " setting max_rows); filter or group it first."
                )
            origin = {"kind": "saveFrame", "job": job.id, "from": plan.source.dataset_id, "steps": steps["steps"]}
            dataset_id = res.metadata.reserve_dataset(
                wanted_id=_slug(title), name=title, source_id=FRAMES, origin=origin
            )
            await res.executor.run_io(res.files.commit, parquet, res.files.dataset_file(dataset_id, 1))
        record = res.metadata.mark_ready(dataset_id, version=1, row_count=rows_out, columns=columns, origin=origin)
        committed = True
        res.metadata.finish_job(job.id, dataset_id=record.id, rows_in=rows_in, rows_out=rows_out)
        return record
    except DatagraphError as exc:
        res.metadata.finish_job(job.id, error=exc.message)
        raise
    except BaseException:  # cancelled, or unexpected: the job still ends, and says so
        res.metadata.finish_job(job.id, error="The job did not finish (cancelled or failed on the server).")
        raise
    finally:
        parquet.unlink(missing_ok=True)
        if dataset_id is not None and not committed:
            res.metadata.discard_pending(dataset_id)
            res.files.remove_dataset(dataset_id)
