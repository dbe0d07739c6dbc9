"""Topic names and creation. Events, segments and outbox topics share one
partition count and are keyed by user id, so they are co-partitioned with the
profile table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from reach.settings import Settings


def topic_names(settings: Settings, channels: Iterable[str]) -> list[str]:
    names = [
        settings.events_topic,
        settings.segments_topic,
        settings.dead_letter_topic,
        settings.results_topic,
        settings.delivery_dead_letter_topic,
    ]
    return names + [settings.outbox_topic(channel) for channel in channels]


async def ensure_topics(settings: Settings, channels: Iterable[str]) -> list[str]:
    """Create the missing topics; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in topic_names(settings, channels) if n not in existing]
        if wanted:
            new = [NewTopic(n, num_partitions=settings.partitions, replication_factor=1) for n in wanted]
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(new)
        return wanted
    finally:
        await admin.close()
