"""The DingTalk group bot against the local DingTalk stand-in, which recomputes every signature."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.bot_dingtalk import DingtalkBotProvider, query
from reach.clock import Clock, ManualClock, SystemClock
from tests.support.http_provider import Fault, Reply
from tests.support.providers.dingtalk import DingtalkServer, errcode
from tests.unit.channels.factories import delivery

SECRET = "SECdingtalk-bot-secret"
ACCESS_TOKEN = "dingtalk-access-token"


@pytest.fixture
def server() -> Iterator[DingtalkServer]:
    running = DingtalkServer()
    with running:
        yield running


async def make_provider(
    server: DingtalkServer, clock: Clock | None = None, **options: Any
) -> DingtalkBotProvider:
    merged = {
        k: v for k, v in {**server.provider_options(), "timeout": 1, **options}.items() if v is not None
    }
    provider = DingtalkBotProvider(
        ProviderConfig("dingtalk-1", "dingtalk_bot", options=merged),
        ProviderContext(clock=clock or SystemClock()),
    )
    await provider.setup()
    return provider


@pytest.fixture
async def provider(server: DingtalkServer) -> AsyncIterator[DingtalkBotProvider]:
    running = await make_provider(server)
    yield running
    await running.close()


async def send_one(provider: DingtalkBotProvider, item: Delivery | None = None) -> Outcome:
    [outcome] = await provider.send_batch([item or delivery(1, channel="dingtalk")])
    return outcome


# --- success ------------------------------------------------------------------------------------


async def test_sends_a_signed_markdown_message(provider: DingtalkBotProvider, server: DingtalkServer) -> None:
    outcome = await send_one(provider, delivery(1, title="Deploy", text="**done** in 3 min"))
    assert outcome.kind is OutcomeKind.SENT
    [body] = server.delivered.items()
    assert body == {
        "msgtype": "markdown",
        "markdown": {"title": "Deploy", "text": "#### Deploy\n\n**done** in 3 min"},
    }
    [request] = server.requests
    assert request.query["timestamp"].isdigit()
    assert request.query["sign"]  # the server recomputed and accepted it


async def test_signatures_with_plus_and_slash_survive_url_encoding(server: DingtalkServer) -> None:
    """base64 has ``+``, ``/`` and ``=``: left unencoded, ``+`` would arrive as a space."""
    clock = ManualClock(SystemClock().now_ms())
    provider = await make_provider(server, clock)
    outcomes = []
    try:
        for n in range(40):
            outcomes.append(await send_one(provider, delivery(n)))
            clock.advance(1)  # a new signature per message
    finally:
        await provider.close()
    signs = [r.query["sign"] for r in server.requests]
    assert any("+" in s for s in signs) and any("/" in s for s in signs)
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}


async def test_text_with_mentions(server: DingtalkServer) -> None:
    provider = await make_provider(server, msgtype="text", at_mobiles="13800000000, 13900000000")
    try:
        outcome = await send_one(provider, delivery(1, title="Alert", text="disk full"))
    finally:
        await provider.close()
    assert outcome.kind is OutcomeKind.SENT
    [body] = server.delivered.items()
    assert body["text"] == {"content": "Alert\ndisk full\n@13800000000 @13900000000"}
    assert body["at"] == {"atMobiles": ["13800000000", "13900000000"], "isAtAll": False}


async def test_a_bot_without_signing_sends_no_sign() -> None:
    running = DingtalkServer(secret=None)
    with running:
        provider = await make_provider(running)
        try:
            outcome = await send_one(provider)
        finally:
            await provider.close()
        [request] = running.requests
    assert outcome.kind is OutcomeKind.SENT
    assert set(request.query) == {"access_token"}


# --- refusals -----------------------------------------------------------------------------------


async def test_a_wrong_secret_is_a_permanent_310000_without_secrets(server: DingtalkServer) -> None:
    provider = await make_provider(server, secret="SECnot-the-secret")
    try:
        outcome = await send_one(provider)
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "310000")
    assert "sign not match" in outcome.detail
    assert "SECnot-the-secret" not in outcome.detail and ACCESS_TOKEN not in outcome.detail


async def test_a_clock_more_than_an_hour_off_is_refused(server: DingtalkServer) -> None:
    provider = await make_provider(server, ManualClock(SystemClock().now_ms() + 3_700_000))
    try:
        outcome = await send_one(provider)
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "310000")
    assert "invalid timestamp" in outcome.detail


async def test_a_wrong_access_token_is_permanent(server: DingtalkServer) -> None:
    provider = await make_provider(server, access_token="some-other-token")
    try:
        outcome = await send_one(provider)
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "300001")
    assert "some-other-token" not in outcome.detail


async def test_keywords_are_checked() -> None:
    running = DingtalkServer(keywords=("Alert",))
    with running:
        provider = await make_provider(running)
        try:
            missing = await send_one(provider, delivery(1, title="Hello", text="no keyword"))
            present = await send_one(provider, delivery(2, title="Alert", text="disk full"))
        finally:
            await provider.close()
    assert (missing.kind, missing.code) == (OutcomeKind.PERMANENT, "310000")
    assert "keywords not in content" in missing.detail
    assert present.kind is OutcomeKind.SENT


@pytest.mark.parametrize(
    ("reply", "kind", "code", "retry_after"),
    [
        (errcode(130101, "send too fast, exceed 20 times per minute"), OutcomeKind.RETRY, "130101", 600),
        (errcode(410100, "发送速度太快而限流"), OutcomeKind.RETRY, "410100", 600),
        (errcode(-1, "系统繁忙"), OutcomeKind.RETRY, "-1", None),
        (errcode(400102, "bot is stopped"), OutcomeKind.PERMANENT, "400102", None),
        (errcode(400013, "群已被解散"), OutcomeKind.PERMANENT, "400013", None),
        (errcode(460101, "message too long, exceed 20000 bytes"), OutcomeKind.PERMANENT, "460101", None),
        (Reply(200, body=b"<html>"), OutcomeKind.UNKNOWN, "bad_response", None),
    ],
)
async def test_answers_are_classified(
    provider: DingtalkBotProvider,
    server: DingtalkServer,
    reply: Reply,
    kind: OutcomeKind,
    code: str,
    retry_after: float | None,
) -> None:
    server.answer_next(reply)
    outcome = await send_one(provider)
    assert (outcome.kind, outcome.code, outcome.retry_after) == (kind, code, retry_after)


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        (Fault.timeout(2), OutcomeKind.UNKNOWN, "timeout"),
        (Fault.reset(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.drop_after_accept(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.status(429, headers={"Retry-After": "7"}), OutcomeKind.RETRY, "429"),
        (Fault.status(502), OutcomeKind.RETRY, "502"),
    ],
)
async def test_faults_are_classified(
    provider: DingtalkBotProvider, server: DingtalkServer, fault: Fault, kind: OutcomeKind, code: str
) -> None:
    server.inject(fault)
    outcome = await send_one(provider)
    assert (outcome.kind, outcome.code) == (kind, code)
    assert ACCESS_TOKEN not in outcome.detail
    if code == "429":
        assert outcome.retry_after == 7
    assert (await send_one(provider, delivery(2))).kind is OutcomeKind.SENT


async def test_a_burst_of_5xx_retries_then_recovers(
    provider: DingtalkBotProvider, server: DingtalkServer
) -> None:
    server.inject(Fault.burst(503, 3))
    outcomes = [await send_one(provider, delivery(n)) for n in range(1, 5)]
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 3 + [OutcomeKind.SENT]


# --- the stand-in itself ------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["sign", "timestamp", "raw_plus"])
async def test_the_server_refuses_a_tampered_signature(server: DingtalkServer, tamper: str) -> None:
    now_ms = int(time.time() * 1000)
    params = query(ACCESS_TOKEN, SECRET, now_ms)
    if tamper == "sign":
        params["sign"] = "A" + params["sign"][1:]
    elif tamper == "timestamp":
        params["timestamp"] = str(now_ms - 1)
    body = {"msgtype": "text", "text": {"content": "hi"}}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        if tamper == "raw_plus":  # a '+' left unencoded reaches the server as a space
            url = f"/robot/send?access_token={ACCESS_TOKEN}&timestamp={now_ms}&sign=a+b"
            response = await client.post(url, json=body)
        else:
            response = await client.post("/robot/send", params=params, json=body)
    assert (response.json()["errcode"], response.json()["errmsg"]) == (310000, "sign not match")
    assert server.delivered.items() == []


async def test_bad_options_name_the_option(server: DingtalkServer) -> None:
    with pytest.raises(ValueError, match="option 'msgtype' must be one of text, markdown"):
        await make_provider(server, msgtype="actionCard")
    with pytest.raises(ValueError, match="option 'access_token' is required"):
        await make_provider(server, access_token=None)
    with pytest.raises(ValueError, match="option 'at_mobiles' must hold mobile numbers"):
        await make_provider(server, at_mobiles=["boss"])
