"""Rule-file size limits: refused before being read whole or parsed, naming the setting."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from rules.errors import RuleSetError
from rules.loader import RuleLimits, load_rulebook
from tests.unit.rules.conftest import EXAMPLES, write

LIMITS = RuleLimits(max_file_bytes=2048, max_total_bytes=4096)


def refusals(directory: Path, limits: RuleLimits) -> list[str]:
    with pytest.raises(RuleSetError) as caught:
        load_rulebook(directory, limits=limits)
    return [str(error) for error in caught.value.errors]


def copy_examples(directory: Path) -> None:
    for path in EXAMPLES.glob("*.yaml"):
        (directory / path.name).write_bytes(path.read_bytes())


def test_a_file_over_the_limit_is_refused_without_being_parsed(rules_dir: Path) -> None:
    copy_examples(rules_dir)
    # Broken YAML: a parse would report a syntax error; only the size is reported.
    big = write(rules_dir, "big.yaml", "triggers: [\n" + "#" * 3000 + "\n")
    size = big.stat().st_size
    assert refusals(rules_dir, RuleLimits(max_file_bytes=3000, max_total_bytes=1 << 20)) == [
        f"{big}: file is {size} bytes, over the limit of 3000 (REACH_RULES_MAX_FILE_BYTES)"
    ]


def test_a_file_at_the_limit_loads(rules_dir: Path) -> None:
    copy_examples(rules_dir)
    largest = max(path.stat().st_size for path in rules_dir.iterdir())
    book = load_rulebook(rules_dir, limits=RuleLimits(max_file_bytes=largest, max_total_bytes=1 << 20))
    assert len(book.triggers) == 5


def test_files_over_the_total_limit_are_refused_together(rules_dir: Path) -> None:
    for name in ("a.yaml", "b.yaml", "c.yaml"):
        write(rules_dir, name, "# " + "x" * 1500 + "\n")  # each within 2048, 4509 together
    assert refusals(rules_dir, LIMITS) == [
        f"{rules_dir}: rule files are 4509 bytes together, over the limit of 4096 "
        "(REACH_RULES_MAX_TOTAL_BYTES)"
    ]


def test_a_huge_file_is_refused_in_bounded_memory(rules_dir: Path) -> None:
    copy_examples(rules_dir)
    huge = rules_dir / "huge.yaml"
    with huge.open("wb") as handle:
        handle.truncate(64 << 20)  # sparse: 64 MB to stat and read, nothing on disk
    tracemalloc.start()
    try:
        errors = refusals(rules_dir, RuleLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert errors == [
        f"{huge}: file is {64 << 20} bytes, over the limit of {1 << 20} (REACH_RULES_MAX_FILE_BYTES)"
    ]
    assert peak < 8 << 20  # the other files are parsed; the 64 MB one is never read
