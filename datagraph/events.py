"""Dataset events: published when a dataset is created, appended to, refreshed, replaced or deleted,
and delivered to every subscriber (`datasetEvents`, `watch`) in this process and, with a
`redis://` URL configured, in every other server process too, over Redis pub/sub.

Each subscriber has a bounded queue: one that falls behind loses the oldest events, never slows
the publisher or the other subscribers (`watch` only needs to know that something changed). A
Redis failure is logged and delivery carries on in this process alone; the reader reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from datagraph import jsonutil
from datagraph.answers import ANY_DATASET, DatasetVersions

__all__ = ["ANY_DATASET", "CHANNEL", "NOTICES", "RESYNC", "DatasetEvent", "EventBus", "JobUpdate"]

CHANNEL = "datagraph:events"
# Events that tell of a version already announced (by CREATED, APPENDED, ...): what its checks found,
# how its columns changed. Nothing that depends on the dataset's rows needs to look again for them.
NOTICES = frozenset({"CHECK_FAILED", "SCHEMA_CHANGED"})
# Delivered locally after the Redis reader reconnects: events may have been missed, so anything that
# depends on a dataset (a watch) must look again. Never shown to datasetEvents subscribers.
RESYNC = "RESYNC"
QUEUE_SIZE = 256
# An event missed is a stale watch in another process: give Redis longer than a cache lookup gets.
PUBLISH_TIMEOUT_S = 1.0
PUBLISH_RETRY_S = 5.0  # after a failed publish, events stay local this long
log = logging.getLogger("datagraph.events")


@dataclass(frozen=True, slots=True)
class DatasetEvent:
    kind: str  # CREATED | APPENDED | REFRESHED | REPLACED | DELETED | CHECK_FAILED | SCHEMA_CHANGED, or RESYNC
    dataset: str
    version: int
    row_count: int
    at: float = 0.0  # time.time() when published
    # What CHECK_FAILED and SCHEMA_CHANGED found (plain JSON: it crosses Redis between processes).
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """Where a job is: its stage and the rows or bytes done so far; `final` once it has ended."""

    job: str
    kind: str
    stage: str  # started | staging | parsing | reading | committing | succeeded | failed
    started_at: float  # time.time() when the job started
    rows: int | None = None
    bytes: int | None = None
    error: str | None = None
    final: bool = False
    ended_at: float | None = None  # time.time() when it ended


class EventBus:
    """Fan-out of dataset events to local subscribers, bridged through Redis when configured."""

    def __init__(self, redis_url: str = "", *, timeout_s: float = 0.25) -> None:
        self.redis_url = redis_url
        self.timeout_s = timeout_s
        self._publish_down_until = 0.0
        self.origin = uuid.uuid4().hex  # our own messages come back from Redis: skip them
        self._queues: set[asyncio.Queue[DatasetEvent]] = set()
        self._job_queues: set[asyncio.Queue[JobUpdate]] = set()
        self._redis: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.published = 0
        # Changes per dataset, kept current by every event delivered here (the answer cache's check).
        self.versions = DatasetVersions()

    async def start(self) -> None:
        if self.redis_url:
            self._reader = asyncio.create_task(self._read_forever())
            with contextlib.suppress(Exception):  # connect now, so the first publish is not the slow one
                client = await self._client()
                await asyncio.wait_for(client.ping(), PUBLISH_TIMEOUT_S)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def _deliver(self, event: DatasetEvent | JobUpdate) -> None:
        if isinstance(event, DatasetEvent):
            if event.kind == RESYNC:
                self.versions.reset()
            else:
                self.versions.changed(event.dataset)
        queues: set[Any] = self._job_queues if isinstance(event, JobUpdate) else self._queues
        for queue in list(queues):
            if queue.full():  # a slow subscriber loses its oldest event, not the others' time
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    async def publish(
        self, kind: str, dataset: str, version: int, row_count: int, *, details: dict[str, Any] | None = None
    ) -> DatasetEvent:
        event = DatasetEvent(kind, dataset, version, row_count, time.time(), details)
        self.published += 1
        self._deliver(event)
        await self._send("dataset", event)
        return event

    async def touch(self, dataset: str) -> None:
        """A change subscribers are not told of (a new display name), but answers that read the
        dataset are stale after it, here and in other processes."""
        self.versions.changed(dataset)
        await self._send("touch", DatasetEvent("TOUCHED", dataset, 0, 0, time.time()))

    async def publish_job(self, update: JobUpdate) -> None:
        """Tell every `jobProgress` subscriber, here and in other processes, where a job is."""
        self._deliver(update)
        await self._send("job", update)

    async def _send(self, kind: str, event: DatasetEvent | JobUpdate) -> None:
        if not self.redis_url:
            return
        if time.monotonic() < self._publish_down_until:
            return  # Redis failed moments ago: do not make every upload wait on it again
        message = jsonutil.dumps({"origin": self.origin, "type": kind, **asdict(event)})
        try:
            client = await self._client()
            await asyncio.wait_for(client.publish(CHANNEL, message), max(self.timeout_s, PUBLISH_TIMEOUT_S))
        except Exception as exc:  # other processes miss this one; ours already have it
            self._publish_down_until = time.monotonic() + PUBLISH_RETRY_S
            log.warning(
                "publishing an event to Redis failed (%s); not trying again for %g s",
                type(exc).__name__,
                PUBLISH_RETRY_S,
            )

    async def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=PUBLISH_TIMEOUT_S, socket_connect_timeout=PUBLISH_TIMEOUT_S
            )
        return self._redis

    async def _read_forever(self) -> None:
        import redis.asyncio as aioredis

        # Each time the subscription is made (the first time, and again after redis-py reconnects on
        # its own or after we do), Redis confirms it; every confirmation after the first means that
        # events may have been missed while the connection was down.
        confirmed = 0
        while True:
            try:
                reader = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=self.timeout_s)
                async with reader.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        kind = message.get("type")
                        if kind == "message":
                            self._receive(message["data"])
                        elif kind == "subscribe":
                            confirmed += 1
                            if confirmed > 1:
                                self._resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading dataset events from Redis failed (%s); retrying in 1 s", type(exc).__name__)
                await asyncio.sleep(1)

    def _resync(self) -> None:
        log.info("reading dataset events from Redis again; watches recompute")
        self._deliver(DatasetEvent(RESYNC, ANY_DATASET, 0, 0, time.time()))

    def _receive(self, raw: bytes) -> None:
        try:
            body = jsonutil.loads(raw)
            if body.pop("origin", None) == self.origin:
                return
            kind = body.pop("type", "dataset")
            if kind == "touch":
                self.versions.changed(str(body["dataset"]))
                return
            self._deliver(JobUpdate(**body) if kind == "job" else DatasetEvent(**body))
        except (ValueError, TypeError, KeyError):
            log.warning("ignored a garbled dataset event from Redis")

    @staticmethod
    @contextlib.contextmanager
    def _queue(into: set[asyncio.Queue[Any]]) -> Iterator[asyncio.Queue[Any]]:
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
        into.add(queue)
        try:
            yield queue
        finally:
            into.discard(queue)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[DatasetEvent]]:
        """A queue that receives every dataset event from now until the block ends."""
        with self._queue(self._queues) as queue:
            yield queue

    def subscribe_jobs(self) -> contextlib.AbstractContextManager[asyncio.Queue[JobUpdate]]:
        """A queue that receives every job update from now until the block ends."""
        return self._queue(self._job_queues)
