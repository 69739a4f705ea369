"""The typed context every resolver receives: the server's resources plus the request's own facts.

The server's top floor creates the resources in its lifespan and hands them down; nothing here
knows about HTTP. Web state (API keys, rate limits) stays on the web application.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from connectors import IngestLimits
from connectors.database_sources import DatabaseSources
from connectors.registry import PluginRegistry
from connectors.webhook import Webhook
from datagraph.answers import ReadLog
from datagraph.errors import BadInput
from datagraph.events import EventBus
from datagraph.locks import KeyedLocks
from datagraph.metrics import Metrics
from datagraph.settings import Settings
from engine.runtime import Executor, JobTracker, ResultCache
from storage import DataDir, MetadataStore

__all__ = ["FRAMES", "Context", "Listing", "Resources", "read_only_message"]


FRAMES = "frames"  # the source id of saved frames (saveFrame's datasets)


@dataclass(frozen=True, slots=True)
class Resources:
    """What the lifespan creates once and closes on shutdown."""

    settings: Settings
    metadata: MetadataStore
    files: DataDir
    executor: Executor
    cache: ResultCache
    databases: DatabaseSources
    plugins: PluginRegistry
    events: EventBus
    jobs: JobTracker
    metrics: Metrics
    # One change at a time per dataset in this process (appends, replaced uploads).
    dataset_locks: KeyedLocks = field(default_factory=KeyedLocks)
    # Background compactions of appended parts under way, by dataset id (at most one each).
    compactions: dict[str, asyncio.Task[bool]] = field(default_factory=dict)
    # The datasets refreshDataset is refreshing now in this process (at most one refresh each).
    refreshing: set[str] = field(default_factory=set)
    # Where CHECK_FAILED and SCHEMA_CHANGED events are POSTed (setting webhook_url), when set.
    webhook: Webhook | None = None

    @property
    def ingest_limits(self) -> IngestLimits:
        s = self.settings
        return IngestLimits(
            max_columns=s.max_columns,
            max_rows=s.max_rows,
            xlsx_max_uncompressed=s.xlsx_max_uncompressed_mb * 1024 * 1024,
            xlsx_max_ratio=s.xlsx_max_ratio,
            xlsx_max_entries=s.xlsx_max_entries,
        )

    async def close(self) -> None:
        for task in list(self.compactions.values()):
            task.cancel()
        await asyncio.gather(*self.compactions.values(), return_exceptions=True)
        if self.webhook is not None:
            await self.webhook.close()
        await self.executor.close()
        await self.cache.close()
        await self.databases.close()
        await self.events.close()
        self.metadata.close()
        self.metrics.close()


@dataclass(slots=True)
class Context:
    """Per request: the shared resources and the URL the client reached us at (for links). On a
    websocket, also the key its upgrade request carried and, once received, `connection_init`'s payload.
    `read_only` requests (GET queries, which a page on another site can make a browser send) may not
    write anything or reach a database: no exports, no SQL. `reads`, when the answer cache records this
    operation, is told of every dataset looked up and of anything that makes the answer unfit to keep."""

    resources: Resources
    base_url: str = ""
    header_key: str | None = None
    connection_params: dict[str, Any] = field(default_factory=dict)
    read_only: bool = False
    # Set when the answer cache may store this operation's answer: what it read (see datagraph/answers.py).
    reads: ReadLog | None = None

    def refuse_if_read_only(self, what: str) -> None:
        """BAD_INPUT for `what` (which writes or reaches a database) in a read-only request."""
        if self.read_only:
            raise BadInput(read_only_message(what))

    @property
    def settings(self) -> Settings:
        return self.resources.settings


T = TypeVar("T")


class Listing:
    """The datasets of one `datasets` page. What a field asks of one of them (its checks, schedule or
    versions) is read for all of them at once, the first time one asks: one query for the page, not one
    per dataset. A dataset not on the page is read alone."""

    def __init__(self, dataset_ids: list[str]) -> None:
        self.ids = dataset_ids
        self._on_page = set(dataset_ids)
        self._loaded: dict[Hashable, dict[str, Any]] = {}

    def one(self, what: Hashable, load: Callable[[list[str]], dict[str, T]], dataset_id: str) -> T | None:
        """`load(ids)[dataset_id]` (None when absent), `load` run once per `what` for the whole page."""
        if dataset_id not in self._on_page:
            return load([dataset_id]).get(dataset_id)
        if what not in self._loaded:
            self._loaded[what] = load(self.ids)
        found: T | None = self._loaded[what].get(dataset_id)
        return found


def read_only_message(what: str) -> str:
    """Why `what` is refused in a read-only (GET) request."""
    return f"{what} cannot run in a GET request (it writes or reaches a database); send the query as a POST."
