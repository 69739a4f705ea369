"""Where analysis and parsing run: a pool of worker processes with a deadline per job.

Workers start on demand (a job that finds none free starts one, up to the pool's size) and one
idle for `idle_s` is stopped, so an idle server is one process.

Polars cannot be relied on to stop a running query, so a job that overruns its deadline (or
whose caller goes away) has its worker SIGKILLed; a replacement is spawned at once and the
caller gets `Timeout`. Workers run under a memory cap, so a query that needs too much memory
kills a worker, not the server (`TooLarge`). Jobs are module-level functions with plain-data
arguments and results, pickled over the worker's stdin and stdout.

`run_io` is for short blocking file work (fsync, rename) that needs no deadline: a thread.
`run_small` is for work that is provably small (a page read from page blocks): one of a few threads
of the server's own, never more of it at once than `small_limit` (a caller that finds the lane full
sends the work to a worker instead), so it can neither grow without bound nor starve the event loop.
`run_together` sends requests for the same plan that arrive together (a frame's `count` and `rows` in
one GraphQL request) to one worker in one job, which answers each on its own.
`in_background` runs server upkeep (making page blocks) one piece at a time, outside any request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import pickle
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from datagraph import tracing
from datagraph.errors import Timeout, TooLarge

if TYPE_CHECKING:
    from datagraph.metrics import Metrics

__all__ = ["Executor", "PoolStats", "WorkerCrashed"]

T = TypeVar("T")
log = logging.getLogger("datagraph.workers")
_HEADER = struct.Struct(">Q")
# How long a new worker may take to start (import Polars) before a job sent to it gives up; the
# start-up does not count against the job's deadline (a busy machine starts workers slowly).
_STARTUP_S = 60.0


# How many turns of the event loop a job of requests run together waits for more of them: the result
# fields of one GraphQL request start in the same turn and reach their work a turn or two apart.
_TOGETHER_TURNS = 4


class _Together:
    """Requests waiting to be sent to a worker in one job."""

    __slots__ = ("futures", "requests", "sent", "task", "waiting")

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.sent = False
        self.waiting = 0
        self.task: asyncio.Future[None] | None = None


class WorkerCrashed(Exception):
    """A worker died or failed in an unexpected way; the message is for the server's log only."""


@dataclass(slots=True)
class PoolStats:
    workers: int
    busy: int
    queued: int
    jobs: int
    killed: int
    crashed: int
    # Whether the pool can take jobs: it has a worker, or starts them on demand (an idle pool has none).
    ready: bool = True


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ready = False
        self.idle_since = time.monotonic()
        self.last_words: collections.deque[str] = collections.deque(maxlen=20)
        self.stderr_done = asyncio.ensure_future(self._forward_stderr())

    async def _forward_stderr(self) -> None:
        """Log what the worker writes to stderr, and keep its last lines to tell why it died."""
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.last_words.append(text)
            log.warning("worker %s: %s", self.proc.pid, text)

    async def ran_out_of_memory(self) -> bool:
        """Whether the worker (now dead) died of a failed allocation under its memory cap."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.stderr_done), 1.0)
        return any("memory allocation of" in line or "MemoryError" in line for line in self.last_words)

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self.proc.stdin is not None
        return self.proc.stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout

    async def read_frame(self) -> bytes:
        (size,) = _HEADER.unpack(await self.stdout.readexactly(_HEADER.size))
        return await self.stdout.readexactly(size) if size else b""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class Executor:
    """Up to `workers` worker processes, started when jobs need them; each runs one job at a time."""

    def __init__(
        self,
        workers: int,
        *,
        memory_mb: int = 0,
        timeout_s: float = 60.0,
        metrics: Metrics | None = None,
        on_job: Callable[[], None] | None = None,
        on_kill: Callable[[], None] | None = None,
        result_mb: float = 0,
        respawn_every_s: float = 1.0,
        idle_s: float = 0,
        small_threads: int = 2,
    ) -> None:
        """`on_job` is called in the caller's context each time a job is sent to a worker, and
        `on_kill` each time a job of the caller's is stopped at its deadline (the server charges
        a request's jobs and stops to its rate budget with them). An answer over `result_mb` (0: no
        cap) is refused in the worker as TOO_LARGE, before its bytes reach this process.

        Starting a worker costs about half a second of CPU (importing Polars), so killed workers are
        replaced at once up to a burst of `max(4, 2 * workers)`, then at most one per
        `respawn_every_s`: a storm of stopped jobs costs a bounded share of the CPU, not all of it.
        With `idle_s`, workers start on demand and one left idle for `idle_s` seconds is stopped (the
        next job starts one); 0: all start with the pool and stay. `small_threads` threads run small
        work (`run_small`), with at most twice as many pieces of it under way."""
        self.result_bytes = int(result_mb * 1024 * 1024)
        self.size = workers
        self.metrics = metrics
        self.on_job = on_job
        self.on_kill = on_kill
        self.respawn_every_s = respawn_every_s
        self._respawn_burst = float(max(4, 2 * workers))
        self._respawn_tokens = self._respawn_burst
        self._respawn_at = time.monotonic()
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="datagraph-io")
        self._small = ThreadPoolExecutor(max_workers=max(1, small_threads), thread_name_prefix="datagraph-small")
        self.small_limit = 2 * max(1, small_threads)
        self._small_running = 0
        self._background: dict[str, asyncio.Task[Any]] = {}
        self._together: dict[Any, _Together] = {}
        self._background_started: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._busy = 0
        self._waiting = 0
        self._jobs = 0
        self._killed = 0
        self._crashed = 0
        self._closed = False
        self._closing = asyncio.Event()
        self._reaping: set[asyncio.Task[None]] = set()
        self.idle_s = idle_s
        self._starting = 0  # workers being started for a job, or replacing a stopped one
        self._warming = False  # a worker started by `warm` is on its way, not yet taken by a job
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """With `idle_s`, workers start with the jobs that need them and the sweep that stops idle ones
        begins; without, the whole pool starts now and stays (the pre-started pool)."""
        if self.idle_s > 0:
            self._sweeper = asyncio.ensure_future(self._sweep_idle())
        else:
            await asyncio.gather(*(self._spawn() for _ in range(self.size)))

    async def _sweep_idle(self) -> None:
        every = max(0.05, min(self.idle_s / 4, 5.0))
        while not self._closed:
            await asyncio.sleep(every)
            now = time.monotonic()
            kept: list[_Worker] = []
            while not self._idle.empty():  # no await in between: no job takes a worker meanwhile
                worker = self._idle.get_nowait()
                if now - worker.idle_since >= self.idle_s and worker.proc.returncode is None:
                    self._dismiss(worker)
                else:
                    kept.append(worker)
            for worker in kept:
                self._idle.put_nowait(worker)

    def _dismiss(self, worker: _Worker) -> None:
        """Stop an idle worker (end of its input: it exits) without replacing it."""
        self._all.discard(worker)
        if self.metrics:
            self.metrics.workers.dec()
        with contextlib.suppress(Exception):
            worker.stdin.close()
        log.info("worker %s idle; stopped", worker.proc.pid)
        task = asyncio.ensure_future(self._reap(worker, replace=False))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    def warm(self) -> None:
        """Start a worker now if an on-demand pool has none (nor one starting): a request that will need
        one (an upload, while its file is still arriving) need not wait for its imports after that.
        Never past the pool's size; the idle sweep stops it again if no job comes."""
        if self.idle_s <= 0 or self._closed or self._all or self._starting:
            return
        self._starting += 1  # now, not when the task first runs: the next request must see it
        self._warming = True  # the first job to come takes this one rather than start its own
        task = asyncio.ensure_future(self._start_one(claimed=True))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    def release_idle(self) -> None:
        """Stop every idle worker now (an on-demand pool only): the server's start-up work (plugin
        files inspected in workers) need not leave workers behind it."""
        if self.idle_s <= 0:
            return
        while not self._idle.empty():
            self._dismiss(self._idle.get_nowait())

    async def _start_one(self, *, claimed: bool = False) -> None:
        """Start a worker for a job that finds none free, while the pool is under its size. It joins
        the free workers once started, so the job takes whichever comes first: a busy worker that
        finishes in milliseconds, or this one after its half second of imports. `claimed`: the caller
        counted it as starting already."""
        if not claimed:
            self._starting += 1
        try:
            worker = await self._spawn(queue=False)
        finally:
            self._starting -= 1
        task = asyncio.ensure_future(self._when_ready(worker))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _when_ready(self, worker: _Worker) -> None:
        try:
            await asyncio.wait_for(worker.read_frame(), _STARTUP_S)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            if self._closed:  # closing ended it; `close` accounts for it
                return
            self._crashed += 1
            log.warning("worker %s did not start", worker.proc.pid)
            worker.kill()
            self._dismiss(worker)
            return
        if self._closed:
            return
        worker.ready = True
        worker.idle_since = time.monotonic()
        self._warming = False  # a warmed worker is a free one now, like any other
        self._idle.put_nowait(worker)

    async def _spawn(self, *, queue: bool = True) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine._worker",
            str(self.memory_mb),
            str(self.result_bytes),
            tracing.endpoint(),  # tracing: the worker sends its spans to the same collector
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        worker = _Worker(proc)
        self._all.add(worker)
        if self.metrics:
            self.metrics.workers.inc()
        if queue:
            self._idle.put_nowait(worker)  # a job sent before it is ready waits in its pipe
        return worker

    def _retire(self, worker: _Worker) -> None:
        """Kill a worker, reap it in the background, and start another in its place."""
        worker.kill()
        self._all.discard(worker)
        if self.metrics:
            self.metrics.workers.dec()
        self._starting += 1  # its replacement, counted from now so that no job starts another meanwhile
        task = asyncio.ensure_future(self._reap(worker))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _reap(self, worker: _Worker, *, replace: bool = True) -> None:
        if not replace:
            try:
                await asyncio.wait_for(worker.proc.wait(), 5.0)
            except TimeoutError:
                worker.kill()
        with contextlib.suppress(Exception):
            await worker.proc.wait()
            await asyncio.wait_for(worker.stderr_done, 1.0)
        if not replace:
            return
        try:
            delay = self._respawn_delay()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
            if not self._closed:
                await self._spawn()
        finally:
            self._starting -= 1

    def _respawn_delay(self) -> float:
        """How long the next replacement waits: a token bucket of `max(4, 2 * workers)` replacements,
        refilled one per `respawn_every_s`."""
        now = time.monotonic()
        if self.respawn_every_s > 0:
            refill = (now - self._respawn_at) / self.respawn_every_s
            self._respawn_tokens = min(self._respawn_burst, self._respawn_tokens + refill)
        else:
            self._respawn_tokens = self._respawn_burst
        self._respawn_at = now
        self._respawn_tokens -= 1
        return max(0.0, -self._respawn_tokens * self.respawn_every_s)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn` in a worker (see `_run`), traced as a `job` span when tracing is on."""
        if not tracing.enabled():
            return await self._run(fn, *args, **kwargs)
        with tracing.span("job", {"datagraph.job.kind": _name(fn)}):
            return await self._run(fn, *args, **kwargs)

    async def _run(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        timeout: float | None = None,
        deadline_s: float | None = None,
        timeout_message: str | None = None,
        upkeep: bool = False,
        **kwargs: Any,
    ) -> T:
        """Run `fn(*args, **kwargs)` in a worker; `Timeout` past `timeout` seconds (a request's own,
        never above the job's deadline), counting the wait for a free worker. The job's deadline is
        the server's analysis deadline unless `deadline_s` sets another (imports, plugin fetches),
        whose `timeout_message` then says which setting that is. An `upkeep` job (the server's own, such
        as making page blocks) is not counted among the jobs run for requests."""
        cap = self.timeout_s if deadline_s is None else deadline_s
        limit = cap if timeout is None else min(timeout, cap)
        job = pickle.dumps((fn, args, kwargs, tracing.carrier()), protocol=5)
        started = time.monotonic()
        if self.on_job is not None and not upkeep:
            self.on_job()
        warmed, self._warming = self._warming, False
        spawned = not warmed and self._idle.empty() and len(self._all) + self._starting < self.size and not self._closed
        if spawned:
            await self._start_one()
        with self._counted("_waiting", self.metrics.jobs_queued if self.metrics else None), tracing.span("job.wait"):
            try:  # waiting for a worker this job started is its start-up, not the job's time
                worker = await asyncio.wait_for(self._idle.get(), limit + _STARTUP_S if spawned or warmed else limit)
            except TimeoutError:
                raise self._timeout(limit, timeout_message) from None
        if spawned or warmed:
            started = time.monotonic()
        if not upkeep:
            self._jobs += 1
            if self.metrics:
                self.metrics.jobs.inc()
        with self._counted("_busy", self.metrics.workers_busy if self.metrics else None), tracing.span("job.run"):
            try:
                if not worker.ready:  # a replacement still starting: its start-up is not the job's time
                    starting = time.monotonic()
                    await asyncio.wait_for(worker.read_frame(), _STARTUP_S)
                    worker.ready = True
                    started += time.monotonic() - starting
                remaining = max(0.0, limit - (time.monotonic() - started))
                kind, value = await asyncio.wait_for(self._exchange(worker, job), remaining)
            except TimeoutError:
                self._lost(worker, "deadline")
                if self.on_kill is not None:
                    self.on_kill()
                log.warning("job %s passed its %.1f s deadline; worker %s killed", _name(fn), limit, worker.proc.pid)
                raise self._timeout(limit, timeout_message) from None
            except asyncio.CancelledError:
                self._lost(worker, "cancelled")
                log.info("job %s cancelled by its caller; worker %s killed", _name(fn), worker.proc.pid)
                raise
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
                self._lost(worker, "crashed")
                code = await worker.proc.wait()
                if await worker.ran_out_of_memory():  # a failed allocation under the cap aborts the process
                    raise self._memory() from None
                raise WorkerCrashed(f"worker {worker.proc.pid} exited with {code} while running {_name(fn)}") from None
        worker.idle_since = time.monotonic()
        self._idle.put_nowait(worker)
        if kind == "ok":
            return value  # type: ignore[no-any-return]
        if kind == "problem":
            raise value
        if kind == "memory":
            raise self._memory()
        raise WorkerCrashed(f"{_name(fn)} failed in a worker:\n{value}")

    @contextlib.contextmanager
    def _counted(self, attr: str, gauge: Any) -> Iterator[None]:
        """Count one more in `attr` (and its gauge) while the block runs."""
        setattr(self, attr, getattr(self, attr) + 1)
        if gauge is not None:
            gauge.inc()
        try:
            yield
        finally:
            setattr(self, attr, getattr(self, attr) - 1)
            if gauge is not None:
                gauge.dec()

    def _lost(self, worker: _Worker, reason: str) -> None:
        """A worker killed (deadline, cancelled) or dead (crashed): counted, and replaced."""
        if reason == "crashed":
            self._crashed += 1
        else:
            self._killed += 1
        if self.metrics:
            self.metrics.worker_kills.labels(reason).inc()
        self._retire(worker)

    async def _exchange(self, worker: _Worker, job: bytes) -> tuple[str, Any]:
        if not worker.ready:
            await worker.read_frame()  # the empty frame a worker sends once it has started
            worker.ready = True
        worker.stdin.write(_HEADER.pack(len(job)) + job)
        await worker.stdin.drain()
        answer: tuple[str, Any] = pickle.loads(await worker.read_frame())  # noqa: S301  (our own worker)
        return answer

    def _timeout(self, limit: float, message: str | None) -> Timeout:
        return Timeout(
            message
            or f"The query did not finish within its {limit:g} s deadline and was stopped"
            " (lower it with timeoutMs; the server's cap is the timeout_s setting)."
        )

    def _memory(self) -> TooLarge:
        return TooLarge(
            f"The query needed more memory than a worker may use ({self.memory_mb} MiB, setting worker_memory_mb)"
            " and was stopped; filter or select columns first."
        )

    async def run_io(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run short blocking file work (fsync, rename) on a thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    async def run_together(
        self, key: Any, fn: Callable[..., list[tuple[str, Any]]], /, *args: Any, request: Any, timeout: float | None
    ) -> Any:
        """One answer of `fn(*args, requests=[...])`, run in a worker (as `run` does) for this request and
        every other one with the same `key` (which must say what `args` and `timeout` are) that arrives
        within a few turns of the event loop. `fn` answers ("ok", value) or ("problem", exception) for
        each request, in order; a failure of the whole job (deadline, crash) is every request's. A
        request whose caller leaves is dropped from the job; the job is stopped when all have left."""
        together = self._together.get(key)
        if together is None or together.sent:
            together = _Together()
            self._together[key] = together
            together.task = asyncio.ensure_future(self._send_together(key, together, fn, args, timeout))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        together.requests.append(request)
        together.futures.append(future)
        together.waiting += 1
        try:
            return await asyncio.shield(future)
        finally:
            together.waiting -= 1
            if together.waiting == 0 and together.task is not None and not together.task.done():
                together.task.cancel()

    async def _send_together(
        self, key: Any, together: _Together, fn: Callable[..., list[tuple[str, Any]]], args: Any, timeout: float | None
    ) -> None:
        try:
            for _ in range(_TOGETHER_TURNS):
                await asyncio.sleep(0)
        finally:
            together.sent = True
            if self._together.get(key) is together:
                del self._together[key]
        try:
            answers = await self.run(fn, *args, requests=together.requests, timeout=timeout)
        except asyncio.CancelledError:
            for future in together.futures:
                future.cancel()
            raise
        except Exception as exc:
            for future in together.futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, (kind, value) in zip(together.futures, answers, strict=True):
            if future.done():
                continue
            if kind == "ok":
                future.set_result(value)
            else:
                future.set_exception(value)

    def small_free(self) -> bool:
        """Whether `run_small` may take one more piece of work now (ask, then call it, with no await between)."""
        return self._small_running < self.small_limit and not self._closed

    async def run_small(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run provably small work on one of the server's own threads: no worker round trip, no
        deadline (it has no use for one). Only after `small_free()` said yes."""
        self._small_running += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._small, functools.partial(fn, *args, **kwargs))
        finally:
            self._small_running -= 1

    def in_background(self, key: str, make: Callable[[], Awaitable[Any]]) -> bool:
        """Start `make()` as upkeep of the server's own, outside the request that asked for it (no rate
        budget charged, not cancelled with it), unless upkeep is under way already (one at a time) or
        `key` was started before in this process (the 1,024 most recent keys are remembered): a piece
        that failed is not tried again on every request. Whether it started."""
        if self._closed or self._background or key in self._background_started:
            return False
        self._background_started[key] = None
        while len(self._background_started) > 1024:
            self._background_started.popitem(last=False)

        async def run() -> None:
            try:
                await make()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("background work %s failed", key, exc_info=True)

        task = asyncio.get_running_loop().create_task(run(), context=contextvars.Context())
        self._background[key] = task
        task.add_done_callback(lambda _: self._background.pop(key, None))
        return True

    async def quiet(self, for_s: float = 0.25) -> None:
        """Return once no job has run or waited for `for_s` seconds: upkeep takes a worker only while
        no request wants one."""
        calm_since = time.monotonic()
        while True:
            if self._busy or self._waiting:
                calm_since = time.monotonic()
            elif time.monotonic() - calm_since >= for_s:
                return
            await asyncio.sleep(for_s / 5)

    async def background_done(self) -> None:
        """Wait for the upkeep under way (tests, and a clean shutdown)."""
        while self._background:
            await asyncio.gather(*self._background.values(), return_exceptions=True)

    def stats(self) -> PoolStats:
        return PoolStats(
            workers=len(self._all),
            busy=self._busy,
            queued=self._waiting,
            jobs=self._jobs,
            killed=self._killed,
            crashed=self._crashed,
            ready=not self._closed and (bool(self._all) or self.idle_s > 0),
        )

    async def close(self) -> None:
        self._closed = True
        self._closing.set()
        for task in list(self._background.values()):
            task.cancel()
        await asyncio.gather(*self._background.values(), return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for worker in list(self._all):
            with contextlib.suppress(Exception):
                worker.stdin.close()
        deadline = time.monotonic() + 2
        for worker in list(self._all):
            try:
                await asyncio.wait_for(worker.proc.wait(), max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                worker.kill()
                await worker.proc.wait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.stderr_done, 1.0)
        if self.metrics:
            self.metrics.workers.dec(len(self._all))
        self._all.clear()
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)
        self._threads.shutdown(wait=True, cancel_futures=True)
        self._small.shutdown(wait=True, cancel_futures=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: the request that would have raised it may have left."""
    if not future.cancelled():
        future.exception()


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))
