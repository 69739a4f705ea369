"""Each request's id and cost, the logs that carry them, and the middleware that counts requests.

Every HTTP request gets an id (the client's `X-Request-Id` when it is a plain token, else a new
one), answered in the `X-Request-Id` header and put on every log line written while the request
runs, including the one with the full traceback of a masked error and its error id.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.responses import header

if TYPE_CHECKING:
    from datagraph.metrics import Metrics

__all__ = [
    "Observe",
    "RequestInfo",
    "answering",
    "configure_logging",
    "count_job",
    "count_stop",
    "current_request",
    "new_request_id",
    "route_label",
]

log = logging.getLogger("datagraph.access")
_CLIENT_ID = re.compile(rb"^[A-Za-z0-9._-]{8,64}$")
_ROUTES = ("/graphql", "/graphql/stream", "/healthz", "/readyz", "/metrics")


@dataclass(slots=True)
class RequestInfo:
    """What the server knows of the request it is working on."""

    id: str
    jobs: int = 0  # jobs run in worker processes for it (results not from the cache)
    stops: int = 0  # jobs of its stopped at their deadline, and its answer abandoned by its client


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("datagraph_request", default=None)


def current_request() -> RequestInfo | None:
    """The request being answered, if any (tasks started while answering it inherit it)."""
    return _current.get()


_ID_PREFIX = uuid.uuid4().hex[:6]  # this process's; a counter follows it (cheaper than a uuid a request)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes: this process's random prefix and a counter (16 hex)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFF:010x}"


@contextlib.contextmanager
def answering(info: RequestInfo) -> Iterator[RequestInfo]:
    """`info` is the request being answered for the block: a websocket operation, in its own task
    (HTTP requests get theirs from `Observe`)."""
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


def count_job() -> None:
    """Count a job run in a worker process for the request being answered, if any (its rate cost)."""
    info = _current.get()
    if info is not None:
        info.jobs += 1


def count_stop() -> None:
    """Count a job of the request being answered stopped at its deadline, or the request abandoned
    by its client while its work ran (each can cost a worker restart; its rate cost)."""
    info = _current.get()
    if info is not None:
        info.stops += 1


def route_label(path: str) -> str:
    """A bounded label for a path: export tokens and static files are not distinct routes."""
    if path in _ROUTES or path == "/":
        return path
    for prefix in ("/exports/", "/static/"):
        if path.startswith(prefix):
            return prefix + "*"
    return "(other)"


class Observe:
    """Outermost middleware: gives each request its id, logs one access line and counts it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # The metrics' children by (method, route, status): looked up by label every request otherwise.
        # Bounded: methods and statuses are few, and routes are `route_label`'s few.
        self._labelled: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        found = self._labelled.get(key)
        if found is None:
            found = (
                self.metrics.http_requests.labels(method, route, str(status)),
                self.metrics.http_latency.labels(method, route),
            )
            if len(self._labelled) < 1024:  # a client inventing methods does not grow it
                self._labelled[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        info = RequestInfo(given.decode() if _CLIENT_ID.match(given) else new_request_id())
        token = _current.set(info)
        started = time.perf_counter()
        status = 500

        async def send_with_id(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg["headers"] = [*msg.get("headers", []), (b"x-request-id", info.id.encode())]
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
            elapsed = time.perf_counter() - started
            method, route = scope["method"], route_label(scope["path"])
            counted, timed = self._children(method, route, status)
            counted.inc()
            timed.observe(elapsed)
            log.info(
                "%s %s %d %.1f ms",
                method,
                scope["path"],
                status,
                elapsed * 1000,
                extra={"request_id": info.id, "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )


class _RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record written while it runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            info = _current.get()
            record.request_id = info.id if info else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request and error ids, traceback."""

    _EXTRA = ("request_id", "error_id", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k in self._EXTRA if (v := getattr(record, k, None)) is not None})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{k}={v}" for k in ("request_id", "error_id") if (v := getattr(record, k, None)))
        return f"{line} [{ids}]" if ids else line


def configure_logging(level: str, fmt: str) -> None:
    """Send every logger (uvicorn's too) to stderr, as text or JSON lines, with request ids."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
