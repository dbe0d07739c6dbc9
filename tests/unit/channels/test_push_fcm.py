"""The FCM HTTP v1 provider against the local OAuth2 + FCM server, which checks what Google checks."""

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
from channels.push_fcm import GRANT_TYPE, SCOPE, FcmProvider
from tests.support.http_provider import Fault
from tests.support.providers.fcm import GOOGLE_TOKEN_URI, FcmServer, fcm_error, throwaway_rsa_key
from tests.unit.channels.factories import delivery


class FakeClock:
    """Wall-clock seconds that only move when a test says so (shared by provider and server)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[FcmServer]:
    running = FcmServer()
    with running:
        yield running


@contextlib.asynccontextmanager
async def fcm(
    server: FcmServer, clock: FakeClock | None = None, **options: Any
) -> AsyncIterator[FcmProvider]:
    """A set-up provider sending to ``server`` (``options`` override), closed after."""
    merged = {**server.provider_options(), "timeout": 1, **options}
    provider = FcmProvider(ProviderConfig("fcm-1", "fcm", options=merged), ProviderContext())
    if clock is not None:
        provider.clock = clock
    try:
        await provider.setup()
        yield provider
    finally:
        await provider.close()


def push(n: int = 1, token: str | None = None, **overrides: Any) -> Delivery:
    return delivery(
        n,
        contact={"fcm_token": token or f"fcm-token-{n}"},
        channel="push",
        provider="fcm-1",
        platform="android",
        **overrides,
    )


def sends(server: FcmServer) -> list[Any]:
    return [r for r in server.requests if r.path.endswith("/messages:send")]


# --- success and the access token --------------------------------------------------------------


async def test_sends_with_a_verified_assertion(server: FcmServer) -> None:
    async with fcm(server) as provider:
        [outcome] = await provider.send_batch([push(1)])

    assert outcome.kind is OutcomeKind.SENT
    assert outcome.provider_message_id.startswith("projects/reach-test/messages/")
    [token_request] = [r for r in server.requests if r.path == "/token"]
    form = token_request.form()
    assert form["grant_type"] == GRANT_TYPE
    key = throwaway_rsa_key().public_key()
    # The audience is Google's endpoint, as google-auth sets it, though the request went to the fake.
    claims = jwt.decode(form["assertion"], key, algorithms=["RS256"], audience=GOOGLE_TOKEN_URI)
    assert server.token_uri != GOOGLE_TOKEN_URI
    assert claims["iss"] == server.service_account()["client_email"]
    assert claims["scope"] == SCOPE
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(form["assertion"])["kid"] == server.service_account()["private_key_id"]
    [send] = sends(server)
    assert send.headers["authorization"] == f"Bearer {server.issued_tokens[0]}"
    [message] = server.delivered.items()
    expected = push(1).message
    assert message["token"] == "fcm-token-1"
    assert message["notification"] == {"title": "Welcome #1", "body": "Hello Ada, this is message 1."}
    assert message["data"] == {
        "message_id": expected.message_id,
        "rule_id": "welcome",
        "template": "welcome_email",
    }
    assert message["android"]["priority"] == "HIGH"


async def test_the_token_is_fetched_once_for_many_sends(server: FcmServer) -> None:
    async with fcm(server) as provider:
        first = await provider.send_batch([push(n) for n in range(20)])
        second = await provider.send_batch([push(n) for n in range(20, 25)])
    assert {o.kind for o in first + second} == {OutcomeKind.SENT}
    assert server.token_requests == 1


async def test_concurrent_sends_share_one_token_fetch(server: FcmServer) -> None:
    server.inject(Fault.status(503))  # Google's token endpoint is down at start-up: no crash
    async with fcm(server) as provider:
        outcomes = await provider.send_batch([push(n) for n in range(10)])
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    assert server.token_requests == 2  # the failed prefetch, then one for the whole batch


async def test_a_401_refreshes_the_token_once_and_resends(server: FcmServer) -> None:
    async with fcm(server) as provider:
        await provider.send_batch([push(0)])
        server.expire_access_tokens()
        outcomes = await provider.send_batch([push(n) for n in range(1, 6)])
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    assert server.token_requests == 2  # five 401s, one refresh
    assert len(sends(server)) == 1 + 5 + 5
    assert len(server.delivered) == 6


async def test_the_token_is_refreshed_before_it_expires(server: FcmServer) -> None:
    clock = FakeClock()
    server.clock = clock
    server.token_lifetime = 600
    async with fcm(server, clock) as provider:
        clock.advance(290)  # refreshed 5 minutes (here: half the lifetime) before expiry
        await provider.send_batch([push(1)])
        assert server.token_requests == 1
        clock.advance(20)
        [outcome] = await provider.send_batch([push(2)])
    assert outcome.kind is OutcomeKind.SENT
    assert server.token_requests == 2


async def test_a_second_401_is_a_configuration_error(server: FcmServer) -> None:
    server.fail_token("fcm-token-1", 401)  # UNAUTHENTICATED whatever the token
    with structlog.testing.capture_logs() as logs:
        async with fcm(server) as provider:
            [outcome] = await provider.send_batch([push(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "UNAUTHENTICATED")
    assert server.token_requests == 2
    assert [e["code"] for e in logs if e["event"] == "fcm_config_error"] == ["UNAUTHENTICATED"]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_code", "headers", "kind", "retry_after"),
    [
        ("UNREGISTERED", {}, OutcomeKind.INVALID_ADDRESS, None),
        ("INVALID_ARGUMENT", {}, OutcomeKind.PERMANENT, None),
        ("SENDER_ID_MISMATCH", {}, OutcomeKind.PERMANENT, None),
        ("THIRD_PARTY_AUTH_ERROR", {}, OutcomeKind.PERMANENT, None),
        ("QUOTA_EXCEEDED", {}, OutcomeKind.RETRY, 60.0),
        ("QUOTA_EXCEEDED", {"Retry-After": "17"}, OutcomeKind.RETRY, 17.0),
        ("UNAVAILABLE", {"Retry-After": "5"}, OutcomeKind.RETRY, 5.0),
        ("UNAVAILABLE", {}, OutcomeKind.RETRY, None),
        ("INTERNAL", {}, OutcomeKind.RETRY, None),
    ],
)
async def test_fcm_errors_are_classified(
    server: FcmServer, error_code: str, headers: dict[str, str], kind: OutcomeKind, retry_after: float | None
) -> None:
    server.fail_token("fcm-token-1", error_code, headers=headers)
    async with fcm(server) as provider:
        [failed, other] = await provider.send_batch([push(1), push(2)])
    assert (failed.kind, failed.code, failed.retry_after) == (kind, error_code, retry_after)
    assert other.kind is OutcomeKind.SENT
    assert server.token_requests == 1  # not even THIRD_PARTY_AUTH_ERROR (a 401) refreshes the token


async def test_a_bare_404_never_drops_the_token(server: FcmServer) -> None:
    async with fcm(server) as provider:
        server.inject(Fault.status(404, json=fcm_error(404, "Requested entity was not found.")))
        [outcome] = await provider.send_batch([push(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "NOT_FOUND")


async def test_another_project_is_refused_as_a_configuration_error(server: FcmServer) -> None:
    with structlog.testing.capture_logs() as logs:
        async with fcm(server, project_id="someone-else") as provider:
            outcomes = await provider.send_batch([push(n) for n in range(3)])
    assert {(o.kind, o.code) for o in outcomes} == {(OutcomeKind.PERMANENT, "PERMISSION_DENIED")}
    assert len([e for e in logs if e["event"] == "fcm_config_error"]) == 1  # not one per message


async def test_a_wrong_key_is_refused_at_setup(server: FcmServer) -> None:
    impostor = json.dumps(server.service_account(key=throwaway_rsa_key(1)))
    with pytest.raises(ValueError, match="'service_account_json': Google refused the key") as refused:
        async with fcm(server, service_account_json=impostor):
            pass
    assert "Invalid JWT Signature" in str(refused.value)
    assert "PRIVATE KEY" not in str(refused.value)
    assert server.token_requests == 1
    assert server.issued_tokens == []


async def test_a_key_revoked_later_fails_permanently(server: FcmServer) -> None:
    async with fcm(server) as provider:
        server.key = throwaway_rsa_key(1)  # the key was deleted in the console
        server.expire_access_tokens()
        with structlog.testing.capture_logs() as logs:
            [outcome] = await provider.send_batch([push(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "auth_refused")
    assert [e["event"] for e in logs] == ["fcm_token_refused"]


async def test_the_server_refuses_a_tampered_assertion(server: FcmServer) -> None:
    async with fcm(server):
        pass
    assertion = next(r for r in server.requests if r.path == "/token").form()["assertion"]
    header, payload, signature = assertion.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] += " https://www.googleapis.com/auth/cloud-platform"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            server.token_uri, data={"grant_type": GRANT_TYPE, "assertion": f"{header}.{forged}.{signature}"}
        )
        genuine = await client.post(server.token_uri, data={"grant_type": GRANT_TYPE, "assertion": assertion})
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    assert genuine.status_code == 200


async def test_token_endpoint_trouble_is_a_retry_and_sends_nothing(server: FcmServer) -> None:
    server.inject(Fault.status(503))
    async with fcm(server) as provider:
        server.inject(Fault.status(503, headers={"Retry-After": "9"}))
        outcomes = await provider.send_batch([push(n) for n in range(5)])
        server.inject(Fault.timeout(3))
        [timed_out] = await provider.send_batch([push(6)])
    assert {(o.kind, o.code, o.retry_after) for o in outcomes} == {
        (OutcomeKind.RETRY, "token_unavailable", 9)
    }
    assert (timed_out.kind, timed_out.code) == (OutcomeKind.RETRY, "token_unavailable")
    assert server.token_requests == 3  # the failed prefetch, one for the batch of 5, the timed-out one
    assert sends(server) == []


# --- transport faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        (Fault.timeout(3), OutcomeKind.UNKNOWN, "timeout"),
        (Fault.reset(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.drop_after_accept(), OutcomeKind.UNKNOWN, "disconnected"),
        (
            Fault.status(429, json=fcm_error(429, "quota", "QUOTA_EXCEEDED"), headers={"Retry-After": "7"}),
            OutcomeKind.RETRY,
            "QUOTA_EXCEEDED",
        ),
        (Fault.status(502, body=b"<html>Bad Gateway</html>"), OutcomeKind.RETRY, "502"),
    ],
)
async def test_faults_are_classified(server: FcmServer, fault: Fault, kind: OutcomeKind, code: str) -> None:
    async with fcm(server) as provider:
        server.inject(fault)
        [outcome] = await provider.send_batch([push(1)])
        [after] = await provider.send_batch([push(2)])
    assert (outcome.kind, outcome.code) == (kind, code)
    if code == "QUOTA_EXCEEDED":
        assert outcome.retry_after == 7
    assert after.kind is OutcomeKind.SENT


async def test_drop_after_accept_was_delivered(server: FcmServer) -> None:
    async with fcm(server) as provider:
        server.inject(Fault.drop_after_accept())
        [outcome] = await provider.send_batch([push(1)])
    assert outcome.kind is OutcomeKind.UNKNOWN
    assert len(server.delivered) == 1  # why UNKNOWN and not RETRY: FCM would send it twice


async def test_a_burst_of_5xx_retries_each_then_recovers(server: FcmServer) -> None:
    async with fcm(server) as provider:
        server.inject(Fault.burst(503, 3, json=fcm_error(503, "The service is unavailable.", "UNAVAILABLE")))
        outcomes = await provider.send_batch([push(n) for n in range(3)])
        [after] = await provider.send_batch([push(4)])
    assert {(o.kind, o.code) for o in outcomes} == {(OutcomeKind.RETRY, "UNAVAILABLE")}
    assert after.kind is OutcomeKind.SENT


# --- the message ----------------------------------------------------------------------------------


async def test_no_token_in_the_contact_is_permanent(server: FcmServer) -> None:
    async with fcm(server) as provider:
        [outcome] = await provider.send_batch(
            [delivery(1, contact={"email": "a@example.org"}, channel="push")]
        )
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "no_address")
    assert sends(server) == []


async def test_the_ttl_counts_from_the_message_creation(server: FcmServer) -> None:
    clock = FakeClock()
    server.clock = clock
    created = int(clock.now * 1000) - 100_000
    async with fcm(server, clock, android_priority="normal", ttl=3600) as provider:
        await provider.send_batch([push(1, created_ts=created), push(2, created_ts=created - 4_000_000)])
    first, stale = server.delivered.items()
    assert first["android"] == {"priority": "NORMAL", "ttl": "3500s"}
    assert stale["android"]["ttl"] == "0s"  # past its life: now or never


async def test_secrets_and_tokens_stay_out_of_outcomes_and_logs(server: FcmServer) -> None:
    outcomes: list[Outcome] = []
    with structlog.testing.capture_logs() as logs:
        async with fcm(server) as provider:
            codes: list[int | str] = ["UNREGISTERED", "INVALID_ARGUMENT", "THIRD_PARTY_AUTH_ERROR", 401]
            for n, code in enumerate(codes):
                server.fail_token(f"fcm-token-{n}", code)
            outcomes += await provider.send_batch([push(n) for n in range(5)])
            server.key = throwaway_rsa_key(1)
            server.expire_access_tokens()
            outcomes += await provider.send_batch([push(9)])
    text = repr(outcomes) + repr(logs)
    assert {o.kind for o in outcomes} >= {
        OutcomeKind.INVALID_ADDRESS,
        OutcomeKind.PERMANENT,
        OutcomeKind.SENT,
    }
    secrets = [*server.issued_tokens, *[f"fcm-token-{n}" for n in range(10)], "PRIVATE KEY", "MII"]
    secrets += [r.form()["assertion"] for r in server.requests if r.path == "/token"]
    assert [s for s in secrets if s in text] == []


# --- options -------------------------------------------------------------------------------------


async def test_the_key_can_come_from_a_file(server: FcmServer, tmp_path: Path) -> None:
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps(server.service_account()))
    options = {"base_url": server.base_url, "service_account_file": str(key_file)}
    provider = FcmProvider(ProviderConfig("fcm-1", "fcm", options=options), ProviderContext())
    await provider.setup()
    try:
        [outcome] = await provider.send_batch([push(1)])
    finally:
        await provider.close()
    assert outcome.kind is OutcomeKind.SENT
    assert provider.options.project_id == "reach-test"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "'service_account_file' or 'service_account_json' must be set"),
        ({"service_account_json": "{}", "service_account_file": "/x"}, "exactly one"),
        ({"service_account_json": "not json"}, "'service_account_json' is not a JSON"),
        ({"service_account_json": '{"client_email": "a@b"}'}, "lacks private_key"),
        (
            {"service_account_json": json.dumps({"client_email": "a@b", "private_key": "x"})},
            "not an unencrypted PEM",
        ),
        ({"service_account_file": "/nonexistent/key.json"}, "'service_account_file' cannot be read"),
        ({"colour": "red"}, "option 'colour' is unknown"),
    ],
)
async def test_bad_options_name_the_option(options: dict[str, Any], message: str) -> None:
    provider = FcmProvider(ProviderConfig("fcm-1", "fcm", options=options), ProviderContext())
    with pytest.raises(ValueError, match=message):
        await provider.setup()
    await provider.close()


async def test_project_and_priority_options_are_checked(server: FcmServer) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"project_id": "a/../b"}, "'project_id' is not a Google Cloud project id"),
        ({"android_priority": "urgent"}, "'android_priority' must be one of high, normal"),
        ({"ttl": 2_419_201}, "'ttl' must be an integer"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            async with fcm(server, **options):
                pass
