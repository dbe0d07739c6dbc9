"""A template may turn engagement tracking off (``tracking: false``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.errors import RuleSetError
from rules.loader import load_rulebook
from tests.unit.rules.conftest import EXAMPLES, write


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("true", True), (None, True)])
def test_tracking_is_on_unless_the_template_says_false(
    rules_dir: Path, value: str | None, expected: bool
) -> None:
    line = f"    tracking: {value}\n" if value is not None else ""
    write(rules_dir, "t.yaml", f"templates:\n  t:\n    title: x\n    text: y\n{line}")
    template = load_rulebook(rules_dir).templates["t"]
    assert template.tracking is expected
    assert template.render({}).tracking is expected


def test_a_tracking_value_that_is_not_a_boolean_is_refused_with_its_line(rules_dir: Path) -> None:
    write(rules_dir, "t.yaml", "templates:\n  t:\n    title: x\n    text: y\n    tracking: 'no'\n")
    with pytest.raises(RuleSetError) as caught:
        load_rulebook(rules_dir)
    [error] = caught.value.errors
    assert (error.line, error.reason) == (5, "'tracking' must be true or false, got str")


def test_the_example_password_reset_is_not_tracked() -> None:
    book = load_rulebook(EXAMPLES)
    assert book.templates["password-reset"].tracking is False
    assert book.templates["cart-reminder"].tracking is True
