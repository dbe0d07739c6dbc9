"""A stand-in for Google's OAuth2 token endpoint and the FCM HTTP v1 send API.

``POST /token`` checks what Google checks of a service-account assertion: the
grant type, the RS256 signature against the service account's public key,
``iss``, ``aud`` (Google's token endpoint, wherever this one listens), ``scope``,
and an ``iat``/``exp`` at most an hour apart around now; it answers ``{"access_token", "expires_in",
"token_type": "Bearer"}`` or ``400 {"error": "invalid_grant", ...}``.
Requests to it are counted in :attr:`FcmServer.token_requests`.

``POST /v1/projects/{project}/messages:send`` checks the bearer token (issued
here and not expired: else 401 UNAUTHENTICATED), the project (403
PERMISSION_DENIED), and the message shape (400 INVALID_ARGUMENT with a
``google.rpc.BadRequest`` field violation, as FCM does), then answers the
error scripted for that device token, if any, or
``200 {"name": "projects/<p>/messages/<n>"}``.

The service account is a throwaway RSA key made here; :meth:`FcmServer.provider_options`
hands a provider everything it needs to send to this server.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.http_provider import ProviderServer, Recorded, Refused, Reply
from tests.support.providers.delivered import DeliveredLog
from tests.support.tls import SelfSignedCert

# What Google requires as a service-account assertion's aud (google-auth sets it so).
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPES = frozenset(
    {"https://www.googleapis.com/auth/firebase.messaging", "https://www.googleapis.com/auth/cloud-platform"}
)
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
#: HTTP status -> canonical status of Google APIs
CANONICAL = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
#: FCM errorCode -> the HTTP status FCM answers it with
ERROR_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNREGISTERED": 404,
    "SENDER_ID_MISMATCH": 403,
    "QUOTA_EXCEEDED": 429,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
    "THIRD_PARTY_AUTH_ERROR": 401,
}
_MESSAGE_KEYS = frozenset(
    {
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
    }
)
_RESERVED_DATA = re.compile(r"^(from|message_type|notification|google.*|gcm.*)$")
_TTL = re.compile(r"^\d+(\.\d{1,9})?s$")
_MAX_PAYLOAD = 4096
_PROJECT_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")


@functools.cache
def throwaway_rsa_key(slot: int = 0) -> rsa.RSAPrivateKey:
    """An RSA key for test service accounts, one per ``slot`` per process (2048-bit keys are slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def service_account(
    project_id: str, token_uri: str, key: rsa.RSAPrivateKey, client_email: str = ""
) -> dict[str, str]:
    """A service-account key file's content, shaped like the ones the Google console issues."""
    email = client_email or f"reach-push@{project_id}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem(key),
        "client_email": email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }


def fcm_error(status: int, message: str, error_code: str = "", **extra: Any) -> dict[str, Any]:
    """An FCM v1 error body, with an FcmError detail when ``error_code`` is given."""
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if "field" in extra:
        details.append(
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{"field": extra["field"], "description": message}],
            }
        )
    error: dict[str, Any] = {"code": status, "message": message, "status": CANONICAL.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


@dataclasses.dataclass
class _Scripted:
    reply: Reply
    times: int | None  # None: every time


class FcmServer(ProviderServer):
    """See the module docstring. Control methods are safe from the test thread.

    ``clock`` (wall-clock seconds) decides token lifetimes and assertion times;
    a test that moves a provider's clock hands the same one here.
    """

    def __init__(
        self,
        *,
        project_id: str = "reach-test",
        token_lifetime: int = 3599,
        tls: SelfSignedCert | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(tls=tls)
        self.project_id = project_id
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.key = throwaway_rsa_key()
        self.delivered = DeliveredLog()  # the messages FCM accepted
        self._state = threading.Lock()
        self._issued: dict[str, float] = {}  # access token -> expiry (clock time)
        self._scripted: dict[str, _Scripted] = {}

    # -- control -------------------------------------------------------------------------------
    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def service_account(self, key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
        """The key file of this server's service account (or of an impostor signing with ``key``)."""
        return service_account(self.project_id, self.token_uri, key or self.key)

    def provider_options(self) -> dict[str, Any]:
        """Options of an ``fcm`` provider entry that sends here (the key's token_uri points here)."""
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "service_account_json": json.dumps(self.service_account()),
            "timeout": 2,
        }
        if self.tls is not None:
            options["tls_ca_file"] = str(self.tls.cert_file)
        return options

    @property
    def token_requests(self) -> int:
        """Requests that reached the token endpoint: granted, refused or hit by a fault."""
        with self._lock:
            return sum(1 for request in self.requests if request.path == "/token")

    @property
    def issued_tokens(self) -> list[str]:
        with self._state:
            return list(self._issued)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is refused (401) from now on."""
        with self._state:
            self._issued = dict.fromkeys(self._issued, float("-inf"))

    def fail_token(
        self,
        device_token: str,
        status: int | str,
        error_code: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        times: int | None = None,
    ) -> None:
        """Sends to ``device_token`` get FCM's error (``fail_token("t", 404, "UNREGISTERED")``,
        or just ``fail_token("t", "UNREGISTERED")``), ``times`` times or always.
        """
        if isinstance(status, str):
            error_code = status
            code = ERROR_STATUS[status]
        else:
            code = status
        message = f"scripted {error_code or CANONICAL.get(code, code)}"
        reply = Reply(code, json=fcm_error(code, message, error_code or ""), headers=dict(headers or {}))
        with self._state:
            self._scripted[device_token] = _Scripted(reply, times)

    def clear_scripts(self) -> None:
        with self._state:
            self._scripted.clear()

    # -- the API -------------------------------------------------------------------------------
    async def handle(self, request: Recorded) -> Reply:
        if request.method == "POST" and request.path == "/token":
            return self._token(request)
        match = _PROJECT_PATH.match(request.path)
        if request.method == "POST" and match:
            return self._send(request, match.group(1))
        raise Refused(Reply(404, json=fcm_error(404, "Requested entity was not found.")))

    def _token(self, request: Recorded) -> Reply:
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise Refused(_grant_error("invalid_request", "Bad Request", status=400))
        form = request.form()
        if form.get("grant_type") != GRANT_TYPE:
            raise Refused(
                _grant_error("unsupported_grant_type", "Invalid grant_type: " + form.get("grant_type", ""))
            )
        self._check_assertion(form.get("assertion", ""))
        with self._state:
            token = f"ya29.test-{len(self._issued) + 1}-{time.monotonic_ns():x}"
            self._issued[token] = self.clock() + self.token_lifetime
        return Reply(
            200, json={"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    def _check_assertion(self, assertion: str) -> None:
        """Raise ``Refused`` unless ``assertion`` is a service-account JWT Google would take."""
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.key.public_key(),
                algorithms=["RS256"],
                # Times are checked below against this server's clock, not PyJWT's.
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            raise Refused(_grant_error("invalid_grant", "Invalid JWT Signature.")) from None
        except jwt.PyJWTError:
            raise Refused(_grant_error("invalid_grant", "Invalid JWT.")) from None
        if header.get("alg") != "RS256":
            raise Refused(_grant_error("invalid_grant", "Invalid JWT: unsupported algorithm."))
        if claims.get("iss") != self.service_account()["client_email"]:
            raise Refused(_grant_error("invalid_grant", "Invalid email or User ID"))
        if claims.get("aud") != GOOGLE_TOKEN_URI:
            raise Refused(_grant_error("invalid_grant", "Invalid JWT: audience is not the token endpoint."))
        if not set(str(claims.get("scope", "")).split()) & SCOPES:
            raise Refused(_grant_error("invalid_scope", "Invalid OAuth scope or ID token audience provided."))
        iat, exp, now = claims.get("iat"), claims.get("exp"), self.clock()
        if not (
            isinstance(iat, int) and isinstance(exp, int) and iat - 300 <= now < exp and exp - iat <= 3600
        ):
            raise Refused(
                _grant_error(
                    "invalid_grant",
                    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                    "timeframe. Check your iat and exp values in the JWT claim.",
                )
            )

    def _send(self, request: Recorded, project: str) -> Reply:
        self._check_bearer(request.headers.get("authorization", ""))
        if project != self.project_id:
            message = f"Permission 'cloudmessaging.messages.create' denied on resource projects/{project}"
            raise Refused(Reply(403, json=fcm_error(403, message)))
        sent = _check_message(request)
        device = sent["token"]
        with self._state:
            scripted = self._scripted.get(device)
            if scripted is not None and scripted.times is not None:
                scripted.times -= 1
                if scripted.times <= 0:
                    del self._scripted[device]
        if scripted is not None:
            raise Refused(scripted.reply)
        number = self.delivered.add(sent)
        return Reply(200, json={"name": f"projects/{self.project_id}/messages/0:{number:016d}%reach"})

    def _check_bearer(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        with self._state:
            expiry = self._issued.get(token) if scheme.lower() == "bearer" else None
        if expiry is None or self.clock() >= expiry:
            message = (
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential."
            )
            raise Refused(Reply(401, json=fcm_error(401, message), headers={"WWW-Authenticate": "Bearer"}))


def _grant_error(error: str, description: str, status: int = 400) -> Reply:
    return Reply(status, json={"error": error, "error_description": description})


def _invalid(message: str, field: str) -> Refused:
    return Refused(Reply(400, json=fcm_error(400, message, field=field)))


def _check_message(request: Recorded) -> dict[str, Any]:
    """The ``message`` of a send request, or ``Refused`` with FCM's INVALID_ARGUMENT."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise _invalid("Invalid JSON payload received.", "message")
    try:
        body = request.json()
    except ValueError:
        raise _invalid("Invalid JSON payload received.", "message") from None
    if not isinstance(body, dict) or set(body) - {"message", "validate_only"}:
        raise _invalid("Invalid JSON payload received. Unknown name at root.", "message")
    message = body.get("message")
    if not isinstance(message, dict):
        raise _invalid("Request contains an invalid argument.", "message")
    unknown = set(message) - _MESSAGE_KEYS
    if unknown:
        raise _invalid(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}"', "message")
    targets = [key for key in ("token", "topic", "condition") if key in message]
    if targets != ["token"] or not isinstance(message["token"], str) or not message["token"]:
        raise Refused(
            Reply(400, json=fcm_error(400, "The registration token is not valid", "INVALID_ARGUMENT"))
        )
    _check_notification(message.get("notification"))
    _check_data(message.get("data"))
    _check_android(message.get("android"))
    size = len(json.dumps({k: message.get(k) for k in ("notification", "data")}).encode())
    if size > _MAX_PAYLOAD:
        raise _invalid("Android message is too big", "message")
    return message


def _check_notification(notification: Any) -> None:
    if notification is None:
        return
    if not isinstance(notification, dict) or set(notification) - {"title", "body", "image"}:
        raise _invalid("Invalid JSON payload received. Unknown name in notification.", "message.notification")
    for key, value in notification.items():
        if not isinstance(value, str):
            raise _invalid(
                f"Invalid value at 'message.notification.{key}' (TYPE_STRING)", "message.notification"
            )


def _check_data(data: Any) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise _invalid("Invalid value at 'message.data'", "message.data")
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            field = f"message.data[{index}].value"
            raise _invalid(f"Invalid value at '{field}' (TYPE_STRING), {value}", field)
        if _RESERVED_DATA.match(key):
            raise _invalid(f"Invalid data payload key: {key}", f"message.data[{index}].key")


def _check_android(android: Any) -> None:
    if android is None:
        return
    if not isinstance(android, dict):
        raise _invalid("Invalid value at 'message.android'", "message.android")
    priority = android.get("priority")
    if priority is not None and str(priority).upper() not in ("NORMAL", "HIGH"):
        raise _invalid(
            f"Invalid value at 'message.android.priority' (TYPE_ENUM), \"{priority}\"",
            "message.android.priority",
        )
    ttl = android.get("ttl")
    if ttl is not None and (not isinstance(ttl, str) or not _TTL.match(ttl) or float(ttl[:-1]) > 2_419_200):
        raise _invalid(
            "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
            "message.android.ttl",
        )
