"""A generic signed webhook: POSTs each message as JSON to an endpoint the operator runs.

``POST {base_url}{path}`` with the body below and three headers:

* ``Idempotency-Key: <message_id>``: the same on every attempt of a message,
  so the receiver can drop repeats (that is why this provider is
  ``idempotent``: a lost answer is retried, not reported UNKNOWN);
* ``X-Reach-Timestamp: <unix seconds>``;
* ``X-Reach-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{raw body}")>``.

A receiver checks the signature over the raw bytes it received, before
parsing them, with :func:`verify_signature` (or the same few lines in its own
language), and refuses timestamps more than 5 minutes off, which stops
replays of an old request.

The body (``version`` 1)::

    {"version": 1, "message_id": "...", "user_id": "...", "rule_id": "...",
     "channel": "...", "template": "...", "event_id": "...", "event_name": "...",
     "event_ts": 1700000000000, "created_ts": 1700000000500, "attempt": 1,
     "priority": 5, "title": "...", "text": "...", "html": "...",
     "variables": {...}, "contact": {...}}

``contact`` holds only the contact fields named in the ``contact_fields``
option (none by default): addresses are personal data, and most receivers
need the user id, not the user's e-mail or phone.

==========================================  ======================================
what happened                               outcome
==========================================  ======================================
2xx                                         SENT, ``provider_message_id`` = the
                                            answer's JSON ``id``, else message_id
409 (a request with this key is still in    RETRY ``409`` after ``Retry-After``
progress at the receiver)
410 (the receiver retired this endpoint or  PERMANENT ``410``: the webhook has no
refuses this message for good)              per-user address to mark invalid
408, 429, 5xx                               RETRY after ``Retry-After``
3xx (redirects are not followed: a signed   PERMANENT, code = status
request goes only where it was configured)
other 4xx                                   PERMANENT, code = status
connection or read failures                 RETRY (``idempotent``): the receiver
                                            dedupes by ``Idempotency-Key``
==========================================  ======================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx
import orjson

from channels.base import Delivery, Outcome, ProviderConfig, ProviderContext
from channels.http import HttpProvider, json_body, redact, retry_after_seconds, status_outcome
from channels.options import OptionReader

TIMESTAMP_HEADER = "X-Reach-Timestamp"
SIGNATURE_HEADER = "X-Reach-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300  # seconds a receiver accepts between the timestamp and its clock
VERSION = 1
_RESERVED = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "x-reach-timestamp", "x-reach-signature"}
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookOptions:
    path: str
    secret: str = dataclasses.field(repr=False)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    contact_fields: tuple[str, ...] = ()

    @classmethod
    def parse(cls, reader: OptionReader) -> WebhookOptions:
        path = reader.text("path", default="/") or "/"
        if not path.startswith("/"):
            raise reader.error("path", "must start with '/'")
        return cls(
            path=path,
            secret=reader.required("secret"),
            headers=_headers(reader),
            contact_fields=_names(reader, "contact_fields"),
        )


class WebhookProvider(HttpProvider[WebhookOptions]):
    """Posts each delivery, signed, to one receiver; see the module docstring."""

    type_name: ClassVar[str] = "webhook"
    #: ``headers`` often carries an ``Authorization`` value, so it is masked as a whole
    secret_options: ClassVar[frozenset[str]] = frozenset({"secret", "headers"})
    address_fields: ClassVar[tuple[str, ...]] = ()
    checks_links: ClassVar[bool] = False  # a machine payload: the receiver decides what to show
    default_base_url: ClassVar[str] = ""  # none: ``base_url`` is required
    option_keys: ClassVar[frozenset[str]] = frozenset({"path", "secret", "headers", "contact_fields"})
    idempotent: ClassVar[bool] = True

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        self.clock: Callable[[], float] = time.time  # the signed timestamp; tests replace it

    async def setup(self) -> None:
        OptionReader(self.config.options, self.name).required("base_url")  # "is required", not "not a URL"
        await super().setup()

    def parse_options(self, reader: OptionReader) -> WebhookOptions:
        return WebhookOptions.parse(reader)

    @classmethod
    def contact_fields(cls, config: ProviderConfig) -> tuple[str, ...]:
        """The fields ``contact_fields`` names: the receiver gets those, and needs no address."""
        return _names(OptionReader(config.options, config.name), "contact_fields")

    async def send_one(self, delivery: Delivery) -> Outcome:
        options = self.options
        body = orjson.dumps(payload(delivery, options.contact_fields))
        timestamp = str(int(self.clock()))
        headers = {
            **options.headers,
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: delivery.message.message_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: f"{SCHEME}={sign(options.secret, timestamp, body)}",
        }
        response = await self.client.post(options.path, content=body, headers=headers)
        return classify(response, delivery.message.message_id, self._scrub)

    def transport_outcome(self, exc: httpx.HTTPError) -> Outcome:
        outcome = super().transport_outcome(exc)
        return dataclasses.replace(outcome, detail=self._scrub(outcome.detail))

    def _scrub(self, text: str) -> str:
        return redact(text, self.options.secret, *self.options.headers.values())


def payload(delivery: Delivery, contact_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON document for ``delivery`` (schema in the module docstring)."""
    message, content = delivery.message, delivery.content
    contact = {f: message.contact[f] for f in contact_fields if message.contact.get(f)}
    return {
        "version": VERSION,
        "message_id": message.message_id,
        "user_id": message.user_id,
        "rule_id": message.rule_id,
        "channel": message.channel,
        "template": message.template,
        "event_id": message.event_id,
        "event_name": message.event_name,
        "event_ts": message.event_ts,
        "created_ts": message.created_ts,
        "attempt": message.attempt,
        "priority": message.priority,
        "title": content.title,
        "text": content.text,
        "html": content.html,
        "variables": dict(message.variables),
        "contact": contact,
    }


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` under ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    header: str,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """Whether ``header`` (the ``X-Reach-Signature`` value) signs ``timestamp`` (the
    ``X-Reach-Timestamp`` value) and the raw ``body`` under ``secret``, and the timestamp is
    within ``tolerance`` seconds of ``now``.

    The header may list several comma-separated ``v1=`` signatures (as during a secret
    rotation); one match is enough. Comparisons are constant-time. Never raises on bad input.
    """
    if not timestamp.isascii() or not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, timestamp, body).encode()
    matched = False
    for candidate in _signatures(header):
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def _signatures(header: str) -> list[bytes]:
    found = []
    for part in header.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == SCHEME and value.isascii():
            found.append(value.encode())
    return found


def classify(response: httpx.Response, message_id: str, scrub: Callable[[str], str]) -> Outcome:
    """The outcome of the receiver's answer (see the table in the module docstring)."""
    status = response.status_code
    if 200 <= status < 300:
        return Outcome.sent(_receipt_id(json_body(response)) or message_id)
    detail = scrub(f"HTTP {status}: {response.text}")
    if status == 409:
        return Outcome.retry("409", detail, retry_after_seconds(response.headers))
    return status_outcome(response, str(status), detail)


def _receipt_id(body: Any) -> str:
    value = body.get("id") if isinstance(body, dict) else None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) and value != "" else ""


def _headers(reader: OptionReader) -> dict[str, str]:
    raw = reader.options.get("headers") or {}
    if not isinstance(raw, Mapping):
        raise reader.error("headers", "must be a map of header name -> value")
    for name, value in raw.items():
        if not isinstance(name, str) or not _TOKEN.match(name) or name.lower() in _RESERVED:
            raise reader.error("headers", f"may not set {name!r} (not a header name, or set by reach)")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise reader.error("headers", f"value of {name!r} must be a one-line string")
    return dict(raw)


def _names(reader: OptionReader, key: str) -> tuple[str, ...]:
    raw = reader.options.get(key) or ()
    if not isinstance(raw, list | tuple) or not all(isinstance(v, str) and v for v in raw):
        raise reader.error(key, "must be a list of contact field names")
    return tuple(raw)


__all__ = [
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookOptions",
    "WebhookProvider",
    "classify",
    "payload",
    "sign",
    "verify_signature",
]
