"""The faust app and its topology: topics, the profile table, agents, timers.

    events ──> trigger ──> outbox.<channel> ──> channel agent ──> provider
      │          ▲                                  │  │
      └─> dlq    │ profile table                    │  └─> results topic + delivery_results
    segments ──> segments agent ──> user_profiles   └─> deferred queue (Redis) ──> pump ──> outbox
    task runs (MariaDB) ──> task runner (leader timer) ──> outbox.<channel>
    tracking (API: receipts, opens, clicks, displays) ──> tracking agent ──> message_engagement

Wiring only; each agent lives in its own module under ``agents/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import faust
import structlog

from agents import channel as channel_agent
from agents import deferred, segments, taskloop, tracking, trigger
from reach.runtime import Runtime
from reach.settings import Settings
from streams.consumer import GuardedConsumer, GuardedTransport
from streams.health import WorkerHealth

log = structlog.get_logger("reach.streams")


@dataclasses.dataclass
class Topology:
    app: faust.App
    runtime: Runtime
    profiles: Any
    topics: dict[str, Any]
    health: WorkerHealth


class App(faust.App):
    """faust's app with a consumer that never loses records to a seek (``streams/consumer.py``)."""

    def _new_transport(self) -> GuardedTransport:
        return GuardedTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> faust.App:
    return App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # Bigger buffers and producer batches: fewer wake-ups per message.
        stream_buffer_maxsize=max(4096, settings.batch_size * 4),
        producer_linger=0.005,
        producer_max_batch_size=512 * 1024,
        broker_commit_every=max(10_000, settings.batch_size * 4),
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        # A crashed worker's partitions move to the others after this long.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )


def build(settings: Settings, runtime: Runtime) -> Topology:
    app = create_app(settings)
    topics = {
        "events": app.topic(settings.events_topic),
        "segments": app.topic(settings.segments_topic),
        "tracking": app.topic(settings.tracking_topic),
    }
    # key_type/value_type bytes make faust read the changelog back raw on recovery; with
    # only a raw Schema it writes raw but recovers with its JSON default and stalls.
    profiles = app.Table(
        "profiles",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        schema=faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"),
        use_partitioner=True,
    )
    trigger.register(app, topics["events"], runtime, profiles)
    segments.register(app, topics["segments"], runtime, profiles)
    tracking.register(app, topics["tracking"], runtime)
    for name, config in runtime.channels.channels.items():
        topics[f"outbox.{name}"] = outbox_topic(app, settings, name)
        channel_agent.register(app, topics[f"outbox.{name}"], runtime, config)
    deferred.register(app, runtime)
    taskloop.register(app, runtime)
    health = WorkerHealth(settings.worker_ready_commit_age)
    _register_housekeeping(app, runtime, health)
    return Topology(app, runtime, profiles, topics, health)


def outbox_topic(app: faust.App, settings: Settings, channel: str) -> Any:
    """A channel's outbox topic, its read-ahead bounded by :func:`outbox_buffer`. Built
    through ``conf.Topic``: faust's ``app.topic()`` takes ``maxsize`` and drops it
    (faust-streaming 0.15.3, ``App.topic``), leaving ``stream_buffer_maxsize``."""
    topic_class: Any = app.conf.Topic
    return topic_class(app, topics=[settings.outbox_topic(channel)], maxsize=outbox_buffer(settings))


def outbox_buffer(settings: Settings) -> int:
    """Outbox records a channel agent may hold read ahead: eight batches. The app-wide
    ``stream_buffer_maxsize`` counts records, and an outbox record is a frame of up to
    ``outbox_frame_messages`` messages (~290 KB for a task's frame of 500): 4096 of them
    would let a million-recipient task's backlog (2,000 frames) sit in the worker's memory
    instead of in Kafka."""
    return max(16, 8 * max(1, settings.batch_size // settings.outbox_frame_messages))


def _register_housekeeping(app: faust.App, runtime: Runtime, health: WorkerHealth) -> None:
    @app.timer(interval=1.0)
    async def health_tick() -> None:
        consumer = cast(GuardedConsumer, app.consumer)
        partitions, uncommitted = consumer.uncommitted()
        health.tick(partitions, uncommitted, consumer.committed_at)

    @app.timer(interval=runtime.settings.rules_check_interval)
    async def check_rules() -> None:
        changed = await runtime.rules.check_async()
        if changed:
            runtime.metrics.rules_reloads.labels("ok").inc()
        _export_rule_counts(runtime)


def _export_rule_counts(runtime: Runtime) -> None:
    book = runtime.rules.current.rulebook
    runtime.metrics.rules_loaded.labels("trigger").set(len(book.triggers))
    runtime.metrics.rules_loaded.labels("channel").set(len(book.channel_rules))
    runtime.metrics.rules_loaded.labels("template").set(len(book.templates))
