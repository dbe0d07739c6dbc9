"""State the worker keeps in Redis so that it survives worker restarts.

- :class:`WindowThrottle`: tumbling-window counters per channel and per
  provider, keys named by window start with an expiry. Because they live in
  Redis, not in the worker, a restarted worker sees the counts of the window
  it left (faust's windowed tables do not rebuild their expiry on restart).
- :class:`SentMarkers`: message ids already sent, so a replayed batch after
  a crash never sends twice.
- :class:`DeferredQueue`: messages waiting for a later window or a retry,
  in a sorted set scored by the time they may go.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

# Grants up to ARGV[1] sends in the current window of a channel and of one of
# its providers, never more than either limit (-1 = unlimited), atomically.
_ACQUIRE = """
local wanted = tonumber(ARGV[1])
local grant = wanted
local used_channel = tonumber(redis.call('GET', KEYS[1]) or '0')
local used_provider = tonumber(redis.call('GET', KEYS[2]) or '0')
local channel_limit = tonumber(ARGV[2])
local provider_limit = tonumber(ARGV[3])
if channel_limit >= 0 then grant = math.min(grant, channel_limit - used_channel) end
if provider_limit >= 0 then grant = math.min(grant, provider_limit - used_provider) end
if grant <= 0 then return 0 end
redis.call('INCRBY', KEYS[1], grant)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('INCRBY', KEYS[2], grant)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return grant
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    granted: int
    window_start: int  # ms
    window_end: int  # ms: when the next window opens


class WindowThrottle:
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(
        self,
        channel: str,
        provider: str,
        wanted: int,
        now_ms: int,
        window_ms: int,
        channel_limit: int | None,
        provider_limit: int | None,
    ) -> Grant:
        """Take up to ``wanted`` sends from the window containing ``now_ms``."""
        start = now_ms - now_ms % window_ms
        keys = [
            f"{self.prefix}thr:{channel}:{window_ms}:{start}",
            f"{self.prefix}thr:{channel}:{provider}:{window_ms}:{start}",
        ]
        args = [wanted, _limit(channel_limit), _limit(provider_limit), 2 * window_ms]
        granted = int(await self._acquire(keys=keys, args=args))
        return Grant(granted, start, start + window_ms)


def _limit(limit: int | None) -> int:
    return -1 if limit is None else limit


_SET_ALL = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
end
return #KEYS
"""


class MarkerState(enum.Enum):
    DONE = b"1"  # the message reached a final outcome (sent, failed, unknown)
    SENDING = b"s"  # handed to a provider; a crash may have interrupted it


class SentMarkers:
    """Per message id: done, or being sent right now. Read before sending a batch.

    A replayed batch skips DONE messages. A message left in SENDING was being
    sent when its worker died: whether the provider got it is unknown.
    """

    def __init__(self, redis: Any, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds
        # One script call sets a batch: a pipeline of SET EX costs ~50 us of client CPU a
        # key here, the script ~10 us.
        self._set_all = redis.register_script(_SET_ALL)

    def _key(self, message_id: str) -> str:
        return f"{self.prefix}sent:{message_id}"

    async def states(self, message_ids: Sequence[str]) -> dict[str, MarkerState]:
        """The marked ids among ``message_ids``, with their state."""
        if not message_ids:
            return {}
        values = await self.redis.mget([self._key(m) for m in message_ids])
        return {m: MarkerState(v) for m, v in zip(message_ids, values, strict=True) if v is not None}

    async def already_sent(self, message_ids: Sequence[str]) -> set[str]:
        states = await self.states(message_ids)
        return {m for m, state in states.items() if state is MarkerState.DONE}

    async def mark(self, message_ids: Sequence[str]) -> None:
        await self._set(message_ids, MarkerState.DONE)

    async def claim(self, message_ids: Sequence[str]) -> None:
        """Mark ids as being sent, just before the provider is called."""
        await self._set(message_ids, MarkerState.SENDING)

    async def release(self, message_ids: Sequence[str]) -> None:
        """Forget ids whose attempt failed before reaching anyone (they will be retried)."""
        if message_ids:
            await self.redis.delete(*[self._key(m) for m in message_ids])

    async def _set(self, message_ids: Sequence[str], state: MarkerState) -> None:
        if not message_ids:
            return
        await self._set_all(keys=[self._key(m) for m in message_ids], args=[state.value, self.ttl])


class DeferredQueue:
    """Messages (as bytes) scheduled for a later time, shared by all workers."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}deferred"

    async def add(self, items: Sequence[tuple[int, bytes]]) -> None:
        """Schedule each ``(not_before_ms, payload)``."""
        if items:
            await self.redis.zadd(self.key, {payload: when for when, payload in items})

    async def due(self, now_ms: int, limit: int) -> list[bytes]:
        return list(await self.redis.zrangebyscore(self.key, "-inf", now_ms, start=0, num=limit))

    async def remove(self, payloads: Sequence[bytes]) -> None:
        if payloads:
            await self.redis.zrem(self.key, *payloads)

    async def pending(self) -> int:
        return int(await self.redis.zcard(self.key))
