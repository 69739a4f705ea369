"""Database sources: one read-only SELECT, importing a table (snapshot or link), and checking a source now."""

from __future__ import annotations

from collections.abc import Awaitable
from enum import Enum

import strawberry

from datagraph.errors import NotFound
from gql.datasets import DatasetPayload, Source, chosen_job, dataset_payload, source_check, source_type
from gql.results import Meta, Problem, Result, result
from resolvers import Outcome, answer, sources
from resolvers import datasets as ds
from resolvers.context import Context
from resolvers.jobs import run_job
from storage import DatasetRecord

__all__ = ["ImportMode", "SourceMutation", "SourcePayload", "SourceQuery"]


@strawberry.enum(description="SNAPSHOT copies the rows into a dataset now; LINK queries the live table.")
class ImportMode(Enum):
    SNAPSHOT = "SNAPSHOT"
    LINK = "LINK"


@strawberry.type(description="checkSource's answer: the source as checked now.")
class SourcePayload:
    success: bool
    source: Source | None
    meta: Meta
    error: Problem | None


@strawberry.type
class SourceQuery:
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


@strawberry.type
class SourceMutation:
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

        return dataset_payload(ctx, await run_job(ctx, "importTable", work, chosen_job(job_id)))

    @strawberry.mutation(description="Check a database source now (SELECT 1) and answer with its status.")
    async def check_source(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> SourcePayload:
        ctx = info.context
        found = ds.find_source(ctx, str(id))

        async def work() -> Outcome:
            if found is None:
                raise NotFound(f'There is no source "{str(id)[:80]}".')
            check = await source_check(ctx, found.id, fresh=True)
            if check is not None and check.problem is not None:
                raise check.problem  # success says whether the source answers; source.status says how
            return Outcome()

        outcome = await answer("", work, where="checkSource")
        r = result(outcome)
        return SourcePayload(
            success=outcome.success, source=source_type(found) if found else None, meta=r.about, error=r.failure
        )
