"""The API's Kafka producer: bounded waits and record sizes checked before sending.

Every wait has a bound, so a broker that is down or silent costs a client a few
seconds and a ``503`` with ``Retry-After``, never a hung request: start-up waits
at most ``kafka_connect_timeout``, one request's sends and acknowledgements at
most ``kafka_request_timeout``. A record larger than ``kafka_max_message_bytes``
is refused with ``413`` before anything is sent: retrying it cannot succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from api.errors import ApiError, unavailable
from reach.errors import DependencyUnreachable
from reach.settings import Settings

log = structlog.get_logger("reach.api.producer")

Record = tuple[bytes, bytes]  # (key, value)
SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)


def record_size(key: bytes, value: bytes) -> int:
    """The size the producer and broker measure a lone record by: a record batch holding it."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []))


def oversized(records: Sequence[Record], limit: int) -> list[dict[str, int]]:
    """``{"index", "bytes", "limit"}`` for every record over ``limit`` bytes."""
    sizes = (record_size(key, value) for key, value in records)
    return [{"index": i, "bytes": size, "limit": limit} for i, size in enumerate(sizes) if size > limit]


class EventProducer:
    """An idempotent ``acks=all`` producer whose every wait is bounded by the settings.

    Build it with :meth:`connect` inside the running event loop (aiokafka binds to it).
    """

    def __init__(self, settings: Settings) -> None:
        self.bootstrap = settings.kafka_bootstrap
        self.connect_timeout = settings.kafka_connect_timeout
        self.request_timeout = settings.kafka_request_timeout
        self.max_record_bytes = settings.kafka_max_message_bytes
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            linger_ms=2,
            acks="all",
            enable_idempotence=True,
            # Bounds each network request, the bootstrap's included; a request as a whole is
            # bounded in send_all, because an idempotent producer retries a batch forever.
            request_timeout_ms=int(settings.kafka_request_timeout * 1000),
            # The producer's own size check then agrees with check_sizes to the byte.
            max_request_size=settings.kafka_max_message_bytes,
        )

    @classmethod
    async def connect(cls, settings: Settings) -> EventProducer:
        """A started producer; raises :class:`DependencyUnreachable` when the brokers do not
        answer within ``kafka_connect_timeout`` seconds."""
        producer = cls(settings)
        try:
            async with asyncio.timeout(producer.connect_timeout):
                await producer._producer.start()
        except (TimeoutError, KafkaError, OSError) as exc:
            await producer._producer.stop()
            raise DependencyUnreachable(
                f"Kafka at {producer.bootstrap} did not answer within {producer.connect_timeout}s"
                f" (kafka_connect_timeout): {type(exc).__name__} {exc}".rstrip()
            ) from exc
        return producer

    async def stop(self) -> None:
        """Close, waiting at most ``kafka_connect_timeout`` for unacknowledged records.

        Only records whose request was already answered ``503`` can still be pending, so
        giving up on them loses nothing a client was told was accepted.
        """
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._producer.stop()
        except TimeoutError:
            log.warning("api.producer_stop_timed_out", seconds=self.connect_timeout)

    def check_sizes(self, records: Sequence[Record]) -> None:
        """Raise ``413 event_too_large`` naming the limit when any record is over it."""
        over = oversized(records, self.max_record_bytes)
        if over:
            raise ApiError(
                413,
                "event_too_large",
                f"{len(over)} of {len(records)} events are over the Kafka record limit of"
                f" {self.max_record_bytes} bytes (kafka_max_message_bytes); none was accepted",
                over,
            )

    async def send_all(self, topic: str, records: Sequence[Record]) -> None:
        """Produce every record and wait for all acknowledgements.

        Raises ``503`` (with ``Retry-After``) when Kafka is unavailable or has not acknowledged
        them all within ``kafka_request_timeout``, ``413`` when the broker refuses a record as
        too large. After a ``503`` some records may still be written later (the idempotent
        producer keeps retrying what it has queued); event ids make the client's retry harmless.
        """
        try:
            async with asyncio.timeout(self.request_timeout):
                # Cancelling send() while it waits for metadata or buffer space drops that
                # record (aiokafka documents this); cancelling the acks' futures does not unsend.
                acks = [await self._producer.send(topic, value, key=key) for key, value in records]
                await asyncio.gather(*acks)
        except TimeoutError:
            raise unavailable(
                f"Kafka did not acknowledge the events within {self.request_timeout}s; retry later"
            ) from None
        except SIZE_ERRORS as exc:
            # Only when the topic's own limit is below kafka_max_message_bytes: say so, not "retry".
            raise ApiError(
                413, "event_too_large", f"Kafka refused an event as too large for the topic ({exc})"
            ) from None
        except KafkaError as exc:
            raise unavailable(f"Kafka is unavailable ({type(exc).__name__}); retry later") from None

    async def ping(self) -> None:
        """Return once a broker answers a metadata request; raise ``KafkaError`` when none
        does. Callers bound the wait (each attempt is bounded by ``kafka_request_timeout``)."""
        await self._producer.client.fetch_all_metadata()
