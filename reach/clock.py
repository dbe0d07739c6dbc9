"""Injectable clock: production uses the wall clock, tests advance a manual one.

Every time reach decides by (windows, caps, quiet hours, token lifetimes, Retry-After
dates, signed timestamps) comes from the one clock the entry point builds, so a test moves
time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` by this clock (a poll's interval; never to wait out a limit)."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to; :meth:`sleep` moves it by the time slept (and
    lets the other tasks run), so a loop that polls until a deadline ends at once."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        self._now += ms

    def seconds(self) -> float:
        """The time in epoch seconds, for a fake server that checks timestamps by this clock."""
        return self._now / 1000

    async def sleep(self, seconds: float) -> None:
        self.advance(round(seconds * 1000))
        await asyncio.sleep(0)
