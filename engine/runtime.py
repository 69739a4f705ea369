"""What the server process runs analysis with: the worker pool, the result cache and the job tracker.

Kept apart from `engine` itself, which the worker processes import: nothing here is loaded there.
"""

from engine._cache import CacheStats, LruMemoryCache, ResultCache
from engine._executor import Executor, PoolStats, WorkerCrashed
from engine._jobs import CANCELLED_MESSAGE, JobTracker, checked_job_id, job_exists

__all__ = [
    "CANCELLED_MESSAGE",
    "CacheStats",
    "Executor",
    "JobTracker",
    "LruMemoryCache",
    "PoolStats",
    "ResultCache",
    "WorkerCrashed",
    "checked_job_id",
    "job_exists",
]
