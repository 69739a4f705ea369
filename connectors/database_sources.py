"""The configured databases as the running server knows them: each one's last status check, and
threads of their own for the calls that wait on the network.

Status is a `SELECT 1` with a short connect timeout, remembered for a few seconds so a page listing
sources does not hammer a database; `fresh=True` asks again at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from connectors import databases as db
from connectors.sources import DatabaseConfig
from datagraph.errors import DatagraphError, SourceUnavailable

__all__ = ["STATUS_TTL_S", "DatabaseSources", "SourceCheck"]

STATUS_TTL_S = 10.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SourceCheck:
    status: str  # OK | UNREACHABLE | ERROR
    problem: DatagraphError | None
    checked_at: float


class DatabaseSources:
    """The configured databases and what the last check of each said."""

    def __init__(self, configs: tuple[DatabaseConfig, ...]) -> None:
        self.configs = {c.id: c for c in configs}
        self._checks: dict[str, SourceCheck] = {}
        self._locks = {c.id: asyncio.Lock() for c in configs}
        # Checks and catalogues wait on the network: threads of their own, so a database that
        # hangs can never hold up the file work (sniffing, commits) on the executor's threads.
        self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="datagraph-sources")

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        # In the caller's context, so a statement's span has the request's as its parent.
        call = contextvars.copy_context().run
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, fn, *args)

    def get(self, source_id: str) -> DatabaseConfig | None:
        return self.configs.get(source_id)

    async def check(self, cfg: DatabaseConfig, *, fresh: bool = False) -> SourceCheck:
        """`SELECT 1` on the source (remembered for STATUS_TTL_S unless `fresh`)."""
        async with self._locks[cfg.id]:
            known = self._checks.get(cfg.id)
            if known is not None and not fresh and time.monotonic() - known.checked_at < STATUS_TTL_S:
                return known
            try:
                await asyncio.wait_for(self.in_thread(db.ping, cfg), db.CONNECT_TIMEOUT_S + 2)
                check = SourceCheck("OK", None, time.monotonic())
            except TimeoutError:
                problem = SourceUnavailable(f'The source "{cfg.id}" did not answer within {db.CONNECT_TIMEOUT_S} s.')
                check = SourceCheck("UNREACHABLE", problem, time.monotonic())
            except SourceUnavailable as exc:
                check = SourceCheck("UNREACHABLE", exc, time.monotonic())
            except DatagraphError as exc:
                check = SourceCheck("ERROR", exc, time.monotonic())
            self._checks[cfg.id] = check
            return check

    def forget(self, source_id: str) -> None:
        self._checks.pop(source_id, None)

    async def close(self) -> None:
        await asyncio.to_thread(db.dispose_engines)
        self._threads.shutdown(wait=False, cancel_futures=True)
