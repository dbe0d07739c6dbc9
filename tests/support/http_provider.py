"""Local stand-ins for HTTP providers, with injectable faults.

A provider's test server subclasses :class:`ProviderServer` and implements
:meth:`ProviderServer.handle`: it checks what the real provider checks
(method, path, headers, body shape, signature or token) and answers the way
the provider documents, success or error. The base runs it on 127.0.0.1 in a
background thread (so the same server serves async unit tests and a worker
subprocess), records every request, and applies injected faults first::

    server.inject(Fault.timeout(), Fault.reply(429, headers={"Retry-After": "3"}))

Faults are consumed one per request, in order; requests without a pending
fault reach ``handle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import socket
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.support.tls import SelfSignedCert
from tests.support.waiting import wait_for_count


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request as the server saw it. Header names are lower case."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int = 200
    json: Any = None
    body: bytes = b""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def response(self) -> web.Response:
        if self.json is not None:
            return web.json_response(self.json, status=self.status, headers=dict(self.headers))
        return web.Response(status=self.status, body=self.body, headers=dict(self.headers))


class Refused(Exception):
    """Raised by ``handle`` to answer with an error (bad signature, bad body)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class FaultKind(enum.Enum):
    RESET = "reset"  # the connection is reset before any answer; the request is not processed
    TIMEOUT = "timeout"  # no answer for `seconds` (longer than the client waits)
    DROP_AFTER_ACCEPT = "drop_after_accept"  # processed (accepted), then the connection drops
    REPLY = "reply"  # answer `reply` instead of handling the request


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: FaultKind
    seconds: float = 0.0
    reply: Reply | None = None

    @classmethod
    def reset(cls) -> Fault:
        return cls(FaultKind.RESET)

    @classmethod
    def timeout(cls, seconds: float = 5.0) -> Fault:
        return cls(FaultKind.TIMEOUT, seconds=seconds)

    @classmethod
    def drop_after_accept(cls) -> Fault:
        return cls(FaultKind.DROP_AFTER_ACCEPT)

    @classmethod
    def status(
        cls, status: int, *, json: Any = None, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Fault:
        return cls(FaultKind.REPLY, reply=Reply(status, json, body, dict(headers or {})))

    @classmethod
    def burst(cls, status: int, count: int, **kwargs: Any) -> list[Fault]:
        return [cls.status(status, **kwargs) for _ in range(count)]


class ProviderServer:
    """Base of the provider test servers; see the module docstring."""

    def __init__(self, *, tls: SelfSignedCert | None = None) -> None:
        self.tls = tls
        self.requests: list[Recorded] = []  # everything that arrived
        self.accepted: list[Recorded] = []  # requests `handle` answered with 2xx
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- to implement -------------------------------------------------------
    async def handle(self, request: Recorded) -> Reply:
        raise NotImplementedError

    # -- control -------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def inject(self, *faults: Fault | list[Fault]) -> None:
        with self._lock:
            for fault in faults:
                self._faults.extend(fault if isinstance(fault, list) else [fault])

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.accepted.clear()

    def wait_for_accepted(self, count: int, timeout: float = 30.0) -> list[Recorded]:
        """Block until ``count`` requests were accepted; returns them."""

        def snapshot() -> list[Recorded]:
            with self._lock:
                return list(self.accepted)

        return wait_for_count(snapshot, count, timeout, f"{count} requests accepted by {type(self).__name__}")

    def start(self) -> ProviderServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------
    async def _start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        context: ssl.SSLContext | None = self.tls.server_context() if self.tls else None
        site = web.SockSite(self._runner, sock, ssl_context=context)
        await site.start()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        recorded = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
        )
        with self._lock:
            self.requests.append(recorded)
        fault = self._next_fault()
        if fault is not None and fault.kind is FaultKind.RESET:
            _abort(request)
            raise asyncio.CancelledError  # aiohttp drops the handler without answering
        if fault is not None and fault.kind is FaultKind.TIMEOUT:
            await asyncio.sleep(fault.seconds)
            return Reply(503, body=b"too late").response()
        if fault is not None and fault.kind is FaultKind.REPLY:
            assert fault.reply is not None
            return fault.reply.response()
        try:
            reply = await self.handle(recorded)
        except Refused as refused:
            reply = refused.reply
        if 200 <= reply.status < 300:
            with self._lock:
                self.accepted.append(recorded)
        if fault is not None and fault.kind is FaultKind.DROP_AFTER_ACCEPT:
            _abort(request)
            raise asyncio.CancelledError
        return reply.response()


def _abort(request: web.Request) -> None:
    """Reset the connection (RST, not FIN) so the client sees it drop mid-request."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport.abort()
