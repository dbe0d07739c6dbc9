"""Crash scenarios: each drives events through a rig, breaks something on a seeded schedule,
lets the pipeline recover, and returns the ledger's verdict.

Every random choice comes from the ``random.Random`` passed in, so a failing
run is replayed by its seed (printed by ``python -m tests.chaos``).
"""

from __future__ import annotations

import dataclasses
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from tests.chaos.ledger import Verdict
from tests.chaos.rig import Rig
from tests.chaos.services import ThrowawayService
from tests.integration.harness import WorkerProcess

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Load:
    events: int = 5000
    rate: float = 90.0  # events a second, half email and half webhook
    settle_timeout: float = 240.0  # seconds to wait, after the last fault, for every message to be accounted


@dataclasses.dataclass
class Outcome:
    verdict: Verdict
    settled: bool
    faults: list[str]
    lag: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.settled and self.verdict.ok


def _wait(condition: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _start(rig: Rig) -> None:
    rig.prepare()
    first = rig.worker("1").start()
    rig.send_profiles()
    rig.wait_for_profiles()
    del first


def _finish(rig: Rig, load: Load, faults: list[str], log: Log) -> Outcome:
    _wait(lambda: not rig.producing(), load.events / load.rate * 3 + 60)
    settled = rig.wait_settled(load.settle_timeout)
    verdict = rig.verdict()
    lag = rig.lag()
    log(f"  {verdict.summary()}; settled={settled} lag={lag}")
    return Outcome(verdict, settled, faults, lag)


def _live(rig: Rig) -> list[WorkerProcess]:
    return [w for w in rig.workers if w.proc is not None and w.proc.poll() is None]


def kill_nine(rig: Rig, rng: random.Random, load: Load, *, kills: int = 3, log: Log = print) -> Outcome:
    """SIGKILL workers at random points while events flow, and restart them.

    Each kill is one of: mid-send (once the providers have received a random
    share more), soon after the last restart (within the consumer session
    timeout, while the dead member still holds its partitions), or during a
    rebalance (a second worker joins and one of the two dies moments later).
    """
    _start(rig)
    rig.produce(load.events, load.rate)
    faults: list[str] = []
    total = load.events
    restarted_at = time.monotonic()
    for k in range(kills):
        kind = rng.choice(["mid-send", "after-restart", "rebalance"])
        if kind == "mid-send":
            target = rig.received_total() + rng.randint(10, max(11, total // (kills + 2)))
            _wait(lambda t=target: rig.received_total() >= t, 120)  # type: ignore[misc]
        elif kind == "after-restart":
            delay = rng.uniform(0.5, 8.0)
            time.sleep(max(0.0, restarted_at + delay - time.monotonic()))
        else:
            rig.worker(f"{k + 2}b").start()
            time.sleep(rng.uniform(0.0, 4.0))
        live = _live(rig)
        victim = rng.choice(live)
        victim.kill()
        faults.append(f"{kind}: killed {victim.log_path.name} at {rig.received_total()} received")
        log(f"  kill {k + 1}/{kills}: {faults[-1]}")
        time.sleep(rng.uniform(0.0, 2.0))
        if not _live(rig):
            rig.worker(f"{k + 2}").start()
        restarted_at = time.monotonic()
    return _finish(rig, load, faults, log)


def dependency_outage(
    rig: Rig,
    service: ThrowawayService,
    rng: random.Random,
    load: Load,
    *,
    action: str,
    log: Log = print,
) -> Outcome:
    """Break one dependency of the pipeline while events flow: ``pause`` (SIGSTOP then SIGCONT
    after ``service.pause_seconds``) or ``restart`` (SIGKILL, then start it again)."""
    _start(rig)
    rig.produce(load.events, load.rate)
    target = rng.randint(load.events // 10, load.events // 3)
    _wait(lambda: rig.received_total() >= target, 120)
    faults = [f"{action} {service.name} at {rig.received_total()} received"]
    log(f"  {faults[0]}")
    if action == "pause":
        service.signal(signal.SIGSTOP)
        time.sleep(service.pause_seconds)
        service.signal(signal.SIGCONT)
    else:
        service.kill()
        time.sleep(rng.uniform(1.0, 5.0))
        service.start()
    return _finish(rig, load, faults, log)
