"""Delivery statistics over ``delivery_results``: counts and rates by channel, provider, platform.

A message counts once, in the state of its latest attempt, and falls in a time
range when that attempt's ``completed_at`` (when the send outcome was known)
is inside it. A receipt does not move a message to another range: it changes
the status, not ``completed_at``.

Per group:

* ``messages``: messages in the range;
* ``sent`` / ``delivered`` / ``failed`` / ``unknown``: by the latest attempt's status;
* ``pending``: the latest attempt is ``retrying`` (another attempt is scheduled);
* ``suppressed``: reach decided not to send it (a delayed message cancelled by ``cancel_if``);
* ``success_rate`` = delivered / (delivered + failed), None when both are 0. Meaningful
  for providers that send receipts: elsewhere nothing is ever delivered;
* ``accepted_rate`` = (sent + delivered) / (messages - suppressed): the share a provider took
  of the messages offered to it;
* ``displayed`` / ``opened`` / ``clicked``: the engagement funnel, the messages of the group
  that have reached that stage by now (``message_engagement``: a pop-up shown, an inbox message
  read or an e-mail's pixel loaded, a tracked link followed), each message at most once. With
  ``sent`` and ``delivered`` these are the funnel of the messages sent in the range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from models.messages import DeliveryStatus

# status of the latest attempt -> the count it adds to
_COUNTED: dict[str, str] = {
    DeliveryStatus.SENT.value: "sent",
    DeliveryStatus.DELIVERED.value: "delivered",
    DeliveryStatus.FAILED.value: "failed",
    DeliveryStatus.UNKNOWN.value: "unknown",
    DeliveryStatus.RETRYING.value: "pending",
    DeliveryStatus.SUPPRESSED.value: "suppressed",
}


@dataclasses.dataclass(slots=True)
class DeliveryCounts:
    messages: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    unknown: int = 0
    pending: int = 0
    suppressed: int = 0
    displayed: int = 0
    opened: int = 0
    clicked: int = 0

    def add(self, status: str, count: int, engaged: tuple[int, int, int] = (0, 0, 0)) -> None:
        """``count`` messages of ``status``, of which ``engaged`` were displayed, opened, clicked."""
        self.messages += count
        field = _COUNTED.get(status)
        if field is not None:
            setattr(self, field, getattr(self, field) + count)
        self.displayed += engaged[0]
        self.opened += engaged[1]
        self.clicked += engaged[2]

    @property
    def success_rate(self) -> float | None:
        finished = self.delivered + self.failed
        return self.delivered / finished if finished else None

    @property
    def accepted_rate(self) -> float | None:
        offered = self.messages - self.suppressed  # a suppressed message never reached a provider
        return (self.sent + self.delivered) / offered if offered else None

    def as_dict(self) -> dict[str, Any]:
        """The counts and both rates."""
        return {
            **dataclasses.asdict(self),
            "success_rate": self.success_rate,
            "accepted_rate": self.accepted_rate,
        }

    @classmethod
    def total(cls, parts: Iterable[DeliveryCounts]) -> DeliveryCounts:
        summed = cls()
        for part in parts:
            for field in dataclasses.fields(cls):
                setattr(summed, field.name, getattr(summed, field.name) + getattr(part, field.name))
        return summed


@dataclasses.dataclass(frozen=True, slots=True)
class GroupKey:
    channel: str
    provider: str
    platform: str  # device platform from the event, "" when unknown


class DeliveryStatsStore:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def by_group(
        self, from_ms: int, to_ms: int, channel: str | None = None, provider: str | None = None
    ) -> dict[GroupKey, DeliveryCounts]:
        """Counts per (channel, provider, platform) of messages whose latest attempt
        completed in ``[from_ms, to_ms)``, optionally of one channel and/or provider."""
        where = ["r.completed_at >= %s", "r.completed_at < %s"]
        args: list[Any] = [from_ms, to_ms]
        for column, value in (("channel", channel), ("provider", provider)):
            if value is not None:
                where.append(f"r.{column} = %s")
                args.append(value)
        # The latest attempt: no row of the same message with a higher attempt (primary key lookup).
        # The engagement rows join by primary key; COUNT(column) counts the stages reached.
        sql = (
            "SELECT r.channel, r.provider, r.platform, r.status, COUNT(*), "
            "COUNT(e.displayed_at), COUNT(e.opened_at), COUNT(e.clicked_at) FROM delivery_results r "
            "LEFT JOIN message_engagement e ON e.message_id = r.message_id "
            f"WHERE {' AND '.join(where)} AND NOT EXISTS (SELECT 1 FROM delivery_results n "
            "WHERE n.message_id = r.message_id AND n.attempt > r.attempt) "
            "GROUP BY r.channel, r.provider, r.platform, r.status"
        )
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            rows = await cur.fetchall()
        groups: dict[GroupKey, DeliveryCounts] = {}
        for channel_name, provider_name, platform, status, count, *engaged in rows:
            key = GroupKey(channel_name, provider_name, platform)
            displayed, opened, clicked = (int(n) for n in engaged)
            groups.setdefault(key, DeliveryCounts()).add(status, int(count), (displayed, opened, clicked))
        return dict(sorted(groups.items(), key=lambda item: dataclasses.astuple(item[0])))
