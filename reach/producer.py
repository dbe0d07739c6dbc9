"""A plain, fast Kafka producer for the CLI and benchmarks (confluent-kafka).

``murmur2_random`` is the Java/aiokafka partitioner, so a key lands on the
same partition whether faust, aiokafka or this producer wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException, Producer


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
