"""The APNs provider against the local HTTP/2 server, which checks what Apple checks."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import structlog

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.push_apns import ApnsProvider, apns_id
from reach.clock import ManualClock, SystemClock
from tests.support.http_provider import Fault
from tests.support.providers.apns import ApnsServer, device_token, throwaway_p8
from tests.support.tls import SelfSignedCert
from tests.unit.channels.factories import delivery


def manual_clock() -> ManualClock:
    """Now, to the second, moving only when a test says so (shared by provider and server)."""
    return ManualClock(int(time.time()) * 1000)


@pytest.fixture
def server(tls_cert: SelfSignedCert) -> Iterator[ApnsServer]:
    running = ApnsServer(tls_cert)
    with running:
        yield running


@contextlib.asynccontextmanager
async def apns(
    server: ApnsServer, clock: ManualClock | None = None, **options: Any
) -> AsyncIterator[ApnsProvider]:
    """A set-up provider sending to ``server`` (``options`` override), closed after."""
    merged = {**server.provider_options(), "timeout": 1, **options}
    context = ProviderContext(clock=clock or SystemClock())
    provider = ApnsProvider(ProviderConfig("apns-1", "apns", options=merged), context)
    try:
        await provider.setup()
        yield provider
    finally:
        await provider.close()


def push(n: int = 1, token: str | None = None, **overrides: Any) -> Delivery:
    return delivery(
        n,
        contact={"apns_token": token or device_token(n)},
        channel="push",
        provider="apns-1",
        platform="ios",
        **overrides,
    )


# --- success and the provider token ------------------------------------------------------------


async def test_sends_over_http2_with_a_verified_provider_token(server: ApnsServer) -> None:
    created = int(time.time()) * 1000
    async with apns(server) as provider:
        [outcome] = await provider.send_batch([push(1, created_ts=created)])

    message_id = push(1).message.message_id
    assert (outcome.kind, outcome.provider_message_id) == (OutcomeKind.SENT, apns_id(message_id))
    [request] = server.accepted
    assert request.http_version == "2"
    assert request.path == f"/3/device/{device_token(1)}"
    headers = request.headers
    assert headers["apns-topic"] == "com.example.reach"
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-id"] == apns_id(message_id)
    assert headers["apns-expiration"] == str(created // 1000 + 86_400)
    scheme, _, token = headers["authorization"].partition(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "KEY1234567"}
    claims = jwt.decode(token, server.key.public_key(), algorithms=["ES256"])
    assert set(claims) == {"iss", "iat"}
    assert claims["iss"] == "TEAM123456"
    assert abs(claims["iat"] - time.time()) < 60
    assert request.json() == {
        "aps": {"alert": {"title": "Welcome #1", "body": "Hello Ada, this is message 1."}},
        "message_id": message_id,
    }


async def test_one_provider_token_serves_many_sends(server: ApnsServer) -> None:
    async with apns(server) as provider:
        outcomes = await provider.send_batch([push(n) for n in range(20)])
        outcomes += await provider.send_batch([push(n) for n in range(20, 25)])
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    assert len(server.provider_tokens) == 1


async def test_the_provider_token_is_renewed_after_50_minutes(server: ApnsServer) -> None:
    clock = manual_clock()
    server.clock = clock.seconds
    async with apns(server, clock) as provider:
        await provider.send_batch([push(1)])
        clock.advance(49 * 60_000)
        await provider.send_batch([push(2)])
        assert len(server.provider_tokens) == 1
        clock.advance(2 * 60_000)
        [outcome] = await provider.send_batch([push(3)])
    assert outcome.kind is OutcomeKind.SENT
    assert len(server.provider_tokens) == 2


async def test_expired_provider_token_is_renewed_once_and_the_message_resent(server: ApnsServer) -> None:
    async with apns(server) as provider:
        await provider.send_batch([push(0)])
        server.expire_provider_tokens()
        outcomes = await provider.send_batch([push(n) for n in range(1, 6)])
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    assert len(server.provider_tokens) == 2  # five refusals, one renewal
    assert len(server.requests) == 1 + 5 + 5


async def test_expired_provider_token_twice_is_a_configuration_error(server: ApnsServer) -> None:
    server.fail_token(device_token(1), "ExpiredProviderToken")  # as if this host's clock were off
    with structlog.testing.capture_logs() as logs:
        async with apns(server) as provider:
            [outcome] = await provider.send_batch([push(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "ExpiredProviderToken")
    assert len(server.requests) == 2
    assert [e["reason"] for e in logs if e["event"] == "apns_config_error"] == ["ExpiredProviderToken"]


async def test_too_many_token_updates_keeps_the_token_and_retries_later(tls_cert: SelfSignedCert) -> None:
    clock = manual_clock()
    with ApnsServer(tls_cert, min_token_update_seconds=20 * 60, clock=clock.seconds) as server:
        async with apns(server, clock) as provider:
            await provider.send_batch([push(1)])
            clock.advance(5 * 60_000)
            server.expire_provider_tokens()  # renewed 5 minutes after the last update: too soon
            [refused] = await provider.send_batch([push(2)])
            [again] = await provider.send_batch([push(3)])
            clock.advance(16 * 60_000)
            [accepted] = await provider.send_batch([push(4)])
        signed = {r.headers["authorization"] for r in server.requests}
    assert (refused.kind, refused.code, refused.retry_after) == (
        OutcomeKind.RETRY,
        "TooManyProviderTokenUpdates",
        60,
    )
    assert again.code == "TooManyProviderTokenUpdates"
    assert accepted.kind is OutcomeKind.SENT
    assert len(signed) == 2  # the first token and one renewal, never a third


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("BadDeviceToken", OutcomeKind.PERMANENT),
        ("Unregistered", OutcomeKind.INVALID_ADDRESS),
        ("ExpiredToken", OutcomeKind.INVALID_ADDRESS),
        ("DeviceTokenNotForTopic", OutcomeKind.PERMANENT),
        ("PayloadTooLarge", OutcomeKind.PERMANENT),
        ("BadTopic", OutcomeKind.PERMANENT),
        ("MissingTopic", OutcomeKind.PERMANENT),
        ("TopicDisallowed", OutcomeKind.PERMANENT),
        ("Forbidden", OutcomeKind.PERMANENT),
        ("InvalidProviderToken", OutcomeKind.PERMANENT),
        ("BadExpirationDate", OutcomeKind.PERMANENT),
        ("TooManyRequests", OutcomeKind.RETRY),
        ("InternalServerError", OutcomeKind.RETRY),
        ("ServiceUnavailable", OutcomeKind.RETRY),
        ("Shutdown", OutcomeKind.RETRY),
        ("IdleTimeout", OutcomeKind.RETRY),
    ],
)
async def test_apple_reasons_are_classified(server: ApnsServer, reason: str, kind: OutcomeKind) -> None:
    server.fail_token(device_token(1), reason)
    async with apns(server) as provider:
        [failed, other] = await provider.send_batch([push(1), push(2)])
    assert (failed.kind, failed.code) == (kind, reason)
    assert other.kind is OutcomeKind.SENT
    assert len(server.provider_tokens) == 1


async def test_a_token_of_the_other_environment_is_not_recorded_dead(server: ApnsServer) -> None:
    # Apple answers BadDeviceToken for a sandbox token sent to production too: with base_url
    # on the wrong environment every token is refused so, and none of them may be buried.
    for n in range(3):
        server.fail_token(device_token(n), "BadDeviceToken")
    async with apns(server) as provider:
        outcomes = await provider.send_batch([push(n) for n in range(3)])
    assert {(o.kind, o.code) for o in outcomes} == {(OutcomeKind.PERMANENT, "BadDeviceToken")}


async def test_too_many_requests_to_one_device_waits_for_its_limit(server: ApnsServer) -> None:
    server.fail_token(device_token(1), "TooManyRequests")
    async with apns(server) as provider:
        [busy] = await provider.send_batch([push(1)])
    assert (busy.kind, busy.code, busy.retry_after) == (OutcomeKind.RETRY, "TooManyRequests", 300)


async def test_410_and_retry_after_are_read(server: ApnsServer) -> None:
    server.fail_token(device_token(1), "TooManyRequests", headers={"Retry-After": "30"})
    server.fail_token(device_token(2), "Unregistered")
    async with apns(server) as provider:
        [busy, gone] = await provider.send_batch([push(1), push(2)])
    assert (busy.kind, busy.retry_after) == (OutcomeKind.RETRY, 30)
    assert (gone.kind, gone.detail) == (OutcomeKind.INVALID_ADDRESS, "410 Unregistered")


async def test_a_wrong_key_is_refused_as_a_configuration_error(server: ApnsServer) -> None:
    _, other_key = throwaway_p8()
    with structlog.testing.capture_logs() as logs:
        async with apns(server, private_key=other_key) as provider:
            outcomes = await provider.send_batch([push(n) for n in range(3)])
    assert {(o.kind, o.code) for o in outcomes} == {(OutcomeKind.PERMANENT, "InvalidProviderToken")}
    assert server.accepted == []
    assert [e["reason"] for e in logs if e["event"] == "apns_config_error"] == ["InvalidProviderToken"]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"key_id": "OTHERKEY12"}, "InvalidProviderToken"),
        ({"team_id": "OTHERTEAM1"}, "InvalidProviderToken"),
        ({"topic": "com.example.other"}, "BadTopic"),
    ],
)
async def test_the_server_checks_key_id_team_and_topic(
    server: ApnsServer, options: dict[str, Any], reason: str
) -> None:
    async with apns(server, **options) as provider:
        [outcome] = await provider.send_batch([push(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, reason)


async def test_the_server_refuses_a_tampered_token_and_http1(
    server: ApnsServer, tls_cert: SelfSignedCert
) -> None:
    async with apns(server) as provider:
        await provider.send_batch([push(1)])
    request = server.accepted[0]
    header, payload, signature = request.headers["authorization"].split(" ")[1].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["iss"] = "OTHERTEAM1"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    headers = {k: v for k, v in request.headers.items() if k.startswith("apns-")}
    url = f"{server.base_url}{request.path}"
    verify = tls_cert.client_context()
    async with httpx.AsyncClient(http2=True, verify=verify) as h2, httpx.AsyncClient(verify=verify) as h1:
        tampered = await h2.post(
            url,
            content=request.body,
            headers={**headers, "authorization": f"bearer {header}.{forged}.{signature}"},
        )
        genuine = {**headers, "authorization": request.headers["authorization"]}
        over_http1 = await h1.post(url, content=request.body, headers=genuine)
    assert (tampered.status_code, tampered.json()) == (403, {"reason": "InvalidProviderToken"})
    assert over_http1.status_code == 505


# --- transport faults and retries ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "code", "retry_after"),
    [
        (Fault.timeout(3), OutcomeKind.UNKNOWN, "timeout", None),
        (Fault.reset(), OutcomeKind.UNKNOWN, "disconnected", None),
        (Fault.drop_after_accept(), OutcomeKind.UNKNOWN, "disconnected", None),
        (
            Fault.status(429, json={"reason": "TooManyRequests"}, headers={"Retry-After": "7"}),
            OutcomeKind.RETRY,
            "TooManyRequests",
            7,
        ),
        (
            Fault.status(503, json={"reason": "ServiceUnavailable"}, headers={"Retry-After": "120"}),
            OutcomeKind.RETRY,
            "ServiceUnavailable",
            120,
        ),
        (Fault.status(500, body=b""), OutcomeKind.RETRY, "500", None),
    ],
)
async def test_faults_are_classified(
    server: ApnsServer, fault: Fault, kind: OutcomeKind, code: str, retry_after: float | None
) -> None:
    async with apns(server) as provider:
        server.inject(fault)
        [outcome] = await provider.send_batch([push(1)])
        [after] = await provider.send_batch([push(2)])  # the HTTP/2 connection recovers
    assert (outcome.kind, outcome.code, outcome.retry_after) == (kind, code, retry_after)
    assert after.kind is OutcomeKind.SENT


async def test_drop_after_accept_was_delivered(server: ApnsServer) -> None:
    async with apns(server) as provider:
        server.inject(Fault.drop_after_accept())
        [outcome] = await provider.send_batch([push(1)])
    assert outcome.kind is OutcomeKind.UNKNOWN
    assert len(server.delivered) == 1  # APNs does not deduplicate: resending could notify twice


async def test_a_burst_of_503_retries_each_then_recovers(server: ApnsServer) -> None:
    async with apns(server) as provider:
        server.inject(Fault.burst(503, 3, json={"reason": "ServiceUnavailable"}))
        outcomes = await provider.send_batch([push(n) for n in range(3)])
        [after] = await provider.send_batch([push(4)])
    assert {(o.kind, o.code) for o in outcomes} == {(OutcomeKind.RETRY, "ServiceUnavailable")}
    assert after.kind is OutcomeKind.SENT


async def test_apns_id_is_stable_across_a_retry_of_the_same_message(server: ApnsServer) -> None:
    async with apns(server) as provider:
        server.inject(Fault.status(503, json={"reason": "ServiceUnavailable"}))
        [first] = await provider.send_batch([push(1)])
        [second] = await provider.send_batch([push(1, attempt=2)])
        await provider.send_batch([push(2)])
    ids = [r.headers["apns-id"] for r in server.requests]
    assert first.kind is OutcomeKind.RETRY
    assert second.provider_message_id == ids[0] == ids[1] == apns_id(push(1).message.message_id)
    assert ids[2] != ids[0]


# --- the message ----------------------------------------------------------------------------------


async def test_unsendable_messages_never_reach_apple(server: ApnsServer) -> None:
    async with apns(server) as provider:
        outcomes = await provider.send_batch(
            [
                delivery(1, contact={"email": "a@example.org"}, channel="push"),
                push(2, token="../../../3/device/abc"),
                push(3, text="x" * 5000),
            ]
        )
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.PERMANENT, "no_address"),
        (OutcomeKind.INVALID_ADDRESS, "BadDeviceToken"),
        (OutcomeKind.PERMANENT, "PayloadTooLarge"),
    ]
    assert server.requests == []


async def test_expiration_counts_from_the_message_creation(server: ApnsServer) -> None:
    clock = manual_clock()
    created = clock.now_ms() - 100_000
    async with apns(server, clock, ttl=3600, priority=5) as provider:
        await provider.send_batch([push(1, created_ts=created), push(2, created_ts=created - 4_000_000)])
    async with apns(server, clock, ttl=0) as provider:
        await provider.send_batch([push(3, created_ts=created)])
    expirations = {
        r.path: (r.headers["apns-expiration"], r.headers["apns-priority"]) for r in server.requests
    }
    assert expirations[f"/3/device/{device_token(1)}"] == (str(created // 1000 + 3600), "5")
    assert expirations[f"/3/device/{device_token(2)}"] == ("0", "5")  # past its life: try once
    assert expirations[f"/3/device/{device_token(3)}"] == ("0", "10")


async def test_secrets_and_tokens_stay_out_of_outcomes_and_logs(server: ApnsServer) -> None:
    outcomes: list[Outcome] = []
    with structlog.testing.capture_logs() as logs:
        for n, reason in enumerate(
            ["BadDeviceToken", "Unregistered", "InvalidProviderToken", "TooManyRequests"]
        ):
            server.fail_token(device_token(n), reason)
        async with apns(server) as provider:
            outcomes += await provider.send_batch([push(n) for n in range(5)])
        server.fail_token(device_token(9), "ExpiredProviderToken")
        async with apns(server) as provider:
            outcomes += await provider.send_batch([push(9)])
    text = repr(outcomes) + repr(logs)
    tokens = {r.headers["authorization"].split(" ")[1] for r in server.requests}
    secrets = [*tokens, *[device_token(n) for n in range(10)], "PRIVATE KEY", server.private_key_pem[40:80]]
    assert [s for s in secrets if s in text] == []


# --- options -------------------------------------------------------------------------------------


async def test_the_key_can_come_from_a_p8_file(server: ApnsServer, tmp_path: Path) -> None:
    key_file = tmp_path / "AuthKey_KEY1234567.p8"
    key_file.write_text(server.private_key_pem)
    options = {**server.provider_options(), "private_key": None, "private_key_file": str(key_file)}
    provider = ApnsProvider(ProviderConfig("apns-1", "apns", options=options), ProviderContext())
    await provider.setup()
    try:
        [outcome] = await provider.send_batch([push(1)])
    finally:
        await provider.close()
    assert outcome.kind is OutcomeKind.SENT


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"private_key": None}, "'private_key' or 'private_key_file' must be set"),
        ({"private_key_file": "/x.p8"}, "exactly one"),
        (
            {"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"},
            "not an unencrypted PEM",
        ),
        ({"private_key": None, "private_key_file": "/nonexistent.p8"}, "'private_key_file' cannot be read"),
        ({"team_id": "team"}, "'team_id' must be Apple's 10-character id"),
        ({"key_id": None}, "'key_id' is required"),
        ({"topic": ""}, "'topic' is required"),
        ({"priority": 7}, "'priority' must be 10, 5 or 1"),
        ({"ttl": -1}, "'ttl' must be an integer"),
        ({"environment": "sandbox"}, "option 'environment' is unknown"),
    ],
)
async def test_bad_options_name_the_option(
    server: ApnsServer, overrides: dict[str, Any], message: str
) -> None:
    options = {k: v for k, v in {**server.provider_options(), **overrides}.items() if v is not None}
    provider = ApnsProvider(ProviderConfig("apns-1", "apns", options=options), ProviderContext())
    with pytest.raises(ValueError, match=message) as raised:
        await provider.setup()
    await provider.close()
    assert server.private_key_pem[40:80] not in str(raised.value)


async def test_an_rsa_key_is_not_an_apns_key(server: ApnsServer) -> None:
    from tests.support.providers.fcm import pem, throwaway_rsa_key

    options = {**server.provider_options(), "private_key": pem(throwaway_rsa_key())}
    provider = ApnsProvider(ProviderConfig("apns-1", "apns", options=options), ProviderContext())
    with pytest.raises(ValueError, match="not a P-256"):
        await provider.setup()
