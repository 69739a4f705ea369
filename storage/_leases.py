"""Leases: which server process runs a background duty that must run once across all the processes
sharing the metadata database (the scheduler, the sweeps).

A lease is a row of the `leases` table: its holder (a process id) and when it expires, by the
database's clock. It is taken, or renewed by its holder, with one compare-and-set statement (an
UPDATE that matches only when the lease is this process's, has expired or is held by a dead
process, else an INSERT that fails when another process made the row first), the same on SQLite and
PostgreSQL; with SQLite metadata the one process sharing the file that renews first ends up holding
every lease.

A holder may lose the database (it restarts, the network goes) and not know whether its lease still
stands, so `Lease.held` is judged by this process's own monotonic clock: held until `lease_s` less a
margin after the start of the last successful renewal. The row says `lease_s` after the database ran
that renewal, which is later, so the holder stops acting before any other process can take over.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Collection

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage._tables import aware, leases, processes

__all__ = ["LEASE_MARGIN", "Lease", "Leases", "db_now"]

LEASE_MARGIN = 0.2  # a holder stops acting this share of lease_s before its lease may have expired
log = logging.getLogger("datagraph.leases")


def db_now(engine: Engine, plus_s: float = 0.0) -> sa.ColumnElement[dt.datetime]:
    """The database's clock (to the millisecond or better), `plus_s` seconds on, as an SQL expression.
    SQLite's CURRENT_TIMESTAMP has whole seconds only, and PostgreSQL's is the transaction's start."""
    name = engine.dialect.name
    if name == "sqlite":
        args: list[str] = ["%Y-%m-%d %H:%M:%f", "now"]
        if plus_s:
            args.append(f"{plus_s:+.3f} seconds")
        return sa.type_coerce(sa.func.strftime(*args), sa.DateTime(timezone=True))
    clock: sa.ColumnElement[dt.datetime] = (
        sa.func.clock_timestamp() if name == "postgresql" else sa.func.current_timestamp()
    )
    if plus_s:
        return sa.type_coerce(clock + sa.literal(dt.timedelta(seconds=plus_s)), sa.DateTime(timezone=True))
    return sa.type_coerce(clock, sa.DateTime(timezone=True))


class Leases:
    """The `leases` table, as seen by the process `holder`."""

    def __init__(self, engine: Engine, holder: str) -> None:
        self.engine = engine
        self.holder = holder

    def take(self, name: str, lease_s: float, *, dead: Collection[str] = ()) -> bool:
        """Take or renew the lease `name` for `lease_s` seconds; False when another process holds it.
        A holder that is no registered process, or one of `dead` (`storage.Processes.dead`), holds
        nothing: a server restarted after a crash takes its duties back at once."""
        takeable = [
            leases.c.holder == self.holder,
            leases.c.expires_at < db_now(self.engine),
            leases.c.holder.not_in(sa.select(processes.c.id)),
        ]
        if dead:
            takeable.append(leases.c.holder.in_(list(dead)))
        with self.engine.begin() as conn:
            updated = conn.execute(
                leases.update()
                .where(leases.c.name == name, sa.or_(*takeable))
                .values(holder=self.holder, expires_at=db_now(self.engine, lease_s))
            ).rowcount
        if updated == 1:
            return True
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    leases.insert().values(name=name, holder=self.holder, expires_at=db_now(self.engine, lease_s))
                )
        except sa.exc.IntegrityError:  # the row is there, another's and not expired (or made by another just now)
            return False
        return True

    def release(self, name: str) -> None:
        """Give the lease up now (a clean shutdown), so another process takes it over at once."""
        with self.engine.begin() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == self.holder))

    def holder_of(self, name: str) -> str | None:
        """The process holding the lease `name` now, by the database's clock; None when nobody does."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(leases.c.holder, leases.c.expires_at, db_now(self.engine)).where(leases.c.name == name)
            ).first()
        if row is None or aware(row[1]) <= aware(row[2]):
            return None
        return str(row[0])


class Lease:
    """One lease as this process sees it: `renew` it every `lease_s / 3`; `held` says whether this
    process may act as its holder now."""

    def __init__(
        self, leases: Leases, name: str, lease_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.leases = leases
        self.name = name
        self.lease_s = lease_s
        self.clock = clock
        self._until = -math.inf
        self.failing = False  # the last renewal could not reach the database

    @property
    def held(self) -> bool:
        return self.clock() < self._until

    def renew(self, *, dead: Collection[str] = ()) -> bool:
        """Take or renew the lease (from a holder among `dead` too); return whether it is held now. A
        database that does not answer leaves the lease held until it may have expired (by this
        process's clock), no longer."""
        started = self.clock()
        try:
            taken = self.leases.take(self.name, self.lease_s, dead=dead)
        except sa.exc.SQLAlchemyError:
            if not self.failing:
                log.warning("could not renew the lease %r: the metadata database does not answer", self.name)
            self.failing = True
            return self.held
        self.failing = False
        was = self.held
        self._until = started + self.lease_s * (1 - LEASE_MARGIN) if taken else -math.inf
        if taken != was:
            log.info("%s the lease %r", "took" if taken else "lost", self.name)
        return taken

    def release(self) -> None:
        """Stop acting as holder and give the lease up (a clean shutdown)."""
        was = self.held
        self._until = -math.inf
        if was:
            try:
                self.leases.release(self.name)
            except sa.exc.SQLAlchemyError:  # it expires on its own
                log.warning("could not release the lease %r; it expires on its own", self.name)
