"""Response models and the documented event schema of the HTTP API."""

from __future__ import annotations

from typing import Any

from fastapi import Path
from pydantic import BaseModel

from models.delivery_stats import DeliveryCounts, GroupKey
from models.events import MAX_TS_MS, MIN_TS_MS
from models.popups import PopupItem
from models.storage import InboxItem

# What an id in a path may hold: no control or bidi formatting character (as
# models.events.CONTROL_CHARACTERS), written as regex escapes every engine reads.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+$"
USER_ID = Path(min_length=1, max_length=128, pattern=ID_PATTERN)
MESSAGE_ID = Path(min_length=1, max_length=64, pattern=ID_PATTERN)


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str  # a short code: unauthenticated, forbidden, rate_limited, not_found, ...
    message: str
    details: Any = None


_ERRORS = {
    400: "Bad request: the body or a parameter cannot be used",
    401: "No credential, or one that is unknown, revoked, expired or forged (WWW-Authenticate: Bearer)",
    403: "The credential lacks the scope, the user, or the event names this needs",
    404: "Not found",
    409: "Conflicts with the resource's state (a transition it cannot make, a request still in progress)",
    413: "The body is too large",
    415: "The body is not application/json",
    422: "A parameter or the body does not match the schema",
    429: "Over the caller's rate limit; retry after Retry-After seconds",
    503: "A dependency is unavailable; retry after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error ``codes``, each an :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in codes}


# What any authenticated route may answer besides its own outcomes.
AUTHENTICATED = (401, 403, 422, 429, 503)


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


_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN}

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
                {
                    "type": "string",
                    "format": "date-time",
                    "pattern": "^20[0-9]{2}-",
                    "description": "RFC 3339 with offset, years 2000-2099",
                },
                {
                    "type": "integer",
                    "minimum": MIN_TS_MS,
                    "maximum": MAX_TS_MS,
                    "description": "epoch milliseconds, 2000-01-01 to 2100-01-01",
                },
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
    # The engagement funnel: of these messages, how many have been displayed (pop-up shown),
    # opened (inbox read, e-mail pixel) and clicked (a tracked link) so far, each at most once.
    displayed: int
    opened: int
    clicked: int


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
