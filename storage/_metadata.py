"""The metadata store: datasets, their versions, jobs, exports and keys, in SQLAlchemy Core tables
(`storage._tables`).

SQLite by default (WAL, busy timeout), any SQLAlchemy URL otherwise. A dataset row is written
`pending` before its file exists and marked `ready` in one transaction after the file is in
place, so a crash in between leaves a pending row that a sweep removes. Pending rows and running
jobs name the server process that owns them (`owner`), so a sweep removes only those of processes
that are dead (`storage._processes`).

The tables are made when missing; a column added since (nullable, such as `owner`) is added to an
existing table when the store opens.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from datagraph import jsonutil
from storage._files import storage_guard
from storage._tables import (
    VERSION_ORIGINS,
    ColumnInfo,
    DatasetRecord,
    ExportRecord,
    JobRecord,
    VersionRecord,
    add_change_triggers,
    add_missing_columns,
    add_missing_indexes,
    api_keys,
    dataset_versions,
    datasets,
    exports,
    jobs,
    processes,
    tables,
)
from storage._tables import aware as _aware
from storage._tables import dataset_record as _dataset
from storage._tables import export_record as _export
from storage._tables import job_record as _job
from storage._tables import now as _now
from storage._tables import version_record as _version

__all__ = ["DatasetRecord", "ExportRecord", "JobRecord", "MetadataStore", "VersionRecord"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class _ChangeStamp:
    """A value that differs whenever the datasets may have changed since it was last read.

    Every query asks for the dataset record, so ready records are kept in memory and trusted while
    this stamp holds; the answer cache and persisted GETs' ETags check it too. For a SQLite file it is
    the counter the file's own triggers move on every write to the datasets and their versions, by
    any connection of any process (`storage._tables.add_change_triggers`), read on a connection of
    its own. Not `PRAGMA data_version`, as it was: that moves on every commit, and heartbeats and
    leases commit every few seconds, so a persisted GET overlapping one got no ETag. For other
    databases there is no cheap signal, so the stamp is None and nothing is kept.
    """

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._watch: sqlite3.Connection | None = None
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and database != ":memory:" and "mode=memory" not in database:
            self._watch = sqlite3.connect(database, check_same_thread=False, isolation_level=None)

    def read(self) -> int | None:
        if self._watch is None:
            return None
        with self._lock:
            (count,) = self._watch.execute("SELECT n FROM dataset_changes WHERE id = 1").fetchone()
        return int(count)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None


def _like_escaped(text: str) -> str:
    """`text` as a LIKE pattern that matches it literally (with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _listed(search: str | None, source_id: str | None) -> list[sa.ColumnElement[bool]]:
    """The conditions of a listing: ready, in `source_id`, with `search` in the id or the name."""
    conditions: list[sa.ColumnElement[bool]] = [datasets.c.status == "ready"]
    if source_id is not None:
        conditions.append(datasets.c.source_id == source_id)
    if search:
        pattern = f"%{_like_escaped(search)}%"
        conditions.append(
            sa.or_(datasets.c.id.ilike(pattern, escape="\\"), datasets.c.name.ilike(pattern, escape="\\"))
        )
    return conditions


# The version origin a dataset's first version had, by the kind of job that made it (for the backfill).
_ORIGIN_OF_KIND = {"uploadDataset": "UPLOAD", "importTable": "IMPORT", "fetchPlugin": "FETCH", "saveFrame": "SAVE"}


def _record_version(
    conn: Connection,
    dataset_id: str,
    number: int,
    row_count: int,
    columns: list[ColumnInfo],
    made_by: str,
    size: int,
    *,
    when: dt.datetime | None = None,
) -> None:
    if made_by not in VERSION_ORIGINS:
        raise ValueError(f"unknown version origin {made_by!r}")
    # A record the same number left (its files swept after a crash before the dataset row moved on) is stale.
    conn.execute(
        dataset_versions.delete().where(
            dataset_versions.c.dataset_id == dataset_id, dataset_versions.c.number == number
        )
    )
    conn.execute(
        dataset_versions.insert().values(
            dataset_id=dataset_id,
            number=number,
            created_at=when or _now(),
            row_count=row_count,
            columns=jsonutil.dumps([asdict(c) for c in columns]).decode(),
            origin=made_by,
            bytes=size,
        )
    )


# The key of the PostgreSQL advisory lock under which a starting process makes or completes the tables.
_SCHEMA_LOCK = 0x6461_7461_6772  # "datagr"


def _make_tables(engine: Engine) -> None:
    """Make the tables, columns and indexes an empty or older database lacks. Several processes
    starting at once on a new database would race to make them (PostgreSQL refuses the second
    CREATE TABLE even after its own check found none): on PostgreSQL one at a time, under an
    advisory lock; elsewhere a race lost is tried again, when the winner's tables are there."""

    def make() -> None:
        tables.create_all(engine)
        add_missing_columns(engine)
        add_missing_indexes(engine)
        add_change_triggers(engine)

    if engine.dialect.name == "postgresql":
        with engine.connect() as lock:
            lock.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK})
            try:
                make()
            finally:
                lock.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK})
                lock.commit()
        return
    for attempt in range(3):
        try:
            make()
            return
        except sa.exc.DBAPIError:
            if attempt == 2:
                raise
            time.sleep(0.1)


class MetadataStore:
    """Datasets and exports, kept in a SQL database through SQLAlchemy Core. `owner` (the server
    process's id) is recorded on the pending rows and running jobs this store writes."""

    def __init__(self, url: str, *, owner: str | None = None) -> None:
        self.engine: Engine = sa.create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _make_tables(self.engine)
        self.owner = owner
        self._stamp = _ChangeStamp(self.engine)
        self._records: dict[str, DatasetRecord] = {}
        self._records_stamp: int | None = None

    def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self._stamp.close()
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with storage_guard(), self.engine.begin() as conn:  # a full disk is STORAGE_FULL
            yield conn

    # datasets

    def reserve_dataset(self, *, wanted_id: str, name: str, source_id: str, origin: dict[str, Any]) -> str:
        """Insert a pending dataset row under `wanted_id`, or the first of `wanted_id-2`, `-3`, ... not
        taken (one look-up, not one failed insert per taken id: uploads of one name stay quick)."""
        now = _now()
        for _ in range(100):  # another process may take the same id between the look-up and the insert
            candidate = self._free_id(wanted_id)
            try:
                with self._tx() as conn:
                    conn.execute(
                        datasets.insert().values(
                            id=candidate,
                            name=name,
                            source_id=source_id,
                            status="pending",
                            version=0,
                            row_count=0,
                            columns="[]",
                            origin=jsonutil.dumps(origin).decode(),
                            created_at=now,
                            updated_at=now,
                            owner=self.owner,
                        )
                    )
                return candidate
            except sa.exc.IntegrityError:
                continue
        raise RuntimeError("no free dataset id")  # pragma: no cover - 100 racing writers in a row

    def _free_id(self, wanted_id: str) -> str:
        pattern = _like_escaped(wanted_id) + "-%"
        with self.engine.connect() as conn:
            query = sa.select(datasets.c.id).where(
                sa.or_(datasets.c.id == wanted_id, datasets.c.id.like(pattern, escape="\\"))
            )
            taken = set(conn.execute(query).scalars())
        if wanted_id not in taken:
            return wanted_id
        n = 2
        while f"{wanted_id}-{n}" in taken:
            n += 1
        return f"{wanted_id}-{n}"

    def mark_ready(
        self,
        dataset_id: str,
        *,
        version: int,
        row_count: int,
        columns: list[ColumnInfo],
        origin: dict[str, Any],
        made_by: str = "UPLOAD",
        size: int = 0,
    ) -> DatasetRecord:
        """Make a pending dataset visible, with its final shape and where it came from, and record its
        first version (made by `made_by`, one of VERSION_ORIGINS, `size` bytes on disk)."""
        with self._tx() as conn:
            _record_version(conn, dataset_id, version, row_count, columns, made_by, size)
            conn.execute(
                datasets.update()
                .where(datasets.c.id == dataset_id)
                .values(
                    status="ready",
                    version=version,
                    row_count=row_count,
                    columns=jsonutil.dumps([asdict(c) for c in columns]).decode(),
                    origin=jsonutil.dumps(origin).decode(),
                    updated_at=_now(),
                )
            )
            row = conn.execute(datasets.select().where(datasets.c.id == dataset_id)).one()
        return _dataset(row)

    def add_version(
        self,
        dataset_id: str,
        *,
        version: int,
        row_count: int,
        columns: list[ColumnInfo],
        origin: dict[str, Any],
        made_by: str = "REPLACE",
        size: int = 0,
    ) -> DatasetRecord:
        """Make `version` (its file already in place) the dataset's current one, if it is still
        `version - 1`, and record it (made by `made_by`, `size` bytes on disk) in the same
        transaction; raise LookupError when the dataset is gone or moved on meanwhile."""
        with self._tx() as conn:
            updated = conn.execute(
                datasets.update()
                .where(datasets.c.id == dataset_id, datasets.c.status == "ready", datasets.c.version == version - 1)
                .values(
                    version=version,
                    row_count=row_count,
                    columns=jsonutil.dumps([asdict(c) for c in columns]).decode(),
                    origin=jsonutil.dumps(origin).decode(),
                    updated_at=_now(),
                )
            )
            if updated.rowcount != 1:
                raise LookupError(dataset_id)
            _record_version(conn, dataset_id, version, row_count, columns, made_by, size)
            row = conn.execute(datasets.select().where(datasets.c.id == dataset_id)).one()
        return _dataset(row)

    # versions

    def list_versions(self, dataset_id: str, *, limit: int | None = None) -> list[VersionRecord]:
        """The kept versions of a dataset, newest first, at most `limit` (None: all)."""
        query = (
            dataset_versions.select()
            .where(dataset_versions.c.dataset_id == dataset_id)
            .order_by(dataset_versions.c.number.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_version(r) for r in conn.execute(query)]

    def list_versions_many(self, dataset_ids: list[str], *, limit: int) -> dict[str, list[VersionRecord]]:
        """`list_versions` of each of the datasets, in one query (every dataset named has a list)."""
        number = sa.func.row_number().over(
            partition_by=dataset_versions.c.dataset_id, order_by=dataset_versions.c.number.desc()
        )
        ranked = (
            sa.select(*dataset_versions.c, number.label("nth"))
            .where(dataset_versions.c.dataset_id.in_(dataset_ids))
            .subquery()
        )
        query = (
            sa.select(*(ranked.c[c.name] for c in dataset_versions.c))
            .where(ranked.c.nth <= limit)
            .order_by(ranked.c.dataset_id, ranked.c.number.desc())
        )
        found: dict[str, list[VersionRecord]] = {dataset_id: [] for dataset_id in dataset_ids}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                found[row.dataset_id].append(_version(row))
        return found

    def get_version(
        self, dataset_id: str, *, number: int | None = None, as_of: dt.datetime | None = None
    ) -> VersionRecord | None:
        """A kept version by its number, or the newest made at or before `as_of`; None when there is
        none (never made, or pruned)."""
        query = dataset_versions.select().where(dataset_versions.c.dataset_id == dataset_id)
        if number is not None:
            query = query.where(dataset_versions.c.number == number)
        if as_of is not None:
            query = query.where(dataset_versions.c.created_at <= as_of)
        query = query.order_by(dataset_versions.c.number.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return _version(row) if row else None

    def versions_before(self, when: dt.datetime) -> dict[str, list[int]]:
        """Per dataset, the numbers of its kept versions made before `when` (the current one included:
        the caller keeps it)."""
        query = sa.select(dataset_versions.c.dataset_id, dataset_versions.c.number).where(
            dataset_versions.c.created_at < when
        )
        found: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                found.setdefault(row.dataset_id, []).append(row.number)
        return found

    def recorded_versions(self) -> dict[str, list[int]]:
        """Per dataset, the numbers of its recorded versions."""
        found: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(dataset_versions.c.dataset_id, dataset_versions.c.number)):
                found.setdefault(row.dataset_id, []).append(row.number)
        return found

    def forget_versions(self, dataset_id: str, numbers: list[int]) -> None:
        """Remove the records of versions pruned from disk."""
        if not numbers:
            return
        with self._tx() as conn:
            conn.execute(
                dataset_versions.delete().where(
                    dataset_versions.c.dataset_id == dataset_id, dataset_versions.c.number.in_(numbers)
                )
            )

    def backfill_versions(self, size: Callable[[str, int], int]) -> int:
        """Record the current version of each ready dataset that has no record of it (made before
        versions were recorded), with `size(id, version)` bytes; idempotent, and safe when several
        processes start at once. Return how many were recorded."""
        recorded = sa.select(dataset_versions.c.dataset_id).where(
            dataset_versions.c.dataset_id == datasets.c.id, dataset_versions.c.number == datasets.c.version
        )
        with self.engine.connect() as conn:
            rows = conn.execute(datasets.select().where(datasets.c.status == "ready", ~recorded.exists())).all()
        added = 0
        for row in rows:
            record = _dataset(row)
            made_by = _ORIGIN_OF_KIND.get(str(record.origin.get("kind", "")), "UPLOAD")
            try:
                with self._tx() as conn:
                    _record_version(
                        conn, record.id, record.version, record.row_count, list(record.columns), made_by,
                        size(record.id, record.version), when=record.updated_at,
                    )  # fmt: skip
                added += 1
            except sa.exc.IntegrityError:
                continue  # another process recorded it first
        return added

    def rename_dataset(self, dataset_id: str, name: str) -> DatasetRecord | None:
        """Give a ready dataset another display name (its id and version stay); None when it is gone."""
        with self._tx() as conn:
            updated = conn.execute(
                datasets.update()
                .where(datasets.c.id == dataset_id, datasets.c.status == "ready")
                .values(name=name, updated_at=_now())
            )
            if updated.rowcount != 1:
                return None
            row = conn.execute(datasets.select().where(datasets.c.id == dataset_id)).one()
        return _dataset(row)

    def set_origin(self, dataset_id: str, origin: dict[str, Any]) -> DatasetRecord:
        """Replace a dataset's origin (where it came from, when it was last fetched); same version."""
        with self._tx() as conn:
            conn.execute(
                datasets.update().where(datasets.c.id == dataset_id).values(origin=jsonutil.dumps(origin).decode())
            )
            row = conn.execute(datasets.select().where(datasets.c.id == dataset_id)).one()
        return _dataset(row)

    def discard_pending(self, dataset_id: str) -> None:
        with self._tx() as conn:
            conn.execute(datasets.delete().where(datasets.c.id == dataset_id, datasets.c.status == "pending"))

    def change_stamp(self) -> int | None:
        """A value that moves whenever a dataset or its versions may have changed (any process's write to
        them), or None where there is no cheap way to tell (every database but a SQLite file)."""
        return self._stamp.read()

    def dataset_stamps(self) -> dict[str, tuple[Any, ...]]:
        """Per ready dataset, what changes when it does: its version, name, row count and times."""
        columns = (
            datasets.c.id,
            datasets.c.version,
            datasets.c.name,
            datasets.c.row_count,
            datasets.c.created_at,
            datasets.c.updated_at,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*columns).where(datasets.c.status == "ready"))
            return {row[0]: tuple(row[1:]) for row in rows}

    def listing_stamp(self) -> tuple[Any, ...]:
        """What changes when the list of ready datasets does (one made, removed, renamed or given a new
        version): their count and the latest times any was made or changed, in one aggregate query."""
        query = sa.select(sa.func.count(), sa.func.max(datasets.c.created_at), sa.func.max(datasets.c.updated_at))
        with self.engine.connect() as conn:
            return tuple(conn.execute(query.where(datasets.c.status == "ready")).one())

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        stamp = self._stamp.read()  # before the query: a write in between makes the next read miss
        if stamp is not None and stamp == self._records_stamp:
            known = self._records.get(dataset_id)
            if known is not None:
                return known
        elif stamp != self._records_stamp:
            self._records = {}
            self._records_stamp = stamp
        with self.engine.connect() as conn:
            row = conn.execute(
                datasets.select().where(datasets.c.id == dataset_id, datasets.c.status == "ready")
            ).one_or_none()
        if row is None:
            return None
        record = _dataset(row)
        if stamp is not None and len(self._records) < 10_000:
            self._records[dataset_id] = record
        return record

    def list_datasets(
        self,
        *,
        limit: int | None = None,
        offset: int = 0,
        search: str | None = None,
        source_id: str | None = None,
    ) -> list[DatasetRecord]:
        """Ready datasets, oldest first (then by id), from `offset`, at most `limit` (None: all); only
        those whose id or name holds `search` (any case; `%` and `_` are plain characters) and those
        of `source_id`, when given. The order is an index's, so a page costs the same at any size."""
        query = (
            datasets.select()
            .where(*_listed(search, source_id))
            .order_by(datasets.c.created_at, datasets.c.id)
            .offset(offset or None)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_dataset(r) for r in rows]

    def count_datasets(self, *, search: str | None = None, source_id: str | None = None) -> int:
        """How many datasets `list_datasets` gives with no limit, counted in the database."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(sa.func.count()).select_from(datasets).where(*_listed(search, source_id)))
            return int(found.scalar_one())

    def delete_dataset(self, dataset_id: str) -> list[ExportRecord]:
        """Remove a dataset's row and its exports' rows in one transaction; return those exports."""
        with self._tx() as conn:
            rows = conn.execute(exports.select().where(exports.c.dataset_id == dataset_id)).all()
            conn.execute(datasets.delete().where(datasets.c.id == dataset_id))
            conn.execute(dataset_versions.delete().where(dataset_versions.c.dataset_id == dataset_id))
            conn.execute(exports.delete().where(exports.c.dataset_id == dataset_id))
        return [_export(r) for r in rows]

    def dataset_versions(self) -> dict[str, int]:
        """Every dataset row's id and version, pending ones (version 0) included."""
        with self.engine.connect() as conn:
            return {row.id: row.version for row in conn.execute(sa.select(datasets.c.id, datasets.c.version))}

    def sweep_pending(self, remove_files: Callable[[str], None], *, before: dt.datetime) -> list[str]:
        """Remove the pending rows no live process will finish: those whose owner is no registered
        process, and owner-less ones (from before owners were recorded) made before `before`. Each
        dataset's files go first (`remove_files`), while its row still keeps the id from reuse.
        Return the ids."""
        orphaned = sa.and_(
            datasets.c.status == "pending",
            sa.or_(
                sa.and_(datasets.c.owner.is_not(None), datasets.c.owner.not_in(sa.select(processes.c.id))),
                sa.and_(datasets.c.owner.is_(None), datasets.c.created_at < before),
            ),
        )
        with self.engine.connect() as conn:
            ids = list(conn.execute(sa.select(datasets.c.id).where(orphaned)).scalars())
        for dataset_id in ids:
            remove_files(dataset_id)
        if ids:
            with self._tx() as conn:
                conn.execute(datasets.delete().where(orphaned, datasets.c.id.in_(ids)))
        return ids

    # jobs

    def start_job(self, job_id: str, *, kind: str, steps: dict[str, Any]) -> bool:
        """Record a job as running; False when a job with that id exists already."""
        try:
            with self._tx() as conn:
                conn.execute(
                    jobs.insert().values(
                        id=job_id,
                        kind=kind,
                        status="running",
                        steps=jsonutil.dumps(steps).decode(),
                        started_at=_now(),
                        owner=self.owner,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def finish_job(
        self,
        job_id: str,
        *,
        dataset_id: str | None = None,
        rows_in: int | None = None,
        rows_out: int | None = None,
        error: str | None = None,
    ) -> JobRecord:
        """Record a job's end: succeeded with what it made, or failed with the problem's message."""
        with self._tx() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    status="failed" if error is not None else "succeeded",
                    dataset_id=dataset_id,
                    rows_in=rows_in,
                    rows_out=rows_out,
                    error=error,
                    finished_at=_now(),
                )
            )
            row = conn.execute(jobs.select().where(jobs.c.id == job_id)).one()
        return _job(row)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(jobs.select().where(jobs.c.id == job_id)).one_or_none()
        return _job(row) if row else None

    def list_jobs(self, limit: int = 100) -> list[JobRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(jobs.select().order_by(jobs.c.started_at.desc(), jobs.c.id).limit(limit)).all()
        return [_job(r) for r in rows]

    def sweep_jobs(self, *, before: dt.datetime) -> int:
        """Mark as failed the running jobs no live process will finish: those whose owner is no
        registered process, and owner-less ones started before `before`; return how many."""
        with self._tx() as conn:
            result = conn.execute(
                jobs.update()
                .where(
                    jobs.c.status == "running",
                    sa.or_(
                        sa.and_(jobs.c.owner.is_not(None), jobs.c.owner.not_in(sa.select(processes.c.id))),
                        sa.and_(jobs.c.owner.is_(None), jobs.c.started_at < before),
                    ),
                )
                .values(status="failed", error="The server stopped while this job ran.", finished_at=_now())
            )
        return int(result.rowcount or 0)

    # API keys

    def add_key(self, name: str, key_hash: str) -> bool:
        """Record a key under `name`; False when that name is taken."""
        try:
            with self._tx() as conn:
                conn.execute(api_keys.insert().values(name=name, key_hash=key_hash, created_at=_now()))
        except sa.exc.IntegrityError:
            return False
        return True

    def list_keys(self) -> list[tuple[str, dt.datetime]]:
        """Each key's name and when it was made, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys.c.name, api_keys.c.created_at).order_by(api_keys.c.created_at))
            return [(row.name, _aware(row.created_at)) for row in rows]

    def key_hashes(self) -> dict[str, str]:
        """Every key's hash and its name."""
        with self.engine.connect() as conn:
            return {row.key_hash: row.name for row in conn.execute(sa.select(api_keys.c.key_hash, api_keys.c.name))}

    def revoke_key(self, name: str) -> bool:
        """Delete the key called `name`; False when there is none."""
        with self._tx() as conn:
            return conn.execute(api_keys.delete().where(api_keys.c.name == name)).rowcount > 0

    # exports

    def add_export(self, record: ExportRecord) -> None:
        with self._tx() as conn:
            conn.execute(exports.insert().values(**asdict(record)))

    def get_export(self, token: str) -> ExportRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(exports.select().where(exports.c.token == token)).one_or_none()
        return _export(row) if row else None

    def expired_exports(self, now: dt.datetime | None = None) -> list[ExportRecord]:
        now = now or _now()
        with self.engine.connect() as conn:
            rows = conn.execute(exports.select().where(exports.c.expires_at < now)).all()
        return [_export(r) for r in rows]

    def exports_newest_first(self) -> list[ExportRecord]:
        """Every export, the newest first (for the quota: the oldest go first)."""
        with self.engine.connect() as conn:
            rows = conn.execute(exports.select().order_by(exports.c.created_at.desc(), exports.c.token)).all()
        return [_export(r) for r in rows]

    def export_tokens(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r.token for r in conn.execute(sa.select(exports.c.token))}

    def delete_export(self, token: str) -> None:
        with self._tx() as conn:
            conn.execute(exports.delete().where(exports.c.token == token))
