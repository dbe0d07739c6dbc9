"""Dead-letter records that always fit on their topic.

A dead-letter record carries the item it is about, so a record for an item
near the topic's size limit would itself be too large, and a producer error
on it would hold the partition back for good. :func:`dumps_within` cuts the
item's field so that the record fits, and says so.
"""

from __future__ import annotations

from typing import Any

import orjson

#: room left under the topic's record limit for the key and Kafka's record overhead
RECORD_HEADROOM = 1024
_WORST_BYTES_PER_CHAR = 6  # a control character escaped as \u00XX


def dumps_within(record: dict[str, Any], field: str, limit: int) -> bytes:
    """``record`` as JSON, at most ``limit`` bytes: an oversized ``field`` is replaced by the
    start of its text, and ``"truncated": true`` is added."""
    data = orjson.dumps(record)
    if len(data) <= limit:
        return data
    value = record[field]
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    rest = len(orjson.dumps({**record, field: "", "truncated": True}))
    budget = max(0, (limit - rest) // _WORST_BYTES_PER_CHAR)
    return orjson.dumps({**record, field: text[:budget], "truncated": True})


def value_limit(max_message_bytes: int) -> int:
    """The largest record value reach produces to a topic of ``max_message_bytes``."""
    return max(1, max_message_bytes - RECORD_HEADROOM)
