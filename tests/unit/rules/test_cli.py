"""`reach rules validate`: OK lines, every problem as path:line: reason, exit status."""

from __future__ import annotations

import io
from pathlib import Path

from rules.cli import main, validate
from tests.unit.rules.conftest import EXAMPLES, write

NAM_TYPO = "unknown field 'nam' in event facts (did you mean 'name'?) (column 1)"


def test_valid_directories_print_ok_and_return_0() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert validate([str(EXAMPLES)], out, err) == 0
    assert out.getvalue() == f"OK {EXAMPLES}: 5 triggers, 2 channel rules, 5 templates\n"
    assert err.getvalue() == ""


def test_every_problem_is_printed_and_the_status_is_1(rules_dir: Path) -> None:
    write(
        rules_dir, "x.yaml", "triggers:\n  - {id: a, when: 'nam == 1', template: nope, channels: [inbox]}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert validate([str(EXAMPLES), str(rules_dir)], out, err) == 1
    assert out.getvalue().startswith(f"OK {EXAMPLES}:")
    path = rules_dir / "x.yaml"
    assert err.getvalue().splitlines() == [
        f"{path}:2: invalid expression in 'when': " + NAM_TYPO,
        f"{path}:2: unknown template 'nope' (known: none)",
    ]


def test_known_channels_are_checked(capsys: object) -> None:
    assert main([str(EXAMPLES), "--channel", "inbox"]) == 1
