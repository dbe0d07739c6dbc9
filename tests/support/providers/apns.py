"""A stand-in for Apple's APNs provider API: HTTP/2 over TLS, token authentication.

Hypercorn serves a small ASGI app over TLS with ALPN ``h2`` (the certificate
comes from :mod:`tests.support.tls`; clients trust it with ``tls_ca_file``),
in a background thread like :class:`tests.support.http_provider.ProviderServer`,
so it serves async unit tests and worker subprocesses alike.

``POST /3/device/<token>`` is checked the way APNs checks it, in this order:
the method (405 ``MethodNotAllowed``) and path (404 ``BadPath``), HTTP/2 (Apple
drops other protocols; here: 505 ``HTTP2Required``), the provider token (403
``MissingProviderToken``; ``InvalidProviderToken`` for a bad ES256 signature,
``alg``, ``kid`` or ``iss``; ``ExpiredProviderToken`` past an hour or after
:meth:`ApnsServer.expire_provider_tokens`; optionally 429
``TooManyProviderTokenUpdates`` for a new token within
``min_token_update_seconds`` of the previous one), the ``apns-*`` headers
(``MissingTopic``/``BadTopic``, ``InvalidPushType``, ``BadPriority``,
``BadMessageId``, ``BadExpirationDate``, ``DuplicateHeaders``), the device
token (``BadDeviceToken``) and the payload (``PayloadEmpty``, 413
``PayloadTooLarge``, an ``aps`` dictionary with an alert for alert pushes).
Then the reason scripted for that device token, if any, is answered as Apple
does (``{"reason": ...}``, plus ``timestamp`` for 410), else 200 with the
request's ``apns-id``.

Faults (:class:`tests.support.http_provider.Fault`, consumed one per request):
``status`` (e.g. 429/503 with ``Retry-After``), ``timeout`` (answer only after
``seconds``), ``reset`` (the TCP connection is reset before the request is
handled) and ``drop_after_accept`` (handled and accepted, then the connection
is reset). Resets go through a byte-level TCP relay in front of hypercorn, which
knows each client connection by the port hypercorn sees it from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve
from hypercorn.config import Config

from tests.support.http_provider import Fault, FaultKind, Recorded, Refused, Reply
from tests.support.providers.delivered import DeliveredLog
from tests.support.tls import SelfSignedCert
from tests.support.waiting import wait_for_count

#: Apple's status for each reason
REASON_STATUS = {
    "BadCollapseId": 400, "BadDeviceToken": 400, "BadExpirationDate": 400, "BadMessageId": 400,
    "BadPriority": 400, "BadTopic": 400, "DeviceTokenNotForTopic": 400, "DuplicateHeaders": 400,
    "IdleTimeout": 400, "InvalidPushType": 400, "MissingDeviceToken": 400, "MissingTopic": 400,
    "PayloadEmpty": 400, "TopicDisallowed": 400,
    "BadCertificate": 403, "BadCertificateEnvironment": 403, "ExpiredProviderToken": 403,
    "Forbidden": 403, "InvalidProviderToken": 403, "MissingProviderToken": 403,
    "UnrelatedKeyIdInToken": 403, "BadEnvironmentKeyInToken": 403,
    "BadPath": 404, "MethodNotAllowed": 405, "ExpiredToken": 410, "Unregistered": 410,
    "PayloadTooLarge": 413, "TooManyProviderTokenUpdates": 429, "TooManyRequests": 429,
    "InternalServerError": 500, "ServiceUnavailable": 503, "Shutdown": 503,
}  # fmt: skip
PUSH_TYPES = frozenset(
    {"alert", "background", "location", "voip", "complication", "fileprovider", "mdm", "liveactivity"}
)
MAX_PAYLOAD = 4096
TOKEN_MAX_AGE = 3600
_PATH = re.compile(r"^/3/device/([^/]*)$")
_HEX = re.compile(r"^[0-9A-Fa-f]{16,400}$")
_UUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
_log = logging.getLogger(__name__)


def device_token(n: int) -> str:
    """A well-formed device token (64 hex digits) for test device ``n``."""
    return uuid.uuid5(uuid.NAMESPACE_OID, f"device-{n}").hex * 2


def throwaway_p8() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key and its PKCS#8 PEM text, shaped like Apple's AuthKey_<kid>.p8."""
    key = ec.generate_private_key(ec.SECP256R1())
    text = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key, text


@dataclasses.dataclass(frozen=True)
class ApnsRequest(Recorded):
    """A request as APNs saw it; ``raw_headers`` keeps repeated names."""

    http_version: str = ""
    raw_headers: tuple[tuple[str, str], ...] = ()


def reason_reply(reason: str, status: int | None = None, headers: Mapping[str, str] | None = None) -> Reply:
    """Apple's error answer: ``{"reason": ...}``, with ``timestamp`` (ms) for 410."""
    code = status or REASON_STATUS.get(reason, 400)
    body: dict[str, Any] = {"reason": reason}
    if code == 410:
        body["timestamp"] = int(time.time() * 1000)
    return Reply(code, json=body, headers=dict(headers or {}))


@dataclasses.dataclass
class _Scripted:
    reply: Reply
    times: int | None  # None: every time


class ApnsServer:
    """See the module docstring. Control methods are safe from the test thread."""

    def __init__(
        self,
        tls: SelfSignedCert,
        *,
        team_id: str = "TEAM123456",
        key_id: str = "KEY1234567",
        topic: str = "com.example.reach",
        min_token_update_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tls = tls
        self.team_id = team_id
        self.key_id = key_id
        self.topic = topic
        #: Apple refuses a new provider token within 20 minutes of the previous one. Off by
        #: default: a worker restarted by a test legitimately signs a new one at once.
        self.min_token_update_seconds = min_token_update_seconds
        self.clock = clock
        self.key, self.private_key_pem = throwaway_p8()
        self.requests: list[ApnsRequest] = []
        self.accepted: list[ApnsRequest] = []
        self.delivered = DeliveredLog()  # the payloads APNs accepted
        self.port = 0
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._scripted: dict[str, _Scripted] = {}
        self._tokens: dict[str, float] = {}  # provider token -> when first accepted
        self._expired: set[str] = set()
        self._last_update: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._relay = _Relay()

    # -- control -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def provider_options(self) -> dict[str, Any]:
        """Options of an ``apns`` provider entry that sends here."""
        return {
            "base_url": self.base_url,
            "team_id": self.team_id,
            "key_id": self.key_id,
            "private_key": self.private_key_pem,
            "topic": self.topic,
            "tls_ca_file": str(self.tls.cert_file),
            "timeout": 2,
        }

    def inject(self, *faults: Fault | list[Fault]) -> None:
        with self._lock:
            for fault in faults:
                self._faults.extend(fault if isinstance(fault, list) else [fault])

    def fail_token(
        self,
        device: str,
        reason: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        times: int | None = None,
    ) -> None:
        """Sends to ``device`` get Apple's answer for ``reason``, ``times`` times or always."""
        with self._lock:
            self._scripted[device] = _Scripted(reason_reply(reason, status, headers), times)

    def expire_provider_tokens(self) -> None:
        """Every provider token seen so far gets 403 ExpiredProviderToken from now on."""
        with self._lock:
            self._expired.update(self._tokens)

    @property
    def provider_tokens(self) -> list[str]:
        """The distinct provider tokens accepted, in the order they first came."""
        with self._lock:
            return list(self._tokens)

    def wait_for_accepted(self, count: int, timeout: float = 30.0) -> list[ApnsRequest]:
        """Block until ``count`` requests were accepted; returns them."""

        def snapshot() -> list[ApnsRequest]:
            with self._lock:
                return list(self.accepted)

        return wait_for_count(snapshot, count, timeout, f"{count} requests accepted by {type(self).__name__}")

    def start(self) -> ApnsServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.run(self._main(ready, errors))

        self._thread = threading.Thread(target=run, name="ApnsServer", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread is not None:
            loop.call_soon_threadsafe(stopping.set)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> ApnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------------
    async def _main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet_cancellation)
        self._stopping = asyncio.Event()
        try:
            inner = _listening_socket()
            inner_port = inner.getsockname()[1]
            config = self._config(inner)
            outer = _listening_socket()
            self.port = outer.getsockname()[1]
            relay = await asyncio.start_server(lambda r, w: self._relay.serve(r, w, inner_port), sock=outer)
        except BaseException as exc:  # reported to the starting thread
            errors.append(exc)
            ready.set()
            return
        app: Any = self._app  # hypercorn's framework type wants its TypedDict events
        serving = asyncio.create_task(serve(app, config, shutdown_trigger=self._stopping.wait, mode="asgi"))
        ready.set()
        await self._stopping.wait()
        relay.close()
        self._relay.abort_all()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 5)

    def _config(self, sock: socket.socket) -> Config:
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.certfile = str(self.tls.cert_file)
        config.keyfile = str(self.tls.key_file)
        config.alpn_protocols = ["h2", "http/1.1"]  # offer 1.1 too, so a 1.1 client is seen and refused
        config.graceful_timeout = 1
        config.accesslog = None
        config.errorlog = _log
        return config

    async def _app(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = _record(scope, await _body(receive))
        with self._lock:
            self.requests.append(request)
            fault = self._faults.pop(0) if self._faults else None
        client_port = scope["client"][1] if scope.get("client") else 0
        if fault is not None and fault.kind is FaultKind.RESET:
            self._relay.abort(client_port)
            return
        if fault is not None and fault.kind is FaultKind.TIMEOUT:
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):  # stopping cuts the wait short
                await asyncio.wait_for(self._stopping.wait(), fault.seconds)
            await _answer(send, reason_reply("ServiceUnavailable"))
            return
        if fault is not None and fault.kind is FaultKind.REPLY:
            assert fault.reply is not None
            await _answer(send, fault.reply)
            return
        try:
            reply = self.handle(request)
        except Refused as refused:
            reply = refused.reply
        if reply.status == 200:
            with self._lock:
                self.accepted.append(request)
        if fault is not None and fault.kind is FaultKind.DROP_AFTER_ACCEPT:
            self._relay.abort(client_port)
            return
        await _answer(send, reply)

    # -- the API -------------------------------------------------------------------------------
    def handle(self, request: ApnsRequest) -> Reply:
        """Apple's checks, in Apple's order; raises ``Refused`` with Apple's answer."""
        match = _PATH.match(request.path)
        if request.method != "POST":
            raise Refused(reason_reply("MethodNotAllowed"))
        if match is None:
            raise Refused(reason_reply("BadPath"))
        if request.http_version != "2":
            raise Refused(reason_reply("HTTP2Required", 505))
        self._check_provider_token(request.headers.get("authorization", ""))
        self._check_headers(request)
        device = match.group(1)
        if not device:
            raise Refused(reason_reply("MissingDeviceToken"))
        if not _HEX.match(device):
            raise Refused(reason_reply("BadDeviceToken"))
        payload = _check_payload(request)
        with self._lock:
            scripted = self._scripted.get(device)
            if scripted is not None and scripted.times is not None:
                scripted.times -= 1
                if scripted.times <= 0:
                    del self._scripted[device]
        if scripted is not None:
            raise Refused(scripted.reply)
        self.delivered.add(payload)
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4()).upper()
        return Reply(200, headers={"apns-id": apns_id})

    def _check_provider_token(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused(reason_reply("MissingProviderToken"))
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self.key.public_key(),
                algorithms=["ES256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
            )
        except jwt.PyJWTError:
            raise Refused(reason_reply("InvalidProviderToken")) from None
        if header.get("kid") != self.key_id or claims.get("iss") != self.team_id:
            raise Refused(reason_reply("InvalidProviderToken"))
        iat, now = claims.get("iat"), self.clock()
        if not isinstance(iat, int) or iat > now + 60:
            raise Refused(reason_reply("InvalidProviderToken"))
        with self._lock:
            if token in self._expired or now - iat > TOKEN_MAX_AGE:
                raise Refused(reason_reply("ExpiredProviderToken"))
            if token not in self._tokens:
                too_soon = self.min_token_update_seconds is not None and self._last_update is not None
                if too_soon and now - self._last_update < self.min_token_update_seconds:  # type: ignore[operator]
                    raise Refused(reason_reply("TooManyProviderTokenUpdates"))
                self._tokens[token] = now
                self._last_update = now

    def _check_headers(self, request: ApnsRequest) -> None:
        names = [name for name, _ in request.raw_headers]
        if len(names) != len(set(names)):
            raise Refused(reason_reply("DuplicateHeaders"))
        headers = request.headers
        topic = headers.get("apns-topic")
        if not topic:
            raise Refused(reason_reply("MissingTopic"))
        if topic != self.topic:
            raise Refused(reason_reply("BadTopic"))
        if headers.get("apns-push-type") not in PUSH_TYPES:
            raise Refused(reason_reply("InvalidPushType"))
        if headers.get("apns-priority", "10") not in ("10", "5", "1"):
            raise Refused(reason_reply("BadPriority"))
        if "apns-id" in headers and not _UUID.match(headers["apns-id"]):
            raise Refused(reason_reply("BadMessageId"))
        if not headers.get("apns-expiration", "0").isdigit():
            raise Refused(reason_reply("BadExpirationDate"))


def _check_payload(request: ApnsRequest) -> Any:
    if not request.body:
        raise Refused(reason_reply("PayloadEmpty"))
    if len(request.body) > MAX_PAYLOAD:
        raise Refused(reason_reply("PayloadTooLarge"))
    try:
        payload = request.json()
    except ValueError:
        raise Refused(reason_reply("BadPayload", 400)) from None  # not in Apple's table; never seen
    aps = payload.get("aps") if isinstance(payload, dict) else None
    if not isinstance(aps, dict):
        raise Refused(reason_reply("PayloadEmpty"))
    if request.headers.get("apns-push-type") == "alert" and not aps.get("alert"):
        raise Refused(reason_reply("InvalidPushType"))  # an alert push without an alert
    return payload


# --- ASGI plumbing ----------------------------------------------------------------------------


async def _lifespan(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _body(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _record(scope: Mapping[str, Any], body: bytes) -> ApnsRequest:
    raw = tuple((name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope["headers"])
    query = dict(pair.split("=", 1) for pair in scope["query_string"].decode().split("&") if "=" in pair)
    return ApnsRequest(
        method=scope["method"],
        path=scope["path"],
        query=query,
        headers=dict(raw),
        body=body,
        http_version=scope["http_version"],
        raw_headers=raw,
    )


async def _answer(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], reply: Reply) -> None:
    body = reply.body
    headers = [(name.lower().encode(), value.encode()) for name, value in reply.headers.items()]
    if reply.json is not None:
        body = json.dumps(reply.json).encode()
        headers.append((b"content-type", b"application/json"))
    with contextlib.suppress(Exception):  # the client may have given up on the stream already
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Hypercorn cancels connections still open after its graceful timeout (the ones a fault
    reset); Python 3.11's stream callback then reports the cancellation as an error. It is not.
    """
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


# --- the relay that can reset a client's connection -------------------------------------------


class _Relay:
    """Pipes each client connection to hypercorn byte for byte (TLS stays end to end).

    Hypercorn sees a client as the relay's outgoing port; :meth:`abort` resets
    the client connection that came in through that port.
    """

    def __init__(self) -> None:
        self._links: dict[int, tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.transport.abort()
            return
        local_port = up_writer.get_extra_info("sockname")[1]
        self._links[local_port] = (writer, up_writer)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._links.pop(local_port, None)
            writer.transport.abort()
            up_writer.transport.abort()

    def abort(self, port: int) -> None:
        link = self._links.pop(port, None)
        if link is None:
            return
        client, upstream = link
        sock = client.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # RST rather than FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.transport.abort()
        upstream.transport.abort()

    def abort_all(self) -> None:
        for port in list(self._links):
            self.abort(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
