"""Run one batch step so that a failure never commits an unprocessed offset.

faust acks a ``take()`` batch when the loop body ends, even by an exception.
So a step must not raise: infrastructure errors (Kafka, MariaDB, Redis
unavailable) are retried with capped backoff until the step succeeds, which
holds the partition back instead of skipping it; any other exception is a bug
and stops the process at once, before the next offset commit, so the batch is
consumed again after the restart.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import structlog

from reach.errors import DEPENDENCY_ERRORS

log = structlog.get_logger("reach.agents")

EXIT_BUG = 70  # EX_SOFTWARE


async def run_step(
    name: str,
    step: Callable[[], Awaitable[None]],
    *,
    first_delay: float = 0.1,
    max_delay: float = 10.0,
    exit_process: Callable[[int], None] = os._exit,
) -> None:
    delay = first_delay
    while True:
        try:
            await step()
            return
        except DEPENDENCY_ERRORS as exc:
            log.warning("agent.step_retry", step=name, error=f"{type(exc).__name__}: {exc}", delay=delay)
            await asyncio.sleep(delay)  # backpressure: the partition waits for its dependency
            delay = min(max_delay, delay * 2)
        except Exception:
            log.exception("agent.step_crashed", step=name)
            exit_process(EXIT_BUG)
            raise
