"""Frequency-cap counters in Redis: exact across workers, idempotent per message.

Each (user, category, scope) has a sorted set ``<prefix>cap:<user>:<category>:<scope>``
(scope: a channel, or ``*`` across channels) of the message ids it let through, scored
by when. One script call decides a whole batch in order: a message is admitted when
every cap it falls under still has room in its window (the members scored since the
window's start), and is then added to every scope it counts in. Redis runs a script
alone, so two workers never admit more than a cap between them; a message admitted once
(a retry, a replayed batch) is admitted again without counting twice, and a restart
forgets nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson

# ARGV[1]: JSON [[member, now, [[key, window_start, limit, keep_ms], ...]], ...] (numbers as
# strings: Lua would print a number with 14 significant digits). Returns three values for
# each message refused, none for the others (most of a batch: the reply stays small): its
# index in the batch (1-based), the index (1-based) of its first full cap, and the score of
# the oldest member in that cap's window (when the window frees a place).
_ADMIT = """
local out = {}
for i, check in ipairs(cjson.decode(ARGV[1])) do
  local member, now, caps = check[1], check[2], check[3]
  local full, oldest = 0, 0
  if #caps > 0 and not redis.call('ZSCORE', caps[1][1], member) then
    for j, cap in ipairs(caps) do
      if redis.call('ZCOUNT', cap[1], cap[2], '+inf') >= tonumber(cap[3]) then
        full = j
        local first = redis.call('ZRANGEBYSCORE', cap[1], cap[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
        oldest = first[2] or now
        break
      end
    end
    if full == 0 then
      for _, cap in ipairs(caps) do
        redis.call('ZADD', cap[1], now, member)
        redis.call('ZREMRANGEBYSCORE', cap[1], '-inf', '(' .. (tonumber(now) - tonumber(cap[4])))
        redis.call('PEXPIRE', cap[1], cap[4])
      end
    end
  end
  if full > 0 then
    out[#out + 1] = i
    out[#out + 1] = full
    out[#out + 1] = oldest
  end
end
return out
"""


@dataclasses.dataclass(frozen=True, slots=True)
class CapCheck:
    """One cap a message falls under: its set, where its window starts, its limit, and how
    long the set must keep a member for the longest window that reads it."""

    key: str
    window_start: int
    limit: int
    keep_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    full: int  # 0: admitted; else the 1-based index of the first cap with no room
    oldest: int  # ms; the oldest member of that cap's window

    @property
    def admitted(self) -> bool:
        return self.full == 0


ADMITTED = Verdict(0, 0)


class CapCounts:
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._admit = redis.register_script(_ADMIT)

    def key(self, user_id: str, category: str, scope: str) -> str:
        return f"{self.prefix}cap:{user_id}:{category}:{scope}"

    async def admit(self, checks: Sequence[tuple[str, int, Sequence[CapCheck]]]) -> list[Verdict]:
        """``checks``: (message id, now, its caps) in batch order; one verdict each."""
        if not checks:
            return []
        payload = [
            [member, str(now), [[c.key, str(c.window_start), str(c.limit), str(c.keep_ms)] for c in caps]]
            for member, now, caps in checks
        ]
        refused = await self._admit(keys=[], args=[orjson.dumps(payload)])
        verdicts = [ADMITTED] * len(checks)
        for i in range(0, len(refused), 3):
            verdicts[int(refused[i]) - 1] = Verdict(int(refused[i + 1]), int(float(refused[i + 2])))
        return verdicts
