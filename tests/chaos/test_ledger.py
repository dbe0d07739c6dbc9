"""The ledger judges the promise, not the run: each breach is caught on its own."""

from __future__ import annotations

from tests.chaos.ledger import Expected, judge, latest_statuses

SMTP = [Expected(f"m{n}", "email", idempotent=False) for n in range(4)]
HOOK = [Expected(f"h{n}", "hook", idempotent=True) for n in range(2)]


def test_every_message_delivered_once_is_ok() -> None:
    verdict = judge(SMTP + HOOK, {e.message_id: 1 for e in SMTP + HOOK}, {})
    assert verdict.ok
    assert (verdict.total, verdict.delivered, verdict.duplicates) == (6, 6, 0)


def test_recorded_failures_and_unknowns_are_accounted_for() -> None:
    verdict = judge(SMTP, {"m0": 1, "m1": 1}, {"m2": "failed", "m3": "unknown"})
    assert verdict.ok
    assert (verdict.delivered, verdict.recorded_failed, verdict.recorded_unknown) == (2, 1, 1)
    every = judge(SMTP, {}, {"m0": "failed", "m1": "failed", "m2": "unknown", "m3": "unknown"})
    assert every.ok
    assert (every.delivered, every.recorded_failed, every.recorded_unknown) == (0, 2, 2)


def test_a_message_neither_delivered_nor_recorded_final_is_lost() -> None:
    verdict = judge(SMTP, {"m0": 1, "m1": 1}, {"m2": "retrying"})
    assert not verdict.ok
    assert verdict.lost == ("m2", "m3")


def test_recorded_sent_but_never_received_is_a_breach() -> None:
    verdict = judge(SMTP[:1], {}, {"m0": "sent"})
    assert not verdict.ok
    assert verdict.false_sent == ("m0",)
    assert verdict.lost == ()


def test_duplicates_are_allowed_up_to_the_unknown_count() -> None:
    statuses = {"m0": "unknown", "m1": "sent"}
    assert judge(SMTP[:2], {"m0": 2, "m1": 1}, statuses).ok
    over = judge(SMTP[:2], {"m0": 2, "m1": 2}, statuses)
    assert not over.ok
    assert (over.duplicates, over.recorded_unknown) == (2, 1)


def test_repeats_to_an_idempotent_provider_are_counted_not_charged() -> None:
    verdict = judge(HOOK, {"h0": 3, "h1": 1}, {})
    assert verdict.ok
    assert (verdict.resent, verdict.duplicates) == (2, 0)


def test_latest_status_is_the_highest_attempt() -> None:
    rows = [("m0", 1, "retrying"), ("m0", 3, "sent"), ("m0", 2, "retrying"), ("m1", 1, "failed")]
    assert latest_statuses(rows) == {"m0": "sent", "m1": "failed"}


def test_summary_names_the_state() -> None:
    assert judge(SMTP[:1], {}, {}).summary().startswith("BROKEN: 1 messages, 0 delivered")
    assert judge(SMTP[:1], {"m0": 1}, {}).summary().startswith("OK: 1 messages, 1 delivered")
