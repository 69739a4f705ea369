"""Subscriptions over graphql-transport-ws: dataset events, live results, job progress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from enum import Enum
from typing import cast

import strawberry
from strawberry.scalars import JSON

from datagraph.errors import BadInput
from datagraph.events import ANY_DATASET, NOTICES, RESYNC, DatasetEvent, JobUpdate
from engine import Plan
from gql.frames import ChartInput, StepInput, chart_spec, pipeline_plan
from gql.results import Result
from gql.results import result as to_result
from resolvers import Options, Outcome, answer, frames
from resolvers.context import Context
from resolvers.jobs import get_job
from storage import JobRecord

__all__ = ["Subscription"]

# jobProgress looks at the job's record after this long without an update (an update may be lost
# with Redis), and gives up on a job that has not started after JOB_WAIT_S.
JOB_POLL_S = 1.0
JOB_WAIT_S = 30.0


@strawberry.enum(description="What a dataset event says happened.")
class DatasetEventKind(Enum):
    CREATED = "CREATED"
    APPENDED = "APPENDED"
    REFRESHED = "REFRESHED"
    REPLACED = "REPLACED"
    DELETED = "DELETED"
    CHECK_FAILED = "CHECK_FAILED"
    SCHEMA_CHANGED = "SCHEMA_CHANGED"


@strawberry.type(name="DatasetEvent", description="A dataset changed: its new version and row count.")
class DatasetEventType:
    kind: DatasetEventKind
    dataset: strawberry.ID
    version: int
    row_count: int
    details: JSON | None = strawberry.field(
        default=None,
        description="CHECK_FAILED: {failed: [{name, rule, passed, message, version}]}; SCHEMA_CHANGED: {added, removed,"
        " retyped, frames: the saved frames whose steps use a removed or retyped column}; null for the others.",
    )

    @classmethod
    def of(cls, event: DatasetEvent) -> DatasetEventType:
        return cls(
            kind=DatasetEventKind(event.kind), dataset=strawberry.ID(event.dataset), version=event.version,
            row_count=event.row_count, details=cast(JSON, event.details),
        )  # fmt: skip


@strawberry.enum(description="The result a watch pushes.")
class WatchResult(Enum):
    ROWS = "ROWS"
    COUNT = "COUNT"
    DESCRIBE = "DESCRIBE"
    SUMMARY = "SUMMARY"
    CHART = "CHART"


@strawberry.type(
    description="Where a job is: its stage (started, staging, parsing, reading, committing, then succeeded or"
    " failed; running when only its record is known; unknown when there is no such job), the rows or bytes"
    " done so far, the time so far; the last one is final."
)
class JobEvent:
    job: strawberry.ID
    kind: str
    stage: str
    rows_processed: int | None
    bytes_processed: float | None
    elapsed_ms: float
    error: str | None
    final: bool

    @classmethod
    def of(cls, update: JobUpdate) -> JobEvent:
        end = update.ended_at if update.ended_at is not None else time.time()
        return cls(
            job=strawberry.ID(update.job), kind=update.kind, stage=update.stage, rows_processed=update.rows,
            bytes_processed=update.bytes, elapsed_ms=max(0.0, (end - update.started_at) * 1000),
            error=update.error, final=update.final,
        )  # fmt: skip


async def _watched(
    ctx: Context,
    dataset: str,
    steps: list[StepInput] | None,
    wanted: WatchResult,
    limit: int | None,
    chart: ChartInput | None,
) -> tuple[Outcome, set[str], dict[str, int] | None]:
    """The result for the pipeline on the datasets' current versions, the datasets it reads, and the
    version of each it was computed on (None when there was no plan to compute)."""
    reads = {dataset, ANY_DATASET}
    versions: dict[str, int] = {}

    async def work() -> Outcome:
        plan = pipeline_plan(ctx, dataset, steps)
        reads.update(s.dataset_id for s in plan.sources())
        versions.update((s.dataset_id, s.version) for s in plan.sources() if s.dataset_id)
        return await _result(ctx, plan, wanted, limit, chart)

    outcome = await answer("", work, where="watch")
    return outcome, reads, versions or None


async def _result(
    ctx: Context, plan: Plan, wanted: WatchResult, limit: int | None, chart: ChartInput | None
) -> Outcome:
    options = Options()  # through the cache: subscribers to one pipeline share one computation
    if (wanted is WatchResult.CHART) != (chart is not None):
        raise BadInput("watch: give chart (the spec) with result CHART, and only then.")
    if chart is not None:
        return await frames.chart(ctx, plan=plan, spec=chart_spec(chart), options=options)
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
        description="Dataset events (all datasets, or one): created, appended, refreshed, replaced, deleted; a check"
        " failed on a new version, or its columns changed (with details)."
    )
    async def dataset_events(
        self, info: strawberry.Info[Context, None], dataset: strawberry.ID | None = None
    ) -> AsyncGenerator[DatasetEventType, None]:
        res = info.context.resources
        async with res.events.subscribe() as queue:
            with res.metrics.subscriptions.track_inprogress():
                while True:
                    event = await queue.get()
                    if event.kind != RESYNC and (dataset is None or event.dataset == str(dataset)):
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
        chart: ChartInput | None = None,
    ) -> AsyncGenerator[Result, None]:
        ctx = info.context
        wanted = result
        opened = ctx.resources.metrics.subscriptions.track_inprogress()
        # Subscribed before the first answer: no change is missed.
        async with ctx.resources.events.subscribe() as queue:
            with opened:
                while True:
                    outcome, reads, versions = await _watched(ctx, str(dataset), steps, wanted, limit, chart)
                    yield to_result(outcome, versions)
                    while True:  # RESYNC's "*" is in every watch's reads; notices change no rows
                        event = await queue.get()
                        if event.dataset in reads and event.kind not in NOTICES:
                            break
                    while not queue.empty():  # a burst becomes one recompute, on the latest versions
                        queue.get_nowait()

    @strawberry.subscription(
        description="A job's progress until it ends (uploadDataset, importTable, saveFrame, fetchPlugin): its"
        " stage, the rows or bytes done so far, the time so far; the last event is final. Pick the job's id"
        " (jobId on the mutation) and subscribe before sending it. When the last subscriber leaves before the"
        " job ends, the job is cancelled."
    )
    async def job_progress(
        self, info: strawberry.Info[Context, None], job: strawberry.ID
    ) -> AsyncGenerator[JobEvent, None]:
        res = info.context.resources
        job_id = str(job)
        waited = time.monotonic()
        opened = res.metrics.subscriptions.track_inprogress()
        # Subscribed before reading: nothing is missed.
        with res.events.subscribe_jobs() as queue, res.jobs.watching(job_id), opened:
            update = res.jobs.state(job_id) or _recorded_update(get_job(info.context, job_id))
            while True:
                if update is not None:
                    yield JobEvent.of(update)
                    if update.final:
                        return
                elif time.monotonic() - waited > JOB_WAIT_S:  # never started: say so and end
                    yield JobEvent(
                        job=job, kind="", stage="unknown", rows_processed=None, bytes_processed=None,
                        elapsed_ms=0, error="There is no such job.", final=True,
                    )  # fmt: skip
                    return
                update = await _next_update(queue, job_id)
                if update is None:  # quiet for a while: the record says whether it ended meanwhile
                    recorded = _recorded_update(get_job(info.context, job_id))
                    update = recorded if recorded is not None and recorded.final else None


async def _next_update(queue: asyncio.Queue[JobUpdate], job_id: str) -> JobUpdate | None:
    """The next update of this job, or None after a second without one."""
    deadline = time.monotonic() + JOB_POLL_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            update = await asyncio.wait_for(queue.get(), left)
        except TimeoutError:
            return None
        if update.job == job_id:
            return update
    return None


def _recorded_update(record: JobRecord | None) -> JobUpdate | None:
    if record is None:
        return None
    final = record.status != "running"
    return JobUpdate(
        job=record.id, kind=record.kind, stage=record.status, started_at=record.started_at.timestamp(),
        rows=record.rows_out, error=record.error, final=final,
        ended_at=record.finished_at.timestamp() if record.finished_at else None,
    )  # fmt: skip
