"""Jobs: long work (uploads, imports, plugin fetches, saved frames) as recorded in the metadata store."""

from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import cast

import strawberry
from strawberry.scalars import JSON

from resolvers.context import Context
from resolvers.jobs import get_job, list_jobs
from storage import JobRecord

__all__ = ["Job", "JobQuery", "JobStatus"]


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


@strawberry.type
class JobQuery:
    @strawberry.field(description="Recent jobs, newest first.")
    def jobs(self, info: strawberry.Info[Context, None], limit: int | None = 50) -> list[Job]:
        return [Job(record=r) for r in list_jobs(info.context, max(0, min(limit or 50, 1000)))]

    @strawberry.field(description="One job by id, or null when there is none.")
    def job(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> Job | None:
        record = get_job(info.context, str(id))
        return Job(record=record) if record else None
