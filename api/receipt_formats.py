"""Delivery-receipt callbacks as each provider sends them: authenticate, parse, reply.

One class per provider type, chosen by the provider entry's ``type``. Each
checks the callback's authenticity first (raising :class:`Rejected` 403),
then parses it into :class:`models.receipts.Receipt` values (raising
:class:`Rejected` 400 for a malformed body), and says what to answer.

* ``twilio_sms``: a form POST (``MessageSid``, ``MessageStatus``, ``ErrorCode``)
  signed in ``X-Twilio-Signature`` = base64(HMAC(key, URL + every POST parameter
  name and value, sorted by name)): HMAC-SHA1 under the auth token, or, when a
  Twilio Webhook Setting signs with a SharedKey, the algorithm and key that
  ``X-Twilio-Webhooks-Signature-Settings: key=<SharedKey id>,algorithm=HMAC_SHA256``
  names (:func:`twilio_scheme`).
* ``aliyun_sms``: SmsReport HTTP batch push, a JSON array of ``{biz_id, out_id,
  success, err_code, err_msg, phone_number, ...}``. Unsigned: the callback URL
  carries ``?token=<receipt_token>``.
* ``tencent_sms``: a JSON array of ``{sid, report_status: SUCCESS|FAIL, errmsg,
  description, mobile, ...}``. Unsigned: ``?token=<receipt_token>`` likewise.
* ``webhook``: reach's own signed callback, a JSON object or array of
  ``{message_id, status: delivered|failed, error_code?, error?, ts?}`` with
  ``X-Reach-Timestamp`` / ``X-Reach-Signature`` as :mod:`channels.webhook` signs.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import hashlib
import hmac
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import orjson

from api.receipt_config import ReceiptEndpoint
from channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from models.events import EventError, parse_ts
from models.receipts import Outcome, Receipt, ReceiptResult, ReceiptStatus, digits

Form = dict[str, list[str]]  # a form body: every name's values, as sent
Digest = Callable[..., Any]  # a hashlib constructor, as hmac.new takes it

MAX_RECEIPTS = 1000  # per callback
MAX_ID_LENGTH = 256
TOKEN_PARAMETER = "token"


class Rejected(Exception):
    """The callback is refused: ``status`` 400/403/413, ``reason`` a metric label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclasses.dataclass(frozen=True, slots=True)
class Callback:
    """One receipt request as received."""

    url: str  # the full URL of the request, query included
    headers: Mapping[str, str]  # case-insensitive (Starlette's Headers)
    query: Mapping[str, str]
    body: bytes
    now_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    body: bytes
    media_type: str
    status: int = 200


class ReceiptFormat(abc.ABC):
    type_name: ClassVar[str]

    def receipts(self, endpoint: ReceiptEndpoint, callback: Callback) -> list[Receipt]:
        """Authenticate, then parse. Raises :class:`Rejected`."""
        return self.parse(self.authenticate(endpoint, callback))

    @abc.abstractmethod
    def authenticate(self, endpoint: ReceiptEndpoint, callback: Callback) -> Any:
        """Raise ``Rejected(403)`` unless the callback is authentic; return what ``parse`` reads."""

    @abc.abstractmethod
    def parse(self, data: Any) -> list[Receipt]:
        """The receipts in the authenticated callback; ``Rejected(400)`` when malformed."""

    @abc.abstractmethod
    def reply(self, results: Sequence[ReceiptResult]) -> Reply:
        """What the provider expects back on success."""


# --- Twilio -----------------------------------------------------------------------------------

TWILIO_SIGNATURE = "x-twilio-signature"
TWILIO_SIGNATURE_SETTINGS = "x-twilio-webhooks-signature-settings"
TWILIO_DEFAULT_ALGORITHM = "HMAC_SHA1"
TWILIO_DIGESTS: Mapping[str, Digest] = MappingProxyType(
    {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
)
TWILIO_DELIVERED = frozenset({"delivered", "read"})
TWILIO_FAILED = frozenset({"undelivered", "failed", "canceled"})
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@dataclasses.dataclass(frozen=True, slots=True)
class _TwilioCallback:
    params: dict[str, list[str]]
    message_id: str  # from the URL's ?message_id=, when status_callback_url carries it


class TwilioFormat(ReceiptFormat):
    type_name = "twilio_sms"

    def authenticate(self, endpoint: ReceiptEndpoint, callback: Callback) -> _TwilioCallback:
        params = twilio_verified(endpoint, callback, endpoint.public_url)
        return _TwilioCallback(params, callback.query.get("message_id", ""))

    def parse(self, data: _TwilioCallback) -> list[Receipt]:
        sid = _single(data.params, "MessageSid")
        word = _single(data.params, "MessageStatus") or _single(data.params, "SmsStatus")
        if not sid or not word:
            raise Rejected(400, "bad_body", "a Twilio status callback needs MessageSid and MessageStatus")
        if len(sid) > MAX_ID_LENGTH or len(data.message_id) > 64:
            raise Rejected(400, "bad_body", "MessageSid or message_id is too long")
        word = word.lower()
        status = (
            ReceiptStatus.DELIVERED
            if word in TWILIO_DELIVERED
            else ReceiptStatus.FAILED
            if word in TWILIO_FAILED
            else ReceiptStatus.PROGRESS  # queued, sending, sent, accepted, ... and any new word
        )
        code = _single(data.params, "ErrorCode") if status is ReceiptStatus.FAILED else ""
        error = _twilio_error(word, code)
        return [Receipt(status, word, sid, data.message_id, error_code=code, error=error)]

    def reply(self, results: Sequence[ReceiptResult]) -> Reply:
        return Reply(EMPTY_TWIML, "text/xml")


def twilio_verified(endpoint: ReceiptEndpoint, callback: Callback, public_url: str | None) -> Form:
    """The POST parameters of a request Twilio signed, under either scheme; raises
    ``Rejected(403)`` otherwise. ``public_url`` is the URL Twilio calls up to the path,
    when a proxy changes what the API sees."""
    scheme = twilio_scheme(endpoint, callback.headers)
    params = _form(callback.body)
    signature = callback.headers.get(TWILIO_SIGNATURE, "").encode()
    url = _signed_url(public_url, callback.url)
    candidates = _with_and_without_port(url)
    expected = [twilio_signature(scheme.secret, u, params, scheme.digest) for u in candidates]
    # compare_digest against every candidate URL: which one matched may show, the key never does
    if not signature or not any(hmac.compare_digest(e.encode(), signature) for e in expected):
        raise Rejected(403, "bad_signature", "X-Twilio-Signature does not match")
    return params


@dataclasses.dataclass(frozen=True, slots=True)
class TwilioScheme:
    """How a Twilio request is signed: the key and the HMAC's hash."""

    secret: str = dataclasses.field(repr=False)
    digest: Digest


def twilio_scheme(endpoint: ReceiptEndpoint, headers: Mapping[str, str]) -> TwilioScheme:
    """Without ``X-Twilio-Webhooks-Signature-Settings``, HMAC-SHA1 under the auth token.
    With it (a Webhook Rule matched the URL), the algorithm it names under the secret of
    the SharedKey it names (option ``webhook_shared_keys``), never the auth token.
    Raises ``Rejected(403)`` for an algorithm other than HMAC_SHA1 / HMAC_SHA256 or a key
    not configured."""
    raw = headers.get(TWILIO_SIGNATURE_SETTINGS, "").strip()
    if not raw:
        return TwilioScheme(configured_secret(endpoint), hashlib.sha1)
    settings = _signature_settings(raw)
    algorithm = settings.get("algorithm", TWILIO_DEFAULT_ALGORITHM).upper()
    digest = TWILIO_DIGESTS.get(algorithm)
    if digest is None:
        raise Rejected(403, "bad_algorithm", f"signature algorithm {algorithm[:32]!r} is not supported")
    if not endpoint.shared_keys:
        raise Rejected(403, "not_configured", f"provider {endpoint.name!r} has no webhook_shared_keys")
    key = endpoint.shared_keys.get(settings.get("key", ""))
    if key is None:
        raise Rejected(403, "unknown_key", "the SharedKey the request names is not configured")
    return TwilioScheme(key.get_secret_value(), digest)


def _signature_settings(raw: str) -> dict[str, str]:
    """``key=<id>,algorithm=<name>`` as a dict; parts without ``=`` are ignored."""
    parts = (part.partition("=") for part in raw.split(","))
    return {name.strip().lower(): value.strip() for name, sep, value in parts if sep}


def _signed_url(public_url: str | None, request_url: str) -> str:
    """The URL Twilio signed: the configured public URL (behind a proxy) with the
    request's query string, else the request's own URL."""
    if not public_url:
        return request_url
    query = request_url.partition("?")[2]  # not urlsplit: it refuses a malformed Host
    return f"{public_url}?{query}" if query else public_url


def twilio_signature(
    key: str, url: str, params: Mapping[str, Sequence[str]], digest: Digest = hashlib.sha1
) -> str:
    """X-Twilio-Signature: base64 HMAC (SHA-1 unless told) of the URL followed by each
    parameter name and value, names sorted, a repeated name's values sorted."""
    data = url + "".join(name + value for name in sorted(params) for value in sorted(params[name]))
    mac = hmac.new(key.encode(), data.encode(), digest)
    return base64.b64encode(mac.digest()).decode()


def _with_and_without_port(url: str) -> list[str]:
    """Twilio signs the URL as configured: with or without the default port, so try both.
    A URL whose host or port does not parse (the Host header is the client's) is tried as is."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return [url]
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    bare = parts._replace(netloc=f"{prefix}{host}").geturl()
    ported = parts._replace(netloc=f"{prefix}{host}:{port or default}").geturl()
    return [url, bare, ported]


def _form(body: bytes) -> Form:
    try:
        return urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise Rejected(400, "bad_body", "the form body is not UTF-8") from None


def _single(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name) or [""]
    return values[0].strip()


def _twilio_error(word: str, code: str) -> str:
    return f"twilio {word}" + (f" (error {code})" if code else "") if word in TWILIO_FAILED else ""


# --- Aliyun and Tencent: token in the URL, JSON array body ------------------------------------


class _TokenFormat(ReceiptFormat):
    """Providers that do not sign callbacks: the URL carries ``?token=<receipt_token>``."""

    def authenticate(self, endpoint: ReceiptEndpoint, callback: Callback) -> Any:
        secret = configured_secret(endpoint)
        token = callback.query.get(TOKEN_PARAMETER, "")
        if not hmac.compare_digest(token.encode(), secret.encode()):
            raise Rejected(
                403, "bad_token", f"the callback URL's {TOKEN_PARAMETER!r} parameter is wrong or missing"
            )
        items = _json(callback.body)
        return items if isinstance(items, list) else [items]

    def parse(self, data: list[Any]) -> list[Receipt]:
        _check_count(data)
        return [self.item(index, item) for index, item in enumerate(data)]

    def item(self, index: int, item: Any) -> Receipt:
        if not isinstance(item, dict):
            raise Rejected(400, "bad_body", f"item {index}: expected a JSON object")
        return self.receipt(_Item(index, item))

    @abc.abstractmethod
    def receipt(self, item: _Item) -> Receipt: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Item:
    """One report of a JSON batch, with errors that name its index."""

    index: int
    data: dict[str, Any]

    def text(self, key: str, *, required: bool = False, limit: int = MAX_ID_LENGTH) -> str:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise Rejected(400, "bad_body", f"item {self.index}: {key!r} is required")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise Rejected(400, "bad_body", f"item {self.index}: {key!r} must be a string")
        text = str(value)
        if len(text) > limit:
            raise Rejected(400, "bad_body", f"item {self.index}: {key!r} is longer than {limit}")
        return text

    def choice(self, key: str, parse: Callable[[Any], Any], expected: str) -> Any:
        result = parse(self.data.get(key))
        if result is None:
            raise Rejected(400, "bad_body", f"item {self.index}: {key!r} must be {expected}")
        return result


class AliyunFormat(_TokenFormat):
    type_name = "aliyun_sms"

    def receipt(self, item: _Item) -> Receipt:
        success = item.choice("success", _boolean, "true or false")
        biz_id, out_id = item.text("biz_id"), item.text("out_id", limit=64)
        if not biz_id and not out_id:
            raise Rejected(400, "bad_body", f"item {item.index}: 'biz_id' or 'out_id' is required")
        code = item.text("err_code", limit=64)
        return Receipt(
            ReceiptStatus.DELIVERED if success else ReceiptStatus.FAILED,
            code or ("DELIVERED" if success else "FAILED"),
            provider_message_id=biz_id,
            message_id=out_id,
            error_code="" if success else code,
            error="" if success else item.text("err_msg", limit=1000),
            recipient=digits(item.text("phone_number", limit=64)),
        )

    def reply(self, results: Sequence[ReceiptResult]) -> Reply:
        return Reply(orjson.dumps({"code": 0, "msg": "成功"}), "application/json")


class TencentFormat(_TokenFormat):
    type_name = "tencent_sms"

    def receipt(self, item: _Item) -> Receipt:
        success = item.choice("report_status", _tencent_status, "'SUCCESS' or 'FAIL'")
        code = item.text("errmsg", limit=64)
        return Receipt(
            ReceiptStatus.DELIVERED if success else ReceiptStatus.FAILED,
            code or ("SUCCESS" if success else "FAIL"),
            provider_message_id=item.text("sid", required=True),
            error_code="" if success else code,
            error="" if success else item.text("description", limit=1000),
        )

    def reply(self, results: Sequence[ReceiptResult]) -> Reply:
        return Reply(orjson.dumps({"result": 0, "errmsg": "OK"}), "application/json")


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _tencent_status(value: Any) -> bool | None:
    return {"SUCCESS": True, "FAIL": False}.get(value) if isinstance(value, str) else None


# --- reach's own signed webhook callback ------------------------------------------------------

WEBHOOK_STATUSES = {"delivered": ReceiptStatus.DELIVERED, "failed": ReceiptStatus.FAILED}


class WebhookFormat(ReceiptFormat):
    type_name = "webhook"

    def authenticate(self, endpoint: ReceiptEndpoint, callback: Callback) -> list[Any]:
        secret = configured_secret(endpoint)
        timestamp = callback.headers.get(TIMESTAMP_HEADER, "")
        header = callback.headers.get(SIGNATURE_HEADER, "")
        if not verify_signature(secret, timestamp, callback.body, header, callback.now_ms / 1000):
            raise Rejected(
                403, "bad_signature", f"{SIGNATURE_HEADER} does not match, or the timestamp is stale"
            )
        items = _json(callback.body)
        return items if isinstance(items, list) else [items]

    def parse(self, data: list[Any]) -> list[Receipt]:
        _check_count(data)
        return [self.receipt(index, item) for index, item in enumerate(data)]

    def receipt(self, index: int, data: Any) -> Receipt:
        if not isinstance(data, dict):
            raise Rejected(400, "bad_body", f"item {index}: expected a JSON object")
        item = _Item(index, data)
        status = item.choice("status", WEBHOOK_STATUSES.get, "'delivered' or 'failed'")
        return Receipt(
            status,
            status.value,
            message_id=item.text("message_id", required=True, limit=64),
            error_code=item.text("error_code", limit=64),
            error=item.text("error", limit=1000),
            reported_at=_reported_at(item),
        )

    def reply(self, results: Sequence[ReceiptResult]) -> Reply:
        counts = {outcome.value: 0 for outcome in Outcome}
        for result in results:
            counts[result.outcome.value] += 1
        return Reply(orjson.dumps({"received": len(results), **counts}), "application/json")


def _reported_at(item: _Item) -> int:
    if item.data.get("ts") is None:
        return 0
    try:
        return parse_ts(item.data["ts"])
    except EventError as exc:
        raise Rejected(400, "bad_body", f"item {item.index}: {exc.detail}") from None


# --- shared -----------------------------------------------------------------------------------


def configured_secret(endpoint: ReceiptEndpoint) -> str:
    """The entry's receipt secret; ``Rejected(403, "not_configured")`` when it has none."""
    if endpoint.secret is None:
        raise Rejected(403, "not_configured", f"provider {endpoint.name!r} has no receipt secret configured")
    return endpoint.secret.get_secret_value()


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(400, "bad_body", f"the body is not JSON: {exc}") from None


def _check_count(items: Sequence[Any]) -> None:
    if len(items) > MAX_RECEIPTS:
        raise Rejected(413, "too_large", f"at most {MAX_RECEIPTS} receipts per callback")


FORMATS: Mapping[str, ReceiptFormat] = {
    fmt.type_name: fmt for fmt in (TwilioFormat(), AliyunFormat(), TencentFormat(), WebhookFormat())
}
