"""User preferences: which channels and categories a user accepts.

MariaDB (``user_preferences``) is the record; Redis holds a copy per user (a hash
``<prefix>pref:<user>`` of ``channel|category`` -> ``1``/``0`` plus a ``_`` field that
says "loaded"), so the channel agents read the preferences of a batch's users in one
Redis round trip and ask MariaDB only for users whose copy is missing (one query per
batch; the copy then stays for ``preferences_cache_ttl``).

Consistency: a write replaces the user's whole copy after its transaction committed,
and the agents fill a missing copy only while it is still missing (one script), so a
fill from a read older than the write can never overwrite it. A write whose copy could
not be replaced raises: the caller's retry replaces it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from models.storage import in_transaction

ANY = "*"  # a row for every channel or every category
LOADED = "_"  # the field that marks a user's copy as complete (a user with no rows has only it)
Choices = Mapping[str, bool]  # "channel|category" -> allowed

RETRYABLE = frozenset({1213, 9007})
TRIES = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Preference:
    channel: str  # a channel name or "*"
    category: str  # a category or "*"
    allowed: bool
    source: str = "api"  # api | unsubscribe | provider (error 21610) | twilio_stop | twilio_start
    updated_at: int = 0

    @property
    def field(self) -> str:
        return field_of(self.channel, self.category)


def field_of(channel: str, category: str) -> str:
    return f"{channel}|{category}"


def allows(choices: Choices, channel: str, category: str) -> bool:
    """Whether a user with these choices accepts a message: the most specific row wins
    (channel and category, then the channel, then the category, then everything)."""
    for key in (field_of(channel, category), field_of(channel, ANY), field_of(ANY, category), "*|*"):
        choice = choices.get(key)
        if choice is not None:
            return choice
    return True


def choices_of(preferences: Sequence[Preference]) -> dict[str, bool]:
    return {p.field: p.allowed for p in preferences}


class PreferenceStore:
    """The MariaDB record."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def of_user(self, user_id: str) -> list[Preference]:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            return await _rows(cur, user_id)

    async def choices_of(self, user_ids: Sequence[str]) -> dict[str, dict[str, bool]]:
        """Every given user's choices (empty for a user with none), in one query."""
        found: dict[str, dict[str, bool]] = {u: {} for u in user_ids}
        if not user_ids:
            return found
        marks = ",".join(["%s"] * len(user_ids))
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT user_id, channel, category, allowed FROM user_preferences "
                f"WHERE user_id IN ({marks})",
                list(user_ids),
            )
            for user_id, channel, category, allowed in await cur.fetchall():
                found[user_id][field_of(channel, category)] = bool(allowed)
        return found

    async def put(self, user_id: str, changes: Sequence[Preference], now_ms: int) -> list[Preference]:
        """Upsert ``changes`` and return all of the user's rows as committed."""

        async def work(_conn: Any, cur: Any) -> list[Preference]:
            rows = [(user_id, p.channel, p.category, int(p.allowed), p.source, now_ms) for p in changes]
            if rows:
                await cur.execute(
                    "INSERT INTO user_preferences (user_id, channel, category, allowed, source, updated_at) "
                    f"VALUES {','.join(['(%s,%s,%s,%s,%s,%s)'] * len(rows))} ON DUPLICATE KEY UPDATE "
                    "allowed = VALUES(allowed), source = VALUES(source), updated_at = VALUES(updated_at)",
                    [v for row in rows for v in row],
                )
            return await _rows(cur, user_id, lock=True)

        result: list[Preference] = await in_transaction(self.pool, work, RETRYABLE, TRIES)
        return result


async def _rows(cur: Any, user_id: str, lock: bool = False) -> list[Preference]:
    await cur.execute(
        "SELECT channel, category, allowed, source, updated_at FROM user_preferences "
        "WHERE user_id = %s ORDER BY channel, category" + (" FOR UPDATE" if lock else ""),
        [user_id],
    )
    return [Preference(c, g, bool(a), s, u) for c, g, a, s, u in await cur.fetchall()]


# KEYS: the users' hashes; ARGV[1]: ttl seconds; ARGV[i + 1]: JSON [field, value, ...] for KEYS[i].
_FILL_MISSING = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then
    local pairs = cjson.decode(ARGV[i + 1])
    redis.call('HSET', key, '_', '1', unpack(pairs))
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return #KEYS
"""


class PreferenceCache:
    """The Redis copy."""

    def __init__(self, redis: Any, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds
        self._fill = redis.register_script(_FILL_MISSING)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}pref:{user_id}"

    async def read(self, user_ids: Sequence[str]) -> dict[str, dict[str, bool] | None]:
        """Each user's cached choices, or None when the copy is missing."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hgetall(self.key(user_id))
            hashes = await pipe.execute()
        return {u: _decoded(h) for u, h in zip(user_ids, hashes, strict=True)}

    async def fill_missing(self, choices: Mapping[str, Choices]) -> None:
        if not choices:
            return
        users = list(choices)
        args = [orjson.dumps(_flat(choices[u])).decode() for u in users]
        await self._fill(keys=[self.key(u) for u in users], args=[self.ttl, *args])

    async def replace(self, user_id: str, choices: Choices) -> None:
        key = self.key(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping={LOADED: "1", **{f: "1" if v else "0" for f, v in choices.items()}})
            pipe.expire(key, self.ttl)
            await pipe.execute()


def _flat(choices: Choices) -> list[str]:
    return [item for field, allowed in choices.items() for item in (field, "1" if allowed else "0")]


def _decoded(raw: Mapping[bytes, bytes]) -> dict[str, bool] | None:
    if not raw or LOADED.encode() not in raw:
        return None
    return {k.decode(): v == b"1" for k, v in raw.items() if k != LOADED.encode()}


class Preferences:
    """The record and its copy together: what the API writes through and the agents read."""

    def __init__(self, store: PreferenceStore, cache: PreferenceCache) -> None:
        self.store = store
        self.cache = cache

    async def choices_of(self, user_ids: Sequence[str]) -> dict[str, dict[str, bool]]:
        """The batch read: one Redis round trip, plus one query for users not cached."""
        cached = await self.cache.read(list(user_ids))
        missing = [u for u, c in cached.items() if c is None]
        loaded = await self.store.choices_of(missing) if missing else {}
        await self.cache.fill_missing(loaded)
        return {u: c if c is not None else loaded[u] for u, c in cached.items()}

    async def of_user(self, user_id: str) -> list[Preference]:
        return await self.store.of_user(user_id)

    async def put(self, user_id: str, changes: Sequence[Preference], now_ms: int) -> list[Preference]:
        rows = await self.store.put(user_id, changes, now_ms)
        await self.cache.replace(user_id, choices_of(rows))
        return rows

    async def opt_out(self, user_ids: Sequence[str], channel: str, source: str, now_ms: int) -> None:
        """Record that these users opted out of ``channel`` (every category); idempotent."""
        for user_id in dict.fromkeys(user_ids):
            await self.put(user_id, [Preference(channel, ANY, False, source)], now_ms)
