"""Answers the server gives before GraphQL runs (limits, keys, rate limits), shaped as GraphQL errors."""

from __future__ import annotations

from starlette.types import Send

from datagraph import jsonutil

__all__ = ["error_body", "send_error"]


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
