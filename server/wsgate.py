"""One gate for every transport: graphql-transport-ws runs queries and mutations (a `subscribe`
message may carry any operation), so what an HTTP request passes, an operation over a websocket
passes too (the pieces shared with the event stream, server/sse.py, are in server/gates.py).

- Each websocket takes a place among its key's (or, with keys off, its address's) open websockets
  and event streams when it sends `connection_init`; past `max_ws_per_client` it is closed with 4429
  (the code graphql-ws clients do not retry on their own) until one closes. Counted per server process.
- Opening one costs 1 from the rate budget, as a request does; each operation costs 1 before it
  runs, 5 for each job it runs in a worker and 50 for each stopped at its deadline (spent as its
  answers go out, so a subscription pays for every recompute). Over budget, the operation gets an
  `error` message with `RATE_LIMITED` and `retryAfter` (seconds): the socket and its other
  subscriptions stay open.
- A query over `max_query_chars` gets an `error` message with `TOO_LARGE`; answers list at most
  `graphql_max_errors` errors; a query past `graphql_max_tokens` (or one that does not parse) gets
  the `error` message HTTP answers. (Messages over `max_request_kb` are closed by `GuardRequests`;
  the schema's validation rules apply to every transport by themselves.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

from graphql import GraphQLError
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler, Operation

from datagraph.settings import keys_required
from resolvers.context import Context
from server.auth import params_key
from server.gates import charge, operation_refusal, too_many_streams
from server.observe import RequestInfo, answering, current_request, new_request_id
from server.ratelimit import identity
from server.responses import capped_errors

if TYPE_CHECKING:
    from graphql import GraphQLFormattedError
    from starlette.websockets import WebSocket
    from strawberry.schema.schema import StreamResult
    from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
        ConnectionInitMessage,
        Message,
        SubscribeMessage,
    )

    from server.resources import WebState

__all__ = ["GatedTransportWS"]

_TOO_MANY_SOCKETS = 4429


class GatedTransportWS(BaseGraphQLTransportWSHandler[Context, None]):
    """Strawberry's graphql-transport-ws handler with the gates of an HTTP request."""

    who: str | None = None  # whose budget the socket spends, once it has sent connection_init
    holds_place = False  # whether it is counted among `who`'s open websockets

    @property
    def _socket(self) -> WebSocket:
        adapter = self.websocket
        assert isinstance(adapter, ASGIWebSocketAdapter)
        return adapter.ws

    @property
    def _web(self) -> WebState:
        web: WebState = self._socket.app.state.web
        return web

    async def handle(self) -> None:
        try:
            await super().handle()
        finally:
            self._leave()

    def _leave(self) -> None:
        if self.holds_place and self.who is not None:
            self.holds_place = False
            self._web.sockets.leave(self.who)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload", {})
        if self.connection_init_received or self.connection_timed_out or not isinstance(payload, dict):
            await super().handle_connection_init(message)  # the protocol's own answers
            return
        by_key = keys_required(self.context.settings)
        self.who = identity(self._socket.scope, (params_key(payload) or self.context.header_key) if by_key else None)
        if not self._web.sockets.enter(self.who):
            await self.websocket.close(_TOO_MANY_SOCKETS, too_many_streams(by_key, self._web.sockets.cap))
            return
        self.holds_place = True
        await super().handle_connection_init(message)  # checks the key, then acknowledges
        if not self.connection_acknowledged:  # refused: its place is free at once
            self._leave()
            return
        if (limiter := self._web.limiter) is not None:
            await limiter.spend(self.who, 1)  # opening it is a request; its operations are refused once spent

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        payload: Any = message.get("payload")
        if (
            not self.connection_acknowledged
            or "id" not in message
            or message["id"] in self.operations
            or not isinstance(payload, dict)
            or "query" not in payload
            or len(self.operations) >= (self.max_subscriptions_per_connection or math.inf)
        ):
            await super().handle_subscribe(message)  # the protocol's own answers (closes, its limit)
            return
        refusal = await self._refusal(payload["query"])
        if refusal is not None:
            await self.send_message({"id": message["id"], "type": "error", "payload": [refusal]})
            return
        await super().handle_subscribe(message)

    async def _refusal(self, query: object) -> GraphQLFormattedError | None:
        """Why the operation may not run, as the error its client gets (server/gates.py)."""
        res = self.context.resources
        return await operation_refusal(
            query,
            who=self.who,
            limiter=self._web.limiter,
            metrics=res.metrics,
            max_query_chars=res.settings.max_query_chars,
            documents=self._web.documents,
        )

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        # Its own task: the jobs it runs are counted on its own request info (server.observe.count_job).
        with answering(RequestInfo(new_request_id())) as info:
            try:
                await super().run_operation(operation)
            finally:
                await self._charge(info)

    async def _send_result_stream(self, operation: Operation[Context, None], result_source: StreamResult) -> None:
        try:
            await super()._send_result_stream(operation, result_source)
        except GraphQLError as error:
            # A parse error (the token limit's too) escapes Strawberry's stream when an extension parses
            # (ParserCache): answered as over HTTP, not as a bare `complete` and a logged traceback.
            await operation.send_initial_errors([error])

    async def send_message(self, message: Message) -> None:
        kind, answer = message["type"], cast("dict[str, Any]", message)
        if kind == "error":
            answer["payload"] = capped_errors(answer["payload"], self.context.settings.graphql_max_errors)
        elif kind == "next" and answer["payload"].get("errors"):
            errors = capped_errors(answer["payload"]["errors"], self.context.settings.graphql_max_errors)
            answer["payload"]["errors"] = errors
        await super().send_message(message)
        if (info := current_request()) is not None:  # sent from an operation's task
            await self._charge(info)

    async def _charge(self, info: RequestInfo) -> None:
        """Spend the jobs the operation ran, and those stopped at their deadline, since it was last charged."""
        await charge(self._web.limiter, self.who, info)
