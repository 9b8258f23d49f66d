"""A TCP proxy whose link can be cut and restored: a database or broker going away, for tests."""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    """Forwards `bind`:`port` to `target`. `cut()` drops every connection and refuses new
    ones until `restore()`, as a network partition or a stopped server would."""

    def __init__(
        self, target: tuple[str, int], bind: str = "127.0.0.1", server_timeout: float | None = 5
    ) -> None:
        # A server silent for server_timeout seconds ends the link (None: wait for it as long
        # as it takes, as for an answer that takes its time).
        self.target, self.server_timeout = target, server_timeout
        self.listener = socket.create_server((bind, 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.lock = threading.Lock()
        self.links: list[socket.socket] = []
        self.closed = False
        # Client bytes still to forward before the link is cut (None: no limit).
        self.budget: int | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(self.server_timeout)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.links += [client, server]
            for a, b, counted in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, counted), daemon=True).start()

    def cut_after(self, client_bytes: int) -> None:
        """Cut every link once `client_bytes` more bytes from clients have gone through: a
        connection lost in the middle of a request body."""
        with self.lock:
            self.budget = client_bytes

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted and self.budget is not None:
                    with self.lock:
                        allowed, self.budget = self.budget, max(0, self.budget - len(data))
                    if allowed < len(data):
                        sink.sendall(data[:allowed])
                        self.budget = None
                        self.cut()
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            for link in self.links:
                with contextlib.suppress(OSError):
                    link.shutdown(socket.SHUT_RDWR)
                link.close()
            self.links.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()
