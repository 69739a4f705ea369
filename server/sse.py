"""GraphQL over Server-Sent Events at `/graphql/stream`: the graphql-sse protocol in its "distinct
connections mode" (https://github.com/enisdenjo/graphql-sse/blob/master/PROTOCOL.md), for clients
behind proxies that block websockets.

A POST (JSON: `query`, `variables`, `operationName`, `extensions`, or a persisted `documentId`) or
a GET (the same as query parameters; no mutations) that accepts `text/event-stream` is one
operation: its results go out as `event: next` with the result as `data`, then `event: complete`.
A subscription streams until the client closes the connection; a query or mutation answers one
`next` and completes. A comment (`:`) goes out every `sse_keepalive_s` (12 s, graphql-sse's own
interval: well under the 30-60 s idle timeouts of common proxies) so that proxies keep the connection
open. GraphQL errors (a document that does not parse or validate, errors while it runs)
are `next` events, as the protocol requires (a 400 would make EventSource-like clients retry without
showing them); a request that is not a GraphQL operation at all gets an HTTP error status and a
JSON body with `errors`, before any stream starts.

The gates are the websocket's (server/gates.py): the middleware's key check (401) and rate budget
(429; the request is the operation's 1), `max_request_kb`, `max_query_chars` (413), `persisted_only`
and every schema limit; the jobs its pushes run are charged as they go out; an open stream takes a
place among its key's (or address's) open websockets (`max_ws_per_client`, 429 past it); a revoked
key ends the stream within a second, with an UNAUTHENTICATED error. A client that goes away ends the
operation at once (its subscription, and any job nobody else waits for); at shutdown, uvicorn ends
streams still open after `shutdown_grace_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from graphql import GraphQLError, get_operation_ast, parse
from graphql import OperationType as GraphQLOperationType
from starlette.requests import Request
from strawberry.http import GraphQLRequestData
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from datagraph import jsonutil
from datagraph.settings import keys_required, production_mode
from resolvers.context import Context
from server.auth import presented_key
from server.documents import PersistedRefusal
from server.gates import KeyWatch, charge, too_many_streams
from server.incremental import stream_problem
from server.observe import RequestInfo, count_stop, current_request
from server.ratelimit import identity
from server.responses import capped_errors, error_body, query_too_long

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send
    from strawberry.schema.schema import StreamResult

    from resolvers.context import Resources
    from server.resources import WebState
    from server.view import GraphQLView

__all__ = ["GraphQLStream"]

log = logging.getLogger("datagraph")
_MEDIA_TYPE = b"text/event-stream"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on as it comes
]
_COMPLETE = b"event: complete\ndata:\n\n"  # an empty data field: EventSource ignores an event without one
_COMMENT = b":\n\n"
_REVOKED = {"message": "The API key was revoked.", "extensions": {"code": "UNAUTHENTICATED"}}


class _Refused(Exception):
    """A request that is no GraphQL operation to stream: answered with `status` and a JSON error."""

    def __init__(self, status: int, message: str, code: str = "BAD_INPUT", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class GraphQLStream:
    """The ASGI endpoint at /graphql/stream (one per app)."""

    def __init__(self, view: GraphQLView) -> None:
        self.view = view  # its schema, JSON decoding and settings
        self.watch = KeyWatch()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        web: WebState = request.app.state.web
        res: Resources = request.app.state.resources
        settings = res.settings
        try:
            operation = await self._operation(request, web)
        except _Refused as refused:
            await _send_json_error(send, refused)
            return
        except PersistedRefusal as refused:
            if refused.status != 200:  # PERSISTED_QUERY_NOT_FOUND is a GraphQL error: in the stream
                await _send_json_error(send, _Refused(refused.status, refused.message, refused.code))
                return
            operation = _Failed({"message": refused.message, "extensions": {"code": refused.code}})
        by_key = keys_required(settings)
        key = presented_key(request.headers) if by_key else None
        who = identity(scope, key)
        if not web.sockets.enter(who):
            message = too_many_streams(by_key, web.sockets.cap, "websockets and event streams")
            await _send_json_error(send, _Refused(429, message, "RATE_LIMITED"))
            return
        try:
            context = Context(
                resources=res,
                base_url=str(request.base_url).rstrip("/"),
                header_key=key,
                read_only=request.method == "GET",
            )
            stream = _Stream(self, send, receive, web, who, key)
            await stream.run(operation, context, get=request.method == "GET")
        finally:
            web.sockets.leave(who)

    async def _operation(self, request: Request, web: WebState) -> GraphQLRequestData | _Failed:
        """The operation the request asks for (its persisted document resolved), or why it is refused."""
        settings = self.view.settings
        if request.method not in ("GET", "POST"):
            raise _Refused(405, "Send a GraphQL operation by POST (JSON) or GET.", headers={"allow": "GET, POST"})
        accept = request.headers.get("accept", "*/*").lower()
        if not any(t in accept for t in ("text/event-stream", "*/*", "text/*")):
            raise _Refused(406, "This path answers in text/event-stream only: send 'Accept: text/event-stream'.")
        if request.method == "GET":
            if production_mode(settings):
                raise _Refused(405, "Send the operation by POST (JSON).", headers={"allow": "POST"})
            params: Any = dict(parse_qsl(request.url.query, keep_blank_values=True))
            for name in ("variables", "extensions"):
                if isinstance(params.get(name), str):
                    params[name] = self._json(params[name], f"The '{name}' parameter is not valid JSON.")
        else:
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                raise _Refused(415, "Send the operation as JSON (Content-Type: application/json).")
            params = self._json(await request.body(), "The request body is not valid JSON.")
        if not isinstance(params, dict):
            raise _Refused(400, "Send one GraphQL operation as a JSON object (no batches) per stream.")
        query, variables, extensions = params.get("query"), params.get("variables"), params.get("extensions")
        operation_name, document_id = params.get("operationName"), params.get("documentId")
        if variables is not None and not isinstance(variables, dict):
            raise _Refused(400, "The operation's 'variables' must be a JSON object.")
        if extensions is not None and not isinstance(extensions, dict):
            raise _Refused(400, "The operation's 'extensions' must be a JSON object.")
        if operation_name is not None and not isinstance(operation_name, str):
            raise _Refused(400, "The operation's 'operationName' must be a string.")
        resolved = await web.documents.resolve(query, extensions, document_id)
        if resolved is not None:
            query, extensions = resolved
        if not isinstance(query, str) or not query.strip():
            raise _Refused(400, "The request holds no GraphQL query ('query' must be a non-empty string).")
        if too_long := query_too_long(query, settings.max_query_chars):
            raise _Refused(413, too_long, "TOO_LARGE")
        if (refused := await web.documents.refusal(query)) is not None:  # persisted_only
            raise refused
        if request.method == "GET" and _asks_mutation(query, operation_name, settings.graphql_max_tokens):
            raise _Refused(405, "Mutations are sent by POST, never by GET.", headers={"allow": "POST"})
        if settings.graphql_defer and (problem := stream_problem(query, variables, settings.graphql_max_tokens)):
            return _Failed({"message": problem, "extensions": {"code": "BAD_INPUT"}})
        return GraphQLRequestData(query, variables, operation_name, extensions, "http")

    def _json(self, text: str | bytes, message: str) -> Any:
        try:
            return self.view.decode_json(text)
        except json.JSONDecodeError as exc:  # too deep (max_json_depth) is one too, and says so
            raise _Refused(400, exc.msg if "max_json_depth" in exc.msg else message) from None


class _Failed:
    """An operation answered with one GraphQL error in the stream, without running."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error


class _Stream:
    """One open event stream: the operation's results, keep-alive comments, and its ends (the operation
    completes, the client goes away, the key is revoked)."""

    def __init__(self, endpoint: GraphQLStream, send: Send, receive: Receive, web: WebState, who: str,
                 key: str | None) -> None:  # fmt: skip
        self.endpoint = endpoint
        self._send = send
        self.receive = receive
        self.web = web
        self.who = who
        self.key = key
        self.max_errors = endpoint.view.settings.graphql_max_errors
        self.max_tokens = endpoint.view.settings.graphql_max_tokens
        self.keepalive_s = endpoint.view.settings.sse_keepalive_s
        self.lock = asyncio.Lock()  # one event at a time on the wire
        self.revoked = asyncio.Event()
        self.info = current_request() or RequestInfo("")

    async def send(self, chunk: bytes, *, more: bool = True) -> None:
        async with self.lock:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def next(self, payload: dict[str, Any]) -> None:
        if payload.get("errors"):
            payload["errors"] = capped_errors(payload["errors"], self.max_errors)
        await self.send(b"event: next\ndata: " + jsonutil.dumps(payload) + b"\n\n")
        await charge(self.web.limiter, self.who, self.info)  # what this result's jobs cost, now

    async def run(self, operation: GraphQLRequestData | _Failed, context: Context, *, get: bool) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await self.send(_COMMENT)  # the headers go out now: the client knows the stream is open
        results = asyncio.ensure_future(self._results(operation, context, get))
        ends = {results, asyncio.ensure_future(self._client_gone()), asyncio.ensure_future(self.revoked.wait())}
        keepalive = asyncio.ensure_future(self._keepalive())
        watched = (
            self.endpoint.watch.watching(self.web.keys, self.key, self.revoked.set)
            if self.key is not None
            else contextlib.nullcontext()
        )
        try:
            with watched:
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not results.done() and not self.revoked.is_set() and _one_shot(operation, self.max_tokens):
                # The client left a query or mutation mid-work (a subscription ends that way; a query
                # does not): a stop, as HTTP charges it (server/middleware.py CancelOnDisconnect), or
                # leaving would be the cheap way to have a worker busy for finish_grace_s.
                count_stop()
            for task in (*ends, keepalive):
                task.cancel()
            await asyncio.gather(*ends, keepalive, return_exceptions=True)  # the subscription has closed
        if results.done() and not results.cancelled() and (error := results.exception()) is not None:
            if not isinstance(error, OSError):  # OSError: the client went away while an event was sent
                raise error
        elif results.done() and not results.cancelled():
            await self.send(_COMPLETE, more=False)
        elif self.revoked.is_set():
            await self._finish({"errors": [_REVOKED]})

    async def _finish(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            await self.next(payload)
            await self.send(_COMPLETE, more=False)

    async def _results(self, operation: GraphQLRequestData | _Failed, context: Context, get: bool) -> bool:
        """Send the operation's results as `next` events; True once they are all out."""
        if isinstance(operation, _Failed):
            await self.next({"errors": [operation.error]})
            return True
        allowed = (OperationType.QUERY, OperationType.SUBSCRIPTION) if get else None
        schema = self.endpoint.view.schema
        try:
            source: StreamResult = await schema.stream(
                operation.query,
                variable_values=operation.variables,
                context_value=context,
                operation_name=operation.operation_name,
                allowed_operation_types=allowed,
            )
            async with contextlib.aclosing(source):
                async for result in source:
                    if not isinstance(result, ExecutionResult):  # @defer/@stream's frames: not enabled
                        await self.next({"errors": [{"message": "Incremental delivery is not supported here."}]})
                        break
                    await self.next(_payload(result))
        except GraphQLError as error:
            # A parse error (the token limit's too) escapes Strawberry's stream when an extension parses
            # (ParserCache), as on the websocket (server/wsgate.py).
            await self.next({"errors": [error.formatted]})
        return True

    async def _client_gone(self) -> bool:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        return False

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            await self.send(_COMMENT)


def _asks_mutation(query: str, operation_name: str | None, max_tokens: int) -> bool:
    """Whether the operation to run is a mutation (parsed only when the word is there at all)."""
    if "mutation" not in query:
        return False
    try:
        operation = get_operation_ast(parse(query, max_tokens=max_tokens), operation_name)
    except (GraphQLError, RecursionError):
        return False  # the stream answers the error in the usual way
    return operation is not None and operation.operation == GraphQLOperationType.MUTATION


def _one_shot(operation: GraphQLRequestData | _Failed, max_tokens: int) -> bool:
    """Whether the operation is a query or mutation (it ends by itself), not a subscription."""
    if isinstance(operation, _Failed) or not operation.query:
        return False
    try:
        found = get_operation_ast(parse(operation.query, max_tokens=max_tokens), operation.operation_name)
    except (GraphQLError, RecursionError):
        return False
    return found is not None and found.operation != GraphQLOperationType.SUBSCRIPTION


def _payload(result: ExecutionResult) -> dict[str, Any]:
    """A result as graphql-sse's `next` data: `data` (absent when the operation did not run), `errors`,
    `extensions`."""
    payload: dict[str, Any] = {} if isinstance(result, PreExecutionError) else {"data": result.data}
    if result.errors:
        payload["errors"] = [error.formatted for error in result.errors]
    if result.extensions:
        payload["extensions"] = result.extensions
    return payload


async def _send_json_error(send: Send, refused: _Refused) -> None:
    body = error_body(refused.message, refused.code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in refused.headers.items()),
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
