"""Polling with a deadline, for tests that wait on another thread or process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], Any], within: float, what: str, interval: float = 0.05
) -> Any:
    """:func:`wait_until` for a test running on the event loop: it lets the loop run between
    polls (a closed transport, for one, lets go of its socket on the loop's next turn)."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_for_count(read: Callable[[], Sequence[T]], count: int, timeout: float, what: str) -> list[T]:
    """Poll ``read`` (a snapshot of a growing list) until it holds ``count`` items; returns them."""
    latest: list[T] = []

    def enough() -> bool:
        latest[:] = read()
        return len(latest) >= count

    wait_until(enough, timeout, what, interval=0.05)
    return latest
