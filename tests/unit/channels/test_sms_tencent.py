"""Tencent Cloud SMS against a local SendSms that verifies TC3-HMAC-SHA256."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.sms_tencent import TencentSmsProvider, tc3_signature
from reach.clock import Clock, ManualClock, SystemClock
from tests.support.http_provider import Fault
from tests.support.providers.tencent_sms import TencentSmsServer, tc3_sign
from tests.unit.channels.factories import delivery


def sms(n: int, **overrides: Any) -> Delivery:
    fields: dict[str, Any] = {
        "channel": "sms",
        "provider": "tencent-1",
        "template": "welcome_sms",
        "contact": {"phone": f"+86138000000{n:02d}"},
    }
    fields.update(overrides)
    return delivery(n, **fields)


@pytest.fixture
def server() -> Iterator[TencentSmsServer]:
    running = TencentSmsServer(templates={"1110": ("first_name",), "2220": ()})
    with running:
        yield running


@contextlib.asynccontextmanager
async def tencent(
    server: TencentSmsServer, clock: Clock | None = None, **options: Any
) -> AsyncIterator[TencentSmsProvider]:
    merged = {**server.provider_options(), "timeout": 1, **options}
    provider = TencentSmsProvider(
        ProviderConfig("tencent-1", "tencent_sms", options=merged),
        ProviderContext(clock=clock or SystemClock()),
    )
    await provider.setup()
    try:
        yield provider
    finally:
        await provider.close()


async def send(server: TencentSmsServer, deliveries: list[Delivery], **options: Any) -> list[Outcome]:
    async with tencent(server, **options) as provider:
        return await provider.send_batch(deliveries)


def assert_clean(outcome: Outcome, server: TencentSmsServer) -> None:
    for forbidden in (server.secret_key, "13800000", "wrong-secret"):
        assert forbidden not in outcome.detail


def test_key_derivation_matches_the_independent_server_side() -> None:
    assert tc3_signature("k3y", "2021-01-11", "TC3-HMAC-SHA256\n1\nscope\nabc") == tc3_sign(
        "k3y", "2021-01-11", "sms", "TC3-HMAC-SHA256\n1\nscope\nabc"
    )


# --- sending --------------------------------------------------------------------------------------


async def test_one_delivery_is_a_signed_send_sms_with_session_context(server: TencentSmsServer) -> None:
    message = sms(1)
    [outcome] = await send(server, [message])
    assert outcome.kind is OutcomeKind.SENT
    [sent] = server.sent
    assert outcome.provider_message_id == sent.serial_no and sent.serial_no.startswith("2640:")
    assert (sent.phone, sent.sign_name, sent.template_id, sent.params) == (
        "+8613800000001",
        "Reach",
        "1110",
        ("Ada",),
    )
    assert sent.session_context == message.message.message_id
    [request] = server.requests
    assert request.headers["x-tc-action"] == "SendSms" and request.headers["x-tc-version"] == "2021-01-11"
    assert request.headers["x-tc-region"] == "ap-guangzhou"
    assert request.headers["authorization"].startswith(
        "TC3-HMAC-SHA256 Credential=AKIDreachTestSecretId0001/"
    )


async def test_identical_parameters_share_one_request_with_per_number_serials(
    server: TencentSmsServer,
) -> None:
    outcomes = await send(server, [sms(n) for n in range(1, 6)])
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 5
    assert len(server.requests) == 1 and "SessionContext" not in server.requests[0].json()
    serials = {s.phone: s.serial_no for s in server.sent}
    assert [o.provider_message_id for o in outcomes] == [serials[f"+86138000000{n:02d}"] for n in range(1, 6)]
    assert len(set(serials.values())) == 5


async def test_requests_group_by_template_and_values(server: TencentSmsServer) -> None:
    deliveries = [sms(1), sms(2, variables={"first_name": "Bob"}), sms(3), sms(4, template="code_sms")]
    templates = {"welcome_sms": {"id": "1110", "params": ["first_name"]}, "code_sms": "2220"}
    outcomes = await send(server, deliveries, templates=templates)
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 4
    bodies = sorted(
        (r.json()["TemplateId"], r.json()["TemplateParamSet"], len(r.json()["PhoneNumberSet"]))
        for r in server.requests
    )
    assert bodies == [("1110", ["Ada"], 2), ("1110", ["Bob"], 1), ("2220", [], 1)]


async def test_requests_are_cut_at_the_batch_size(server: TencentSmsServer) -> None:
    deliveries = [sms(n, contact={"phone": f"+861390000{n:04d}"}) for n in range(250)]
    outcomes = await send(server, deliveries)
    assert all(o.kind is OutcomeKind.SENT for o in outcomes)
    assert sorted(len(r.json()["PhoneNumberSet"]) for r in server.requests) == [50, 200]


async def test_one_number_twice_goes_in_two_requests(server: TencentSmsServer) -> None:
    outcomes = await send(server, [sms(1), sms(2, contact={"phone": "+8613800000001"})])
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 2
    assert len(server.requests) == 2 and outcomes[0].provider_message_id != outcomes[1].provider_message_id


# --- classification through the wire -------------------------------------------------------------


async def test_per_number_statuses_are_matched_in_order(server: TencentSmsServer) -> None:
    server.fail_number("+8613800000002", "FailedOperation.PhoneNumberInBlacklist")
    server.fail_number("+8613800000003", "LimitExceeded.PhoneNumberDailyLimit")
    server.fail_number("+8613800000004", "InvalidParameterValue.IncorrectPhoneNumber")
    outcomes = await send(server, [sms(n) for n in range(1, 6)])
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.SENT, ""),
        (OutcomeKind.INVALID_ADDRESS, "FailedOperation.PhoneNumberInBlacklist"),
        (OutcomeKind.RETRY, "LimitExceeded.PhoneNumberDailyLimit"),
        (OutcomeKind.INVALID_ADDRESS, "InvalidParameterValue.IncorrectPhoneNumber"),
        (OutcomeKind.SENT, ""),
    ]
    assert outcomes[2].retry_after == 3600
    assert len(server.requests) == 1 and len(server.sent) == 2


@pytest.mark.parametrize(
    ("code", "kind", "retry_after"),
    [
        ("FailedOperation.PhoneNumberInBlacklist", OutcomeKind.INVALID_ADDRESS, None),
        ("InvalidParameterValue.IncorrectPhoneNumber", OutcomeKind.INVALID_ADDRESS, None),
        ("LimitExceeded.PhoneNumberDailyLimit", OutcomeKind.RETRY, 3600),
        ("LimitExceeded.PhoneNumberOneHourLimit", OutcomeKind.RETRY, 3600),
        ("LimitExceeded.PhoneNumberThirtySecondLimit", OutcomeKind.RETRY, 60),
        ("LimitExceeded.DeliveryFrequencyLimit", OutcomeKind.RETRY, 3600),
        ("FailedOperation.InsufficientBalanceInSmsPackage", OutcomeKind.RETRY, 3600),
        ("InternalError.Timeout", OutcomeKind.UNKNOWN, None),
        ("InternalError.SendAndRecvFail", OutcomeKind.UNKNOWN, None),
        ("InternalError.OtherError", OutcomeKind.RETRY, None),
        ("FailedOperation.ContainSensitiveWord", OutcomeKind.PERMANENT, None),
        ("FailedOperation.TemplateIncorrectOrUnapproved", OutcomeKind.PERMANENT, None),
    ],
)
async def test_number_codes_are_classified(
    server: TencentSmsServer, code: str, kind: OutcomeKind, retry_after: float | None
) -> None:
    server.fail_number("+8613800000001", code)
    [outcome] = await send(server, [sms(1)])
    assert (outcome.kind, outcome.code, outcome.retry_after) == (kind, code, retry_after)
    assert_clean(outcome, server)
    assert server.sent == []


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("RequestLimitExceeded", OutcomeKind.RETRY),
        ("RequestLimitExceeded.UinLimitExceeded", OutcomeKind.RETRY),
        ("InternalError", OutcomeKind.RETRY),
        ("AuthFailure.UnauthorizedOperation", OutcomeKind.PERMANENT),
        ("UnauthorizedOperation.SerivceSuspendDueToArrears", OutcomeKind.RETRY),
        ("FailedOperation.JsonParseFail", OutcomeKind.PERMANENT),
    ],
)
async def test_request_errors_apply_to_every_number(
    server: TencentSmsServer, code: str, kind: OutcomeKind
) -> None:
    server.fail_next(code)
    outcomes = await send(server, [sms(n) for n in range(1, 4)])
    assert [(o.kind, o.code) for o in outcomes] == [(kind, code)] * 3
    assert len(server.requests) == 1 and server.sent == []


@pytest.mark.parametrize("code", ["InternalError.Timeout", "InternalError.SendAndRecvFail"])
async def test_a_send_tencent_timed_out_on_is_unknown_not_resent(server: TencentSmsServer, code: str) -> None:
    # Tencent timed out passing the message on: it may be on the phone already, and a resend of
    # a non-deduplicating API could send it twice.
    server.fail_next(code)
    outcomes = await send(server, [sms(n) for n in range(1, 3)])
    assert [(o.kind, o.code) for o in outcomes] == [(OutcomeKind.UNKNOWN, code)] * 2
    assert len(server.requests) == 1


async def test_a_signature_verification_failure_is_not_retried(server: TencentSmsServer) -> None:
    server.fail_next("InternalError.SigVerificationFail")
    [outcome] = await send(server, [sms(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "InternalError.SigVerificationFail")


APP_WIDE_CAPS = [
    "LimitExceeded.AppDailyLimit",
    "LimitExceeded.DailyLimit",
    "FailedOperation.MarketingSendTimeConstraint",
]


@pytest.mark.parametrize("code", APP_WIDE_CAPS)
async def test_an_app_wide_cap_is_not_resent_number_by_number(server: TencentSmsServer, code: str) -> None:
    server.fail_next(code)
    outcomes = await send(server, [sms(n) for n in range(1, 4)])
    assert [(o.kind, o.code, o.retry_after) for o in outcomes] == [(OutcomeKind.RETRY, code, 3600)] * 3
    assert len(server.requests) == 1  # not one more request per number, each refused the same way


async def test_a_request_refused_for_mixed_numbers_is_resent_per_number(server: TencentSmsServer) -> None:
    deliveries = [sms(1), sms(2, contact={"phone": "+14155550100"})]
    outcomes = await send(server, deliveries)
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 2
    assert len(server.requests) == 3
    assert sorted(s.phone for s in server.sent) == ["+14155550100", "+8613800000001"]
    assert {s.session_context for s in server.sent} == {d.message.message_id for d in deliveries}


# --- credentials ----------------------------------------------------------------------------------


async def test_a_wrong_secret_is_refused_and_reported_as_configuration(server: TencentSmsServer) -> None:
    with capture_logs() as logs:
        outcomes = await send(server, [sms(1), sms(2)], secret_key="wrong-secret")
    for outcome in outcomes:
        assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "AuthFailure.SignatureFailure")
        assert outcome.detail.startswith("configuration:")
        assert_clean(outcome, server)
    assert server.sent == []
    assert [e["event"] for e in logs] == ["sms_provider_misconfigured"]
    assert "wrong-secret" not in str(logs)


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"secret_id": "AKIDnobody"}, "AuthFailure.SecretIdNotFound"),
        ({"sdk_app_id": "1400000000"}, "UnauthorizedOperation.SmsSdkAppIdVerifyFail"),
        ({"sign_name": "Other"}, "FailedOperation.SignatureIncorrectOrUnapproved"),
    ],
)
async def test_wrong_account_settings_are_configuration_errors(
    server: TencentSmsServer, options: dict[str, str], code: str
) -> None:
    [outcome] = await send(server, [sms(1)], **options)
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, code)
    assert outcome.detail.startswith("configuration:")


async def test_a_skewed_clock_is_refused_as_expired(server: TencentSmsServer) -> None:
    async with tencent(server, ManualClock(1_600_000_000_000)) as provider:
        [outcome] = await provider.send_batch([sms(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "AuthFailure.SignatureExpire")


async def test_the_server_refuses_a_tampered_body_or_signed_header(server: TencentSmsServer) -> None:
    await send(server, [sms(1)])
    [signed] = server.requests
    headers = {k: v for k, v in signed.headers.items() if k not in ("content-length", "host")}
    body = signed.json()
    body["PhoneNumberSet"] = ["+8613900000009"]
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        changed = await client.post("/", content=json.dumps(body).encode(), headers=headers)
        other_action = await client.post(
            "/", content=signed.body, headers={**headers, "x-tc-action": "SendSmsX"}
        )
        intact = await client.post("/", content=signed.body, headers=headers)
    assert changed.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert other_action.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert intact.json()["Response"]["SendStatusSet"][0]["Code"] == "Ok"  # Tencent does not refuse replays


# --- transport faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        (Fault.timeout(3), OutcomeKind.UNKNOWN, "timeout"),
        (Fault.reset(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.drop_after_accept(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.status(429, headers={"Retry-After": "7"}), OutcomeKind.RETRY, "429"),
        (Fault.status(502), OutcomeKind.RETRY, "502"),
    ],
)
async def test_faults_apply_to_every_number_of_the_request(
    server: TencentSmsServer, fault: Fault, kind: OutcomeKind, code: str
) -> None:
    server.inject(fault)
    async with tencent(server) as provider:
        outcomes = await provider.send_batch([sms(1), sms(2)])
        [after] = await provider.send_batch([sms(3)])
    assert [(o.kind, o.code) for o in outcomes] == [(kind, code)] * 2
    if code == "429":
        assert {o.retry_after for o in outcomes} == {7}
    assert after.kind is OutcomeKind.SENT


async def test_drop_after_accept_was_sent(server: TencentSmsServer) -> None:
    server.inject(Fault.drop_after_accept())
    [outcome] = await send(server, [sms(1)])
    assert outcome.kind is OutcomeKind.UNKNOWN and len(server.sent) == 1


async def test_a_burst_of_server_errors_is_retried_then_recovers(server: TencentSmsServer) -> None:
    server.inject(Fault.burst(503, 5))
    async with tencent(server) as provider:
        during = [(await provider.send_batch([sms(n)]))[0] for n in range(1, 6)]
        [after] = await provider.send_batch([sms(6)])
    assert [(o.kind, o.code) for o in during] == [(OutcomeKind.RETRY, "503")] * 5
    assert after.kind is OutcomeKind.SENT


# --- before any request ---------------------------------------------------------------------------


async def test_unsendable_deliveries_never_reach_tencent(server: TencentSmsServer) -> None:
    deliveries = [
        sms(1, contact={}),
        sms(2, contact={"phone": "n/a"}),
        sms(3, variables={}),
        sms(4, variables={"first_name": ["A"]}),
        sms(5, template="unknown_sms"),
        sms(6),
    ]
    outcomes = await send(
        server,
        deliveries,
        templates={"welcome_sms": {"id": "1110", "params": ["first_name"]}},
        template_id=None,
        template_params=[],
    )
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.PERMANENT, "no_address"),
        (OutcomeKind.INVALID_ADDRESS, "bad_address"),
        (OutcomeKind.PERMANENT, "missing_variable"),
        (OutcomeKind.PERMANENT, "missing_variable"),
        (OutcomeKind.PERMANENT, "no_template"),
        (OutcomeKind.SENT, ""),
    ]
    assert len(server.requests) == 1


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"secret_id": None}, "secret_id"),
        ({"secret_key": ""}, "secret_key"),
        ({"sdk_app_id": None}, "sdk_app_id"),
        ({"template_id": None, "template_params": []}, "template_id"),
        ({"template_id": None}, "template_params"),
        ({"template_params": "first_name"}, "template_params"),
        ({"templates": {"welcome_sms": {"id": "1"}, "x": 5}}, "templates"),
        ({"templates": {"welcome_sms": {"id": "1", "colour": "red"}}}, "templates"),
        ({"batch_size": 201}, "batch_size"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_option_errors_name_the_option(
    server: TencentSmsServer, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=f"option '{named}'"):
        async with tencent(server, **options):
            pass


def test_secret_options_are_declared() -> None:
    assert TencentSmsProvider.secret_options == frozenset({"secret_key", "receipt_token"})
    assert TencentSmsProvider.address_fields == ("phone",)


async def test_the_receipts_api_options_are_accepted(server: TencentSmsServer) -> None:
    async with tencent(server, receipt_token="r3ceipt") as provider:
        [outcome] = await provider.send_batch([sms(1)])
    assert outcome.kind is OutcomeKind.SENT
