"""A local Tencent Cloud SMS (API 2021-01-11, ``SendSms``) that checks requests as Tencent does.

It verifies TC3-HMAC-SHA256 from Tencent's published algorithm, written here
independently of the client: the ``Authorization`` header is parsed; the
canonical request is rebuilt from the method, ``/``, an empty query, the
headers the client lists in ``SignedHeaders`` (which must include
``content-type`` and ``host``; names and values lower-cased and trimmed) and
the SHA-256 of the body as received; the key is derived from
``"TC3" + SecretKey`` through the credential date, the service and
``tc3_request``. It also checks the credential date against ``X-TC-Timestamp``,
the five-minute timestamp window, the action, version and region headers and
the body (app id, sign name, template and its parameter count, at most 200
numbers, no mixing of mainland and international numbers).

Every answer is HTTP 200 with Tencent's envelope: ``{"Response": {"Error":
{"Code", "Message"}, "RequestId"}}`` when the request is refused, otherwise
``{"Response": {"SendStatusSet": [...], "RequestId"}}`` with one status per
number (``"Code": "Ok"`` and a ``SerialNo``, or the number's error code).
:meth:`TencentSmsServer.fail_number` scripts a number's status code,
:meth:`TencentSmsServer.fail_next` a request-level error. Since every answer is
HTTP 200, ``accepted`` counts refused requests too: ``sent`` lists what was
really accepted for sending, one entry per number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tests.support.http_provider import ProviderServer, Recorded, Refused, Reply
from tests.support.tls import SelfSignedCert
from tests.support.waiting import wait_for_count

_AUTHORIZATION = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/,\s]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>[a-z]+)"
    r"/tc3_request,"
    r"\s*SignedHeaders=(?P<signed>[a-z0-9;\-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_BODY_KEYS = frozenset(
    {
        "PhoneNumberSet",
        "SmsSdkAppId",
        "TemplateId",
        "SignName",
        "TemplateParamSet",
        "ExtendCode",
        "SessionContext",
        "SenderId",
    }
)
_PHONE = re.compile(r"^\+?\d{5,20}$")
_WINDOW = 300  # seconds: "Timestamp and server time cannot differ by more than five minutes"
_MESSAGES = {
    "AuthFailure.SignatureFailure": (
        "The provided credentials could not be validated. Please check your signature is correct."
    ),
    "AuthFailure.SecretIdNotFound": "The SecretId is not found, please ensure that your SecretId is correct.",
    "AuthFailure.SignatureExpire": (
        "Signature expired. Timestamp and server time cannot differ by more than five minutes."
    ),
    "AuthFailure.InvalidAuthorization": "Authorization in the request header is invalid.",
    "FailedOperation.PhoneNumberInBlacklist": "phone number in blacklist",
    "InvalidParameterValue.IncorrectPhoneNumber": "incorrect phone number format",
    "LimitExceeded.PhoneNumberDailyLimit": (
        "the number of sms messages sent from a single mobile number every day exceeds the upper limit"
    ),
    "RequestLimitExceeded": "Your current request times exceeds the limit.",
    "InternalError": "An internal error has occurred. Retry your request.",
}


def tc3_string_to_sign(
    method: str, headers: Mapping[str, str], signed: Sequence[str], body: bytes, timestamp: str, scope: str
) -> str:
    """Tencent's StringToSign, from the request as received."""
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip().lower()}\n" for name in signed)
    canonical = "\n".join(
        [method, "/", "", canonical_headers, ";".join(signed), hashlib.sha256(body).hexdigest()]
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return "\n".join(["TC3-HMAC-SHA256", timestamp, scope, digest])


def tc3_sign(secret_key: str, date: str, service: str, string_to_sign: str) -> str:
    key = ("TC3" + secret_key).encode("utf-8")
    for part in (date, service, "tc3_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True)
class SentSms:
    phone: str
    sign_name: str
    template_id: str
    params: tuple[str, ...]
    session_context: str
    serial_no: str


class _Answer(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class TencentSmsServer(ProviderServer):
    """Stands in for sms.tencentcloudapi.com; constructed with the credentials it accepts.

    ``templates`` maps each approved template id to the names of the variables
    that fill it, in order (the server checks the count; :meth:`provider_options`
    hands the names to the provider).
    """

    def __init__(
        self,
        *,
        secret_id: str = "AKIDreachTestSecretId0001",
        secret_key: str = "tencent-test-secret-key-9c2e",
        sdk_app_id: str = "1400006666",
        sign_name: str = "Reach",
        templates: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
        tls: SelfSignedCert | None = None,
    ) -> None:
        super().__init__(tls=tls)
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.sdk_app_id = sdk_app_id
        self.sign_name = sign_name
        self.templates = {
            key: tuple(names) for key, names in (templates or {"1110": ("first_name",)}).items()
        }
        self.clock = clock
        self.sent: list[SentSms] = []
        self._failing: dict[str, str] = {}
        self._next: list[str] = []
        self._state = threading.Lock()

    # -- control -------------------------------------------------------------------------------

    def provider_options(self) -> dict[str, Any]:
        """The ``options`` of a ``tencent_sms`` provider entry that sends here."""
        template_id, params = next(iter(self.templates.items()))
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "secret_id": self.secret_id,
            "secret_key": self.secret_key,
            "sdk_app_id": self.sdk_app_id,
            "sign_name": self.sign_name,
            "template_id": template_id,
            "template_params": list(params),
        }
        if self.tls is not None:
            options["tls_ca_file"] = str(self.tls.cert_file)
        return options

    def fail_number(self, phone: str, code: str) -> None:
        """Give ``phone`` the status ``code`` in every request that includes it."""
        with self._state:
            self._failing[phone] = code

    def fail_next(self, code: str) -> None:
        """Refuse the next correctly signed request with the request-level error ``code``."""
        with self._state:
            self._next.append(code)

    def wait_for_sent(self, count: int, timeout: float = 30.0) -> list[SentSms]:
        def snapshot() -> list[SentSms]:
            with self._state:
                return list(self.sent)

        return wait_for_count(snapshot, count, timeout, f"{count} messages sent by {type(self).__name__}")

    # -- the API -------------------------------------------------------------------------------

    async def handle(self, request: Recorded) -> Reply:
        try:
            self._authenticate(request)
            self._check_call(request)
            body = self._body(request.body)
            with self._state:
                scripted = self._next.pop(0) if self._next else None
            if scripted is not None:
                raise _Answer(scripted)
            return _reply({"SendStatusSet": self._send(body)})
        except _Answer as answer:
            error = {"Code": answer.code, "Message": _MESSAGES.get(answer.code, answer.code)}
            raise Refused(_reply({"Error": error})) from None

    def _authenticate(self, request: Recorded) -> None:
        headers = request.headers
        match = _AUTHORIZATION.match(headers.get("authorization", ""))
        if match is None:
            raise _Answer("AuthFailure.InvalidAuthorization")
        signed = match["signed"].split(";")
        if "content-type" not in signed or "host" not in signed or signed != sorted(signed):
            raise _Answer("AuthFailure.InvalidAuthorization")
        timestamp = headers.get("x-tc-timestamp", "")
        if not timestamp.isdigit():
            raise _Answer("MissingParameter")
        if abs(self.clock() - int(timestamp)) > _WINDOW:
            raise _Answer("AuthFailure.SignatureExpire")
        if match["id"] != self.secret_id:
            raise _Answer("AuthFailure.SecretIdNotFound")
        date = time.strftime("%Y-%m-%d", time.gmtime(int(timestamp)))
        if match["date"] != date or match["service"] != "sms":
            raise _Answer("AuthFailure.SignatureFailure")
        scope = f"{date}/sms/tc3_request"
        string_to_sign = tc3_string_to_sign(request.method, headers, signed, request.body, timestamp, scope)
        if not hmac.compare_digest(
            tc3_sign(self.secret_key, date, "sms", string_to_sign), match["signature"]
        ):
            raise _Answer("AuthFailure.SignatureFailure")

    def _check_call(self, request: Recorded) -> None:
        headers = request.headers
        if request.method != "POST" or request.path != "/":
            raise _Answer("InvalidParameter")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _Answer("InvalidParameter")
        if headers.get("x-tc-action") != "SendSms":
            raise _Answer("InvalidAction")
        if headers.get("x-tc-version") != "2021-01-11":
            raise _Answer("NoSuchVersion")
        if not headers.get("x-tc-region"):
            raise _Answer("MissingParameter")

    def _body(self, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Answer("FailedOperation.JsonParseFail") from None
        if not isinstance(body, dict):
            raise _Answer("FailedOperation.JsonParseFail")
        if set(body) - _BODY_KEYS:
            raise _Answer("UnknownParameter")
        phones = body.get("PhoneNumberSet")
        if not isinstance(phones, list) or not phones:
            raise _Answer("MissingParameter.EmptyPhoneNumberSet")
        if len(phones) > 200:
            raise _Answer("LimitExceeded.PhoneNumberCountLimit")
        if not all(isinstance(phone, str) for phone in phones):
            raise _Answer("InvalidParameter")
        if len({_is_mainland(phone) for phone in phones}) > 1:
            raise _Answer("UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber")
        self._check_content(body)
        return body

    def _check_content(self, body: Mapping[str, Any]) -> None:
        if body.get("SmsSdkAppId") != self.sdk_app_id:
            raise _Answer("UnauthorizedOperation.SmsSdkAppIdVerifyFail")
        if body.get("SignName") != self.sign_name:
            raise _Answer("FailedOperation.SignatureIncorrectOrUnapproved")
        template = body.get("TemplateId")
        if template not in self.templates:
            raise _Answer("FailedOperation.TemplateIncorrectOrUnapproved")
        params = body.get("TemplateParamSet", [])
        if not isinstance(params, list) or not all(isinstance(value, str) for value in params):
            raise _Answer("InvalidParameter")
        if len(params) != len(self.templates[template]):
            raise _Answer("FailedOperation.TemplateParamSetNotMatchApprovedTemplate")
        if len(str(body.get("SessionContext", "")).encode()) >= 512:
            raise _Answer("InvalidParameterValue")

    def _send(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [self._status(phone, body) for phone in body["PhoneNumberSet"]]

    def _status(self, phone: str, body: Mapping[str, Any]) -> dict[str, Any]:
        e164 = _e164(phone)
        with self._state:
            code = self._failing.get(e164) or self._failing.get(phone)
        if code is None and not _PHONE.match(phone):
            code = "InvalidParameterValue.IncorrectPhoneNumber"
        status = {
            "SerialNo": "",
            "PhoneNumber": e164,
            "Fee": 0,
            "SessionContext": body.get("SessionContext", ""),
            "Code": code or "Ok",
            "Message": _MESSAGES.get(code, code) if code else "send success",
            "IsoCode": "CN" if _is_mainland(phone) else "",
        }
        if code is None:
            status["SerialNo"] = f"2640:{random.randrange(10**27, 10**28)}"
            status["Fee"] = 1
            sent = SentSms(
                e164,
                body["SignName"],
                body["TemplateId"],
                tuple(body.get("TemplateParamSet", [])),
                str(body.get("SessionContext", "")),
                status["SerialNo"],
            )
            with self._state:
                self.sent.append(sent)
        return status


def _is_mainland(phone: str) -> bool:
    return not phone.startswith("+") or phone.startswith("+86")


def _e164(phone: str) -> str:
    """As Tencent reports numbers: mainland numbers without a country code get ``+86``."""
    return phone if phone.startswith("+") else f"+86{phone.removeprefix('0086').removeprefix('86')}"


def _reply(response: dict[str, Any]) -> Reply:
    return Reply(200, json={"Response": {**response, "RequestId": str(uuid.uuid4())}})


__all__ = ["SentSms", "TencentSmsServer", "tc3_sign", "tc3_string_to_sign"]
