"""The metadata database's tables (SQLAlchemy Core) and the frozen records read from them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from datagraph import jsonutil
from storage._columninfo import ColumnInfo

__all__ = [
    "VERSION_ORIGINS",
    "ColumnInfo",
    "DatasetRecord",
    "ExportRecord",
    "JobRecord",
    "VersionRecord",
    "add_change_triggers",
    "add_missing_columns",
    "add_missing_indexes",
    "api_keys",
    "aware",
    "dataset_checks",
    "dataset_record",
    "dataset_versions",
    "datasets",
    "export_record",
    "exports",
    "forget_orphans",
    "job_record",
    "jobs",
    "leases",
    "now",
    "persisted_documents",
    "processes",
    "schedules",
    "tables",
    "version_record",
]

# What a version of a dataset was made by (VersionOrigin in the API).
VERSION_ORIGINS = ("UPLOAD", "REPLACE", "APPEND", "IMPORT", "REFRESH", "FETCH", "SAVE", "RESTORE")


tables = sa.MetaData()

datasets = sa.Table(
    "datasets",
    tables,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("source_id", sa.String(80), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | ready
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False, default=0),
    sa.Column("columns", sa.Text, nullable=False, default="[]"),
    sa.Column("origin", sa.Text, nullable=False, default="{}"),  # format, original file name, ...
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("owner", sa.String(40), nullable=True),  # the server process that made the row (while pending)
    # The listing's order (oldest first, then id), read from the index instead of sorting every row:
    # a page of `datasets(limit:)` costs the same at 100 or 100,000 datasets. The second serves `source:`.
    sa.Index("ix_datasets_listing", "status", "created_at", "id"),
    sa.Index("ix_datasets_source_listing", "source_id", "status", "created_at", "id"),
)

# One row per kept version of a dataset, written in the transaction that makes it the current one;
# a pruned version's row goes with its files.
dataset_versions = sa.Table(
    "dataset_versions",
    tables,
    sa.Column("dataset_id", sa.String(80), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("columns", sa.Text, nullable=False),  # as datasets.columns
    sa.Column("origin", sa.String(16), nullable=False),  # one of VERSION_ORIGINS
    sa.Column("bytes", sa.BigInteger, nullable=False),  # its files' size on disk when made
)

exports = sa.Table(
    "exports",
    tables,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("dataset_id", sa.String(80), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)


jobs = sa.Table(
    "jobs",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),  # saveFrame, ...
    sa.Column("status", sa.String(16), nullable=False),  # running | succeeded | failed
    sa.Column("dataset_id", sa.String(80), nullable=True),  # what the job made
    sa.Column("steps", sa.Text, nullable=False, default="{}"),  # the pipeline, as plain data
    sa.Column("rows_in", sa.BigInteger, nullable=True),
    sa.Column("rows_out", sa.BigInteger, nullable=True),
    sa.Column("error", sa.Text, nullable=True),  # the problem's message when failed
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("owner", sa.String(40), nullable=True),  # the server process that runs it
)

# The server processes sharing this database (and a data directory): each writes its heartbeat_at
# with the database's clock every `heartbeat_s`; a sweep takes one silent for long for dead.
processes = sa.Table(
    "processes",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),  # the host name and pid namespace its pid means something in
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    tables,
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # SHA-256 of the key; the key is never kept
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# Persisted GraphQL documents by the hex SHA-256 of their exact text: trusted ones (`datagraph documents
# add`) and those Apollo's APQ registered (`apq`, the oldest evicted past `persisted_max_documents`).
persisted_documents = sa.Table(
    "persisted_documents",
    tables,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),  # trusted | apq
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_persisted_documents_eviction", "kind", "created_at", "id"),
)

# Background duties that must run once across the server processes sharing this database (the
# scheduler, the sweeps) run in the process holding their lease: `holder` is its process id, and the
# lease is its until `expires_at` (the database's clock), renewed well before (`storage._leases`).
leases = sa.Table(
    "leases",
    tables,
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("holder", sa.String(40), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

# Refresh schedules of datasets (`storage._schedules`): one row per dataset with a schedule, set by
# setSchedule (`chosen`) or taken from its plugin's refresh_s. A due row is claimed (claimed_by, claim)
# by a compare-and-set UPDATE before its refresh runs, and moved on to its next due time when it ends.
schedules = sa.Table(
    "schedules",
    tables,
    sa.Column("dataset_id", sa.String(80), primary_key=True),
    sa.Column("every_s", sa.Integer, nullable=True),  # null: none, set so over a plugin's refresh_s
    sa.Column("chosen", sa.Boolean, nullable=False),  # set by setSchedule, not the plugin's refresh_s
    sa.Column("next_due", sa.DateTime(timezone=True), nullable=True),
    sa.Column("claimed_by", sa.String(40), nullable=True),  # the server process running it
    sa.Column("claim", sa.String(40), nullable=True),  # that run's own token
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("failures", sa.Integer, nullable=False, default=0),  # consecutive failed runs
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("runs", sa.BigInteger, nullable=False, default=0),
    sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_schedules_due", "next_due"),
)


def add_missing_columns(engine: Engine) -> None:
    """Add the (nullable) columns a table made by an older version lacks; idempotent, and safe when
    several processes start at once (one of them adds the column, the others find it there)."""
    for table in tables.sorted_tables:
        for column in table.columns:
            if column.name in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                continue
            assert column.nullable, f"{table.name}.{column.name}: only nullable columns are added to existing tables"
            quote = engine.dialect.identifier_preparer.quote
            ddl = (
                f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {column.type.compile(engine.dialect)}"
            )
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(ddl)
            except sa.exc.DBAPIError:
                if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                    raise  # not another process adding it at the same moment


def add_missing_indexes(engine: Engine) -> None:
    """Make the indexes a table made by an older version lacks (`create_all` makes a table's indexes only
    with the table); idempotent, and safe when several processes start at once."""
    for table in tables.sorted_tables:
        for index in table.indexes:
            if index.name in {i["name"] for i in sa.inspect(engine).get_indexes(table.name)}:
                continue
            try:
                index.create(engine, checkfirst=True)
            except sa.exc.DBAPIError:
                if index.name not in {i["name"] for i in sa.inspect(engine).get_indexes(table.name)}:
                    raise  # not another process making it at the same moment


# SQLite only: a counter that the metadata file's own triggers move on every write to the datasets and
# their versions, whichever process (or program) makes it (`storage._metadata._ChangeStamp`). The
# heartbeats, leases, jobs and schedules written every few seconds leave it alone.
_COUNTED = ("datasets", "dataset_versions")
_CHANGES = ("INSERT", "UPDATE", "DELETE")


def add_change_triggers(engine: Engine) -> None:
    """Make the SQLite change counter and its triggers when missing (nothing elsewhere). Only what is
    missing is written: opening a store (every CLI command) takes no write lock once they are there."""
    if engine.dialect.name != "sqlite":
        return
    wanted = [(f"{table}_{change.lower()}_counted", table, change) for table in _COUNTED for change in _CHANGES]
    with engine.connect() as conn:
        present = set(
            conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")).scalars()
        )
    if "dataset_changes" in present and all(name in present for name, _, _ in wanted):
        return
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS dataset_changes (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT OR IGNORE INTO dataset_changes (id, n) VALUES (1, 0)"))
        for trigger, table, change in wanted:  # our own table names, not input
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER IF NOT EXISTS {trigger} AFTER {change} ON {table}"  # noqa: S608
                    " BEGIN UPDATE dataset_changes SET n = n + 1 WHERE id = 1; END"
                )
            )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """A dataset's metadata row. Its columns and origin are kept as the stored JSON and parsed on first
    use: a list of datasets asks for neither, and parsing them was most of its cost per dataset."""

    id: str
    name: str
    source_id: str
    status: str
    version: int
    row_count: int
    columns_json: str = field(repr=False)
    origin_json: str = field(repr=False)
    created_at: dt.datetime
    updated_at: dt.datetime
    _columns: tuple[ColumnInfo, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _origin: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def columns(self) -> tuple[ColumnInfo, ...]:
        if self._columns is None:
            parsed = tuple(ColumnInfo(**c) for c in jsonutil.loads(self.columns_json))
            object.__setattr__(self, "_columns", parsed)  # a cache of what the frozen fields say
        assert self._columns is not None
        return self._columns

    @property
    def origin(self) -> dict[str, Any]:
        if self._origin is None:
            object.__setattr__(self, "_origin", jsonutil.loads(self.origin_json))
        assert self._origin is not None
        return self._origin


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A kept version of a dataset: when it was made, by what, its shape and its size on disk."""

    dataset_id: str
    number: int
    created_at: dt.datetime
    row_count: int
    columns_json: str = field(repr=False)
    origin: str
    bytes: int

    @property
    def columns(self) -> tuple[ColumnInfo, ...]:
        return tuple(ColumnInfo(**c) for c in jsonutil.loads(self.columns_json))


def version_record(row: Any) -> VersionRecord:
    return VersionRecord(
        dataset_id=row.dataset_id,
        number=row.number,
        created_at=aware(row.created_at),
        row_count=row.row_count,
        columns_json=row.columns,
        origin=row.origin,
        bytes=row.bytes,
    )


@dataclass(frozen=True, slots=True)
class ExportRecord:
    token: str
    dataset_id: str
    filename: str
    format: str
    rows: int
    bytes: int
    created_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    kind: str
    status: str
    dataset_id: str | None
    steps: dict[str, Any]
    rows_in: int | None
    rows_out: int | None
    error: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None


def job_record(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id,
        kind=row.kind,
        status=row.status,
        dataset_id=row.dataset_id,
        steps=jsonutil.loads(row.steps),
        rows_in=row.rows_in,
        rows_out=row.rows_out,
        error=row.error,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at) if row.finished_at else None,
    )


def dataset_record(row: Any) -> DatasetRecord:
    return DatasetRecord(
        id=row.id,
        name=row.name,
        source_id=row.source_id,
        status=row.status,
        version=row.version,
        row_count=row.row_count,
        columns_json=row.columns,
        origin_json=row.origin,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


def export_record(row: Any) -> ExportRecord:
    return ExportRecord(
        token=row.token,
        dataset_id=row.dataset_id,
        filename=row.filename,
        format=row.format,
        rows=row.rows,
        bytes=row.bytes,
        created_at=aware(row.created_at),
        expires_at=aware(row.expires_at),
    )


# The data checks of a dataset (setChecks): its rules, and their results on the version they were
# computed on (null until a run finishes). Deleted with the dataset.
dataset_checks = sa.Table(
    "dataset_checks",
    tables,
    sa.Column("dataset_id", sa.String(80), primary_key=True),
    sa.Column("rules", sa.Text, nullable=False),  # JSON list of rules, in the order given
    sa.Column("results", sa.Text, nullable=True),  # JSON {check name: {passed, message}}
    sa.Column("version", sa.Integer, nullable=True),  # the dataset version the results are of
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def forget_orphans(engine: Engine, table: sa.Table) -> list[str]:
    """Remove the rows of `table` (keyed by `dataset_id`) whose dataset is gone: written in the moment
    the dataset was deleted, by another process. Return their dataset ids."""
    orphaned = table.c.dataset_id.not_in(sa.select(datasets.c.id))
    with engine.begin() as conn:
        ids = list(conn.execute(sa.select(table.c.dataset_id).where(orphaned)).scalars())
        if ids:
            conn.execute(table.delete().where(table.c.dataset_id.in_(ids), orphaned))
    return ids
