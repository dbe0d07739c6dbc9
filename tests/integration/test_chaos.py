"""The crash harness, small: kill -9 during delivery and each dependency fault once, ledger checked.

``make chaos`` runs the same scenarios with more messages, more kills and
many seeds. The seed is in every failure message; ``CHAOS_SEED=<n>`` replays it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.chaos.rig import Rig
from tests.chaos.scenarios import Load, Outcome, dependency_outage, kill_nine
from tests.chaos.services import ThrowawayService

pytestmark = pytest.mark.integration

LOAD = Load(events=1200, rate=120.0, settle_timeout=180.0)


def seeded() -> tuple[int, random.Random]:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    return seed, random.Random(seed)


def explain(seed: int, outcome: Outcome) -> str:
    return f"seed={seed} faults={outcome.faults} {outcome.verdict.summary()} lag={outcome.lag}"


def test_kill_nine_during_delivery_loses_nothing(tmp_path: Path) -> None:
    seed, rng = seeded()
    with Rig(tmp_path, committed_delay=0.04) as rig:
        outcome = kill_nine(rig, rng, LOAD, kills=2)
    assert outcome.ok, explain(seed, outcome)


@pytest.mark.parametrize(
    ("service_name", "action"), [("redis", "pause"), ("mariadb", "restart"), ("kafka", "restart")]
)
def test_a_dependency_outage_loses_nothing(tmp_path: Path, service_name: str, action: str) -> None:
    seed, rng = seeded()
    service = ThrowawayService(service_name, tmp_path / "stack", pause_seconds=10.0)
    with service, Rig(tmp_path, endpoints=service.endpoints()) as rig:
        outcome = dependency_outage(rig, service, rng, LOAD, action=action)
    assert outcome.ok, explain(seed, outcome)
