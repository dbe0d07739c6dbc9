"""A TCP forwarder that can go silent, for testing how clients fail when a server hangs."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>`` until :meth:`go_silent`.

    From then on it behaves like a server that hangs: open connections stay open but pass no
    byte in either direction, and new connections are accepted and never answered. The
    server behind it keeps running, so other clients of it are unaffected.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.silent = threading.Event()
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._clients: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)  # so the accept loop notices stop()
        self.port: int = self._listener.getsockname()[1]

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept_forever, name="tcp-proxy", daemon=True).start()
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stopped.set()
        for sock in [self._listener, *self._sockets]:
            sock.close()

    def go_silent(self) -> None:
        self.silent.set()

    def open_connections(self) -> int:
        """Client connections accepted and not closed yet: the proxy closes both sides of a
        connection once either side closed it."""
        return sum(1 for client in self._clients if client.fileno() != -1)

    def _accept_forever(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._sockets.append(client)
            self._clients.append(client)
            if not self.silent.is_set():
                self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._sockets.append(upstream)
        self._start_pumps(client, upstream)

    def _start_pumps(self, client: socket.socket, upstream: socket.socket) -> None:
        """One thread per direction; subclasses that look inside the stream override this."""
        for src, dst in ((client, upstream), (upstream, client)):
            self._spawn(self._pump, src, dst)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        threading.Thread(target=self._until_closed, args=(target, *args), daemon=True).start()

    def _until_closed(
        self, target: Callable[..., None], src: socket.socket, dst: socket.socket, *args: object
    ) -> None:
        with contextlib.suppress(OSError):
            target(src, dst, *args)
        if not self.silent.is_set():  # silent: a hung server closes nothing either
            for sock in (src, dst):
                sock.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while data := src.recv(65536):
            self.send(dst, data)

    def send(self, dst: socket.socket, data: bytes) -> None:
        """Pass ``data`` on, or drop it once silent, so nothing ever arrives."""
        if not self.silent.is_set():
            dst.sendall(data)
