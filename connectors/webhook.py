"""The webhook: each CHECK_FAILED and SCHEMA_CHANGED event POSTed as JSON to the `webhook_url`.

Delivery never delays the commit or the answer that caused it: `send` puts the event on a bounded
queue (full: the oldest waiting one is dropped, logged and counted) and one background task posts
them in order through the outbound HTTP client (`connectors.http`: its connect and read timeouts,
its blocked networks, its retries with full-jitter backoff, here also on 500 and on no answer),
each delivery bounded by `deadline_s`, then given up, logged and counted. So a webhook that hangs
or fails holds one task and at most `queue_size` events, never more.

Logs name the webhook's host only: its path, user info or query string may carry a secret.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from typing import Any

import httpx

from connectors._guard import is_blocked, networks
from connectors.http import HttpClient, HttpSettings
from datagraph import jsonutil
from datagraph.errors import DatagraphError
from datagraph.metrics import Metrics

__all__ = ["Webhook", "blocked_webhook"]

log = logging.getLogger("datagraph.webhook")

# Worth another try: an overloaded or restarting receiver. A 4xx will not change by itself.
_RETRY = frozenset({429, 500, 502, 503, 504})


def host_of(url: str) -> str:
    """The host a URL names (never its user info, path or query), for logs and messages."""
    try:
        return httpx.URL(url).host or "(no host)"
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(not a URL)"


async def blocked_webhook(url: str, blocked: tuple[str, ...]) -> str | None:
    """Why the webhook may not be used (its host resolves into a blocked network), or None. A host
    that does not resolve now is let through: the guard checks every connection again."""
    host = host_of(url)
    guarded = networks(blocked)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        log.warning("the webhook's host %s does not resolve now; deliveries will try it again", host)
        return None
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        if is_blocked(address, guarded):  # as the guard judges every connection
            return (
                f"webhook_url: the host {host} resolves to {address}, in a blocked network (setting"
                " http_blocked_networks); use another address or change that setting."
            )
    return None


class Webhook:
    """One per server process: a bounded queue of events and the task that POSTs them."""

    def __init__(
        self,
        url: str,
        http: HttpSettings,
        metrics: Metrics,
        *,
        queue_size: int = 100,
        deadline_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.host = host_of(url)
        self.metrics = metrics
        self.deadline_s = deadline_s
        self._client = HttpClient(http, transport=transport)
        self._queue: collections.deque[bytes] = collections.deque(maxlen=queue_size)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._deliver_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing waiting and no delivery under way."""
        return not self._queue and not self._sending

    def send(self, payload: dict[str, Any]) -> None:
        """Queue `payload` for delivery and return at once."""
        if len(self._queue) == self._queue.maxlen:
            self._count("dropped")
            log.warning(
                "webhook %s: %d deliveries waiting, the most kept (setting webhook_queue); dropped the oldest",
                self.host,
                len(self._queue),
            )
        self._queue.append(jsonutil.dumps(payload))  # a full deque drops its oldest
        self._ready.set()

    def _count(self, outcome: str) -> None:
        self.metrics.webhook_deliveries.labels(outcome=outcome).inc()

    async def _deliver_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                self._sending = True
                try:
                    await self._deliver(self._queue.popleft())
                finally:
                    self._sending = False

    async def _deliver(self, body: bytes) -> None:
        session = self._client.session(deadline_s=self.deadline_s)
        try:
            await session.post_json(self.url, body, retry=_RETRY)
        except DatagraphError as exc:
            self._count("blocked" if session.stats.blocked else "failed")
            tries = session.stats.requests
            log.warning("webhook %s: gave up on a delivery after %d tries: %s", self.host, tries, exc.message)
        except Exception as exc:  # never let one delivery end the task: later events still go
            self._count("failed")
            log.warning("webhook %s: a delivery failed (%s)", self.host, type(exc).__name__)
        else:
            self._count("delivered")
