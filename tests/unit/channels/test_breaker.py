from __future__ import annotations

from channels.breaker import CircuitBreaker, CircuitState


def test_opens_after_enough_failures_and_pauses_for_the_cooldown() -> None:
    breaker = CircuitBreaker(failures=3, cooldown_ms=1000)
    breaker.record(0, 2, now_ms=0)
    assert breaker.allows(10) and breaker.state(10) is CircuitState.CLOSED
    breaker.record(0, 1, now_ms=100)
    assert breaker.state(100) is CircuitState.OPEN and not breaker.allows(100)
    assert breaker.reopens_at() == 1100
    assert not breaker.allows(1099)


def test_a_mostly_successful_batch_resets_the_count() -> None:
    breaker = CircuitBreaker(failures=3, cooldown_ms=1000)
    breaker.record(0, 2, now_ms=0)
    breaker.record(5, 1, now_ms=1)
    breaker.record(0, 2, now_ms=2)
    assert breaker.state(2) is CircuitState.CLOSED


def test_half_open_lets_one_probe_through_and_a_success_closes() -> None:
    breaker = CircuitBreaker(failures=1, cooldown_ms=1000)
    breaker.record(0, 1, now_ms=0)
    assert breaker.state(1000) is CircuitState.HALF_OPEN
    assert breaker.allows(1000)
    assert not breaker.allows(1001), "only one probe at a time"
    breaker.record(1, 0, now_ms=1002)
    assert breaker.state(1002) is CircuitState.CLOSED and breaker.allows(1002)


def test_a_failed_probe_opens_for_another_cooldown() -> None:
    breaker = CircuitBreaker(failures=5, cooldown_ms=1000)
    breaker.record(0, 5, now_ms=0)
    assert breaker.allows(1000)
    breaker.record(0, 1, now_ms=1500)
    assert breaker.state(1500) is CircuitState.OPEN
    assert breaker.reopens_at() == 2500


def test_per_message_failures_alone_do_not_open_it() -> None:
    breaker = CircuitBreaker(failures=1, cooldown_ms=1000)
    breaker.record(0, 0, now_ms=0)  # e.g. a batch of bad addresses: nothing provider-side
    assert breaker.state(0) is CircuitState.CLOSED
