"""Long work as jobs: recorded in the metadata store, reporting their stage and the rows or bytes done
to `jobProgress` subscribers (over the event bus, so across processes), and cancelled when the last
subscriber in this process leaves before the job ends.

A client that wants to follow a job picks its id (`jobId` on the mutation), subscribes to
`jobProgress(job: id)`, then sends the mutation.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from datagraph.errors import BadInput, Cancelled
from datagraph.events import EventBus, JobUpdate

__all__ = ["CANCELLED_MESSAGE", "JobTracker", "checked_job_id", "job_exists"]

T = TypeVar("T")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,40}$")
# A stage's row or byte count is published at most this often.
PROGRESS_EVERY_S = 0.2
CANCELLED_MESSAGE = "The job was cancelled before it finished (nobody followed it any more, or its client left)."


def checked_job_id(wanted: str, exists: bool) -> None:
    """Refuse a client-chosen job id that is malformed or already used."""
    if not _JOB_ID.match(wanted):
        raise BadInput("jobId must be 8 to 40 letters, digits, '-' or '_' (a UUID will do).")
    if exists:
        raise job_exists(wanted)


def job_exists(job_id: str) -> BadInput:
    return BadInput(f'There is already a job "{job_id}"; pick a new jobId for each job.')


@dataclass(slots=True)
class _Running:
    task: asyncio.Future[Any]
    state: JobUpdate
    published_at: float = 0.0
    cancelled: bool = False


class JobTracker:
    """This process's running jobs: their latest state, their subscribers, and a way to stop them."""

    def __init__(self, events: EventBus) -> None:
        self._events = events
        self._running: dict[str, _Running] = {}
        self._watchers: dict[str, int] = {}

    async def run(self, job_id: str, kind: str, work: Awaitable[T]) -> T:
        """Run `work` as job `job_id`; raise Cancelled when its last subscriber left before the end."""
        if job_id in self._running:  # the same id sent twice at once
            if asyncio.iscoroutine(work):
                work.close()
            raise job_exists(job_id)
        task = asyncio.ensure_future(work)
        running = _Running(task, JobUpdate(job_id, kind, "started", time.time()))
        self._running[job_id] = running
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if running.cancelled and not (current is not None and current.cancelling()):
                raise Cancelled(CANCELLED_MESSAGE) from None
            raise
        finally:
            self._running.pop(job_id, None)

    def state(self, job_id: str) -> JobUpdate | None:
        running = self._running.get(job_id)
        return running.state if running else None

    async def progress(self, job_id: str, stage: str, *, rows: int | None = None, size: int | None = None) -> None:
        """Say where a running job is; a count within the same stage is sent at most every 0.2 s."""
        running = self._running.get(job_id)
        if running is None:
            return
        now = time.monotonic()
        if stage == running.state.stage and now - running.published_at < PROGRESS_EVERY_S:
            running.state = replace(running.state, rows=rows, bytes=size)
            return
        running.state = replace(running.state, stage=stage, rows=rows, bytes=size)
        running.published_at = now
        await self._events.publish_job(running.state)

    async def finished(self, job_id: str, *, rows: int | None = None, error: str | None = None) -> None:
        running = self._running.get(job_id)
        if running is None:
            return
        stage = "failed" if error is not None else "succeeded"
        running.state = replace(
            running.state, stage=stage, rows=rows, bytes=None, error=error, final=True, ended_at=time.time()
        )
        await self._events.publish_job(running.state)

    @contextlib.contextmanager
    def following(self, job_id: str, stage: str, beside: Path) -> Iterator[Path]:
        """A file beside `beside` for a worker process to keep its count of rows done in; while the
        block runs, each new count is published as `stage`. The file goes when the block ends."""
        path = beside.with_suffix(".progress")

        async def poll() -> None:
            last = None
            while True:
                await asyncio.sleep(PROGRESS_EVERY_S)
                with contextlib.suppress(OSError, ValueError):
                    rows = int(path.read_text("ascii") or 0)
                    if rows != last:
                        last = rows
                        await self.progress(job_id, stage, rows=rows)

        poller = asyncio.create_task(poll())
        try:
            yield path
        finally:
            poller.cancel()
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """A `jobProgress` subscriber for the block; when the last one leaves a job of this process
        before it ends, the job is cancelled (its worker killed, nothing committed)."""
        self._watchers[job_id] = self._watchers.get(job_id, 0) + 1
        try:
            yield
        finally:
            left = self._watchers[job_id] - 1
            if left:
                self._watchers[job_id] = left
            else:
                del self._watchers[job_id]
                running = self._running.get(job_id)
                if running is not None and not running.task.done() and not running.state.final:
                    running.cancelled = True
                    running.task.cancel()
