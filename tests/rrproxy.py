"""A round-robin TCP load balancer on loopback, as the simplest real one works: each new client
connection goes to the next node in turn; a node that refuses the connection is skipped (the next
one is tried), so a dead node drops out of the rotation by itself. Bytes are piped both ways as
they come (HTTP, keep-alive, websockets, Server-Sent Events alike); nothing is parsed. When either
side closes or breaks, both are closed.

For tests it records where each connection went and how many bytes the client has sent on it,
and `aim` turns the rotation to a given node (a test that must know where a request lands)."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
from dataclasses import dataclass, field

from support import free_port

__all__ = ["Connection", "RoundRobin"]


@dataclass
class Connection:
    """One client connection: the node it went to (its index; None when every node refused) and
    the bytes the client sent through it so far."""

    number: int
    node: int | None
    sent: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


class RoundRobin:
    """A round-robin TCP proxy on 127.0.0.1:`port` to `nodes` (ports on 127.0.0.1)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = list(nodes)
        self.port = free_port()
        self.connections: list[Connection] = []
        self._next = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def aim(self, node: int) -> None:
        """The next connection goes to `node` (if it takes it), and the rotation goes on from there."""
        with self._lock:
            self._next = node

    def nodes_of(self, first: int) -> list[int | None]:
        """The node of each connection from number `first` on, in order."""
        with self._lock:
            return [c.node for c in self.connections[first:]]

    def count(self) -> int:
        """How many connections the proxy has taken so far (the number the next one gets)."""
        with self._lock:
            return len(self.connections)

    def _pick(self) -> tuple[int | None, socket.socket | None]:
        """The next node that accepts a connection, starting from the rotation's turn."""
        with self._lock:
            start = self._next
            self._next = (start + 1) % len(self.nodes)
        for step in range(len(self.nodes)):
            index = (start + step) % len(self.nodes)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.nodes[index]), timeout=2)
            except OSError:  # refused (a dead node) or no answer: the next one
                continue
            upstream.settimeout(None)
            if step:  # the rotation goes on after the node that took it
                with self._lock:
                    self._next = (index + 1) % len(self.nodes)
            return index, upstream
        return None, None

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            index, upstream = self._pick()
            with self._lock:
                conn = Connection(len(self.connections), index)
                self.connections.append(conn)
            if upstream is None:  # every node refused: the client sees its connection closed
                client.close()
                conn.closed.set()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            done = threading.Barrier(2, action=functools.partial(self._close, client, upstream, conn))
            threading.Thread(target=self._pipe, args=(client, upstream, conn, done), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None, done), daemon=True).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, counted: Connection | None, done: threading.Barrier
    ) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if counted is not None:
                    counted.sent += len(data)
        except OSError:
            pass
        finally:
            # One side ended: end the other (shutdown wakes the thread blocked reading it; close alone does not).
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait(10)

    def _close(self, client: socket.socket, upstream: socket.socket, conn: Connection) -> None:
        with self._lock:
            self._sockets -= {client, upstream}
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.close()
        conn.closed.set()

    def close(self) -> None:
        """Stop taking connections and break the open ones."""
        self._running = False
        self._thread.join(2)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> RoundRobin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
