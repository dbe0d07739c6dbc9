"""A rule set over durable-rules' limits is blamed on the file that puts it over,
not on the last rule of whichever file sorts last."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from rules.engine import MAX_PENDING_ALTERNATIVES, MAX_RULESET_ALTERNATIVES
from rules.errors import RuleSetError
from rules.loader import load_rulebook
from rules.reloader import RuleReloader
from tests.unit.rules.conftest import EXAMPLES, write

T0 = 1_800_000_000_000_000_000


def many_triggers(count: int, event: str = "e{i}") -> str:
    """``count`` one-line triggers from line 2 on (trigger i is on line i + 2)."""
    lines = [
        f"  - {{id: new-{i}, when: 'name == \"{event.format(i=i)}\"', template: welcome, channels: [inbox]}}"
        for i in range(count)
    ]
    return "triggers:\n" + "\n".join(lines) + "\n"


# The examples' event rule set: 5 triggers and 1 cancel_if (the cart reminder's), which is
# matched in the same rule set and counts as one more alternative.
EXAMPLE_ALTERNATIVES = 6


def copy_examples(directory: Path) -> None:
    for path in EXAMPLES.glob("*.yaml"):
        (directory / path.name).write_bytes(path.read_bytes())


def only_error(directory: Path) -> tuple[str, int | None, str]:
    with pytest.raises(RuleSetError) as caught:
        load_rulebook(directory)
    assert len(caught.value.errors) == 1, caught.value
    error = caught.value.errors[0]
    return error.path, error.line, error.reason


def test_too_many_alternatives_name_the_new_file_sorted_before_the_old_one(rules_dir: Path) -> None:
    copy_examples(rules_dir)
    new = write(rules_dir, "added.yaml", many_triggers(MAX_RULESET_ALTERNATIVES))
    path, line, reason = only_error(rules_dir)
    # the 6 old alternatives plus new-0..new-394 make 401: new-394 passes the limit
    assert (path, line) == (str(new), MAX_RULESET_ALTERNATIVES - EXAMPLE_ALTERNATIVES + 1 + 1)
    total = MAX_RULESET_ALTERNATIVES + EXAMPLE_ALTERNATIVES
    assert reason.startswith(f"the event rules expand to {total} alternatives")


def test_too_many_alternatives_name_the_new_file_sorted_after_the_old_one(rules_dir: Path) -> None:
    copy_examples(rules_dir)
    new = write(rules_dir, "zz-added.yaml", many_triggers(MAX_RULESET_ALTERNATIVES))
    path, line, _ = only_error(rules_dir)
    assert (path, line) == (str(new), MAX_RULESET_ALTERNATIVES - EXAMPLE_ALTERNATIVES + 2)


def test_too_many_rules_for_one_event_name_the_file_holding_most_of_them(rules_dir: Path) -> None:
    copy_examples(rules_dir)
    new = write(rules_dir, "added.yaml", many_triggers(MAX_PENDING_ALTERNATIVES, event="signup"))
    path, line, reason = only_error(rules_dir)
    # triggers.yaml has one signup trigger: added.yaml's 60th signup rule passes the limit of 60
    assert (path, line) == (str(new), MAX_PENDING_ALTERNATIVES + 1)
    assert reason.startswith(f"up to {MAX_PENDING_ALTERNATIVES + 1} rule alternatives can match one event")


def test_the_reloader_logs_the_new_file_and_keeps_the_old_rules(rules_dir: Path) -> None:
    copy_examples(rules_dir)
    reloader = RuleReloader(rules_dir, log=structlog.get_logger())
    new = write(rules_dir, "added.yaml", many_triggers(MAX_RULESET_ALTERNATIVES), mtime_ns=T0)
    with capture_logs() as logs:
        assert reloader.check() is False
    assert [(e["event"], e["path"], e["line"]) for e in logs] == [
        ("rules.reload_refused", str(new), MAX_RULESET_ALTERNATIVES - EXAMPLE_ALTERNATIVES + 2)
    ]
    assert len(reloader.current.rulebook.triggers) == 5
