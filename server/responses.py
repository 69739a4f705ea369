"""Answers the server gives before GraphQL runs (limits, keys, rate limits), shaped as GraphQL errors,
in the media type the client asked for.

GraphQL-over-HTTP (https://graphql.github.io/graphql-over-http/draft/) has two response media types:
`application/json`, where GraphQL errors are answered 200, and `application/graphql-response+json`,
where a request that never ran (a body, a document or variables that are not valid) is a 4xx.
`response_type` picks the one a request's `Accept` prefers; no `Accept`, `*/*` and `application/*`
mean `application/json`, as always.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.types import Scope, Send

from datagraph import jsonutil

__all__ = [
    "GRAPHQL_RESPONSE",
    "JSON",
    "capped_errors",
    "content_type",
    "error_body",
    "header",
    "negotiate",
    "query_too_long",
    "response_type",
    "send_error",
]

JSON = "application/json"
GRAPHQL_RESPONSE = "application/graphql-response+json"
_CONTENT_TYPES = {JSON: b"application/json", GRAPHQL_RESPONSE: b"application/graphql-response+json; charset=utf-8"}
_ANSWERED_AS = {
    b"application/graphql-response+json": GRAPHQL_RESPONSE,
    b"application/json": JSON,
    b"application/*": JSON,
    b"*/*": JSON,
}


def header(scope: Scope, name: bytes) -> bytes:
    """The first value of header `name` (lower case) in an ASGI scope, or b"": one pass over the
    list, without copying it into a dict on every request."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def response_type(scope: Scope) -> str | None:
    """The media type to answer a request in (`JSON` or `GRAPHQL_RESPONSE`), or None when its
    `Accept` names neither (nor a wildcard): the view answers that 406."""
    return negotiate(header(scope, b"accept"))


def content_type(media: str | None) -> bytes:
    """The `content-type` header of an answer in `media` (None, an unsatisfiable Accept: JSON)."""
    return _CONTENT_TYPES[media or JSON]


_MEMO_LONGEST = 1_024  # bytes: longer Accept headers are parsed each time, never kept


def negotiate(accept: bytes) -> str | None:
    """The media type an `Accept` header prefers (`JSON` or `GRAPHQL_RESPONSE`): the highest q-value,
    on a tie the one listed first; none listed (or only with q=0): None. The few headers clients send
    are parsed once each; a long one (the server reads headers of a megabyte) is not kept."""
    if len(accept) > _MEMO_LONGEST:
        return _negotiate(accept)
    return _memo(accept)


@functools.lru_cache(maxsize=256)
def _memo(accept: bytes) -> str | None:
    return _negotiate(accept)


def _negotiate(accept: bytes) -> str | None:
    if not accept.strip():
        return JSON
    best: str | None = None
    best_q = 0.0
    for item in accept.lower().split(b","):
        media, *params = item.split(b";")
        answered = _ANSWERED_AS.get(media.strip())
        if answered is None:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition(b"=")
            if name.strip() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if 0 < q <= 1 and q > best_q:
            best, best_q = answered, q
    return best


def error_body(message: str, code: str) -> bytes:
    """A GraphQL-shaped error answer for refusals made before GraphQL runs (limits, keys)."""
    return jsonutil.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    code: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Answer an ASGI request with `error_body` and `status`, from a middleware, in the media type
    the request accepts (JSON when it accepts neither)."""
    body = error_body(message, code)
    length = str(len(body)).encode()
    start = [(b"content-type", content_type(response_type(scope))), (b"content-length", length), *headers]
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
