"""Persisted documents over HTTP: the ASGI middleware in front of the answer cache.

A POST (JSON) or GET on /graphql that names a persisted document (`documentId`, or Apollo's
`extensions.persistedQuery`) is rewritten into the plain operation it stands for before anything
below sees it, so the answer cache and the view treat it as any other query; what cannot run is
answered here as a GraphQL error (`server/documents.py` says which). Requests that name none pass
untouched: the body is only searched for the two names.

A persisted query sent by GET gets an `ETag` when its answer can be vouched for the way the answer
cache vouches for what it keeps (server/answers.py): a query whose every field reads datasets or
the dataset list, that succeeded, with no error. The tag is derived from the document, the
variables, the operation, the caller's scope (its API key's name) and the versions of the datasets
the answer read (`READS_SCOPE_KEY`), taken from the metadata database, so every server process
sharing it gives the same tag; `If-None-Match` with the current tag answers 304 with no body. The
tag is given only when nothing could have changed unseen while the query ran: with a SQLite
metadata file, no write to the datasets or their versions in between; elsewhere, no change heard of, and only with Redis
carrying other processes' changes (as for the answer cache).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode

from graphql import GraphQLSchema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datagraph import jsonutil
from datagraph.answers import ANY_DATASET, ReadLog
from datagraph.settings import Settings, keys_required
from server.answers import READS_SCOPE_KEY, buffered_body, datasets_only, replay
from server.auth import KEY_SCOPE_KEY, UNAUTHENTICATED_MESSAGE, presented_key
from server.documents import PERSISTED_GET, DocumentRegistry, PersistedRefusal
from server.responses import header, send_error

__all__ = ["PersistedDocuments"]

_NAMES = (b"documentId", b"persistedQuery")


class PersistedDocuments:
    """Resolve persisted documents in GraphQL requests; tag persisted GET answers (ETag, 304)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, schema: GraphQLSchema) -> None:
        self.app = app
        self.schema = schema
        self.keys_required = keys_required(settings)
        self.cache_control = b"private, no-cache" if self.keys_required else b"no-cache"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/graphql":
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] == "POST":
                await self._post(scope, receive, send)
            elif scope["method"] == "GET" and any(name in scope["query_string"] for name in _NAMES):
                if self.keys_required and KEY_SCOPE_KEY not in scope and not _keyed(scope):
                    challenge = ((b"www-authenticate", b'Bearer realm="datagraph"'),)
                    await send_error(scope, send, 401, UNAUTHENTICATED_MESSAGE, "UNAUTHENTICATED", challenge)
                    return
                await self._get(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        except PersistedRefusal as refusal:  # here, or from the view's hook before it answered
            await send_error(scope, send, refusal.status, refusal.message, refusal.code)

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
        if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            await self.app(scope, receive, send)
            return
        original = receive
        body, receive = await buffered_body(original)
        if body is None or not any(name in body for name in _NAMES):
            await self.app(scope, receive, send)
            return
        try:
            data = jsonutil.loads(body)
        except ValueError:
            await self.app(scope, receive, send)  # the view answers the bad JSON
            return
        if not isinstance(data, dict):
            # A batch (or no operation at all) is the view's to answer, and it refuses batches: resolving
            # each entry first would let one request register as many APQ documents as fit its body.
            await self.app(scope, receive, send)
            return
        documents: DocumentRegistry = scope["app"].state.web.documents
        if await _resolve_into(documents, data):
            body = jsonutil.dumps(data)
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            receive = replay([{"type": "http.request", "body": body, "more_body": False}], original)
        await self.app(scope, receive, send)

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if any(len(values) != 1 for values in params.values()):
            await self.app(scope, receive, send)  # the view reads such a request as it always does
            return
        operation: dict[str, Any] = {k: v[0] for k, v in params.items()}
        for name in ("extensions", "variables"):
            if operation.get(name):
                try:
                    operation[name] = jsonutil.loads(operation[name])
                except ValueError:
                    await self.app(scope, receive, send)  # the view answers the bad JSON
                    return
        documents: DocumentRegistry = scope["app"].state.web.documents
        if not await _resolve_into(documents, operation):
            await self.app(scope, receive, send)
            return
        query = {k: v if isinstance(v, str) else jsonutil.dumps(v).decode() for k, v in operation.items()}
        scope = {**scope, "query_string": urlencode(query).encode("latin-1", "strict")}
        persisted = PERSISTED_GET.set(True)
        try:
            await self._tagged(scope, receive, send, operation)
        finally:
            PERSISTED_GET.reset(persisted)

    async def _tagged(self, scope: Scope, receive: Receive, send: Send, operation: dict[str, Any]) -> None:
        """Run a persisted GET and tag its answer (or answer 304 to a current `If-None-Match`)."""
        resources = scope["app"].state.resources
        scope[READS_SCOPE_KEY] = ReadLog(resources.events.versions)  # the answer cache puts its own in
        stamp = resources.metadata.change_stamp()
        start: Message | None = None

        async def tagging_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            held, start = start, None
            body = message.get("body", b"")
            tag = None if message.get("more_body") else self._tag(scope, operation, held["status"], body, stamp)
            if tag is None:
                await send(held)
                await send(message)
                return
            headers = [(k, v) for k, v in held.get("headers", ()) if k.lower() not in (b"etag", b"cache-control")]
            headers += [(b"etag", tag), (b"cache-control", self.cache_control)]
            if _matches(header(scope, b"if-none-match"), tag):
                headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            await send({**held, "headers": headers})
            await send(message)

        await self.app(scope, receive, tagging_send)

    def _tag(self, scope: Scope, operation: dict[str, Any], status: int, body: bytes, stamp: Any) -> bytes | None:
        """The answer's ETag, or None when it cannot be vouched for."""
        reads: ReadLog | None = scope.get(READS_SCOPE_KEY)
        if status != 200 or reads is None or reads.refused is not None:
            return None
        query: str = operation["query"]
        name = operation.get("operationName")
        if not isinstance(name, (str, type(None))) or datasets_only(self.schema, query, name) is None:
            return None
        if b'"errors":' in body:
            answer = jsonutil.loads(body)
            if not isinstance(answer, dict) or "errors" in answer:
                return None
        resources = scope["app"].state.resources
        metadata = resources.metadata
        versions = []
        for dataset in sorted(reads.reads):
            if dataset == ANY_DATASET:
                versions.append([dataset, *metadata.listing_stamp()])
                continue
            record = metadata.get_dataset(dataset)
            versions.append([dataset, *((record.version, record.updated_at) if record else ())])
        if stamp is not None:
            if metadata.change_stamp() != stamp:
                return None  # a dataset was written while it ran: the versions read may not be those
        elif not resources.events.redis_url or not resources.events.versions.unchanged(
            tuple(reads.reads.items()), reads.resets
        ):
            return None
        key = [query, operation.get("variables") or {}, name, scope.get(KEY_SCOPE_KEY, ""), header(scope, b"host")]
        try:
            digest = jsonutil.canonical_hash([*key[:4], key[4].decode("latin-1"), versions])
        except (TypeError, ValueError):  # orjson's own nesting limit
            return None
        return b'W/"' + digest[:40].encode() + b'"'


async def _resolve_into(documents: DocumentRegistry, operation: dict[str, Any]) -> bool:
    """Put the persisted document an operation names in its `query`; False when it names none."""
    resolved = await documents.resolve(operation.get("query"), operation.get("extensions"), operation.get("documentId"))
    if resolved is None:
        return False
    operation["query"], extensions = resolved
    operation.pop("documentId", None)
    operation.pop("extensions", None)
    if extensions:
        operation["extensions"] = extensions
    return True


def _keyed(scope: Scope) -> bool:
    """Check the key of a GET the key check let through unchecked (it names no `query`: it might be
    the explorer page), which is a query all the same when it names a persisted document: whether
    its key is valid; the key's name goes in the scope, as the key check puts it (answer cache, ETag)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    name = scope["app"].state.web.keys.check(presented_key(headers))
    if name is None:
        return False
    scope[KEY_SCOPE_KEY] = name
    return True


def _matches(if_none_match: bytes, tag: bytes) -> bool:
    """Whether `If-None-Match` names `tag` (weak comparison, as RFC 9110 asks for it)."""
    if not if_none_match:
        return False
    bare = tag.removeprefix(b"W/")
    return any(
        candidate.strip() == b"*" or candidate.strip().removeprefix(b"W/") == bare
        for candidate in if_none_match.split(b",")
    )
