"""Tracking events: what became of a message after it was sent, as the tracking topic carries it.

One event says that one message reached one engagement stage::

    {"message_id": "9f2c...", "kind": "opened", "ts": 1760000000000}

``ts`` is when reach saw it (ms since the epoch). Each record is one event keyed by its
message id, so all of a message's events are on one partition and one consumer applies
them; the consumer also reads a frame (a JSON array of events, :func:`models.outbox.unpack`),
as the results topic is written.

Who emits which kind:

* ``delivered``: the API, when a provider's receipt moved the message to delivered;
* ``displayed``: the API, when the app reports a pop-up shown on screen;
* ``opened``: the API, for an inbox message marked read and for the e-mail open pixel;
* ``clicked``: the API, when a tracked link redirects.

Nothing here is a count: the consumer (:mod:`agents.tracking`) keeps the first time of
each kind per message, so an event replayed, a pixel loaded twice or a link clicked
again counts once.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import Any

import orjson

from models.outbox import unpack

MAX_MESSAGE_ID_CHARS = 64


class Kind(enum.StrEnum):
    """The engagement stages, in funnel order."""

    DELIVERED = "delivered"
    DISPLAYED = "displayed"
    OPENED = "opened"
    CLICKED = "clicked"


KINDS: tuple[Kind, ...] = tuple(Kind)


@dataclasses.dataclass(frozen=True, slots=True)
class TrackingEvent:
    message_id: str
    kind: Kind
    ts: int  # ms since the epoch, reach's clock

    def to_dict(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "kind": self.kind.value, "ts": self.ts}

    @classmethod
    def from_dict(cls, data: Any) -> TrackingEvent:
        """Raises ``ValueError`` unless ``data`` is a well-formed event."""
        if not isinstance(data, dict):
            raise ValueError("a tracking event is a JSON object")
        message_id, kind, ts = data.get("message_id"), data.get("kind"), data.get("ts")
        if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS:
            raise ValueError("'message_id' must be a string of 1-64 characters")
        if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
            raise ValueError("'ts' must be a non-negative integer")
        if not isinstance(kind, str):
            raise ValueError("'kind' must be one of " + ", ".join(KINDS))
        return cls(message_id, Kind(kind), ts)


def record(event: TrackingEvent) -> tuple[bytes, bytes]:
    """The event's record, keyed by its message id: a message's events share a partition."""
    return event.message_id.encode(), orjson.dumps(event.to_dict())


def decode(values: Iterable[bytes]) -> tuple[list[TrackingEvent], int]:
    """The events of some records, and how many events (or whole records) did not decode.

    Only a producer other than reach's API can write a bad one; it is counted and skipped.
    """
    events: list[TrackingEvent] = []
    bad = 0
    for value in values:
        try:
            items = unpack(value)
        except ValueError:
            bad += 1
            continue
        for item in items:
            try:
                events.append(TrackingEvent.from_dict(item))
            except ValueError:
                bad += 1
    return events, bad
