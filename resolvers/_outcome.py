"""The plain form of every analysis answer, and the one wrapper that produces it.

`answer` times the work, turns expected failures (`DatagraphError`) into a problem with their own
message, and unexpected ones into an INTERNAL problem with an error id that is also logged with
the full traceback. The GraphQL layer maps an `Outcome` onto the `Result` type one to one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from datagraph import jsonutil
from datagraph.errors import DatagraphError
from storage import ColumnInfo

__all__ = ["ENGINE_VERSION", "Outcome", "Problem", "answer", "cache_key", "internal_problem"]

log = logging.getLogger("datagraph")

# Part of every cache key: bump when a result's meaning changes for the same arguments.
ENGINE_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    message: str


@dataclass(slots=True)
class Outcome:
    """What one result field answers: data on success, a problem otherwise, and meta either way."""

    data: Any = None
    problem: Problem | None = None
    row_count: int | None = None
    columns: list[ColumnInfo] = field(default_factory=list)
    truncated: bool = False
    elapsed_ms: float = 0.0
    cached: bool = False
    cache_key: str = ""

    @property
    def success(self) -> bool:
        return self.problem is None


def cache_key(operation: str, arguments: dict[str, Any], plan_key: dict[str, Any]) -> str:
    return jsonutil.canonical_hash({"op": operation, "args": arguments, "plan": plan_key, "engine": ENGINE_VERSION})


def internal_problem(exc: BaseException, where: str) -> Problem:
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (error id %s)", where, error_id, exc_info=exc)
    return Problem("INTERNAL", f"Something went wrong on the server (error id {error_id}); the error is logged.")


async def answer(key: str, work: Callable[[], Awaitable[Outcome]], *, where: str) -> Outcome:
    """Run `work`, fill in timing and the cache key, and catch every failure into a problem."""
    started = time.perf_counter()
    try:
        outcome = await work()
    except DatagraphError as exc:
        outcome = Outcome(problem=Problem(exc.code, exc.message))
    except Exception as exc:
        outcome = Outcome(problem=internal_problem(exc, where))
    outcome.elapsed_ms = (time.perf_counter() - started) * 1000
    outcome.cache_key = key
    return outcome
