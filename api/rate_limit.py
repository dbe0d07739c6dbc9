"""Rate limits per API key and per end user, counted in Redis.

A fixed window per caller: one Lua call (``INCR``, and ``PEXPIRE`` on the window's first
request) per request, keys named by window start, so every API process shares the count
and a restarted one forgets nothing. Over the limit is ``429`` with ``Retry-After`` (the
seconds to the window's end); callers are counted apart, so one key's burst never slows
another. When Redis does not answer the request is let through (and counted): an outage
of the limiter must not become an outage of the API.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis.asyncio as aioredis
import structlog

from api.errors import ApiError
from reach.clock import Clock
from reach.metrics import ApiMetrics
from reach.settings import Settings

log = structlog.get_logger("reach.api.rate_limit")

# Returns the window's count including this request.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""
REDIS_TIMEOUT_S = 0.5  # a request waits at most this for the limiter


def connect(settings: Settings) -> Any:
    return aioredis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )


class RateLimiter:
    def __init__(self, redis: Any, settings: Settings, clock: Clock, metrics: ApiMetrics) -> None:
        self.count = redis.register_script(_COUNT)
        self.prefix = f"{settings.redis_prefix}rl:"
        self.window_ms = settings.rate_window_seconds * 1000
        self.clock, self.metrics = clock, metrics

    async def check(self, kind: str, subject: str, limit: int) -> None:
        """Count one request of ``subject`` (a key id, or a user id: hashed, never stored in
        clear); raise ``ApiError`` 429 when it is over ``limit`` (0: no limit)."""
        if limit <= 0:
            return
        now = self.clock.now_ms()
        start = now - now % self.window_ms
        key = f"{self.prefix}{kind}:{_digest(subject)}:{start}"
        try:
            used = int(await self.count(keys=[key], args=[self.window_ms * 2]))
        except (aioredis.RedisError, OSError) as exc:
            self.metrics.rate_limit_unavailable.inc()
            log.warning("rate_limit.unavailable", error=type(exc).__name__)
            return
        if used > limit:
            self.metrics.rate_limited.labels(kind).inc()
            retry_after = max(1, -(-(start + self.window_ms - now) // 1000))
            raise ApiError(
                429, "rate_limited", f"over {limit} requests per {self.window_ms // 1000} s",
                headers={"Retry-After": str(retry_after)},
            )  # fmt: skip


def _digest(subject: str) -> str:
    return hashlib.blake2b(subject.encode(), digest_size=12).hexdigest()
