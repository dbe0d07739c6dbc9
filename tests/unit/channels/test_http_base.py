"""The shared HTTP provider base against the fault-injecting test server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import ClassVar

import pytest

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.http import HttpProvider, retry_after_seconds, status_outcome
from channels.options import OptionReader
from reach.clock import Clock, ManualClock, SystemClock
from tests.support.http_provider import Fault, ProviderServer, Recorded, Refused, Reply
from tests.support.sockets import closed_port
from tests.unit.channels.factories import delivery


class EchoServer(ProviderServer):
    async def handle(self, request: Recorded) -> Reply:
        if request.headers.get("authorization") != "Bearer t0k":
            raise Refused(Reply(401, json={"error": "unauthorized"}))
        return Reply(200, json={"id": request.json()["id"]})


class EchoProvider(HttpProvider[None]):
    type_name = "echo"
    default_base_url = "https://echo.invalid"
    idempotent: ClassVar[bool] = False

    def parse_options(self, reader: OptionReader) -> None:
        pass

    async def send_one(self, delivery: Delivery) -> Outcome:
        response = await self.client.post(
            "/send", json={"id": delivery.message.message_id}, headers={"Authorization": "Bearer t0k"}
        )
        if response.status_code == 200:
            return Outcome.sent(response.json()["id"])
        return status_outcome(response, str(response.status_code), response.text, self.now())


@pytest.fixture
def server() -> Iterator[EchoServer]:
    with EchoServer() as running:
        yield running


async def provider_for(base_url: str, clock: Clock | None = None, **options: object) -> EchoProvider:
    config = ProviderConfig("echo-1", "echo", options={"base_url": base_url, "timeout": 1, **options})
    provider = EchoProvider(config, ProviderContext(clock=clock or SystemClock()))
    await provider.setup()
    return provider


@pytest.fixture
async def provider(server: EchoServer) -> AsyncIterator[EchoProvider]:
    running = await provider_for(server.base_url)
    yield running
    await running.close()


async def test_sends_and_records(provider: EchoProvider, server: EchoServer) -> None:
    outcomes = await provider.send_batch([delivery(1), delivery(2)])
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 2
    assert {o.provider_message_id for o in outcomes} == {
        delivery(1).message.message_id,
        delivery(2).message.message_id,
    }
    assert len(server.accepted) == 2


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        (Fault.reset(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.timeout(3), OutcomeKind.UNKNOWN, "timeout"),
        (Fault.drop_after_accept(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.status(429, headers={"Retry-After": "7"}), OutcomeKind.RETRY, "429"),
        (Fault.status(503), OutcomeKind.RETRY, "503"),
        (Fault.status(400), OutcomeKind.PERMANENT, "400"),
    ],
)
async def test_faults_are_classified(
    provider: EchoProvider, server: EchoServer, fault: Fault, kind: OutcomeKind, code: str
) -> None:
    server.inject(fault)
    [outcome] = await provider.send_batch([delivery(1)])
    assert (outcome.kind, outcome.code) == (kind, code)
    if code == "429":
        assert outcome.retry_after == 7
    [after] = await provider.send_batch([delivery(2)])
    assert after.kind is OutcomeKind.SENT


async def test_drop_after_accept_was_accepted(provider: EchoProvider, server: EchoServer) -> None:
    server.inject(Fault.drop_after_accept())
    await provider.send_batch([delivery(1)])
    assert len(server.accepted) == 1


async def test_connection_refused_is_a_retry() -> None:
    provider = await provider_for(f"http://127.0.0.1:{closed_port()}")
    try:
        [outcome] = await provider.send_batch([delivery(1)])
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "connect")


async def test_unknown_options_are_refused() -> None:
    with pytest.raises(ValueError, match="option 'colour' is unknown"):
        await provider_for("http://127.0.0.1:1", colour="red")


def test_retry_after_forms() -> None:
    now = 1445412480  # 2015-10-21 07:28:00 UTC
    assert retry_after_seconds({"retry-after": "12"}, now) == 12
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now) == 10
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:27:00 GMT"}, now) == 0  # passed
    assert retry_after_seconds({}, now) is None
    assert retry_after_seconds({"retry-after": "soon"}, now) is None


@pytest.mark.parametrize("status", [429, 503])
async def test_a_retry_after_date_is_read_against_the_providers_clock(
    server: EchoServer, status: int
) -> None:
    clock = ManualClock(1_445_412_480_000)  # 10 s before the date the server names
    provider = await provider_for(server.base_url, clock)
    server.inject(Fault.status(status, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}))
    server.inject(Fault.status(status, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}))
    try:
        [first] = await provider.send_batch([delivery(1)])
        clock.advance(4_000)
        [later] = await provider.send_batch([delivery(2)])
    finally:
        await provider.close()
    assert (first.kind, first.retry_after) == (OutcomeKind.RETRY, 10)
    assert later.retry_after == 6


async def test_an_answer_the_provider_cannot_parse_fails_that_message_alone(
    provider: EchoProvider, server: EchoServer
) -> None:
    server.inject(Fault.status(200, body=b"<html>proxy error</html>"))
    outcomes = await provider.send_batch([delivery(n) for n in range(3)])
    kinds = sorted((o.kind, o.code) for o in outcomes)
    # The request went out, so a non-idempotent provider cannot say it was not sent.
    assert kinds == [(OutcomeKind.SENT, "")] * 2 + [(OutcomeKind.UNKNOWN, "provider_error")]
    assert "JSONDecodeError" in next(o.detail for o in outcomes if o.kind is OutcomeKind.UNKNOWN)


async def test_an_idempotent_provider_that_cannot_parse_an_answer_fails_it_permanently(
    server: EchoServer,
) -> None:
    class IdempotentEcho(EchoProvider):
        idempotent: ClassVar[bool] = True

    config = ProviderConfig("echo-2", "echo", options={"base_url": server.base_url, "timeout": 1})
    provider = IdempotentEcho(config, ProviderContext())
    await provider.setup()
    try:
        server.inject(Fault.status(200, json=["not", "an", "object"]))
        [outcome] = await provider.send_batch([delivery(1)])
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "provider_error")
