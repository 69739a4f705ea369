"""The GraphQL view: Strawberry's ASGI app with orjson, the local GraphiQL page, the websocket's key
check, the HTTP refusals answered as GraphQL errors, and answers in the media type the client
accepts (`application/json`, or `application/graphql-response+json` with the GraphQL-over-HTTP
spec's status codes: server/responses.py)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, OperationType, get_operation_ast, parse
from graphql.execution import ExperimentalIncrementalExecutionResults
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UnsetType

from datagraph import jsonutil
from datagraph.settings import Settings, graphiql_served, keys_required, production_mode
from gql.schema import build_schema
from resolvers.context import Context
from server.answers import READS_SCOPE_KEY
from server.auth import KEY_WATCH_S, UNAUTHENTICATED_MESSAGE, KeyRing, params_key, presented_key
from server.documents import PERSISTED_GET, DocumentRegistry
from server.incremental import accepts_parts, stream_problem, whole
from server.responses import (
    GRAPHQL_RESPONSE,
    capped_errors,
    content_type,
    error_body,
    negotiate,
    query_too_long,
    response_type,
)
from server.web import STATIC
from server.wsgate import GatedTransportWS

__all__ = ["GraphQLView", "origins"]

log = logging.getLogger("datagraph")
# What Strawberry's streaming transports (incremental delivery, multipart subscriptions, SSE) are
# chosen by: a request that accepts one of them is not refused 406 for accepting no JSON.
_STREAMED = (b"multipart/mixed", b"text/event-stream")
_NOT_ACCEPTABLE = "This server answers in application/graphql-response+json or application/json only."


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view with orjson, a local GraphiQL page and a query-length limit; over a
    websocket, operations pass the same gates (server/wsgate.py)."""

    graphql_transport_ws_handler_class = GatedTransportWS

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if graphiql_served(settings) else None,
            multipart_uploads_enabled=True,
            # GET needs no preflight: in production, queries come by POST only (mutations always do).
            allow_queries_via_get=not production_mode(settings),
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
            connection_init_wait_timeout=dt.timedelta(seconds=settings.ws_init_timeout_s),
            max_subscriptions_per_connection=settings.ws_max_subscriptions,
            # Browsers on other origins may not subscribe (with the user's cookies) unless listed;
            # clients that send no Origin (scripts) and same-origin pages always may.
            allowed_origins=origins(settings.ws_allowed_origins) + origins(settings.cors_origins),
        )
        self.settings = settings
        self.keys_required = keys_required(settings)
        self.keys: KeyRing | None = None  # set when the app's lifespan has opened the metadata store
        self.documents: DocumentRegistry | None = None  # persisted documents (server/documents.py), as keys
        # Open websockets and their contexts (which hold connection_init's payload), watched by one
        # task while there are any, so a revoked key closes its sockets within a second.
        self._sockets: dict[WebSocket, Context] = {}
        self._key_watch: asyncio.Task[None] | None = None

    @property
    def allow_queries_via_get(self) -> bool:
        """GET may carry queries outside production mode, and a persisted document's always."""
        return self._queries_via_get or PERSISTED_GET.get()

    @allow_queries_via_get.setter
    def allow_queries_via_get(self, value: bool) -> None:
        self._queries_via_get = value

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        header_key = presented_key(request.headers) if isinstance(request, WebSocket) else None
        context = Context(
            resources=request.app.state.resources,
            base_url=str(request.base_url).rstrip("/"),
            header_key=header_key,
            read_only=isinstance(request, Request) and request.method == "GET",
            reads=request.scope.get(READS_SCOPE_KEY) if isinstance(request, Request) else None,
        )
        if isinstance(request, WebSocket) and self.keys_required:
            self._sockets[request] = context
            if self._key_watch is None or self._key_watch.done():
                self._key_watch = asyncio.create_task(self._close_revoked())
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        if self.keys_required:
            key = params_key(context.connection_params) or context.header_key
            if self.keys is None or self.keys.check(key) is None:
                raise ConnectionRejectionError({"message": UNAUTHENTICATED_MESSAGE, "code": "UNAUTHENTICATED"})
        return UnsetType()  # acknowledge with no payload

    def encode_json(self, data: object) -> str:
        # Text, not bytes: over a websocket, bytes go out as binary frames, which browser clients
        # of graphql-transport-ws (a Blob in event.data) cannot read.
        return jsonutil.dumps(data).decode("utf-8")

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        """At most `graphql_max_errors` errors in an answer (a query with 10,000 bad directives must not
        make the server write 10,000 errors); the rest are counted. In application/graphql-response+json,
        the answer to a request that never ran (its document or variables are not valid) has no `data`
        entry, and its errors say `BAD_INPUT` in `extensions.code`, as every refusal does (clients of
        that type read the code from a 400). application/json answers as it always did."""
        answer = await super().process_result(request, result)
        if errors := answer.get("errors"):
            errors = capped_errors(errors, self.settings.graphql_max_errors)
            graphql_response = isinstance(request, Request) and response_type(request.scope) == GRAPHQL_RESPONSE
            if graphql_response and _never_ran(result):
                errors = [_with_code(error, "BAD_INPUT") for error in errors]
                answer.pop("data", None)
            answer["errors"] = errors
        return answer

    async def execute_operation(
        self, request: Request, request_adapter: AsyncHTTPRequestAdapter, *args: Any, **kwargs: Any
    ) -> Any:
        """`@defer`/`@stream` answer in parts only to a client that accepts multipart/mixed; any other
        gets the same answer whole (server/incremental.py)."""
        result = await super().execute_operation(request, request_adapter, *args, **kwargs)
        if isinstance(result, ExperimentalIncrementalExecutionResults) and not accepts_parts(
            request_adapter.headers.get("accept", "")
        ):
            return await whole(result)
        return result

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        """Strawberry's, carrying the media type the answer is to have (`create_response` reads it)."""
        sub_response = await super().get_sub_response(request)
        sub_response.media_type = response_type(request.scope)
        return sub_response

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        """Strawberry's JSON answer (200, GraphQL errors and all); in application/graphql-response+json,
        an answer without `data` (the request never ran) is 400, or 500 when what stopped it was
        unexpected (an error masked as INTERNAL)."""
        response = super().create_response(response_data, sub_response)
        if sub_response.media_type == GRAPHQL_RESPONSE:
            response.headers["content-type"] = content_type(GRAPHQL_RESPONSE).decode()
            if not sub_response.status_code and isinstance(response_data, dict) and "data" not in response_data:
                response.status_code = 500 if _internal(response_data) else 400
        return response

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return HTMLResponse((STATIC / "graphiql.html").read_text("utf-8"))

    # One override for both overloads (HTTP and websocket requests) of the base class's `run`.
    async def run(self, request: Request | WebSocket, **kwargs: Any) -> Any:  # type: ignore[override]
        if isinstance(request, Request) and request.headers.get("content-type", "").startswith("multipart/form-data"):
            request.app.state.resources.executor.warm()  # an upload: its worker starts as the file arrives
        # Strawberry answers its HTTP refusals as plain text; clients parse GraphQL errors everywhere.
        try:
            return await super().run(request, **kwargs)
        except (HTTPException, StarletteHTTPException) as exc:  # the latter: Starlette's multipart parser
            return _refusal(request, exc)
        finally:
            if isinstance(request, WebSocket):
                self._sockets.pop(request, None)
            if isinstance(request, Request):
                await request.close()  # every uploaded part's temporary file, used or not

    async def _close_revoked(self) -> None:
        """Every KEY_WATCH_S while websockets are open, check each one's key again (the ring re-reads
        the keys at most every KEYS_TTL_S) and close those whose key was revoked (4403)."""
        while self._sockets:
            await asyncio.sleep(KEY_WATCH_S)
            if self.keys is None:
                continue
            for ws, context in list(self._sockets.items()):
                if not (context.connection_params or context.header_key):
                    continue  # before connection_init (whose own wait is bounded)
                if self.keys.check(params_key(context.connection_params) or context.header_key) is None:
                    log.info("closing a websocket whose API key was revoked")
                    self._sockets.pop(ws, None)
                    with contextlib.suppress(RuntimeError):  # already closing
                        await ws.close(4403, "The API key was revoked.")

    def decode_json(self, data: str | bytes) -> object:
        """orjson (its own nesting limit stops a body nested thousands deep without exhausting the
        stack), then at most `max_json_depth` levels: deeper values would overflow later encoders.
        Too deep is a JSONDecodeError, so a websocket message that deep closes its socket (4400)."""
        try:
            value = jsonutil.loads(data)
        except json.JSONDecodeError as exc:  # orjson's own error is a JSONDecodeError
            if "depth limit" in exc.msg:
                raise _TooDeep(self.settings.max_json_depth) from None
            raise
        if jsonutil.depth_over(value, self.settings.max_json_depth):
            raise _TooDeep(self.settings.max_json_depth)
        return value

    def parse_json(self, data: str | bytes) -> Any:
        try:
            return self.decode_json(data)
        except _TooDeep as exc:
            raise HTTPException(400, exc.msg) from None
        except json.JSONDecodeError:
            raise HTTPException(400, "The request body is not valid JSON.") from None

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, str]:
        try:
            return await super().parse_multipart(request)
        except (TypeError, ValueError, IndexError, AttributeError):
            raise HTTPException(
                400,
                "The multipart map must point each file at a null in operations (like variables.file, or"
                " variables.files.0).",
            ) from None

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData | list[GraphQLRequestData]:
        # Here, not earlier: the explorer page (a GET that accepts text/html) is rendered before this.
        accept = request.headers.get("accept", "").encode("latin-1")
        if negotiate(accept) is None and not any(kind in accept for kind in _STREAMED):
            raise HTTPException(406, _NOT_ACCEPTABLE)
        data = await super().parse_http_body(request)
        if self.documents is not None:  # persisted documents: APQ in uploads, persisted_only (server/documents.py)
            data = await self.documents.admit(data)
        for item in data if isinstance(data, list) else [data]:
            if too_long := query_too_long(item.query, self.settings.max_query_chars):
                raise HTTPException(413, too_long)
            if self.settings.graphql_defer and (
                problem := stream_problem(item.query, item.variables, self.settings.graphql_max_tokens)
            ):
                raise HTTPException(400, problem)
            if item.protocol == "http" and item.query and _asks_subscription(item.query, item.operation_name):
                raise HTTPException(
                    400,
                    "Subscriptions run over a websocket (graphql-transport-ws) at /graphql; send queries and"
                    " mutations over HTTP.",
                )
        return data


class _TooDeep(json.JSONDecodeError):
    def __init__(self, limit: int) -> None:
        message = f"The JSON nests lists or objects deeper than {limit} levels (setting max_json_depth)."
        super().__init__(message, "", 0)
        self.msg = message


def _refusal(request: Request | WebSocket, exc: HTTPException | StarletteHTTPException) -> Response:
    """A refusal Strawberry (or Starlette's multipart parser) raised, as GraphQL errors with a code, in
    the media type the client accepts. In application/graphql-response+json, an operation of a type
    not allowed by GET (a mutation; in production, any) is 405, as the GraphQL-over-HTTP spec asks."""
    status = exc.status_code
    code = {413: "TOO_LARGE"}.get(status, "BAD_INPUT")
    reason = exc.reason if isinstance(exc, HTTPException) else exc.detail
    media = response_type(request.scope)
    headers = {"content-type": content_type(media).decode()}
    by_get = request.scope.get("method") == "GET"
    if media == GRAPHQL_RESPONSE and by_get and isinstance(exc.__cause__, InvalidOperationTypeError):
        status = 405
        headers["allow"] = "POST"
    return Response(error_body(reason, code), status_code=status, headers=headers)


def _never_ran(result: ExecutionResult) -> bool:
    """Whether the operation was refused before it ran (parse, validation or variable errors carry no
    path; a field's error does, and then `data` is there, null or not)."""
    errors = result.errors or []
    return result.data is None and bool(errors) and all(error.path is None for error in errors)


def _with_code(error: Any, code: str) -> Any:
    """`error` (formatted) with `extensions.code` set to `code` unless it has one; a copy, since its
    extensions may be those of an error the validation cache keeps."""
    if not isinstance(error, dict):
        return error
    extensions = error.get("extensions") or {}
    if "code" in extensions:
        return error
    return {**error, "extensions": {**extensions, "code": code}}


def _internal(answer: GraphQLHTTPResponse) -> bool:
    return any(
        isinstance(error, dict) and (error.get("extensions") or {}).get("code") == "INTERNAL"
        for error in answer.get("errors") or ()
    )


def origins(listed: str) -> list[str]:
    return [o.strip() for o in listed.split(",") if o.strip()]


def _asks_subscription(query: str, operation_name: str | None) -> bool:
    """Whether the operation to run is a subscription (parsed only when the word is there at all)."""
    if "subscription" not in query:
        return False
    try:
        operation = get_operation_ast(parse(query), operation_name)
    except (GraphQLError, RecursionError):
        return False  # validation answers it in the usual way
    return operation is not None and operation.operation == OperationType.SUBSCRIPTION
