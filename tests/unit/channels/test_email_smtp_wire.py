"""SmtpProvider against a real SMTP server (tests.support.smtp_server), over the wire."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from channels.base import Outcome, OutcomeKind
from tests.support.smtp_server import SmtpTestServer
from tests.support.sockets import closed_port, silent_listener
from tests.support.tls import SelfSignedCert
from tests.unit.channels.factories import contact, delivery, smtp_provider

UNSUBSCRIBE = "https://example.com/u/{message_id}?user={user_id}"


def assert_no_secrets(outcomes: list[Outcome], *secrets: str) -> None:
    for outcome in outcomes:
        for secret in ("@example.org", *secrets):
            assert secret not in outcome.detail, outcome


# --- sending ----------------------------------------------------------------------------------


async def test_a_batch_arrives_with_its_headers(smtp_server: SmtpTestServer) -> None:
    batch = [delivery(n, html=f"<p>Hello {n}</p>") for n in (1, 2, 3)]
    async with smtp_provider(smtp_server, unsubscribe_url=UNSUBSCRIBE) as provider:
        outcomes = await provider.send_batch(batch)

    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 3
    received = smtp_server.messages
    assert [m.rcpt_tos for m in received] == [(f"user{n}@example.org",) for n in (1, 2, 3)]
    assert smtp_server.connections == 1  # one connection for the whole batch
    assert smtp_server.messages_to("USER2@example.org") == [received[1]]
    for item, outcome, got in zip(batch, outcomes, received, strict=True):
        reach_id, message = item.message.message_id, got.message
        assert got.mail_from == "noreply@reach.test"
        assert message["Message-ID"] == outcome.provider_message_id == f"<{reach_id}@reach.test>"
        assert message["X-Reach-Message-Id"] == reach_id
        assert message["Subject"] == item.content.title
        assert message["To"] == item.message.contact["email"]
        assert message["From"] == "Reach <noreply@reach.test>"
        assert (
            message["List-Unsubscribe"] == f"<https://example.com/u/{reach_id}?user={item.message.user_id}>"
        )
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message.get_content_type() == "multipart/alternative"
        text, html = message.iter_parts()
        assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
        assert text.get_content().strip() == item.content.text
        assert html.get_content().strip() == item.content.html


async def test_text_only_and_non_ascii_content_arrive_intact(smtp_server: SmtpTestServer) -> None:
    item = delivery(title="Grüße, Ada ✓", text="Schöne Grüße aus Zürich\n.\nEnde")
    async with smtp_provider(smtp_server) as provider:
        [outcome] = await provider.send_batch([item])

    assert outcome.kind is OutcomeKind.SENT
    [got] = smtp_server.messages
    assert got.message.get_content_type() == "text/plain"
    assert got.message["Subject"] == "Grüße, Ada ✓"
    body = got.message.get_content().replace("\r\n", "\n")
    assert body == "Schöne Grüße aus Zürich\n.\nEnde\n"  # the lone dot survives dot-stuffing
    assert got.message["List-Unsubscribe"] is None


async def test_the_connection_is_kept_between_batches(smtp_server: SmtpTestServer) -> None:
    async with smtp_provider(smtp_server) as provider:
        await provider.send_batch([delivery(1)])
        await provider.send_batch([delivery(2)])
    assert len(smtp_server.messages) == 2
    assert smtp_server.connections == 1


async def test_a_connection_the_server_closed_is_reopened(smtp_server: SmtpTestServer) -> None:
    async with smtp_provider(smtp_server) as provider:
        await provider.send_batch([delivery(1)])
        smtp_server.disconnect_all()  # as a server does to idle clients
        outcomes = await provider.send_batch([delivery(2), delivery(3)])
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 2
    assert len(smtp_server.messages) == 3
    assert smtp_server.connections == 2


async def test_no_address_fails_without_touching_the_server(smtp_server: SmtpTestServer) -> None:
    batch = [delivery(1, contact=contact(None)), delivery(2, contact=contact("not-an-address"))]
    batch.append(delivery(3, contact=contact("jürgen@example.org")))
    async with smtp_provider(smtp_server) as provider:
        outcomes = await provider.send_batch(batch)

    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.PERMANENT, "no_address"),
        (OutcomeKind.INVALID_ADDRESS, "bad_address"),
        (OutcomeKind.PERMANENT, "address_not_ascii"),
    ]
    assert smtp_server.connections == 0


# --- authentication ---------------------------------------------------------------------------


async def test_auth_with_the_right_credentials(smtp_auth_server: SmtpTestServer) -> None:
    async with smtp_provider(smtp_auth_server) as provider:
        [outcome] = await provider.send_batch([delivery()])
    assert outcome.kind is OutcomeKind.SENT
    assert smtp_auth_server.messages[0].login == "reach"


async def test_auth_refused_retries_and_logs_no_secret(smtp_auth_server: SmtpTestServer) -> None:
    with structlog.testing.capture_logs() as logs:
        async with smtp_provider(smtp_auth_server, password="wrong-pw", retry_after_seconds=7) as provider:
            outcomes = await provider.send_batch([delivery(1), delivery(2)])

    assert [(o.kind, o.code, o.retry_after) for o in outcomes] == [(OutcomeKind.RETRY, "auth", 7.0)] * 2
    assert "535" in outcomes[0].detail
    assert smtp_auth_server.messages == []
    attempts = smtp_auth_server.auth_attempts
    assert attempts and not any(attempt.success for attempt in attempts)
    assert [entry["event"] for entry in logs] == ["smtp_auth_failed"]
    assert logs[0]["smtp_code"] == 535
    assert "wrong-pw" not in repr(logs) and "reach" not in repr(logs[0].get("detail", ""))
    assert_no_secrets(outcomes, "wrong-pw")


async def test_missing_credentials_are_an_auth_retry(smtp_auth_server: SmtpTestServer) -> None:
    async with smtp_provider(smtp_auth_server, username=None, password=None) as provider:
        [outcome] = await provider.send_batch([delivery()])
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "auth")
    assert outcome.detail.startswith("MAIL refused: 530")


# --- refusals ---------------------------------------------------------------------------------


async def test_temporary_refusal_retries_and_the_batch_goes_on(smtp_server: SmtpTestServer) -> None:
    smtp_server.reply_to_rcpt("user2@example.org", "450 4.2.1 Mailbox busy, try later")
    async with smtp_provider(smtp_server, retry_after_seconds=90) as provider:
        outcomes = await provider.send_batch([delivery(1), delivery(2), delivery(3)])

    assert [o.kind for o in outcomes] == [OutcomeKind.SENT, OutcomeKind.RETRY, OutcomeKind.SENT]
    assert (outcomes[1].code, outcomes[1].retry_after) == ("450", 90.0)
    assert outcomes[1].detail == "RCPT refused: 450 4.2.1 Mailbox busy, try later"
    assert [m.rcpt_tos for m in smtp_server.messages] == [("user1@example.org",), ("user3@example.org",)]
    assert smtp_server.connections == 1  # RSET, not a reconnect


async def test_mailbox_unknown_is_an_invalid_address(smtp_server: SmtpTestServer) -> None:
    smtp_server.reply_to_rcpt("user1@example.org", "550 5.1.1 <user1@example.org>: Recipient unknown")
    async with smtp_provider(smtp_server) as provider:
        outcomes = await provider.send_batch([delivery(1), delivery(2)])

    assert [o.kind for o in outcomes] == [OutcomeKind.INVALID_ADDRESS, OutcomeKind.SENT]
    assert outcomes[0].code == "550"
    assert outcomes[0].detail == "RCPT refused: 550 5.1.1 <address>: Recipient unknown"
    assert_no_secrets(outcomes)


@pytest.mark.parametrize("reply", ["554 5.7.1 Relay access denied", "550 5.7.1 Blocked by policy"])
async def test_other_permanent_refusals(smtp_server: SmtpTestServer, reply: str) -> None:
    smtp_server.reply_to_rcpt("user1@example.org", reply)
    async with smtp_provider(smtp_server) as provider:
        [outcome] = await provider.send_batch([delivery(1)])
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, reply[:3])


# --- connection failures ----------------------------------------------------------------------


async def test_connection_dropped_after_data_is_unknown(smtp_server: SmtpTestServer) -> None:
    smtp_server.drop_after_data("user2@example.org")
    with structlog.testing.capture_logs() as logs:
        async with smtp_provider(smtp_server) as provider:
            outcomes = await provider.send_batch([delivery(1), delivery(2), delivery(3)])

    assert [o.kind for o in outcomes] == [OutcomeKind.SENT, OutcomeKind.UNKNOWN, OutcomeKind.SENT]
    unknown = outcomes[1]
    assert unknown.code == "disconnected"
    assert unknown.provider_message_id == f"<{delivery(2).message.message_id}@reach.test>"
    assert [m.rcpt_tos for m in smtp_server.dropped] == [("user2@example.org",)]  # it did reach the server
    assert smtp_server.connections == 2  # message 3 went out on a new connection
    assert [entry["event"] for entry in logs] == ["smtp_outcome_unknown"]
    assert_no_secrets(outcomes)


async def test_server_down_retries_the_whole_batch() -> None:
    options = {"host": "127.0.0.1", "port": closed_port(), "from_addr": "noreply@reach.test"}
    async with smtp_provider(None, **options, retry_after_seconds=15) as provider:
        outcomes = await provider.send_batch([delivery(1), delivery(2, contact={}), delivery(3)])

    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.RETRY, "connect"),
        (OutcomeKind.PERMANENT, "no_address"),  # still judged on its own
        (OutcomeKind.RETRY, "connect"),
    ]
    assert outcomes[0].retry_after == 15.0
    assert outcomes[0] is outcomes[2]  # one connection attempt per batch, not one per message


async def test_no_greeting_before_the_timeout_retries() -> None:
    with silent_listener() as port:
        options = {"host": "127.0.0.1", "port": port, "from_addr": "noreply@reach.test", "timeout": 0.2}
        async with smtp_provider(None, **options) as provider:
            [outcome] = await provider.send_batch([delivery()])
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "timeout")


async def test_the_provider_recovers_when_the_server_comes_back() -> None:
    port = closed_port()
    async with smtp_provider(None, host="127.0.0.1", port=port, from_addr="noreply@reach.test") as provider:
        [first] = await provider.send_batch([delivery(1)])
        with SmtpTestServer(port=port) as server:
            [second] = await provider.send_batch([delivery(1)])
    assert (first.kind, second.kind) == (OutcomeKind.RETRY, OutcomeKind.SENT)
    assert len(server.messages) == 1


# --- TLS --------------------------------------------------------------------------------------


async def test_starttls_with_auth(tls_cert: SelfSignedCert) -> None:
    with SmtpTestServer(auth=("reach", "pw"), tls="starttls", cert=tls_cert) as server:
        async with smtp_provider(server) as provider:
            [outcome] = await provider.send_batch([delivery()])
    assert outcome.kind is OutcomeKind.SENT
    [got] = server.messages
    assert (got.tls, got.login) == (True, "reach")


async def test_implicit_tls(tls_cert: SelfSignedCert) -> None:
    with SmtpTestServer(tls="tls", cert=tls_cert) as server:
        async with smtp_provider(server) as provider:
            [outcome] = await provider.send_batch([delivery()])
    assert outcome.kind is OutcomeKind.SENT
    assert server.messages[0].tls is True


@pytest.mark.parametrize("tls", ["starttls", "tls"])
async def test_an_untrusted_certificate_is_refused(tls_cert: SelfSignedCert, tls: str) -> None:
    with SmtpTestServer(tls=tls, cert=tls_cert) as server:  # type: ignore[arg-type]
        async with smtp_provider(server, tls_ca_file=None) as provider:
            [outcome] = await provider.send_batch([delivery()])
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "connect")
    assert "certificate" in outcome.detail.lower()
    assert server.messages == []


async def test_plain_security_never_upgrades_to_starttls(tls_cert: SelfSignedCert) -> None:
    """``security: none`` means none; a server that insists on STARTTLS makes it a config RETRY."""
    with SmtpTestServer(tls="starttls", cert=tls_cert) as server:
        async with smtp_provider(server, security="none") as provider:
            [outcome] = await provider.send_batch([delivery()])
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "tls")
    assert outcome.detail == "MAIL refused: 530 Must issue a STARTTLS command first"


# --- timeouts and cancellation ----------------------------------------------------------------


async def test_timeout_before_data_retries(smtp_server: SmtpTestServer) -> None:
    smtp_server.stall_rcpt("user2@example.org")
    async with smtp_provider(smtp_server, timeout=0.3) as provider:
        outcomes = await provider.send_batch([delivery(1), delivery(2), delivery(3)])
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.SENT, ""),
        (OutcomeKind.RETRY, "timeout"),
        (OutcomeKind.SENT, ""),
    ]
    assert [m.rcpt_tos for m in smtp_server.messages] == [("user1@example.org",), ("user3@example.org",)]


async def test_timeout_after_data_is_unknown(smtp_server: SmtpTestServer) -> None:
    smtp_server.stall_after_data("user1@example.org")
    async with smtp_provider(smtp_server, timeout=0.3) as provider:
        outcomes = await provider.send_batch([delivery(1), delivery(2)])
    assert [(o.kind, o.code) for o in outcomes] == [(OutcomeKind.UNKNOWN, "timeout"), (OutcomeKind.SENT, "")]
    assert len(smtp_server.dropped) == 1


async def test_cancellation_is_not_swallowed_and_the_provider_stays_usable(
    smtp_server: SmtpTestServer,
) -> None:
    smtp_server.stall_after_data("user1@example.org")
    async with smtp_provider(smtp_server) as provider:
        task = asyncio.create_task(provider.send_batch([delivery(1)]))
        await asyncio.to_thread(smtp_server.wait_for_dropped, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [outcome] = await provider.send_batch([delivery(2)])
    assert outcome.kind is OutcomeKind.SENT
    assert smtp_server.connections == 2  # the half-used connection was not reused
