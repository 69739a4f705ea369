"""Sources, datasets, and the mutations that bring data in or remove it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable
from enum import Enum
from typing import cast

import strawberry
from starlette.datastructures import UploadFile
from strawberry.file_uploads import Upload
from strawberry.scalars import JSON

from datagraph.context import Context
from gql.frames import CacheMode, Frame, StepInput, to_steps
from gql.results import Column, Meta, Problem, Result, column, problem, result
from resolvers import Options, Outcome, answer, frames
from resolvers import datasets as ds
from storage import DatasetRecord, JobRecord

__all__ = ["Dataset", "DatasetPayload", "Mutation", "Query", "Source"]


@strawberry.enum
class SourceKind(Enum):
    FILE = "FILE"
    DATABASE = "DATABASE"
    PLUGIN = "PLUGIN"


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
    status: SourceStatus

    @strawberry.field(description="Table names (database sources).")
    def tables(self) -> list[str]:
        return []

    @strawberry.field
    def datasets(self, info: strawberry.Info[Context, None]) -> list[Dataset]:
        return [Dataset.of(info.context, r) for r in ds.list_datasets(info.context, source_id=str(self.id))]


def _source(info: ds.SourceInfo) -> Source:
    return Source(
        id=strawberry.ID(info.id), name=info.name, kind=SourceKind(info.kind), status=SourceStatus(info.status)
    )


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
        match = [s for s in ds.list_sources(info.context) if s.id == self.record.source_id]
        return _source(match[0])

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


async def _mutate(ctx: Context, where: str, work: Awaitable[DatasetRecord], job_id: str = "") -> DatasetPayload:
    """Run a dataset mutation through `answer`; expected failures become the payload's problem."""
    done: list[DatasetRecord] = []

    async def run() -> Outcome:
        done.append(await work)
        return Outcome(row_count=done[0].row_count, columns=list(done[0].columns))

    outcome = await answer("", run, where=where)
    job = ds.get_job(ctx, job_id) if job_id else None
    return _payload(outcome, Dataset.of(ctx, done[0]) if outcome.success else None, Job(record=job) if job else None)


@strawberry.type
class Query:
    @strawberry.field(description="Every source: the upload area, databases, plugins.")
    def sources(self, info: strawberry.Info[Context, None]) -> list[Source]:
        return [_source(s) for s in ds.list_sources(info.context)]

    @strawberry.field
    def source(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> Source | None:
        match = [s for s in ds.list_sources(info.context) if s.id == id]
        return _source(match[0]) if match else None

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
    @strawberry.mutation(description="Upload a .csv, .xlsx or .xls file (GraphQL multipart request) as a new dataset.")
    async def upload_dataset(
        self, info: strawberry.Info[Context, None], file: Upload, name: str | None = None
    ) -> DatasetPayload:
        upload = cast(UploadFile, file)  # under Starlette, an Upload is Starlette's UploadFile
        try:
            work = ds.upload_dataset(info.context, stream=upload, filename=upload.filename or "upload", name=name)
            return await _mutate(info.context, "uploadDataset", work)
        finally:
            await upload.close()  # the multipart parser's spooled temp file

    @strawberry.mutation(
        description="Materialise a pipeline over a dataset as a new dataset (a transform job, in payload.job)."
    )
    async def save_frame(
        self, info: strawberry.Info[Context, None], dataset: strawberry.ID, steps: list[StepInput], name: str
    ) -> DatasetPayload:
        ctx = info.context
        job_id = ds.new_job_id()

        async def work() -> DatasetRecord:
            plan = ds.dataset_plan(ctx, ds.require_dataset(ctx, str(dataset)))
            for step in to_steps(ctx, steps):
                plan = plan.then(step)
            return await ds.save_frame(ctx, plan=plan, name=name, job_id=job_id)

        return await _mutate(ctx, "saveFrame", work(), job_id)

    @strawberry.mutation(description="Delete a dataset and its files; the payload names what was deleted.")
    async def delete_dataset(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> DatasetPayload:
        async def work() -> DatasetRecord:
            return ds.delete_dataset(info.context, str(id))

        return await _mutate(info.context, "deleteDataset", work())
