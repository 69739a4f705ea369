"""A scripted HTTP server and a counting listener on loopback, for tests of outbound HTTP
(the client itself, and the plugins that use it). Nothing here talks outside 127.0.0.0/8."""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: wait `delay` seconds, then send status, headers and body."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Flood:
    """Stream `total` bytes (with or without Content-Length) and record how far the client read."""

    total: int
    content_length: bool
    hold: float = 0.0  # seconds between the headers and the body
    sent: int = 0
    broken: bool = False
    done: threading.Event = field(default_factory=threading.Event)


Action = Reply | Flood | Callable[[BaseHTTPRequestHandler], Reply]


@dataclass
class Hit:
    path: str  # without the query
    target: str
    at: float
    headers: dict[str, str]
    method: str = "GET"
    body: bytes = b""


class Upstream:
    """A ThreadingHTTPServer whose answers are scripted per path; every request is recorded."""

    def __init__(self) -> None:
        self.scripts: dict[str, collections.deque[Action]] = {}
        self.always: dict[str, Action] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()  # ends every scripted delay at teardown
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.handle(self)

            def do_POST(self) -> None:
                upstream.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *actions: Action) -> None:
        self.scripts[path] = collections.deque(actions)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for hit in self.hits if hit.path == path)

    def bodies(self, path: str) -> list[bytes]:
        """The bodies of the requests to `path` so far (POSTs), in order."""
        with self.lock:
            return [hit.body for hit in self.hits if hit.path == path]

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [hit.at for hit in self.hits if hit.path == path]

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?")[0]
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(min(length, 1 << 20)) if length else b""
        hit = Hit(path, handler.path, time.monotonic(), dict(handler.headers.items()), handler.command, body)
        with self.lock:
            self.hits.append(hit)
        queue = self.scripts.get(path)
        action = queue.popleft() if queue else self.always.get(path, Reply(500, b"unscripted"))
        if callable(action):
            action = action(handler)
        if isinstance(action, Flood):
            self.flood(handler, action)
            return
        if action.delay:
            self.stop.wait(action.delay)
        with contextlib.suppress(OSError):  # the client may have given up meanwhile
            handler.send_response(action.status)
            for name, value in action.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(action.body)))
            handler.end_headers()
            handler.wfile.write(action.body)

    def flood(self, handler: BaseHTTPRequestHandler, flood: Flood) -> None:
        chunk = b"x" * 65536
        try:
            handler.send_response(200)
            if flood.content_length:
                handler.send_header("Content-Length", str(flood.total))
            handler.end_headers()
            handler.wfile.flush()
            self.stop.wait(flood.hold)
            while flood.sent < flood.total and not self.stop.is_set():
                handler.wfile.write(chunk)
                flood.sent += len(chunk)
        except OSError:
            flood.broken = True
        finally:
            flood.done.set()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


class Listener:
    """A bare TCP listener on 127.0.0.2 that counts accepted connections and answers 200 "hi"."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.2", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(1)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        part = conn.recv(4096)
                        if not part:
                            break
                        data += part
                    self.requests.append(data)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
