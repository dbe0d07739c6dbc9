"""Site messages: stored in MariaDB/TiDB and read by the app through the HTTP API."""

from __future__ import annotations

from collections.abc import Sequence

import pymysql

from channels.base import Delivery, Outcome, Provider, StartHook, no_start_hook
from models.storage import InboxItem, InboxStore


class InboxProvider(Provider):
    """Stores each message in ``inbox_messages``; a replayed message id is a no-op."""

    type_name = "inbox"
    idempotent = True  # stored by message id: a repeat is a no-op
    max_content_bytes = 60_000  # the body is a TEXT column (64 KiB)
    tracked_links = True  # the app shows the stored body

    async def setup(self) -> None:
        if self.context.mysql_pool is None:
            raise ValueError(f"provider {self.name!r}: the inbox needs the MySQL pool")
        self.store = InboxStore(self.context.mysql_pool)

    async def send_batch(
        self, deliveries: Sequence[Delivery], started: StartHook = no_start_hook
    ) -> list[Outcome]:
        items = [_item(d) for d in deliveries]
        await started(deliveries)
        try:
            await self.store.insert(items)
        except pymysql.err.OperationalError as exc:
            # The database is down or overloaded: the agent retries the batch later.
            outcome = Outcome.retry("db_unavailable", f"inbox store unavailable ({exc.args[0]})", 1.0)
            return [outcome] * len(deliveries)
        return [Outcome.sent(item.message_id) for item in items]


def _item(delivery: Delivery) -> InboxItem:
    message = delivery.message
    return InboxItem(
        message_id=message.message_id,
        user_id=message.user_id,
        rule_id=message.rule_id,
        template=message.template,
        title=delivery.content.title,
        body=delivery.content.text,
        priority=message.priority,
        created_at=message.created_ts,
    )
