"""RuleEngine: trigger matching, channel selection, no retained state, C memory freed."""

from __future__ import annotations

import gc
import json

import durable_rules_engine as c
import orjson
import pytest

from rules import bench
from rules.engine import MAX_PENDING_ALTERNATIVES, SID, RuleEngine
from rules.errors import RuleEvaluationError, RuleSetError
from rules.model import ChannelRule, TriggerRule
from tests.unit.rules.conftest import book, event, trigger_engine

MESSAGE = {
    "rule_id": "welcome-signup",
    "template": "welcome",
    "priority": 5,
    "event": "signup",
    "platform": "ios",
    "segments": ["vip"],
    "reachable": ["inbox", "email"],
}


def channel_engine(*rules: tuple[str, tuple[str, ...]]) -> RuleEngine:
    channel_rules = [ChannelRule(f"c{i}", when, use) for i, (when, use) in enumerate(rules)]
    return RuleEngine.build(book(channel_rules=channel_rules))


def test_match_triggers_returns_every_match_in_file_order() -> None:
    engine = trigger_engine(
        '"vip" in segments', 'name == "login"', 'name == "signup"', "properties.amount > 100"
    )
    assert [r.id for r in engine.match_triggers(event())] == ["r0", "r2", "r3"]
    assert [r.id for r in engine.match_triggers(event(name="login", segments=[]))] == ["r1", "r3"]
    assert engine.match_triggers({"name": "nothing"}) == []


def test_select_channels_first_matching_rule_decides_and_keeps_candidate_order() -> None:
    engine = channel_engine(
        ('not ("email" in reachable)', ("inbox",)),
        ("priority <= 2", ("inbox", "sms")),
        ("priority <= 3", ("email",)),
    )
    candidates = ["email", "sms", "inbox"]
    assert engine.select_channels(candidates, MESSAGE) == ("email", "sms", "inbox")  # no rule: all
    assert engine.select_channels(candidates, {**MESSAGE, "reachable": ["inbox"]}) == ("inbox",)
    assert engine.select_channels(candidates, {**MESSAGE, "priority": 2}) == ("sms", "inbox")  # not c2
    assert engine.select_channels(candidates, {**MESSAGE, "priority": 3}) == ("email",)
    assert engine.select_channels(["push"], {**MESSAGE, "priority": 3}) == ()  # unroutable
    rule = engine.channel_rule_for({**MESSAGE, "priority": 1})
    assert rule is not None and rule.id == "c1"


def test_nothing_is_retained_across_many_calls() -> None:
    """Facts are retracted after matching and one sid is used: the state stays one record."""
    engine = trigger_engine('name == "signup"', '"vip" in segments', 'name == "signup" and properties.n > 5')
    host, name = engine._live.host, engine._live.triggers.name
    for i in range(20_000):
        fact = event(name="signup" if i % 2 else "other", event_id=f"e{i}", properties={"n": i})
        engine.match_triggers(fact)
        engine.select_channels(["inbox"], MESSAGE)
    assert engine.retained_facts() == 0
    assert host.get_state(name, SID) == {"sid": SID, "id": "sid-0", "$s": 1}  # the sid record only
    assert host.get_pending_events(name, SID) == []


def test_a_negated_membership_alone_does_not_match_the_state_record() -> None:
    """Without the guard key, durable-rules would match its own state record and loop forever."""
    engine = trigger_engine('"blocked" not in segments')
    assert [r.id for r in engine.match_triggers(event())] == ["r0"]
    assert engine.match_triggers(event(segments=["blocked"])) == []


def test_as_many_alternatives_as_the_loader_allows_can_match_one_fact() -> None:
    # Each rule has 2 alternatives (absent, or different): 30 rules fill the bound.
    whens = [f'name == "signup" and properties.n != {i}' for i in range(MAX_PENDING_ALTERNATIVES // 2)]
    engine = trigger_engine(*whens)
    assert len(engine.match_triggers(event(properties={}))) == len(whens)
    assert len(engine.match_triggers(event(properties={"n": -1}))) == len(whens)


def test_durable_rules_errors_at_match_time_are_typed_and_the_host_is_rebuilt() -> None:
    # Built without the loader's capacity check: 65 alternatives pass durable-rules' 64 limit.
    engine = trigger_engine(*(f"properties.n != {i}" for i in range(65)))
    with pytest.raises(RuleEvaluationError, match="303"):
        engine.match_triggers(event(properties={"n": -1}))
    assert engine.rebuilds == 1
    assert len(engine.match_triggers(event(properties={"n": 0}))) == 64  # on a fresh host
    assert engine.retained_facts() == 0
    del engine
    gc.collect()  # the failed host is leaked, not freed: freeing it can abort the process


def test_a_rule_set_durable_rules_refuses_raises_rule_set_error() -> None:
    triggers = [TriggerRule(f"r{i}", "properties.n > 5", "t", ("inbox",)) for i in range(300)]
    with pytest.raises(RuleSetError, match="too many rules share one test"):
        RuleEngine.build(book(triggers))


def test_a_fact_left_behind_fails_one_call_then_the_host_is_rebuilt() -> None:
    engine = trigger_engine('name == "signup"')
    flat = engine._live.triggers.projection.project(event())
    flat["sid"] = SID
    c.assert_fact(engine._live.triggers.handle, orjson.dumps(flat).decode())  # as if a call was interrupted
    with pytest.raises(RuleEvaluationError, match="already asserted"):
        engine.match_triggers(event())
    assert [r.id for r in engine.match_triggers(event())] == ["r0"]
    assert engine.rebuilds == 1 and engine.retained_facts() == 0


def test_engines_are_independent_and_free_their_memory_when_collected() -> None:
    first = trigger_engine('name == "signup"')
    second = trigger_engine('name == "login"')
    assert first._live.triggers.name != second._live.triggers.name
    assert [r.id for r in first.match_triggers(event())] == ["r0"]
    assert second.match_triggers(event()) == []
    handle, finalizer = first._live.triggers.handle, first._finalizer
    del first
    gc.collect()
    assert not finalizer.alive
    with pytest.raises(c.error):  # the C rule set is gone
        c.assert_fact(handle, json.dumps({"sid": SID}))
    assert [r.id for r in second.match_triggers(event(name="login"))] == ["r0"]


def test_a_closed_engine_refuses_to_match() -> None:
    engine = trigger_engine('name == "signup"')
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(RuleEvaluationError, match="closed"):
        engine.match_triggers(event())


def test_benchmark_runs_and_retains_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints per-call times (no timed assertions: machines differ)."""
    results = bench.run(n=2_000)
    with capsys.disabled():
        print()
        for name, value in results.items():
            print(f"  {name:40s} {value:10.2f}")
    assert results["retained facts"] == 0
