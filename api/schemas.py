"""Response models and the documented event schema of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from models.delivery_stats import DeliveryCounts, GroupKey
from models.popups import PopupItem
from models.storage import InboxItem


class InboxMessage(BaseModel):
    message_id: str
    title: str
    body: str
    template: str
    priority: int
    created_at: int  # ms since epoch
    read: bool

    @classmethod
    def from_item(cls, item: InboxItem) -> InboxMessage:
        return cls(
            message_id=item.message_id,
            title=item.title,
            body=item.body,
            template=item.template,
            priority=item.priority,
            created_at=item.created_at,
            read=item.read_at is not None,
        )


class InboxPage(BaseModel):
    items: list[InboxMessage]
    unread: int
    next_cursor: str | None


_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 128}

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event_id", "user_id", "name", "ts"],
    "properties": {
        "event_id": {
            **_ID,
            "description": "Unique per event; replays with the same id cause no second message",
        },
        "user_id": _ID,
        "name": {**_ID, "description": "What happened, e.g. signup, order_paid"},
        "ts": {
            "oneOf": [
                {"type": "string", "format": "date-time", "description": "RFC 3339 with offset"},
                {"type": "integer", "description": "epoch milliseconds"},
            ]
        },
        "properties": {"type": "object", "description": "Free-form attributes rules can test"},
        "device": {
            "type": "object",
            "properties": {"platform": {"type": "string", "examples": ["ios", "android", "web"]}},
        },
    },
}

EVENT_REQUEST_SCHEMA: dict[str, Any] = {
    "oneOf": [EVENT_SCHEMA, {"type": "array", "items": EVENT_SCHEMA, "minItems": 1, "maxItems": 1000}]
}


class PopupUpgrade(BaseModel):
    """What an ``upgrade`` pop-up asks for; a field nobody configured is ``""``."""

    platform: str
    minimum_version: str
    upgrade_url: str


class PopupMessage(BaseModel):
    message_id: str
    title: str
    body: str
    priority: int
    show_from: int  # ms since epoch
    show_until: int  # ms since epoch, exclusive
    type: str = "message"  # message | upgrade
    upgrade: PopupUpgrade | None = None  # for type upgrade

    @classmethod
    def from_item(cls, item: PopupItem) -> PopupMessage:
        details = item.detail_map
        upgrade = None
        if item.type == "upgrade":
            upgrade = PopupUpgrade(
                platform=details.get("platform", ""),
                minimum_version=details.get("minimum_version", ""),
                upgrade_url=details.get("upgrade_url", ""),
            )
        return cls(
            message_id=item.message_id,
            title=item.title,
            body=item.body,
            priority=item.priority,
            show_from=item.show_from,
            show_until=item.show_until,
            type=item.type,
            upgrade=upgrade,
        )


class PopupList(BaseModel):
    items: list[PopupMessage]


class DeliveryStatsTotals(BaseModel):
    """Counts of messages by the state of their latest attempt, and the rates derived from them."""

    messages: int
    sent: int  # accepted by the provider, no receipt (yet)
    delivered: int  # a receipt confirmed delivery
    failed: int  # failed for good: refused on send, out of retries, or a failure receipt
    unknown: int  # the send's outcome was lost
    pending: int  # another attempt is scheduled
    success_rate: float | None  # delivered / (delivered + failed); null when both are 0
    accepted_rate: float | None  # (sent + delivered) / messages; null when messages is 0


class DeliveryStatsGroup(DeliveryStatsTotals):
    channel: str
    provider: str
    platform: str  # device platform of the triggering event, "" when unknown


class DeliveryStats(BaseModel):
    from_ms: int  # inclusive, epoch ms
    to_ms: int  # exclusive, epoch ms
    groups: list[DeliveryStatsGroup]  # sorted by channel, provider, platform
    total: DeliveryStatsTotals

    @classmethod
    def build(cls, from_ms: int, to_ms: int, groups: dict[GroupKey, DeliveryCounts]) -> DeliveryStats:
        return cls(
            from_ms=from_ms,
            to_ms=to_ms,
            groups=[
                DeliveryStatsGroup(channel=k.channel, provider=k.provider, platform=k.platform, **c.as_dict())
                for k, c in groups.items()
            ],
            total=DeliveryStatsTotals(**DeliveryCounts.total(groups.values()).as_dict()),
        )
