"""The signed webhook against a receiver that verifies signatures with its own code."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.config import ChannelConfig
from channels.webhook import WebhookProvider, sign, verify_signature
from reach.runtime import chooser_for
from tests.support.http_provider import Fault, Reply
from tests.support.providers.webhook import WebhookServer
from tests.unit.channels.factories import delivery

SECRET = "webhook-signing-secret"


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    running = WebhookServer()
    with running:
        yield running


async def make_provider(server: WebhookServer, **options: Any) -> WebhookProvider:
    merged = {
        k: v for k, v in {**server.provider_options(), "timeout": 1, **options}.items() if v is not None
    }
    provider = WebhookProvider(ProviderConfig("webhook-1", "webhook", options=merged), ProviderContext())
    await provider.setup()
    return provider


@pytest.fixture
async def provider(server: WebhookServer) -> AsyncIterator[WebhookProvider]:
    running = await make_provider(server)
    yield running
    await running.close()


async def send_one(provider: WebhookProvider, item: Delivery | None = None) -> Outcome:
    [outcome] = await provider.send_batch([item or delivery(1, channel="webhook")])
    return outcome


# --- success ------------------------------------------------------------------------------------


async def test_posts_the_signed_document(provider: WebhookProvider, server: WebhookServer) -> None:
    item = delivery(1, channel="webhook", title="Hi", text="Hello", html="<p>Hello</p>")
    outcome = await send_one(provider, item)
    assert (outcome.kind, outcome.provider_message_id) == (OutcomeKind.SENT, "rcv-1")
    [request] = server.requests
    message = item.message
    assert request.headers["idempotency-key"] == message.message_id
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-reach-signature"].startswith("v1=")  # the server verified it
    assert request.json() == {
        "version": 1,
        "message_id": message.message_id,
        "user_id": "user-1",
        "rule_id": "welcome",
        "channel": "webhook",
        "template": "welcome_email",
        "event_id": "event-1",
        "event_name": "signup",
        "event_ts": 1_700_000_000_000,
        "created_ts": 1_700_000_000_500,
        "attempt": 1,
        "priority": 5,
        "title": "Hi",
        "text": "Hello",
        "html": "<p>Hello</p>",
        "variables": {"first_name": "Ada"},
        "contact": {},
    }


async def test_contact_fields_are_sent_only_when_named(server: WebhookServer) -> None:
    provider = await make_provider(server, contact_fields=["email", "phone"])
    try:
        await send_one(provider, delivery(1, contact={"email": "ada@example.org", "wechat_openid": "o-1"}))
    finally:
        await provider.close()
    [body] = server.delivered.items()
    assert body["contact"] == {"email": "ada@example.org"}


async def test_static_headers_are_sent(server: WebhookServer) -> None:
    provider = await make_provider(server, headers={"Authorization": "Bearer rcv-token", "X-Tenant": "acme"})
    try:
        await send_one(provider)
    finally:
        await provider.close()
    [request] = server.requests
    assert (request.headers["authorization"], request.headers["x-tenant"]) == ("Bearer rcv-token", "acme")


@pytest.mark.parametrize("reply", [Reply(200, json={"ok": True}), Reply(202, body=b"queued"), Reply(204)])
async def test_without_a_receipt_id_the_message_id_is_the_provider_id(
    provider: WebhookProvider, server: WebhookServer, reply: Reply
) -> None:
    server.answer_next(reply)
    item = delivery(1)
    outcome = await send_one(provider, item)
    assert (outcome.kind, outcome.provider_message_id) == (OutcomeKind.SENT, item.message.message_id)


# --- idempotency --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.drop_after_accept(), "disconnected"),
        (Fault.timeout(2), "timeout"),
        (Fault.reset(), "disconnected"),
    ],
)
async def test_lost_answers_are_retried_and_the_receiver_dedupes(
    provider: WebhookProvider, server: WebhookServer, fault: Fault, code: str
) -> None:
    server.inject(fault)
    item = delivery(1)
    lost = await send_one(provider, item)
    assert (lost.kind, lost.code) == (OutcomeKind.RETRY, code)
    again = await send_one(provider, Delivery(item.message.replace(attempt=2), item.content))
    assert again.kind is OutcomeKind.SENT
    assert len(server.delivered) == 1
    if fault.kind.value == "drop_after_accept":  # the receiver saw both attempts, with one key
        assert server.idempotency_keys == [item.message.message_id] * 2
        assert again.provider_message_id == "rcv-1"


# --- the receiver's statuses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "kind", "code", "retry_after"),
    [
        (Reply(429, headers={"Retry-After": "7"}), OutcomeKind.RETRY, "429", 7),
        (Reply(503, headers={"Retry-After": "30"}), OutcomeKind.RETRY, "503", 30),
        (Reply(500), OutcomeKind.RETRY, "500", None),
        (Reply(408), OutcomeKind.RETRY, "408", None),
        (Reply(409, headers={"Retry-After": "2"}), OutcomeKind.RETRY, "409", 2),
        (Reply(410), OutcomeKind.PERMANENT, "410", None),
        (Reply(400, json={"error": "bad payload"}), OutcomeKind.PERMANENT, "400", None),
        (Reply(422), OutcomeKind.PERMANENT, "422", None),
        (Reply(302, headers={"Location": "https://elsewhere.example/"}), OutcomeKind.PERMANENT, "302", None),
    ],
)
async def test_statuses_are_classified(
    provider: WebhookProvider,
    server: WebhookServer,
    reply: Reply,
    kind: OutcomeKind,
    code: str,
    retry_after: float | None,
) -> None:
    server.answer_next(reply)
    outcome = await send_one(provider)
    assert (outcome.kind, outcome.code, outcome.retry_after) == (kind, code, retry_after)
    assert len(server.requests) == 1  # a redirect is not followed


async def test_a_burst_of_5xx_retries_then_recovers(provider: WebhookProvider, server: WebhookServer) -> None:
    server.inject(Fault.burst(502, 3))
    outcomes = [await send_one(provider, delivery(n)) for n in range(1, 5)]
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 3 + [OutcomeKind.SENT]


async def test_a_wrong_secret_is_refused_and_never_shown(server: WebhookServer) -> None:
    provider = await make_provider(server, secret="not-the-secret")
    try:
        outcome = await send_one(provider)
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "401")
    assert "not-the-secret" not in outcome.detail
    assert server.delivered.items() == []


async def test_a_stale_clock_is_refused(provider: WebhookProvider) -> None:
    provider.clock = lambda: time.time() - 301
    outcome = await send_one(provider)
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "401")


@pytest.mark.parametrize("tamper", ["signature", "timestamp", "body"])
async def test_the_server_refuses_a_tampered_request(server: WebhookServer, tamper: str) -> None:
    body = orjson.dumps({"message_id": "m-1"})
    timestamp = str(int(time.time()))
    headers = {"X-Reach-Timestamp": timestamp, "X-Reach-Signature": f"v1={sign(SECRET, timestamp, body)}"}
    if tamper == "signature":
        headers["X-Reach-Signature"] = "v1=" + "0" * 64
    elif tamper == "timestamp":
        headers["X-Reach-Timestamp"] = str(int(timestamp) - 1)
    else:
        body = body.replace(b"m-1", b"m-2")
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.post(server.path, content=body, headers=headers)
    assert response.status_code == 401
    assert server.delivered.items() == []


# --- verify_signature ---------------------------------------------------------------------------

BODY = b'{"message_id":"m-1"}'
NOW = 1_700_000_000


def header_for(body: bytes = BODY, timestamp: str = str(NOW), secret: str = SECRET) -> str:
    return f"v1={sign(secret, timestamp, body)}"


def test_sign_is_hex_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, str(NOW), BODY) == expected == sign(SECRET.encode(), str(NOW), BODY)


@pytest.mark.parametrize(
    ("timestamp", "body", "header", "now", "valid"),
    [
        (str(NOW), BODY, header_for(), NOW, True),
        (str(NOW), BODY, header_for(), NOW + 300, True),
        (str(NOW), BODY, header_for(), NOW - 300, True),
        (str(NOW), BODY, header_for(), NOW + 301, False),  # a replay of an old request
        (str(NOW), BODY, header_for(), NOW - 301, False),
        (str(NOW), BODY + b" ", header_for(), NOW, False),
        (str(NOW + 1), BODY, header_for(), NOW, False),
        (str(NOW), BODY, header_for(secret="other"), NOW, False),
        (str(NOW), BODY, f"v0={sign(SECRET, str(NOW), BODY)}", NOW, False),
        (str(NOW), BODY, f"v1=x, {header_for()}", NOW, True),  # several signatures: one suffices
        (str(NOW), BODY, header_for().upper(), NOW, False),
        (str(NOW), BODY, "", NOW, False),
        (str(NOW), BODY, "v1=é", NOW, False),
        ("", BODY, header_for(), NOW, False),
        ("-1", BODY, header_for(timestamp="-1"), NOW, False),
        ("\u0661\u0667\u0660\u0660", BODY, header_for(), NOW, False),  # Arabic-Indic digits
    ],
)
def test_verify_signature(timestamp: str, body: bytes, header: str, now: float, valid: bool) -> None:
    assert verify_signature(SECRET, timestamp, body, header, now) is valid


def test_verify_signature_takes_a_tolerance() -> None:
    assert verify_signature(SECRET, str(NOW), BODY, header_for(), NOW + 1000, tolerance=1000)
    assert not verify_signature(SECRET, str(NOW), BODY, header_for(), NOW + 1001, tolerance=1000)


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_url": None}, "option 'base_url' is required"),
        ({"base_url": "ftp://x"}, "option 'base_url' must be an http:// or https:// URL"),
        ({"secret": None}, "option 'secret' is required"),
        ({"path": "hooks"}, "option 'path' must start with '/'"),
        ({"headers": {"X-Reach-Signature": "v1=forged"}}, "option 'headers' may not set 'X-Reach-Signature'"),
        ({"headers": {"Idempotency-Key": "k"}}, "option 'headers' may not set"),
        ({"headers": {"Bad Name": "x"}}, "option 'headers' may not set 'Bad Name'"),
        ({"headers": {"X-Ok": "a\r\nX-Injected: 1"}}, "option 'headers' value of 'X-Ok' must be a one-line"),
        ({"contact_fields": "email"}, "option 'contact_fields' must be a list"),
    ],
)
async def test_bad_options_name_the_option(
    server: WebhookServer, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await make_provider(server, **options)


def test_secrets_are_declared() -> None:
    assert WebhookProvider.secret_options == {"secret", "headers"}
    assert WebhookProvider.idempotent


def test_the_fields_contact_fields_names_are_what_its_outbox_records_carry() -> None:
    config = ProviderConfig(
        "hook", "webhook", options={"base_url": "https://h.example", "contact_fields": ["email"]}
    )
    assert WebhookProvider.contact_fields(config) == ("email",)
    chooser = chooser_for(ChannelConfig("hooks", 1.0, None, (config,)))
    assert chooser.contact_for({"email": "a@b.c", "phone": "+1555"}) == {"email": "a@b.c"}
    assert chooser.can_reach({})
    with pytest.raises(ValueError, match="contact_fields"):
        WebhookProvider.contact_fields(ProviderConfig("hook", "webhook", options={"contact_fields": "email"}))
