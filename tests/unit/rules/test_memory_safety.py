"""durable-rules' C memory: engines are built, used and freed in every order without crashing.

Runs in a child process: a crash in the C extension (durable-rules aborts with
``free(): invalid pointer`` on some sequences, see rules.engine) must fail this
test, not kill the test session.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import gc
    import random

    from rules.errors import RuleEvaluationError
    from tests.unit.rules.conftest import event, trigger_engine

    rng = random.Random(7)
    names = ["signup", "login", "order_paid", "other"]

    # Random rule sets, random matched / unmatched facts, closed or collected.
    for round_ in range(80):
        whens = [f'name == "{rng.choice(names)}" and properties.n != {i}' for i in range(rng.randint(1, 10))]
        whens.append('"vip" not in segments')
        engine = trigger_engine(*whens)
        for _ in range(rng.randint(0, 30)):
            segments = rng.choice([[], ["vip"]])
            fact = event(name=rng.choice(names), properties={"n": rng.randint(0, 5)}, segments=segments)
            engine.match_triggers(fact)
            engine.select_channels(["inbox"], {"priority": 1})
        if rng.random() < 0.3:
            engine.close()
        del engine
        if round_ % 10 == 0:
            gc.collect()

    # Engines that only ever saw unmatched facts (the state durable-rules cannot free without the warm-up).
    for _ in range(20):
        engine = trigger_engine('name == "never"')
        engine.match_triggers(event())
        del engine
        gc.collect()

    # A failure inside durable-rules, a rebuild, then collection.
    engine = trigger_engine(*(f"properties.n != {i}" for i in range(65)))  # 65 alternatives > 64
    try:
        engine.match_triggers(event(properties={"n": -1}))
    except RuleEvaluationError:
        pass
    assert engine.rebuilds == 1
    assert len(engine.match_triggers(event(properties={"n": 0}))) == 64
    del engine
    gc.collect()
    print("ok")
    """
)


def test_build_use_and_free_in_any_order_does_not_crash() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr[-2000:]
