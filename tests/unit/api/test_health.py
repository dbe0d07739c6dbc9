"""Readiness checks: what one check reports, and that a hung dependency cannot hang it."""

from __future__ import annotations

import asyncio
import time

from api.health import check


async def answers() -> None:
    return None


async def refuses() -> None:
    raise ConnectionRefusedError("no")


async def hangs() -> None:
    await asyncio.Event().wait()


async def test_a_dependency_that_answers_is_ok() -> None:
    result = await check("kafka", answers, within_s=1)
    assert result["dependency"] == "kafka" and result["status"] == "ok" and "error" not in result


async def test_a_failing_dependency_is_unavailable_with_the_error_type() -> None:
    result = await check("database", refuses, within_s=1)
    assert (result["status"], result["error"]) == ("unavailable", "ConnectionRefusedError")


async def test_a_hung_dependency_is_unavailable_once_the_bound_passes() -> None:
    started = time.monotonic()
    result = await check("database", hangs, within_s=0.05)
    assert (result["status"], result["error"]) == ("unavailable", "TimeoutError")
    assert time.monotonic() - started < 1 and result["seconds"] >= 0.05
