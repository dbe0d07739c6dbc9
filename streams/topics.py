"""Topic names and creation. Events, segments and outbox topics share one
partition count and are keyed by user id, so they are co-partitioned with the
profile table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from reach.settings import Settings


def topic_names(settings: Settings, channels: Iterable[str]) -> list[str]:
    names = [
        settings.events_topic,
        settings.segments_topic,
        settings.dead_letter_topic,
        settings.results_topic,
        settings.delivery_dead_letter_topic,
        settings.tracking_topic,
    ]
    return names + [settings.outbox_topic(channel) for channel in channels]


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    """The configuration a topic is created with.

    The record size limit is set, not inherited, so the API's 413 and the topic agree. The
    events topic stamps records with the broker's append time: that is reach's ingestion
    time, which the end-to-end latency starts from (a client's ``ts`` may be hours old).
    """
    config = {"max.message.bytes": str(settings.kafka_max_message_bytes)}
    if name == settings.events_topic:
        config["message.timestamp.type"] = "LogAppendTime"
    return config


class BrokerUnreachableError(RuntimeError):
    """Kafka did not answer at start-up within ``kafka_connect_timeout``."""


async def ensure_topics(settings: Settings, channels: Iterable[str]) -> list[str]:
    """Create the missing topics; return the names created.

    Raises BrokerUnreachableError when the broker does not answer within
    ``kafka_connect_timeout`` (a socket that accepts and never answers would
    otherwise hold start-up for aiokafka's 40 s request timeout).
    """
    try:
        return await asyncio.wait_for(_ensure_topics(settings, channels), settings.kafka_connect_timeout)
    except (TimeoutError, OSError, KafkaError) as exc:
        raise BrokerUnreachableError(
            f"Kafka at {settings.kafka_bootstrap} did not answer within {settings.kafka_connect_timeout}s"
            f" (REACH_KAFKA_BOOTSTRAP, REACH_KAFKA_CONNECT_TIMEOUT): {type(exc).__name__}"
        ) from exc


async def _ensure_topics(settings: Settings, channels: Iterable[str]) -> list[str]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=int(settings.kafka_connect_timeout * 1000),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in topic_names(settings, channels) if n not in existing]
        if wanted:
            new = [
                NewTopic(
                    n,
                    num_partitions=settings.partitions,
                    replication_factor=1,
                    topic_configs=topic_config(settings, n),
                )
                for n in wanted
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(new)
        return wanted
    finally:
        await admin.close()
