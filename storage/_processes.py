"""The server processes that share one metadata database and one data directory.

Each process registers under an id of its own (its staging area is `staging/<id>/`, and the pending
dataset rows and running jobs it writes name it as their owner), refreshes its heartbeat every few
seconds, and removes its row on a clean shutdown. A process is dead when its heartbeat is older
than the stale window, or, on this very host, when its pid has gone; only what dead processes left
is swept at once (`storage._sweep`).

Heartbeats are written and judged by the database's clock (`CURRENT_TIMESTAMP`), never by the
clocks of the hosts, which may disagree.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage._tables import aware, processes

__all__ = ["Processes", "pid_alive", "this_host"]


def this_host() -> str:
    """Where a pid names one process: the host name and the pid namespace (containers sharing a
    host name, as in one Kubernetes pod, each have their own pids)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        namespace = ""
    return f"{socket.gethostname()} {namespace}".strip()[:255]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (another's, or one that reused the pid, counts:
    the heartbeat then decides)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class Processes:
    """This process's row in the `processes` table, and what the table says of the others."""

    def __init__(self, engine: Engine, process_id: str) -> None:
        self.engine = engine
        self.id = process_id
        self.host = this_host()
        self.pid = os.getpid()

    def now(self) -> dt.datetime:
        """The database's clock, the one heartbeats are written with."""
        with self.engine.connect() as conn:
            return aware(conn.execute(sa.select(sa.func.current_timestamp())).scalar_one())

    def join(self) -> None:
        """Register this process (again, after another took it for dead and removed its row)."""
        clock = sa.func.current_timestamp()
        with self.engine.begin() as conn:
            conn.execute(processes.delete().where(processes.c.id == self.id))
            conn.execute(
                processes.insert().values(
                    id=self.id, host=self.host, pid=self.pid, started_at=clock, heartbeat_at=clock
                )
            )

    def beat(self) -> bool:
        """Refresh this process's heartbeat; False when its row was gone (taken for dead by another
        process's sweep), in which case it registers again."""
        with self.engine.begin() as conn:
            updated = conn.execute(
                processes.update().where(processes.c.id == self.id).values(heartbeat_at=sa.func.current_timestamp())
            ).rowcount
        if updated == 1:
            return True
        self.join()
        return False

    def leave(self) -> None:
        """Remove this process's row (a clean shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(processes.delete().where(processes.c.id == self.id))

    def dead(self, stale_s: float) -> list[str]:
        """The other processes that are dead: silent for more than `stale_s`, or, on this host,
        whose pid has gone."""
        cutoff = self.now() - dt.timedelta(seconds=stale_s)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(processes.c.id, processes.c.host, processes.c.pid, processes.c.heartbeat_at))
            return [
                row.id
                for row in rows
                if row.id != self.id
                and (aware(row.heartbeat_at) < cutoff or (row.host == self.host and not pid_alive(row.pid)))
            ]

    def forget(self, dead: list[str], stale_s: float) -> None:
        """Remove the rows of `dead` processes, unless a heartbeat came meanwhile (one that was only
        slow); a process that finds its row gone registers again."""
        if not dead:
            return
        cutoff = self.now() - dt.timedelta(seconds=stale_s)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(processes.c.id, processes.c.host, processes.c.pid).where(processes.c.id.in_(dead))
            )
            gone = [row.id for row in rows if row.host == self.host and not pid_alive(row.pid)]
        with self.engine.begin() as conn:
            conn.execute(
                processes.delete().where(
                    processes.c.id.in_(dead), sa.or_(processes.c.heartbeat_at < cutoff, processes.c.id.in_(gone))
                )
            )

    def known(self) -> set[str]:
        """Every registered process's id, this one's included."""
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(processes.c.id)).scalars())
