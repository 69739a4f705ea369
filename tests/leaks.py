"""A leak sweep over every response the suite gets from the app under test (RELIABILITY.md): no
absolute path, traceback, `Errno`, DSN, host:port of a source or driver text. `find_leaks` is the
detector; `Sweep` is the pytest plugin that records responses and fails the run on a leak."""

from __future__ import annotations

import inspect
import json
import re
import sys
import tempfile
import weakref
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import httpx2
import pytest
import requests
from starlette.testclient import WebSocketTestSession
from starlette.types import Message
from websockets.sync.connection import Connection

__all__ = ["Found", "Sweep", "find_leaks"]

ROOT = Path(__file__).resolve().parent.parent
SCAN_LIMIT = 4 << 20  # bytes of a body scanned; the suite's answers are far smaller
TEXTUAL = ("text/", "json", "javascript", "xml", "csv", "graphql")
# Roots a server path starts with: the usual Unix ones plus this machine's repo, temp dir, venv, home.
_ROOTS = sorted({str(ROOT), tempfile.gettempdir(), sys.prefix, str(Path.home())} - {"/", ""}, key=len, reverse=True)
_TOP = "tmp|work|home|root|usr|etc|var|opt|srv|mnt|proc|private|Users|nix|snap"
# Not after a word, `.`, `:` or `/`, so URL paths (`/graphql`, `http://h/tmp`) and "a/b" stay clean.
_PATH = rf"(?<![\w.~:/-])(?:{'|'.join(map(re.escape, _ROOTS))}|/(?:{_TOP}))(?![\w-])[^\s'\"`<>|,;)\]}}]*"
_LOOPBACK = r"(?:localhost|127(?:\.\d{1,3}){3}|0\.0\.0\.0|\[::1?\])"
_SOURCE_PORTS = r"(?:5432|3306|6379)"
_DRIVER = (
    r"(?i:psycopg|pymysql|asyncpg|aiomysql|sqlalchemy|sqlite3\.|redis\.exceptions|polars\.exceptions|graphql\.error)"
    r"|\b(?:Operational|Programming|Interface|Integrity|Compute|ColumnNotFound|InvalidOperation|ShapeMismatch)Error\b"
    r"|Background on this error at|\bstrawberry\.\w|connection to server at|Can't connect to MySQL|\bat 0x[0-9a-f]{6,}"
    r"|\bhttpx\.[A-Z]\w+|All connection attempts failed|For more information check: https://developer\.mozilla"
)
PATTERNS: dict[str, re.Pattern[str]] = {
    "path": re.compile(_PATH),
    "traceback": re.compile(r"\bTraceback\b|\bFile \"[^\"\n]+\", line \d+"),
    "errno": re.compile(r"\bErrno\b"),
    "dsn": re.compile(r"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|sqlite|rediss?|file)(?:\+\w+)?://[^\s'\"<>]+"),
    # A loopback address in a URL (`http://127.0.0.1:8000/...`) names an HTTP API that a plugin
    # parameter or its default points at, which the API shows by design; a bare one, or any
    # address with a database or cache port, is a source's.
    "host:port": re.compile(
        rf"(?<![\w.-])(?<!//){_LOOPBACK}:\d{{1,5}}\b"
        rf"|(?<![\w.-])(?:[A-Za-z][\w.-]*|\d{{1,3}}(?:\.\d{{1,3}}){{3}}):{_SOURCE_PORTS}\b"
    ),
    "driver": re.compile(_DRIVER),
}


@dataclass(frozen=True)
class Found:
    """One leak: its kind (a key of `PATTERNS`), the matched text and the text around it."""

    kind: str
    text: str
    context: str


def find_leaks(text: str, *, echo: str = "", allowed: Iterable[str] = ()) -> list[Found]:
    """Every leak in `text`. A match that `echo` (the request's own text) holds verbatim is the
    client's input said back, not a leak; the `allowed` host:ports are the app's own base URLs."""
    allow = set(allowed)
    found = []
    for kind, pattern in PATTERNS.items():
        for match in pattern.finditer(text):
            hit = match.group().rstrip(".")
            if hit in echo or (kind == "host:port" and hit in allow):
                continue
            context = text[max(0, match.start() - 60) : match.end() + 60].replace("\n", "\\n")
            found.append(Found(kind, hit, context))
    return found


def body_text(body: bytes) -> str:
    """The text to scan in a body: a JSON document's keys and strings one per line (so escapes
    are gone), else the body decoded."""
    text = body[:SCAN_LIMIT].decode("utf-8", "replace")
    try:
        return "\n".join(_strings(json.loads(text)))
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack (a hostile test's body)
        return text


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield key
            yield from _strings(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _strings(value)


def _request_body(request: httpx.Request | httpx2.Request | requests.PreparedRequest) -> bytes:
    if isinstance(request, requests.PreparedRequest):
        body = request.body
        return body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else b""
    try:
        return request.read()
    except (httpx.StreamError, httpx2.StreamError, ValueError):  # a generator or a closed file is gone once sent
        return b""


@dataclass(frozen=True)
class Leak:
    node: str
    request: str
    found: Found


class Sweep:
    """A pytest plugin that scans every response of the app under test (TestClient's `testserver`
    and the servers registered with `serving`) over httpx, httpx2 (TestClient's), requests and
    websockets. Other hosts (the tests' fake upstreams, the app's own outbound calls) and /static/
    assets are skipped. A leak fails the run at its end, listed with its test and request (under
    pytest-xdist each worker sweeps its tests and the controller adds up and reports)."""

    def __init__(self) -> None:
        self.apps: set[str] = set()  # host:port of each real server of the app
        self.said: list[str] = []  # what the client sent the app during the current test
        self.scanned = {"http": 0, "websocket": 0}
        self.leaks: list[Leak] = []
        self.node = "(outside a test)"
        self.patch = pytest.MonkeyPatch()
        self.sent: weakref.WeakKeyDictionary[object, list[str]] = weakref.WeakKeyDictionary()

    def serving(self, base: str) -> None:
        """Scan the answers of the app served at `base` (a base URL such as http://127.0.0.1:8000)."""
        self.apps.add(httpx.URL(base).netloc.decode())

    def scan(self, channel: str, request: str, echo: str, text: str) -> None:
        """Scan `text`, an answer to `request`; what the client sent in this request (`echo`) or
        earlier in the test (a dataset name, a plugin's URL) is its own input, not a leak."""
        self.scanned[channel] += 1
        self.said.append(echo[:SCAN_LIMIT])
        for found in find_leaks(text, echo=echo, allowed=self.apps):
            if not any(found.text in said for said in self.said):
                self.leaks.append(Leak(self.node, request, found))

    def ours(self, url: str) -> bool:
        """Whether `url` is an answer of the app to scan: not another host's, not a /static/ asset."""
        parts = urlsplit(url)
        return (parts.hostname == "testserver" or parts.netloc in self.apps) and not parts.path.startswith("/static/")

    def http(self, response: httpx.Response | httpx2.Response | requests.Response) -> None:
        for one in [*response.history, response]:
            request = one.request
            if request is None or not self.ours(str(request.url)):
                continue
            sent = _request_body(request)[:SCAN_LIMIT]
            url = urlsplit(str(request.url))
            echo = [
                unquote(str(request.url)),
                *request.headers.values(),
                body_text(sent),
                sent.decode("utf-8", "replace"),
            ]
            textual = any(kind in one.headers.get("content-type", "text/") for kind in TEXTUAL)
            text = [*(f"{k}: {v}" for k, v in one.headers.items()), body_text(one.content if textual else b"")]
            line = f"{request.method} {url.path}{'?' if url.query else ''}{url.query} {sent[:300].decode('utf-8', 'replace')}"
            self.scan("http", line, "\n".join(echo), "\n".join(text))

    def frame(self, connection: object, target: str, data: str | bytes | None) -> None:
        if data is not None:
            sent = self.sent.get(connection, [])
            echo = "\n".join([*sent, *(body_text(message.encode()) for message in sent)])
            raw = data if isinstance(data, bytes) else data.encode()
            self.scan("websocket", f"WS {target} after {' | '.join(sent)[-300:]}", echo, body_text(raw))

    def pytest_sessionstart(self) -> None:
        # TestClient is an httpx2 client; httpx calls go to uvicorn, and so do schemathesis' (requests).
        for client in (httpx.Client, httpx.AsyncClient, httpx2.Client, httpx2.AsyncClient, requests.Session):
            self._wrap_send(client)
        sweep, ws_recv, ws_send = self, Connection.recv, Connection.send
        test_receive, test_send = WebSocketTestSession.receive, WebSocketTestSession.send

        def recv(conn: Connection, *args: Any, **kwargs: Any) -> str | bytes:
            data = ws_recv(conn, *args, **kwargs)
            request = getattr(conn, "request", None)  # the handshake of a client connection
            if request is not None and request.headers.get("Host") in sweep.apps:
                sweep.frame(conn, request.headers["Host"] + request.path, data)
            return data

        def ws_sent(conn: Connection, message: Any, **kwargs: Any) -> None:
            sweep.sent.setdefault(conn, []).append(message if isinstance(message, str) else repr(message))
            ws_send(conn, message, **kwargs)

        def receive(session: WebSocketTestSession) -> Message:
            message = test_receive(session)
            sweep.frame(session, "testserver", message.get("text", message.get("bytes")))
            return message

        def test_sent(session: WebSocketTestSession, message: Message) -> None:
            sweep.sent.setdefault(session, []).append(str(message.get("text", message.get("bytes", ""))))
            test_send(session, message)

        self.patch.setattr(Connection, "recv", recv)
        self.patch.setattr(Connection, "send", ws_sent)
        self.patch.setattr(WebSocketTestSession, "receive", receive)
        self.patch.setattr(WebSocketTestSession, "send", test_sent)

    def _wrap_send(self, owner: type[Any]) -> None:
        """Scan each response `owner.send` returns. An httpx stream is the caller's to read (none in
        the suite is); schemathesis streams with requests, which keeps a body read here for it."""
        sweep, send = self, owner.send
        if inspect.iscoroutinefunction(send):

            async def asend(client: Any, request: Any, **options: Any) -> Any:
                response = await send(client, request, **options)
                if not options.get("stream"):
                    sweep.http(response)
                return response

            self.patch.setattr(owner, "send", asend)
            return

        def ssend(client: Any, request: Any, **options: Any) -> Any:
            response = send(client, request, **options)
            if not options.get("stream") or isinstance(response, requests.Response):
                sweep.http(response)
            return response

        self.patch.setattr(owner, "send", ssend)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        self.node, self.said = item.nodeid, []
        try:
            return (yield)
        finally:
            self.node = "(between tests)"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.patch.undo()
        output = getattr(session.config, "workeroutput", None)
        if output is not None:  # a pytest-xdist worker: its findings go to the controller, which reports
            output["leak_sweep"] = {
                "scanned": self.scanned,
                "leaks": [[leak.node, leak.request, leak.found.kind, leak.found.text, leak.found.context]
                          for leak in self.leaks],
            }  # fmt: skip
        if self.leaks:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """pytest-xdist's controller: add up what a worker's sweep scanned and found."""
        found = getattr(node, "workeroutput", {}).get("leak_sweep")
        if found is None:
            return
        for channel, count in found["scanned"].items():
            self.scanned[channel] += count
        self.leaks += [Leak(test, request, Found(*rest)) for test, request, *rest in found["leaks"]]

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        report = terminalreporter
        counts = ", ".join(f"{n} {channel}" for channel, n in self.scanned.items())
        if not self.leaks:
            report.write_sep("-", f"leak sweep: {counts} responses scanned, no leak")
            return
        report.write_sep("=", f"leak sweep: {len(self.leaks)} leaks in {counts} responses", red=True)
        repeats: dict[tuple[str, str, str], list[Leak]] = {}
        for leak in self.leaks:  # one entry per test and leaked text, with the first request that got it
            repeats.setdefault((leak.node, leak.found.kind, leak.found.text), []).append(leak)
        for (node, kind, text), leaks in repeats.items():
            times = f" ({len(leaks)} responses)" if len(leaks) > 1 else ""
            report.write_line(f"{node}{times}\n  request: {leaks[0].request!r}")
            report.write_line(f"  {kind}: {text!r} in ...{leaks[0].found.context}...")
