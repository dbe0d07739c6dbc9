"""Rule files hot-reload in the running worker; a bad file is refused and the old rules keep matching."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.integration.conftest import Pipeline
from tests.integration.harness import event, produce_json, wait_until

pytestmark = pytest.mark.integration

NEW_RULE = """
triggers:
  - id: loyalty-anniversary
    when: name == "anniversary" and properties.years >= 1
    template: anniversary
    channels: [inbox]
    dedup_key: "{event_id}"
templates:
  anniversary:
    title: "{{ properties.years }} years with us"
    text: "Thank you for staying."
"""


def loaded_triggers(p: Pipeline) -> int:
    text = httpx.get(f"http://127.0.0.1:{p.settings.worker_metrics_port}/metrics", timeout=5).text
    match = re.search(r'^reach_rules_loaded\{kind="trigger"\} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else -1


def refusals_since(p: Pipeline, offset: int) -> list[str]:
    """The worker's ``rules.reload_refused`` log lines written after ``offset``."""
    return [line for line in p.worker.log()[offset:].splitlines() if "rules.reload_refused" in line]


def inbox_titles(p: Pipeline, user: str) -> list[str]:
    return [r[0] for r in p.db.query("SELECT title FROM inbox_messages WHERE user_id = %s", [user])]


def test_an_edited_rule_file_takes_effect_without_restart(pipeline: Pipeline) -> None:
    before = wait_until(lambda: max(0, loaded_triggers(pipeline)), 30, "the rule gauge")
    path = pipeline.settings.rules_dir / "anniversary.yaml"
    path.write_text(NEW_RULE)
    try:
        wait_until(lambda: loaded_triggers(pipeline) == before + 1, 30, "the new rule to load")
        produce_json(
            pipeline.settings,
            pipeline.settings.events_topic,
            [event("anniv-1", "hopper-1", "anniversary", years=3)],
        )
        wait_until(
            lambda: "3 years with us" in inbox_titles(pipeline, "hopper-1"), 30, "the new rule's message"
        )
    finally:
        path.unlink()
        wait_until(lambda: loaded_triggers(pipeline) == before, 30, "the rule to unload")


def test_a_bad_rule_file_is_refused_and_the_old_rules_keep_matching(pipeline: Pipeline) -> None:
    before = wait_until(lambda: max(0, loaded_triggers(pipeline)), 30, "the rule gauge")
    seen = len(pipeline.worker.log())
    path = pipeline.settings.rules_dir / "broken.yaml"
    path.write_text(
        "triggers:\n  - id: broken\n    when: name == \n    template: welcome\n    channels: [inbox]\n"
    )
    try:
        refusal = wait_until(lambda: refusals_since(pipeline, seen), 30, "the refusal in the log")[0]
        assert "broken.yaml" in refusal and "line=3" in refusal  # file and line of the bad entry
        assert loaded_triggers(pipeline) == before
        assert_old_rules_match(pipeline, "ping-old-rules", "lovelace-1", 7)
    finally:
        path.unlink()


def test_an_oversized_rule_file_is_refused_by_size_and_the_old_rules_keep_matching(
    pipeline: Pipeline,
) -> None:
    before = wait_until(lambda: max(0, loaded_triggers(pipeline)), 30, "the rule gauge")
    limit = pipeline.settings.rules_max_file_bytes
    seen = len(pipeline.worker.log())
    path = pipeline.settings.rules_dir / "aaa-oversized.yaml"  # sorts before the serving files
    # A valid rule padded past the limit: refused from its size, before any parsing.
    path.write_text(NEW_RULE + "# padding\n" * (limit // 10 + 1))
    size = path.stat().st_size
    try:
        refusal = wait_until(lambda: refusals_since(pipeline, seen), 30, "the size refusal in the log")[0]
        assert "aaa-oversized.yaml" in refusal
        assert f"file is {size} bytes, over the limit of {limit} (REACH_RULES_MAX_FILE_BYTES)" in refusal
        assert loaded_triggers(pipeline) == before
        assert_old_rules_match(pipeline, "ping-oversized", "lovelace-2", 8)
    finally:
        path.unlink()


def assert_old_rules_match(pipeline: Pipeline, event_id: str, user_id: str, n: int) -> None:
    """A test_ping event still gets its inbox message from the rules that kept serving."""
    ping = event(event_id, user_id, "test_ping", n=n)
    produce_json(pipeline.settings, pipeline.settings.events_topic, [ping])
    wait_until(lambda: f"ping {n}" in inbox_titles(pipeline, user_id), 30, "the old rules to match")
