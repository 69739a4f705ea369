"""The answer cache: whole GraphQL answers served again, byte for byte, while what they read is unchanged.

A pure ASGI middleware in front of the GraphQL view, inside every gate (host, CORS, body limits,
keys, rate limits: a hit still spends its budget). Only HTTP queries are kept (POST with a JSON
body, or GET where GET may carry queries), keyed by the caller's scope (its API key's name when keys
are on), the base URL (export links name it), the method (a GET is read-only), the media type the
request accepts (an answer keeps its content type), the document, the canonical variables and the
operation name. A request whose document or variables name a cache
mode other than USE (`BYPASS`, `REFRESH`) is never answered here.

On a miss the operation runs as always with a `ReadLog` in its context (datagraph/answers.py); its
answer is kept only when it is a query, its status 200 with no errors, every result in it
succeeded, every field it selects reads datasets or the dataset list only (no sources, plugins,
jobs, `sql`, `export` or introspection), nothing it read is a linked table, and the stored template
gives back its exact bytes. A hit is served while each dataset it read has had no change since:
the event bus keeps those counts current, here and, with a redis:// `cache_url`, across processes.
Its `meta.cached` become true and `meta.elapsedMs` the time the hit took; nothing else differs.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from graphql import (
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationType,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    get_operation_ast,
    parse,
    visit,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datagraph import jsonutil
from datagraph.answers import DatasetVersions, ReadLog
from datagraph.metrics import Metrics, operation_label
from server.auth import KEY_SCOPE_KEY
from server.responses import negotiate

__all__ = ["READS_SCOPE_KEY", "AnswerCache", "buffered_body", "datasets_only", "replay"]

log = logging.getLogger("datagraph.cache")
READS_SCOPE_KEY = "datagraph.reads"

# The fields an answer worth keeping may select: those that read datasets (their metadata or rows)
# and nothing else. Anything else (a type not listed, an introspection field) keeps it out.
_QUERY_FIELDS = frozenset({"datasets", "dataset", "datasetSql"})
_DATASET_TYPES = frozenset({"Dataset", "Frame", "View", "Result", "Meta", "Column", "Problem"})
# A link that must stay valid; a database source's live status; a schedule (setSchedule changes no version,
# so a persisted GET's ETag, made of the versions read, would vouch for the old one).
_NEVER = frozenset({"export", "source", "schedule"})
_CACHE_MODES = (b"BYPASS", b"REFRESH")
_ENTRY_OVERHEAD = 400  # bytes an entry costs beyond its key's text and its body, about


@dataclass(frozen=True, slots=True)
class _Request:
    query: str
    variables: bytes  # canonical JSON
    operation: str | None


@dataclass(slots=True)
class _Answer:
    chunks: tuple[bytes, ...]  # the body around the patched fields
    cached_at: tuple[bool, ...]  # per gap between chunks: meta.cached (True) or meta.elapsedMs (False)
    headers: list[tuple[bytes, bytes]]  # the response's, without content-length
    reads: tuple[tuple[str, int], ...]
    resets: int
    size: int
    counters: tuple[Any, ...] = ()  # the metrics a hit counts (the operation, a cache hit), bound once

    def body(self, elapsed: bytes) -> bytes:
        chunks = self.chunks
        out = [chunks[0]]
        for i, cached in enumerate(self.cached_at, 1):
            out.append(b"true" if cached else elapsed)
            out.append(chunks[i])
        return b"".join(out)


class AnswerCache:
    """Serve a stored whole answer while every dataset it read is unchanged; store fit answers on a miss."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, schema: GraphQLSchema, get_queries: bool, metrics: Metrics
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.schema = schema
        self.get_queries = get_queries  # whether GET may carry queries (not in production)
        self.entries: OrderedDict[tuple[Any, ...], _Answer] = OrderedDict()
        self.used = 0
        self.hits = 0
        self.stored = 0
        self._stamp: int | None = None  # the metadata's change stamp when last compared
        self._stamps: dict[str, tuple[Any, ...]] = {}  # each dataset's stamp then
        # Stand-ins for the patched values while an answer is split into its template: a random
        # string no answer can contain by chance.
        # Each stand-in is numbered: fields resolve in any order, the answer lists them in the document's.
        self._nonce = uuid.uuid4().hex
        self._split = re.compile(b'"' + self._nonce.encode() + b'([CE])([0-9]+)"')

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/graphql":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        host = content_type = accept = b""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"content-type":
                content_type = value
            elif name == b"accept":
                if b"multipart" in value:  # incremental delivery: another answer format
                    await self.app(scope, receive, send)
                    return
                accept = value
        request: _Request | None = None
        if method == "POST":
            if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
                await self.app(scope, receive, send)
                return
            body, receive = await buffered_body(receive)
            if body is not None:
                request = _from_json(body)
        elif method == "GET" and self.get_queries and scope["query_string"]:
            request = _from_query_string(scope["query_string"])
        if request is None:
            await self.app(scope, receive, send)
            return
        key = (
            scope.get(KEY_SCOPE_KEY, ""),
            scope["scheme"],
            host,
            scope.get("root_path", ""),
            method,
            negotiate(accept),
            request.query,
            request.variables,
            request.operation,
        )
        resources = scope["app"].state.resources
        versions: DatasetVersions = resources.events.versions
        # Once a request, before any read is counted: what other processes changed is in `versions`.
        heard = self._others_heard(resources)
        answer = self.entries.get(key)
        if answer is not None:
            if heard and versions.unchanged(answer.reads, answer.resets):
                self.entries.move_to_end(key)
                self.hits += 1
                if (asked := scope.get(READS_SCOPE_KEY)) is not None:  # a persisted GET's ETag (server/persisted.py)
                    asked.reads.update(answer.reads)
                for counter in answer.counters:
                    counter.inc()
                body = answer.body(jsonutil.dumps((time.perf_counter() - started) * 1000))
                headers = [*answer.headers, (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            self._drop(key)
        await self._miss(scope, receive, send, key, request, versions)

    def _others_heard(self, resources: Any) -> bool:
        """Whether changes made by other processes have reached `versions`. A SQLite metadata file
        says cheaply when any dataset was written; then the datasets' stamps show which changed.
        Without one, only Redis events carry them: without Redis, nothing is served."""
        stamp = resources.metadata.change_stamp()
        if stamp is None:
            return bool(resources.events.redis_url)
        if stamp != self._stamp:
            stamps = resources.metadata.dataset_stamps()
            versions: DatasetVersions = resources.events.versions
            for dataset in stamps.keys() | self._stamps.keys():
                if stamps.get(dataset) != self._stamps.get(dataset):
                    versions.changed(dataset)
            self._stamps = stamps
            self._stamp = stamp
        return True

    async def _miss(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        key: tuple[Any, ...],
        request: _Request,
        versions: DatasetVersions,
    ) -> None:
        reads = ReadLog(versions)
        scope[READS_SCOPE_KEY] = reads
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"content-length"]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, capture)
        if status == 200 and reads.refused is None and self.max_bytes > 0:
            self._store(key, request, b"".join(parts), headers, reads)

    def _store(
        self,
        key: tuple[Any, ...],
        request: _Request,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        reads: ReadLog,
    ) -> None:
        label = datasets_only(self.schema, request.query, request.operation)
        if label is None:
            return
        try:
            answer = jsonutil.loads(body)
        except ValueError:
            return
        if not isinstance(answer, dict) or set(answer) != {"data"} or not isinstance(answer["data"], dict):
            return  # errors, extensions: not an answer to keep
        # Put a stand-in where each patched field is, encode as the view does, and split around them.
        resolved: list[Any] = []  # the patched values, in the order they were resolved
        for n, (path, field) in enumerate(reads.marks):
            holder, last = _holder(answer["data"], path)
            if holder is None:
                return
            resolved.append(holder[last])
            holder[last] = f"{self._nonce}{'C' if field == 'cached' else 'E'}{n}"
        pieces = self._split.split(jsonutil.dumps(answer))
        chunks = tuple(pieces[0::3])
        cached_at = tuple(p == b"C" for p in pieces[1::3])
        order = [int(n) for n in pieces[2::3]]
        if sorted(order) != list(range(len(resolved))):
            return
        originals = [resolved[n] for n in order]  # in the document's order
        template = _Answer(chunks, cached_at, headers, tuple(reads.reads.items()), reads.resets, 0)
        # The proof that the template is the answer: filled with the values it had, it is its bytes.
        restored = [template.chunks[0]]
        for value, chunk in zip(originals, template.chunks[1:], strict=True):
            restored.extend((jsonutil.dumps(value), chunk))
        if b"".join(restored) != body:
            log.debug("an answer does not encode back to its own bytes; not kept")
            return
        size = len(body) + len(request.query) + len(request.variables) + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        template.size = size
        template.counters = (self.metrics.operations.labels("query", label), self.metrics.cache.labels("hit"))
        self._drop(key)
        while self.entries and self.used + size > self.max_bytes:
            self._drop(next(iter(self.entries)))
        self.entries[key] = template
        self.used += size
        self.stored += 1

    def _drop(self, key: tuple[Any, ...]) -> None:
        answer = self.entries.pop(key, None)
        if answer is not None:
            self.used -= answer.size


@functools.lru_cache(maxsize=256)  # a document is parsed and walked once, not on every miss or tag (<= 5 MB of text)
def datasets_only(schema: GraphQLSchema, query: str, operation_name: str | None) -> str | None:
    """The operation's metrics label when it is a query whose every field reads datasets or the
    dataset list, else None."""
    try:
        document = parse(query, no_location=True)
    except GraphQLError:
        return None
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.operation != OperationType.QUERY:
        return None
    fields = _DatasetFieldsOnly(TypeInfo(schema))
    visit(document, TypeInfoVisitor(fields.type_info, fields))
    return operation_label(operation.name.value if operation.name else None) if fields.ok else None


class _DatasetFieldsOnly(Visitor):
    def __init__(self, type_info: TypeInfo) -> None:
        super().__init__()
        self.type_info = type_info
        self.ok = True

    def enter_field(self, node: FieldNode, *_args: Any) -> None:
        name = node.name.value
        if name == "__typename":
            return
        parent = self.type_info.get_parent_type()
        kind = parent.name if parent is not None else ""
        if kind == "Query":
            self.ok = self.ok and name in _QUERY_FIELDS
        else:
            self.ok = self.ok and kind in _DATASET_TYPES and name not in _NEVER


def _holder(data: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    """The dict or list holding the value at `path` in the answer's data, and its key there."""
    node = data
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None, None
    if isinstance(node, dict) and path[-1] in node:
        return node, path[-1]
    return None, None


async def buffered_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole request body (None if the client went away first) and a `receive` that gives it again."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            pending: list[Message] = [
                {"type": "http.request", "body": b"".join(parts), "more_body": True},
                message,
            ]
            return None, replay(pending, receive)
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(parts) if len(parts) != 1 else parts[0]
    return body, replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def replay(pending: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def _from_json(body: bytes) -> _Request | None:
    try:
        data = jsonutil.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None  # a batch
    return _request(data.get("query"), data.get("variables"), data.get("operationName"), data.get("extensions"))


def _from_query_string(raw: bytes) -> _Request | None:
    params = parse_qs(raw.decode("latin-1"), keep_blank_values=True)
    if any(len(values) != 1 for values in params.values()):
        return None
    variables: Any = None
    if "variables" in params:
        try:
            variables = jsonutil.loads(params["variables"][0])
        except ValueError:
            return None
    one = {k: v[0] for k, v in params.items()}
    return _request(one.get("query"), variables, one.get("operationName"), one.get("extensions"))


def _request(query: Any, variables: Any, operation: Any, extensions: Any) -> _Request | None:
    if not isinstance(query, str) or not query or extensions is not None:
        return None
    if variables is not None and not isinstance(variables, dict):
        return None
    if operation is not None and not isinstance(operation, str):
        return None
    try:
        canonical = jsonutil.canonical(variables or {})
    except (TypeError, ValueError):  # orjson's own nesting limit
        return None
    encoded_query = query.encode("utf-8", "surrogatepass")
    if any(mode in encoded_query or mode in canonical for mode in _CACHE_MODES):
        return None  # cache: BYPASS or REFRESH somewhere in it: run it as asked
    return _Request(query, canonical, operation)
