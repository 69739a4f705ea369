"""The ASGI middleware that guards every HTTP request before GraphQL sees it: body limits while the
body streams (and the same limit on each websocket message), the cross-site upload check, and
cancelling the work of a client that went away."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datagraph.settings import Settings
from server.observe import count_stop
from server.responses import header, send_error

__all__ = ["CancelOnDisconnect", "GuardRequests", "HostGuard", "host_allowed"]

log = logging.getLogger("datagraph")
# A header a browser cannot send cross-site without a CORS preflight (CVE-2024-47082).
_PREFLIGHT_HEADERS = (b"apollo-require-preflight", b"x-api-key", b"authorization")


class _BodyTooLarge(Exception):
    pass


class GuardRequests:
    """Bound request bodies while they stream (413 with a message naming the limit), and refuse
    multipart requests that a browser could send cross-site. A websocket message over the JSON limit
    closes its socket (1009, the close code for a message too big) before anything reads it."""

    def __init__(self, app: ASGIApp, *, json_limit: int, multipart_limit: int, settings: Settings) -> None:
        self.app = app
        self.json_limit = json_limit
        self.multipart_limit = multipart_limit
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._guard_messages(scope, receive, send)
            return
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        content_type, length, preflight = b"", b"", False
        for key, value in scope["headers"]:  # one pass: no dict of the headers per request
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key in _PREFLIGHT_HEADERS:
                preflight = True
        multipart = content_type.lower().startswith(b"multipart/")
        if multipart and not preflight:
            message = "Uploads must carry an 'Apollo-Require-Preflight: true' (or API key) header."
            await send_error(scope, send, 400, message, "BAD_INPUT")
            return
        limit = self.multipart_limit if multipart else self.json_limit
        what = (
            f"{self.settings.max_upload_mb:g} MiB upload limit (setting max_upload_mb)"
            if multipart
            else f"{self.settings.max_request_kb} KiB request limit (setting max_request_kb)"
        )
        message = f"The request is larger than the {what}."
        try:
            declared = int(length or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await send_error(scope, send, 413, message, "TOO_LARGE")
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await send_error(scope, send, 413, message, "TOO_LARGE")

    async def _guard_messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.json_limit
        # A close frame's reason has room for 123 bytes.
        reason = f"The message is larger than the {self.settings.max_request_kb} KiB limit (setting max_request_kb)."
        closed = False

        async def limited_receive() -> Message:
            nonlocal closed
            msg = await receive()
            if msg["type"] == "websocket.receive" and _message_over(msg, limit):
                log.info("closing a websocket that sent a message over max_request_kb")
                closed = True
                await send({"type": "websocket.close", "code": _TOO_BIG, "reason": reason})
                return {"type": "websocket.disconnect", "code": _TOO_BIG, "reason": reason}
            return msg

        async def guarded_send(msg: Message) -> None:
            if not closed:  # what the app still sends after the close goes nowhere
                await send(msg)

        await self.app(scope, limited_receive, guarded_send)


_TOO_BIG = 1009  # RFC 6455: a message too big to process (uvicorn closes with it past ws_max_size too)


def _message_over(msg: Message, limit: int) -> bool:
    data = msg.get("bytes")
    if data is not None:
        return len(data) > limit
    text: str = msg.get("text") or ""
    # UTF-8 takes one to four bytes a character: count the bytes only when that decides it.
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit)


class CancelOnDisconnect:
    """Stop a request's work when its client goes away (RELIABILITY F12).

    Once the request body has been read, a disconnect before the response is complete cancels the
    handler, and the request is charged a stop (rate limits). An analysis it was waiting for runs on
    for `finish_grace_s` to finish into the cache, then is stopped; other jobs are stopped at once.
    An event stream (text/event-stream: subscriptions over SSE) is cancelled too but charged
    nothing: closing the connection is how a client ends a stream.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        responded = streaming = False

        async def tracked_receive() -> Message:
            msg = await receive()
            if msg["type"] == "http.disconnect" or not msg.get("more_body", False):
                body_read.set()
            return msg

        async def tracked_send(msg: Message) -> None:
            nonlocal responded, streaming
            await send(msg)
            if msg["type"] == "http.response.start":
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in msg["headers"]
                )
            elif msg["type"] == "http.response.body" and not msg.get("more_body", False):
                responded = True

        async def client_gone() -> None:
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass

        handler = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))
        watcher = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            handler.cancel()
            watcher.cancel()
            raise
        if handler.done():
            watcher.cancel()
            handler.result()
            return
        if responded:  # the disconnect that follows a complete response
            await handler
            return
        if not streaming:
            log.info("client went away before its answer; cancelling %s", scope.get("path"))
            count_stop()
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handler


def host_allowed(host_header: str, allowed: frozenset[str]) -> bool:
    """Whether a request addressed to `host_header` (host[:port]) is for this server: a loopback
    name or address, or one of `allowed` ("*" allows any)."""
    if "*" in allowed:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost") or host in allowed:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostGuard:
    """With API keys off, answer only requests addressed to a loopback host (or `allowed_hosts`):
    a page on another site that rebinds its own name to 127.0.0.1 sends its own name as Host, and
    is refused, so it cannot read this server from the user's browser (DNS rebinding)."""

    def __init__(self, app: ASGIApp, *, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed
        self._seen: dict[bytes, bool] = {}  # Host header -> answered?

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = header(scope, b"host")
        allowed = self._seen.get(host)
        if allowed is None:
            allowed = host_allowed(host.decode("latin-1"), self.allowed)
            if len(self._seen) < 256:  # the few names this server is reached by; never grows past that
                self._seen[host] = allowed
        if allowed:
            await self.app(scope, receive, send)
            return
        log.info("refused a request addressed to another host")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "This host is not served."})
            return
        message = (
            "This server answers requests addressed to localhost or a loopback address only (setting"
            " allowed_hosts names others)."
        )
        await send_error(scope, send, 421, message, "BAD_INPUT")
