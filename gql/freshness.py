"""Fresh data: the mutations that schedule a dataset's refreshes and refresh it now. The
Dataset.schedule field is in `gql.datasets`, beside the dataset's other fields."""

from __future__ import annotations

from collections.abc import Awaitable

import strawberry

from gql.datasets import DatasetPayload, dataset_payload
from resolvers import freshness
from resolvers.context import Context
from resolvers.jobs import changed, run_job
from storage import DatasetRecord

__all__ = ["FreshnessMutation"]


@strawberry.type
class FreshnessMutation:
    @strawberry.mutation(
        description='Refresh an imported table or a plugin dataset on a schedule: every "30s", "15m", "1h", "1d",'
        ' "1h30m" (at least the setting schedule_min_s); null removes it (a plugin\'s refresh_s included). Each'
        " refresh makes a new version (REFRESHED), or keeps it when the data is the same; a failure keeps the"
        " version, is recorded as a failed job and is retried with a back-off."
    )
    async def set_schedule(
        self, info: strawberry.Info[Context, None], dataset: strawberry.ID, every: str | None
    ) -> DatasetPayload:
        done = await changed("setSchedule", freshness.set_schedule(info.context, str(dataset), every))
        return dataset_payload(info.context, done)

    @strawberry.mutation(
        description="Import an imported table again, or fetch a plugin dataset again, now (a job, in payload.job):"
        " a new version (REFRESHED), or the same one when the data is the same."
    )
    async def refresh_dataset(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> DatasetPayload:
        ctx = info.context

        def work(job: str) -> Awaitable[DatasetRecord]:
            return freshness.refresh_dataset(ctx, str(id), job_id=job)

        return dataset_payload(ctx, await run_job(ctx, "refreshDataset", work, None))
