"""Cancellations of delayed messages, kept in Redis beside the deferred queue.

Two kinds of key, both with an expiry:

- ``<prefix>cxp:<trigger id>:<user id>``: a sorted set of the message ids of
  that trigger still waiting for that user (*pending*), each scored by the
  position of the event that planned it (its offset in the user's events
  partition), added when the trigger agent schedules a cancellable delayed
  message;
- ``<prefix>cx:<message id>``: the message was cancelled. Set for every
  pending member planned before a later event of the user that matches the
  trigger's ``cancel_if``; those members leave the set.

"Later" is the user's partition order: events of one user are on one
partition, planned one by one, so a cancelling event reaches exactly the
messages planned from events before it. Comparing positions, not the order
the operations happen to run in, keeps a replayed batch right: after a crash
the batch's operations run again on top of their own effects, and a
replayed cancel must not reach a message the same batch planned after it.
The operations of one trigger batch run in one script call. The channel
agent reads the ``cx:`` markers of a batch in one ``MGET``. A user whose
events cancel nothing costs one lookup of a missing key and no memory.
The script builds keys from set members, so it needs a single Redis (not a
cluster), like the rest of reach's Redis state. Changing the events topic's
partition count moves users to other partitions, whose positions do not
compare: messages waiting across such a change may be cancelled wrongly or
not at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

# How long after its due time a delayed message can still be cancelled: it normally goes
# out within a second of it; the hour covers a backlog, throttling and retries.
CANCEL_GRACE_MS = 3_600_000

# ARGV: prefix, cancelled-marker ttl (ms), then per operation 5 values:
#   "p", "<trigger>:<user>", message id, pending ttl (ms), position   -- a message now pending
#   "c", "<trigger>:<user>", "", "", position    -- cancel what is pending from before position
_APPLY = """
local prefix, cancelled_ttl, cancelled = ARGV[1], ARGV[2], 0
for i = 3, #ARGV, 5 do
  local pending = prefix .. 'cxp:' .. ARGV[i + 1]
  if ARGV[i] == 'p' then
    redis.call('ZADD', pending, ARGV[i + 4], ARGV[i + 2])
    local ttl = tonumber(ARGV[i + 3])
    if redis.call('PTTL', pending) < ttl then redis.call('PEXPIRE', pending, ttl) end
  else
    local before = '(' .. ARGV[i + 4]
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', before)) do
      redis.call('SET', prefix .. 'cx:' .. id, '1', 'PX', cancelled_ttl)
      cancelled = cancelled + 1
    end
    redis.call('ZREMRANGEBYSCORE', pending, '-inf', before)
  end
end
return cancelled
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Pending:
    """A cancellable delayed message was scheduled by the event at ``position``;
    remember it for ``ttl_ms``."""

    trigger_id: str
    user_id: str
    message_id: str
    ttl_ms: int
    position: int


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    """The event at ``position`` of ``user_id`` matched the ``cancel_if`` of ``trigger_id``."""

    trigger_id: str
    user_id: str
    position: int


CancelOp = Pending | Cancel


def script_args(ops: Sequence[CancelOp]) -> list[str | int]:
    """The script's operation arguments, in order (trigger ids contain no ``:``)."""
    args: list[str | int] = []
    for op in ops:
        scope = f"{op.trigger_id}:{op.user_id}"
        if isinstance(op, Pending):
            args += ["p", scope, op.message_id, op.ttl_ms, op.position]
        else:
            args += ["c", scope, "", "", op.position]
    return args


class CancelMarkers:
    """Pending and cancelled delayed messages (see the module docstring)."""

    def __init__(self, redis: Any, prefix: str, cancelled_ttl_ms: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.cancelled_ttl_ms = cancelled_ttl_ms
        self._apply = redis.register_script(_APPLY)

    async def apply(self, ops: Sequence[CancelOp]) -> int:
        """Run ``ops`` in order, atomically; returns how many messages were cancelled.
        Idempotent: a replayed batch sets the same markers again."""
        if not ops:
            return 0
        args = [self.prefix, self.cancelled_ttl_ms, *script_args(ops)]
        return int(await self._apply(keys=[], args=args))

    async def cancelled(self, message_ids: Sequence[str]) -> set[str]:
        """The ids among ``message_ids`` that were cancelled: one ``MGET``."""
        if not message_ids:
            return set()
        values = await self.redis.mget([f"{self.prefix}cx:{m}" for m in message_ids])
        return {m for m, v in zip(message_ids, values, strict=True) if v is not None}
