"""Aliyun SMS against a local Dysmsapi that verifies the published RPC signature."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from structlog.testing import capture_logs

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.sms_aliyun import AliyunSmsProvider, percent_encode, rpc_signature, template_param
from reach.clock import Clock, ManualClock, SystemClock
from tests.support.http_provider import Fault
from tests.support.providers.aliyun_sms import AliyunSmsServer, aliyun_encode, aliyun_signature
from tests.unit.channels.factories import delivery

# Aliyun's own worked examples (RPC signature document; SendSms example with a Chinese sign name).
DESCRIBE_REGIONS = {
    "AccessKeyId": "testid",
    "Action": "DescribeRegions",
    "Format": "XML",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    "SignatureVersion": "1.0",
    "Timestamp": "2016-02-23T12:46:24Z",
    "Version": "2014-05-26",
}
SEND_SMS = {
    "AccessKeyId": "testId",
    "Action": "SendSms",
    "Format": "XML",
    "OutId": "123",
    "PhoneNumbers": "15300000001",
    "RegionId": "cn-hangzhou",
    "SignName": "阿里云短信测试专用",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
    "SignatureVersion": "1.0",
    "TemplateCode": "SMS_71390007",
    "TemplateParam": '{"customer":"test"}',
    "Timestamp": "2017-07-12T02:42:19Z",
    "Version": "2017-05-25",
}


def sms(n: int, **overrides: Any) -> Delivery:
    fields: dict[str, Any] = {
        "channel": "sms",
        "provider": "aliyun-1",
        "template": "welcome_sms",
        "contact": {"phone": f"+86138000000{n:02d}"},
    }
    fields.update(overrides)
    return delivery(n, **fields)


@pytest.fixture
def server() -> Iterator[AliyunSmsServer]:
    running = AliyunSmsServer(templates={"SMS_100001": ("first_name",), "SMS_200002": ()})
    with running:
        yield running


@contextlib.asynccontextmanager
async def aliyun(
    server: AliyunSmsServer, clock: Clock | None = None, **options: Any
) -> AsyncIterator[AliyunSmsProvider]:
    merged = {**server.provider_options(), "timeout": 1, **options}
    context = ProviderContext(clock=clock or SystemClock())
    provider = AliyunSmsProvider(ProviderConfig("aliyun-1", "aliyun_sms", options=merged), context)
    await provider.setup()
    try:
        yield provider
    finally:
        await provider.close()


async def send(server: AliyunSmsServer, deliveries: list[Delivery], **options: Any) -> list[Outcome]:
    async with aliyun(server, **options) as provider:
        return await provider.send_batch(deliveries)


def assert_clean(outcome: Outcome, server: AliyunSmsServer) -> None:
    """No secret, key id or phone digits in what ends up in result rows."""
    for forbidden in (server.access_key_secret, server.access_key_id, "13800000", "wrong-secret"):
        assert forbidden not in outcome.detail


# --- the signature --------------------------------------------------------------------------------


def test_client_and_server_reproduce_the_published_signatures() -> None:
    assert rpc_signature("GET", DESCRIBE_REGIONS, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    assert aliyun_signature("GET", DESCRIBE_REGIONS, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    assert rpc_signature("GET", SEND_SMS, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="
    assert aliyun_signature("GET", SEND_SMS, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="


@pytest.mark.parametrize("text", ["a b", "*", "~-_.", "/=&+", "派活", '{"k":"v"}', "a%20b"])
def test_percent_encoding_follows_aliyun_rules(text: str) -> None:
    assert percent_encode(text) == aliyun_encode(text)
    assert "+" not in percent_encode(text) and "*" not in percent_encode(text)


# --- sending --------------------------------------------------------------------------------------


async def test_one_delivery_is_a_signed_send_sms(server: AliyunSmsServer) -> None:
    message = sms(1, variables={"first_name": "Ada", "age": 36, "vip": True, "tags": ["x"], "none": None})
    [outcome] = await send(server, [message])
    assert outcome.kind is OutcomeKind.SENT
    [sent] = server.sent
    assert outcome.provider_message_id == sent.biz_id and sent.biz_id.endswith("^0")
    assert (sent.action, sent.phone, sent.sign_name, sent.template_code) == (
        "SendSms",
        "8613800000001",
        "Reach",
        "SMS_100001",
    )
    assert sent.out_id == message.message.message_id
    assert sent.params == {"first_name": "Ada", "age": "36", "vip": "true"}
    [request] = server.accepted
    assert request.method == "POST" and "Signature" in request.query and "PhoneNumbers" in request.form()


async def test_deliveries_sharing_a_template_go_in_one_send_batch_sms(server: AliyunSmsServer) -> None:
    outcomes = await send(server, [sms(n) for n in range(1, 6)])
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 5
    assert len(server.requests) == 1 and server.requests[0].query["Action"] == "SendBatchSms"
    assert [s.phone for s in server.sent] == [f"86138000000{n:02d}" for n in range(1, 6)]
    assert {o.provider_message_id for o in outcomes} == {server.sent[0].biz_id}


async def test_batches_are_cut_at_the_batch_size_and_split_by_template(server: AliyunSmsServer) -> None:
    deliveries = [sms(n) for n in range(1, 8)] + [sms(n, template="code_sms") for n in range(8, 10)]
    templates = {"welcome_sms": "SMS_100001", "code_sms": "SMS_200002"}
    outcomes = await send(server, deliveries, batch_size=3, templates=templates)
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 9
    calls = sorted(
        (r.query["Action"], len(r.form().get("PhoneNumberJson", "x").split(","))) for r in server.requests
    )
    # SMS_100001: 3 + 3 in batches, the seventh alone; SMS_200002: one batch of 2
    assert calls == [("SendBatchSms", 2), ("SendBatchSms", 3), ("SendBatchSms", 3), ("SendSms", 1)]
    assert [s.template_code for s in server.sent].count("SMS_200002") == 2


async def test_one_number_twice_goes_in_two_calls(server: AliyunSmsServer) -> None:
    # A batch's reports carry its BizId and the number only: two messages to one number in one
    # SendBatchSms could not be told apart (and their reports would look like one repeated).
    again = sms(3, contact={"phone": "+8613800000001"})
    outcomes = await send(server, [sms(1), sms(2), again])
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 3
    assert len(server.requests) == 2
    reports = {(s.biz_id, s.phone) for s in server.sent}
    assert len(reports) == 3  # every message can be matched by (BizId, number)
    assert outcomes[0].provider_message_id != outcomes[2].provider_message_id


async def test_a_hundred_and_fifty_deliveries_take_two_calls(server: AliyunSmsServer) -> None:
    deliveries = [sms(n, contact={"phone": f"+861390000{n:04d}"}) for n in range(150)]
    outcomes = await send(server, deliveries)
    assert all(o.kind is OutcomeKind.SENT for o in outcomes)
    assert len(server.requests) == 2 and len(server.sent) == 150


# --- classification through the wire -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "retry_after"),
    [
        ("isv.MOBILE_NUMBER_ILLEGAL", OutcomeKind.INVALID_ADDRESS, None),
        ("isv.BUSINESS_LIMIT_CONTROL", OutcomeKind.RETRY, 3600),
        ("isv.DAY_LIMIT_CONTROL", OutcomeKind.RETRY, 3600),
        ("isv.AMOUNT_NOT_ENOUGH", OutcomeKind.RETRY, 3600),
        ("isp.SYSTEM_ERROR", OutcomeKind.RETRY, None),
        ("isp.RAM_PERMISSION_DENY", OutcomeKind.PERMANENT, None),
        ("isv.SMS_SIGNATURE_ILLEGAL", OutcomeKind.PERMANENT, None),
        ("isv.SMS_TEMPLATE_ILLEGAL", OutcomeKind.PERMANENT, None),
        ("isv.TEMPLATE_MISSING_PARAMETERS", OutcomeKind.PERMANENT, None),
        ("isv.INVALID_JSON_PARAM", OutcomeKind.PERMANENT, None),
    ],
)
async def test_error_codes_are_classified(
    server: AliyunSmsServer, code: str, kind: OutcomeKind, retry_after: float | None
) -> None:
    server.fail_number("+8613800000001", code)
    [outcome] = await send(server, [sms(1)])
    assert (outcome.kind, outcome.code, outcome.retry_after) == (kind, code, retry_after)
    assert_clean(outcome, server)
    assert server.sent == []


@pytest.mark.parametrize(
    ("code", "status"), [("Throttling.User", 400), ("ServiceUnavailable", 503), ("isp.SYSTEM_ERROR", 200)]
)
async def test_request_wide_errors_retry_the_whole_batch_without_splitting(
    server: AliyunSmsServer, code: str, status: int
) -> None:
    server.fail_next(code, status)
    outcomes = await send(server, [sms(n) for n in range(1, 4)])
    assert [(o.kind, o.code) for o in outcomes] == [(OutcomeKind.RETRY, code)] * 3
    assert len(server.requests) == 1


async def test_configuration_errors_are_logged_once_per_call(server: AliyunSmsServer) -> None:
    server.fail_next("isp.RAM_PERMISSION_DENY")
    with capture_logs() as logs:
        [outcome] = await send(server, [sms(1)])
    assert outcome.detail.startswith("configuration: isp.RAM_PERMISSION_DENY")
    assert [e["event"] for e in logs] == ["sms_provider_misconfigured"]
    assert logs[0]["code"] == "isp.RAM_PERMISSION_DENY"


async def test_limit_retry_after_is_configurable(server: AliyunSmsServer) -> None:
    server.fail_number("+8613800000001", "isv.BUSINESS_LIMIT_CONTROL")
    [outcome] = await send(server, [sms(1)], limit_retry_after=600)
    assert (outcome.kind, outcome.retry_after) == (OutcomeKind.RETRY, 600)


async def test_a_batch_refused_for_one_number_is_resent_one_by_one(server: AliyunSmsServer) -> None:
    server.fail_number("+8613800000002", "isv.MOBILE_NUMBER_ILLEGAL")
    server.fail_number("+8613800000003", "isv.BUSINESS_LIMIT_CONTROL")
    outcomes = await send(server, [sms(n) for n in range(1, 5)])
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.SENT, ""),
        (OutcomeKind.INVALID_ADDRESS, "isv.MOBILE_NUMBER_ILLEGAL"),
        (OutcomeKind.RETRY, "isv.BUSINESS_LIMIT_CONTROL"),
        (OutcomeKind.SENT, ""),
    ]
    assert outcomes[2].retry_after == 3600
    assert len(server.requests) == 5  # the refused batch, then one SendSms each
    assert sorted((s.action, s.phone) for s in server.sent) == [
        ("SendSms", "8613800000001"),
        ("SendSms", "8613800000004"),
    ]
    assert {s.out_id for s in server.sent} == {sms(1).message.message_id, sms(4).message.message_id}


# --- credentials ----------------------------------------------------------------------------------


async def test_a_wrong_secret_is_refused_and_reported_as_configuration(server: AliyunSmsServer) -> None:
    with capture_logs() as logs:
        outcomes = await send(server, [sms(1), sms(2)], access_key_secret="wrong-secret")
    for outcome in outcomes:
        assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "SignatureDoesNotMatch")
        assert outcome.detail.startswith("configuration:")
        assert "string to sign omitted" in outcome.detail
        assert_clean(outcome, server)
    assert server.sent == [] and server.accepted == []
    assert logs and all("wrong-secret" not in str(event) for event in logs)


async def test_an_unknown_key_id_is_a_configuration_error(server: AliyunSmsServer) -> None:
    [outcome] = await send(server, [sms(1)], access_key_id="LTAI-nobody")
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "InvalidAccessKeyId.NotFound")
    assert outcome.detail.startswith("configuration:")


async def test_a_skewed_clock_is_refused_as_expired(server: AliyunSmsServer) -> None:
    async with aliyun(server, ManualClock(1_500_000_000_000)) as provider:
        [outcome] = await provider.send_batch([sms(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "InvalidTimeStamp.Expired")


async def test_the_server_refuses_tampered_and_replayed_requests(server: AliyunSmsServer) -> None:
    await send(server, [sms(1)])
    [signed] = server.accepted
    query = "&".join(f"{aliyun_encode(k)}={aliyun_encode(v)}" for k, v in signed.query.items())
    form = dict(parse_qsl(signed.body.decode()))
    tampered = "&".join(
        f"{aliyun_encode(k)}={aliyun_encode('8613900000009' if k == 'PhoneNumbers' else v)}"
        for k, v in form.items()
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        changed = await client.post(f"/?{query}", content=tampered.encode(), headers=headers)
        replayed = await client.post(f"/?{query}", content=signed.body, headers=headers)
    assert (changed.status_code, changed.json()["Code"]) == (400, "SignatureDoesNotMatch")
    assert (replayed.status_code, replayed.json()["Code"]) == (400, "SignatureNonceUsed")
    assert len(server.sent) == 1


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
async def test_faults_apply_to_every_delivery_of_the_call(
    server: AliyunSmsServer, fault: Fault, kind: OutcomeKind, code: str
) -> None:
    server.inject(fault)
    async with aliyun(server) as provider:
        outcomes = await provider.send_batch([sms(1), sms(2)])
        [after] = await provider.send_batch([sms(3)])
    assert [(o.kind, o.code) for o in outcomes] == [(kind, code)] * 2
    if code == "429":
        assert {o.retry_after for o in outcomes} == {7}
    assert after.kind is OutcomeKind.SENT


async def test_drop_after_accept_was_sent(server: AliyunSmsServer) -> None:
    server.inject(Fault.drop_after_accept())
    [outcome] = await send(server, [sms(1)])
    assert outcome.kind is OutcomeKind.UNKNOWN and len(server.sent) == 1


async def test_a_burst_of_server_errors_is_retried_then_recovers(server: AliyunSmsServer) -> None:
    server.inject(Fault.burst(503, 5))
    async with aliyun(server) as provider:
        during = [(await provider.send_batch([sms(n)]))[0] for n in range(1, 6)]
        [after] = await provider.send_batch([sms(6)])
    assert [(o.kind, o.code) for o in during] == [(OutcomeKind.RETRY, "503")] * 5
    assert after.kind is OutcomeKind.SENT


# --- before any request ---------------------------------------------------------------------------


async def test_deliveries_without_a_usable_phone_never_reach_aliyun(server: AliyunSmsServer) -> None:
    outcomes = await send(server, [sms(1, contact={}), sms(2, contact={"phone": "call me"}), sms(3)])
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.PERMANENT, "no_address"),
        (OutcomeKind.INVALID_ADDRESS, "bad_address"),
        (OutcomeKind.SENT, ""),
    ]
    assert len(server.requests) == 1 and server.requests[0].query["Action"] == "SendSms"


async def test_a_template_without_a_code_is_permanent(server: AliyunSmsServer) -> None:
    options = {"template_code": None, "templates": {"other_sms": "SMS_200002"}}
    [outcome] = await send(server, [sms(1)], **options)
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "no_template")
    assert server.requests == []


def test_template_param_keeps_scalars_as_strings() -> None:
    assert template_param({"a": 1, "b": 2.5, "c": False, "d": "x", "e": {"n": 1}, "f": None}) == (
        '{"a":"1","b":"2.5","c":"false","d":"x"}'
    )
    assert template_param({}) == ""


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"access_key_id": None}, "access_key_id"),
        ({"access_key_secret": ""}, "access_key_secret"),
        ({"sign_name": None}, "sign_name"),
        ({"template_code": None}, "template_code"),
        ({"templates": ["SMS_1"]}, "templates"),
        ({"templates": {"welcome_sms": 5}}, "templates"),
        ({"batch_size": 101}, "batch_size"),
        ({"limit_retry_after": 0}, "limit_retry_after"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_option_errors_name_the_option(
    server: AliyunSmsServer, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=f"option '{named}'"):
        async with aliyun(server, **options):
            pass


def test_secret_options_are_declared() -> None:
    assert AliyunSmsProvider.secret_options == frozenset({"access_key_secret", "receipt_token"})
    assert AliyunSmsProvider.address_fields == ("phone",)


async def test_the_receipts_api_options_are_accepted(server: AliyunSmsServer) -> None:
    async with aliyun(server, receipt_token="r3ceipt") as provider:
        [outcome] = await provider.send_batch([sms(1)])
    assert outcome.kind is OutcomeKind.SENT
