"""Mutations that make or change a dataset, in one call each: `changed` for short changes (append,
delete), `run_job` for long work run as a job (upload, import, plugin fetch, saveFrame), whose
work commits through the one path they share (`resolvers.datasets.dataset_job`).

A job's id is checked (a client may choose it, to follow `jobProgress` before sending the
mutation), the job is tracked in this process (progress, cancel when its last follower leaves),
recorded in the metadata store as started and then as succeeded or failed, and its answer is one
`DatasetOutcome`: the `Outcome` (problem, meta) with the dataset it made and its job record.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from datagraph.errors import DatagraphError
from engine.runtime import CANCELLED_MESSAGE, checked_job_id, job_exists
from resolvers._outcome import Outcome, Problem, answer
from resolvers.context import Context
from storage import DatasetRecord, JobRecord

__all__ = ["DatasetOutcome", "JobEnd", "changed", "get_job", "list_jobs", "new_job_id", "recorded_job", "run_job"]


@dataclass(slots=True)
class DatasetOutcome:
    """A dataset mutation's answer: the outcome, the dataset on success, and the job when one ran."""

    outcome: Outcome
    dataset: DatasetRecord | None = None
    job: JobRecord | None = None

    @classmethod
    def refused(cls, message: str) -> DatasetOutcome:
        """A mutation refused before any work (BAD_INPUT)."""
        return cls(Outcome(problem=Problem("BAD_INPUT", message)))


def new_job_id() -> str:
    return uuid.uuid4().hex


def get_job(ctx: Context, job_id: str) -> JobRecord | None:
    return ctx.resources.metadata.get_job(job_id)


def list_jobs(ctx: Context, limit: int) -> list[JobRecord]:
    return ctx.resources.metadata.list_jobs(limit)


async def changed(where: str, work: Awaitable[DatasetRecord]) -> DatasetOutcome:
    """Run a dataset mutation; expected failures become the outcome's problem."""
    done: list[DatasetRecord] = []

    async def run() -> Outcome:
        done.append(await work)
        return Outcome(row_count=done[0].row_count, columns=list(done[0].columns))

    outcome = await answer("", run, where=where)
    return DatasetOutcome(outcome, done[0] if outcome.success else None)


async def run_job(
    ctx: Context, kind: str, work: Callable[[str], Awaitable[DatasetRecord]], chosen: str | None
) -> DatasetOutcome:
    """`changed` for long work run as job `chosen` (or a fresh id): its id checked, followed by
    jobProgress, cancelled when its last follower leaves, and answered with its job record."""
    job_id = chosen if chosen is not None else new_job_id()

    async def run() -> DatasetRecord:
        if chosen is not None:
            checked_job_id(job_id, get_job(ctx, job_id) is not None)
        return await ctx.resources.jobs.run(job_id, kind, work(job_id))

    done = await changed(kind, run())
    done.job = get_job(ctx, job_id)
    return done


@dataclass(slots=True)
class JobEnd:
    """What a recorded job made, said by the block that ran it."""

    dataset_id: str | None = None
    rows_in: int | None = None
    rows_out: int | None = None

    def made(self, record: DatasetRecord, *, rows_in: int | None) -> None:
        self.dataset_id, self.rows_in, self.rows_out = record.id, rows_in, record.row_count


@contextlib.asynccontextmanager
async def recorded_job(ctx: Context, job_id: str, kind: str, steps: dict[str, Any]) -> AsyncIterator[JobEnd]:
    """A job recorded as started, then as succeeded with what the block says it made, or as failed
    with the problem's message (or as cancelled); each change is also sent to jobProgress."""
    res = ctx.resources
    if not res.metadata.start_job(job_id, kind=kind, steps=steps):
        raise job_exists(job_id)  # the same id sent to two server processes at once
    await res.jobs.progress(job_id, "started")
    end = JobEnd()
    try:
        yield end
    except BaseException as exc:
        if isinstance(exc, DatagraphError):
            message = exc.message
        elif isinstance(exc, asyncio.CancelledError):
            message = CANCELLED_MESSAGE
        else:
            message = "The job did not finish (it failed on the server)."
        res.metadata.finish_job(job_id, error=message)
        with contextlib.suppress(Exception):
            await res.jobs.finished(job_id, error=message)
        raise
    res.metadata.finish_job(job_id, dataset_id=end.dataset_id, rows_in=end.rows_in, rows_out=end.rows_out)
    await res.jobs.finished(job_id, rows=end.rows_out)
