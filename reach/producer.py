"""Plain, fast Kafka producers (confluent-kafka): :class:`SyncProducer` for the CLI and
benchmarks, :class:`AckedProducer` for the task runner's outbox writes.

``murmur2_random`` is the Java/aiokafka partitioner, so a key lands on the
same partition whether faust, aiokafka or this producer wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer


class SyncProducer:
    def __init__(self, bootstrap: str, **overrides: object) -> None:
        config: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
        }
        config.update(overrides)
        self._producer = Producer(config)
        self._errors: list[str] = []

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send_many(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Produce every ``(key, value)`` and wait for all acks; raise if any failed."""
        count = 0
        for key, value in records:
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.05)  # local queue full: let deliveries drain
            count += 1
            if count % 10_000 == 0:
                self._producer.poll(0)
        self.flush()
        return count

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise KafkaException(f"{remaining} messages not delivered within {timeout}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise KafkaException(f"{len(errors)} messages failed: {errors[0]}")


class ProduceError(ConnectionError):
    """The broker did not acknowledge every record of a :meth:`AckedProducer.send_all`
    (down, too slow, or the local queue is full): a dependency error, so the caller
    retries later; records it did take may still arrive (ids make them idempotent)."""


QUEUE_FULL_WAIT = 0.005  # seconds between tries while the local queue is full


class AckedProducer:
    """confluent-kafka for an asyncio caller that moves on only once the broker has
    acknowledged what it sent (``acks=all``, idempotent). librdkafka batches, checksums and
    sends in its own threads, outside the GIL, where aiokafka does that work in Python on
    the caller's loop; one poller thread hands each batch's acknowledgements back to the
    loop that sent it. ``delivery_timeout`` bounds how long a record may wait for its ack."""

    def __init__(
        self, bootstrap: str, max_message_bytes: int, delivery_timeout: float, **overrides: object
    ) -> None:
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": max_message_bytes,
            "message.timeout.ms": max(1, int(delivery_timeout * 1000)),
            **overrides,
        })  # fmt: skip
        self._delivery_timeout = delivery_timeout
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="reach-acks", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)  # runs the delivery callbacks, here

    async def send_all(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Produce every ``(key, value)``; return once all are acknowledged, else raise
        :class:`ProduceError`. Must be awaited on one loop at a time per batch (any loop)."""
        if not records:
            return
        acks = _Acks(asyncio.get_running_loop(), len(records))
        for key, value in records:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=acks.delivered)
            except BufferError:
                await self._produce_when_room(topic, key, value, acks)
            except KafkaException as exc:
                raise ProduceError(f"{topic}: {exc}") from exc
        await acks.future

    async def _produce_when_room(self, topic: str, key: bytes | None, value: bytes, acks: _Acks) -> None:
        """Queue a record the full local queue refused. Several channels' pages produced at
        once can pass librdkafka's 100,000 messages: wait for the acks to drain it, up to
        the delivery timeout. A refused record was not queued, so it is never queued twice."""
        deadline = time.monotonic() + self._delivery_timeout
        while True:
            await asyncio.sleep(QUEUE_FULL_WAIT)
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=acks.delivered)
                return
            except BufferError as exc:
                if time.monotonic() >= deadline:
                    raise ProduceError(f"{topic}: the producer's queue stayed full: {exc}") from exc
            except KafkaException as exc:
                raise ProduceError(f"{topic}: {exc}") from exc

    def close(self, timeout: float = 5.0) -> None:
        """Stop the poller, then wait up to ``timeout`` for what is in flight (its delivery
        reports run here then: one thread at a time counts a batch's acks)."""
        self._stopping.set()
        self._poller.join()
        self._producer.flush(timeout)


class _Acks:
    """Counts one batch's delivery reports (on the poller thread) and settles its future
    on the sender's loop once, with the first error if any record failed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.left = count
        self.error: KafkaError | None = None
        self.future: asyncio.Future[None] = loop.create_future()

    def delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.left -= 1
        if self.left == 0:
            with contextlib.suppress(RuntimeError):  # the sender's loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if self.future.done():
            return
        if self.error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(ProduceError(str(self.error)))
