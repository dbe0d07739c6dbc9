"""Twilio SMS against a local Messages API that checks Basic auth and the form."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.sms_twilio import TwilioSmsProvider
from tests.support.http_provider import Fault
from tests.support.providers.twilio import TwilioServer
from tests.unit.channels.factories import delivery


def sms(n: int, **overrides: Any) -> Delivery:
    fields: dict[str, Any] = {
        "channel": "sms",
        "provider": "twilio-1",
        "template": "welcome_sms",
        "contact": {"phone": f"+1415555{n:04d}"},
    }
    fields.update(overrides)
    return delivery(n, **fields)


@pytest.fixture
def server() -> Iterator[TwilioServer]:
    running = TwilioServer()
    with running:
        yield running


@contextlib.asynccontextmanager
async def twilio(server: TwilioServer, **options: Any) -> AsyncIterator[TwilioSmsProvider]:
    merged = {**server.provider_options(), "timeout": 1, **options}
    merged = {key: value for key, value in merged.items() if value is not None}
    provider = TwilioSmsProvider(ProviderConfig("twilio-1", "twilio_sms", options=merged), ProviderContext())
    await provider.setup()
    try:
        yield provider
    finally:
        await provider.close()


async def send(server: TwilioServer, deliveries: list[Delivery], **options: Any) -> list[Outcome]:
    async with twilio(server, **options) as provider:
        return await provider.send_batch(deliveries)


def assert_clean(outcome: Outcome, server: TwilioServer) -> None:
    for forbidden in (server.auth_token, server.api_key_secret, "5550001", "wrong-token"):
        assert forbidden not in outcome.detail


# --- sending --------------------------------------------------------------------------------------


async def test_a_delivery_becomes_a_message_with_its_text_and_callback(server: TwilioServer) -> None:
    message = sms(1, text="Hello Ada, your code is 1234.")
    callback = "https://hooks.reach.test/twilio/status/{message_id}"
    [outcome] = await send(server, [message], status_callback_url=callback)
    assert outcome.kind is OutcomeKind.SENT
    [sent] = server.sent
    assert outcome.provider_message_id == sent.sid and sent.sid.startswith("SM") and len(sent.sid) == 34
    assert (sent.to, sent.from_, sent.body) == (
        "+14155550001",
        "+15005550006",
        "Hello Ada, your code is 1234.",
    )
    assert sent.status_callback == callback.format(message_id=message.message.message_id)
    assert sent.username == server.account_sid


async def test_api_key_and_messaging_service(server: TwilioServer) -> None:
    options = {
        "auth_token": None,
        "from_number": None,
        "api_key_sid": server.api_key_sid,
        "api_key_secret": server.api_key_secret,
        "messaging_service_sid": server.messaging_service_sid,
    }
    [outcome] = await send(server, [sms(1)], **options)
    assert outcome.kind is OutcomeKind.SENT
    [sent] = server.sent
    assert (sent.username, sent.messaging_service_sid, sent.from_) == (
        server.api_key_sid,
        server.messaging_service_sid,
        None,
    )


async def test_each_delivery_is_its_own_request(server: TwilioServer) -> None:
    outcomes = await send(server, [sms(n) for n in range(1, 6)])
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 5
    assert len(server.requests) == 5
    by_phone = {s.to: s.sid for s in server.sent}
    assert [o.provider_message_id for o in outcomes] == [by_phone[f"+1415555{n:04d}"] for n in range(1, 6)]


# --- classification through the wire -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "retry_after"),
    [
        (21211, OutcomeKind.INVALID_ADDRESS, None),
        (21614, OutcomeKind.INVALID_ADDRESS, None),
        (21610, OutcomeKind.INVALID_ADDRESS, None),
        (20429, OutcomeKind.RETRY, 3),
        (14107, OutcomeKind.RETRY, 3),
        (20500, OutcomeKind.RETRY, None),
        (20503, OutcomeKind.RETRY, None),
        (21408, OutcomeKind.PERMANENT, None),
        (20003, OutcomeKind.PERMANENT, None),
    ],
)
async def test_error_codes_are_classified(
    server: TwilioServer, code: int, kind: OutcomeKind, retry_after: float | None
) -> None:
    server.fail_number("+14155550001", code)
    [outcome] = await send(server, [sms(1)])
    assert (outcome.kind, outcome.code, outcome.retry_after) == (kind, str(code), retry_after)
    assert_clean(outcome, server)
    assert server.sent == []


async def test_a_number_that_is_not_e164_is_refused_as_invalid(server: TwilioServer) -> None:
    [outcome] = await send(server, [sms(1, contact={"phone": "0415 555 0001"})])
    assert (outcome.kind, outcome.code) == (OutcomeKind.INVALID_ADDRESS, "21211")
    assert "0415" not in outcome.detail and "5550001" not in outcome.detail


async def test_a_text_over_1600_characters_is_permanent(server: TwilioServer) -> None:
    [outcome] = await send(server, [sms(1, text="x" * 1601)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "21617")


# --- credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"auth_token": "wrong-token"},
        {"auth_token": None, "api_key_sid": "SK" + "0" * 32, "api_key_secret": "wrong-token"},
    ],
)
async def test_wrong_credentials_are_refused_and_reported_as_configuration(
    server: TwilioServer, options: dict[str, Any]
) -> None:
    with capture_logs() as logs:
        [outcome] = await send(server, [sms(1)], **options)
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "20003")
    assert outcome.detail.startswith("configuration:")
    assert_clean(outcome, server)
    assert [e["event"] for e in logs] == ["sms_provider_misconfigured"] and "wrong-token" not in str(logs)
    assert server.sent == []


async def test_credentials_of_another_account_are_refused(server: TwilioServer) -> None:
    [outcome] = await send(server, [sms(1)], account_sid="AC" + "9" * 32, auth_token=server.auth_token)
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "20003")


async def test_a_sender_the_account_does_not_own_is_configuration(server: TwilioServer) -> None:
    [outcome] = await send(server, [sms(1)], from_number="+15005550009")
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "21606")
    assert outcome.detail.startswith("configuration:")


async def test_the_server_refuses_tampered_credentials(server: TwilioServer) -> None:
    path = f"/2010-04-01/Accounts/{server.account_sid}/Messages.json"
    form = {"To": "+14155550001", "From": server.from_number, "Body": "hi"}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        anonymous = await client.post(path, data=form)
        tampered = await client.post(path, data=form, auth=(server.account_sid, server.auth_token + "x"))
        swapped = await client.post(path, data=form, auth=(server.account_sid, server.api_key_secret))
        good = await client.post(path, data=form, auth=(server.account_sid, server.auth_token))
    for refused in (anonymous, tampered, swapped):
        assert (refused.status_code, refused.json()["code"]) == (401, 20003)
        assert refused.headers["www-authenticate"].startswith("Basic")
    assert good.status_code == 201 and good.json()["status"] == "queued"


# --- transport faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        (Fault.timeout(3), OutcomeKind.UNKNOWN, "timeout"),
        (Fault.reset(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.drop_after_accept(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.status(429, json={"code": 20429, "message": "Too Many Requests", "status": 429},
                      headers={"Retry-After": "7"}), OutcomeKind.RETRY, "20429"),
        (Fault.status(429, headers={"Retry-After": "7"}), OutcomeKind.RETRY, "429"),
        (Fault.status(502), OutcomeKind.RETRY, "502"),
    ],
)  # fmt: skip
async def test_faults_are_classified(
    server: TwilioServer, fault: Fault, kind: OutcomeKind, code: str
) -> None:
    server.inject(fault)
    async with twilio(server) as provider:
        [outcome] = await provider.send_batch([sms(1)])
        [after] = await provider.send_batch([sms(2)])
    assert (outcome.kind, outcome.code) == (kind, code)
    if kind is OutcomeKind.RETRY and code.startswith("4"):
        assert outcome.retry_after == 7
    assert after.kind is OutcomeKind.SENT


async def test_drop_after_accept_was_sent(server: TwilioServer) -> None:
    server.inject(Fault.drop_after_accept())
    [outcome] = await send(server, [sms(1)])
    assert outcome.kind is OutcomeKind.UNKNOWN and len(server.sent) == 1


async def test_a_burst_of_server_errors_is_retried_then_recovers(server: TwilioServer) -> None:
    server.inject(Fault.burst(503, 5))
    outcomes = await send(server, [sms(n) for n in range(1, 7)], concurrency=1)
    assert [(o.kind, o.code) for o in outcomes[:5]] == [(OutcomeKind.RETRY, "503")] * 5
    assert outcomes[5].kind is OutcomeKind.SENT


# --- before any request ---------------------------------------------------------------------------


async def test_unsendable_deliveries_never_reach_twilio(server: TwilioServer) -> None:
    outcomes = await send(server, [sms(1, contact={}), sms(2, text=" "), sms(3)])
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.PERMANENT, "no_address"),
        (OutcomeKind.PERMANENT, "empty_body"),
        (OutcomeKind.SENT, ""),
    ]
    assert len(server.requests) == 1


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"account_sid": None}, "account_sid"),
        ({"auth_token": None}, "auth_token"),
        ({"api_key_sid": "SK1"}, "api_key_secret"),
        ({"api_key_secret": "s"}, "api_key_sid"),
        ({"from_number": None}, "from_number"),
        ({"status_callback_url": "ftp://x/{message_id}"}, "status_callback_url"),
        ({"status_callback_url": "https://x/{user_id}"}, "status_callback_url"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_option_errors_name_the_option(
    server: TwilioServer, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=f"option '{named}'"):
        async with twilio(server, **options):
            pass


def test_secret_options_are_declared() -> None:
    assert TwilioSmsProvider.secret_options == frozenset(
        {"auth_token", "api_key_secret", "webhook_shared_keys"}
    )
    assert TwilioSmsProvider.address_fields == ("phone",)


async def test_the_receipts_api_options_are_accepted(server: TwilioServer) -> None:
    async with twilio(
        server,
        receipt_url="https://reach.example.com/v1/receipts/twilio-1",
        inbound_url="https://reach.example.com/v1/inbound/twilio-1",
        webhook_shared_keys={"webhooks_sharedkey_1": "s"},
    ) as provider:
        [outcome] = await provider.send_batch([sms(1)])
    assert outcome.kind is OutcomeKind.SENT


async def test_an_api_key_wins_over_the_auth_token_kept_for_receipts(server: TwilioServer) -> None:
    options = {"api_key_sid": server.api_key_sid, "api_key_secret": server.api_key_secret}
    [outcome] = await send(server, [sms(1)], **options)
    assert outcome.kind is OutcomeKind.SENT and server.sent[0].username == server.api_key_sid
