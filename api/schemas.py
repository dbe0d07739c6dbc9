"""Response models and the documented event schema of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

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
