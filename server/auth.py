"""API keys: made and revoked with `datagraph keys`, kept as SHA-256 hashes in the metadata database,
checked on every request but a few public paths, and on websockets from `connectionParams`.

Keys are off on loopback by default and required as soon as the server binds any other address
(setting `api_keys`: `auto` or `on`). A key travels as `Authorization: Bearer KEY` or `X-API-Key: KEY`;
on a websocket, where browsers cannot set headers, as `{"apiKey": KEY}` in `connection_init`'s payload.
A missing or wrong key gets `UNAUTHENTICATED` and nothing else.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from server.responses import header, send_error

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from storage import MetadataStore

__all__ = [
    "KEYS_TTL_S",
    "KEY_PREFIX",
    "KEY_WATCH_S",
    "NO_KEYS_MESSAGE",
    "UNAUTHENTICATED_MESSAGE",
    "KeyRing",
    "RequireKey",
    "hash_key",
    "new_key",
    "params_key",
    "presented_key",
]

KEY_PREFIX = "dg_"
NO_KEYS_MESSAGE = (
    "API keys are required (the server binds a non-loopback address, or api_keys=on) and there are none:"
    " create one with `datagraph keys create --name NAME` (with the same --data-dir or --metadata-url)."
)
UNAUTHENTICATED_MESSAGE = "A valid API key is required (header 'Authorization: Bearer KEY' or 'X-API-Key: KEY')."
# Revoking a key takes effect in every server process within this long (open websockets included:
# their key is checked again every KEY_WATCH_S).
KEYS_TTL_S = 0.75
KEY_WATCH_S = 0.2
# Open without a key: the web page and its files (it asks for the key), liveness, and export links
# (each is an unguessable, expiring token that a browser follows without headers).
_PUBLIC_PREFIXES = ("/static/", "/exports/")
_PUBLIC_PATHS = frozenset({"/", "/healthz", "/favicon.ico"})


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe, with a prefix that makes it recognisable in a leak scan."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in `Authorization: Bearer` or `X-API-Key` (header names in lower case), if any."""
    bearer = headers.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


def params_key(params: Any) -> str | None:
    """The key in a websocket `connection_init` payload: `apiKey`, or an `Authorization`/`X-API-Key` entry."""
    if not isinstance(params, dict):
        return None
    key = params.get("apiKey")
    if isinstance(key, str) and key.strip():
        return key.strip()
    nested = params.get("headers")
    headers: dict[Any, Any] = nested if isinstance(nested, dict) else params
    lowered = {str(k).lower(): v for k, v in headers.items() if isinstance(v, str)}
    return presented_key(lowered)


class KeyRing:
    """The valid keys' hashes, re-read from the metadata database at most once a second."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata
        self._hashes: dict[str, str] = {}
        self._read_at = -KEYS_TTL_S

    def _current(self) -> dict[str, str]:
        if time.monotonic() - self._read_at >= KEYS_TTL_S:
            self._hashes = self._metadata.key_hashes()
            self._read_at = time.monotonic()
        return self._hashes

    def check(self, key: str | None) -> str | None:
        """The name of the key, or None when it is missing or not valid."""
        if not key:
            return None
        # One dict look-up by the key's SHA-256, whatever the number of keys (it was a scan of them all,
        # issue 18). Its timing can tell about the digest only, and a digest says nothing of any key.
        return self._current().get(hash_key(key))

    def count(self) -> int:
        return len(self._current())


KEY_SCOPE_KEY = "datagraph.key"


class RequireKey:
    """Refuse HTTP requests without a valid key (401, UNAUTHENTICATED), except on public paths and the
    GraphiQL page itself. Websockets pass here and are checked at `connection_init`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._public(scope):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ring: KeyRing = scope["app"].state.web.keys
        if (name := ring.check(presented_key(headers))) is not None:
            scope[KEY_SCOPE_KEY] = name  # whose answers the answer cache may give this request
            await self.app(scope, receive, send)
            return
        challenge = ((b"www-authenticate", b'Bearer realm="datagraph"'),)
        await send_error(scope, send, 401, UNAUTHENTICATED_MESSAGE, "UNAUTHENTICATED", challenge)

    @staticmethod
    def _public(scope: Scope) -> bool:
        path: str = scope["path"]
        if path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES):
            return True
        if path == "/graphql" and scope["method"] == "GET":  # the explorer page (no query); its queries carry the key
            accept = header(scope, b"accept")
            params = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            # A persisted query names its document instead of sending it: an operation all the same.
            asks = not params.keys().isdisjoint(("query", "documentId", "extensions"))
            return not asks and (b"text/html" in accept or b"*/*" in accept)  # as Strawberry decides
        return False
