"""Produce a batch through the faust app's producer and wait for the broker's acks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def produce_all(app: Any, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    """Send every ``(key, value)`` and return once all are acknowledged."""
    pending = [await app.producer.send(topic, key, value, None, None, None) for key, value in records]
    if pending:
        await asyncio.gather(*pending)
