"""A local Twilio Messages API (2010-04-01) that checks requests as Twilio does.

It serves ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``: HTTP Basic
authentication with the account sid and auth token, or an API key sid and
secret (``401``, code 20003, otherwise); the account in the path must be the
server's; a form-encoded body with ``To`` (E.164), ``From`` (the server's
number) or ``MessagingServiceSid`` (the server's service), a non-empty
``Body`` of at most 1600 characters, and an optional ``StatusCallback`` URL.
Answers are Twilio's: ``201`` with the Message resource (``sid`` = ``SM`` + 32
hex digits, ``status`` queued or accepted), or the error envelope
``{"code", "message", "more_info", "status"}`` with the matching HTTP status.

:meth:`TwilioServer.fail_number` makes every message to a number fail with a
Twilio error code (21211, 21610, 21614, 20429, 20500, ...), answered with the
HTTP status Twilio uses for it. ``sent`` lists the messages created.

Webhooks the other way (status callbacks, incoming messages) are built by
:meth:`TwilioServer.webhook` as Twilio sends them: a form body whose
``X-Twilio-Signature`` is base64(HMAC(key, URL + each parameter name and value,
names sorted)), HMAC-SHA1 under the auth token, or, when a Webhook Setting signs
with a :class:`SharedKey`, under that key's secret with its algorithm, named in
``X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=<algorithm>``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.utils
import hashlib
import hmac
import re
import threading
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

from tests.support.http_provider import ProviderServer, Recorded, Refused, Reply
from tests.support.tls import SelfSignedCert
from tests.support.waiting import wait_for_count

API_VERSION = "2010-04-01"
_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
#: the HTTP status Twilio answers each error code with; every other code is a 400
_STATUS = {20003: 401, 20404: 404, 20429: 429, 14107: 429, 20500: 500, 20503: 503}
_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    14107: "SMS send rate limit exceeded",
    20500: "An internal server error has occurred",
    20503: "Service Unavailable",
    21211: "Invalid 'To' Phone Number: {to}",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The From phone number {from_} is not a valid, SMS-capable inbound phone number for your account.",
    21609: "Invalid StatusCallback url",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number {to} is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}


_DIGESTS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}


@dataclasses.dataclass(frozen=True)
class SharedKey:
    """A SharedKey of Twilio's Webhooks configuration API, as a Webhook Setting names it."""

    sid: str = "webhooks_sharedkey_" + "01hzx4k2c8v7m3n9p5q6r8s0tw"
    secret: str = dataclasses.field(default="twilio-test-shared-key-secret-9c1e", repr=False)
    algorithm: str = "HMAC_SHA256"


@dataclasses.dataclass(frozen=True)
class Webhook:
    """One request Twilio makes to an application: POST ``body`` with ``headers``."""

    body: bytes
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class SentMessage:
    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    username: str  # who authenticated: the account sid or the API key sid


class _Answer(Exception):
    def __init__(self, code: int, *, to: str = "", from_: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.to = to
        self.from_ = from_


class TwilioServer(ProviderServer):
    """Stands in for api.twilio.com; constructed with the credentials it accepts."""

    def __init__(
        self,
        *,
        account_sid: str = "AC" + "0123456789abcdef" * 2,
        auth_token: str = "twilio-test-auth-token-51b0",
        api_key_sid: str = "SK" + "fedcba9876543210" * 2,
        api_key_secret: str = "twilio-test-key-secret-77aa",
        from_number: str = "+15005550006",
        messaging_service_sid: str = "MG" + "00112233445566778899aabbccddeeff",
        retry_after: str = "3",
        tls: SelfSignedCert | None = None,
    ) -> None:
        super().__init__(tls=tls)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.api_key_sid = api_key_sid
        self.api_key_secret = api_key_secret
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.retry_after = retry_after  # Retry-After on 429 answers
        self.sent: list[SentMessage] = []
        self._failing: dict[str, int] = {}
        self._state = threading.Lock()

    # -- control -------------------------------------------------------------------------------

    def provider_options(self) -> dict[str, Any]:
        """The ``options`` of a ``twilio_sms`` provider entry that sends here."""
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "from_number": self.from_number,
        }
        if self.tls is not None:
            options["tls_ca_file"] = str(self.tls.cert_file)
        return options

    def fail_number(self, phone: str, code: int | str) -> None:
        """Answer every message to ``phone`` with Twilio error ``code``."""
        with self._state:
            self._failing[phone] = int(code)

    def webhook(self, url: str, params: Mapping[str, str], shared_key: SharedKey | None = None) -> Webhook:
        """What Twilio POSTs to ``url`` with these parameters: signed with the auth token
        (HMAC-SHA1), or with ``shared_key`` as a matching Webhook Rule's Setting signs."""
        data = url + "".join(name + params[name] for name in sorted(params))
        key, digest = self.auth_token, hashlib.sha1
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "i-twilio-idempotency-token": uuid.uuid4().hex,
        }
        if shared_key is not None:
            key, digest = shared_key.secret, _DIGESTS[shared_key.algorithm]
            headers["x-twilio-webhooks-signature-settings"] = (
                f"key={shared_key.sid},algorithm={shared_key.algorithm}"
            )
        mac = hmac.new(key.encode(), data.encode(), digest).digest()
        headers["x-twilio-signature"] = base64.b64encode(mac).decode()
        return Webhook(urllib.parse.urlencode(params).encode(), headers)

    def incoming(self, from_: str, body: str, opt_out_type: str | None = None) -> dict[str, str]:
        """The parameters of an incoming-message webhook from ``from_`` to the server's number;
        ``opt_out_type`` (STOP, START, HELP) as Advanced Opt-Out adds it for a keyword."""
        sid = "SM" + uuid.uuid4().hex
        params = {
            "ToCountry": "US", "SmsMessageSid": sid, "NumMedia": "0", "SmsSid": sid, "SmsStatus": "received",
            "Body": body, "To": self.from_number, "NumSegments": "1", "MessageSid": sid,
            "AccountSid": self.account_sid, "From": from_, "ApiVersion": API_VERSION,
            "MessagingServiceSid": self.messaging_service_sid,
        }  # fmt: skip
        if opt_out_type is not None:
            params["OptOutType"] = opt_out_type
        return params

    def wait_for_sent(self, count: int, timeout: float = 30.0) -> list[SentMessage]:
        def snapshot() -> list[SentMessage]:
            with self._state:
                return list(self.sent)

        return wait_for_count(snapshot, count, timeout, f"{count} messages sent by {type(self).__name__}")

    # -- the API -------------------------------------------------------------------------------

    async def handle(self, request: Recorded) -> Reply:
        try:
            match = _PATH.match(request.path)
            if match is None or request.method != "POST":
                raise _Answer(20404)
            username = self._authenticate(request.headers.get("authorization", ""))
            if match["account"] != self.account_sid:
                raise _Answer(20404)
            if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                raise _Answer(21602)
            return self._create(request.form(), username)
        except _Answer as answer:
            raise Refused(self._error(answer)) from None

    def _authenticate(self, header: str) -> str:
        scheme, _, encoded = header.partition(" ")
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _Answer(20003) from None
        accepted = {self.account_sid: self.auth_token, self.api_key_sid: self.api_key_secret}
        expected = accepted.get(username)
        if scheme != "Basic" or expected is None or not hmac.compare_digest(expected, password):
            raise _Answer(20003)
        return username

    def _create(self, form: Mapping[str, str], username: str) -> Reply:
        to, from_, service = form.get("To", ""), form.get("From"), form.get("MessagingServiceSid")
        self._check_sender(from_, service)
        body = form.get("Body", "")
        callback = form.get("StatusCallback")
        if not to:
            raise _Answer(21604)
        if not body:
            raise _Answer(21602)
        if len(body) > 1600:
            raise _Answer(21617)
        if callback is not None and not callback.startswith(("https://", "http://")):
            raise _Answer(21609)
        if not _E164.match(to):
            raise _Answer(21211, to=to)
        with self._state:
            scripted = self._failing.get(to)
        if scripted is not None:
            raise _Answer(scripted, to=to, from_=from_ or "")
        message = SentMessage("SM" + uuid.uuid4().hex, to, from_, service, body, callback, username)
        with self._state:
            self.sent.append(message)
        return Reply(201, json=self._resource(message))

    def _check_sender(self, from_: str | None, service: str | None) -> None:
        if from_ is None and service is None:
            raise _Answer(21603)
        if from_ is not None and from_ != self.from_number:
            raise _Answer(21606, from_=from_)
        if service is not None and service != self.messaging_service_sid:
            raise _Answer(20404)

    def _resource(self, message: SentMessage) -> dict[str, Any]:
        now = email.utils.formatdate(usegmt=False).replace("-0000", "+0000")
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": message.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": message.from_,
            "messaging_service_sid": message.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(1 + len(message.body) // 153),
            "price": None,
            "price_unit": "USD",
            "sid": message.sid,
            "status": "accepted" if message.messaging_service_sid else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": message.to,
            "uri": f"{uri}.json",
        }

    def _error(self, answer: _Answer) -> Reply:
        status = _STATUS.get(answer.code, 400)
        text = _MESSAGES.get(answer.code, f"Error {answer.code}")
        body = {
            "code": answer.code,
            "message": text.format(to=answer.to, from_=answer.from_),
            "more_info": f"https://www.twilio.com/docs/errors/{answer.code}",
            "status": status,
        }
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        if status == 429:
            headers["Retry-After"] = self.retry_after
        return Reply(status, json=body, headers=headers)


__all__ = ["SentMessage", "SharedKey", "TwilioServer", "Webhook"]
