"""The network guard under the plugins' HTTP client: a transport that resolves each host itself,
refuses the connection when ANY of its addresses is in a blocked network, and connects to exactly
the addresses it checked (no second lookup, so DNS rebinding cannot slip past the check).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable, Iterator

import httpcore
import httpx

__all__ = ["Blocked", "GuardedTransport", "Network", "is_blocked", "networks"]

# --- The guarded transport -------------------------------------------------------------------
#
# httpx 0.28's AsyncHTTPTransport takes no network backend, so this is its small equivalent over
# httpcore's public API: the pool keys connections by host name (so TLS verifies and SNI names the
# host), while the backend decides which address a new connection goes to.

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Blocked(Exception):
    """A host resolved to an address in a blocked network; nothing was sent."""


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in map(str.strip, cidrs) if cidr)
    except ValueError as exc:
        raise ValueError(f"http_blocked_networks: {exc}") from None


def is_blocked(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether a connection to `address` is refused: in a blocked network (IPv4 inside IPv6 too), this
    host's own, or not an address at all."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True  # not an address we can judge: do not connect
    if ip.is_unspecified or ip in _THIS_HOST:
        return True  # 0.0.0.0 and :: reach this machine's own services, whatever the block list says
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 addresses carried inside IPv6 ones: mapped, 6to4 and NAT64 (64:ff9b::/96).
        if ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return any(candidate in network for candidate in candidates for network in networks)


_THIS_HOST = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, refuses blocked addresses, and connects to the very addresses it checked."""

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self._networks = networks
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout("name resolution timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"name resolution failed: {type(exc).__name__}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses or any(is_blocked(address, self._networks) for address in addresses):
            raise Blocked(host)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's exceptions and the httpx ones of the same name, most specific first: the first
# isinstance match wins.
_CORE_ERROR_NAMES = (
    "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutException",
    "ConnectError", "ReadError", "WriteError", "NetworkError",
    "RemoteProtocolError", "LocalProtocolError", "UnsupportedProtocol", "ProtocolError",
)  # fmt: skip
_CORE_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = tuple(
    (getattr(httpcore, name), getattr(httpx, name)) for name in _CORE_ERROR_NAMES
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except tuple(core for core, _ in _CORE_ERRORS) as exc:
        mapped = next(ours for core, ours in _CORE_ERRORS if isinstance(exc, core))
        raise mapped(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._response.aiter_stream():
                yield part

    async def aclose(self) -> None:
        await self._response.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, networks: tuple[Network, ...], limits: httpx.Limits) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),  # honours SSL_CERT_FILE / SSL_CERT_DIR
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(networks),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core)
        return httpx.Response(
            response.status, headers=response.headers, stream=_ResponseStream(response), extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
