"""A small synchronous graphql-transport-ws client for the tests, on the websockets library."""

from __future__ import annotations

import contextlib
import json
import time
from types import TracebackType
from typing import Any

from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

__all__ = ["Ws", "ws_open"]


def ws_open(base: str, headers: dict[str, str] | None = None, **options: Any) -> ClientConnection:
    """A websocket to `base`'s /graphql speaking graphql-transport-ws (not yet initialised).
    `options` go to websockets' `connect` (max_size, max_queue, compression, ping_interval...)."""
    url = base.replace("http://", "ws://") + "/graphql"
    conn: ClientConnection = connect(
        url,
        subprotocols=[Subprotocol("graphql-transport-ws")],
        open_timeout=5,
        additional_headers=headers,
        **options,
    )
    return conn


class Ws:
    """A graphql-transport-ws client on one connection; a context manager that closes it."""

    def __init__(
        self,
        base: str,
        params: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        self.stack = contextlib.ExitStack()
        self.conn: ClientConnection = self.stack.enter_context(ws_open(base, headers, **options))
        self.conn.send(json.dumps({"type": "connection_init", "payload": params or {}}))
        assert self.next_message(5)["type"] == "connection_ack"

    def __enter__(self) -> Ws:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def subscribe(self, query: str, variables: dict[str, Any], op: str = "1") -> None:
        self.conn.send(json.dumps({"id": op, "type": "subscribe", "payload": {"query": query, "variables": variables}}))

    def complete(self, op: str = "1") -> None:
        self.conn.send(json.dumps({"id": op, "type": "complete"}))

    def next_message(self, timeout: float = 10) -> dict[str, Any]:
        while True:
            raw = self.conn.recv(timeout=timeout)
            assert isinstance(raw, str), "graphql-transport-ws messages must be text frames (browsers need them)"
            message: dict[str, Any] = json.loads(raw)
            if message["type"] != "ping":
                return message

    def next_data(self, timeout: float = 10) -> dict[str, Any]:
        message = self.next_message(timeout)
        assert message["type"] == "next", message
        data: dict[str, Any] = message["payload"]["data"]
        return data

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Every message that arrives within `seconds`."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.next_message(left))
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        self.stack.close()
