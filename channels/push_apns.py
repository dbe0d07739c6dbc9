"""iOS push through Apple's APNs provider API (HTTP/2, token-based authentication).

One ``POST {base_url}/3/device/{token}`` per delivery over a multiplexed
HTTP/2 connection, authorised by a provider token: an ES256 JWT signed with
the team's .p8 key (header ``kid``, claims ``iss`` = team id and ``iat``).
Apple rejects tokens older than an hour and tokens renewed more often than
every 20 minutes, so one token is signed and reused for 50 minutes; when APNs
says ``ExpiredProviderToken`` (a clock jump, or a token that aged in a quiet
period) it is renewed and that message resent once.

Every request carries ``apns-id``, a UUID derived from the message id, so a
retry of the same message carries the same id and Apple's answer names it.

==========================================  ============================================
what happened                               outcome
==========================================  ============================================
no ``apns_token`` in the contact            PERMANENT ``no_address``
token not hex (never sent: it goes in the   INVALID_ADDRESS ``BadDeviceToken``
URL path)
payload over 4096 bytes (never sent)        PERMANENT ``PayloadTooLarge``
200                                         SENT, provider_message_id = ``apns-id``
410 ``Unregistered`` / ``ExpiredToken``     INVALID_ADDRESS: drop the token
400 ``BadDeviceToken``                      PERMANENT, not INVALID_ADDRESS: Apple says it
                                            for a bad token and for a token of the other
                                            environment alike, so a wrong ``base_url`` would
                                            condemn every good token (many at once: check it)
``DeviceTokenNotForTopic``,                 PERMANENT (Apple: never retry)
``PayloadTooLarge``, other 400s
403 ``InvalidProviderToken``,               PERMANENT, logged: the key, key id, team id or
``MissingProviderToken``, ``Forbidden``,    topic is wrong; every message would fail
``BadTopic``, ``MissingTopic``,
``TopicDisallowed``, ...
403 ``ExpiredProviderToken`` twice          PERMANENT, logged (this host's clock is off)
429 ``TooManyProviderTokenUpdates``         RETRY after ``Retry-After``, else 60 s; the
                                            token is kept (a new one would be one more
                                            update), logged: several processes share a key
429 ``TooManyRequests`` (too many requests  RETRY after ``Retry-After``, else 300 s: a
to this one device token)                   quick retry would hit the same device's limit
500, 503, ``IdleTimeout``                   RETRY after ``Retry-After`` when given, else
                                            the agent's backoff
transport failures                          as in :mod:`channels.http` (UNKNOWN once the
                                            request went out: APNs does not deduplicate)
==========================================  ============================================

``detail`` never holds the device token or the provider token.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from channels.base import Delivery, Outcome, ProviderConfig, ProviderContext
from channels.http import HttpProvider, contact_field, json_body, redact, retry_after_seconds, status_outcome
from channels.options import OptionReader

log = structlog.get_logger(__name__)

PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"
TOKEN_REUSE_SECONDS = 50 * 60  # Apple: renew at most every 20 min, at least every 60 min
MAX_PAYLOAD = 4096  # bytes, for alert notifications
MAX_TTL = 30 * 86_400
TOKEN_UPDATE_RETRY_SECONDS = 60.0
DEVICE_RATE_RETRY_SECONDS = 300.0  # TooManyRequests is per device token: let its limit lift
CONFIG_LOG_INTERVAL = 60.0  # one log event per config error reason per minute
#: namespace of the apns-id UUIDs: uuid5(namespace, message_id)
APNS_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:reach:apns-id")

_APPLE_ID = re.compile(r"^[A-Z0-9]{10}$")  # team ids and key ids
_DEVICE_TOKEN = re.compile(r"^[0-9A-Fa-f]{16,400}$")

#: reasons after which the token is dead. Not BadDeviceToken: Apple also answers it for a token of
#: the other environment, so a wrong base_url would bury every user's good token.
_DEAD_TOKEN = frozenset({"Unregistered", "ExpiredToken"})
#: reasons that no message can get past: the provider's configuration is wrong
_CONFIG = frozenset(
    {
        "InvalidProviderToken", "MissingProviderToken", "ExpiredProviderToken", "UnrelatedKeyIdInToken",
        "BadEnvironmentKeyInToken", "BadCertificate", "BadCertificateEnvironment", "Forbidden",
        "BadTopic", "MissingTopic", "TopicDisallowed", "BadPath", "MethodNotAllowed",
    }
)  # fmt: skip
#: reasons worth another attempt later, whatever their status
_TEMPORARY = frozenset({"InternalServerError", "ServiceUnavailable", "Shutdown", "IdleTimeout"})


def apns_id(message_id: str) -> str:
    """The ``apns-id`` of a message: stable across retries, unique per message."""
    return str(uuid.uuid5(APNS_ID_NAMESPACE, message_id))


@dataclasses.dataclass(frozen=True, slots=True)
class ApnsOptions:
    team_id: str
    key_id: str
    private_key: EllipticCurvePrivateKey = dataclasses.field(repr=False)
    topic: str  # the app's bundle id
    priority: int  # 10 now, 5 power-considerate, 1 lowest
    ttl: int  # seconds after the message was created that APNs keeps trying; 0 = once

    @classmethod
    def parse(cls, reader: OptionReader) -> ApnsOptions:
        priority = reader.integer("priority", 10, 1, 10)
        if priority not in (1, 5, 10):
            raise reader.error("priority", "must be 10, 5 or 1")
        return cls(
            team_id=_apple_id(reader, "team_id"),
            key_id=_apple_id(reader, "key_id"),
            private_key=_ec_key(reader),
            topic=reader.required("topic"),
            priority=priority,
            ttl=reader.integer("ttl", 86_400, 0, MAX_TTL),
        )


def _apple_id(reader: OptionReader, key: str) -> str:
    value = reader.required(key)
    if not _APPLE_ID.match(value):
        raise reader.error(key, "must be Apple's 10-character id (capital letters and digits)")
    return value


def _ec_key(reader: OptionReader) -> EllipticCurvePrivateKey:
    """The signing key from ``private_key`` (PEM text) or ``private_key_file`` (the .p8 file)."""
    inline = reader.text("private_key")
    path = reader.text("private_key_file")
    if (inline is None) == (path is None):
        raise reader.error("private_key", "or 'private_key_file' must be set (exactly one)")
    option = "private_key" if inline is not None else "private_key_file"
    if inline is not None:
        pem = inline.encode()
    else:
        assert path is not None
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise reader.error(option, f"cannot be read ({exc.strerror})") from None
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise reader.error(option, "is not an unencrypted PEM (.p8) key") from None
    if not isinstance(key, EllipticCurvePrivateKey) or not isinstance(key.curve, SECP256R1):
        raise reader.error(option, "is not a P-256 (ES256) key as Apple issues them")
    return key


class ProviderToken:
    """The signed JWT sent as ``authorization: bearer``, reused for 50 minutes."""

    def __init__(self, options: ApnsOptions, clock: Callable[[], float]) -> None:
        self._options = options
        self._clock = clock
        self._value: str | None = None
        self._issued_at = 0.0

    def get(self) -> str:
        if self._value is None or self._clock() - self._issued_at >= TOKEN_REUSE_SECONDS:
            self._issued_at = self._clock()
            self._value = jwt.encode(
                {"iss": self._options.team_id, "iat": int(self._issued_at)},
                self._options.private_key,
                algorithm="ES256",
                headers={"kid": self._options.key_id, "typ": None},  # Apple's header: alg and kid only
            )
        return self._value

    def renew(self, rejected: str) -> None:
        """Sign a new token at the next ``get`` unless ``rejected`` was already replaced."""
        if self._value == rejected:
            self._value = None


class ApnsProvider(HttpProvider[ApnsOptions]):
    """Sends each delivery to its contact's ``apns_token`` as an alert notification.

    Options: ``team_id``, ``key_id``, ``private_key`` (the .p8 PEM text; secret)
    or ``private_key_file``, ``topic`` (the app's bundle id), ``priority``
    (10 | 5 | 1, default 10), ``ttl`` (seconds after creation that APNs keeps
    trying, default 86400; 0 = once), and the common HTTP options.
    ``base_url`` defaults to production; the sandbox is
    https://api.sandbox.push.apple.com.
    """

    type_name: ClassVar[str] = "apns"
    secret_options: ClassVar[frozenset[str]] = frozenset({"private_key"})
    address_fields: ClassVar[tuple[str, ...]] = ("apns_token",)
    max_content_bytes: ClassVar[int] = 4096  # the APNs payload limit
    default_base_url: ClassVar[str] = PRODUCTION_URL
    http2: ClassVar[bool] = True
    option_keys: ClassVar[frozenset[str]] = frozenset(
        {"team_id", "key_id", "private_key", "private_key_file", "topic", "priority", "ttl"}
    )

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        self._token: ProviderToken | None = None
        self._logged: dict[str, float] = {}

    @property
    def provider_token(self) -> ProviderToken:
        if self._token is None:
            raise RuntimeError(f"provider {self.name!r}: setup() was not called")
        return self._token

    def parse_options(self, reader: OptionReader) -> ApnsOptions:
        options = ApnsOptions.parse(reader)
        self._token = ProviderToken(options, self.now)
        return options

    async def send_one(self, delivery: Delivery) -> Outcome:
        device = contact_field(delivery, "apns_token")
        if device is None:
            return Outcome.permanent("no_address", "the contact has no apns_token")
        if not _DEVICE_TOKEN.match(device):
            return Outcome.invalid_address("BadDeviceToken", "the apns_token is not a hex device token")
        payload = self.payload(delivery)
        if len(payload) > MAX_PAYLOAD:
            return Outcome.permanent("PayloadTooLarge", f"payload is {len(payload)} bytes; APNs takes 4096")
        headers = self.headers(delivery)
        bearer = self.provider_token.get()
        response = await self._post(device, payload, headers, bearer)
        if response.status_code == 403 and _reason(response) == "ExpiredProviderToken":
            self.provider_token.renew(bearer)
            bearer = self.provider_token.get()
            response = await self._post(device, payload, headers, bearer)
        return self._classify(response, headers["apns-id"], device, bearer)

    def payload(self, delivery: Delivery) -> bytes:
        alert = {"body": delivery.content.text}
        if delivery.content.title:
            alert["title"] = delivery.content.title
        body = {"aps": {"alert": alert}, "message_id": delivery.message.message_id}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    def headers(self, delivery: Delivery) -> dict[str, str]:
        """The APNs request headers, except ``authorization``."""
        options = self.options
        return {
            "apns-topic": options.topic,
            "apns-push-type": "alert",
            "apns-priority": str(options.priority),
            "apns-id": apns_id(delivery.message.message_id),
            "apns-expiration": str(self._expiration(delivery.message.created_ts)),
            "content-type": "application/json",
        }

    def _expiration(self, created_ms: int) -> int:
        """Counted from the message's creation, so a retry does not extend its life; 0 = try once."""
        if self.options.ttl == 0:
            return 0
        expires = created_ms // 1000 + self.options.ttl
        return expires if expires > self.now() else 0

    async def _post(
        self, device: str, payload: bytes, headers: Mapping[str, str], bearer: str
    ) -> httpx.Response:
        return await self.client.post(
            f"/3/device/{device}", content=payload, headers={**headers, "authorization": f"bearer {bearer}"}
        )

    def _classify(self, response: httpx.Response, sent_id: str, device: str, bearer: str) -> Outcome:
        if response.status_code == 200:
            return Outcome.sent(response.headers.get("apns-id") or sent_id)
        reason, now = _reason(response) or str(response.status_code), self.now()
        detail = redact(f"{response.status_code} {reason}", device, bearer)
        if reason in _CONFIG or reason == "TooManyProviderTokenUpdates":
            self._config_error(reason, response.status_code)
        if reason in _DEAD_TOKEN:
            return Outcome.invalid_address(reason, detail)
        if reason == "TooManyProviderTokenUpdates":
            retry_after = retry_after_seconds(response.headers, now) or TOKEN_UPDATE_RETRY_SECONDS
            return Outcome.retry(reason, detail, retry_after)
        if reason == "TooManyRequests":
            retry_after = retry_after_seconds(response.headers, now) or DEVICE_RATE_RETRY_SECONDS
            return Outcome.retry(reason, detail, retry_after)
        if reason in _TEMPORARY:
            return Outcome.retry(reason, detail, retry_after_seconds(response.headers, now))
        return status_outcome(response, reason, detail, now)

    def _config_error(self, reason: str, status: int) -> None:
        now = self.now()
        if now - self._logged.get(reason, float("-inf")) >= CONFIG_LOG_INTERVAL:
            self._logged[reason] = now
            log.error("apns_config_error", provider=self.name, reason=reason, status=status)


def _reason(response: httpx.Response) -> str:
    body = json_body(response)
    reason = body.get("reason") if isinstance(body, Mapping) else None
    return reason if isinstance(reason, str) else ""
