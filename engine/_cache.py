"""The result cache: memory, and Redis through aiocache, behind one small class.

Values are opaque bytes under keys that already carry every dataset version a result read, so
an entry is never stale, only unused; the LRU drops it when memory is needed.

- Memory (always): `LruMemoryCache`, bounded by bytes (aiocache's own memory cache has no bound),
  least recently used out first; a dict of ours, with aiocache's get/set/delete calls.
- Redis (when a `redis://` URL is set): aiocache's `RedisCache` with a short per-operation timeout,
  in front of which memory still answers first. A Redis error or timeout is logged once, Redis is
  left alone for a few seconds, and the memory cache carries on: never a user-visible error.

aiocache is imported only when Redis is configured: importing it imports redis-py (and through it
OpenTelemetry), about a second of every server start and CLI run otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from datagraph import tracing

if TYPE_CHECKING:
    from aiocache import RedisCache

    from datagraph.metrics import Metrics

__all__ = ["CacheStats", "LruMemoryCache", "ResultCache"]

log = logging.getLogger("datagraph.cache")
_PREFIX = "datagraph:result:"
_RETRY_REDIS_S = 5.0


class LruMemoryCache:
    """Values of at most `max_bytes` in all (keys counted too), least recently used out first; each
    entry may expire `ttl` seconds after it was set. `get`, `set` and `delete`, as aiocache names them."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, expires at)

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] and entry[1] < time.monotonic():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        size = len(value) + len(key)
        if size > self.max_bytes:
            return False  # larger than the whole budget: not worth evicting everything for
        self._drop(key)
        while self.used + size > self.max_bytes:
            self._drop(next(iter(self._data)))
        self._data[key] = (value, time.monotonic() + ttl if ttl else 0.0)
        self.used += size
        return True

    async def delete(self, key: str) -> int:
        return 1 if self._drop(key) else 0

    def _drop(self, key: str) -> bool:
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        self.used -= len(entry[0]) + len(key)
        return True

    def __len__(self) -> int:
        return len(self._data)


class CacheStats:
    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0


class ResultCache:
    """get/set of result bytes by key: memory first, then Redis when configured."""

    def __init__(
        self,
        *,
        memory_bytes: int,
        url: str = "",
        timeout_s: float = 0.25,
        ttl_s: int = 86_400,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.memory = LruMemoryCache(memory_bytes)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.redis: RedisCache | None = _redis(url, timeout_s) if url else None
        self.stats = CacheStats()
        self._redis_down_until = 0.0

    @property
    def backend(self) -> str:
        return "redis+memory" if self.redis is not None else "memory"

    async def get(self, key: str) -> bytes | None:
        """The bytes under `key`, or None; a `cache.lookup` span (hit or miss) when tracing is on."""
        if not tracing.enabled():
            return await self._get(key)
        with tracing.span("cache.lookup", {"datagraph.cache.backend": self.backend}) as traced:
            value = await self._get(key)
            traced.set_attribute("datagraph.cache.hit", value is not None)
            return value

    async def _get(self, key: str) -> bytes | None:
        value: bytes | None = await self.memory.get(key)
        if value is None and self._redis_usable():
            value = await self._on_redis("get", _PREFIX + key)
            if value is not None:
                await self.memory.set(key, value, ttl=self.ttl_s)
        if value is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        if self.metrics:
            self.metrics.cache.labels("miss" if value is None else "hit").inc()
        return value

    async def set(self, key: str, value: bytes) -> None:
        await self.memory.set(key, value, ttl=self.ttl_s)
        if self._redis_usable():
            await self._on_redis("set", _PREFIX + key, value)

    async def delete(self, key: str) -> None:
        """Forget one entry (a hit that turned out unusable)."""
        await self.memory.delete(key)
        if self._redis_usable():
            await self._on_redis("delete", _PREFIX + key)

    async def check(self) -> str:
        """ok, or for Redis that does not answer now: degraded (results are kept in memory meanwhile)."""
        if self.redis is None:
            return "ok"
        try:
            await asyncio.wait_for(self.redis.client.ping(), self.timeout_s)
        except Exception:
            return "degraded"
        return "ok"

    def _redis_usable(self) -> bool:
        return self.redis is not None and time.monotonic() >= self._redis_down_until

    async def _on_redis(self, op: str, key: str, value: bytes | None = None) -> Any:
        assert self.redis is not None
        try:
            if op == "get":
                return await self.redis.get(key, timeout=self.timeout_s)
            if op == "set":  # SET with PX directly: aiocache's setex path warns under redis-py 8
                return await self.redis.raw("set", key, value, px=self.ttl_s * 1000, timeout=self.timeout_s)
            return await self.redis.delete(key, timeout=self.timeout_s)
        except Exception as exc:  # a timeout too: TimeoutError is an Exception
            if time.monotonic() >= self._redis_down_until:
                log.warning(
                    "result cache: Redis %s failed (%s); using memory only for %g s",
                    op,
                    type(exc).__name__,
                    _RETRY_REDIS_S,
                )
            self._redis_down_until = time.monotonic() + _RETRY_REDIS_S
            return None

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.client.aclose()


def _redis(url: str, timeout_s: float) -> RedisCache:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("cache_url must be empty (memory) or a redis:// URL")
    db = int(parts.path.strip("/") or 0)
    from aiocache import RedisCache
    from aiocache.serializers import BaseSerializer

    class _Bytes(BaseSerializer):  # type: ignore[misc]
        """Values are bytes already: store them as they are."""

        DEFAULT_ENCODING = None

        def dumps(self, value: Any) -> Any:
            return value

        def loads(self, value: Any) -> Any:
            return value

    return RedisCache(
        serializer=_Bytes(),
        endpoint=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=db,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme == "rediss",
        create_connection_timeout=timeout_s,
        connection_pool_kwargs={"socket_timeout": timeout_s},
        timeout=timeout_s,
    )
