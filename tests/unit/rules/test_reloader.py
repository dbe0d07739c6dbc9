"""Hot reload: an edited directory swaps the engine; a broken one is logged once
and the old engine keeps matching."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from rules.errors import RuleSetError
from rules.loader import RuleLimits
from rules.reloader import RuleReloader, directory_fingerprint
from tests.unit.rules.conftest import event, write

T0 = 1_800_000_000_000_000_000  # explicit mtimes (ns): no sleeping for the clock to move

TEMPLATES = """
templates:
  hello: {title: "Hello {{ user_id }}", text: "hi"}
"""


def rules(event_name: str) -> str:
    return f"""
triggers:
  - id: greet
    when: name == "{event_name}"
    template: hello
    channels: [inbox]
"""


@pytest.fixture
def directory(rules_dir: Path) -> Path:
    write(rules_dir, "templates.yaml", TEMPLATES, mtime_ns=T0)
    write(rules_dir, "triggers.yaml", rules("signup"), mtime_ns=T0)
    return rules_dir


def matched(reloader: RuleReloader, name: str) -> list[str]:
    return [rule.id for rule in reloader.current.match_triggers(event(name=name))]


def test_check_swaps_on_edit_keeps_old_rules_on_a_broken_file_and_swaps_again_when_fixed(
    directory: Path,
) -> None:
    refused: list[RuleSetError] = []
    with capture_logs() as logs:
        reloader = RuleReloader(directory, ["inbox"], on_error=refused.append, log=structlog.get_logger())
        first = reloader.current
        assert matched(reloader, "signup") == ["greet"]
        assert reloader.check() is False and reloader.current is first  # nothing changed

        write(directory, "triggers.yaml", rules("login"), mtime_ns=T0 + 1)
        assert reloader.check() is True
        edited = reloader.current
        assert matched(reloader, "login") == ["greet"]
        assert matched(reloader, "signup") == []

        broken = write(
            directory, "triggers.yaml", rules("login").replace('name == "login"', "name =="), mtime_ns=T0 + 2
        )
        assert reloader.check() is False
        assert reloader.current is edited
        assert matched(reloader, "login") == ["greet"]  # the old engine keeps matching
        assert reloader.check() is False  # the same broken state is not retried...

        write(directory, "triggers.yaml", rules("logout"), mtime_ns=T0 + 3)
        assert reloader.check() is True
        assert matched(reloader, "logout") == ["greet"]

    assert [entry["event"] for entry in logs] == [
        "rules.loaded",
        "rules.reloaded",
        "rules.reload_refused",  # ...and logged once
        "rules.reloaded",
    ]
    refusal = logs[2]
    assert refusal["log_level"] == "error"
    assert (refusal["path"], refusal["line"]) == (str(broken), 3)
    assert refusal["reason"].startswith("invalid expression in 'when': syntax error")
    assert refusal["errors"] == 1
    assert len(refused) == 1 and refused[0].errors[0].line == 3
    assert logs[0]["triggers"] == 1 and logs[0]["templates"] == 1


def test_added_and_removed_files_are_changes(directory: Path) -> None:
    reloader = RuleReloader(directory, log=structlog.get_logger())
    extra = write(directory, "more.yaml", rules("login").replace("id: greet", "id: greet-login"), mtime_ns=T0)
    assert reloader.check() is True
    assert matched(reloader, "login") == ["greet-login"]
    extra.unlink()
    assert reloader.check() is True
    assert matched(reloader, "login") == []


def test_every_problem_is_logged(directory: Path) -> None:
    reloader = RuleReloader(directory, log=structlog.get_logger())
    write(
        directory,
        "triggers.yaml",
        rules("x").replace("hello", "nope").replace("[inbox]", "[]"),
        mtime_ns=T0 + 1,
    )
    with capture_logs() as logs:
        assert reloader.check() is False
    assert [(e["event"], e["line"]) for e in logs] == [
        ("rules.reload_refused", 4),
        ("rules.reload_refused", 5),
    ]
    assert all(e["errors"] == 2 for e in logs)


def test_a_vanished_directory_is_refused_once(directory: Path) -> None:
    reloader = RuleReloader(directory, log=structlog.get_logger())
    shutil.rmtree(directory)
    with capture_logs() as logs:
        assert reloader.check() is False
        assert reloader.check() is False
    assert len(logs) == 1 and logs[0]["path"] == str(directory) and logs[0]["line"] is None
    assert matched(reloader, "signup") == ["greet"]


def test_the_first_load_raises(directory: Path) -> None:
    write(directory, "triggers.yaml", rules("x").replace("hello", "nope"), mtime_ns=T0 + 1)
    with pytest.raises(RuleSetError, match="unknown template 'nope'"):
        RuleReloader(directory)


def test_the_fingerprint_is_names_sizes_and_mtimes(directory: Path) -> None:
    before = directory_fingerprint(directory)
    assert before == (
        ("templates.yaml", len(TEMPLATES.lstrip("\n")), T0),
        ("triggers.yaml", len(rules("signup").lstrip("\n")), T0),
    )
    write(directory, "triggers.yaml", rules("signup"), mtime_ns=T0 + 5)  # same content, new mtime
    assert directory_fingerprint(directory) != before


# --- check_async: the worker's timer ------------------------------------------------


def big_valid_rules(count: int) -> str:
    """``count`` triggers for one event name, each with a long description: slow to parse, valid."""
    padding = "x" * 2000
    return "triggers:\n" + "".join(
        f'  - id: big-{i}\n    when: name == "big"\n    template: hello\n    channels: [inbox]\n'
        f"    description: {padding}\n"
        for i in range(count)
    )


async def loop_ticks_during(work: Any) -> tuple[Any, int]:
    """Await ``work`` while counting how often the event loop ran another task."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let the ticker start
    started = ticks
    try:
        result = await work
    finally:
        done.set()
        await task
    return result, ticks - started


async def blocking_check(reloader: RuleReloader) -> bool:
    return reloader.check()


def test_check_async_parses_off_the_loop_and_swaps_on_it(directory: Path) -> None:
    reloader = RuleReloader(directory, log=structlog.get_logger())
    old = reloader.current
    write(directory, "big.yaml", big_valid_rules(50), mtime_ns=T0 + 1)  # 50 of 60 pending alternatives

    swapped, ticks = asyncio.run(loop_ticks_during(reloader.check_async()))

    assert swapped is True and reloader.current is not old
    assert matched(reloader, "big") == [f"big-{i}" for i in range(50)]  # built in a thread, matched here
    assert ticks > 1  # the loop kept running other tasks while the directory was parsed

    write(directory, "big.yaml", big_valid_rules(49), mtime_ns=T0 + 2)
    swapped, ticks = asyncio.run(loop_ticks_during(blocking_check(reloader)))
    assert swapped is True and ticks == 0  # the contrast: check() holds the loop for the whole parse


def test_check_async_refuses_a_bad_file_once_keeps_the_old_rules_and_reports_it(directory: Path) -> None:
    refused: list[RuleSetError] = []
    reloader = RuleReloader(directory, ["inbox"], on_error=refused.append, log=structlog.get_logger())
    old = reloader.current
    bad = write(directory, "bad.yaml", rules("x").replace("greet", "greet-bad").replace("inbox", "fax"), T0)

    async def twice() -> tuple[bool, bool]:
        return await reloader.check_async(), await reloader.check_async()

    with capture_logs() as logs:
        assert asyncio.run(twice()) == (False, False)
    assert reloader.current is old
    assert [(e["event"], e["path"], e["line"]) for e in logs] == [("rules.reload_refused", str(bad), 5)]
    assert logs[0]["reason"] == "unknown channel 'fax' (known: inbox)"
    assert len(refused) == 1


def test_check_async_applies_the_size_limit(directory: Path) -> None:
    reloader = RuleReloader(
        directory, log=structlog.get_logger(), limits=RuleLimits(max_file_bytes=2048, max_total_bytes=1 << 20)
    )
    big = write(directory, "big.yaml", big_valid_rules(2), mtime_ns=T0 + 1)
    with capture_logs() as logs:
        assert asyncio.run(reloader.check_async()) is False
    assert [(e["path"], e["line"], e["reason"]) for e in logs] == [
        (
            str(big),
            None,
            f"file is {big.stat().st_size} bytes, over the limit of 2048 (REACH_RULES_MAX_FILE_BYTES)",
        )
    ]
    assert matched(reloader, "signup") == ["greet"]
