"""The task runner's outbox producer (confluent-kafka) against the real broker: it returns
once every record is acknowledged, and fails as a dependency error when the broker cannot
acknowledge within its delivery timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from reach.errors import DEPENDENCY_ERRORS
from reach.producer import AckedProducer, ProduceError
from streams.topics import ensure_topics
from tests.integration.conftest import channels_yaml
from tests.integration.harness import free_port, make_settings, read_topic_until, unique_run_id

pytestmark = pytest.mark.integration


async def test_send_all_returns_once_every_record_is_on_the_topic(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, unique_run_id(), channels_yaml(9))
    await ensure_topics(settings, ["inbox"])
    topic = settings.outbox_topic("inbox")
    producer = AckedProducer(settings.kafka_bootstrap, settings.kafka_max_message_bytes, 10.0)
    try:
        records = [(f"u-{n}".encode(), b"x" * 1000 + str(n).encode()) for n in range(300)]
        await asyncio.gather(producer.send_all(topic, records[:150]), producer.send_all(topic, records[150:]))
    finally:
        await asyncio.to_thread(producer.close)
    stored = read_topic_until(settings, topic, lambda got: len(got) >= len(records))
    assert sorted(stored) == sorted(records)


async def test_a_broker_that_is_not_there_fails_within_the_delivery_timeout() -> None:
    producer = AckedProducer(f"127.0.0.1:{free_port()}", 1_000_000, 1.0)
    try:
        started = time.monotonic()
        with pytest.raises(ProduceError) as raised:
            await producer.send_all("nowhere", [(b"k", b"v")])
        assert time.monotonic() - started < 10
        assert isinstance(raised.value, DEPENDENCY_ERRORS)  # the runner retries it later
    finally:
        await asyncio.to_thread(producer.close, 0.1)


async def test_a_batch_larger_than_the_local_queue_waits_for_room_instead_of_failing(tmp_path: Path) -> None:
    """A page's channels produced at once can pass librdkafka's queue (100,000 messages by
    default); here the queue holds 20 and one batch is 500."""
    settings = make_settings(tmp_path, unique_run_id(), channels_yaml(9))
    await ensure_topics(settings, ["inbox"])
    topic = settings.outbox_topic("inbox")
    producer = AckedProducer(
        settings.kafka_bootstrap,
        settings.kafka_max_message_bytes,
        10.0,
        **{"queue.buffering.max.messages": 20},
    )
    try:
        records = [(f"u-{n}".encode(), f"v-{n}".encode()) for n in range(500)]
        await producer.send_all(topic, records)
    finally:
        await asyncio.to_thread(producer.close)
    stored = read_topic_until(settings, topic, lambda got: len(got) >= len(records))
    assert sorted(stored) == sorted(records)  # each once: a refused record is not queued twice
