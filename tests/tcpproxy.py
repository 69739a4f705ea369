"""A loopback TCP proxy for fault tests: cut a real service away and bring it back on the same port."""

from __future__ import annotations

import contextlib
from typing import Any

from conftest import free_port

__all__ = ["TcpProxy"]


class TcpProxy:
    """A loopback TCP proxy to a real database that can be cut (every connection reset, new ones
    refused) and restored on the same port, or black-holed (connections stay open, bytes vanish)."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self._socket, self._threading = socket, threading
        self.target = target_port
        self.port = free_port()
        self._listener: Any = None
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self.black_hole = False

    def start(self) -> None:
        listener = self._socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.settimeout(0.2)
        self._listener = listener
        self._threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: Any) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = self._socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                if not self.black_hole:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.close()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(self._socket.SHUT_RDWR)  # wakes the threads blocked on it; close alone would not
            with contextlib.suppress(OSError):
                conn.close()
