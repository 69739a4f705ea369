"""The gates an operation passes on a streaming transport, shared by the websocket (server/wsgate.py)
and the event stream (server/sse.py), so that both refuse and charge what HTTP refuses and charges:

- `operation_refusal`: the rate budget (1 an operation), `max_query_chars` and `persisted_only`, in
  the order HTTP checks them, as the GraphQL error the client gets;
- `charge`: the jobs an operation ran in workers (5 each) and those stopped at their deadline (50
  each), spent as its answers go out, so a subscription pays for every recompute;
- `too_many_streams`: why one more open websocket or event stream is refused (`max_ws_per_client`,
  counted together per key, or per address with keys off, in `WebState.sockets`);
- `KeyWatch`: open streams whose API key is checked again every `KEY_WATCH_S`, so revoking a key
  ends them within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from server.auth import KEY_WATCH_S, KeyRing
from server.ratelimit import JOB_COST, STOP_COST, Limiter
from server.responses import query_too_long

if TYPE_CHECKING:
    from graphql import GraphQLFormattedError

    from datagraph.metrics import Metrics
    from server.documents import DocumentRegistry
    from server.observe import RequestInfo

__all__ = ["KeyWatch", "charge", "operation_refusal", "rate_refusal", "too_many_streams"]

log = logging.getLogger("datagraph")


def rate_refusal(limiter: Limiter, wait: float) -> GraphQLFormattedError:
    """The error of an operation refused for a spent budget, with when to retry (seconds)."""
    extensions = {"code": "RATE_LIMITED", "retryAfter": math.ceil(wait)}
    return {"message": limiter.refusal(wait), "extensions": extensions}


async def operation_refusal(
    query: object,
    *,
    who: str | None,
    limiter: Limiter | None,
    metrics: Metrics,
    max_query_chars: int,
    documents: DocumentRegistry,
) -> GraphQLFormattedError | None:
    """Why the operation may not run, as the error its client gets, in the order HTTP checks; it costs
    1 from `who`'s budget (give no `limiter` when the request paid already, as an HTTP one has)."""
    if limiter is not None and who is not None:
        wait = await limiter.allow(who, 1)
        if wait is not None:
            metrics.rate_limited.inc()
            return rate_refusal(limiter, wait)
    if too_long := query_too_long(query, max_query_chars):
        return {"message": too_long, "extensions": {"code": "TOO_LARGE"}}
    if (refused := await documents.refusal(query)) is not None:  # persisted_only (server/documents.py)
        return {"message": refused.message, "extensions": {"code": refused.code}}
    return None


async def charge(limiter: Limiter | None, who: str | None, info: RequestInfo) -> None:
    """Spend the jobs the operation ran, and those stopped at their deadline, since it was last charged."""
    if (info.jobs or info.stops) and limiter is not None and who is not None:
        cost = JOB_COST * info.jobs + STOP_COST * info.stops
        info.jobs = info.stops = 0
        await limiter.spend(who, cost)


def too_many_streams(by_key: bool, cap: int, what: str = "websockets") -> str:
    """Why `what` is refused: its key (or address) has `cap` websockets and event streams open."""
    whose = "key" if by_key else "address"
    return f"Too many open {what} for this {whose}: at most {cap} (setting max_ws_per_client)."


class KeyWatch:
    """Open streams and the key each was opened with: while there are any, one task checks every key
    again every KEY_WATCH_S (the ring re-reads the keys at most every KEYS_TTL_S) and calls the
    `revoked` callback of each stream whose key is no longer valid, once."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[str, Callable[[], None]]] = {}
        self._ids = iter(range(1 << 62))
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._open)

    @contextlib.contextmanager
    def watching(self, keys: KeyRing, key: str, revoked: Callable[[], None]) -> Iterator[None]:
        """Watch `key` for the block; `revoked()` is called (from the watch's task) if it is revoked."""
        ticket = next(self._ids)
        self._open[ticket] = (key, revoked)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(keys))
        try:
            yield
        finally:
            self._open.pop(ticket, None)

    async def _watch(self, keys: KeyRing) -> None:
        while self._open:
            await asyncio.sleep(KEY_WATCH_S)
            for ticket, (key, revoked) in list(self._open.items()):
                if keys.check(key) is None:
                    log.info("ending a stream whose API key was revoked")
                    self._open.pop(ticket, None)
                    revoked()
