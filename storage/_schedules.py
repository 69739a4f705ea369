"""Refresh schedules: when each scheduled dataset is due, and which server process is refreshing it.

A dataset has a schedule row when setSchedule gave it one (`chosen`) or its plugin declares
`refresh_s` (kept in step by `sync_defaults`); a chosen row without an interval turns the plugin's
off. A due row is claimed before its refresh runs, by a compare-and-set UPDATE that matches only an
unclaimed row still due at the time the claimer read, so two processes (even two that both think
they hold the scheduler's lease) never run the same period; when the run ends, `finish` moves the
row on to its next due time: the next period after now on the same cadence, or after a failure a
back-off (`retry_s` doubling per consecutive failure, at most the interval). A claim whose process
died is released (`release_dead`) and that period runs again: the killed run committed nothing.

Times are the database's clock (`storage._leases.db_now`), never the hosts'.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage._leases import db_now
from storage._tables import aware, datasets, forget_orphans, schedules

__all__ = ["ScheduleRecord", "Schedules", "data_digest", "next_due", "retry_delay_s"]


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A dataset's schedule row."""

    dataset_id: str
    every_s: int | None  # None: no schedule (set so over a plugin's refresh_s)
    chosen: bool  # set by setSchedule rather than taken from the plugin's refresh_s
    next_due: dt.datetime | None
    claimed_by: str | None
    claim: str | None
    failures: int
    last_error: str | None
    runs: int
    last_run_at: dt.datetime | None


def _record(row: sa.Row[tuple[object, ...]]) -> ScheduleRecord:
    m = row._mapping
    return ScheduleRecord(
        dataset_id=m["dataset_id"],
        every_s=m["every_s"],
        chosen=bool(m["chosen"]),
        next_due=aware(m["next_due"]) if m["next_due"] is not None else None,
        claimed_by=m["claimed_by"],
        claim=m["claim"],
        failures=m["failures"] or 0,
        last_error=m["last_error"],
        runs=m["runs"] or 0,
        last_run_at=aware(m["last_run_at"]) if m["last_run_at"] is not None else None,
    )


def data_digest(path: Path) -> str:
    """A digest of a Parquet file's rows that does not depend on their order (run in a worker): a
    refresh that reads the same rows again, in whatever order the database gives them, keeps its
    version. Two sums of row hashes (each wrapping at 2^64) with two seeds, the schema and the count."""
    scan = pl.scan_parquet(path)
    schema = scan.collect_schema()
    sums: list[tuple[object, ...]] = []
    count = 0
    if schema:
        hashed = scan.select(
            pl.len().alias("rows"), *(pl.struct(pl.all()).hash(seed).sum().alias(f"h{seed}") for seed in (7, 11))
        ).collect()
        sums, count = hashed.rows(), int(hashed["rows"][0])
    return hashlib.sha256(f"{count}|{list(schema.items())}|{sums}".encode()).hexdigest()


def retry_delay_s(failures: int, every_s: float, retry_s: float) -> float:
    """How long after its `failures`-th consecutive failure a schedule runs again: `retry_s` doubled
    per failure after the first, at most the interval."""
    return float(min(every_s, retry_s * 2 ** min(max(failures - 1, 0), 30)))


def next_due(due: dt.datetime | None, every_s: float, now: dt.datetime) -> dt.datetime:
    """The first time after `now` on the cadence of `due` (periods missed meanwhile are skipped, not
    run late one after another); one interval from now when there was no due time."""
    if due is None:
        return now + dt.timedelta(seconds=every_s)
    if due > now:
        return due
    periods = math.floor((now - due).total_seconds() / every_s) + 1
    return due + dt.timedelta(seconds=periods * every_s)


class Schedules:
    """The `schedules` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _now(self, conn: Connection) -> dt.datetime:
        return aware(conn.execute(sa.select(db_now(self.engine))).scalar_one())

    def get(self, dataset_id: str) -> ScheduleRecord | None:
        return self.get_many([dataset_id]).get(dataset_id)

    def get_many(self, dataset_ids: list[str]) -> dict[str, ScheduleRecord]:
        """The schedule of each of the datasets that has one, in one query."""
        with self.engine.connect() as conn:
            rows = conn.execute(schedules.select().where(schedules.c.dataset_id.in_(dataset_ids))).all()
        return {row.dataset_id: _record(row) for row in rows}

    def all(self) -> list[ScheduleRecord]:
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(schedules.select().order_by(schedules.c.dataset_id))]

    def assign(self, dataset_id: str, every_s: int | None) -> ScheduleRecord:
        """Give the dataset the interval `every_s` (None: no schedule, even its plugin's), first due one
        interval from now; its failures are forgotten. A run under way finishes as it is."""
        with self.engine.begin() as conn:
            due = db_now(self.engine, every_s) if every_s else None
            values = {"every_s": every_s, "chosen": True, "next_due": due, "failures": 0, "last_error": None}
            updated = conn.execute(
                schedules.update().where(schedules.c.dataset_id == dataset_id).values(**values)
            ).rowcount
            if not updated:
                conn.execute(schedules.insert().values(dataset_id=dataset_id, runs=0, **values))
        found = self.get(dataset_id)
        assert found is not None
        return found

    def remove(self, dataset_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(schedules.delete().where(schedules.c.dataset_id == dataset_id))

    def sync_defaults(self, defaults: dict[str, int]) -> list[str]:
        """Make the rows not chosen by setSchedule say `defaults` (dataset id: its plugin's refresh_s):
        added, changed or removed; return the datasets whose schedule changed."""
        changed: list[str] = []
        with self.engine.begin() as conn:
            rows = {r.dataset_id: r for r in map(_record, conn.execute(schedules.select()))}
            for dataset_id, row in rows.items():
                if row.chosen:
                    continue
                every = defaults.get(dataset_id)
                if every is None:
                    conn.execute(schedules.delete().where(schedules.c.dataset_id == dataset_id, ~schedules.c.chosen))
                    changed.append(dataset_id)
                elif every != row.every_s:
                    conn.execute(
                        schedules.update()
                        .where(schedules.c.dataset_id == dataset_id, ~schedules.c.chosen)
                        .values(every_s=every, next_due=db_now(self.engine, every))
                    )
                    changed.append(dataset_id)
            for dataset_id, every in defaults.items():
                if dataset_id not in rows:
                    # Another process may add the same row at the same moment: whichever comes second adds nothing.
                    exists = sa.exists().where(schedules.c.dataset_id == dataset_id)
                    added = conn.execute(
                        sa.insert(schedules).from_select(
                            ["dataset_id", "every_s", "chosen", "next_due", "failures", "runs"],
                            sa.select(
                                sa.literal(dataset_id),
                                sa.literal(every),
                                sa.false(),
                                db_now(self.engine, every),
                                sa.literal(0),
                                sa.literal(0),
                            ).where(~exists),
                        )
                    ).rowcount
                    if added:
                        changed.append(dataset_id)
        return changed

    def forget_orphans(self) -> list[str]:
        """Remove the schedules of datasets that are gone; return their ids."""
        return forget_orphans(self.engine, schedules)

    def due(self, limit: int) -> list[ScheduleRecord]:
        """Up to `limit` unclaimed schedules of ready datasets that are due now, the longest overdue first."""
        ready = sa.select(datasets.c.id).where(datasets.c.status == "ready")
        with self.engine.connect() as conn:
            rows = conn.execute(
                schedules.select()
                .where(
                    schedules.c.every_s.is_not(None),
                    schedules.c.claimed_by.is_(None),
                    schedules.c.next_due <= db_now(self.engine),
                    schedules.c.dataset_id.in_(ready),
                )
                .order_by(schedules.c.next_due, schedules.c.dataset_id)
                .limit(limit)
            )
            return [_record(r) for r in rows]

    def claim(self, found: ScheduleRecord, process_id: str) -> str | None:
        """Claim the schedule `found` (as `due` read it) for `process_id` if it is still due and unclaimed;
        the claim's token, or None when another process claimed it first, or ran it meanwhile (its next due
        time is then in the future)."""
        token = uuid.uuid4().hex
        with self.engine.begin() as conn:
            claimed = conn.execute(
                schedules.update()
                .where(
                    schedules.c.dataset_id == found.dataset_id,
                    schedules.c.claimed_by.is_(None),
                    schedules.c.every_s.is_not(None),
                    schedules.c.next_due <= db_now(self.engine),
                )
                .values(claimed_by=process_id, claim=token, claimed_at=db_now(self.engine))
            ).rowcount
        return token if claimed == 1 else None

    def claim_now(self, dataset_id: str, process_id: str) -> tuple[str | None, bool]:
        """Claim the dataset's schedule for a refresh asked for now, due or not: (its token, True); (None,
        True) when a run of it is under way; (None, False) when the dataset has no schedule row."""
        token = uuid.uuid4().hex
        with self.engine.begin() as conn:
            claimed = conn.execute(
                schedules.update()
                .where(schedules.c.dataset_id == dataset_id, schedules.c.claimed_by.is_(None))
                .values(claimed_by=process_id, claim=token, claimed_at=db_now(self.engine))
            ).rowcount
            if claimed == 1:
                return token, True
            there = conn.execute(sa.select(schedules.c.dataset_id).where(schedules.c.dataset_id == dataset_id)).first()
        return None, there is not None

    def finish(self, dataset_id: str, token: str, *, error: str | None, retry_s: float) -> ScheduleRecord | None:
        """End the claimed run `token`: the schedule moves on to its next due time, or after a failure
        (`error`, in the user's terms) to its back-off. None when the claim was no longer this run's
        (its process was taken for dead meanwhile) or the schedule is gone."""
        with self.engine.begin() as conn:
            row = conn.execute(
                schedules.select().where(schedules.c.dataset_id == dataset_id, schedules.c.claim == token)
            ).first()
            if row is None:
                return None
            found = _record(row)
            now = self._now(conn)
            values: dict[str, object] = {
                "claimed_by": None, "claim": None, "claimed_at": None, "runs": found.runs + 1, "last_run_at": now,
            }  # fmt: skip
            if found.every_s is None:  # the schedule was removed while it ran
                values.update(next_due=None)
            elif error is None:
                values.update(next_due=next_due(found.next_due, found.every_s, now), failures=0, last_error=None)
            else:
                failures = found.failures + 1
                retry = now + dt.timedelta(seconds=retry_delay_s(failures, found.every_s, retry_s))
                values.update(failures=failures, last_error=error[:2000], next_due=retry)
            conn.execute(
                schedules.update()
                .where(schedules.c.dataset_id == dataset_id, schedules.c.claim == token)
                .values(**values)
            )
        return self.get(dataset_id)

    def release(self, dataset_id: str, token: str) -> None:
        """Give up the claimed run `token` unrun (this server is stopping): still due, another process runs it."""
        with self.engine.begin() as conn:
            conn.execute(
                schedules.update()
                .where(schedules.c.dataset_id == dataset_id, schedules.c.claim == token)
                .values(claimed_by=None, claim=None, claimed_at=None)
            )

    def release_dead(self, live: set[str]) -> list[str]:
        """Release the claims of processes not in `live` (dead: they committed nothing of that run, so
        it runs again); return the datasets released."""
        stale = sa.and_(schedules.c.claimed_by.is_not(None), schedules.c.claimed_by.not_in(live or {""}))
        with self.engine.begin() as conn:
            ids = list(conn.execute(sa.select(schedules.c.dataset_id).where(stale)).scalars())
            if ids:
                conn.execute(
                    schedules.update()
                    .where(schedules.c.dataset_id.in_(ids), stale)
                    .values(claimed_by=None, claim=None, claimed_at=None)
                )
        return ids
