"""Subscriptions over graphql-transport-ws: dataset events, live results, job progress."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncGenerator
from enum import Enum

import strawberry

from datagraph.context import Context
from datagraph.events import DatasetEvent
from engine import Plan
from gql.frames import StepInput, to_steps
from gql.results import Result
from gql.results import result as to_result
from resolvers import Options, Outcome, answer, frames
from resolvers import datasets as ds

__all__ = ["Subscription"]

JOB_POLL_S = 0.2


@strawberry.enum(description="What a dataset event says happened.")
class DatasetEventKind(Enum):
    CREATED = "CREATED"
    APPENDED = "APPENDED"
    REFRESHED = "REFRESHED"
    REPLACED = "REPLACED"
    DELETED = "DELETED"


@strawberry.type(name="DatasetEvent", description="A dataset changed: its new version and row count.")
class DatasetEventType:
    kind: DatasetEventKind
    dataset: strawberry.ID
    version: int
    row_count: int

    @classmethod
    def of(cls, event: DatasetEvent) -> DatasetEventType:
        return cls(
            kind=DatasetEventKind(event.kind), dataset=strawberry.ID(event.dataset), version=event.version,
            row_count=event.row_count,
        )  # fmt: skip


@strawberry.enum(description="The result a watch pushes.")
class WatchResult(Enum):
    ROWS = "ROWS"
    COUNT = "COUNT"
    DESCRIBE = "DESCRIBE"
    SUMMARY = "SUMMARY"


@strawberry.type(description="Where a job is: its stage, the rows it has done, the time so far; the last one is final.")
class JobEvent:
    job: strawberry.ID
    kind: str
    stage: str  # running | succeeded | failed
    rows_processed: int | None
    elapsed_ms: float
    error: str | None
    final: bool


async def _watched(
    ctx: Context, dataset: str, steps: list[StepInput] | None, wanted: WatchResult, limit: int | None
) -> tuple[Outcome, set[str]]:
    """The result for the pipeline on the datasets' current versions, and the datasets it reads."""
    reads = {dataset}

    async def work() -> Outcome:
        plan = ds.dataset_plan(ctx, ds.require_dataset(ctx, dataset))
        for step in to_steps(ctx, steps or []):
            plan = plan.then(step)
        reads.update(s.dataset_id for s in plan.sources())
        return await _result(ctx, plan, wanted, limit)

    return await answer("", work, where="watch"), reads


async def _result(ctx: Context, plan: Plan, wanted: WatchResult, limit: int | None) -> Outcome:
    options = Options()  # through the cache: subscribers to one pipeline share one computation
    if wanted is WatchResult.COUNT:
        return await frames.count(ctx, plan=plan, options=options)
    if wanted is WatchResult.DESCRIBE:
        return await frames.describe(ctx, plan=plan, columns=None, options=options)
    if wanted is WatchResult.SUMMARY:
        return await frames.summary(ctx, plan=plan, options=options)
    return await frames.rows(ctx, plan=plan, limit=limit, offset=0, options=options)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Dataset events (all datasets, or one): created, appended, refreshed, deleted."
    )
    async def dataset_events(
        self, info: strawberry.Info[Context, None], dataset: strawberry.ID | None = None
    ) -> AsyncGenerator[DatasetEventType, None]:
        async with info.context.resources.events.subscribe() as queue:
            while True:
                event = await queue.get()
                if dataset is None or event.dataset == str(dataset):
                    yield DatasetEventType.of(event)

    @strawberry.subscription(
        description="A pipeline's result now, then again after every change of a dataset it reads. Changes that"
        " arrive while one is computed are coalesced into the next; a slow client gets the latest, not a backlog."
    )
    async def watch(
        self,
        info: strawberry.Info[Context, None],
        dataset: strawberry.ID,
        result: WatchResult,
        steps: list[StepInput] | None = None,
        limit: int | None = 100,
    ) -> AsyncGenerator[Result, None]:
        ctx = info.context
        wanted = result
        async with ctx.resources.events.subscribe() as queue:  # before the first answer: no change is missed
            while True:
                outcome, reads = await _watched(ctx, str(dataset), steps, wanted, limit)
                yield to_result(outcome)
                while (await queue.get()).dataset not in reads:
                    pass
                while not queue.empty():  # a burst becomes one recompute, on the latest versions
                    queue.get_nowait()

    @strawberry.subscription(description="A job's progress until it ends (upload, import, saveFrame, plugin fetch).")
    async def job_progress(
        self, info: strawberry.Info[Context, None], job: strawberry.ID
    ) -> AsyncGenerator[JobEvent, None]:
        ctx = info.context
        last: tuple[str, int | None] | None = None
        started = time.monotonic()
        while True:
            record = ds.get_job(ctx, str(job))
            if record is None:
                if time.monotonic() - started > 5:  # never started: say so and end
                    yield JobEvent(
                        job=job, kind="", stage="unknown", rows_processed=None, elapsed_ms=0,
                        error="There is no such job.", final=True,
                    )  # fmt: skip
                    return
            else:
                state = (record.status, record.rows_out)
                end = record.finished_at
                elapsed = ((end or dt.datetime.now(dt.UTC)) - record.started_at).total_seconds() * 1000
                if state != last:
                    last = state
                    final = record.status != "running"
                    yield JobEvent(
                        job=job, kind=record.kind, stage=record.status, rows_processed=record.rows_out,
                        elapsed_ms=elapsed, error=record.error, final=final,
                    )  # fmt: skip
                    if final:
                        return
            await asyncio.sleep(JOB_POLL_S)
