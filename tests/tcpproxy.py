"""A loopback TCP proxy for fault tests: cut a real service away and bring it back on the same port."""

from __future__ import annotations

import contextlib
import socket
import threading

from support import free_port

__all__ = ["TcpProxy"]


class TcpProxy:
    """A loopback TCP proxy to a real database that can be cut (every connection reset, new ones
    refused) and restored on the same port, or black-holed (connections stay open, bytes vanish)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.black_hole = False

    def start(self) -> None:
        """Take connections on `port` (again, after a cut); when it already does, nothing more."""
        if self._listener is not None:
            return
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.black_hole:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)  # wakes the thread reading it; close alone does not
            with contextlib.suppress(OSError):
                dst.close()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones; a second cut does nothing more."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it; close alone would not
            with contextlib.suppress(OSError):
                conn.close()
