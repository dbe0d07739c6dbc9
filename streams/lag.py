"""Consumer lag as the broker sees it: ``reach exporter``.

The worker's group commits offsets to Kafka; this reads them back through
the admin API (``list_consumer_group_offsets``) together with each
partition's log start and end (``list_offsets``), on every scrape. It runs as
its own small process, not inside the worker, because lag matters most when
the worker is down or stuck: a dead worker exports nothing, while the
committed offsets it left behind are still on the broker. Not in the API
either: the API runs one process per core, and each would report the same
lag.

Only the topics the worker consumes as streams are measured (events,
segments, tracking, every channel's outbox). The profile table's changelog is read
from the start at every recovery and never committed, so it is no lag and
stays apart, as do Kafka's own ``__`` topics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reach.metric_defs import BY_NAME
from reach.settings import Settings

Partition = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int  # the group's committed offset, the log start when it has none
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


def partition_lags(
    committed: Mapping[Partition, int | None], starts: Mapping[Partition, int], ends: Mapping[Partition, int]
) -> list[PartitionLag]:
    """Lag per partition. A partition the group never committed counts from its log start
    (the worker reads from the earliest offset), so a new or silent group shows its backlog."""
    rows = []
    for tp in sorted(ends):
        offset = committed.get(tp)
        start = starts.get(tp, 0)
        rows.append(
            PartitionLag(tp[0], tp[1], start if offset is None or offset < start else offset, ends[tp])
        )
    return rows


def stream_topics(settings: Settings, channels: Iterable[str]) -> list[str]:
    """The topics the worker's group consumes and commits."""
    streams = [settings.events_topic, settings.segments_topic, settings.tracking_topic]
    return streams + [settings.outbox_topic(c) for c in channels]


class BrokerOffsets:
    """The three offset reads, through one confluent-kafka admin client."""

    def __init__(self, bootstrap: str, timeout: float) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
        self.timeout = timeout

    def partitions(self, topics: Sequence[str]) -> list[Partition]:
        metadata = self.admin.list_topics(timeout=self.timeout)
        found = [(t, p) for t in topics if t in metadata.topics for p in metadata.topics[t].partitions]
        return sorted(found)

    def committed(self, group: str, tps: Sequence[Partition]) -> dict[Partition, int | None]:
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in tps])
        futures = self.admin.list_consumer_group_offsets([request], request_timeout=self.timeout)
        answer = futures[group].result(timeout=self.timeout)
        return {
            (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
            for tp in answer.topic_partitions
        }

    def offsets(self, tps: Sequence[Partition], spec: OffsetSpec) -> dict[Partition, int]:
        futures = self.admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in tps}, request_timeout=self.timeout
        )
        return {(tp.topic, tp.partition): f.result(timeout=self.timeout).offset for tp, f in futures.items()}


class ConsumerLagCollector(Collector):
    """``reach_consumer_lag``, ``reach_consumer_committed_offset`` and ``reach_topic_end_offset``
    per topic and partition, read from the broker at scrape time, and
    ``reach_exporter_kafka_up`` (0 when the broker did not answer: the other series are
    then absent rather than stale)."""

    def __init__(self, offsets: BrokerOffsets, group: str, topics: Sequence[str]) -> None:
        self.offsets = offsets
        self.group = group
        self.topics = list(topics)

    def read(self) -> list[PartitionLag]:
        tps = self.offsets.partitions(self.topics)
        if not tps:
            return []
        committed = self.offsets.committed(self.group, tps)
        return partition_lags(
            committed,
            self.offsets.offsets(tps, OffsetSpec.earliest()),
            self.offsets.offsets(tps, OffsetSpec.latest()),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rows = self.read()
        except (KafkaException, TimeoutError, OSError):
            # The broker's absence is the metric; a log line per scrape would flood.
            yield _family("reach_exporter_kafka_up", [((), 0)])
            return
        yield _family("reach_exporter_kafka_up", [((), 1)])
        yield from self.families(rows)

    def families(self, rows: Sequence[PartitionLag]) -> Iterator[GaugeMetricFamily]:
        group = self.group
        yield _family("reach_consumer_lag", [((group, r.topic, str(r.partition)), r.lag) for r in rows])
        yield _family(
            "reach_consumer_committed_offset",
            [((group, r.topic, str(r.partition)), r.committed) for r in rows],
        )
        yield _family("reach_topic_end_offset", [((r.topic, str(r.partition)), r.end) for r in rows])


def _family(name: str, samples: Iterable[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
    spec = BY_NAME[name]
    family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, value in samples:
        family.add_metric(list(labels), value)
    return family


def collector_for(settings: Settings, channels: Iterable[str], timeout: float = 5.0) -> Any:
    return ConsumerLagCollector(
        BrokerOffsets(settings.kafka_bootstrap, timeout), settings.app_id, stream_topics(settings, channels)
    )
