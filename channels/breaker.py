"""A circuit breaker per provider: stop sending to a failing provider for a while.

Pure: the caller passes the time, so tests drive it without sleeping.

* **closed** — sending. ``failures`` provider-side failures (RETRY or UNKNOWN
  outcomes: timeouts, 5xx, 429, dropped connections) with no batch in between
  where most messages went through open it. Per-message failures (a bad
  address, rejected content) say nothing about the provider and are not
  counted.
* **open** — paused for ``cooldown_ms``. The sender routes the provider's
  share to the other providers of the channel, or defers the messages until
  the cool-down ends when there is no other.
* **half-open** — after the cool-down one batch goes through as a probe: a
  success closes the breaker, a failure opens it for another cool-down.

The state lives in the worker process: each worker judges the providers by
its own traffic, which is what it is about to send.
"""

from __future__ import annotations

import dataclasses
import enum


class CircuitState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclasses.dataclass
class CircuitBreaker:
    failures: int = 5  # consecutive failures that open the breaker
    cooldown_ms: int = 30_000
    _consecutive: int = 0
    _opened_at: int | None = None
    _probing: bool = False

    def state(self, now_ms: int) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._probing or now_ms >= self.reopens_at():
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def allows(self, now_ms: int) -> bool:
        """Whether a batch may be sent now. In half-open, only one probe at a time."""
        state = self.state(now_ms)
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def reopens_at(self) -> int:
        """When an open breaker lets a probe through (ms since epoch); 0 when closed."""
        return 0 if self._opened_at is None else self._opened_at + self.cooldown_ms

    def release(self) -> None:
        """A permitted batch sent nothing (all throttled or skipped): free the probe slot."""
        self._probing = False

    def record(self, succeeded: int, failed: int, now_ms: int) -> None:
        """The provider-side result of a batch: messages that went through and that failed."""
        probing, self._probing = self._probing, False
        if succeeded and (probing or failed < succeeded):
            self._consecutive = 0
            self._opened_at = None
            return
        if not failed:
            if probing:
                self._opened_at = None  # the probe had nothing provider-side to say; try again freely
            return
        self._consecutive += failed
        if probing or self._consecutive >= self.failures:
            self._opened_at = now_ms
