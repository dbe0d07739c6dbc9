"""Outbox and results records: many reach messages (or results) in one Kafka record.

Every Kafka record costs the consuming faust agent the same, whatever its size
(tens of microseconds of CPU), so the trigger agent and the deferred pump pack
the messages of a batch into *frames*: a record whose value is a JSON array of
messages, at most ``max_messages`` of them and at most ``max_bytes`` in all. A
record whose value is one JSON object is one message (what earlier versions
wrote), so an outbox written before an upgrade is still delivered.

A frame is keyed by its first message's user id, which spreads frames over the
partitions; nothing downstream depends on a user's messages sharing one. The
channel agents write the results topic the same way (frames of results, keyed
by the first result's message id): a consumer of ``<prefix>results`` reads each
record with ``unpack``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

Record = tuple[bytes | None, bytes]


def pack(messages: Iterable[Record], max_messages: int, max_bytes: int) -> list[Record]:
    """Frames of ``(key, encoded message)`` pairs, in order; a message over ``max_bytes``
    on its own still gets a frame of its own (the caller refuses those before)."""
    frames: list[Record] = []
    key: bytes | None = None
    parts: list[bytes] = []
    size = 2  # the brackets
    for message_key, value in messages:
        if parts and (len(parts) >= max_messages or size + 1 + len(value) > max_bytes):
            frames.append((key, _frame(parts)))
            parts, size = [], 2
        if not parts:
            key = message_key
        parts.append(value)
        size += len(value) + (1 if len(parts) > 1 else 0)
    if parts:
        frames.append((key, _frame(parts)))
    return frames


def _frame(parts: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def unpack(value: bytes) -> list[Any]:
    """The messages of one outbox record as decoded JSON values (not yet checked).

    Raises ``ValueError`` when the record is not JSON, or is neither an array nor an object.
    """
    data = orjson.loads(value)
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return [data]
    raise ValueError("an outbox record is a JSON array of messages or one message object")
