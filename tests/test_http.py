"""The outbound HTTP client against a real, scripted HTTP server on 127.0.0.1.

Every address used is in 127.0.0.0/8; the blocked network in these settings is 127.0.0.2/32,
where a bare listener counts the connections it accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import pickle
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from pydantic import ValidationError
from support import free_port
from upstream import Flood, Listener, Reply, Upstream

from connectors.http import HttpClient, HttpSession, HttpSettings, HttpStats, NotModified, backoff_wait
from datagraph.errors import BadInput, SourceUnavailable, Timeout, TooLarge
from datagraph.settings import Settings

FAST = HttpSettings(
    connect_timeout_s=1.0,
    read_timeout_s=2.0,
    attempts=4,
    backoff_s=0.05,
    backoff_cap_s=0.1,
    retry_after_max_s=3.0,
    max_response_bytes=256 * 1024,
    max_redirects=3,
    blocked_networks=("127.0.0.2/32",),
)
MARGIN = 0.25  # scheduling slack on loopback
SECRET = "s3cr3t-token"


@contextlib.asynccontextmanager
async def open_session(settings: HttpSettings = FAST, **kw: Any) -> AsyncIterator[HttpSession]:
    client = HttpClient(settings)
    try:
        yield client.session(**kw)
    finally:
        await client.aclose()


def fetch(url: str, settings: HttpSettings = FAST, **kw: Any) -> tuple[Any, HttpSession]:
    """GET `url` in a fresh client; returns (response or raised DatagraphError/NotModified, session)."""

    async def main() -> tuple[Any, HttpSession]:
        options = {"deadline_s": kw.pop("deadline_s", None), "validators": kw.pop("validators", None)}
        async with open_session(settings, **options) as session:
            try:
                return await session.get(url, **kw), session
            except (BadInput, SourceUnavailable, Timeout, TooLarge, NotModified) as exc:
                return exc, session

    return asyncio.run(main())


def test_503_twice_then_200_succeeds_after_two_jittered_retries(upstream: Upstream) -> None:
    upstream.script("/flaky", Reply(503), Reply(503), Reply(200, b"ok"))
    response, session = fetch(upstream.url("/flaky"))
    assert response.content == b"ok"
    assert upstream.count("/flaky") == 3
    assert session.stats == HttpStats(requests=3, retries=2, blocked=0, status={503: 2, 200: 1}, retried={503: 2})
    first, second, third = upstream.times("/flaky")
    # Retry 0 waits up to 0.05 s, retry 1 up to min(0.1 cap, 0.05 x 2) s.
    assert second - first <= 0.05 + MARGIN / 5
    assert third - second <= 0.1 + MARGIN / 5


def test_backoff_waits_are_capped(upstream: Upstream) -> None:
    settings = replace(FAST, backoff_s=0.5, backoff_cap_s=0.02)  # uncapped: up to 0.5, 1 and 2 s
    upstream.script("/capped", Reply(503), Reply(502), Reply(504), Reply(200, b"ok"))
    response, session = fetch(upstream.url("/capped"), settings)
    assert response.content == b"ok"
    times = upstream.times("/capped")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3 and all(gap <= 0.02 + 0.05 for gap in gaps), gaps
    assert session.stats == HttpStats(
        requests=4, retries=3, status={503: 1, 502: 1, 504: 1, 200: 1}, retried={503: 1, 502: 1, 504: 1}
    )


def test_backoff_is_full_jitter_not_a_fixed_wait(upstream: Upstream) -> None:
    settings = replace(FAST, attempts=2, backoff_s=0.1, backoff_cap_s=0.1)
    upstream.script("/j", *[Reply(503) if i % 2 == 0 else Reply(200) for i in range(24)])

    async def main() -> None:
        async with open_session(settings) as session:
            for _ in range(12):
                await session.get(upstream.url("/j"))

    asyncio.run(main())
    times = upstream.times("/j")
    gaps = [times[i + 1] - times[i] for i in range(0, 24, 2)]
    # The waits happen on the wire and vary; their exact bounds are checked without a clock below
    # (a busy machine adds its own delay to every gap).
    assert all(gap <= 0.1 + 0.2 for gap in gaps), gaps
    # Uniform on [0, 0.1]: twelve waits all above 0.06 s has probability 0.4^12 (2e-5).
    assert min(gaps) < 0.06, gaps
    assert max(gaps) - min(gaps) > 0.01, gaps


def test_the_backoff_wait_is_uniform_up_to_the_exponential_cap() -> None:
    settings = replace(FAST, backoff_s=0.1, backoff_cap_s=0.3)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.3), (6, 0.3)]:
        waits = [backoff_wait(settings, attempt) for _ in range(2000)]
        assert all(0 <= w <= cap for w in waits), attempt
        # Full jitter, not a fixed or halved wait: both ends of [0, cap] are reached.
        assert min(waits) < cap * 0.05 and max(waits) > cap * 0.95, attempt
        assert abs(sum(waits) / len(waits) - cap / 2) < cap * 0.05, attempt


def test_429_with_retry_after_seconds_waits_that_long(upstream: Upstream) -> None:
    upstream.script("/rate", Reply(429, headers={"Retry-After": "1"}), Reply(200, b"ok"))
    response, session = fetch(upstream.url("/rate"))
    assert response.content == b"ok"
    first, second = upstream.times("/rate")
    assert 0.95 <= second - first <= 1.0 + MARGIN
    assert session.stats.retries == 1
    assert session.stats.status == {429: 1, 200: 1}


def test_503_with_retry_after_http_date_waits_until_then(upstream: Upstream) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s away
    upstream.script("/date", Reply(503, headers={"Retry-After": when}), Reply(200, b"ok"))
    response, _ = fetch(upstream.url("/date"))
    assert response.content == b"ok"
    first, second = upstream.times("/date")
    assert 0.9 <= second - first <= 2.0 + MARGIN


def test_retry_after_over_the_bound_gives_up_without_waiting(upstream: Upstream) -> None:
    upstream.script("/busy", Reply(503, headers={"Retry-After": "120"}))
    started = time.monotonic()
    error, session = fetch(upstream.url("/busy"))
    assert time.monotonic() - started < 0.5
    assert isinstance(error, SourceUnavailable)
    assert "127.0.0.1" in error.message and "503" in error.message and "120 s" in error.message
    assert upstream.count("/busy") == 1
    assert session.stats.retries == 0


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (400, BadInput, "parameters"),
        (401, BadInput, "credentials"),
        (403, BadInput, "credentials"),
        (404, BadInput, "404 Not Found"),
        (500, SourceUnavailable, "500 Internal Server Error"),
    ],
)
def test_client_errors_are_not_retried_and_leak_no_secrets(
    upstream: Upstream, status: int, kind: type[Exception], words: str
) -> None:
    upstream.always["/no"] = Reply(status, b"details the user should not see")
    error, session = fetch(
        upstream.url("/no"), params={"api_key": SECRET}, headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert isinstance(error, kind)
    assert words in str(error) and "127.0.0.1" in str(error)
    assert SECRET not in str(error) and "api_key" not in str(error) and "details" not in str(error)
    assert upstream.count("/no") == 1
    assert session.stats == HttpStats(requests=1, retries=0, status={status: 1})


def test_exhausted_retries_on_503_are_source_unavailable(upstream: Upstream) -> None:
    upstream.always["/down"] = Reply(503)
    error, session = fetch(upstream.url("/down"), params={"token": SECRET})
    assert isinstance(error, SourceUnavailable)
    assert error.message == ("The upstream 127.0.0.1 answered 503 Service Unavailable (four times); try again later.")
    assert upstream.count("/down") == 4
    assert session.stats == HttpStats(requests=4, retries=3, status={503: 4}, retried={503: 3})


def test_connection_refused_is_retried_then_source_unavailable() -> None:
    port = free_port()  # closed again: nothing listens there
    error, session = fetch(f"http://127.0.0.1:{port}/", replace(FAST, attempts=3))
    assert isinstance(error, SourceUnavailable)
    assert "could not be reached" in error.message and "three times" in error.message
    assert str(port) not in error.message
    assert session.stats == HttpStats(requests=3, retries=2, status={}, retried={0: 2})  # 0: no answer


def test_a_server_slower_than_the_read_timeout_is_retried(upstream: Upstream) -> None:
    upstream.script("/slow", Reply(200, b"late", delay=1.5), Reply(200, b"ok"))
    started = time.monotonic()
    response, session = fetch(upstream.url("/slow"), replace(FAST, read_timeout_s=0.3))
    assert response.content == b"ok"
    assert upstream.count("/slow") == 2
    assert session.stats.retries == 1 and session.stats.status == {200: 1}
    assert time.monotonic() - started < 0.3 + 0.05 + MARGIN


def test_the_session_deadline_stops_a_hanging_server(upstream: Upstream) -> None:
    upstream.always["/hang"] = Reply(200, b"never", delay=10)
    started = time.monotonic()
    error, _ = fetch(upstream.url("/hang"), replace(FAST, read_timeout_s=5), deadline_s=0.5)
    elapsed = time.monotonic() - started
    assert isinstance(error, Timeout)
    assert "did not answer within 0.5 s" in error.message
    assert 0.45 <= elapsed <= 0.5 + MARGIN


def test_a_wait_that_would_pass_the_deadline_is_not_started(upstream: Upstream) -> None:
    upstream.always["/later"] = Reply(429, headers={"Retry-After": "2"})
    started = time.monotonic()
    error, session = fetch(upstream.url("/later"), deadline_s=1.0)
    assert isinstance(error, Timeout)
    assert time.monotonic() - started < 0.5
    assert upstream.count("/later") == 1
    assert session.stats.retries == 0


@pytest.mark.parametrize("content_length", [True, False])
def test_a_response_over_the_cap_is_cut_and_the_server_stops_being_read(
    upstream: Upstream, content_length: bool
) -> None:
    flood = Flood(total=256 * 1024 * 1024, content_length=content_length)
    upstream.script("/big", flood)
    started = time.monotonic()
    error, session = fetch(upstream.url("/big"))
    assert isinstance(error, TooLarge)
    assert "262,144 bytes" in error.message and "http_max_response_mb" in error.message
    assert flood.done.wait(5), "the server kept writing"
    assert flood.broken
    assert flood.sent < 64 * 1024 * 1024
    assert time.monotonic() - started < 5
    assert upstream.count("/big") == 1 and session.stats.retries == 0


def test_a_content_length_over_the_cap_is_refused_before_the_body_arrives(upstream: Upstream) -> None:
    flood = Flood(total=10 * 1024 * 1024, content_length=True, hold=3.0)
    upstream.script("/announced", flood)
    started = time.monotonic()
    error, _ = fetch(upstream.url("/announced"))
    assert isinstance(error, TooLarge)
    assert time.monotonic() - started < 1.0
    assert flood.sent == 0


def test_a_body_within_the_cap_is_returned_whole(upstream: Upstream) -> None:
    body = bytes(range(256)) * 1024  # exactly the cap
    upstream.script("/fits", Reply(200, body))
    response, _ = fetch(upstream.url("/fits"))
    assert response.content == body


def test_a_redirect_to_an_unblocked_listener_is_followed(upstream: Upstream, listener: Listener) -> None:
    """The control for the blocked-redirect test: the listener does see connections when allowed."""
    upstream.script("/go", Reply(302, headers={"Location": f"http://127.0.0.2:{listener.port}/there"}))
    response, session = fetch(
        upstream.url("/go"), replace(FAST, blocked_networks=()), headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert response.content == b"hi"
    assert str(response.url) == f"http://127.0.0.2:{listener.port}/there"
    assert listener.accepted == 1
    assert SECRET.encode() not in listener.requests[0]  # the plugin's headers stay with their origin
    assert upstream.hits[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert session.stats.status == {302: 1, 200: 1}


def test_a_redirect_into_a_blocked_network_is_refused_before_connecting(upstream: Upstream, listener: Listener) -> None:
    upstream.script("/go", Reply(302, headers={"Location": f"http://127.0.0.2:{listener.port}/"}))
    error, session = fetch(upstream.url("/go"))
    assert isinstance(error, BadInput)
    assert "127.0.0.2" in error.message and "http_blocked_networks" in error.message
    time.sleep(0.2)
    assert listener.accepted == 0
    assert session.stats == HttpStats(requests=1, retries=0, blocked=1, status={302: 1})


def test_a_direct_url_into_a_blocked_network_is_refused(listener: Listener) -> None:
    error, session = fetch(f"http://127.0.0.2:{listener.port}/")
    assert isinstance(error, BadInput) and "http_blocked_networks" in error.message
    time.sleep(0.2)
    assert listener.accepted == 0
    assert session.stats == HttpStats(requests=0, retries=0, blocked=1, status={})


def test_too_many_redirects_are_refused(upstream: Upstream) -> None:
    upstream.always["/loop"] = Reply(301, headers={"Location": "/loop"})
    error, session = fetch(upstream.url("/loop"))
    assert isinstance(error, BadInput) and "more than 3 times" in error.message
    assert upstream.count("/loop") == 4
    assert session.stats.status == {301: 4}


def test_redirects_within_the_limit_are_followed(upstream: Upstream) -> None:
    upstream.script("/a", Reply(307, headers={"Location": "/b?x=1"}))
    upstream.script("/b", Reply(308, headers={"Location": upstream.url("/c")}))
    upstream.script("/c", Reply(200, b"done"))
    response, session = fetch(upstream.url("/a"))
    assert response.content == b"done" and response.url.path == "/c"
    assert [hit.target for hit in upstream.hits] == ["/a", "/b?x=1", "/c"]
    assert session.stats == HttpStats(requests=3, retries=0, status={307: 1, 308: 1, 200: 1})


def test_validators_from_a_200_make_the_next_request_conditional(upstream: Upstream) -> None:
    modified = "Wed, 21 Oct 2015 07:28:00 GMT"

    def conditional(handler: BaseHTTPRequestHandler) -> Reply:
        if handler.headers.get("If-None-Match") == '"v1"':
            return Reply(304)
        return Reply(200, b"[1, 2]", {"ETag": '"v1"', "Last-Modified": modified})

    upstream.always["/data"] = conditional
    url = upstream.url("/data")

    async def main() -> tuple[Any, dict[str, dict[str, str]], HttpStats]:
        async with open_session() as first:
            assert await first.get_json(url, params={"page": 2}) == [1, 2]
        async with open_session(validators=first.validators) as second:
            with pytest.raises(NotModified):
                await second.get(url, params={"page": 2})
        return first.validators, second.validators, second.stats

    seen, kept, stats = asyncio.run(main())
    assert seen == {url + "?page=2": {"etag": '"v1"', "last_modified": modified}}
    assert kept == seen
    assert stats.status == {304: 1} and stats.retries == 0
    assert "If-None-Match" not in upstream.hits[0].headers
    assert upstream.hits[1].headers["If-None-Match"] == '"v1"'
    assert upstream.hits[1].headers["If-Modified-Since"] == modified


def test_validators_apply_only_to_the_exact_url(upstream: Upstream) -> None:
    upstream.always["/data"] = Reply(200, b"fresh")
    validators = {upstream.url("/data") + "?page=1": {"etag": '"v1"'}}
    response, session = fetch(upstream.url("/data"), params={"page": 2}, validators=validators)
    assert response.content == b"fresh"
    assert "If-None-Match" not in upstream.hits[0].headers
    assert upstream.hits[0].target == "/data?page=2"
    assert session.validators == validators  # a 200 without validators records nothing for page 2


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/file", "file:///etc/passwd", "gopher://127.0.0.1:70/", "/relative/path", "http:///nohost"]
)
def test_only_http_and_https_urls_are_fetched(url: str) -> None:
    error, session = fetch(url)
    assert isinstance(error, BadInput)
    assert "/etc/passwd" not in error.message
    assert session.stats == HttpStats()


def test_get_json_refuses_a_body_that_is_not_json(upstream: Upstream) -> None:
    upstream.script("/html", Reply(200, b"<html>oops</html>", {"Content-Type": "application/json"}))

    async def main() -> Any:
        async with open_session() as session:
            return await session.get_json(upstream.url("/html"))

    with pytest.raises(BadInput, match="did not answer with valid JSON"):
        asyncio.run(main())


def test_get_bytes_returns_the_body(upstream: Upstream) -> None:
    upstream.script("/raw", Reply(200, b"\x00\x01binary"))

    async def main() -> bytes:
        async with open_session() as session:
            return await session.get_bytes(upstream.url("/raw"))

    assert asyncio.run(main()) == b"\x00\x01binary"


def test_cookies_an_upstream_sets_are_not_kept(upstream: Upstream) -> None:
    """One pool serves every plugin: a cookie must not travel with a later request."""
    upstream.script("/set", Reply(200, b"", {"Set-Cookie": "session=abc; Path=/"}))
    upstream.script("/next", Reply(200, b""))

    async def main() -> None:
        async with open_session() as session:
            await session.get(upstream.url("/set"))
            await session.get(upstream.url("/next"))

    asyncio.run(main())
    assert "Cookie" not in upstream.hits[1].headers and "cookie" not in upstream.hits[1].headers


def test_stats_merge_and_survive_pickling() -> None:
    a = HttpStats(requests=3, retries=2, blocked=0, status={503: 2, 200: 1}, retried={503: 2})
    b = pickle.loads(
        pickle.dumps(HttpStats(requests=3, retries=1, blocked=1, status={200: 2, 503: 1}, retried={503: 1}))
    )
    a.merge(b)
    assert a == HttpStats(requests=6, retries=3, blocked=1, status={503: 3, 200: 3}, retried={503: 3})


@pytest.mark.parametrize("host", ["0.0.0.0", "0", "[::]"])
def test_the_unspecified_address_is_refused_as_this_machine(upstream: Upstream, host: str) -> None:
    # 0.0.0.0 and :: connect to this machine's own services, whatever the block list says.
    upstream.always["/x"] = Reply(200, b"ok")
    error, _ = fetch(f"http://{host}:{upstream.port}/x")
    assert isinstance(error, BadInput) and "http_blocked_networks" in error.message
    assert upstream.count("/x") == 0


def test_a_bad_blocked_network_stops_the_server_at_start_naming_it() -> None:
    with pytest.raises(ValidationError, match="'banana' does not appear to be an IPv4 or IPv6 network"):
        Settings(http_blocked_networks="10.0.0.0/8, banana")
    assert Settings(http_blocked_networks=" 10.0.0.0/8 , ,fe80::/10").http_blocked_networks
