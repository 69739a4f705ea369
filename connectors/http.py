"""The outbound HTTP client of the API-pull plugins (guarded, bounded GETs with retries) and of the
webhook (a POST with the same guards, retries and deadline).

One `HttpClient` per process owns the connection pool; each plugin run gets an `HttpSession`
(`client.session(deadline_s=...)`) that counts what it did in `HttpStats`. A GET through a session:

- only http and https URLs;
- never connects to a blocked network: the default transport resolves the host itself, refuses
  the connection if ANY address is in `blocked_networks`, and connects to exactly the addresses
  it checked (no second lookup, so DNS rebinding cannot slip past the check). TLS still verifies
  the certificate against the host name;
- follows redirects itself, at most `max_redirects`, each hop through the same guard; a hop to
  another origin drops the plugin's own headers (they may carry credentials);
- retries connection errors, timeouts, 429, 502, 503 and 504 with full-jitter exponential backoff,
  honouring `Retry-After` up to `retry_after_max_s`, never past the session's deadline;
- streams the body and stops past `max_response_bytes`; only whole bodies are returned;
- sends `If-None-Match` / `If-Modified-Since` from the session's validators; 304 raises `NotModified`.

Failures become datagraph errors whose messages name the upstream host, never a header, a query
string or a library's text.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from connectors._guard import Blocked, GuardedTransport, networks
from datagraph import tracing
from datagraph.errors import BadInput, SourceUnavailable, Timeout, TooLarge
from datagraph.plugin import NotModified

__all__ = ["HttpClient", "HttpSession", "HttpSettings", "HttpStats", "NotModified", "backoff_wait"]

log = logging.getLogger("datagraph.http")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TIMES = ("once", "twice", "three times", "four times", "five times", "six times", "seven times", "eight times")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The knobs of outbound HTTP: the `http_*` server settings (their defaults are there), and two
    that are not settings."""

    connect_timeout_s: float
    read_timeout_s: float
    attempts: int  # total tries, first included
    backoff_s: float  # retry n (0 for the first) waits uniform(0, min(cap, base * 2**n))
    backoff_cap_s: float
    retry_after_max_s: float  # a longer Retry-After gives up at once
    max_response_bytes: int
    blocked_networks: tuple[str, ...]  # CIDRs; blanks around and empty entries are ignored
    max_redirects: int = 5
    max_connections: int = 20


@dataclass
class HttpStats:
    """What one session did; plain data, so it can be pickled back from a worker process."""

    requests: int = 0  # requests sent upstream: every try of every redirect hop
    retries: int = 0
    blocked: int = 0  # connections refused by the blocked-networks guard
    status: dict[int, int] = field(default_factory=dict)  # upstream status code -> count
    retried: dict[int, int] = field(default_factory=dict)  # status that caused a retry (0: no answer) -> count

    def merge(self, other: HttpStats) -> None:
        """Add another session's counts to these."""
        self.requests += other.requests
        self.retries += other.retries
        self.blocked += other.blocked
        for code, count in other.status.items():
            self.status[code] = self.status.get(code, 0) + count
        for code, count in other.retried.items():
            self.retried[code] = self.retried.get(code, 0) + count


class _HostOnly(logging.Filter):
    """httpx logs every request's whole URL at INFO: its user info, path or query may carry a key
    (a plugin's API key, a webhook's secret path). Keep the scheme and host of each URL only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(f"{a.scheme}://{a.host}/..." if isinstance(a, httpx.URL) else a for a in record.args)
        return True


def _quiet_httpx() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _HostOnly) for f in logger.filters):
        logger.addFilter(_HostOnly())


class HttpClient:
    """One per process: owns the pooled httpx.AsyncClient (limits, timeouts, follow_redirects=False).

    `transport` replaces the guarded network transport (tests, or a fake upstream); the
    blocked-networks guard lives in the default transport, so a replacement goes unguarded.
    """

    def __init__(self, settings: HttpSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        _quiet_httpx()
        limits = httpx.Limits(
            max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
        )
        if transport is None:
            transport = GuardedTransport(networks(settings.blocked_networks), limits)
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.read_timeout_s,
                pool=settings.read_timeout_s,
            ),
            follow_redirects=False,
            # No proxies or .netrc from the environment, and no cookies kept: one pool serves every
            # plugin, and a cookie one upstream set must not travel with another plugin's request.
            trust_env=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            headers={"User-Agent": "datagraph"},
        )

    def session(
        self, *, deadline_s: float | None = None, validators: dict[str, dict[str, str]] | None = None
    ) -> HttpSession:
        """A session for one plugin run; `deadline_s` (from now) bounds all its tries and waits."""
        return HttpSession(self._client, self.settings, deadline_s=deadline_s, validators=validators)

    async def aclose(self) -> None:
        await self._client.aclose()


class HttpSession:
    """What a plugin's fetch gets as `http`: GETs with the guards, retries and an overall deadline."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: HttpSettings,
        *,
        deadline_s: float | None,
        validators: dict[str, dict[str, str]] | None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._deadline_s = deadline_s
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self.stats = HttpStats()
        # url -> {"etag": ..., "last_modified": ...}: given ones kept, refreshed by 200 answers.
        self.validators: dict[str, dict[str, str]] = {url: dict(v) for url, v in (validators or {}).items()}

    async def get(
        self, url: str, *, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """GET `url` (with `params` added to its query); a 2xx response with its whole body read."""
        target = _checked_url(url, params)
        key = str(target)
        conditional = {}
        known = self.validators.get(key, {})
        if "etag" in known:
            conditional["If-None-Match"] = known["etag"]
        if "last_modified" in known:
            conditional["If-Modified-Since"] = known["last_modified"]
        response = await self._in_time(target.host, self._follow(target, dict(headers or {}), conditional))
        host, code = response.url.host, response.status_code
        if code == 304:
            raise NotModified(f"The upstream {host} answered 304 Not Modified.")
        if 200 <= code < 300:
            if code == 200:
                self._remember(key, response.headers)
            return response
        if code in (401, 403, 407):
            raise BadInput(f"The upstream {host} answered {_status(code)}; check the plugin's credentials.")
        if 400 <= code < 500:
            raise BadInput(
                f"The upstream {host} answered {_status(code)} for that request; check the plugin's parameters."
            )
        if code >= 500:
            raise SourceUnavailable(f"The upstream {host} answered {_status(code)}; try again later.")
        raise BadInput(f"The upstream {host} answered {_status(code)}, which cannot be followed.")

    async def get_json(self, url: str, **kw: Any) -> Any:
        """GET and parse the body as JSON."""
        response = await self.get(url, **kw)
        try:
            return json.loads(response.content)
        except (ValueError, RecursionError):
            raise BadInput(f"The upstream {response.url.host} did not answer with valid JSON.") from None

    async def get_bytes(self, url: str, **kw: Any) -> bytes:
        """GET and return the body."""
        return (await self.get(url, **kw)).content

    async def _in_time(self, host: str, request: Coroutine[Any, Any, httpx.Response]) -> httpx.Response:
        """`request` awaited within what is left of the session's deadline; TIMEOUT naming `host` past it."""
        remaining = None if self._deadline is None else self._deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            request.close()  # never started
            raise self._timeout(host)
        timer = asyncio.timeout(remaining)
        try:
            async with timer:
                return await request
        except TimeoutError:
            if timer.expired():
                raise self._timeout(host) from None
            raise

    async def _follow(self, url: httpx.URL, headers: dict[str, str], conditional: dict[str, str]) -> httpx.Response:
        for _ in range(self._settings.max_redirects + 1):
            response = await self._fetch(url, {**headers, **conditional})
            if response.status_code not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("location")
            if not location:
                raise BadInput(f"The upstream {url.host} answered {_status(response.status_code)} with no Location.")
            try:
                hop = url.join(location)
            except httpx.InvalidURL:
                raise BadInput(f"The upstream {url.host} redirected to an address that is not valid.") from None
            if hop.scheme not in ("http", "https") or not hop.host:
                raise BadInput(f"The upstream {url.host} redirected to something other than an http(s) URL.")
            if (hop.scheme, hop.host, hop.port) != (url.scheme, url.host, url.port):
                headers = {}  # the plugin's headers may hold credentials meant for the first origin only
            url = hop
        raise BadInput(f"The upstream {url.host} redirected more than {self._settings.max_redirects} times.")

    async def post_json(self, url: str, body: bytes, *, retry: frozenset[int] = RETRY_STATUSES) -> int:
        """POST `body` (JSON) to `url` with the guards, retries and deadline of a GET, retrying the
        statuses in `retry` too; no redirect is followed. The 2xx status; a problem otherwise."""
        target = _checked_url(url, None)
        headers = {"Content-Type": "application/json"}
        fetched = self._fetch(target, headers, method="POST", content=body, retry=retry)
        response = await self._in_time(target.host, fetched)
        code = response.status_code
        if 200 <= code < 300:
            return code
        if code >= 500:
            raise SourceUnavailable(f"The upstream {target.host} answered {_status(code)}; try again later.")
        raise BadInput(f"The upstream {target.host} answered {_status(code)} to a POST.")

    async def _fetch(
        self,
        url: httpx.URL,
        headers: dict[str, str],
        *,
        method: str = "GET",
        content: bytes | None = None,
        retry: frozenset[int] = RETRY_STATUSES,
    ) -> httpx.Response:
        """One hop: send, retrying what is worth retrying; a non-retryable answer is returned."""
        settings, host = self._settings, url.host
        tries = max(1, settings.attempts)
        for attempt in range(1, tries + 1):
            request = self._client.build_request(method, url, headers=headers, content=content)
            wait: float | None = None
            answered = 0  # the status that makes this try fail, if it got one
            try:
                response = await self._attempt(request)
            except Blocked:
                self.stats.requests -= 1  # counted before sending, but nothing was sent
                self.stats.blocked += 1
                raise BadInput(
                    f"The host {host} resolves to an address in a blocked network (http_blocked_networks); "
                    "it may not be reached."
                ) from None
            except httpx.TimeoutException:
                failure = f"did not answer within {settings.read_timeout_s:g} s"
            except httpx.ConnectError:
                failure = "could not be reached"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                log.info("upstream %s: %s", host, type(exc).__name__)
                failure = "broke off the connection"
            except httpx.LocalProtocolError:
                raise BadInput(f"The request to {host} could not be sent; check the plugin's headers.") from None
            except httpx.DecodingError:
                raise SourceUnavailable(f"The upstream {host} sent a body that could not be decoded.") from None
            else:
                if response.status_code not in retry:
                    return response
                answered = response.status_code
                failure = f"answered {_status(answered)}"
                wait = _retry_after(response.headers.get("retry-after"))
                if wait is not None and wait > settings.retry_after_max_s:
                    raise SourceUnavailable(
                        f"The upstream {host} {failure} and asked to wait {wait:.0f} s, longer than the "
                        f"{settings.retry_after_max_s:g} s allowed (http_retry_after_max_s); try again later."
                    )
            if attempt == tries:
                raise SourceUnavailable(f"The upstream {host} {failure} ({_times(tries)}); try again later.")
            if wait is None:
                wait = backoff_wait(settings, attempt)
            if self._deadline is not None and time.monotonic() + wait > self._deadline:
                raise self._timeout(host)
            log.info("upstream %s %s; retrying in %.2f s", host, failure, wait)
            self.stats.retries += 1
            self.stats.retried[answered] = self.stats.retried.get(answered, 0) + 1
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, request: httpx.Request) -> httpx.Response:
        """Send once, in a client span while tracing is on (the method and host only: a path or query
        string may carry keys)."""
        if not tracing.enabled():
            return await self._send(request)
        attributes = {"http.request.method": request.method, "server.address": request.url.host}
        with tracing.span(request.method, attributes, kind="client") as traced:
            response = await self._send(request)
            traced.set_attribute("http.response.status_code", response.status_code)
            return response

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send once; a 2xx comes back with its body read (under the cap), anything else closed unread."""
        self.stats.requests += 1
        response = await self._client.send(request, stream=True)
        try:
            code = response.status_code
            self.stats.status[code] = self.stats.status.get(code, 0) + 1
            if not 200 <= code < 300:
                return response
            body = await self._read_capped(response)
            # The body is decoded already: drop the headers that describe the encoded one.
            headers = [
                (name, value)
                for name, value in response.headers.multi_items()
                if name not in ("content-encoding", "content-length", "transfer-encoding")
            ]
            return httpx.Response(code, headers=headers, content=body, request=request)
        finally:
            await response.aclose()

    async def _read_capped(self, response: httpx.Response) -> bytes:
        cap = self._settings.max_response_bytes
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise self._too_large(response)
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise self._too_large(response)
            chunks.append(chunk)
        return b"".join(chunks)

    def _remember(self, key: str, headers: httpx.Headers) -> None:
        seen = {
            name: headers[header]
            for name, header in (("etag", "etag"), ("last_modified", "last-modified"))
            if header in headers
        }
        if seen:
            self.validators[key] = seen
        else:
            self.validators.pop(key, None)

    def _too_large(self, response: httpx.Response) -> TooLarge:
        cap = self._settings.max_response_bytes
        shown = f"{cap / 1024 / 1024:g} MiB" if cap >= 1024 * 1024 else f"{cap:,} bytes"
        return TooLarge(
            f"The upstream {response.url.host} sent more than {shown} (http_max_response_mb); "
            "ask it for less data, e.g. a smaller page or date range."
        )

    def _timeout(self, host: str) -> Timeout:
        return Timeout(
            f"The upstream {host} did not answer within {self._deadline_s:g} s, the plugin's deadline; try again later."
        )


def backoff_wait(settings: HttpSettings, attempt: int) -> float:
    """Full jitter: the wait after failed attempt `attempt` (1 for the first) is uniform on
    [0, min(cap, base * 2**(attempt - 1))]."""
    cap = min(settings.backoff_cap_s, settings.backoff_s * 2 ** (attempt - 1))
    return random.uniform(0, cap)  # noqa: S311 - jitter, not cryptography


def _checked_url(url: str, params: dict[str, Any] | None) -> httpx.URL:
    try:
        target = httpx.URL(url)
        if params:
            target = target.copy_merge_params(params)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise BadInput("That URL is not valid.") from None
    if target.scheme not in ("http", "https"):
        raise BadInput(f"Only http and https URLs can be fetched, not {target.scheme or 'a relative URL'!r}.")
    if not target.host:
        raise BadInput("That URL has no host.")
    return target


def _status(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _times(n: int) -> str:
    return _TIMES[n - 1] if n <= len(_TIMES) else f"{n} times"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when absent or garbled."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
