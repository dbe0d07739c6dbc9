"""Reach messages and delivery results: what flows between the agents.

A :class:`ReachMessage` is one message for one user on one channel. It is
created by the trigger agent when a rule matches, travels on the channel's
outbox topic as JSON, and ends as one :class:`DeliveryResult` per attempt.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson


def message_id_for(rule_id: str, dedup_key: str, channel: str) -> str:
    """Deterministic id: re-processing the same event yields the same id.

    That is what makes every sink idempotent (inbox rows, result rows, the
    sent marker), so at-least-once consumption never becomes a second send.
    """
    digest = hashlib.blake2b(f"{rule_id}\x1f{dedup_key}\x1f{channel}".encode(), digest_size=12)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class ReachMessage:
    message_id: str
    user_id: str
    rule_id: str
    template: str
    channel: str
    provider: str
    priority: int
    event_id: str
    event_name: str
    event_ts: int  # ms since epoch, from the event
    created_ts: int  # ms since epoch, when the rule matched
    variables: Mapping[str, Any]  # template context: event properties and the like
    contact: Mapping[str, str]  # addresses: {"email": ...}, possibly empty
    platform: str = ""  # device platform from the event, "" when unknown
    attempt: int = 1
    not_before: int = 0  # ms since epoch; 0 = send now
    # ms since epoch: the events topic's append time of the event's record (reach's own
    # clock, unlike event_ts); 0 in records written before it existed
    ingested_ts: int = 0
    # A delayed trigger send (a rule's `delay`): when it is due, ms since epoch; 0 = not delayed.
    # Unlike not_before it never moves, so lateness and end-to-end latency count from it.
    due_ts: int = 0
    cancellable: bool = False  # its rule has a `cancel_if`: checked at send time (agents/cancels.py)
    category: str = ""  # the rule's (or task's) category: what policies apply (agents/delivery/policy.py)
    timezone: str = ""  # the user's zone at planning time (profile, else REACH_DEFAULT_TIMEZONE)
    # The app the content is chosen for (a template's min_app_version): the event's, else the
    # one the profile last saw on the channel's platform (agents/plan.py); "" when unknown.
    app_version: str = ""
    app_platform: str = ""
    fallback_from: str = ""  # the channel this message moved from, for an app too old for it there

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)  # orjson encodes the dataclass itself, ~20x faster than asdict

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> ReachMessage:
        """Decode an outbox record; raises ``ValueError`` (or ``TypeError`` for missing or
        unknown fields) unless every field has its type, so no later step trips on one."""
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, data: Any) -> ReachMessage:
        """A message from its decoded JSON; raises like :meth:`from_bytes`."""
        if not isinstance(data, dict):
            raise ValueError("a reach message is a JSON object")
        _check_types(data)
        return cls(**data)

    def replace(self, **changes: Any) -> ReachMessage:
        return dataclasses.replace(self, **changes)


_TEXT_FIELDS = (
    "message_id", "user_id", "rule_id", "template", "channel", "provider",
    "event_id", "event_name", "platform", "category", "timezone", "app_version", "app_platform",
    "fallback_from",
)  # fmt: skip
_INT_FIELDS = ("priority", "event_ts", "created_ts", "attempt", "not_before", "ingested_ts", "due_ts")


def _check_types(data: Mapping[str, Any]) -> None:
    for name in _TEXT_FIELDS:
        if name in data and not isinstance(data[name], str):
            raise ValueError(f"'{name}' must be a string")
    for name in _INT_FIELDS:
        value = data.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"'{name}' must be an integer")
    if not isinstance(data.get("cancellable", False), bool):
        raise ValueError("'cancellable' must be a boolean")
    if not isinstance(data.get("variables", {}), dict):
        raise ValueError("'variables' must be an object")
    contact = data.get("contact", {})
    if not isinstance(contact, dict) or not all(isinstance(v, str) for v in contact.values()):
        raise ValueError("'contact' must be an object of strings")


class DeliveryStatus(enum.StrEnum):
    SENT = "sent"  # accepted by the provider (or stored, for the inbox)
    DELIVERED = "delivered"  # a receipt confirmed delivery
    FAILED = "failed"  # permanent failure; will not be retried
    RETRYING = "retrying"  # temporary failure; another attempt is scheduled
    UNKNOWN = "unknown"  # the outcome could not be determined (connection lost after send)
    SUPPRESSED = "suppressed"  # deliberately not sent (error_code says why, e.g. cancelled); final


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryResult:
    message_id: str
    attempt: int
    user_id: str
    rule_id: str
    channel: str
    provider: str
    status: DeliveryStatus
    platform: str
    event_ts: int
    attempted_at: int  # ms; when the send was decided (throttle window time)
    completed_at: int  # ms; when the outcome was known
    error_code: str = ""
    error: str = ""
    provider_message_id: str = ""
    category: str = ""  # the message's category: engagement is counted by it

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)  # the dataclass itself; the status enum encodes as its value

    @classmethod
    def from_bytes(cls, raw: bytes) -> DeliveryResult:
        data = orjson.loads(raw)
        data["status"] = DeliveryStatus(data["status"])
        return cls(**data)
