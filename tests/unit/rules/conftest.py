"""Helpers for the rules tests: rule directories in tmp_path, engines from expressions."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from rules.engine import RuleEngine
from rules.model import ChannelRule, RuleBook, Template, TriggerRule

EXAMPLES = Path(__file__).resolve().parents[3] / "rules" / "examples"

EVENT: Mapping[str, Any] = {
    "event_id": "e-1",
    "user_id": "u-1",
    "name": "signup",
    "ts": 1_732_700_000_000,
    "properties": {"first_name": "Ada", "amount": 640, "order_id": "o-1"},
    "device": {"platform": "ios"},
    "segments": ["vip"],
}


def event(**changes: Any) -> dict[str, Any]:
    return {**EVENT, **changes}


def write(directory: Path, name: str, text: str, mtime_ns: int | None = None) -> Path:
    """Write a rule file; ``mtime_ns`` sets its modification time explicitly
    (tests never sleep to make a change visible)."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def book(
    triggers: Sequence[TriggerRule] = (),
    channel_rules: Sequence[ChannelRule] = (),
    templates: Sequence[Template] = (),
) -> RuleBook:
    templates = templates or [Template("t", "title", "text")]
    return RuleBook(
        triggers=tuple(triggers),
        channel_rules=tuple(channel_rules),
        templates=MappingProxyType({t.id: t for t in templates}),
        fingerprint="test",
        files=(),
    )


def trigger_engine(*whens: str) -> RuleEngine:
    """An engine with one trigger per expression, ids r0, r1..."""
    return RuleEngine.build(
        book([TriggerRule(f"r{i}", when, "t", ("inbox",)) for i, when in enumerate(whens)])
    )


@pytest.fixture
def matches() -> Iterator[Callable[[str, Mapping[str, Any]], bool]]:
    """matches(when, fact): does a trigger with this expression match, through durable-rules."""
    engines: dict[str, RuleEngine] = {}

    def check(when: str, fact: Mapping[str, Any]) -> bool:
        engine = engines.get(when) or engines.setdefault(when, trigger_engine(when))
        return [rule.id for rule in engine.match_triggers(fact)] == ["r0"]

    yield check
    for engine in engines.values():
        assert engine.retained_facts() == 0
        engine.close()


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    return directory
