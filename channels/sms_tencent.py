"""SMS through Tencent Cloud SMS, API version 2021-01-11, action ``SendSms``.

Tencent sends approved templates whose parameters are positional
(``{1}``, ``{2}``...): each template is configured with the ordered names of
the message ``variables`` that fill it, either ``template_id`` plus
``template_params`` for every message, or per reach template in ``templates``::

    templates:
      welcome_sms: {id: "1110", params: [first_name]}
      code_sms: "1111"          # a template without parameters

The rendered text is not sent. Phone numbers go out as the contact holds them
(E.164, ``+8613800000001``, is what Tencent expects).

Deliveries that share a template and identical parameter values go out in one
request of up to ``batch_size`` numbers (Tencent's limit is 200); Tencent
answers with one ``SendStatusSet`` entry per number, matched back by number.
A request for a single number carries ``SessionContext`` = the reach message
id. When Tencent refuses a multi-number request as a whole with a code that is
about one number, nothing was sent and each number is resent on its own (not
for the app-wide daily caps or marketing hours, which every number would meet).

Requests are signed with TC3-HMAC-SHA256: a canonical request over method,
``/``, the ``content-type``, ``host`` and ``x-tc-action`` headers and the
SHA-256 of the JSON body; a credential scope ``<UTC date>/sms/tc3_request``;
keys derived from ``"TC3" + SecretKey`` through date, service and
``tc3_request``; the ``Authorization`` header; ``X-TC-Action``,
``X-TC-Version``, ``X-TC-Timestamp`` and ``X-TC-Region`` headers.

=========================================================  ==============================
Tencent answer                                             outcome
=========================================================  ==============================
``SendStatusSet[].Code`` = ``Ok``                          SENT, provider_message_id =
                                                           SerialNo
no ``phone`` in the contact / not a phone number           PERMANENT ``no_address`` /
                                                           INVALID_ADDRESS ``bad_address``
no template, or a template variable missing or not a       PERMANENT ``no_template`` /
scalar                                                     ``missing_variable``
``FailedOperation.PhoneNumberInBlacklist`` (unsubscribed), INVALID_ADDRESS
``InvalidParameterValue.IncorrectPhoneNumber``
``LimitExceeded.PhoneNumber*Limit``, ``DeliveryFrequency``  RETRY after ``limit_retry_after``
``Limit``, ``AppDailyLimit``, ``DailyLimit``, marketing    (default 3600 s; 60 s for the
hours                                                      thirty-second cap)
``FailedOperation.InsufficientBalanceInSmsPackage``,       RETRY after ``limit_retry_after``
``UnauthorizedOperation.SerivceSuspendDueToArrears``       and a log event
``InternalError.Timeout``, ``InternalError.SendAndRecv``   UNKNOWN: Tencent timed out passing
``Fail``                                                   it on, it may have been sent
``RequestLimitExceeded*``, other ``InternalError*``,       RETRY (``Retry-After`` if given)
HTTP 5xx
``AuthFailure.*``, app id, IP allow-list, unapproved       PERMANENT, detail starts with
sign name or template, ...                                 ``configuration:``, and a log
                                                           event
any other code                                             PERMANENT, code = Tencent's code
an accepted request without a status for the number        UNKNOWN ``no_status``
transport failures                                         as :mod:`channels.http`
=========================================================  ==============================

``detail`` never holds the SecretKey or digit runs such as phone numbers.

Delivery reports (status callback / ``PullSmsSendStatus``) carry ``SerialNo``
(the callback's ``sid``) per number, and ``SessionContext`` for requests of
one number. The option ``receipt_token`` is accepted and not used here: the
receipts API (:mod:`api.receipt_config`) reads it from the same entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import httpx
import structlog

from channels.base import Delivery, Outcome, ProviderConfig, ProviderContext, StartHook, no_start_hook
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

API_VERSION = "2021-01-11"
SERVICE = "sms"
MAX_BATCH = 200  # PhoneNumberSet: at most 200 numbers per request
CONTENT_TYPE = "application/json; charset=utf-8"
SIGNED_HEADERS = "content-type;host;x-tc-action"

_OPTION_KEYS = frozenset(
    {
        "secret_id", "secret_key", "sdk_app_id", "sign_name", "template_id", "template_params",
        "templates", "region", "batch_size", "limit_retry_after",
        "receipt_token",  # read by the receipts API (api/receipt_config.py), not by the sender
    }
)  # fmt: skip

_INVALID_ADDRESS = frozenset(
    {
        "FailedOperation.PhoneNumberInBlacklist",
        "FailedOperation.PhoneNumberOnBlacklist",
        "InvalidParameterValue.IncorrectPhoneNumber",
    }
)
#: caps on a number, the app or the hour of day: wait instead of hammering (None = limit_retry_after)
_DEFERRED: Mapping[str, float | None] = {
    "LimitExceeded.PhoneNumberThirtySecondLimit": 60.0,
    "LimitExceeded.PhoneNumberOneHourLimit": 3600.0,
    "LimitExceeded.PhoneNumberDailyLimit": None,
    "LimitExceeded.PhoneNumberSameContentDailyLimit": None,
    "LimitExceeded.DeliveryFrequencyLimit": None,
    "LimitExceeded.AppDailyLimit": None,
    "LimitExceeded.DailyLimit": None,
    "FailedOperation.MarketingSendTimeConstraint": None,
}
_ACCOUNT = frozenset(
    {"FailedOperation.InsufficientBalanceInSmsPackage", "UnauthorizedOperation.SerivceSuspendDueToArrears"}
)
_CONFIG = frozenset(
    {
        "UnauthorizedOperation.RequestIpNotInWhitelist", "UnauthorizedOperation.RequestPermissionDeny",
        "UnauthorizedOperation.SdkAppIdIsDisabled", "UnauthorizedOperation.SmsSdkAppIdVerifyFail",
        "UnauthorizedOperation.IndividualUserMarketingSmsPermissionDeny",
        "InvalidParameterValue.SdkAppIdNotExist", "InvalidParameter.AppidAndBizId",
        "FailedOperation.SignatureIncorrectOrUnapproved", "FailedOperation.TemplateIncorrectOrUnapproved",
        "FailedOperation.MissingSignatureList", "FailedOperation.MissingTemplateList",
        "InternalError.RequestTimeException", "InvalidAction", "NoSuchVersion", "ActionOffline",
        "NoSuchProduct", "IpInBlacklist", "IpNotInWhitelist",
    }
)  # fmt: skip
#: internal errors that a retry will not cure
_NOT_TRANSIENT = frozenset(
    {
        "InternalError.JsonParseFail", "InternalError.RestApiInterfaceNotExist",
        "InternalError.SigFieldMissing", "InternalError.SigVerificationFail",
    }
)  # fmt: skip
#: Tencent timed out handing the SMS on: it may have gone out, and Tencent does not dedupe
_AMBIGUOUS = frozenset({"InternalError.Timeout", "InternalError.SendAndRecvFail"})
#: caps of the whole app or the hour of day: every number of the request would get the same
_APP_WIDE = frozenset(
    {"LimitExceeded.AppDailyLimit", "LimitExceeded.DailyLimit", "FailedOperation.MarketingSendTimeConstraint"}
)
#: request-wide answers that are really about one of its numbers: resend one by one
_PER_NUMBER = (
    _INVALID_ADDRESS
    | (frozenset(_DEFERRED) - _APP_WIDE)
    | frozenset(
        {
            "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber",
            "UnsupportedOperation.UnsuportedRegion",
        }
    )
)

_PHONE = re.compile(r"^\+?[0-9]{5,20}$")
_PHONE_SEPARATORS = re.compile(r"[\s\-().]")
_DIGIT_RUN = re.compile(r"\+?\d[\d\s-]{4,}\d")


# --- TC3-HMAC-SHA256 ------------------------------------------------------------------------------


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac_sha256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def tc3_signature(secret_key: str, date: str, string_to_sign: str, service: str = SERVICE) -> str:
    """Hex HMAC-SHA256 of ``string_to_sign`` under the key derived for ``date`` and ``service``."""
    secret_date = _hmac_sha256(f"TC3{secret_key}".encode(), date)
    secret_service = _hmac_sha256(secret_date, service)
    secret_signing = _hmac_sha256(secret_service, "tc3_request")
    return hmac.new(secret_signing, string_to_sign.encode(), hashlib.sha256).hexdigest()


def tc3_headers(
    *, secret_id: str, secret_key: str, host: str, action: str, region: str, timestamp: int, payload: bytes
) -> dict[str, str]:
    """The headers of a signed POST ``/`` with a JSON ``payload``, as Tencent Cloud API 3.0 wants."""
    canonical_headers = f"content-type:{CONTENT_TYPE}\nhost:{host}\nx-tc-action:{action.lower()}\n"
    canonical_request = "\n".join(["POST", "/", "", canonical_headers, SIGNED_HEADERS, _sha256_hex(payload)])
    date = time.strftime("%Y-%m-%d", time.gmtime(timestamp))
    scope = f"{date}/{SERVICE}/tc3_request"
    string_to_sign = "\n".join(
        ["TC3-HMAC-SHA256", str(timestamp), scope, _sha256_hex(canonical_request.encode())]
    )
    signature = tc3_signature(secret_key, date, string_to_sign)
    return {
        "Authorization": (
            f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, "
            f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
        ),
        "Content-Type": CONTENT_TYPE,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Timestamp": str(timestamp),
        "X-TC-Version": API_VERSION,
        "X-TC-Region": region,
    }


# --- options --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TencentTemplate:
    template_id: str
    params: tuple[str, ...] = ()  # variable names filling {1}, {2}, ... in order


@dataclasses.dataclass(frozen=True, slots=True)
class TencentOptions:
    secret_id: str
    secret_key: str = dataclasses.field(repr=False)
    sdk_app_id: str
    sign_name: str | None
    template: TencentTemplate | None  # the default, from template_id / template_params
    templates: Mapping[str, TencentTemplate]
    region: str
    batch_size: int
    limit_retry_after: float

    @classmethod
    def parse(cls, reader: OptionReader) -> TencentOptions:
        template_id = reader.text("template_id")
        params = _names(reader, "template_params", reader.options.get("template_params", ()))
        if params and template_id is None:
            raise reader.error("template_params", "is set but 'template_id' is not")
        parsed = cls(
            secret_id=reader.required("secret_id"),
            secret_key=reader.required("secret_key"),
            sdk_app_id=reader.required("sdk_app_id"),
            sign_name=reader.text("sign_name"),
            template=TencentTemplate(template_id, params) if template_id else None,
            templates=_templates(reader),
            region=reader.text("region", default="ap-guangzhou") or "ap-guangzhou",
            batch_size=reader.integer("batch_size", MAX_BATCH, 1, MAX_BATCH),
            limit_retry_after=reader.number("limit_retry_after", 3600.0),
        )
        if parsed.template is None and not parsed.templates:
            raise reader.error("template_id", "is required unless 'templates' maps every template")
        return parsed

    def template_for(self, template: str) -> TencentTemplate | None:
        return self.templates.get(template, self.template)


def _names(reader: OptionReader, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(name, str) and name for name in value):
        raise reader.error(key, "must be a list of variable names")
    return tuple(value)


def _templates(reader: OptionReader) -> Mapping[str, TencentTemplate]:
    value = reader.options.get("templates")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise reader.error("templates", "must map reach template names to Tencent template ids")
    return {str(name): _template(reader, entry) for name, entry in value.items()}


def _template(reader: OptionReader, entry: Any) -> TencentTemplate:
    if isinstance(entry, str) and entry:
        return TencentTemplate(entry)
    if isinstance(entry, Mapping) and isinstance(entry.get("id"), str) and entry["id"]:
        if set(entry) - {"id", "params"}:
            raise reader.error("templates", "entries take only 'id' and 'params'")
        return TencentTemplate(entry["id"], _names(reader, "templates", entry.get("params", ())))
    raise reader.error("templates", "entries must be a template id or {id: ..., params: [...]}")


# --- the provider ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Sms:
    index: int
    message_id: str
    phone: str
    template_id: str
    params: tuple[str, ...]  # TemplateParamSet values


class TencentSmsProvider(HttpProvider[TencentOptions]):
    """Tencent Cloud SMS ``SendSms``; see the module docstring for outcomes."""

    type_name: ClassVar[str] = "tencent_sms"
    default_base_url: ClassVar[str] = "https://sms.tencentcloudapi.com"
    option_keys: ClassVar[frozenset[str]] = _OPTION_KEYS
    secret_options: ClassVar[frozenset[str]] = frozenset({"secret_key", "receipt_token"})
    address_fields: ClassVar[tuple[str, ...]] = ("phone",)
    max_content_bytes: ClassVar[int] = 2048  # a long SMS: a few hundred characters at most

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        #: seconds since the epoch, for X-TC-Timestamp; tests skew it
        self.clock: Callable[[], float] = time.time

    def parse_options(self, reader: OptionReader) -> TencentOptions:
        return TencentOptions.parse(reader)

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
        """The template parameters: the text of the SMS is Tencent's template filled with them."""
        template = self.options.template_for(delivery.message.template)
        values = _param_values(template.params, delivery.message.variables) if template else ()
        return values if isinstance(values, tuple) else ()

    # -- preparing -----------------------------------------------------------------------------

    def _prepare(self, index: int, delivery: Delivery) -> _Sms | Outcome:
        raw = contact_field(delivery, "phone")
        if raw is None:
            return Outcome.permanent("no_address", "contact has no phone number")
        phone = _PHONE_SEPARATORS.sub("", raw)
        if not _PHONE.match(phone):
            return Outcome.invalid_address("bad_address", "contact phone is not a phone number")
        message = delivery.message
        template = self.options.template_for(message.template)
        if template is None:
            detail = f"no Tencent template for {message.template!r}: set 'templates' or 'template_id'"
            return Outcome.permanent("no_template", detail)
        values = _param_values(template.params, message.variables)
        if isinstance(values, Outcome):
            return values
        return _Sms(index, message.message_id, phone, template.template_id, values)

    # -- sending -------------------------------------------------------------------------------

    async def _send_chunk(self, chunk: Sequence[_Sms]) -> list[Outcome]:
        answer = await self._call(chunk)
        if isinstance(answer, list):
            return answer
        if len(chunk) > 1 and answer.code in _PER_NUMBER:
            # Refused as a whole for one number's sake; nothing was sent.
            singles = await asyncio.gather(*(self._call([sms]) for sms in chunk))
            return [single[0] if isinstance(single, list) else single for single in singles]
        return [answer] * len(chunk)

    async def _call(self, chunk: Sequence[_Sms]) -> list[Outcome] | Outcome:
        """Per-number outcomes, or one outcome for the whole request (refused, transport)."""
        assert self._slots is not None
        async with self._slots:
            try:
                return await self._post(chunk)
            except httpx.HTTPError as exc:
                return self.transport_outcome(exc)

    async def _post(self, chunk: Sequence[_Sms]) -> list[Outcome] | Outcome:
        payload = json.dumps(self._body(chunk), ensure_ascii=False, separators=(",", ":")).encode()
        options = self.options
        headers = tc3_headers(
            secret_id=options.secret_id,
            secret_key=options.secret_key,
            host=_host(self.client.base_url),
            action="SendSms",
            region=options.region,
            timestamp=int(self.clock()),
            payload=payload,
        )
        response = await self.client.post("/", content=payload, headers=headers)
        return self._outcomes(response, chunk)

    def _body(self, chunk: Sequence[_Sms]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "PhoneNumberSet": [sms.phone for sms in chunk],
            "SmsSdkAppId": self.options.sdk_app_id,
            "TemplateId": chunk[0].template_id,
            "TemplateParamSet": list(chunk[0].params),
        }
        if self.options.sign_name:
            body["SignName"] = self.options.sign_name
        if len(chunk) == 1:
            body["SessionContext"] = chunk[0].message_id
        return body

    # -- classifying ---------------------------------------------------------------------------

    def _outcomes(self, response: httpx.Response, chunk: Sequence[_Sms]) -> list[Outcome] | Outcome:
        body = json_body(response)
        reply = body.get("Response") if isinstance(body, dict) else None
        if not isinstance(reply, dict):
            detail = f"HTTP {response.status_code} without a Tencent Cloud Response"
            return status_outcome(response, str(response.status_code), detail)
        error = reply.get("Error")
        if isinstance(error, dict):
            return self._status(error, response)
        statuses = reply.get("SendStatusSet")
        if not isinstance(statuses, list):
            return Outcome.unknown("no_status", "accepted, but the answer has no SendStatusSet")
        return _match(statuses, chunk, lambda status: self._status(status, response))

    def _status(self, status: Mapping[str, Any], response: httpx.Response) -> Outcome:
        code = str(status.get("Code") or "")
        if code == "Ok":
            return Outcome.sent(str(status.get("SerialNo") or ""))
        return self.classify(code or "no_code", str(status.get("Message") or ""), response)

    def classify(self, code: str, message: str, response: httpx.Response) -> Outcome:
        """The outcome of a Tencent error ``code``; see the table in the module docstring."""
        detail = f"{code}: {self._scrub(message)}"
        if code in _INVALID_ADDRESS:
            return Outcome.invalid_address(code, detail)
        if code in _DEFERRED:
            return Outcome.retry(code, detail, _DEFERRED[code] or self.options.limit_retry_after)
        if code in _ACCOUNT:
            log.warning("sms_account_suspended", provider=self.name, provider_type=self.type_name, code=code)
            return Outcome.retry(code, detail, self.options.limit_retry_after)
        if code in _CONFIG or code.startswith("AuthFailure"):
            log.error(
                "sms_provider_misconfigured", provider=self.name, provider_type=self.type_name, code=code
            )
            return Outcome.permanent(code, f"configuration: {detail}")
        if code in _AMBIGUOUS:
            return Outcome.unknown(code, detail)
        if _transient(code) or response.status_code >= 500:
            return Outcome.retry(code, detail, retry_after_seconds(response.headers))
        return Outcome.permanent(code, detail)

    def _scrub(self, message: str) -> str:
        options = self.options
        text = redact(" ".join(message.split()), options.secret_key, options.secret_id)
        return _DIGIT_RUN.sub("<number>", text)


def _transient(code: str) -> bool:
    if code.startswith("RequestLimitExceeded"):
        return True
    return code.startswith("InternalError") and code not in _NOT_TRANSIENT


def _match(
    statuses: list[Any], chunk: Sequence[_Sms], outcome: Callable[[Mapping[str, Any]], Outcome]
) -> list[Outcome]:
    """Each number's status, found by number (Tencent may normalise it) or else by position."""
    by_phone = {s.get("PhoneNumber"): s for s in statuses if isinstance(s, dict)}
    positional = len(statuses) == len(chunk)
    results = []
    for position, sms in enumerate(chunk):
        status = by_phone.get(sms.phone)
        if status is None and positional and isinstance(statuses[position], dict):
            status = statuses[position]
        if status is None:
            results.append(Outcome.unknown("no_status", "accepted, but the answer has no status for it"))
        else:
            results.append(outcome(status))
    return results


def _param_values(names: Sequence[str], variables: Mapping[str, Any]) -> tuple[str, ...] | Outcome:
    values = []
    for name in names:
        value = variables.get(name)
        if not isinstance(value, str | int | float | bool):
            detail = f"template variable {name!r} is missing or not a string or number"
            return Outcome.permanent("missing_variable", detail)
        values.append(("true" if value else "false") if isinstance(value, bool) else str(value))
    return tuple(values)


def _chunks(items: Sequence[_Sms], size: int) -> list[list[_Sms]]:
    """Requests: same template and parameter values, at most ``size`` numbers, no number twice."""
    chunks: list[list[_Sms]] = []
    open_chunks: dict[tuple[str, tuple[str, ...]], tuple[list[_Sms], set[str]]] = {}
    for sms in items:
        key = (sms.template_id, sms.params)
        current = open_chunks.get(key)
        if current is None or len(current[0]) >= size or sms.phone in current[1]:
            current = ([], set())
            open_chunks[key] = current
            chunks.append(current[0])
        current[0].append(sms)
        current[1].add(sms.phone)
    return chunks


def _host(url: httpx.URL) -> str:
    """The Host header httpx sends for ``url`` (port only when not the scheme's default)."""
    return f"{url.host}:{url.port}" if url.port else url.host


__all__ = [
    "API_VERSION",
    "MAX_BATCH",
    "TencentOptions",
    "TencentSmsProvider",
    "TencentTemplate",
    "tc3_headers",
    "tc3_signature",
]
