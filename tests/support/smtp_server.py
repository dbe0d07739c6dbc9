"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, in its own thread.

It records what it receives, can require AUTH (PLAIN and LOGIN), can speak
STARTTLS or implicit TLS with a self-signed certificate, and can misbehave on
request for chosen recipients: refuse them with any reply, never answer their
RCPT, or, once their message data is in, drop the connection or never answer.

Because it runs its own event loop in a thread, it serves sync and async tests
alike::

    with SmtpTestServer(auth=("reach", "secret")) as smtp:
        ... send to 127.0.0.1:smtp.port ...
        smtp.wait_for_messages(1)
        assert smtp.messages[0].message["Subject"] == "Hello"
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import threading
import time
import warnings
from collections.abc import Callable
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Literal, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.tls import SelfSignedCert, self_signed_cert

TlsMode = Literal["none", "starttls", "tls"]


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes  # the DATA content as received, dot-unstuffed
    message: EmailMessage  # ``raw`` parsed with the modern email policy
    tls: bool  # the session was encrypted (STARTTLS or implicit TLS)
    login: str | None  # the user that authenticated, if any


@dataclasses.dataclass(frozen=True, slots=True)
class AuthAttempt:
    mechanism: str
    login: str
    success: bool


class SmtpTestServer:
    """An SMTP server on ``127.0.0.1:port`` (a free port unless given).

    ``auth``: require AUTH with exactly this (username, password); others get 535.
    ``tls``: ``"starttls"`` requires STARTTLS before anything else, ``"tls"``
    speaks TLS from the first byte; both use :func:`self_signed_cert` (clients
    trust :attr:`ca_file`).
    """

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        tls: TlsMode = "none",
        port: int = 0,
        cert: SelfSignedCert | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.tls: TlsMode = tls
        self._auth = auth
        self._cert = cert if cert is not None or tls == "none" else self_signed_cert()
        self._handler = _Handler(auth)
        self._controller = _Controller(self._handler, **self._controller_kwargs(port))

    def _controller_kwargs(self, port: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": port,
            "server_hostname": "reach-test-smtp",  # skips a slow getfqdn()
            "auth_required": self._auth is not None,
            # aiosmtpd counts only STARTTLS as encryption; False lets plaintext and
            # implicit-TLS servers offer AUTH too.
            "auth_require_tls": self.tls == "starttls",
            "authenticator": self._handler.authenticate,
        }
        if self.tls == "starttls":
            assert self._cert is not None
            kwargs.update(tls_context=self._cert.server_context(), require_starttls=True)
        elif self.tls == "tls":
            assert self._cert is not None
            kwargs["ssl_context"] = self._cert.server_context()
        return kwargs

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SmtpTestServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpTestServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._controller.port

    @property
    def ca_file(self) -> str | None:
        """The certificate a client must trust to talk TLS to this server."""
        return str(self._cert.cert_file) if self._cert is not None else None

    def client_options(self, **overrides: Any) -> dict[str, Any]:
        """Options for an ``smtp`` provider entry pointing at this server."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": self.tls,
            "from_addr": "Reach <noreply@reach.test>",
            "timeout": 5,
            "local_hostname": "reach-client.test",
        }
        if self._auth is not None:
            options.update(username=self._auth[0], password=self._auth[1])
        if self.ca_file is not None:
            options["tls_ca_file"] = self.ca_file
        options.update(overrides)
        return options

    # --- what was received --------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Messages accepted (answered 250), oldest first; a snapshot."""
        return self._handler.snapshot(lambda h: h.messages)

    def messages_to(self, address: str) -> list[ReceivedMessage]:
        """Accepted messages whose envelope includes ``address`` (case-insensitive), oldest first."""
        wanted = address.lower()
        return [m for m in self.messages if wanted in (rcpt.lower() for rcpt in m.rcpt_tos)]

    @property
    def dropped(self) -> list[ReceivedMessage]:
        """Messages received in full and then left unanswered (dropped or stalled)."""
        return self._handler.snapshot(lambda h: h.dropped)

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        return self._handler.snapshot(lambda h: h.auth_attempts)

    @property
    def connections(self) -> int:
        """How many client sessions said EHLO/HELO (the start-up probe does not count)."""
        return len(self._handler.snapshot(lambda h: list(h.sessions)))

    def wait_for_messages(self, count: int, within: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages were accepted; ``TimeoutError`` after ``within`` s."""
        return self._handler.wait_for(lambda h: h.messages, count, within)

    async def wait_for_messages_async(self, count: int, within: float = 5.0) -> list[ReceivedMessage]:
        """:meth:`wait_for_messages` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for_messages, count, within)

    def wait_for_dropped(self, count: int, within: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages were received and left unanswered."""
        return self._handler.wait_for(lambda h: h.dropped, count, within)

    # --- fault injection ----------------------------------------------------------------------

    def reply_to_rcpt(self, address: str, reply: str) -> None:
        """Answer ``RCPT TO:<address>`` with ``reply`` (e.g. ``"550 5.1.1 No such user"``)."""
        with self._handler.lock:
            self._handler.rcpt_replies[address.lower()] = reply

    def stall_rcpt(self, address: str) -> None:
        """Never answer ``RCPT TO:<address>``: the client times out before DATA."""
        with self._handler.lock:
            self._handler.stall_rcpt.add(address.lower())

    def drop_after_data(self, address: str) -> None:
        """Close the connection, unanswered, after receiving a message for ``address``."""
        with self._handler.lock:
            self._handler.after_data[address.lower()] = "drop"

    def stall_after_data(self, address: str) -> None:
        """Receive a message for ``address`` in full, then never answer (until the client hangs up)."""
        with self._handler.lock:
            self._handler.after_data[address.lower()] = "stall"

    def clear_faults(self) -> None:
        with self._handler.lock:
            self._handler.rcpt_replies.clear()
            self._handler.stall_rcpt.clear()
            self._handler.after_data.clear()

    def disconnect_all(self) -> None:
        """Close every open client connection, as a server does to idle clients."""
        sessions = self._handler.snapshot(lambda h: list(h.sessions.values()))
        done = threading.Event()

        def close() -> None:
            for server in sessions:
                if server.transport is not None:
                    server.transport.close()
            done.set()

        self._controller.loop.call_soon_threadsafe(close)
        done.wait(5.0)


class _Controller(Controller):
    """Binds port 0 when asked and learns the port the OS chose, so tests never race for ports."""

    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            # AUTH without TLS is deliberate here: a local test server, fake credentials.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            return cast(SMTP, super().factory())

    def _trigger_server(self) -> None:
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _Handler:
    """aiosmtpd hooks; they run on the server thread, hence the lock around shared state."""

    def __init__(self, auth: tuple[str, str] | None) -> None:
        self.auth = auth
        self.lock = threading.Condition()
        self.messages: list[ReceivedMessage] = []
        self.dropped: list[ReceivedMessage] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.sessions: dict[int, SMTP] = {}  # id -> server protocol; kept alive so ids stay unique
        self.rcpt_replies: dict[str, str] = {}
        self.stall_rcpt: set[str] = set()
        self.after_data: dict[str, Literal["drop", "stall"]] = {}

    def snapshot(self, pick: Callable[[_Handler], Any]) -> Any:
        with self.lock:
            return list(pick(self))

    def wait_for(
        self, pick: Callable[[_Handler], list[ReceivedMessage]], count: int, within: float
    ) -> list[ReceivedMessage]:
        deadline = time.monotonic() + within
        with self.lock:
            while len(pick(self)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(pick(self))} of {count} messages after {within}s")
                self.lock.wait(remaining)
            return list(pick(self))

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        credentials = cast(LoginPassword, auth_data)
        login = credentials.login.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "replace")
        success = self.auth is not None and (login, password) == self.auth
        with self.lock:
            self.auth_attempts.append(AuthAttempt(mechanism, login, success))
        # handled=False makes aiosmtpd answer 535 itself.
        return AuthResult(success=success, handled=False, auth_data=credentials)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        self._seen(server, session, hostname)
        return responses

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        self._seen(server, session, hostname)
        return f"250 {server.hostname}"

    def _seen(self, server: SMTP, session: Session, hostname: str) -> None:
        session.host_name = hostname
        with self.lock:
            self.sessions[id(server)] = server

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            reply = self.rcpt_replies.get(address.lower())
            stall = address.lower() in self.stall_rcpt
        if stall:
            await _until_disconnected()
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        received = _received(server, session, envelope)
        with self.lock:
            faults = {self.after_data.get(address.lower()) for address in received.rcpt_tos}
            (self.dropped if faults - {None} else self.messages).append(received)
            self.lock.notify_all()
        if "drop" in faults:
            assert server.transport is not None
            server.transport.close()
        if faults - {None}:
            await _until_disconnected()
        return "250 2.0.0 Message accepted"


async def _until_disconnected() -> None:
    """Wait without answering; aiosmtpd cancels the handler when the connection goes."""
    await asyncio.get_running_loop().create_future()


def _received(server: SMTP, session: Session, envelope: Envelope) -> ReceivedMessage:
    raw = envelope.original_content or b""
    parsed = cast(EmailMessage, email.message_from_bytes(raw, policy=email.policy.default))
    transport = server.transport
    credentials = session.auth_data
    login = credentials.login.decode("utf-8", "replace") if isinstance(credentials, LoginPassword) else None
    return ReceivedMessage(
        mail_from=envelope.mail_from or "",
        rcpt_tos=tuple(envelope.rcpt_tos),
        raw=raw,
        message=parsed,
        tls=transport is not None and transport.get_extra_info("sslcontext") is not None,
        login=login,
    )
