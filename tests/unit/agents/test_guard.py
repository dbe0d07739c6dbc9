from __future__ import annotations

import pymysql
import pytest

from agents.guard import EXIT_BUG, run_step


async def test_transient_errors_are_retried_until_the_step_succeeds() -> None:
    calls = []

    async def step() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise pymysql.err.OperationalError(2003, "can't connect")

    await run_step("t", step, first_delay=0.001)
    assert len(calls) == 3


async def test_a_bug_stops_the_process_instead_of_committing_the_batch() -> None:
    exits: list[int] = []

    async def step() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await run_step("t", step, exit_process=exits.append)
    assert exits == [EXIT_BUG]
