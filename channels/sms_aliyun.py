"""SMS through Aliyun (Alibaba Cloud) Dysmsapi, RPC API version 2017-05-25.

Aliyun sends approved templates, not free text: each delivery names a template
code (option ``template_code``, or the entry for the reach template in
``templates``) and its ``TemplateParam`` is the JSON object of the message's
``variables`` that are plain scalars (strings, numbers, booleans; numbers and
booleans are sent as strings, since Aliyun accepts only string values). The
rendered text is not sent. Phone numbers are sent without a leading ``+``
(``+8613800000001`` becomes ``8613800000001``, a form Aliyun accepts for the
mainland and requires for other countries).

Deliveries of one batch that share a template go out in ``SendBatchSms`` calls
of up to ``batch_size`` numbers (Aliyun's limit is 100), a number at most once
per call (reports of a batch are matched by BizId plus number); a lone delivery goes
out with ``SendSms`` and ``OutId`` = the reach message id. Aliyun answers a
batch with one code: when that code is about a single message (a bad number,
a per-number cap, bad parameters) nothing of the batch was sent, and the batch
is resent one ``SendSms`` per delivery so that each gets its own outcome.

Every request is signed with Aliyun's RPC signature (HMAC-SHA1, version 1.0):
common parameters and the signature travel in the query, the action's
parameters in a form-encoded POST body, and the signature covers both.

====================================================  ================================
Aliyun answer (``Code``)                              outcome
====================================================  ================================
``OK``                                                SENT, provider_message_id = BizId
no ``phone`` in the contact                           PERMANENT ``no_address``
phone not digits after removing ``+``/separators      INVALID_ADDRESS ``bad_address``
no template code for the message's template           PERMANENT ``no_template``
``isv.MOBILE_NUMBER_ILLEGAL``                         INVALID_ADDRESS
``isv.BUSINESS_LIMIT_CONTROL`` (per-number cap),      RETRY after ``limit_retry_after``
``isv.DAY_LIMIT_CONTROL``, ``isv.MONTH_LIMIT_CONTROL``  (default 3600 s): never hot-retry
``isv.AMOUNT_NOT_ENOUGH``, ``isv.OUT_OF_SERVICE``     RETRY after ``limit_retry_after``,
(account out of money)                                and a log event
``Throttling*``, ``isp.*`` (``isp.SYSTEM_ERROR``),    RETRY (``Retry-After`` if given)
``ServiceUnavailable``, ``InternalError``, HTTP 5xx
``InvalidAccessKeyId*``, ``SignatureDoesNotMatch``,   PERMANENT, detail starts with
``InvalidTimeStamp.*``, ``isp.RAM_PERMISSION_DENY``,  ``configuration:``, and a log
``isv.SMS_SIGNATURE_ILLEGAL``, ``isv.SMS_TEMPLATE_    event (the entry must be fixed)
ILLEGAL``, account/product not enabled, ...
any other code (``isv.TEMPLATE_MISSING_PARAMETERS``,  PERMANENT, code = Aliyun's code
``isv.INVALID_JSON_PARAM``, content rejected, ...)
transport failures                                    as :mod:`channels.http`
====================================================  ================================

``detail`` is Aliyun's code and message with digit runs (phone numbers) and the
string-to-sign Aliyun echoes on a signature mismatch removed; it never holds
the AccessKey secret.

Delivery reports (SmsReport) carry ``biz_id``, ``out_id`` and ``phone_number``:
for a ``SendSms`` message ``out_id`` is the reach message id; a batch shares
one BizId, so its reports are matched by BizId plus phone number. The option
``receipt_token`` is accepted and not used here: the receipts API
(:mod:`api.receipt_config`) reads it from the same entry.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import structlog

from channels.base import (
    Delivery,
    Outcome,
    OutcomeKind,
    ProviderConfig,
    ProviderContext,
    StartHook,
    no_start_hook,
)
from channels.http import (
    HttpProvider,
    contact_field,
    json_body,
    redact,
    retry_after_seconds,
    send_chunked,
    status_outcome,
)
from channels.options import OptionReader

log = structlog.get_logger(__name__)

API_VERSION = "2017-05-25"
MAX_BATCH = 100  # SendBatchSms: at most 100 numbers per call

_OPTION_KEYS = frozenset(
    {
        "access_key_id", "access_key_secret", "sign_name", "template_code", "templates",
        "region_id", "batch_size", "limit_retry_after",
        "receipt_token",  # read by the receipts API (api/receipt_config.py), not by the sender
    }
)  # fmt: skip

#: the number is unusable
_INVALID_ADDRESS = frozenset({"isv.MOBILE_NUMBER_ILLEGAL"})
#: caps that lift after minutes to a day: wait long instead of hammering the number
_DEFERRED = frozenset({"isv.BUSINESS_LIMIT_CONTROL", "isv.DAY_LIMIT_CONTROL", "isv.MONTH_LIMIT_CONTROL"})
#: the account cannot pay: it will work again once topped up
_ACCOUNT = frozenset({"isv.AMOUNT_NOT_ENOUGH", "isv.OUT_OF_SERVICE"})
#: the provider entry is wrong (keys, permissions, sign name, template): fix the configuration
_CONFIG = frozenset(
    {
        "InvalidAccessKeyId", "InvalidAccessKeyId.NotFound", "InvalidAccessKeyId.Inactive",
        "SignatureDoesNotMatch", "IncompleteSignature", "InvalidTimeStamp.Expired",
        "InvalidTimeStamp.Format", "InvalidVersion", "InvalidAction.NotFound", "Forbidden.RAM",
        "isp.RAM_PERMISSION_DENY", "isv.PRODUCT_UN_SUBSCRIPT", "isv.PRODUCT_UNSUBSCRIBE",
        "isv.ACCOUNT_NOT_EXISTS", "isv.ACCOUNT_ABNORMAL", "isv.SMS_TEMPLATE_ILLEGAL",
        "isv.SMS_SIGNATURE_ILLEGAL", "isv.SMS_SIGN_ILLEGAL", "isv.SIGN_STATE_ILLEGAL",
        "isv.SMS_SIGNATURE_SCENE_ILLEGAL", "isv.DENY_IP_RANGE",
    }
)  # fmt: skip
_RETRYABLE = frozenset({"ServiceUnavailable", "InternalError", "SignatureNonceUsed"})
#: a whole-batch answer that is really about one of its messages: resend one by one
_PER_MESSAGE = frozenset(
    {
        "isv.MOBILE_NUMBER_ILLEGAL", "isv.BUSINESS_LIMIT_CONTROL", "isv.TEMPLATE_MISSING_PARAMETERS",
        "isv.INVALID_JSON_PARAM", "isv.BLACK_KEY_CONTROL_LIMIT", "isv.PARAM_LENGTH_LIMIT",
        "isv.PARAM_NOT_SUPPORT_URL", "isv.TEMPLATE_PARAMS_ILLEGAL", "isv.SMS_CONTENT_ILLEGAL",
        "isv.DOMESTIC_NUMBER_NOT_SUPPORTED", "isv.INVALID_PARAMETERS",
    }
)  # fmt: skip

_PHONE = re.compile(r"^[0-9]{5,20}$")
_PHONE_SEPARATORS = re.compile(r"[\s\-().]")
_DIGIT_RUN = re.compile(r"\+?\d[\d\s-]{4,}\d")
_ECHOED_STRING_TO_SIGN = re.compile(r"server string to sign is:.*", re.IGNORECASE | re.DOTALL)


# --- the published RPC signature ------------------------------------------------------------------


def percent_encode(value: str) -> str:
    """Aliyun's encoding: UTF-8, only ``A-Z a-z 0-9 - _ . ~`` literal, space as ``%20``."""
    return quote(value, safe="")


def canonical_query(params: Mapping[str, str]) -> str:
    """Parameters sorted by name, each ``encode(name)=encode(value)``, joined by ``&``."""
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def rpc_signature(method: str, params: Mapping[str, str], access_key_secret: str) -> str:
    """``Base64(HMAC-SHA1(AccessKeySecret + "&", StringToSign))``; ``params`` exclude Signature."""
    key = f"{access_key_secret}&".encode()
    digest = hmac.new(key, string_to_sign(method, params).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def utc_timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# --- options --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AliyunOptions:
    access_key_id: str
    access_key_secret: str = dataclasses.field(repr=False)
    sign_name: str
    template_code: str | None
    templates: Mapping[str, str]
    region_id: str
    batch_size: int
    limit_retry_after: float

    @classmethod
    def parse(cls, reader: OptionReader) -> AliyunOptions:
        parsed = cls(
            access_key_id=reader.required("access_key_id"),
            access_key_secret=reader.required("access_key_secret"),
            sign_name=reader.required("sign_name"),
            template_code=reader.text("template_code"),
            templates=_templates(reader),
            region_id=reader.text("region_id", default="cn-hangzhou") or "cn-hangzhou",
            batch_size=reader.integer("batch_size", MAX_BATCH, 1, MAX_BATCH),
            limit_retry_after=reader.number("limit_retry_after", 3600.0),
        )
        if parsed.template_code is None and not parsed.templates:
            raise reader.error("template_code", "is required unless 'templates' maps every template")
        return parsed

    def template_for(self, template: str) -> str | None:
        return self.templates.get(template, self.template_code)


def _templates(reader: OptionReader) -> Mapping[str, str]:
    value = reader.options.get("templates")
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
    ):
        raise reader.error("templates", "must map reach template names to Aliyun template codes")
    return dict(value)


# --- the provider ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Sms:
    """One delivery, ready for the wire."""

    index: int  # position in the batch handed to send_batch
    message_id: str
    phone: str
    template_code: str
    params: str  # TemplateParam JSON, "" when the message has no scalar variables


class AliyunSmsProvider(HttpProvider[AliyunOptions]):
    """Aliyun Dysmsapi SendSms / SendBatchSms; see the module docstring for outcomes."""

    type_name: ClassVar[str] = "aliyun_sms"
    default_base_url: ClassVar[str] = "https://dysmsapi.aliyuncs.com"
    option_keys: ClassVar[frozenset[str]] = _OPTION_KEYS
    secret_options: ClassVar[frozenset[str]] = frozenset({"access_key_secret", "receipt_token"})
    address_fields: ClassVar[tuple[str, ...]] = ("phone",)
    max_content_bytes: ClassVar[int] = 2048  # a long SMS: a few hundred characters at most

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        #: seconds since the epoch, for Timestamp; tests skew it to provoke InvalidTimeStamp
        self.clock: Callable[[], float] = time.time

    def parse_options(self, reader: OptionReader) -> AliyunOptions:
        return AliyunOptions.parse(reader)

    async def send_batch(
        self, deliveries: Sequence[Delivery], started: StartHook = no_start_hook
    ) -> list[Outcome]:
        """One outcome per delivery, in order; never raises for a single message."""
        size = self.options.batch_size
        return await send_chunked(
            deliveries, self._prepare, lambda ready: _chunks(ready, size), self._send_chunk, started
        )

    async def send_one(self, delivery: Delivery) -> Outcome:
        [outcome] = await self.send_batch([delivery])
        return outcome

    def payload_text(self, delivery: Delivery) -> Sequence[str]:
        """The template parameters: the text of the SMS is Aliyun's template filled with them."""
        return [_as_text(v) for v in delivery.message.variables.values() if _is_scalar(v)]

    # -- preparing -----------------------------------------------------------------------------

    def _prepare(self, index: int, delivery: Delivery) -> _Sms | Outcome:
        raw = contact_field(delivery, "phone")
        if raw is None:
            return Outcome.permanent("no_address", "contact has no phone number")
        phone = _PHONE_SEPARATORS.sub("", raw).removeprefix("+")
        if not _PHONE.match(phone):
            return Outcome.invalid_address("bad_address", "contact phone is not a phone number")
        message = delivery.message
        code = self.options.template_for(message.template)
        if code is None:
            detail = f"no Aliyun template code for {message.template!r}: set 'templates' or 'template_code'"
            return Outcome.permanent("no_template", detail)
        return _Sms(index, message.message_id, phone, code, template_param(message.variables))

    # -- sending -------------------------------------------------------------------------------

    async def _send_chunk(self, chunk: Sequence[_Sms]) -> list[Outcome]:
        if len(chunk) == 1:
            return [await self._send_single(chunk[0])]
        outcome = await self._call("SendBatchSms", self._batch_params(chunk))
        if outcome.kind is not OutcomeKind.SENT and outcome.code in _PER_MESSAGE:
            # Aliyun refused the whole call for one message's sake; nothing was sent.
            return list(await asyncio.gather(*map(self._send_single, chunk)))
        return [outcome] * len(chunk)

    async def _send_single(self, sms: _Sms) -> Outcome:
        params = {
            "PhoneNumbers": sms.phone,
            "SignName": self.options.sign_name,
            "TemplateCode": sms.template_code,
            "OutId": sms.message_id,
        }
        if sms.params:
            params["TemplateParam"] = sms.params
        return await self._call("SendSms", params)

    def _batch_params(self, chunk: Sequence[_Sms]) -> dict[str, str]:
        params = {
            "PhoneNumberJson": _json([sms.phone for sms in chunk]),
            "SignNameJson": _json([self.options.sign_name] * len(chunk)),
            "TemplateCode": chunk[0].template_code,
        }
        if any(sms.params for sms in chunk):
            params["TemplateParamJson"] = "[" + ",".join(sms.params or "{}" for sms in chunk) + "]"
        return params

    async def _call(self, action: str, params: Mapping[str, str]) -> Outcome:
        assert self._slots is not None
        async with self._slots:
            return await self.guard(self._post(action, params))

    async def _post(self, action: str, params: Mapping[str, str]) -> Outcome:
        query = self._signed_query(action, params)
        response = await self.client.post(
            f"/?{query}",
            content=canonical_query(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        return self._outcome(response)

    def _signed_query(self, action: str, params: Mapping[str, str]) -> str:
        """The common parameters plus ``Signature``, which covers them and the body's ``params``."""
        options = self.options
        common = {
            "AccessKeyId": options.access_key_id,
            "Action": action,
            "Format": "JSON",
            "RegionId": options.region_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": utc_timestamp(self.clock()),
            "Version": API_VERSION,
        }
        signature = rpc_signature("POST", {**common, **params}, options.access_key_secret)
        return canonical_query({**common, "Signature": signature})

    # -- classifying ---------------------------------------------------------------------------

    def _outcome(self, response: httpx.Response) -> Outcome:
        body = json_body(response)
        code = body.get("Code") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code:
            detail = f"HTTP {response.status_code} without an Aliyun Code"
            return status_outcome(response, str(response.status_code), detail)
        assert isinstance(body, dict)
        if code == "OK":
            return Outcome.sent(str(body.get("BizId") or ""))
        return self.classify(code, str(body.get("Message") or ""), response)

    def classify(self, code: str, message: str, response: httpx.Response) -> Outcome:
        """The outcome of an Aliyun error ``code``; see the table in the module docstring."""
        detail = f"{code}: {self._scrub(message)}"
        if code in _INVALID_ADDRESS:
            return Outcome.invalid_address(code, detail)
        if code in _DEFERRED:
            return Outcome.retry(code, detail, self.options.limit_retry_after)
        if code in _ACCOUNT:
            log.warning("sms_account_suspended", provider=self.name, provider_type=self.type_name, code=code)
            return Outcome.retry(code, detail, self.options.limit_retry_after)
        if code in _CONFIG:
            log.error(
                "sms_provider_misconfigured", provider=self.name, provider_type=self.type_name, code=code
            )
            return Outcome.permanent(code, f"configuration: {detail}")
        if code in _RETRYABLE or code.startswith(("Throttling", "isp.")) or response.status_code >= 500:
            return Outcome.retry(code, detail, retry_after_seconds(response.headers))
        return Outcome.permanent(code, detail)

    def _scrub(self, message: str) -> str:
        """Aliyun's message without echoed request data (phone numbers, string-to-sign) or keys."""
        options = self.options
        text = _ECHOED_STRING_TO_SIGN.sub("(string to sign omitted)", message)
        text = redact(text, options.access_key_secret, options.access_key_id)
        return _DIGIT_RUN.sub("<number>", " ".join(text.split()))


def template_param(variables: Mapping[str, Any]) -> str:
    """The ``TemplateParam`` JSON: scalar variables only, every value a string ("" if none)."""
    scalars = {name: _as_text(value) for name, value in variables.items() if _is_scalar(value)}
    return _json(scalars) if scalars else ""


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _as_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _chunks(items: Sequence[_Sms], size: int) -> list[list[_Sms]]:
    """Calls: one template code, at most ``size`` numbers, no number twice.

    A ``SendBatchSms`` gives all its numbers one BizId, and delivery reports of a batch
    are told apart by BizId plus number only, so two messages to one number must never
    share a call: the second goes in the next call of its template.
    """
    chunks: list[list[_Sms]] = []
    open_chunks: dict[str, tuple[list[_Sms], set[str]]] = {}
    for sms in items:
        current = open_chunks.get(sms.template_code)
        if current is None or len(current[0]) >= size or sms.phone in current[1]:
            current = ([], set())
            open_chunks[sms.template_code] = current
            chunks.append(current[0])
        current[0].append(sms)
        current[1].add(sms.phone)
    return chunks


__all__ = [
    "API_VERSION",
    "MAX_BATCH",
    "AliyunOptions",
    "AliyunSmsProvider",
    "canonical_query",
    "percent_encode",
    "rpc_signature",
    "string_to_sign",
    "template_param",
]
