"""Rate limits per API key (or per client address when keys are off), with the `limits` library.

Each request spends from its key's budget (setting `rate_limit`, e.g. `2400/minute`, over a
sliding window): 1 for every request, 20 more for an upload, and 5 more for every job it ran in
a worker process (uncached analysis, an import, a plugin fetch, saving a frame) or SQL statement
it sent to a database. A cached read costs 1. What a request ran is known only once it has run,
so that part is spent afterwards and the next request is refused once the budget is gone:
`429`, `RATE_LIMITED`, with `Retry-After`. The budget lives in memory, or in Redis when
`cache_url` (or `rate_limit_url`) is a redis:// URL, shared by every server process then.
When Redis fails or is slow, budgets are kept in memory for a few seconds (logged): a limiter
must not take the server down with it.

Websockets spend from the same budget (server/wsgate.py): opening one costs 1, as a request does,
and each operation sent over it what the same request over HTTP costs. Open websockets are also
counted per key or address (`SocketCounts`, setting `max_ws_per_client`), in each server process.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from datagraph.settings import keys_required
from server.auth import presented_key
from server.observe import current_request
from server.responses import header, send_error

if TYPE_CHECKING:
    from datagraph.settings import Settings
    from resolvers.context import Resources

__all__ = [
    "EXEMPT_PATHS",
    "JOB_COST",
    "STOP_COST",
    "UPLOAD_COST",
    "Limiter",
    "RateLimit",
    "SocketCounts",
    "identity",
]

log = logging.getLogger("datagraph")
UPLOAD_COST = 20
JOB_COST = 5
STOP_COST = 50  # a job stopped at its deadline, or a request abandoned mid-work: a worker may restart
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_STORAGE_TIMEOUT_S = 0.25
_RETRY_S = 5.0
T = TypeVar("T")


class Limiter:
    """Budgets by identity. Budgets in Redis fall back to memory for a few seconds whenever Redis
    fails or is slow, so a Redis outage costs neither errors nor a wait on every request."""

    def __init__(self, settings: Settings) -> None:
        self.item: RateLimitItem = parse(settings.rate_limit)
        url = settings.rate_limit_url or (settings.cache_url if settings.cache_url.startswith("redis") else "")
        self.backend = "redis" if url else "memory"
        self.memory = SlidingWindowCounterRateLimiter(MemoryStorage())
        self.shared = (
            SlidingWindowCounterRateLimiter(
                RedisStorage("async+" + url, implementation="redispy", socket_timeout=_STORAGE_TIMEOUT_S)
            )
            if url
            else None
        )
        self._shared_down_until = -math.inf

    def describe(self) -> str:
        """The budget in words: "2,400 per minute", "100 per 5 seconds"."""
        per, n = self.item.GRANULARITY.name, self.item.multiples
        return f"{self.item.amount:,} per {per}" if n == 1 else f"{self.item.amount:,} per {n} {per}s"

    def refusal(self, wait: float) -> str:
        """Why a request over budget is refused, and when to try again."""
        return (
            f"Too many requests: the budget of {self.describe()} (setting rate_limit) is spent;"
            f" retry in {math.ceil(wait)} s."
        )

    async def allow(self, who: str, cost: int) -> float | None:
        """Spend `cost` from `who`'s budget; None when allowed, else the seconds until it may retry."""
        return await self._on_storage(self._allow, who, cost)

    async def spend(self, who: str, cost: int) -> None:
        """Spend `cost` after the fact, up to what is left (the next request then waits)."""
        await self._on_storage(self._spend, who, cost)

    async def _allow(self, strategy: SlidingWindowCounterRateLimiter, who: str, cost: int) -> float | None:
        if await strategy.hit(self.item, who, cost=cost):
            return None
        stats = await strategy.get_window_stats(self.item, who)
        return max(1.0, stats.reset_time - time.time())

    async def _spend(self, strategy: SlidingWindowCounterRateLimiter, who: str, cost: int) -> None:
        if not await strategy.hit(self.item, who, cost=cost):
            remaining = (await strategy.get_window_stats(self.item, who)).remaining
            if remaining > 0:
                await strategy.hit(self.item, who, cost=remaining)

    async def _on_storage(self, op: Callable[..., Awaitable[T]], who: str, cost: int) -> T | None:
        if self.shared is not None and time.monotonic() >= self._shared_down_until:
            try:
                return await asyncio.wait_for(op(self.shared, who, cost), _STORAGE_TIMEOUT_S * 2)
            except Exception as exc:  # down or slow: budgets in memory for a while
                log.warning(
                    "rate limits: Redis failed (%s); keeping budgets in memory for %g s", type(exc).__name__, _RETRY_S
                )
                self._shared_down_until = time.monotonic() + _RETRY_S
        return await op(self.memory, who, cost)

    async def close(self) -> None:
        for strategy in (self.memory, self.shared):
            storage = strategy.storage if strategy is not None else None
            timer = getattr(storage, "timer", None)  # the memory storage's expiry task
            if timer is not None:
                timer.cancel()
            client = getattr(getattr(storage, "bridge", None), "storage", None)  # redis.asyncio.Redis
            if client is not None:
                await client.aclose()


class RateLimit:
    """Refuse requests over their key's budget (429, RATE_LIMITED, Retry-After); charge what they ran."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        res: Resources = scope["app"].state.resources
        limiter: Limiter | None = scope["app"].state.web.limiter
        assert limiter is not None  # this middleware is there only with a rate limit
        key = presented_key(_headers(scope)) if keys_required(res.settings) else None
        who = identity(scope, key)
        content_type = header(scope, b"content-type")
        cost = 1 + (UPLOAD_COST if content_type.lower().startswith(b"multipart/") else 0)
        wait = await limiter.allow(who, min(cost, limiter.item.amount))  # a tiny budget still lets one through
        if wait is not None:
            res.metrics.rate_limited.inc()
            retry = ((b"retry-after", str(math.ceil(wait)).encode()),)
            await send_error(scope, send, 429, limiter.refusal(wait), "RATE_LIMITED", retry)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            info = current_request()
            if info is not None and (info.jobs or info.stops):
                await limiter.spend(who, JOB_COST * info.jobs + STOP_COST * info.stops)


def identity(scope: Scope, key: str | None) -> str:
    """Whose budget a request (or websocket) spends: its key's (hashed) when keys are required and
    `key` is the one it presented, else its client address's."""
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class SocketCounts:
    """Open websockets per identity, at most `cap` each, in this server process."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def enter(self, who: str) -> bool:
        """Count one more open websocket for `who`; False (and nothing counted) when it has `cap`."""
        if self._open.get(who, 0) >= self.cap:
            return False
        self._open[who] = self._open.get(who, 0) + 1
        return True

    def leave(self, who: str) -> None:
        """One of `who`'s websockets closed (synchronous: it runs in a cancelled task's cleanup too)."""
        left = self._open.get(who, 0) - 1
        if left > 0:
            self._open[who] = left
        else:
            self._open.pop(who, None)
