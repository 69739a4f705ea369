"""Answers the server gives before GraphQL runs (limits, keys, rate limits), shaped as GraphQL errors."""

from __future__ import annotations

from typing import Any

from starlette.types import Scope, Send

from datagraph import jsonutil

__all__ = ["capped_errors", "error_body", "header", "query_too_long", "send_error"]


def header(scope: Scope, name: bytes) -> bytes:
    """The first value of header `name` (lower case) in an ASGI scope, or b"": one pass over the
    list, without copying it into a dict on every request."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def error_body(message: str, code: str) -> bytes:
    """A GraphQL-shaped error answer for refusals made before GraphQL runs (limits, keys)."""
    return jsonutil.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})


async def send_error(
    send: Send, status: int, message: str, code: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Answer an ASGI request with `error_body` and `status`, from a middleware."""
    body = error_body(message, code)
    length = str(len(body)).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", length), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def query_too_long(query: object, limit: int) -> str | None:
    """Why a query text is refused for its length (setting max_query_chars), or None."""
    if isinstance(query, str) and len(query) > limit:
        return f"The query is longer than {limit:,} characters (setting max_query_chars)."
    return None


def capped_errors(errors: list[Any], limit: int) -> list[Any]:
    """At most `limit` errors (setting graphql_max_errors), and one that counts the rest."""
    if len(errors) <= limit:
        return errors
    return [*errors[:limit], {"message": f"{len(errors) - limit} more errors not shown (setting graphql_max_errors)."}]
