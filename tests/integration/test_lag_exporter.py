"""The lag exporter reads the group's committed offsets from the real broker: lag per topic
and partition, with no worker running, and kafka_up 0 when the broker does not answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from reach.producer import SyncProducer
from reach.settings import Settings
from streams.lag import collector_for
from streams.topics import ensure_topics
from tests.integration.harness import free_port, unique_run_id


def values(collector: object) -> dict[tuple[str, tuple[str, ...]], float]:
    found = {}
    for family in collector.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            found[(sample.name, tuple(sample.labels.values()))] = sample.value
    return found


def test_lag_from_committed_offsets_with_no_worker(tmp_path: Path) -> None:
    run = unique_run_id()
    settings = Settings(topic_prefix=f"{run}.", app_id=f"reach-{run}", partitions=2)
    asyncio.run(ensure_topics(settings, ["inbox"]))
    # Keys chosen for partition 0 and 1 are not needed: the totals per topic are checked.
    SyncProducer(settings.kafka_bootstrap).send_many(
        settings.events_topic, [(f"u-{i}".encode(), b"{}") for i in range(10)]
    )
    collector = collector_for(settings, ["inbox"])
    before = values(collector)
    group = settings.app_id
    lag = {k: v for k, v in before.items() if k[0] == "reach_consumer_lag"}
    assert sum(v for (_, labels), v in lag.items() if labels[1] == settings.events_topic) == 10
    assert {labels[1] for _, labels in lag} == {
        settings.events_topic,
        settings.segments_topic,
        settings.tracking_topic,
        settings.outbox_topic("inbox"),
    }
    assert before[("reach_exporter_kafka_up", ())] == 1

    ends = {labels: v for (name, labels), v in before.items() if name == "reach_topic_end_offset"}
    commit(settings, group, {(t, int(p)): int(v) for (t, p), v in ends.items() if t == settings.events_topic})
    after = values(collector)
    assert sum(v for (n, labels), v in after.items() if n == "reach_consumer_lag") == 0
    committed = [
        v
        for (n, labels), v in after.items()
        if n == "reach_consumer_committed_offset" and labels[1] == settings.events_topic
    ]
    assert sum(committed) == 10


def commit(settings: Settings, group: str, offsets: dict[tuple[str, int], int]) -> None:
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def test_an_unreachable_broker_is_kafka_up_zero() -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    found = values(collector_for(settings, ["inbox"], timeout=0.5))
    assert found == {("reach_exporter_kafka_up", ()): 0}
