"""What one batch of a channel agent decided, to be made durable together."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from channels.base import OutcomeKind
from models.addresses import DeadAddress
from models.messages import DeliveryResult

#: (key, value) of a Kafka record
Record = tuple[bytes | None, bytes]
Produce = Callable[[str, Sequence[Record]], Awaitable[None]]

#: outcomes that say something about the provider (not about one message)
PROVIDER_FAILURES = frozenset({OutcomeKind.RETRY, OutcomeKind.UNKNOWN})


class BatchOutcome:
    """What one batch decided, to be made durable together."""

    def __init__(self) -> None:
        self.results: list[DeliveryResult] = []
        self.deferred: list[tuple[int, bytes]] = []
        # messages that replace one of this batch on another channel: queued before the
        # batch's done marks, so a crash between the two repeats the hand-over
        self.handoffs: list[tuple[int, bytes]] = []
        self.done_ids: list[str] = []  # final: never send again
        self.released_ids: list[str] = []  # claimed for sending, failed before reaching anyone
        self.handled: set[str] = set()  # decided in this batch; a repeated send step skips them
        self.dead_letters: list[Record] = []
        self.dead_addresses: list[DeadAddress] = []
        self.opted_out: list[str] = []  # users a provider said opted out of the channel

    def defer(self, when_ms: int, payload: bytes, message_id: str) -> None:
        """Put a message back on the deferred queue until ``when_ms``; it is decided for this batch."""
        self.deferred.append((when_ms, payload))
        self.handled.add(message_id)
