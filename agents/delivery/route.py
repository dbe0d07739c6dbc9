"""Route step: which provider sends each message in this batch, given the breakers.

A message whose provider is no longer configured, or whose provider's breaker
is open, moves to another provider of the channel that can address it; with
none left it is deferred until the breaker's cool-down ends. The breakers live
here, one per provider, and are judged by what each send reports.
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.delivery.batch import BatchOutcome
from channels.breaker import CircuitBreaker, CircuitState
from channels.config import ChannelConfig
from channels.routing import NoProviderAvailableError, WeightedChooser
from models.messages import ReachMessage
from reach.metrics import WorkerMetrics


class Router:
    def __init__(
        self,
        channel: ChannelConfig,
        chooser: WeightedChooser,
        metrics: WorkerMetrics,
        breaker_failures: int,
        breaker_cooldown_ms: int,
    ) -> None:
        self.channel = channel.name
        self.chooser = chooser
        self.metrics = metrics
        self.configured = {p.name for p in channel.providers}
        self.breakers = {
            p.name: CircuitBreaker(breaker_failures, breaker_cooldown_ms) for p in channel.providers
        }
        for name in self.breakers:
            metrics.circuit_state.labels(self.channel, name).set(CircuitState.CLOSED)

    def route(
        self, messages: Sequence[ReachMessage], now: int, batch: BatchOutcome
    ) -> dict[str, list[ReachMessage]]:
        """Group messages by the provider that sends them in this batch (deferring those none can)."""
        allowed: dict[str, bool] = {}
        unavailable = {name for name, b in self.breakers.items() if b.state(now) is not CircuitState.CLOSED}
        groups: dict[str, list[ReachMessage]] = {}
        for message in messages:
            name = message.provider
            reason = self._why_not(name, now, allowed)
            if reason:
                target = self.alternative(message, unavailable | {name})
                if target is None:
                    when = self._reopens_at(name, now)
                    batch.defer(when, message.replace(not_before=when).to_bytes(), message.message_id)
                    continue
                self.metrics.messages_rerouted.labels(self.channel, name, target, reason).inc()
                name, message = target, message.replace(provider=target)
            groups.setdefault(name, []).append(message)
        return groups

    def _why_not(self, name: str, now: int, allowed: dict[str, bool]) -> str:
        """Why ``name`` cannot send now (``""`` when it can); asks each breaker once a batch."""
        if name not in self.configured:
            return "unconfigured"
        if name not in allowed:
            allowed[name] = self.breakers[name].allows(now)
            self.show_state(name, now)
        return "" if allowed[name] else "circuit_open"

    def alternative(self, message: ReachMessage, exclude: set[str]) -> str | None:
        """Another provider of the channel that can address the message, or None."""
        try:
            return self.chooser.choose(exclude=exclude, contact=message.contact).name
        except NoProviderAvailableError:
            return None

    def paused(self, now: int) -> set[str]:
        """Providers whose breaker is open: a retry moves off them."""
        return {name for name, b in self.breakers.items() if b.state(now) is CircuitState.OPEN}

    def _reopens_at(self, name: str, now: int) -> int:
        breaker = self.breakers.get(name)
        return max(now + 1000, breaker.reopens_at() if breaker else 0)

    def judge(self, name: str, succeeded: int, failures: int, now: int) -> None:
        """Tell the provider's breaker what a request did (a probe that failed nothing counts)."""
        self.breakers[name].record(succeeded, failures, now)
        self.show_state(name, now)

    def show_state(self, name: str, now: int) -> None:
        self.metrics.circuit_state.labels(self.channel, name).set(self.breakers[name].state(now))

    def release(self) -> None:
        """Free every probe slot, whatever happened to the batch that held it."""
        for breaker in self.breakers.values():
            breaker.release()
