"""The one place analysis and parsing work runs, off the event loop.

Today a bounded thread pool; the interface (`await run(fn, *args, **kwargs)` with plain-data
arguments and results) is what a pool of killable worker processes will keep.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Executor"]

T = TypeVar("T")


class Executor:
    """Runs blocking work on a small pool so the server keeps answering meanwhile."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datagraph-work")

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
