"""Providers claim each request just before sending it, and never a message they fail first.

The hook records what the server had received when it was called: a message is
claimed after every earlier one went out and before its own request.
"""

from __future__ import annotations

from collections.abc import Sequence

from channels.base import Delivery, OutcomeKind, ProviderConfig, ProviderContext
from channels.webhook import WebhookProvider
from tests.support.providers.webhook import WebhookServer
from tests.support.smtp_server import SmtpTestServer
from tests.unit.channels.factories import delivery, smtp_provider


class Claims:
    def __init__(self, received: object) -> None:
        self.received = received  # () -> how many the server holds now
        self.log: list[tuple[str, int]] = []

    async def claim(self, deliveries: Sequence[Delivery]) -> None:
        seen = self.received()  # type: ignore[operator]
        self.log += [(d.message.message_id, seen) for d in deliveries]


async def test_smtp_claims_each_message_just_before_its_transaction(smtp_server: SmtpTestServer) -> None:
    batch = [delivery(1), delivery(2, contact={}), delivery(3), delivery(4)]  # 2 has no address
    claims = Claims(lambda: len(smtp_server.messages))
    async with smtp_provider(smtp_server) as provider:
        outcomes = await provider.send_batch(batch, claims.claim)
    assert [o.kind for o in outcomes] == [
        OutcomeKind.SENT,
        OutcomeKind.PERMANENT,
        OutcomeKind.SENT,
        OutcomeKind.SENT,
    ]
    ids = [d.message.message_id for d in batch]
    assert claims.log == [(ids[0], 0), (ids[2], 1), (ids[3], 2)]


async def test_smtp_claims_nothing_when_the_server_cannot_be_reached(smtp_server: SmtpTestServer) -> None:
    claims = Claims(lambda: 0)
    async with smtp_provider(smtp_server, port=1) as provider:
        outcomes = await provider.send_batch([delivery(1), delivery(2)], claims.claim)
    assert {o.kind for o in outcomes} == {OutcomeKind.RETRY}
    assert claims.log == []


async def test_http_providers_claim_each_request_inside_its_concurrency_slot() -> None:
    with WebhookServer() as server:
        options = {**server.provider_options(), "concurrency": 1}
        provider = WebhookProvider(ProviderConfig("hook", "webhook", options=options), ProviderContext())
        await provider.setup()
        try:
            claims = Claims(lambda: len(server.requests))
            batch = [delivery(n, channel="hooks") for n in range(4)]
            outcomes = await provider.send_batch(batch, claims.claim)
        finally:
            await provider.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 4
    assert [seen for _, seen in claims.log] == [0, 1, 2, 3]
    assert sorted(m for m, _ in claims.log) == sorted(d.message.message_id for d in batch)
