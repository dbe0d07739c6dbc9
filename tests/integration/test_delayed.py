"""Delayed trigger sends through the real pipeline: a trigger with `delay` (2 s in the test
rules) is sent after it, `cancel_if` drops it, and it survives a worker crash."""

from __future__ import annotations

import re
import time

import httpx
import pytest
import redis

from tests.chaos.services import ThrowawayService
from tests.integration.conftest import Pipeline, start_pipeline, stop_pipeline
from tests.integration.harness import WorkerProcess, event, free_port, produce_json, wait_until
from tests.integration.test_rules_reload import assert_old_rules_match, loaded_triggers, refusals_since
from tests.support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration

DELAY_MS = 2000  # tests/integration/rules/test_rules.yaml


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def results(p: Pipeline, rule_id: str, user_id: str) -> list[tuple[str, str, int]]:
    return p.db.query(
        "SELECT status, error_code, completed_at FROM delivery_results WHERE rule_id = %s AND user_id = %s",
        [rule_id, user_id],
    )


def inbox_titles(p: Pipeline, user_id: str) -> list[str]:
    return [r[0] for r in p.db.query("SELECT title FROM inbox_messages WHERE user_id = %s", [user_id])]


def metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{wanted}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_delayed_message_is_sent_after_its_delay_and_not_before(pipeline: Pipeline) -> None:
    produced = now_ms()
    produce_json(
        pipeline.settings, pipeline.settings.events_topic, [event("dl-1", "delay-u1", "test_delayed", n=1)]
    )
    [(status, _, completed_at)] = wait_until(
        lambda: results(pipeline, "test-delayed", "delay-u1"), 30, "the delayed message's result"
    )
    assert status == "sent"
    [(title, planned_at)] = pipeline.db.query(
        "SELECT title, created_at FROM inbox_messages WHERE user_id = 'delay-u1'"
    )
    assert title == "delayed 1"
    # The inbox row's created_at is when the event was planned: due DELAY_MS later.
    assert planned_at >= produced
    assert completed_at >= planned_at + DELAY_MS  # not before
    lateness = completed_at - (planned_at + DELAY_MS)
    # Within a second of its time (the pump polls every 0.1 s here); slack for a loaded test box.
    assert lateness < 2000, f"sent {lateness} ms after it was due"


def test_a_later_event_matching_cancel_if_drops_the_message_and_records_it(pipeline: Pipeline) -> None:
    port = pipeline.settings.worker_metrics_port
    suppressed_before = metric(port, "reach_messages_suppressed_total", channel="inbox", reason="cancelled")
    produce_json(
        pipeline.settings,
        pipeline.settings.events_topic,
        [
            event("cart-1", "cart-u1", "test_cart", n=2),
            event("cart-2", "cart-u2", "test_cart", n=3),
            event("paid-1", "cart-u1", "test_paid"),  # later, same user: cancels cart-u1's only
        ],
    )
    wait_until(lambda: results(pipeline, "test-cart-reminder", "cart-u2"), 30, "the other user's reminder")
    assert inbox_titles(pipeline, "cart-u2") == ["delayed 3"]
    [(status, code, _)] = wait_until(
        lambda: results(pipeline, "test-cart-reminder", "cart-u1"), 30, "the cancelled reminder's result"
    )
    assert (status, code) == ("suppressed", "cancelled")
    assert inbox_titles(pipeline, "cart-u1") == []
    suppressed = metric(port, "reach_messages_suppressed_total", channel="inbox", reason="cancelled")
    assert suppressed == suppressed_before + 1


def test_a_cancel_reaches_only_messages_planned_before_it(pipeline: Pipeline) -> None:
    produce_json(
        pipeline.settings,
        pipeline.settings.events_topic,
        [event("paid-2", "cart-u3", "test_paid"), event("cart-3", "cart-u3", "test_cart", n=4)],
    )
    [(status, _, _)] = wait_until(
        lambda: results(pipeline, "test-cart-reminder", "cart-u3"), 30, "the reminder"
    )
    assert status == "sent"
    assert inbox_titles(pipeline, "cart-u3") == ["delayed 4"]


BAD_DELAYS = """
triggers:
  - id: late-bad-delay
    when: name == "late"
    template: test-delayed
    channels: [inbox]
    delay: 30
  - id: late-bad-cancel
    when: name == "late"
    template: test-delayed
    channels: [inbox]
    delay: 10m
    cancel_if: name == "paid" and propertie.x > 1
"""


def test_a_bad_delay_or_cancel_if_is_refused_and_the_old_rules_keep_running(pipeline: Pipeline) -> None:
    before = wait_until(lambda: max(0, loaded_triggers(pipeline)), 30, "the rule gauge")
    seen = len(pipeline.worker.log())
    path = pipeline.settings.rules_dir / "bad-delays.yaml"
    path.write_text(BAD_DELAYS)
    try:
        refusals = wait_until(lambda: refusals_since(pipeline, seen)[1:], 30, "both refusals in the log")
        found = refusals_since(pipeline, seen)
        assert all("bad-delays.yaml" in line for line in found)
        delay = next(line for line in found if "line=7" in line)
        assert "'delay' must be a duration with a unit (30s, 30m, 2h, 1d or 1h30m), got 30" in delay
        cancel = next(line for line in found if "line=13" in line)
        assert "invalid expression in 'cancel_if': unknown field 'propertie'" in cancel
        assert len(refusals) == 1 and loaded_triggers(pipeline) == before
        assert_old_rules_match(pipeline, "ping-bad-delay", "lovelace-delay", 9)
    finally:
        path.unlink()


def test_delayed_messages_survive_a_worker_crash_and_a_redis_restart_and_two_workers_send_them_once(
    tmp_path, smtp_server: SmtpTestServer
) -> None:
    users = [f"delay-mail-{n}" for n in range(6)]
    # A throwaway Redis (append-only file, as deployed), so the shared one keeps running.
    with ThrowawayService("redis", tmp_path / "stack") as service:
        p = start_pipeline(tmp_path, smtp_server, {"redis_url": service.endpoints().redis_url})
        second: WorkerProcess | None = None
        try:
            produce_json(
                p.settings,
                p.settings.segments_topic,
                [{"user_id": u, "segments": [], "contact": {"email": f"{u}@example.com"}} for u in users],
            )
            wait_until(
                lambda: len(p.db.query("SELECT 1 FROM user_profiles")) == len(users), 30, "the profiles"
            )
            events = [event(f"dm-{u}", u, "test_delayed_mail", n=5) for u in users]
            produce_json(p.settings, p.settings.events_topic, events)
            queue = redis.Redis.from_url(service.endpoints().redis_url)
            deferred = f"{p.settings.redis_prefix}deferred"
            wait_until(lambda: queue.zcard(deferred) >= len(users), 30, "the messages on the deferred queue")
            queue.close()
            p.worker.kill()  # before they are due: nothing was sent yet
            assert not any(smtp_server.messages_to(f"{u}@example.com") for u in users)
            service.stop()  # SIGTERM: Redis writes its append-only file and exits
            service.start()  # and reads it back

            p.worker.start()
            other = p.settings.model_copy(
                update={"worker_metrics_port": free_port(), "data_dir": tmp_path / "worker-2"}
            )
            second = WorkerProcess(other, tmp_path / "worker-2.log", p.worker.extra_env).start()
            wait_until(
                lambda: all(smtp_server.messages_to(f"{u}@example.com") for u in users),
                60,
                "every delayed email after the restarts",
            )
            queue = redis.Redis.from_url(service.endpoints().redis_url)
            wait_until(lambda: queue.zcard(deferred) == 0, 30, "the deferred queue to drain")
            queue.close()
            # Sent once each, though a worker died and two took over (a republish is deduplicated).
            assert [len(smtp_server.messages_to(f"{u}@example.com")) for u in users] == [1] * len(users)
            statuses = p.db.query("SELECT status, COUNT(*) FROM delivery_results GROUP BY status")
            assert statuses == [("sent", len(users))]
        finally:
            if second is not None:
                second.stop()
            stop_pipeline(p)
