"""Persisted GraphQL documents as the server knows them: trusted ones from the `documents_dir` folder
(kept in memory, read at start and again when its files change), those in the metadata database
(`datagraph documents add`, and Apollo's APQ registrations, shared by every server process), and
an LRU in front of the database so a hot hash is looked up there once.

`resolve` turns one GraphQL-over-HTTP operation that names a persisted document (`documentId:
"sha256:<hex>"`, or APQ's `extensions.persistedQuery {version: 1, sha256Hash}`) into the document's
text, registering an APQ document sent with its text; `admit` refuses, with `persisted_only`, any
document that is not persisted. Refusals are `PersistedRefusal`s, answered as GraphQL errors.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from graphql import GraphQLError, parse
from strawberry.http import GraphQLRequestData

from datagraph.settings import Settings
from server.responses import query_too_long
from storage import Documents, document_hash

__all__ = ["NOT_FOUND_MESSAGE", "PERSISTED_GET", "DocumentRegistry", "PersistedRefusal"]

log = logging.getLogger("datagraph")
NOT_FOUND_MESSAGE = "PersistedQueryNotFound"  # exactly Apollo Server's: urql retries on it, Apollo on the code
MISMATCH_MESSAGE = "provided sha does not match query"  # Apollo Server's words
# Set while a GET that named a persisted document runs: such a GET may carry a query even in production
# mode, where other GET queries are off (the document is one the server was given, and GET is what
# lets a browser or proxy cache it).
PERSISTED_GET: contextvars.ContextVar[bool] = contextvars.ContextVar("persisted_get", default=False)
_HEX = re.compile(r"[0-9a-fA-F]{64}")
_LRU_DOCUMENTS = 1_024
_LRU_CHARS = 4_000_000  # the LRU holds at most this many characters of document text in all
_WATCH_S = 2.0
_SAY_EVERY_S = 60.0  # a registration the database could not take is logged at most this often


class PersistedRefusal(Exception):
    """A request about persisted documents that cannot run: answered with `status`, `message`, `code`."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _bad(message: str) -> PersistedRefusal:
    return PersistedRefusal(400, message, "BAD_INPUT")


class DocumentRegistry:
    """Look documents up by hash (folder, LRU, then the database) and register APQ ones."""

    def __init__(self, settings: Settings, table: Documents) -> None:
        self.settings = settings
        self.table = table
        self.folder = Path(settings.documents_dir) if settings.documents_dir else None
        self.trusted: dict[str, str] = {}  # the folder's documents by hash
        self._signature: tuple[tuple[str, int, int], ...] = ()
        self._lru: OrderedDict[str, str] = OrderedDict()
        self._lru_chars = 0
        self._full_said = False
        self._failed_said = -_SAY_EVERY_S

    # the folder

    def load_folder(self) -> None:
        """Read the folder's .graphql files (at most `persisted_max_documents`, each at most
        `max_query_chars`), when they changed since the last read."""
        if self.folder is None:
            return
        signature = self._scan()
        if signature == self._signature:
            return
        documents: dict[str, str] = {}
        for name, _size, _mtime in signature:
            try:
                raw = (self.folder / name).read_bytes()
                text = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("documents_dir: skipped a file that could not be read as UTF-8 (%s)", type(exc).__name__)
                continue
            if query_too_long(text, self.settings.max_query_chars):
                log.warning("documents_dir: skipped a document longer than max_query_chars")
                continue
            documents[document_hash(text)] = text
        self.trusted = documents
        self._signature = signature
        log.info("documents_dir: %d trusted document(s)", len(documents))

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        assert self.folder is not None
        found: list[tuple[str, int, int]] = []
        limit = self.settings.persisted_max_documents
        cap = self.settings.max_query_chars * 4  # bytes: a longer file is skipped unread
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if not entry.name.endswith(".graphql") or not entry.is_file():
                        continue
                    stat = entry.stat()
                    if stat.st_size <= cap:
                        found.append((entry.name, stat.st_size, stat.st_mtime_ns))
                    if len(found) >= limit:
                        break
        except OSError:
            return ()
        return tuple(sorted(found))

    async def watch(self) -> None:
        """Read the folder again whenever its files change (polled: it works on any mount)."""
        while self.folder is not None:
            await asyncio.sleep(_WATCH_S)
            try:
                await asyncio.to_thread(self.load_folder)
            except Exception:  # a bad read is retried next time; it must not stop the watch
                log.exception("documents_dir: could not be read")

    # look-ups

    async def lookup(self, digest: str) -> str | None:
        """The text of the persisted document whose hex SHA-256 is `digest`, or None."""
        digest = digest.lower()
        if (text := self.trusted.get(digest)) is not None:
            return text
        if (text := self._lru.get(digest)) is not None:
            self._lru.move_to_end(digest)
            return text
        text = await asyncio.to_thread(self.table.get, digest)
        if text is not None:
            self._remember(digest, text)
        return text

    def _remember(self, digest: str, text: str) -> None:
        if len(text) > _LRU_CHARS:
            return
        if digest in self._lru:
            return
        self._lru[digest] = text
        self._lru_chars += len(text)
        while len(self._lru) > _LRU_DOCUMENTS or self._lru_chars > _LRU_CHARS:
            _, dropped = self._lru.popitem(last=False)
            self._lru_chars -= len(dropped)

    async def _register(self, digest: str, text: str) -> None:
        """Keep an APQ document (its hash checked) unless it is too long or not GraphQL at all."""
        if too_long := query_too_long(text, self.settings.max_query_chars):
            raise PersistedRefusal(413, too_long, "TOO_LARGE")
        try:
            parse(text, no_location=True, max_tokens=self.settings.graphql_max_tokens)
        except (GraphQLError, RecursionError):
            return  # the view answers its syntax error; nothing is kept
        try:
            added = await asyncio.to_thread(
                self.table.add, text, kind="apq", limit=self.settings.persisted_max_documents
            )
        except sa.exc.SQLAlchemyError as exc:
            # Best effort, as when the table is full: the query runs, its client registers it again on
            # its next PersistedQueryNotFound. Another process may hold the write lock (SQLite), or the
            # database may be away for a moment.
            now = time.monotonic()
            if now - self._failed_said >= _SAY_EVERY_S:
                self._failed_said = now
                log.warning("persisted documents: an APQ registration was not kept (%s)", type(exc).__name__)
            return
        if added == "full":
            if not self._full_said:  # once: a flood must not flood the log too
                self._full_said = True
                log.warning(
                    "persisted documents: trusted ones fill persisted_max_documents; APQ ones run but are not kept"
                )
            return
        self._remember(digest, text)

    # requests

    async def resolve(self, query: Any, extensions: Any, document_id: Any) -> tuple[str, dict[str, Any] | None] | None:
        """The document text (and the extensions left) of an operation naming a persisted document, or
        None for one that names none."""
        apq = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        if document_id is None and apq is None:
            return None
        if document_id is not None and apq is not None:
            raise _bad("Send either documentId or extensions.persistedQuery, not both.")
        rest = ({k: v for k, v in extensions.items() if k != "persistedQuery"} or None) if extensions else None
        if query is not None and not isinstance(query, str):
            raise _bad("The GraphQL operation's `query` must be a string or null, if provided.")
        if document_id is not None:
            if not isinstance(document_id, str) or not document_id.startswith("sha256:"):
                raise _bad('A documentId is "sha256:" followed by the hex SHA-256 of the document\'s exact text.')
            digest = document_id.removeprefix("sha256:")
            if not _HEX.fullmatch(digest):
                raise _bad('A documentId is "sha256:" followed by the hex SHA-256 of the document\'s exact text.')
            if query and document_hash(query) != digest.lower():
                raise _bad(MISMATCH_MESSAGE)
            text = await self.lookup(digest)
            if text is None:
                message = (
                    "No persisted document has this documentId: put it in the documents folder (setting"
                    " documents_dir) or register it with `datagraph documents add`."
                )
                raise PersistedRefusal(200, message, "PERSISTED_QUERY_NOT_FOUND")
            return text, rest
        return await self._apq(query, apq, rest)

    async def _apq(self, query: str | None, apq: Any, rest: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
        if not isinstance(apq, dict) or apq.get("version") != 1:
            raise _bad("Unsupported persisted query version: extensions.persistedQuery needs version 1.")
        digest = apq.get("sha256Hash")
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise _bad("extensions.persistedQuery.sha256Hash must be the hex SHA-256 of the query's text.")
        digest = digest.lower()
        if not query:
            text = await self.lookup(digest)
            if text is None:
                raise PersistedRefusal(200, NOT_FOUND_MESSAGE, "PERSISTED_QUERY_NOT_FOUND")
            return text, rest
        if document_hash(query) != digest:
            raise _bad(MISMATCH_MESSAGE)
        if await self.lookup(digest) is None:
            if self.settings.persisted_only:
                raise _not_allowed()
            await self._register(digest, query)
        return query, rest

    async def refusal(self, query: object) -> PersistedRefusal | None:
        """With `persisted_only`, why a query text may not run: it is no persisted document."""
        if not self.settings.persisted_only or not isinstance(query, str):
            return None
        return _not_allowed() if await self.lookup(document_hash(query)) is None else None

    async def admit(self, data: GraphQLRequestData | list[GraphQLRequestData]) -> Any:
        """The view's hook: resolve what the middleware did not see (an APQ operation in a multipart
        upload), and with `persisted_only` refuse every document that is not persisted."""
        items = data if isinstance(data, list) else [data]
        out = []
        for item in items:
            resolved = await self.resolve(item.query, item.extensions, None)
            if resolved is not None:
                item = GraphQLRequestData(resolved[0], item.variables, item.operation_name, resolved[1], item.protocol)
            if (refusal := await self.refusal(item.query)) is not None:
                raise refusal
            out.append(item)
        return out if isinstance(data, list) else out[0]


def _not_allowed() -> PersistedRefusal:
    message = (
        "Only persisted documents run on this server (setting persisted_only): send a documentId or an APQ"
        " hash of a registered document."
    )
    return PersistedRefusal(400, message, "PERSISTED_QUERY_NOT_ALLOWED")
