"""The HTTP span of each request (while `otel_endpoint` is set): the outermost middleware, continuing
the client's W3C `traceparent` when it sends one. It records the method, the route (as the metrics
name it: no export token, no file name) and the status, never the query string or a header."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datagraph import tracing
from server.observe import route_label

__all__ = ["TraceRequests"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONTEXT_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}


class TraceRequests:
    """A server span around each HTTP request, the parent of everything the request does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        route = route_label(scope["path"])
        parent = {
            _CONTEXT_HEADERS[name]: value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CONTEXT_HEADERS
        }
        status = 500

        async def noting_status(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        attributes: dict[str, tracing.AttributeValue] = {"http.request.method": method, "http.route": route}
        with tracing.span(f"{method} {route}", attributes, parent=parent, kind="server") as traced:
            try:
                await self.app(scope, receive, noting_status)
            finally:
                traced.set_attribute("http.response.status_code", status)
