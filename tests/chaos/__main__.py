"""``python -m tests.chaos``: the crash harness (``make chaos``).

Runs randomized crash scenarios against the real pipeline and checks the
ledger of every message after each. The seed of each run is printed; pass
``--seed`` to replay one. A failing run keeps its worker logs under
``var/chaos/<run>/`` and the command exits 1.

    python -m tests.chaos                      # 20 kill -9 runs, then each dependency fault once
    python -m tests.chaos --runs 1 --seed 42 --scenario kill
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from reach.settings import REPO_ROOT
from tests.chaos.rig import Rig
from tests.chaos.scenarios import Load, Outcome, dependency_outage, kill_nine
from tests.chaos.services import ThrowawayService

DEPENDENCY_FAULTS = {"redis-pause": ("redis", "pause"), "mariadb-restart": ("mariadb", "restart"),
                     "kafka-restart": ("kafka", "restart")}  # fmt: skip


def run_once(scenario: str, seed: int, load: Load, args: argparse.Namespace, workdir: Path) -> Outcome:
    rng = random.Random(seed)
    if scenario == "kill":
        with Rig(workdir, committed_delay=args.committed_delay) as rig:
            return _kept(rig, kill_nine(rig, rng, load, kills=args.kills), workdir)
    name, action = DEPENDENCY_FAULTS[scenario]
    service = ThrowawayService(name, workdir / "stack", pause_seconds=args.pause)
    with service, Rig(workdir, endpoints=service.endpoints(), committed_delay=args.committed_delay) as rig:
        return _kept(rig, dependency_outage(rig, service, rng, load, action=action), workdir)


def _kept(rig: Rig, outcome: Outcome, workdir: Path) -> Outcome:
    if not outcome.ok:
        keep = REPO_ROOT / "var" / "chaos" / workdir.name
        keep.mkdir(parents=True, exist_ok=True)
        for name, text in rig.logs():
            (keep / name).write_text(text)
        (keep / "lost.txt").write_text("\n".join(outcome.verdict.lost + outcome.verdict.false_sent))
        print(f"  logs kept in {keep}")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="kill -9 runs (default 20)")
    parser.add_argument("--scenario", choices=["all", "kill", *DEPENDENCY_FAULTS], default="all")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first run (default: random)")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=90.0, help="events a second")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per kill run")
    parser.add_argument("--pause", type=float, default=30.0, help="seconds Redis stays SIGSTOPped")
    parser.add_argument("--committed-delay", type=float, default=0.04,
                        help="seconds added to each committed-offset lookup (widens recovery)")  # fmt: skip
    args = parser.parse_args(argv)
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    plan = [("kill", first + n) for n in range(args.runs)] if args.scenario in ("all", "kill") else []
    plan += [
        (s, first + args.runs + n) for n, s in enumerate(DEPENDENCY_FAULTS) if args.scenario in ("all", s)
    ]
    load = Load(events=args.events, rate=args.rate)
    failures = 0
    for index, (scenario, seed) in enumerate(plan, 1):
        print(f"[{index}/{len(plan)}] {scenario} seed={seed}", flush=True)
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{scenario}-{seed}-"))
        try:
            outcome = run_once(scenario, seed, load, args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        failures += not outcome.ok
        print(f"  {'passed' if outcome.ok else 'FAILED'} in {time.monotonic() - started:.0f}s", flush=True)
    print(f"chaos: {len(plan) - failures}/{len(plan)} runs kept every message (first seed {first})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
