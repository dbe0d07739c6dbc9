"""Hot reload: an edited directory swaps the engine; a broken one is logged once
and the old engine keeps matching."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from rules.errors import RuleSetError
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
