"""Datasets and the sources they come from, and the mutations that bring files in, change or remove them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Iterator
from enum import Enum

import strawberry
from graphql import GraphQLError
from starlette.datastructures import UploadFile
from strawberry.file_uploads import Upload
from strawberry.scalars import JSON

from connectors.database_sources import SourceCheck
from datagraph.errors import BadInput, DatagraphError
from engine import Plan
from gql.checks import Check, CheckInput, check_rules
from gql.frames import CacheMode, Frame, StepInput, View, pipeline_plan, sql_pipeline_plan, to_steps
from gql.jobs import Job
from gql.recipe import read_recipe
from gql.results import Column, Meta, Problem, ProblemCode, Result, column, result
from resolvers import Options, Outcome, dataset_sql, frames, freshness, sources
from resolvers import Problem as PlainProblem
from resolvers import checks as _checks
from resolvers import datasets as ds
from resolvers import recipe as recipes
from resolvers.context import Context, Listing
from resolvers.jobs import DatasetOutcome, changed, run_job
from storage import DatasetRecord, VersionRecord

__all__ = [
    "Dataset",
    "DatasetMutation",
    "DatasetPayload",
    "DatasetQuery",
    "DatasetVersion",
    "Source",
    "SourceStatus",
    "VersionOrigin",
    "chosen_job",
    "dataset_payload",
    "source_check",
    "source_type",
]


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

    @strawberry.field(
        description="OK, or why not: UNREACHABLE when a database does not answer SELECT 1 (checked at most"
        " every 10 s; checkSource checks now), ERROR when it answers with a refusal."
    )
    async def status(self, info: strawberry.Info[Context, None]) -> SourceStatus:
        check = await source_check(info.context, str(self.id))
        return SourceStatus(check.status) if check else SourceStatus.OK

    @strawberry.field(description="Why the status is not OK, in the user's terms; null when it is.")
    async def problem(self, info: strawberry.Info[Context, None]) -> Problem | None:
        check = await source_check(info.context, str(self.id))
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

    @strawberry.field(description="This source's datasets, oldest first; paged and searched as Query.datasets.")
    def datasets(
        self,
        info: strawberry.Info[Context, None],
        limit: int | None = None,
        offset: int | None = 0,
        search: str | None = None,
    ) -> list[Dataset]:
        return listed(info.context, limit=limit, offset=offset, search=search, source_id=str(self.id))


async def source_check(ctx: Context, source_id: str, *, fresh: bool = False) -> SourceCheck | None:
    cfg = ctx.resources.databases.get(source_id)
    return await ctx.resources.databases.check(cfg, fresh=fresh) if cfg else None


def listed(
    ctx: Context, *, limit: int | None, offset: int | None, search: str | None, source_id: str | None
) -> list[Dataset]:
    """A page of datasets; a limit or offset out of bounds is a BAD_INPUT error (a list has no payload)."""
    with _as_graphql_error():
        records = ds.list_datasets(ctx, limit=limit, offset=offset, search=search, source_id=source_id)
    listing = Listing([r.id for r in records])  # their checks, schedules, versions: one query for the page
    return [Dataset.of(ctx, r, listing) for r in records]


@contextlib.contextmanager
def _as_graphql_error() -> Iterator[None]:
    """BadInput as a GraphQL error with its code: for fields with no payload to carry a problem."""
    try:
        yield
    except BadInput as exc:
        raise GraphQLError(exc.message, extensions={"code": exc.code}) from None


def source_type(info: ds.SourceInfo) -> Source:
    return Source(id=strawberry.ID(info.id), name=info.name, kind=SourceKind(info.kind))


@strawberry.enum(description="What made a version of a dataset.")
class VersionOrigin(Enum):
    UPLOAD = "UPLOAD"
    REPLACE = "REPLACE"
    APPEND = "APPEND"
    IMPORT = "IMPORT"
    REFRESH = "REFRESH"
    FETCH = "FETCH"
    SAVE = "SAVE"
    RESTORE = "RESTORE"


# GraphQL Int is 32-bit: a count or size past it would fail the field (and null its parents), so it is
# reported as this ceiling instead, as the fields' descriptions say.
INT_CEILING = 2**31 - 1


def _int(value: int) -> int:
    return min(value, INT_CEILING)


@strawberry.type(description="A kept version of a dataset: when and by what it was made, its shape and its size.")
class DatasetVersion:
    record: strawberry.Private[VersionRecord]

    @strawberry.field
    def number(self) -> int:
        return self.record.number

    @strawberry.field
    def created_at(self) -> dt.datetime:
        return self.record.created_at

    @strawberry.field(description="Its rows (2,147,483,647, the largest GraphQL Int, for more).")
    def row_count(self) -> int:
        return _int(self.record.row_count)

    @strawberry.field
    def columns(self) -> list[Column]:
        return [column(c) for c in self.record.columns]

    @strawberry.field
    def origin(self) -> VersionOrigin:
        return VersionOrigin(self.record.origin)

    @strawberry.field(
        description="The size of the version's files on disk, in bytes, when it was made (2,147,483,647, the"
        " largest GraphQL Int, for more)."
    )
    def bytes(self) -> int:
        return _int(self.record.bytes)


@strawberry.type(description="A stored table; every Frame field works on it.")
class Dataset(Frame):
    record: strawberry.Private[DatasetRecord]
    context: strawberry.Private[Context]
    _plan: strawberry.Private[Plan | None] = None
    listing: strawberry.Private[Listing | None] = None  # the `datasets` page it came in, if any

    @classmethod
    def of(cls, ctx: Context, record: DatasetRecord, listing: Listing | None = None) -> Dataset:
        return cls(plan=None, label=record.name, record=record, context=ctx, listing=listing)  # type: ignore[arg-type]  # made on use

    # The plan is made when a Frame field asks for it, not for each dataset of a list: making it looks
    # for the version's files on disk, which was most of what listing cost per dataset (issue 18).
    @property  # type: ignore[misc]  # a property standing for the Frame field plan, with its setter
    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = ds.dataset_plan(self.context, self.record)
        return self._plan

    @plan.setter
    def plan(self, value: Plan | None) -> None:
        self._plan = value

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

    @strawberry.field(description="Its rows (2,147,483,647, the largest GraphQL Int, for more).")
    def row_count(self) -> int:
        return _int(self.record.row_count)

    @strawberry.field
    def columns(self) -> list[Column]:
        return [column(c) for c in self.record.columns]

    @strawberry.field(
        description='The refresh interval of an imported table or plugin dataset ("15m"; setSchedule, or the'
        " plugin's refresh_s), null when none."
    )
    def schedule(self, info: strawberry.Info[Context, None]) -> str | None:
        return freshness.schedule_of(info.context, self.record, self.listing)

    @strawberry.field
    def source(self, info: strawberry.Info[Context, None]) -> Source:
        found = ds.find_source(info.context, self.record.source_id)
        # A dataset imported from a database later removed from sources.yaml keeps its data.
        return source_type(found or ds.SourceInfo(self.record.source_id, self.record.source_id, "DATABASE"))

    @strawberry.field(description="Its data checks (setChecks), each with its result on the latest version checked.")
    def checks(self, info: strawberry.Info[Context, None]) -> list[Check]:
        return [Check.of(view) for view in _checks.list_checks(info.context, self.record, self.listing)]

    @strawberry.field(
        description="The kept versions of this dataset, newest first (pruned ones are not listed; setting"
        " keep_versions and keep_versions_days)."
    )
    def versions(self, info: strawberry.Info[Context, None], limit: int | None = 50) -> list[DatasetVersion]:
        with _as_graphql_error():
            return [DatasetVersion(record=v) for v in ds.list_versions(info.context, self.record, limit, self.listing)]

    @strawberry.field(
        description="The dataset as it was: at a version number, or at the newest version made at or before"
        " asOf (give one of the two). Every Frame field works on it. Null when that version is unknown or pruned."
    )
    def at(
        self,
        info: strawberry.Info[Context, None],
        version: int | None = strawberry.UNSET,
        as_of: dt.datetime | None = strawberry.UNSET,
    ) -> Dataset | None:
        number = version if isinstance(version, int) else None
        when = as_of if isinstance(as_of, dt.datetime) else None
        with _as_graphql_error():
            found = ds.dataset_at(info.context, self.record, version=number, as_of=when)
        return Dataset.of(info.context, found) if found is not None else None

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
    job: Job | None = strawberry.field(default=None, description="The job that made the dataset (saveFrame).")


def dataset_payload(ctx: Context, done: DatasetOutcome) -> DatasetPayload:
    """A dataset mutation's answer as the API gives it."""
    r = result(done.outcome)
    dataset = Dataset.of(ctx, done.dataset) if done.dataset is not None else None
    job = Job(record=done.job) if done.job is not None else None
    return DatasetPayload(success=done.outcome.success, dataset=dataset, meta=r.about, error=r.failure, job=job)


def chosen_job(job_id: strawberry.ID | None) -> str | None:
    """The jobId a client chose for a mutation, if it chose one."""
    return str(job_id) if job_id is not None else None


@strawberry.type
class DatasetQuery:
    @strawberry.field(description="Every source: the upload area, databases, plugins.")
    def sources(self, info: strawberry.Info[Context, None]) -> list[Source]:
        return [source_type(s) for s in ds.list_sources(info.context)]

    @strawberry.field
    def source(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> Source | None:
        found = ds.find_source(info.context, str(id))
        return source_type(found) if found else None

    @strawberry.field(
        description="Ready datasets, oldest first (then by id): every one, or a page of `limit` (at most the"
        " setting datasets_max_page) from `offset`; `search` keeps those whose id or name contains it (any case),"
        " `source` those of one source. datasetCount gives the total for paging."
    )
    def datasets(
        self,
        info: strawberry.Info[Context, None],
        limit: int | None = None,
        offset: int | None = 0,
        search: str | None = None,
        source: strawberry.ID | None = None,
    ) -> list[Dataset]:
        source_id = str(source) if source is not None else None
        return listed(info.context, limit=limit, offset=offset, search=search, source_id=source_id)

    @strawberry.field(description="How many datasets `datasets` lists with the same search and source, all pages.")
    def dataset_count(
        self, info: strawberry.Info[Context, None], search: str | None = None, source: strawberry.ID | None = None
    ) -> int:
        source_id = str(source) if source is not None else None
        with _as_graphql_error():
            return ds.count_datasets(info.context, search=search, source_id=source_id)

    @strawberry.field(description="One dataset by id, or null when there is none.")
    def dataset(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> Dataset | None:
        record = ds.get_dataset(info.context, str(id))
        return Dataset.of(info.context, record) if record else None

    @strawberry.field(
        description="One read-only SELECT over datasets (Polars SQL; tables are dataset ids, double-quoted where"
        ' an id is not a plain identifier: "seattle-weather"), as a frame like any other. Window functions, CTEs'
        " and joins work; functions that read files or the network, and anything but one SELECT, are refused"
        " with a problem in each result."
    )
    async def dataset_sql(self, info: strawberry.Info[Context, None], query: str) -> Frame:
        # Checking the SQL takes up to tens of ms for a long query: off the event loop, so other
        # clients are not kept waiting meanwhile.
        plan = await asyncio.to_thread(dataset_sql.dataset_sql_view, info.context, query)
        return View(plan=plan, label="sql")


@strawberry.type
class DatasetMutation:
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
        if not isinstance(file, UploadFile):  # under Starlette, an Upload is Starlette's UploadFile
            message = "file must be a file sent as a part of a multipart request, mapped onto variables.file."
            return dataset_payload(info.context, DatasetOutcome.refused(message))
        upload = file

        def work(job: str) -> Awaitable[DatasetRecord]:
            return ds.upload_dataset(
                info.context, stream=upload, filename=upload.filename or "upload", name=name, job_id=job,
                replace=str(replace) if replace is not None else None,
            )  # fmt: skip

        try:
            return dataset_payload(info.context, await run_job(info.context, "uploadDataset", work, chosen_job(job_id)))
        finally:
            await upload.close()  # the multipart parser's spooled temp file

    @strawberry.mutation(
        description="Materialise a pipeline over a dataset, or over the result of `sql` (SQL over datasets, as"
        " datasetSql), as a new dataset (a transform job, in payload.job). Give dataset or sql, not both."
    )
    async def save_frame(
        self,
        info: strawberry.Info[Context, None],
        dataset: strawberry.ID | None = None,
        *,
        steps: list[StepInput],
        name: str,
        sql: str | None = None,
        job_id: strawberry.ID | None = None,
    ) -> DatasetPayload:
        ctx = info.context
        if (dataset is None) == (sql is None):
            message = "saveFrame takes either dataset (a dataset id) or sql (SQL over datasets), and not both."
            return dataset_payload(ctx, DatasetOutcome.refused(message))

        async def work(job: str) -> DatasetRecord:
            plan = sql_pipeline_plan(ctx, sql, steps) if sql is not None else pipeline_plan(ctx, str(dataset), steps)
            return await ds.save_frame(ctx, plan=plan, name=name, job_id=job)

        return dataset_payload(ctx, await run_job(ctx, "saveFrame", work, chosen_job(job_id)))

    @strawberry.mutation(
        description="Make the saved frame a recipe describes (the data of a frame's recipe field: {steps, sources}),"
        " as saveFrame would: the steps over the first source, each source read at its version (the current one"
        " when left out; a version no longer kept is a problem). A wrong step names its index and field."
    )
    async def run_recipe(
        self,
        info: strawberry.Info[Context, None],
        recipe: JSON,
        name: str,
        job_id: strawberry.ID | None = None,
    ) -> DatasetPayload:
        ctx = info.context
        if not name or not name.strip():
            return dataset_payload(ctx, DatasetOutcome.refused("runRecipe needs a name for the new dataset."))
        try:  # checked before the job: a recipe that does not run leaves nothing behind, not even a failed job
            read = read_recipe(info, recipe)
            steps = to_steps(ctx, read.steps)
            plan = recipes.recipe_plan(ctx, steps=steps, sources=read.sources, query=read.query)
            await recipes.check_recipe(ctx, plan)
        except DatagraphError as exc:
            return dataset_payload(ctx, DatasetOutcome(Outcome(problem=PlainProblem(exc.code, exc.message))))

        async def work(job: str) -> DatasetRecord:
            return await recipes.run_recipe(ctx, plan=plan, name=name, job_id=job)

        return dataset_payload(ctx, await run_job(ctx, "saveFrame", work, chosen_job(job_id)))

    @strawberry.mutation(
        description="Append records ({column: value}, checked against the columns; all or nothing) as the"
        " dataset's next version; subscribers are told (APPENDED) and watches recompute."
    )
    async def append_rows(
        self, info: strawberry.Info[Context, None], dataset: strawberry.ID, rows: JSON
    ) -> DatasetPayload:
        done = await changed("appendRows", ds.append_rows(info.context, str(dataset), rows))
        return dataset_payload(info.context, done)

    @strawberry.mutation(
        description="Make a new version of a dataset equal to one of its kept versions (origin RESTORE);"
        " subscribers are told (REPLACED). An unknown or pruned version is a problem, and nothing changes; so"
        " does nothing when the current version already is those rows (it, or restored from it)."
    )
    async def restore_version(
        self, info: strawberry.Info[Context, None], dataset: strawberry.ID, version: int
    ) -> DatasetPayload:
        done = await changed("restoreVersion", ds.restore_version(info.context, str(dataset), version))
        return dataset_payload(info.context, done)

    @strawberry.mutation(
        description="Give a dataset another display name; its id, version, data, saved queries and links stay."
    )
    async def rename_dataset(
        self, info: strawberry.Info[Context, None], id: strawberry.ID, name: str
    ) -> DatasetPayload:
        async def work() -> DatasetRecord:
            return await ds.rename_dataset(info.context, str(id), name)

        return dataset_payload(info.context, await changed("renameDataset", work()))

    @strawberry.mutation(
        description="Replace the dataset's data checks ([] removes them) and run them on its current version now;"
        " they run again on every new version, and a failure is told as a CHECK_FAILED event. A check naming a"
        " missing column, or values that do not fit the column, is a problem, and nothing changes."
    )
    async def set_checks(
        self, info: strawberry.Info[Context, None], dataset: strawberry.ID, checks: list[CheckInput]
    ) -> DatasetPayload:
        rules = check_rules(checks)
        done = await changed("setChecks", _checks.set_checks(info.context, str(dataset), rules))
        return dataset_payload(info.context, done)

    @strawberry.mutation(description="Delete a dataset and its files; the payload names what was deleted.")
    async def delete_dataset(self, info: strawberry.Info[Context, None], id: strawberry.ID) -> DatasetPayload:
        async def work() -> DatasetRecord:
            deleted = await ds.delete_dataset(info.context, str(id))
            await freshness.forget_schedule(info.context, deleted.id)
            return deleted

        return dataset_payload(info.context, await changed("deleteDataset", work()))
