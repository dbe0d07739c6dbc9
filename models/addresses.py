"""Dead addresses: contact values a provider said will never work.

When a provider answers INVALID_ADDRESS (an unregistered device token, a
number that does not exist, a WeChat user who unsubscribed), the channel
agent records the address here, and the next message to it fails at once
with ``address_dead`` instead of being sent again. Records expire (a user may
re-subscribe, a number may be reassigned). Only a hash of ``field:value`` is
stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from models.storage import execute_rows


def address_key(field: str, value: str) -> str:
    return hashlib.sha256(f"{field}:{value}".encode()).hexdigest()


def address_of(fields: Sequence[str], contact: Mapping[str, str]) -> tuple[str, str] | None:
    """The (field, value) a provider sending to ``fields`` would use for this contact."""
    for field in fields:
        value = contact.get(field)
        if value:
            return field, value
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class DeadAddress:
    key: str
    field: str
    channel: str
    provider: str
    code: str


class DeadAddressStore:
    def __init__(self, pool: Any, ttl_ms: int) -> None:
        self.pool = pool
        self.ttl_ms = ttl_ms

    async def dead_among(self, keys: Sequence[str], now_ms: int) -> set[str]:
        """The keys recorded as dead and not expired."""
        unique = sorted(set(keys))
        if not unique:
            return set()
        placeholders = ",".join(["%s"] * len(unique))
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                f"SELECT address_key FROM dead_addresses WHERE address_key IN ({placeholders})"
                " AND expires_at > %s",
                [*unique, now_ms],
            )
            return {row[0] for row in await cur.fetchall()}

    async def record(self, dead: Sequence[DeadAddress], now_ms: int) -> None:
        rows = [(d.key, d.field, d.channel, d.provider, d.code, now_ms, now_ms + self.ttl_ms) for d in dead]
        await execute_rows(
            self.pool,
            "INSERT INTO dead_addresses"
            " (address_key, field, channel, provider, code, recorded_at, expires_at)",
            "ON DUPLICATE KEY UPDATE channel = VALUES(channel), provider = VALUES(provider),"
            " code = VALUES(code), recorded_at = VALUES(recorded_at), expires_at = VALUES(expires_at)",
            rows,
        )
