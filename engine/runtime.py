"""What the server process runs analysis with: the worker pool and the result cache."""

from engine._cache import CacheStats, LruMemoryCache, ResultCache
from engine._executor import Executor, PoolStats, WorkerCrashed

__all__ = ["CacheStats", "Executor", "LruMemoryCache", "PoolStats", "ResultCache", "WorkerCrashed"]
