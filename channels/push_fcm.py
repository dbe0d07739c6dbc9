"""Android (and any Firebase) push through the FCM HTTP v1 API.

One ``POST {base_url}/v1/projects/{project_id}/messages:send`` per delivery,
authorised by an OAuth2 access token that the provider gets from Google's
token endpoint with the service account's key (an RS256 JWT assertion). The
token is fetched once at setup, cached until five minutes before it expires,
and refreshed once for all concurrent sends; a 401 from FCM (the token was
revoked or expired early) refreshes it and resends that message once.

FCM v1 errors carry a canonical ``error.status`` and, for FCM's own errors,
``error.details[].errorCode``; the outcome is chosen from the errorCode first,
so a bare 404 (wrong project or URL) never drops a token:

==========================================  ============================================
what happened                               outcome
==========================================  ============================================
no ``fcm_token`` in the contact             PERMANENT ``no_address``
200                                         SENT, provider_message_id = response ``name``
404 ``UNREGISTERED``                        INVALID_ADDRESS: drop the token
400 ``INVALID_ARGUMENT``                    PERMANENT (bad token format or bad payload;
                                            FCM does not say which, so the token stays)
403 ``SENDER_ID_MISMATCH``                  PERMANENT (token of another Firebase project)
401 ``THIRD_PARTY_AUTH_ERROR``              PERMANENT, logged: the APNs key/certificate
                                            or web push key in Firebase is wrong
429 ``QUOTA_EXCEEDED``                       RETRY after ``Retry-After``, else 60 s (FCM
                                            asks for at least a minute)
503 ``UNAVAILABLE``, 500 ``INTERNAL``,      RETRY after ``Retry-After`` when given, else
other 5xx, 429                              the agent's backoff
401 again after a refreshed token,          PERMANENT, logged: the service account cannot
403 ``PERMISSION_DENIED``, 404 without      send for this project (configuration)
``UNREGISTERED``
token endpoint refuses the key (4xx)       setup raises ``ValueError``; later: PERMANENT
                                            ``auth_refused``, logged
token endpoint unreachable, 408, 429, 5xx   RETRY ``token_unavailable`` (nothing was sent)
transport failures of the send itself       as in :mod:`channels.http` (UNKNOWN once the
                                            request went out: FCM does not deduplicate)
==========================================  ============================================

``detail`` never holds the device token, the access token or the assertion.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.http import HttpProvider, contact_field, json_body, redact, retry_after_seconds, status_outcome
from channels.options import OptionReader

log = structlog.get_logger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
ASSERTION_LIFETIME = 3600  # Google accepts assertions valid for at most one hour
QUOTA_RETRY_SECONDS = 60.0  # FCM: back off at least a minute after QUOTA_EXCEEDED
REFRESH_MARGIN = 300.0  # refresh this long before the access token expires
CONFIG_LOG_INTERVAL = 60.0  # one log event per config error code per minute, not one per message
MAX_TTL = 2_419_200  # FCM keeps a message at most four weeks
#: Google project ids (plus legacy "domain:id" ones); never a "/" that would change the URL path
_PROJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]{0,99}$")


class AndroidPriority(enum.StrEnum):
    HIGH = "high"  # wakes the device; for messages the user should see now
    NORMAL = "normal"  # delivered when the device is awake; battery-friendly


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The fields of a Google service-account key that the provider uses."""

    client_email: str
    private_key: RSAPrivateKey = dataclasses.field(repr=False)
    private_key_id: str
    project_id: str
    token_uri: str

    @classmethod
    def parse(cls, text: str, option: str, reader: OptionReader) -> ServiceAccount:
        """Read the key's JSON; errors name ``option`` and never quote the key."""
        try:
            info = json.loads(text)
        except ValueError:
            raise reader.error(option, "is not a JSON service-account key") from None
        if not isinstance(info, Mapping):
            raise reader.error(option, "is not a JSON service-account key")
        fields = {name: info.get(name) for name in ("client_email", "private_key")}
        missing = [name for name, value in fields.items() if not isinstance(value, str) or not value]
        if missing:
            raise reader.error(option, f"lacks {', '.join(missing)}")
        return cls(
            client_email=info["client_email"],
            private_key=_rsa_key(info["private_key"], option, reader),
            private_key_id=str(info.get("private_key_id") or ""),
            project_id=str(info.get("project_id") or ""),
            token_uri=str(info.get("token_uri") or DEFAULT_TOKEN_URI),
        )


def _rsa_key(pem: str, option: str, reader: OptionReader) -> RSAPrivateKey:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise reader.error(option, "has a private_key that is not an unencrypted PEM key") from None
    if not isinstance(key, RSAPrivateKey):
        raise reader.error(option, "has a private_key that is not an RSA key")
    return key


@dataclasses.dataclass(frozen=True, slots=True)
class FcmOptions:
    account: ServiceAccount
    project_id: str
    token_uri: str
    android_priority: AndroidPriority
    ttl: int  # seconds after the message was created; 0 = deliver now or never
    key_option: str  # the option the key came from, for error messages

    @classmethod
    def parse(cls, reader: OptionReader) -> FcmOptions:
        text, key_option = _key_text(reader)
        account = ServiceAccount.parse(text, key_option, reader)
        project_id = reader.text("project_id") or account.project_id
        if not project_id:
            raise reader.error("project_id", "is required (the service-account key has none)")
        if not _PROJECT_ID.match(project_id):
            raise reader.error("project_id", "is not a Google Cloud project id")
        return cls(
            account=account,
            project_id=project_id,
            token_uri=reader.url("token_uri", account.token_uri),
            android_priority=reader.choice("android_priority", AndroidPriority, AndroidPriority.HIGH),
            ttl=reader.integer("ttl", 86_400, 0, MAX_TTL),
            key_option=key_option,
        )


def _key_text(reader: OptionReader) -> tuple[str, str]:
    """(JSON text, option it came from) of the one key option that is set."""
    inline = reader.text("service_account_json")
    path = reader.text("service_account_file")
    if (inline is None) == (path is None):
        raise reader.error("service_account_file", "or 'service_account_json' must be set (exactly one)")
    if inline is not None:
        return inline, "service_account_json"
    assert path is not None
    try:
        return Path(path).read_text(encoding="utf-8"), "service_account_file"
    except OSError as exc:
        raise reader.error("service_account_file", f"cannot be read ({exc.strerror})") from None


# --- the access token ---------------------------------------------------------------------------


class _TokenError(Exception):
    """No access token could be had; ``outcome`` says what to do with the message."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


@dataclasses.dataclass(frozen=True, slots=True)
class _AccessToken:
    value: str = dataclasses.field(repr=False)
    refresh_at: float  # clock time after which it is no longer handed out


class TokenSource:
    """The service account's access token: fetched on demand, cached, refreshed once for all.

    Concurrent callers that find no valid token wait on one lock; the first
    fetches, the others take its result, including its failure (so a batch
    of a hundred sends makes one token request, not a hundred, when Google's
    token endpoint is down).
    """

    def __init__(
        self, client: httpx.AsyncClient, options: FcmOptions, clock: Callable[[], float], provider: str
    ) -> None:
        self._client = client
        self._options = options
        self._clock = clock
        self._provider = provider
        self._lock = asyncio.Lock()
        self._token: _AccessToken | None = None
        self._fetches = 0  # fetches finished; tells a waiter whether one ended while it waited
        self._failure: _TokenError | None = None

    async def get(self) -> str:
        """A valid access token; raises :class:`_TokenError` with the outcome for the message."""
        token = self._valid()
        if token is not None:
            return token
        seen = self._fetches
        async with self._lock:
            token = self._valid()
            if token is not None:
                return token
            if self._fetches != seen and self._failure is not None:
                raise self._failure  # a fetch failed while this caller waited: share its answer
            self._failure = None  # a cancelled fetch leaves none: the next caller fetches again
            try:
                fetched = await self._fetch()
            except _TokenError as exc:
                self._failure = exc
                raise
            finally:
                self._fetches += 1
            self._token = fetched
            return fetched.value

    def invalidate(self, value: str) -> None:
        """Forget ``value`` after FCM refused it, unless a newer token already replaced it."""
        if self._token is not None and self._token.value == value:
            self._token = None

    def _valid(self) -> str | None:
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token.value
        return None

    async def _fetch(self) -> _AccessToken:
        now = self._clock()
        assertion = self._assertion(now)
        try:
            response = await self._client.post(
                self._options.token_uri, data={"grant_type": GRANT_TYPE, "assertion": assertion}
            )
        except httpx.HTTPError as exc:
            detail = f"token endpoint unreachable: {type(exc).__name__}"
            raise _TokenError(Outcome.retry("token_unavailable", detail)) from None
        if response.status_code == 200:
            return self._parse(response, now)
        status = response.status_code
        reason = _oauth_reason(response, assertion)
        detail = f"token endpoint answered {status} {reason}".rstrip()
        if 400 <= status < 500 and status not in (408, 429):
            # The key, the account or token_uri is wrong: no retry will fix it.
            log.error("fcm_token_refused", provider=self._provider, status=status, reason=reason)
            raise _TokenError(Outcome.permanent("auth_refused", detail))
        raise _TokenError(status_outcome(response, "token_unavailable", detail, permanent_4xx=False))

    def _assertion(self, now: float) -> str:
        account = self._options.account
        claims = {
            "iss": account.client_email,
            "scope": SCOPE,
            # Google's own libraries always name Google's token endpoint as the audience, also
            # when the request goes elsewhere (a proxy, a private endpoint): Google checks that.
            "aud": DEFAULT_TOKEN_URI,
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        headers = {"kid": account.private_key_id} if account.private_key_id else None
        return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)

    @staticmethod
    def _parse(response: httpx.Response, now: float) -> _AccessToken:
        body = json_body(response)
        value = body.get("access_token") if isinstance(body, Mapping) else None
        lifetime = body.get("expires_in", 3600) if isinstance(body, Mapping) else 0
        if not isinstance(value, str) or not value or not isinstance(lifetime, int | float):
            raise _TokenError(Outcome.retry("token_unavailable", "token endpoint answered without a token"))
        margin = min(REFRESH_MARGIN, lifetime / 2)
        return _AccessToken(value, now + lifetime - margin)


def _oauth_reason(response: httpx.Response, assertion: str) -> str:
    """``error: error_description`` of an OAuth2 error answer, or ""."""
    body = json_body(response)
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, str):
        return ""
    assert isinstance(body, Mapping)
    return redact(f"{error}: {body.get('error_description', '')}", assertion)


# --- the provider ------------------------------------------------------------------------------


class FcmProvider(HttpProvider[FcmOptions]):
    """Sends each delivery to its contact's ``fcm_token`` through FCM HTTP v1.

    Options: ``service_account_file`` (path of the JSON key) or
    ``service_account_json`` (its text; secret), ``project_id`` and
    ``token_uri`` (default: the key's), ``android_priority`` (high | normal,
    default high), ``ttl`` (seconds the message stays deliverable after it was
    created, default 86400), and the common HTTP options. ``setup`` fetches
    the first access token and raises ``ValueError`` if Google refuses the key.
    """

    type_name: ClassVar[str] = "fcm"
    secret_options: ClassVar[frozenset[str]] = frozenset({"service_account_json"})
    address_fields: ClassVar[tuple[str, ...]] = ("fcm_token",)
    max_content_bytes: ClassVar[int] = 4096  # the FCM notification payload limit
    default_base_url: ClassVar[str] = "https://fcm.googleapis.com"
    option_keys: ClassVar[frozenset[str]] = frozenset(
        {"service_account_file", "service_account_json", "project_id", "token_uri", "android_priority", "ttl"}
    )

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        #: wall-clock seconds; JWT times and token expiry. Tests replace it before ``setup``.
        self.clock: Callable[[], float] = time.time
        self._tokens: TokenSource | None = None
        self._logged: dict[str, float] = {}

    @property
    def tokens(self) -> TokenSource:
        if self._tokens is None:
            raise RuntimeError(f"provider {self.name!r}: setup() was not called")
        return self._tokens

    def parse_options(self, reader: OptionReader) -> FcmOptions:
        return FcmOptions.parse(reader)

    async def start(self) -> None:
        self._tokens = TokenSource(self.client, self.options, self.clock, self.name)
        try:
            await self._tokens.get()
        except _TokenError as exc:
            if exc.outcome.kind is OutcomeKind.PERMANENT:
                reason = f"Google refused the key ({exc.outcome.detail})"
                raise ValueError(
                    f"provider {self.name!r}: option {self.options.key_option!r}: {reason}"
                ) from None
            # Google unreachable at start-up: sends will retry the token, not crash the worker.
            log.warning("fcm_token_prefetch_failed", provider=self.name, detail=exc.outcome.detail)

    async def send_one(self, delivery: Delivery) -> Outcome:
        device = contact_field(delivery, "fcm_token")
        if device is None:
            return Outcome.permanent("no_address", "the contact has no fcm_token")
        body = self.message_body(delivery, device)
        try:
            access = await self.tokens.get()
            response = await self._post(body, access)
            if response.status_code == 401 and FcmError.of(response).error_code != "THIRD_PARTY_AUTH_ERROR":
                self.tokens.invalidate(access)
                access = await self.tokens.get()
                response = await self._post(body, access)
        except _TokenError as exc:
            return exc.outcome
        return self._classify(response, device, access)

    def message_body(self, delivery: Delivery, device: str) -> dict[str, Any]:
        """The ``messages:send`` request body for ``delivery`` to ``device``."""
        message = delivery.message
        notification = {"body": delivery.content.text}
        if delivery.content.title:
            notification["title"] = delivery.content.title
        return {
            "message": {
                "token": device,
                "notification": notification,
                # FCM data values must be strings.
                "data": {
                    "message_id": message.message_id,
                    "rule_id": message.rule_id,
                    "template": message.template,
                },
                "android": {
                    "priority": self.options.android_priority.value.upper(),
                    "ttl": f"{self._remaining_ttl(message.created_ts)}s",
                },
            }
        }

    def _remaining_ttl(self, created_ms: int) -> int:
        """The TTL counts from the message's creation, so a retry does not extend its life."""
        expires = created_ms / 1000 + self.options.ttl
        return max(0, min(MAX_TTL, int(expires - self.clock())))

    async def _post(self, body: Mapping[str, Any], access: str) -> httpx.Response:
        path = f"/v1/projects/{self.options.project_id}/messages:send"
        return await self.client.post(path, json=body, headers={"Authorization": f"Bearer {access}"})

    def _classify(self, response: httpx.Response, device: str, access: str) -> Outcome:
        if response.status_code == 200:
            body = json_body(response)
            name = body.get("name") if isinstance(body, Mapping) else None
            return Outcome.sent(name if isinstance(name, str) else "")
        error = FcmError.of(response)
        outcome = error.outcome(response, device, access)
        if error.is_config_error(response.status_code):
            self._config_error(outcome)
        return outcome

    def _config_error(self, outcome: Outcome) -> None:
        now = self.clock()
        if now - self._logged.get(outcome.code, float("-inf")) >= CONFIG_LOG_INTERVAL:
            self._logged[outcome.code] = now
            log.error("fcm_config_error", provider=self.name, code=outcome.code, detail=outcome.detail)


@dataclasses.dataclass(frozen=True, slots=True)
class FcmError:
    """The parts of an FCM v1 error body that decide the outcome."""

    status: str  # canonical status: NOT_FOUND, UNAUTHENTICATED, ...
    error_code: str  # FcmError errorCode: UNREGISTERED, QUOTA_EXCEEDED, ...; "" when absent
    message: str

    @classmethod
    def of(cls, response: httpx.Response) -> FcmError:
        body = json_body(response)
        error = body.get("error") if isinstance(body, Mapping) else None
        if not isinstance(error, Mapping):
            return cls("", "", "")
        details = error.get("details")
        error_code = ""
        for entry in details if isinstance(details, list) else ():
            if isinstance(entry, Mapping) and entry.get("@type") == FCM_ERROR_TYPE:
                error_code = str(entry.get("errorCode") or "")
        return cls(str(error.get("status") or ""), error_code, str(error.get("message") or ""))

    def outcome(self, response: httpx.Response, *secrets: str) -> Outcome:
        """The outcome for this error; ``secrets`` are blanked from the detail."""
        code = self.error_code or self.status or str(response.status_code)
        detail = redact(f"{response.status_code} {code}: {self.message}", *secrets)
        if self.error_code == "UNREGISTERED":
            return Outcome.invalid_address(code, detail)
        if self.error_code == "QUOTA_EXCEEDED":
            return Outcome.retry(code, detail, retry_after_seconds(response.headers) or QUOTA_RETRY_SECONDS)
        if self.error_code in ("INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"):
            return Outcome.permanent(code, detail)
        return status_outcome(response, code, detail)

    def is_config_error(self, status_code: int) -> bool:
        """Every message would fail like this: the provider's setup, not the message, is wrong."""
        if self.error_code == "THIRD_PARTY_AUTH_ERROR":
            return True
        return status_code in (401, 403, 404) and self.error_code not in (
            "UNREGISTERED",
            "SENDER_ID_MISMATCH",
        )
