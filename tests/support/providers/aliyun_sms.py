"""A local Aliyun Dysmsapi (RPC API 2017-05-25) that checks requests as Aliyun does.

It serves ``SendSms`` and ``SendBatchSms`` at ``/``, over GET or POST (common
parameters in the query, the action's in a form body, or all in one place),
and verifies the RPC signature from Aliyun's published algorithm, written
here independently of the client: every parameter except ``Signature`` sorted
by name, each name and value percent-encoded byte by byte (only
``A-Z a-z 0-9 - _ . ~`` literal), ``METHOD&%2F&encode(query)`` signed with
HMAC-SHA1 keyed by ``AccessKeySecret + "&"``, base64. It also checks the
timestamp window (15 minutes), refuses a reused ``SignatureNonce``, and then
the action's parameters, answering with Aliyun's codes and body shapes::

    {"RequestId": "...", "Code": "OK", "Message": "OK", "BizId": "900619746936498440^0"}
    {"RequestId": "...", "HostId": "dysmsapi.aliyuncs.com", "Code": "SignatureDoesNotMatch", ...}

Gateway errors (signature, key, timestamp, missing parameters) come with HTTP
4xx; business errors (``isv.*``) with HTTP 200, like Aliyun. Tests script
failures per number with :meth:`AliyunSmsServer.fail_number` (Aliyun answers a
batch with one code, so a batch containing that number fails as a whole) or
for the next request with :meth:`AliyunSmsServer.fail_next`. ``sent`` lists
every message accepted for sending, one entry per number.
"""

from __future__ import annotations

import base64
import calendar
import dataclasses
import hmac
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from tests.support.http_provider import ProviderServer, Recorded, Refused, Reply
from tests.support.tls import SelfSignedCert
from tests.support.waiting import wait_for_count

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_COMMON = ("AccessKeyId", "Action", "SignatureMethod", "SignatureNonce", "SignatureVersion", "Timestamp")
_TIMESTAMP_WINDOW = 15 * 60  # seconds either side of the server's clock
_MESSAGES = {
    "isv.MOBILE_NUMBER_ILLEGAL": "手机号码格式错误",
    "isv.BUSINESS_LIMIT_CONTROL": "触发号码天级流控Permits:10",
    "isv.DAY_LIMIT_CONTROL": "触发日发送限额",
    "isv.AMOUNT_NOT_ENOUGH": "账户余额不足",
    "isv.OUT_OF_SERVICE": "业务停机",
    "isv.SMS_TEMPLATE_ILLEGAL": "该账号下找不到对应模板",
    "isv.SMS_SIGNATURE_ILLEGAL": "该账号下找不到对应签名",
    "isv.TEMPLATE_MISSING_PARAMETERS": "模板变量缺少对应参数值",
    "isv.INVALID_JSON_PARAM": "JSON参数不合法, 只接受字符串值",
    "isv.MOBILE_COUNT_OVER_LIMIT": "手机号码数量超过限制",
    "isv.INVALID_PARAMETERS": "参数格式不正确",
    "isp.SYSTEM_ERROR": "系统错误",
    "isp.RAM_PERMISSION_DENY": "RAM权限DENY",
    "Throttling.User": "Request was denied due to user flow control.",
    "ServiceUnavailable": "The request has failed due to a temporary failure of the server.",
}


def aliyun_encode(text: str) -> str:
    """Percent-encoding as Aliyun's signature document defines it, byte by byte over UTF-8."""
    return "".join(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in text.encode("utf-8"))


def aliyun_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    pairs = [f"{aliyun_encode(name)}={aliyun_encode(params[name])}" for name in sorted(params)]
    return method + "&" + aliyun_encode("/") + "&" + aliyun_encode("&".join(pairs))


def aliyun_signature(method: str, params: Mapping[str, str], secret: str) -> str:
    mac = hmac.new(
        (secret + "&").encode("utf-8"), aliyun_string_to_sign(method, params).encode("utf-8"), "sha1"
    )
    return base64.b64encode(mac.digest()).decode("ascii")


@dataclasses.dataclass(frozen=True)
class SentSms:
    """One number of an accepted request."""

    action: str  # SendSms or SendBatchSms
    phone: str
    sign_name: str
    template_code: str
    params: Mapping[str, str]
    out_id: str
    biz_id: str


class _Answer(Exception):
    """Stop checking and answer with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class AliyunSmsServer(ProviderServer):
    """Stands in for dysmsapi.aliyuncs.com; constructed with the credentials it accepts.

    ``templates`` maps each approved template code to the variable names it needs.
    """

    def __init__(
        self,
        *,
        access_key_id: str = "LTAI5tReachTestKeyId",
        access_key_secret: str = "aliyun-test-secret-6f1d",
        sign_name: str = "Reach",
        templates: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
        tls: SelfSignedCert | None = None,
    ) -> None:
        super().__init__(tls=tls)
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.sign_name = sign_name
        self.templates = dict(templates or {"SMS_100001": ("first_name",)})
        self.clock = clock
        self.sent: list[SentSms] = []
        self._failing: dict[str, str] = {}
        self._next: list[tuple[str, int]] = []
        self._nonces: set[str] = set()
        self._state = threading.Lock()

    # -- control -------------------------------------------------------------------------------

    def provider_options(self) -> dict[str, Any]:
        """The ``options`` of an ``aliyun_sms`` provider entry that sends here."""
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "access_key_id": self.access_key_id,
            "access_key_secret": self.access_key_secret,
            "sign_name": self.sign_name,
            "template_code": next(iter(self.templates)),
        }
        if self.tls is not None:
            options["tls_ca_file"] = str(self.tls.cert_file)
        return options

    def fail_number(self, phone: str, code: str) -> None:
        """Answer ``code`` (HTTP 200) to every request that includes ``phone``."""
        with self._state:
            self._failing[_digits(phone)] = code

    def fail_next(self, code: str, status: int = 200) -> None:
        """Answer ``code`` with ``status`` to the next correctly signed request."""
        with self._state:
            self._next.append((code, status))

    def wait_for_sent(self, count: int, timeout: float = 30.0) -> list[SentSms]:
        def snapshot() -> list[SentSms]:
            with self._state:
                return list(self.sent)

        return wait_for_count(snapshot, count, timeout, f"{count} messages sent by {type(self).__name__}")

    # -- the API -------------------------------------------------------------------------------

    async def handle(self, request: Recorded) -> Reply:
        try:
            params = self._parameters(request)
            self._authenticate(request.method, params)
            self._scripted()
            return self._act(params)
        except _Answer as answer:
            if answer.reply.status in (400, 403, 404):
                raise Refused(answer.reply) from None
            return answer.reply

    def _parameters(self, request: Recorded) -> dict[str, str]:
        if request.path != "/":
            raise _Answer(_gateway_error(404, "InvalidAction.NotFound", "Specified api is not found."))
        if request.method not in ("GET", "POST"):
            raise _Answer(_gateway_error(400, "UnsupportedHTTPMethod", "This http method is not supported."))
        params = dict(request.query)
        if request.body:
            if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                raise _Answer(_gateway_error(400, "InvalidParameter", "Body must be form-urlencoded."))
            body = dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
            if set(body) & set(params):
                raise _Answer(_gateway_error(400, "InvalidParameter", "Parameter given twice."))
            params.update(body)
        return params

    def _authenticate(self, method: str, params: dict[str, str]) -> None:
        for name in (*_COMMON, "Version", "Signature"):
            if not params.get(name):
                raise _Answer(_gateway_error(400, f"Missing{name}", f"{name} is mandatory for this action."))
        if params["SignatureMethod"] != "HMAC-SHA1" or params["SignatureVersion"] != "1.0":
            raise _Answer(_gateway_error(400, "InvalidParameter", "Unsupported signature method or version."))
        self._check_timestamp(params["Timestamp"])
        if params["AccessKeyId"] != self.access_key_id:
            raise _Answer(
                _gateway_error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
            )
        unsigned = {name: value for name, value in params.items() if name != "Signature"}
        expected = aliyun_signature(method, unsigned, self.access_key_secret)
        if not hmac.compare_digest(expected, params["Signature"]):
            message = (
                "Specified signature is not matched with our calculation. server string to sign is:"
                + aliyun_string_to_sign(method, unsigned)
            )
            raise _Answer(_gateway_error(400, "SignatureDoesNotMatch", message))
        with self._state:
            if params["SignatureNonce"] in self._nonces:
                raise _Answer(
                    _gateway_error(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
                )
            self._nonces.add(params["SignatureNonce"])
        if params["Version"] != "2017-05-25":
            raise _Answer(_gateway_error(400, "InvalidVersion", "Specified parameter Version is not valid."))

    def _check_timestamp(self, value: str) -> None:
        try:
            when = calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            raise _Answer(
                _gateway_error(400, "InvalidTimeStamp.Format", "Specified time stamp is not valid.")
            ) from None
        if abs(self.clock() - when) > _TIMESTAMP_WINDOW:
            raise _Answer(
                _gateway_error(400, "InvalidTimeStamp.Expired", "Specified time stamp or date is expired.")
            )

    def _scripted(self) -> None:
        with self._state:
            scripted = self._next.pop(0) if self._next else None
        if scripted is not None:
            code, status = scripted
            if status == 200:
                raise _Answer(_business_error(code))
            raise _Answer(Reply(status, json=_body(code, host=True)))

    def _act(self, params: dict[str, str]) -> Reply:
        if params["Action"] == "SendSms":
            return self._send(params)
        if params["Action"] == "SendBatchSms":
            return self._send_batch(params)
        raise _Answer(_gateway_error(404, "InvalidAction.NotFound", "Specified api is not found."))

    def _send(self, params: dict[str, str]) -> Reply:
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            _require(params, name)
        phones = params["PhoneNumbers"].split(",")
        if len(phones) > 1000:
            raise _Answer(_business_error("isv.MOBILE_COUNT_OVER_LIMIT"))
        variables = _variables(params.get("TemplateParam", "{}") or "{}")
        out_id = params.get("OutId", "")
        if len(out_id) >= 256:
            raise _Answer(_business_error("isv.INVALID_PARAMETERS"))
        batch = [(phone, params["SignName"], variables) for phone in phones]
        return self._accept("SendSms", batch, params["TemplateCode"], out_id)

    def _send_batch(self, params: dict[str, str]) -> Reply:
        for name in ("PhoneNumberJson", "SignNameJson", "TemplateCode"):
            _require(params, name)
        phones = _string_list(params["PhoneNumberJson"])
        signs = _string_list(params["SignNameJson"])
        if len(phones) > 100:
            raise _Answer(_business_error("isv.MOBILE_COUNT_OVER_LIMIT"))
        if len(signs) != len(phones):
            raise _Answer(_business_error("isv.INVALID_PARAMETERS"))
        variables = _variable_list(params.get("TemplateParamJson", ""), len(phones))
        batch = list(zip(phones, signs, variables, strict=True))
        return self._accept("SendBatchSms", batch, params["TemplateCode"], params.get("OutId", ""))

    def _accept(
        self, action: str, batch: list[tuple[str, str, dict[str, str]]], template: str, out_id: str
    ) -> Reply:
        for phone, sign_name, variables in batch:
            self._check_message(phone, sign_name, template, variables)
        biz_id = f"{random.randrange(10**17, 10**18)}^0"
        with self._state:
            self.sent.extend(
                SentSms(action, phone, sign, template, variables, out_id, biz_id)
                for phone, sign, variables in batch
            )
        return Reply(200, json={"RequestId": _request_id(), "Code": "OK", "Message": "OK", "BizId": biz_id})

    def _check_message(self, phone: str, sign_name: str, template: str, variables: Mapping[str, str]) -> None:
        digits = _digits(phone)
        if not (digits.isdigit() and 5 <= len(digits) <= 20):
            raise _Answer(_business_error("isv.MOBILE_NUMBER_ILLEGAL"))
        with self._state:
            scripted = self._failing.get(digits)
        if scripted is not None:
            raise _Answer(_business_error(scripted))
        if sign_name != self.sign_name:
            raise _Answer(_business_error("isv.SMS_SIGNATURE_ILLEGAL"))
        if template not in self.templates:
            raise _Answer(_business_error("isv.SMS_TEMPLATE_ILLEGAL"))
        if any(name not in variables for name in self.templates[template]):
            raise _Answer(_business_error("isv.TEMPLATE_MISSING_PARAMETERS"))


# --- helpers ----------------------------------------------------------------------------------


def _digits(phone: str) -> str:
    phone = phone.strip()
    return phone[1:] if phone.startswith("+") else phone


def _require(params: Mapping[str, str], name: str) -> None:
    if not params.get(name):
        raise _Answer(_gateway_error(400, f"Missing{name}", f"{name} is mandatory for this action."))


def _variables(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError:
        raise _Answer(_business_error("isv.INVALID_JSON_PARAM")) from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Answer(_business_error("isv.INVALID_JSON_PARAM"))
    return value


def _variable_list(text: str, count: int) -> list[dict[str, str]]:
    if not text:
        return [{} for _ in range(count)]
    try:
        values = json.loads(text)
    except ValueError:
        raise _Answer(_business_error("isv.INVALID_JSON_PARAM")) from None
    if not isinstance(values, list) or len(values) != count:
        raise _Answer(_business_error("isv.INVALID_PARAMETERS"))
    return [_variables(json.dumps(value)) for value in values]


def _string_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        raise _Answer(_business_error("isv.INVALID_JSON_PARAM")) from None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise _Answer(_business_error("isv.INVALID_JSON_PARAM"))
    return value


def _request_id() -> str:
    return str(uuid.uuid4()).upper()


def _body(code: str, message: str | None = None, *, host: bool = False) -> dict[str, str]:
    body = {"RequestId": _request_id(), "Code": code, "Message": message or _MESSAGES.get(code, code)}
    if host:
        body["HostId"] = "dysmsapi.aliyuncs.com"
        body["Recommend"] = f"https://api.aliyun.com/troubleshoot?q={code}&product=Dysmsapi"
    return body


def _gateway_error(status: int, code: str, message: str) -> Reply:
    return Reply(status, json=_body(code, message, host=True))


def _business_error(code: str) -> Reply:
    return Reply(200, json=_body(code))


__all__ = ["AliyunSmsServer", "SentSms", "aliyun_encode", "aliyun_signature", "aliyun_string_to_sign"]
