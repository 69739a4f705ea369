"""Sources, datasets, and the mutations that bring data in or remove it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, cast

import strawberry
from starlette.datastructures import UploadFile
from strawberry.file_uploads import Upload
from strawberry.scalars import JSON

from datagraph.context import Context
from datagraph.errors import DatagraphError, NotFound
from gql.frames import CacheMode, Frame, StepInput, pipeline_plan
from gql.plugins import Plugin, PluginFetchInput, list_plugins
from gql.results import Column, Meta, Problem, ProblemCode, Result, column, problem, result
from resolvers import Options, Outcome, answer, frames, plugins, sources
from resolvers import Problem as OutcomeProblem
from resolvers import datasets as ds
from resolvers.jobs import checked_job_id
from storage import DatasetRecord, JobRecord

__all__ = ["Dataset", "DatasetPayload", "Mutation", "Query", "Source", "SourcePayload"]


@strawberry.enum
class SourceKind(Enum):
    FILE = "FILE"
    DATABASE = "DATABASE"
    PLUGIN = "PLUGIN"


@strawberry.enum(description="SNAPSHOT copies the rows into a dataset now; LINK queries the live table.")
class ImportMode(Enum):
    SNAPSHOT = "SNAPSHOT"
    LINK = "LINK"


@strawberry.enum
class SourceStatus(Enum):
    OK = "OK"
    UNREACHABLE = "UNREACHABLE"
    ERROR = "ERROR"


@strawberry.type(description="Where datasets come from: the upload area, a database, or an API plugin.")
class Source:
    id: strawberry.ID
    name: str
    kind: SourceKind

    @strawberry.field(
        description="OK, or why not: UNREACHABLE when a database does not answer SELECT 1 (checked at most"
        " every 10 s; checkSource checks now), ERROR when it answers with a refusal."
    )
    async def status(self, info: strawberry.Info[Context, None]) -> SourceStatus:
        check = await _check(info.context, str(self.id))
        return SourceStatus(check.status) if check else SourceStatus.OK

    @strawberry.field(description="Why the status is not OK, in the user's terms; null when it is.")
    async def problem(self, info: strawberry.Info[Context, None]) -> Problem | None:
        check = await _check(info.context, str(self.id))
        failure = check.problem if check else None
        return Problem(code=ProblemCode(failure.code), message=failure.message) if failure else None

    @strawberry.field(description="Table names of a database source (its allowlist when set), read on demand.")
    async def tables(self, info: strawberry.Info[Context, None]) -> list[str]:
        ctx = info.context
        cfg = ctx.resources.databases.get(str(self.id))
        if cfg is None or (await ctx.resources.databases.check(cfg)).status != "OK":
            return []
        try:
            return await sources.table_names(ctx, cfg)
        except DatagraphError:  # gone since the check: status and problem say so from now on
            return []

    @strawberry.field
    def datasets(self, info: strawberry.Info[Context, None]) -> list[Dataset]:
        return [Dataset.of(info.context, r) for r in ds.list_datasets(info.context, source_id=str(self.id))]


async def _check(ctx: Context, source_id: str, *, fresh: bool = False) -> sources.SourceCheck | None:
    cfg = ctx.resources.databases.get(source_id)
    return await ctx.resources.databases.check(cfg, fresh=fresh) if cfg else None


def _source(info: ds.SourceInfo) -> Source:
    return Source(id=strawberry.ID(info.id), name=info.name, kind=SourceKind(info.kind))


@strawberry.type(description="checkSource's answer: the source as checked now.")
class SourcePayload:
    success: bool
    source: Source | None
    meta: Meta
    error: Problem | None


@strawberry.type(description="A stored table; every Frame field works on it.")
class Dataset(Frame):
    record: strawberry.Private[DatasetRecord]

    @classmethod
    def of(cls, ctx: Context, record: DatasetRecord) -> Dataset:
        return cls(plan=ds.dataset_plan(ctx, record), label=record.name, record=record)

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(self.record.id)

    @strawberry.field
    def name(self) -> str:
        return self.record.name

    @strawberry.field
    def version(self) -> int:
        return self.record.version

    @strawberry.field
    def created_at(self) -> dt.datetime:
        return self.record.created_at

    @strawberry.field
    def updated_at(self) -> dt.datetime:
        return self.record.updated_at

    @strawberry.field
    def row_count(self) -> int:
        return self.record.row_count

    @strawberry.field
    def columns(self) -> list[Column]:
        return [column(c) for c in self.record.columns]

    @strawberry.field
    def source(self, info: strawberry.Info[Context, None]) -> Source:
        found = ds.find_source(info.context, self.record.source_id)
        # A dataset imported from a database later removed from sources.yaml keeps its data.
        return _source(found or ds.SourceInfo(self.record.source_id, self.record.source_id, "DATABASE"))

    @strawberry.field(description="The first rows and the column types.")
    async def preview(
        self,
        info: strawberry.Info[Context, None],
        limit: int | None = 5,
        cache: CacheMode | None = CacheMode.USE,
        timeout_ms: int | None = None,
    ) -> Result:
        options = Options(cache=(cache or CacheMode.USE).value, timeout_ms=timeout_ms)
        return result(
            await frames.rows(info.context, plan=self.plan, limit=limit, offset=0, options=options, default=5)
        )


@strawberry.enum
class JobStatus(Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@strawberry.type(description="Long work (a saved frame, ...): its status, timings, row counts and its steps.")
class Job:
    record: strawberry.Private[JobRecord]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(self.record.id)

    @strawberry.field
    def kind(self) -> str:
        return self.record.kind

    @strawberry.field
    def status(self) -> JobStatus:
        return JobStatus(self.record.status)

    @strawberry.field(description="The dataset the job made, once it succeeded.")
    def dataset(self) -> strawberry.ID | None:
        return strawberry.ID(self.record.dataset_id) if self.record.dataset_id else None

    @strawberry.field(description="What the job ran: the dataset versions it read and the steps, as data.")
    def steps(self) -> JSON:
        return cast(JSON, self.record.steps)

    @strawberry.field
    def rows_in(self) -> int | None:
        return self.record.rows_in

    @strawberry.field
    def rows_out(self) -> int | None:
        return self.record.rows_out

    @strawberry.field(description="Why the job failed.")
    def error(self) -> str | None:
        return self.record.error

    @strawberry.field
    def started_at(self) -> dt.datetime:
        return self.record.started_at

    @strawberry.field
    def finished_at(self) -> dt.datetime | None:
        return self.record.finished_at

    @strawberry.field
    def elapsed_ms(self) -> float | None:
        end = self.record.finished_at
        return None if end is None else (end - self.record.started_at).total_seconds() * 1000


@strawberry.type(description="A mutation's answer: the dataset on success, a problem otherwise.")
class DatasetPayload:
    success: bool
    dataset: Dataset | None
    meta: Meta
    error: Problem | None
    job: Job | None = strawberry.field(default=None, description="The job that made the dataset (saveFrame).")


def _payload(outcome: Outcome, dataset: Dataset | None, job: Job | None = None) -> DatasetPayload:
    r = result(outcome)
    return DatasetPayload(
        success=outcome.success, dataset=dataset, meta=r.meta, error=problem(outcome.problem), job=job
    )


async def _mutate(ctx: Context, where: str, work: Awaitable[DatasetRecord]) -> DatasetPayload:
    """Run a dataset mutation through `answer`; expected failures become the payload's problem."""
    done: list[DatasetRecord] = []

    async def run() -> Outcome:
        done.append(await work)
        return Outcome(row_count=done[0].row_count, columns=list(done[0].columns))

    outcome = await answer("", run, where=where)
    return _payload(outcome, Dataset.of(ctx, done[0]) if outcome.success else None)


async def _job(
    ctx: Context, where: str, work: Callable[[str], Awaitable[DatasetRecord]], chosen: strawberry.ID | None
) -> DatasetPayload:
    """`_mutate` for long work run as a job (its id chosen by the client, or a fresh one): followed by
    jobProgress, cancelled when its last follower leaves, and answered with the job in the payload."""
    job_id = str(chosen) if chosen is not None else ds.new_job_id()

    async def run() -> DatasetRecord:
        if chosen is not None:
            checked_job_id(job_id, ds.get_job(ctx, job_id) is not None)
        return await ctx.resources.jobs.run(job_id, where, work(job_id))

    payload = await _mutate(ctx, where, run())
    job = ds.get_job(ctx, job_id)
    payload.job = Job(record=job) if job else None
    return payload


@strawberry.type
class Query:
    @strawberry.field(description="Every source: the upload area, databases, plugins.")
    def sources(self, info: strawberry.Info[Context, None]) -> list[Source]:
        return [_source(s) for s in ds.list_sources(info.context)]

    @strawberry.field
    def source(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> Source | None:
        found = ds.find_source(info.context, str(id))
        return _source(found) if found else None

    @strawberry.field(
        description="One read-only SELECT against a database source; at most `limit` rows (default 1,000,"
        " up to the rows_max setting), meta.truncated when there were more. Never cached: the data is live."
    )
    async def sql(
        self,
        info: strawberry.Info[Context, None],
        source: strawberry.ID,
        query: str,
        limit: int | None = 1000,
        timeout_ms: int | None = None,
    ) -> Result:
        async def work() -> Outcome:
            return await sources.run_sql(
                info.context, source_id=str(source), query=query, limit=limit, timeout_ms=timeout_ms
            )

        return result(await answer("", work, where="sql"))

    @strawberry.field(description="The API-pull plugins in the plugins folder, and files there that failed to load.")
    def plugins(self, info: strawberry.Info[Context, None]) -> list[Plugin]:
        return list_plugins(info.context)

    @strawberry.field(description="Every ready dataset, oldest first.")
    def datasets(self, info: strawberry.Info[Context, None]) -> list[Dataset]:
        return [Dataset.of(info.context, r) for r in ds.list_datasets(info.context)]

    @strawberry.field(description="Recent jobs, newest first.")
    def jobs(self, info: strawberry.Info[Context, None], limit: int | None = 50) -> list[Job]:
        return [Job(record=r) for r in ds.list_jobs(info.context, max(0, min(limit or 50, 1000)))]

    @strawberry.field(description="One job by id, or null when there is none.")
    def job(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> Job | None:
        record = ds.get_job(info.context, str(id))
        return Job(record=record) if record else None

    @strawberry.field(description="One dataset by id, or null when there is none.")
    def dataset(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> Dataset | None:
        record = ds.get_dataset(info.context, str(id))
        return Dataset.of(info.context, record) if record else None


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Upload a .csv, .xlsx or .xls file (GraphQL multipart request) as a new dataset; with replace,"
        " as the next version of that uploaded dataset (subscribers get REPLACED)."
    )
    async def upload_dataset(
        self,
        info: strawberry.Info[Context, None],
        file: Upload,
        name: str | None = None,
        replace: strawberry.ID | None = None,
        job_id: strawberry.ID | None = None,
    ) -> DatasetPayload:
        upload = cast(UploadFile, file)  # under Starlette, an Upload is Starlette's UploadFile

        def work(job: str) -> Awaitable[DatasetRecord]:
            return ds.upload_dataset(
                info.context, stream=upload, filename=upload.filename or "upload", name=name, job_id=job,
                replace=str(replace) if replace is not None else None,
            )  # fmt: skip

        try:
            return await _job(info.context, "uploadDataset", work, job_id)
        finally:
            await upload.close()  # the multipart parser's spooled temp file

    @strawberry.mutation(
        description="Materialise a pipeline over a dataset as a new dataset (a transform job, in payload.job)."
    )
    async def save_frame(
        self,
        info: strawberry.Info[Context, None],
        dataset: strawberry.ID,
        steps: list[StepInput],
        name: str,
        job_id: strawberry.ID | None = None,
    ) -> DatasetPayload:
        ctx = info.context

        async def work(job: str) -> DatasetRecord:
            plan = pipeline_plan(ctx, str(dataset), steps)
            return await ds.save_frame(ctx, plan=plan, name=name, job_id=job)

        return await _job(ctx, "saveFrame", work, job_id)

    @strawberry.mutation(
        description="Copy a database table, or the rows of one read-only SELECT, into a new dataset"
        " (SNAPSHOT, streamed in batches; recorded as a job in payload.job)."
    )
    async def import_table(
        self,
        info: strawberry.Info[Context, None],
        source: strawberry.ID,
        table: str | None = None,
        query: str | None = None,
        name: str | None = None,
        mode: ImportMode | None = ImportMode.SNAPSHOT,
        job_id: strawberry.ID | None = None,
    ) -> DatasetPayload:
        ctx = info.context

        def work(job: str) -> Awaitable[DatasetRecord]:
            return sources.import_table(
                ctx, source_id=str(source), table=table, query=query, name=name, job_id=job,
                mode=(mode or ImportMode.SNAPSHOT).value,
            )  # fmt: skip

        return await _job(ctx, "importTable", work, job_id)

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

        return await _job(ctx, "fetchPlugin", work, job_id)

    @strawberry.mutation(
        description="Several plugin fetches at once, run in parallel (at most one per worker process at a time);"
        " one payload per fetch, in order."
    )
    async def fetch_plugins(
        self, info: strawberry.Info[Context, None], fetches: list[PluginFetchInput]
    ) -> list[DatasetPayload]:
        ctx = info.context
        if len(fetches) > 20:
            too_many = Outcome(problem=OutcomeProblem("BAD_INPUT", "fetchPlugins takes at most 20 fetches at once."))
            return [_payload(too_many, None)]
        limit = asyncio.Semaphore(ctx.settings.workers)

        async def one(f: PluginFetchInput) -> DatasetPayload:
            async with limit:
                params = cast(Any, f.params)

                def work(job: str) -> Awaitable[DatasetRecord]:
                    return plugins.fetch_plugin(ctx, plugin=f.plugin, params=params, name=f.name, job_id=job)

                return await _job(ctx, "fetchPlugin", work, None)

        return list(await asyncio.gather(*(one(f) for f in fetches)))

    @strawberry.mutation(description="Check a database source now (SELECT 1) and answer with its status.")
    async def check_source(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> SourcePayload:
        ctx = info.context
        found = ds.find_source(ctx, str(id))

        async def work() -> Outcome:
            if found is None:
                raise NotFound(f'There is no source "{str(id)[:80]}".')
            check = await _check(ctx, found.id, fresh=True)
            if check is not None and check.problem is not None:
                raise check.problem  # success says whether the source answers; source.status says how
            return Outcome()

        outcome = await answer("", work, where="checkSource")
        r = result(outcome)
        return SourcePayload(
            success=outcome.success, source=_source(found) if found else None, meta=r.meta, error=r.error
        )

    @strawberry.mutation(
        description="Append records ({column: value}, checked against the columns; all or nothing) as the"
        " dataset's next version; subscribers are told (APPENDED) and watches recompute."
    )
    async def append_rows(
        self, info: strawberry.Info[Context, None], dataset: strawberry.ID, rows: JSON
    ) -> DatasetPayload:
        return await _mutate(info.context, "appendRows", ds.append_rows(info.context, str(dataset), rows))

    @strawberry.mutation(description="Delete a dataset and its files; the payload names what was deleted.")
    async def delete_dataset(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> DatasetPayload:
        async def work() -> DatasetRecord:
            return await ds.delete_dataset(info.context, str(id))

        return await _mutate(info.context, "deleteDataset", work())
