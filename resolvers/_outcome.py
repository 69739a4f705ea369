"""The plain form of every analysis answer, and the one wrapper that produces it.

`answer` times the work, turns expected failures (`DatagraphError`) into a problem with their own
message, and unexpected ones into an INTERNAL problem with an error id that is also logged with
the full traceback. The GraphQL layer maps an `Outcome` onto the `Result` type one to one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from datagraph import jsonutil
from datagraph.errors import BadInput, DatagraphError
from engine import ColumnInfo
from resolvers.context import Context

__all__ = [
    "CACHE_MODES",
    "ENGINE_VERSION",
    "Options",
    "Outcome",
    "Problem",
    "analysed",
    "answer",
    "cache_key",
    "internal_problem",
    "timeout_seconds",
]

log = logging.getLogger("datagraph")

# Part of every cache key: bump when a result's meaning changes for the same arguments.
ENGINE_VERSION = "2"
CACHE_MODES = ("USE", "REFRESH", "BYPASS")
_ENVELOPE = b"dg2:"  # cached values start with this; anything else is a miss


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
    match_rate: float | None = None
    null_keys: int | None = None
    elapsed_ms: float = 0.0
    cached: bool = False
    cache_key: str = ""

    @property
    def success(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class Options:
    """How one result field runs: its cache mode and its own deadline (never above the server's)."""

    cache: str = "USE"  # USE: answer from the cache when it can; REFRESH: recompute and store; BYPASS: neither
    timeout_ms: int | None = None


def cache_key(operation: str, arguments: dict[str, Any], plan_key: dict[str, Any]) -> str:
    return jsonutil.canonical_hash({"op": operation, "args": arguments, "plan": plan_key, "engine": ENGINE_VERSION})


def internal_problem(exc: BaseException, where: str) -> Problem:
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (error id %s)", where, error_id, exc_info=exc, extra={"error_id": error_id})
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


def _encode(outcome: Outcome) -> bytes:
    """The envelope, the meta as one line of JSON, a newline, then the data's JSON. Data that came
    encoded (a page of rows) is stored as it is and comes back `Encoded`, so a hit is not decoded."""
    columns = [[c.name, c.dtype, c.null_count, c.missing_rate] for c in outcome.columns]
    encoded = isinstance(outcome.data, jsonutil.Encoded)
    head = {
        "n": outcome.row_count,
        "c": columns,
        "t": outcome.truncated,
        "m": outcome.match_rate,
        "e": encoded,
        "k": outcome.null_keys,
    }
    data = outcome.data.raw if encoded else jsonutil.dumps(outcome.data)
    return b"".join((_ENVELOPE, jsonutil.dumps(head), b"\n", data))  # orjson's JSON holds no raw newline


def _decode(raw: bytes) -> Outcome | None:
    """The cached outcome, or None for anything that is not one of ours (a garbled entry is a miss)."""
    if not raw.startswith(_ENVELOPE):
        return None
    head_end = raw.find(b"\n", len(_ENVELOPE))
    if head_end < 0:
        return None
    try:
        head = jsonutil.loads(raw[len(_ENVELOPE) : head_end])
        data = raw[head_end + 1 :]
        columns = [ColumnInfo(name, dtype, nulls, rate) for name, dtype, nulls, rate in head["c"]]
        return Outcome(
            data=jsonutil.Encoded(data) if head["e"] is True else jsonutil.loads(data),
            row_count=head["n"],
            columns=columns,
            truncated=bool(head["t"]),
            match_rate=head["m"],
            null_keys=head.get("k"),
        )
    except (ValueError, KeyError, TypeError):
        return None


async def analysed(
    ctx: Context,
    operation: str,
    arguments: dict[str, Any],
    plan_key: dict[str, Any],
    work: Callable[[float | None], Awaitable[Outcome]],
    options: Options,
    *,
    still_valid: Callable[[Outcome], bool] | None = None,
) -> Outcome:
    """`answer` for a result field: look in the cache first (mode USE), run `work` with the request's
    deadline in seconds on a miss, and store a success (unless BYPASS). Problems are never cached,
    and a cancelled request stores nothing."""
    if "refused" in plan_key:  # too many steps, refused SQL: nothing is built, run or cached
        return Outcome(problem=Problem(str(plan_key.get("code", "BAD_INPUT")), str(plan_key["refused"])))
    key = cache_key(operation, arguments, plan_key)
    if plan_key.get("live"):  # a linked table changes without a new version: never cached
        options = Options(cache="BYPASS", timeout_ms=options.timeout_ms) if options.cache in CACHE_MODES else options
    started = time.perf_counter()
    cache = ctx.resources.cache
    if options.cache == "USE":
        raw = await cache.get(key)
        hit = _decode(raw) if raw is not None else None
        if hit is not None and (still_valid is None or still_valid(hit)):
            hit.cached = True
            hit.cache_key = key
            hit.elapsed_ms = (time.perf_counter() - started) * 1000
            return hit
        if raw is not None:
            await cache.delete(key)

    async def run() -> Outcome:
        if options.cache not in CACHE_MODES:
            raise BadInput(f"cache must be one of {', '.join(CACHE_MODES)}.")
        return await work(timeout_seconds(ctx, options.timeout_ms))

    async def run_and_store() -> Outcome:
        outcome = await answer(key, run, where=operation)
        if outcome.success and options.cache != "BYPASS":
            await cache.set(key, _encode(outcome))
        return outcome

    grace = ctx.settings.finish_grace_s
    outcome = await _shared(key if options.cache == "USE" else None, run_and_store, grace)
    outcome.elapsed_ms = (time.perf_counter() - started) * 1000
    return outcome


def timeout_seconds(ctx: Context, timeout_ms: int | None) -> float | None:
    """A request's own deadline in seconds (None: the server's), refused below `min_timeout_ms`: a
    deadline of a millisecond does nothing but stop a worker that then has to be started again."""
    if timeout_ms is None:
        return None
    floor = ctx.settings.min_timeout_ms
    if timeout_ms < floor:
        raise BadInput(f"timeoutMs must be at least {floor:,} milliseconds (setting min_timeout_ms).")
    return timeout_ms / 1000


@dataclass(slots=True)
class _Inflight:
    task: asyncio.Task[Outcome]
    waiters: int = 0
    stop: asyncio.TimerHandle | None = None


# Work under way, by cache key: a request that finds its key here waits for that answer instead of
# computing it again (watches of one pipeline recompute together after each change). The work runs
# in a task of its own. When the last request waiting for it goes away (a watch unsubscribed, a
# client disconnected), it runs on for `finish_grace_s` to finish into the cache (a request for the
# same answer meanwhile joins it) and only then is stopped, its worker killed: a client that leaves
# at once makes the server stop no short job, so leaving is no lever to make it restart workers.
_inflight: dict[str, _Inflight] = {}


async def _shared(key: str | None, make: Callable[[], Awaitable[Outcome]], grace_s: float) -> Outcome:
    """`make()` in a task of its own, shared by the requests for `key` (None: not shared)."""
    entry = _inflight.get(key) if key is not None else None
    mine = entry is None
    if entry is None:
        entry = _Inflight(asyncio.ensure_future(make()))
        if key is not None:
            _inflight[key] = entry
            entry.task.add_done_callback(lambda _: _forget(key, entry))
    if entry.stop is not None:  # it was about to be stopped: this request wants it after all
        entry.stop.cancel()
        entry.stop = None
    entry.waiters += 1
    try:
        outcome = await asyncio.shield(entry.task)
    finally:
        entry.waiters -= 1
        if entry.waiters == 0 and not entry.task.done():
            if grace_s > 0:
                entry.stop = asyncio.get_running_loop().call_later(grace_s, _stop, key, entry)
            else:
                _stop(key, entry)
    if mine:
        return outcome
    if outcome.problem is not None and outcome.problem.code == "TIMEOUT":
        return await make()  # the deadline may have been the other request's own: try with ours
    return replace(outcome, cached=outcome.success, columns=list(outcome.columns))


def _stop(key: str | None, entry: _Inflight) -> None:
    """Stop work nobody waits for any more (its worker is killed); a request for it from now on starts afresh."""
    if entry.waiters == 0 and not entry.task.done():
        entry.task.cancel()
    if key is not None:
        _forget(key, entry)


def _forget(key: str, entry: _Inflight) -> None:
    if _inflight.get(key) is entry:
        del _inflight[key]
