"""E-mail over SMTP, with aiosmtplib (never blocks the event loop).

One connection is kept open between batches and reopened when it drops. Each
delivery is its own SMTP transaction (MAIL, RCPT, DATA) so that every outcome
can be told apart:

=========================================  =================================
what happened                              outcome
=========================================  =================================
no ``email`` in the contact                PERMANENT ``no_address``
address unusable (not a mailbox, not       INVALID_ADDRESS ``bad_address`` /
ASCII)                                     PERMANENT ``address_not_ascii``
RCPT refused 550/551/553 (mailbox)         INVALID_ADDRESS, code = SMTP code
any other 5xx                              PERMANENT, code = SMTP code
any 4xx                                    RETRY after ``retry_after_seconds``
cannot connect, TLS fails, timeout or      RETRY ``connect`` / ``timeout``
connection lost before DATA
authentication refused or required         RETRY ``auth`` (and a log event)
STARTTLS required but not configured       RETRY ``tls`` (and a log event)
connection lost or timed out once DATA     UNKNOWN ``disconnected`` /
was sent, before the final reply           ``timeout``: it may have been sent
=========================================  =================================

``detail`` carries the SMTP code and the server's text with anything shaped
like an address replaced, and never a password.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.policy
import email.utils
import enum
import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.message import EmailMessage
from typing import Any, ClassVar
from urllib.parse import quote

import aiosmtplib
import structlog

from channels.base import (
    Delivery,
    Outcome,
    OutcomeKind,
    Provider,
    ProviderConfig,
    ProviderContext,
    StartHook,
    no_start_hook,
)
from channels.options import OptionReader

log = structlog.get_logger(__name__)

#: 7-bit bodies (quoted-printable/base64 for non-ASCII) go through any server,
#: with or without 8BITMIME; CRLF line endings as SMTP wants them.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_ADDRESS = re.compile(r"^[^\s@<>()\[\]\\,;:\"]+@[^\s@<>()\[\]\\,;:\"]+$")
_ADDRESS_IN_TEXT = re.compile(r"<?[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+>?")
_ENHANCED_CODE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_MAX_DETAIL = 300
_OPTION_KEYS = frozenset(
    {
        "host", "port", "security", "username", "password", "from_addr", "reply_to",
        "unsubscribe_url", "timeout", "retry_after_seconds", "tls_verify", "tls_ca_file",
        "local_hostname",
    }
)  # fmt: skip


class Security(enum.StrEnum):
    NONE = "none"  # plain SMTP; never upgrades, even if the server offers STARTTLS
    STARTTLS = "starttls"  # plain connect, then STARTTLS is required
    TLS = "tls"  # implicit TLS from the first byte (port 465)


_DEFAULT_PORTS = {Security.NONE: 25, Security.STARTTLS: 587, Security.TLS: 465}


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpOptions:
    """The ``options`` of an ``smtp`` provider entry, validated."""

    host: str
    port: int
    security: Security
    from_addr: str  # "Name <addr@domain>" or "addr@domain"; its domain names the Message-IDs
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    reply_to: str | None = None
    #: https URL format string with {message_id} and {user_id}; enables RFC 8058 headers
    unsubscribe_url: str | None = None
    timeout: float = 30.0  # seconds, per SMTP command and for connecting
    retry_after_seconds: float = 60.0  # suggested delay for every RETRY outcome
    tls_verify: bool = True
    tls_ca_file: str | None = None  # extra CA bundle, e.g. a test server's self-signed cert
    local_hostname: str | None = None  # EHLO name; default: this host's FQDN

    @property
    def sender(self) -> str:
        """The bare envelope sender address."""
        return email.utils.parseaddr(self.from_addr)[1]

    @property
    def domain(self) -> str:
        return self.sender.rpartition("@")[2]

    @classmethod
    def parse(cls, options: Mapping[str, Any], provider: str = "smtp") -> SmtpOptions:
        """Validate raw options; raises ``ValueError`` naming the provider and the option."""
        reader = OptionReader(options, provider)
        reader.reject_unknown(_OPTION_KEYS)
        security = reader.choice("security", Security, Security.NONE)
        parsed = cls(
            host=reader.text("host", required=True) or "",
            port=reader.integer("port", _DEFAULT_PORTS[security], 1, 65535),
            security=security,
            from_addr=reader.text("from_addr", required=True) or "",
            username=reader.text("username"),
            password=reader.text("password"),
            reply_to=reader.text("reply_to"),
            unsubscribe_url=reader.text("unsubscribe_url"),
            timeout=reader.number("timeout", 30.0),
            retry_after_seconds=reader.number("retry_after_seconds", 60.0),
            tls_verify=reader.flag("tls_verify", True),
            tls_ca_file=reader.text("tls_ca_file"),
            local_hostname=reader.text("local_hostname"),
        )
        parsed._check(reader)
        return parsed

    def _check(self, reader: OptionReader) -> None:
        if not _ADDRESS.match(self.sender):
            raise reader.error("from_addr", "must contain an address like noreply@example.com")
        if self.password is not None and self.username is None:
            raise reader.error("password", "is set but 'username' is not")
        if self.unsubscribe_url is not None:
            _check_unsubscribe_url(self.unsubscribe_url, reader)


class SmtpProvider(Provider):
    """Sends e-mail through one SMTP server (a relay or an ESP's SMTP endpoint).

    ``setup`` only validates the options (``ValueError`` naming the option); the
    connection is opened by the first ``send_batch`` so that a server that is
    down at start-up yields RETRY outcomes rather than a crashed worker.
    ``send_batch`` must not be called concurrently on one instance; a lock
    serialises it anyway since one SMTP connection carries one transaction.
    """

    type_name: ClassVar[str] = "smtp"
    secret_options: ClassVar[frozenset[str]] = frozenset({"password"})
    address_fields: ClassVar[tuple[str, ...]] = ("email",)
    max_content_bytes: ClassVar[int] = 5 * 1024 * 1024  # well under the usual 10-25 MB SIZE limits
    tracked_links: ClassVar[bool] = True
    open_pixel: ClassVar[bool] = True  # in the HTML part; a text-only e-mail has none

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        self._options: SmtpOptions | None = None
        self._smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    @property
    def options(self) -> SmtpOptions:
        if self._options is None:
            raise RuntimeError(f"provider {self.name!r}: setup() was not called")
        return self._options

    async def setup(self) -> None:
        self._options = SmtpOptions.parse(self.config.options, self.name)

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await smtp.quit(timeout=min(self.options.timeout, 5.0))
        except (aiosmtplib.SMTPException, OSError):
            pass  # the server went away first; nothing left to release
        finally:
            smtp.close()

    async def send_batch(
        self, deliveries: Sequence[Delivery], started: StartHook = no_start_hook
    ) -> list[Outcome]:
        """One outcome per delivery, in order; never raises for a single message.

        Messages go one by one, each claimed (``started``) once the connection is
        open and just before its transaction. When the server cannot be reached,
        the remaining deliveries of the batch all get the same RETRY outcome
        instead of each waiting for a timeout.
        """
        async with self._lock:
            try:
                return await self._send_all(deliveries, self.options, started)
            except asyncio.CancelledError:
                self._discard()  # cancelled mid-command: the connection is out of step
                raise

    async def _send_all(
        self, deliveries: Sequence[Delivery], options: SmtpOptions, started: StartHook
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        unavailable: Outcome | None = None
        for delivery in deliveries:
            prepared = _prepare(delivery, options)
            if isinstance(prepared, Outcome):
                outcomes.append(prepared)
            elif unavailable is not None:
                outcomes.append(unavailable)
            else:
                try:
                    outcomes.append(await self._send(prepared, functools.partial(started, [delivery])))
                except _UnavailableError as exc:
                    unavailable = exc.outcome
                    outcomes.append(unavailable)
        return outcomes

    async def _send(self, prepared: _Prepared, claim: Callable[[], Awaitable[None]]) -> Outcome:
        """Send one message; a kept connection found closed before DATA is reopened once.

        Servers close idle connections, and the client may notice only when it
        next writes; that is not a failure of this message. A timeout is not
        retried here: it would only double the wait.
        """
        reused = self._smtp is not None and self._smtp.is_connected
        smtp = await self._connection()
        await claim()
        try:
            return await _transact(smtp, prepared, self.options, self.name)
        except _LostBeforeDataError as exc:
            if not reused or exc.outcome.code != "disconnected":
                return exc.outcome
        smtp = await self._connection()
        try:
            return await _transact(smtp, prepared, self.options, self.name)
        except _LostBeforeDataError as exc:
            return exc.outcome

    def _discard(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def _connection(self) -> aiosmtplib.SMTP:
        """The open connection, or a new one; raises ``_UnavailableError`` with a RETRY outcome."""
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        self._smtp = None
        options = self.options
        smtp = _client(options)
        await self._open(smtp)
        if options.username is not None:
            await self._login(smtp, options)
        self._smtp = smtp
        return smtp

    async def _open(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.connect()
        except aiosmtplib.SMTPTimeoutError as exc:
            raise self._unavailable(smtp, "timeout", f"timed out connecting: {_describe(exc)}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            detail = f"connect refused: {exc.code} {_scrub(exc.message)}"
            raise self._unavailable(smtp, str(exc.code), detail) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._unavailable(smtp, "connect", f"cannot connect: {_describe(exc)}") from exc

    async def _login(self, smtp: aiosmtplib.SMTP, options: SmtpOptions) -> None:
        assert options.username is not None
        try:
            await smtp.login(options.username, options.password or "")
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            detail = f"connection lost during login: {_describe(exc)}"
            raise self._unavailable(smtp, "connect", detail) from exc
        except aiosmtplib.SMTPException as exc:
            code = getattr(exc, "code", None)
            # The username and password stay out of the log; the code says enough to act on.
            log.warning("smtp_auth_failed", provider=self.name, smtp_code=code)
            reply = f"{code} " if code else ""
            detail = f"authentication failed: {reply}{_scrub(exc.message)}"
            raise self._unavailable(smtp, "auth", detail) from exc

    def _unavailable(self, smtp: aiosmtplib.SMTP, code: str, detail: str) -> _UnavailableError:
        smtp.close()
        if code != "auth":
            log.warning("smtp_connect_failed", provider=self.name, code=code, detail=detail)
        return _UnavailableError(Outcome.retry(code, detail, self.options.retry_after_seconds))


# --- one transaction --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    message_id: str  # the Message-ID header, with its angle brackets
    address: str
    payload: bytes


class _UnavailableError(Exception):
    """No connection could be had; ``outcome`` is the RETRY for every remaining message."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


class _LostBeforeDataError(Exception):
    """The connection died before DATA: nothing was sent, so resending is safe."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


async def _transact(
    smtp: aiosmtplib.SMTP, prepared: _Prepared, options: SmtpOptions, provider: str
) -> Outcome:
    """MAIL, RCPT, DATA for one message, each step's failure classified by the step it hit."""
    stage = "MAIL"
    try:
        await smtp.mail(options.sender)
        stage = "RCPT"
        await smtp.rcpt(prepared.address)
        stage = "DATA"
        await smtp.data(prepared.payload)
    except aiosmtplib.SMTPResponseException as exc:
        await _reset(smtp)
        outcome = classify_reply(stage, exc.code, exc.message, options.retry_after_seconds)
        if outcome.code in ("auth", "tls"):
            log.warning("smtp_not_authorised", provider=provider, smtp_code=exc.code, code=outcome.code)
        return outcome
    except (aiosmtplib.SMTPException, OSError) as exc:
        smtp.close()  # the conversation is out of step; never reuse it
        if stage != "DATA":
            detail = f"connection lost at {stage}: {_describe(exc)}"
            raise _LostBeforeDataError(
                Outcome.retry(_lost_code(exc), detail, options.retry_after_seconds)
            ) from exc
        return _unknown(exc, prepared)
    return Outcome.sent(prepared.message_id)


def _unknown(exc: BaseException, prepared: _Prepared) -> Outcome:
    """DATA went out but its reply never came: the server may or may not have taken the message."""
    code = _lost_code(exc)
    log.warning("smtp_outcome_unknown", message_id=prepared.message_id, code=code)
    detail = f"connection lost after DATA, before the server's reply: {_describe(exc)}"
    return Outcome(OutcomeKind.UNKNOWN, code, detail, provider_message_id=prepared.message_id)


def _lost_code(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | OSError):
        return "disconnected"
    return "smtp_error"


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    """RSET so the next MAIL starts a clean envelope; a dead link is reopened by the next send."""
    if not smtp.is_connected:
        return
    try:
        await smtp.rset()
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()


def classify_reply(stage: str, code: int, text: str, retry_after: float) -> Outcome:
    """The outcome of an SMTP error reply ``code`` received at ``stage`` (MAIL, RCPT or DATA).

    4xx is temporary (RETRY); 550/551/553 at RCPT mean the mailbox is dead
    (INVALID_ADDRESS) unless the enhanced status code says the refusal is about
    something else (policy, content); 530 (authentication or STARTTLS required)
    is RETRY with code ``auth``/``tls``, since fixing the configuration makes
    the message go; other 5xx are PERMANENT. A reply the client could not parse
    is RETRY before DATA and UNKNOWN at DATA.
    """
    detail = f"{stage} refused: {code} {_scrub(text)}"
    if code == 530:  # AUTH or STARTTLS required: our configuration is wrong, not the message
        return Outcome.retry("tls" if "starttls" in text.lower() else "auth", detail, retry_after)
    if 400 <= code < 500:
        return Outcome.retry(str(code), detail, retry_after)
    if 500 <= code < 600:
        if stage == "RCPT" and code in (550, 551, 553) and _is_mailbox_problem(text):
            return Outcome(OutcomeKind.INVALID_ADDRESS, str(code), detail)
        return Outcome.permanent(str(code), detail)
    if stage == "DATA":
        return Outcome(OutcomeKind.UNKNOWN, str(code), detail)
    return Outcome.retry(str(code), detail, retry_after)


def _is_mailbox_problem(text: str) -> bool:
    match = _ENHANCED_CODE.match(text)
    if match is None:
        return True  # no enhanced code: trust the basic one
    subject, detail = match.group(2), match.group(3)
    if subject == "1":
        return detail not in ("7", "8")  # 5.1.7/5.1.8 are about the sender's address
    return subject == "2" and detail in ("0", "1")  # mailbox disabled; not "full" (5.2.2)


# --- building the message ---------------------------------------------------------------------


def _prepare(delivery: Delivery, options: SmtpOptions) -> _Prepared | Outcome:
    """The wire bytes for ``delivery``, or the outcome that stops it before any I/O."""
    address = (delivery.message.contact.get("email") or "").strip()
    if not address:
        return Outcome.permanent("no_address", "contact has no email address")
    if not address.isascii():
        reason = "internationalised addresses (SMTPUTF8) are not supported"
        return Outcome.permanent("address_not_ascii", reason)
    if not _ADDRESS.match(address):
        return Outcome(OutcomeKind.INVALID_ADDRESS, "bad_address", "contact email is not a valid mailbox")
    message = build_email(delivery, address, options)
    return _Prepared(message["Message-ID"], address, message.as_bytes(policy=_POLICY))


def build_email(delivery: Delivery, address: str, options: SmtpOptions) -> EmailMessage:
    """The e-mail for ``delivery``: text, plus an HTML alternative when there is HTML.

    The Message-ID is derived from the reach message id, so a resend of the
    same message carries the same id and mailbox providers can deduplicate it.
    """
    message = EmailMessage(policy=_POLICY)
    reach_id = delivery.message.message_id
    message["From"] = options.from_addr
    message["To"] = address
    message["Subject"] = " ".join(delivery.content.title.split())  # a newline would be header injection
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = f"<{reach_id}@{options.domain}>"
    message["X-Reach-Message-Id"] = reach_id
    if options.reply_to:
        message["Reply-To"] = options.reply_to
    link = delivery.message.variables.get("unsubscribe_url")
    if isinstance(link, str) and link:  # reach's own signed one-click link (agents/delivery/policy.py)
        _set_unsubscribe(message, link)
    elif options.unsubscribe_url:
        _add_unsubscribe(message, options.unsubscribe_url, delivery)
    message.set_content(delivery.content.text)
    if delivery.content.html:
        message.add_alternative(delivery.content.html, subtype="html")
    return message


def _add_unsubscribe(message: EmailMessage, template: str, delivery: Delivery) -> None:
    """RFC 8058 one-click unsubscribe: large mailbox providers expect both headers."""
    url = template.format(
        message_id=quote(delivery.message.message_id, safe=""),
        user_id=quote(delivery.message.user_id, safe=""),
    )
    _set_unsubscribe(message, url)


def _set_unsubscribe(message: EmailMessage, url: str) -> None:
    message["List-Unsubscribe"] = f"<{url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"


# --- helpers ----------------------------------------------------------------------------------


def _client(options: SmtpOptions) -> aiosmtplib.SMTP:
    # No username here: login is done separately so its failure can be told apart.
    return aiosmtplib.SMTP(
        hostname=options.host,
        port=options.port,
        timeout=options.timeout,
        use_tls=options.security is Security.TLS,
        start_tls=options.security is Security.STARTTLS,
        validate_certs=options.tls_verify,
        cert_bundle=options.tls_ca_file,
        local_hostname=options.local_hostname,
    )


def _scrub(text: str) -> str:
    """Server text without addresses (servers often echo the recipient), one line, bounded."""
    flat = " ".join(_ADDRESS_IN_TEXT.sub("<address>", text).split())
    return flat if len(flat) <= _MAX_DETAIL else flat[: _MAX_DETAIL - 3] + "..."


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or "no detail"
    return f"{type(exc).__name__}: {_scrub(str(message))}"


def _check_unsubscribe_url(template: str, reader: OptionReader) -> None:
    if not template.startswith("https://"):
        raise reader.error("unsubscribe_url", "must be an https:// URL (RFC 8058)")
    try:
        template.format(message_id="m", user_id="u")
    except (KeyError, IndexError, ValueError) as exc:
        reason = f"may use only {{message_id}} and {{user_id}} ({exc!r})"
        raise reader.error("unsubscribe_url", reason) from exc
