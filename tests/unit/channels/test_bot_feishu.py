"""The Feishu group bot against the local Feishu stand-in, which recomputes every signature."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext, Rendered
from channels.bot_feishu import FeishuBotProvider, MsgType, build_body
from reach.clock import Clock, ManualClock, SystemClock
from tests.support.http_provider import Fault, Reply
from tests.support.providers.feishu import FeishuServer, code
from tests.unit.channels.factories import delivery

SECRET = "feishu-bot-secret"
HOOK_TOKEN = "feishu-hook-token"


@pytest.fixture
def server() -> Iterator[FeishuServer]:
    running = FeishuServer(keywords=())
    with running:
        yield running


async def make_provider(
    server: FeishuServer, clock: Clock | None = None, **options: Any
) -> FeishuBotProvider:
    merged = {
        k: v for k, v in {**server.provider_options(), "timeout": 1, **options}.items() if v is not None
    }
    context = ProviderContext(clock=clock or SystemClock())
    provider = FeishuBotProvider(ProviderConfig("feishu-1", "feishu_bot", options=merged), context)
    await provider.setup()
    return provider


@pytest.fixture
async def provider(server: FeishuServer) -> AsyncIterator[FeishuBotProvider]:
    running = await make_provider(server)
    yield running
    await running.close()


async def send_one(provider: FeishuBotProvider, item: Delivery | None = None) -> Outcome:
    [outcome] = await provider.send_batch([item or delivery(1, channel="feishu")])
    return outcome


# --- success ------------------------------------------------------------------------------------


@pytest.mark.parametrize("msg_type", list(MsgType))
async def test_sends_a_signed_message_of_each_type(server: FeishuServer, msg_type: MsgType) -> None:
    provider = await make_provider(server, msg_type=msg_type.value)
    try:
        outcome = await send_one(provider, delivery(1, title="Deploy", text="line one\nline two"))
    finally:
        await provider.close()
    assert outcome.kind is OutcomeKind.SENT
    [body] = server.delivered.items()
    assert body["msg_type"] == msg_type.value
    assert body["timestamp"].isdigit() and body["sign"]  # the server recomputed and accepted it
    if msg_type is MsgType.TEXT:
        assert body["content"] == {"text": "Deploy\nline one\nline two"}
    elif msg_type is MsgType.POST:
        post = body["content"]["post"]["zh_cn"]
        assert post["title"] == "Deploy"
        assert post["content"] == [
            [{"tag": "text", "text": "line one"}],
            [{"tag": "text", "text": "line two"}],
        ]
    else:
        assert body["card"]["header"]["title"]["content"] == "Deploy"
        assert body["card"]["elements"][0]["text"]["content"] == "line one\nline two"


async def test_a_bot_without_signing_gets_no_sign_fields() -> None:
    running = FeishuServer(secret=None)
    with running:
        provider = await make_provider(running)
        try:
            outcome = await send_one(provider)
        finally:
            await provider.close()
        [body] = running.delivered.items()
    assert outcome.kind is OutcomeKind.SENT
    assert "sign" not in body and "timestamp" not in body


async def test_bots_need_no_address(provider: FeishuBotProvider, server: FeishuServer) -> None:
    assert FeishuBotProvider.address_fields == ()
    outcome = await send_one(provider, delivery(1, contact={}))
    assert outcome.kind is OutcomeKind.SENT


# --- refusals -----------------------------------------------------------------------------------


async def test_a_wrong_secret_is_a_permanent_19021_without_secrets(server: FeishuServer) -> None:
    provider = await make_provider(server, secret="not-the-secret")
    try:
        outcome = await send_one(provider)
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "19021")
    assert "not-the-secret" not in outcome.detail and HOOK_TOKEN not in outcome.detail
    assert server.delivered.items() == []


async def test_a_clock_more_than_an_hour_off_is_refused(server: FeishuServer) -> None:
    provider = await make_provider(server, ManualClock(SystemClock().now_ms() - 3_700_000))
    try:
        outcome = await send_one(provider)
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "19021")


async def test_a_wrong_hook_token_is_permanent(server: FeishuServer) -> None:
    provider = await make_provider(server, hook_token="some-other-hook")
    try:
        outcome = await send_one(provider)
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "19001")
    assert "some-other-hook" not in outcome.detail


async def test_keywords_are_checked() -> None:
    running = FeishuServer(keywords=("Alert",))
    with running:
        provider = await make_provider(running)
        try:
            missing = await send_one(provider, delivery(1, title="Hello", text="no keyword"))
            present = await send_one(provider, delivery(2, title="Alert", text="disk full"))
        finally:
            await provider.close()
    assert (missing.kind, missing.code) == (OutcomeKind.PERMANENT, "19024")
    assert present.kind is OutcomeKind.SENT


@pytest.mark.parametrize(
    ("reply", "kind", "code_", "retry_after"),
    [
        (
            code(11232, "frequency limited psm[lark.oapi.app_platform_runtime]"),
            OutcomeKind.RETRY,
            "11232",
            60,
        ),
        (code(9499, "too many request", 429), OutcomeKind.RETRY, "9499", 60),
        (code(9499, "Bad Request", 400), OutcomeKind.PERMANENT, "9499", None),
        (code(19022, "Ip Not Allowed"), OutcomeKind.PERMANENT, "19022", None),
        (code(230001, "some new error"), OutcomeKind.PERMANENT, "230001", None),
        (Reply(200, json={"StatusCode": 0, "StatusMessage": "success"}), OutcomeKind.SENT, "", None),
        (Reply(200, body=b"<html>"), OutcomeKind.UNKNOWN, "bad_response", None),
    ],
)
async def test_answers_are_classified(
    provider: FeishuBotProvider,
    server: FeishuServer,
    reply: Reply,
    kind: OutcomeKind,
    code_: str,
    retry_after: float | None,
) -> None:
    server.answer_next(reply)
    outcome = await send_one(provider)
    assert (outcome.kind, outcome.code, outcome.retry_after) == (kind, code_, retry_after)


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "code_"),
    [
        (Fault.timeout(2), OutcomeKind.UNKNOWN, "timeout"),
        (Fault.reset(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.drop_after_accept(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.status(429, headers={"Retry-After": "7"}), OutcomeKind.RETRY, "429"),
        (Fault.status(500), OutcomeKind.RETRY, "500"),
    ],
)
async def test_faults_are_classified(
    provider: FeishuBotProvider, server: FeishuServer, fault: Fault, kind: OutcomeKind, code_: str
) -> None:
    server.inject(fault)
    outcome = await send_one(provider)
    assert (outcome.kind, outcome.code) == (kind, code_)
    assert HOOK_TOKEN not in outcome.detail
    if code_ == "429":
        assert outcome.retry_after == 7
    assert (await send_one(provider, delivery(2))).kind is OutcomeKind.SENT


async def test_a_burst_of_5xx_retries_then_recovers(
    provider: FeishuBotProvider, server: FeishuServer
) -> None:
    server.inject(Fault.burst(503, 3))
    outcomes = [await send_one(provider, delivery(n)) for n in range(1, 5)]
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 3 + [OutcomeKind.SENT]


# --- the stand-in itself ------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["sign", "timestamp"])
async def test_the_server_refuses_a_tampered_signature(server: FeishuServer, tamper: str) -> None:
    now = int(time.time())
    body = build_body(Rendered("t", "x"), MsgType.TEXT, SECRET, now)
    if tamper == "sign":
        body["sign"] = body["sign"][:-4] + "AAA="
    else:
        body["timestamp"] = str(now - 1)  # the sign no longer matches it
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.post(f"/open-apis/bot/v2/hook/{HOOK_TOKEN}", json=body)
    assert response.json()["code"] == 19021
    assert server.delivered.items() == []


async def test_bad_options_name_the_option(server: FeishuServer) -> None:
    with pytest.raises(ValueError, match="option 'msg_type' must be one of text, post, interactive"):
        await make_provider(server, msg_type="image")
    with pytest.raises(ValueError, match="option 'hook_token' is required"):
        await make_provider(server, hook_token=None)
