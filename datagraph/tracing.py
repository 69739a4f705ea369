"""OpenTelemetry tracing: spans sent over OTLP/HTTP when the `otel_endpoint` setting is given.

Every layer calls the few functions here (`span`, `begin`/`finish`, `carrier`), which cost one
global lookup and do nothing while tracing is off: nothing of opentelemetry is imported until
`configure` is called with an endpoint. The server process configures it when its app starts,
each worker process when it starts; a job carries its caller's trace context (`carrier`) to
the worker, whose span continues it (`span(..., parent=carrier)`).

Attributes are names only (operation type and name, field name, dataset id, job kind, status,
cache hit, database dialect): never query text, values, keys, DSNs or paths. An exception marks
its span failed with the exception's class name; its message and traceback are not recorded.

The state is process-wide, as OpenTelemetry's own context is: the hooks sit deep in the engine
and connectors, where no resource object reaches, and a process sends its spans to one collector.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "AttributeValue", "SpanLike", "Tracing", "begin", "carrier", "configure", "enabled", "endpoint", "finish", "span",
]  # fmt: skip

log = logging.getLogger("datagraph.tracing")
AttributeValue = str | bool | int | float
MAX_QUEUE = 2_048  # spans waiting for export; past it new ones are dropped, never waited for
SPARSE_LOG_S = 60.0  # the SDK's "queue full" warning, at most once in this many seconds
CLOSE_TIMEOUT_S = 3.0  # at shutdown, the last spans have this long to go
EXPORT_TIMEOUT_S = 5.0  # one export (with its retries) gives up after this; a dead collector costs nothing more


class SpanLike(Protocol):
    def set_attribute(self, key: str, value: Any) -> None: ...


class _NoSpan:
    """What a block gets while tracing is off: attributes set on it go nowhere."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None


_NO_SPAN = _NoSpan()
_OFF: contextlib.nullcontext[_NoSpan] = contextlib.nullcontext(_NO_SPAN)


class Tracing:
    """This process's tracer provider (batching exporter to `<endpoint>/v1/traces`) while configured."""

    def __init__(self, base_url: str, *, service: str, exit_flush: bool) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.propagators.textmap import DefaultGetter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.base_url = base_url
        url = base_url if base_url.endswith("/v1/traces") else base_url.rstrip("/") + "/v1/traces"
        # Only the service name (and what OTEL_RESOURCE_ATTRIBUTES adds): no process detector, whose
        # command line would carry paths.
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": service}), shutdown_on_exit=False
        )
        exporter = OTLPSpanExporter(endpoint=url, timeout=EXPORT_TIMEOUT_S)
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=MAX_QUEUE, export_timeout_millis=EXPORT_TIMEOUT_S * 1000)
        )
        self.tracer: Tracer = self.provider.get_tracer("datagraph")
        self.propagator = TraceContextTextMapPropagator()
        self.getter = DefaultGetter()
        self.kinds = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT}
        self.status = Status
        self.error = StatusCode.ERROR
        if exit_flush:
            atexit.register(self.close)
        # The batch processor warns once per span it drops; a dead collector under load would flood the log.
        queue_log = logging.getLogger("opentelemetry.sdk._shared_internal")
        if not any(isinstance(f, _Sparse) for f in queue_log.filters):
            queue_log.addFilter(_Sparse())

    @contextlib.contextmanager
    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None, parent: Mapping[str, str] | None, kind: str
    ) -> Iterator[Span]:
        context = self.propagator.extract(parent) if parent is not None else None
        with self.tracer.start_as_current_span(
            name,
            context=context,
            kind=self.kinds[kind],
            attributes=attributes,
            record_exception=False,  # its message and traceback may carry values and paths
            set_status_on_exception=False,
        ) as current:
            try:
                yield current
            except BaseException as exc:
                self.failed(current, exc)
                raise

    def failed(self, current: Span, exc: BaseException) -> None:
        name = type(exc).__name__
        current.set_attribute("error.type", name)
        current.set_status(self.status(self.error, name))

    def carrier(self) -> dict[str, str]:
        found: dict[str, str] = {}
        self.propagator.inject(found)
        return found

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued and stop, waiting `timeout_s` at most: the SDK's own shutdown waits up
        to 30 s for a collector that does not answer. Past it the rest is dropped with the process."""
        global _active
        if _active is self:
            _active = None
        closing = threading.Thread(target=self.provider.shutdown, name="datagraph-tracing-close", daemon=True)
        closing.start()
        closing.join(timeout_s)
        if closing.is_alive():
            log.warning("tracing: the collector did not take the last spans within %g s; they are dropped", timeout_s)


class _Sparse(logging.Filter):
    """Let each distinct message through once a minute at most."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, -SPARSE_LOG_S) < SPARSE_LOG_S:
            return False
        self._last[key] = now
        return True


_active: Tracing | None = None


def configure(base_url: str, *, service: str = "datagraph", exit_flush: bool = False) -> Tracing | None:
    """Start tracing to the OTLP/HTTP collector at `base_url` (spans go to `<base_url>/v1/traces`);
    None when `base_url` is empty. `exit_flush`: flush at interpreter exit (worker processes)."""
    global _active
    if not base_url:
        return None
    if _active is not None:
        _active.close()
    _active = Tracing(base_url, service=service, exit_flush=exit_flush)
    return _active


def enabled() -> bool:
    return _active is not None


def endpoint() -> str:
    """The collector's base URL, empty while tracing is off (handed to worker processes)."""
    return _active.base_url if _active is not None else ""


def span(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    parent: Mapping[str, str] | None = None,
    kind: str = "internal",
) -> contextlib.AbstractContextManager[SpanLike]:
    """A span around the block, a child of the current one, or of `parent` (W3C trace context
    headers: a client's `traceparent`, a job's `carrier`) when given; `kind` is internal, server
    or client. The block gets the span, to add attributes known at its end."""
    if _active is None:
        return _OFF
    return _active.span(name, attributes, parent, kind)


def begin(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> SpanLike | None:
    """Start a span that `finish` ends (for hooks that see a start and an end apart, such as
    SQLAlchemy's statement events); it is not made current. None while tracing is off."""
    if _active is None:
        return None
    return _active.tracer.start_span(name, attributes=attributes)


def finish(started: SpanLike | None, error: BaseException | None = None) -> None:
    """End a span from `begin`, failed when `error` is given."""
    if started is None or _active is None:
        return
    current: Span = started  # type: ignore[assignment]
    if error is not None:
        _active.failed(current, error)
    current.end()


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers, for a job to take to a worker; None while off."""
    return _active.carrier() if _active is not None else None
