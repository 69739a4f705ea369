"""Locks by key (a dataset id, a plugin fetch) that exist only while someone holds or waits for them.

A dict of `asyncio.Lock` per key grows by one entry for every key ever seen: a client that names a
million datasets leaves a million locks behind. `KeyedLocks` counts the holders and waiters of each
key and forgets the lock when the last one leaves, so its size is bounded by the work in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["KeyedLocks"]


class KeyedLocks:
    """One `asyncio.Lock` per key, kept only while in use."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of `key` for the block (waiting for whoever holds it now)."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """How many keys have a holder or a waiter now."""
        return len(self._locks)
