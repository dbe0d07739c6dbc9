"""Deferred pump: moves due messages (throttled or retrying) back to their outbox topic.

Runs on the leader only. A message is removed from the queue only after the
broker acknowledged it, so a crash in between republishes it; the channel
agent's sent markers make that harmless.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from agents.guard import run_step
from agents.produce import produce_all
from agents.records import value_limit
from models.messages import ReachMessage
from models.outbox import pack
from reach.runtime import Runtime

BATCH = 2000


async def pump_once(app: Any, runtime: Runtime) -> int:
    """Republish up to BATCH due messages; return how many."""
    queue = runtime.deferred
    due = await queue.due(runtime.clock.now_ms(), BATCH)
    by_topic: dict[str, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    for payload in due:
        message = ReachMessage.from_bytes(payload)
        by_topic[runtime.settings.outbox_topic(message.channel)].append((message.user_id.encode(), payload))
    limit = value_limit(runtime.settings.kafka_max_message_bytes)
    for topic, records in by_topic.items():
        await produce_all(app, topic, pack(records, runtime.settings.outbox_frame_messages, limit))
    await queue.remove(due)
    return len(due)


def register(app: Any, runtime: Runtime) -> None:
    async def pump() -> None:
        async def drain() -> None:
            while await pump_once(app, runtime) == BATCH:
                pass

        await run_step("deferred", drain)
        runtime.metrics.deferred_pending.set(await runtime.deferred.pending())

    app.timer(interval=runtime.settings.deferred_poll_interval, on_leader=True)(pump)
