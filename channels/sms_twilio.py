"""SMS through Twilio's Programmable Messaging REST API (2010-04-01).

One ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` per delivery
(Twilio has no batch endpoint; the base's ``concurrency`` bounds the requests
in flight), form-encoded: ``To`` = the contact's ``phone`` (E.164),
``From`` = option ``from_number`` or ``MessagingServiceSid`` = option
``messaging_service_sid``, ``Body`` = the rendered text, and ``StatusCallback``
= option ``status_callback_url`` with ``{message_id}`` replaced, when set.
Authentication is HTTP Basic with ``account_sid:auth_token``, or with an API key
(``api_key_sid:api_key_secret``) when those are set.

========================================================  ===============================
Twilio answer                                             outcome
========================================================  ===============================
201 Created                                               SENT, provider_message_id = sid
no ``phone`` in the contact / empty text                  PERMANENT ``no_address`` /
                                                          ``empty_body``
21211 (invalid To), 21614 (not a mobile), 21610           INVALID_ADDRESS, code = Twilio's
(recipient replied STOP), 21217 (not a valid number)
429 / 20429, 14107, 21611 (rate or queue limits),         RETRY, honouring ``Retry-After``
5xx / 20500 / 20503
401 / 20003 (credentials), 20404 (account), 21606,        PERMANENT, detail starts with
21659, 21212 (From not usable), 21703/21704 (service)     ``configuration:``, and a log event
any other 4xx (21602 empty body, 21617 too long, 21408    PERMANENT, code = Twilio's code
region not enabled, 21612 unreachable, ...)
transport failures                                        as :mod:`channels.http`
========================================================  ===============================

``detail`` is Twilio's code and message with digit runs (Twilio echoes phone
numbers) removed, never a token or key secret.

Delivery reports: Twilio posts status callbacks (``MessageSid``,
``MessageStatus``, ``ErrorCode``) to ``StatusCallback``, possibly twice or out
of order, signed with ``X-Twilio-Signature`` under the account's auth token.
The receipts API (:mod:`api.receipt_config`) checks them with this entry's
``auth_token`` (keep it set when sending with an API key), or, for requests a
Twilio Webhook Setting signs with a SharedKey (HMAC-SHA256), with the secret
``webhook_shared_keys`` maps that key's id to; its optional ``receipt_url`` and
``inbound_url`` are accepted and not used here. Inbound messages (STOP / START)
arrive at ``/v1/inbound/<name>`` under the same checks (:mod:`api.inbound`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import structlog

from channels.base import Delivery, Outcome, ProviderConfig, ProviderContext
from channels.http import HttpProvider, contact_field, json_body, redact, retry_after_seconds, status_outcome
from channels.options import OptionReader

log = structlog.get_logger(__name__)

API_VERSION = "2010-04-01"

_OPTION_KEYS = frozenset(
    {
        "account_sid", "auth_token", "api_key_sid", "api_key_secret", "from_number",
        "messaging_service_sid", "status_callback_url",
        # read by the receipts and inbound API (api/receipt_config.py), not by the sender
        "receipt_url", "inbound_url", "webhook_shared_keys",
    }
)  # fmt: skip

_INVALID_ADDRESS = frozenset({"21211", "21614", "21610", "21217"})
_RETRYABLE = frozenset({"20429", "14107", "21611", "20500", "20503"})
_CONFIG = frozenset({"20003", "20404", "20005", "21606", "21659", "21212", "21703", "21704"})
_DIGIT_RUN = re.compile(r"\+?\d[\d\s-]{4,}\d")


@dataclasses.dataclass(frozen=True, slots=True)
class TwilioOptions:
    account_sid: str
    username: str  # account_sid, or the API key sid
    password: str = dataclasses.field(repr=False)  # auth token, or the API key secret
    from_number: str | None
    messaging_service_sid: str | None
    status_callback_url: str | None

    @classmethod
    def parse(cls, reader: OptionReader) -> TwilioOptions:
        account_sid = reader.required("account_sid")
        username, password = _credentials(reader, account_sid)
        from_number = reader.text("from_number")
        service = reader.text("messaging_service_sid")
        if from_number is None and service is None:
            raise reader.error("from_number", "or 'messaging_service_sid' is required")
        callback = reader.text("status_callback_url")
        if callback is not None:
            _check_callback(reader, callback)
        return cls(account_sid, username, password, from_number, service, callback)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.password,)


def _credentials(reader: OptionReader, account_sid: str) -> tuple[str, str]:
    key_sid, key_secret = reader.text("api_key_sid"), reader.text("api_key_secret")
    if key_sid is not None or key_secret is not None:
        if key_sid is None:
            raise reader.error("api_key_sid", "is required when 'api_key_secret' is set")
        if key_secret is None:
            raise reader.error("api_key_secret", "is required when 'api_key_sid' is set")
        return key_sid, key_secret
    token = reader.text("auth_token")
    if token is None:
        raise reader.error("auth_token", "is required (or 'api_key_sid' and 'api_key_secret')")
    return account_sid, token


def _check_callback(reader: OptionReader, template: str) -> None:
    if not template.startswith(("https://", "http://")):
        raise reader.error("status_callback_url", "must be an http:// or https:// URL")
    try:
        template.format(message_id="m")
    except (KeyError, IndexError, ValueError) as exc:
        raise reader.error("status_callback_url", f"may use only {{message_id}} ({exc!r})") from exc


class TwilioSmsProvider(HttpProvider[TwilioOptions]):
    """Twilio Messages API, one request per delivery; see the module docstring for outcomes."""

    type_name: ClassVar[str] = "twilio_sms"
    default_base_url: ClassVar[str] = "https://api.twilio.com"
    option_keys: ClassVar[frozenset[str]] = _OPTION_KEYS
    secret_options: ClassVar[frozenset[str]] = frozenset(
        {"auth_token", "api_key_secret", "webhook_shared_keys"}
    )
    address_fields: ClassVar[tuple[str, ...]] = ("phone",)
    opt_out_codes: ClassVar[frozenset[str]] = frozenset({"21610"})  # the recipient texted STOP
    max_content_bytes: ClassVar[int] = 2048  # Twilio refuses bodies over 1,600 characters
    tracked_links: ClassVar[bool] = True  # the body is the rendered text

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)

    def parse_options(self, reader: OptionReader) -> TwilioOptions:
        return TwilioOptions.parse(reader)

    async def send_one(self, delivery: Delivery) -> Outcome:
        phone = contact_field(delivery, "phone")
        if phone is None:
            return Outcome.permanent("no_address", "contact has no phone number")
        if not delivery.content.text.strip():
            return Outcome.permanent("empty_body", "the rendered text is empty")
        options = self.options
        response = await self.client.post(
            f"/{API_VERSION}/Accounts/{quote(options.account_sid, safe='')}/Messages.json",
            data=self._form(delivery, "".join(phone.split())),
            auth=(options.username, options.password),
        )
        return self._outcome(response)

    def _form(self, delivery: Delivery, phone: str) -> dict[str, str]:
        options = self.options
        form = {"To": phone, "Body": delivery.content.text}
        if options.messaging_service_sid is not None:
            form["MessagingServiceSid"] = options.messaging_service_sid
        if options.from_number is not None:
            form["From"] = options.from_number
        if options.status_callback_url is not None:
            message_id = quote(delivery.message.message_id, safe="")
            form["StatusCallback"] = options.status_callback_url.format(message_id=message_id)
        return form

    def _outcome(self, response: httpx.Response) -> Outcome:
        body = json_body(response)
        if 200 <= response.status_code < 300:
            sid = body.get("sid") if isinstance(body, dict) else None
            return Outcome.sent(str(sid or ""))
        code = _code(body) or str(response.status_code)
        message = str(body.get("message") or "") if isinstance(body, dict) else ""
        return self.classify(code, message, response)

    def classify(self, code: str, message: str, response: httpx.Response) -> Outcome:
        """The outcome of a Twilio error ``code``; see the table in the module docstring."""
        detail = f"{code}: {self._scrub(message)}" if message else f"{code}: HTTP {response.status_code}"
        if code in _INVALID_ADDRESS:
            return Outcome.invalid_address(code, detail)
        if code in _RETRYABLE:
            return Outcome.retry(code, detail, retry_after_seconds(response.headers))
        if code in _CONFIG or response.status_code in (401, 403):
            log.error(
                "sms_provider_misconfigured", provider=self.name, provider_type=self.type_name, code=code
            )
            return Outcome.permanent(code, f"configuration: {detail}")
        return status_outcome(response, code, detail)

    def _scrub(self, message: str) -> str:
        text = redact(" ".join(message.split()), *self.options.secrets)
        return _DIGIT_RUN.sub("<number>", text)


def _code(body: Any) -> str | None:
    code = body.get("code") if isinstance(body, dict) else None
    return str(code) if isinstance(code, int | str) and code != "" else None


__all__ = ["API_VERSION", "TwilioOptions", "TwilioSmsProvider"]
