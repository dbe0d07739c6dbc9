"""Dead-address step: skip addresses a provider reported invalid; remember new ones.

A provider that answers "this address or token is dead" (an APNs 410, an FCM
``UNREGISTERED``, an SMTP 550 user unknown) makes reach stop using it: later
messages to it fail ``address_dead`` without a request, until the record expires.
"""

from __future__ import annotations

from collections.abc import Sequence

from channels.base import Outcome
from models.addresses import DeadAddress, DeadAddressStore, address_key, address_of
from models.messages import ReachMessage
from reach.metrics import WorkerMetrics

ADDRESS_DEAD = Outcome.permanent("address_dead", "the address was reported invalid earlier; not sent")


def address_keys(fields: Sequence[str], messages: Sequence[ReachMessage]) -> dict[str, str]:
    """Message id -> the key of the address the provider would send it to (when it has one)."""
    keys: dict[str, str] = {}
    for message in messages:
        address = address_of(fields, message.contact)
        if address is not None:
            keys[message.message_id] = address_key(*address)
    return keys


def buried(fields: Sequence[str], message: ReachMessage, channel: str, code: str) -> DeadAddress | None:
    """The dead-address record for the address ``message`` went to, if it had one."""
    address = address_of(fields, message.contact)
    if address is None:
        return None
    return DeadAddress(address_key(*address), address[0], channel, message.provider, code)


class DeadAddresses:
    def __init__(self, channel: str, store: DeadAddressStore, metrics: WorkerMetrics) -> None:
        self.channel = channel
        self.store = store
        self.metrics = metrics

    async def skip(
        self, provider: str, fields: Sequence[str], messages: list[ReachMessage], now: int
    ) -> tuple[list[ReachMessage], list[tuple[ReachMessage, Outcome]]]:
        """The messages still worth sending, and an ``address_dead`` outcome for each of the others."""
        if not fields:
            return messages, []
        keys = address_keys(fields, messages)
        dead = await self.store.dead_among(list(keys.values()), now)
        if not dead:
            return messages, []
        skipped = [(m, ADDRESS_DEAD) for m in messages if keys.get(m.message_id) in dead]
        self.metrics.addresses_dead.labels(self.channel, provider, "skipped").inc(len(skipped))
        return [m for m in messages if keys.get(m.message_id) not in dead], skipped

    def bury(self, fields: Sequence[str], message: ReachMessage, outcome: Outcome) -> DeadAddress | None:
        record = buried(fields, message, self.channel, outcome.code)
        if record is not None:
            self.metrics.addresses_dead.labels(self.channel, message.provider, "recorded").inc()
        return record
