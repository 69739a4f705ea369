"""Sources, datasets, and the mutations that bring data in or remove it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable
from enum import Enum
from typing import cast

import strawberry
from starlette.datastructures import UploadFile
from strawberry.file_uploads import Upload

from datagraph.context import Context
from gql.frames import CacheMode, Frame
from gql.results import Column, Meta, Problem, Result, column, problem, result
from resolvers import Options, Outcome, answer, frames
from resolvers import datasets as ds
from storage import DatasetRecord

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


@strawberry.type(description="A mutation's answer: the dataset on success, a problem otherwise.")
class DatasetPayload:
    success: bool
    dataset: Dataset | None
    meta: Meta
    error: Problem | None


def _payload(outcome: Outcome, dataset: Dataset | None) -> DatasetPayload:
    r = result(outcome)
    return DatasetPayload(success=outcome.success, dataset=dataset, meta=r.meta, error=problem(outcome.problem))


async def _mutate(ctx: Context, where: str, work: Awaitable[DatasetRecord]) -> DatasetPayload:
    """Run a dataset mutation through `answer`; expected failures become the payload's problem."""
    done: list[DatasetRecord] = []

    async def run() -> Outcome:
        done.append(await work)
        return Outcome(row_count=done[0].row_count, columns=list(done[0].columns))

    outcome = await answer("", run, where=where)
    return _payload(outcome, Dataset.of(ctx, done[0]) if outcome.success else None)


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

    @strawberry.mutation(description="Delete a dataset and its files; the payload names what was deleted.")
    async def delete_dataset(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> DatasetPayload:
        async def work() -> DatasetRecord:
            return ds.delete_dataset(info.context, str(id))

        return await _mutate(info.context, "deleteDataset", work())
