"""Micro-benchmark of rule matching: ``python -m rules.bench [DIR] [-n N]``.

Measures :meth:`RuleEngine.match_triggers` and :meth:`RuleEngine.select_channels`
per call on the given rules (default: the examples), for facts that match and
facts that match nothing, and reports the process's peak RSS before and after,
to show that nothing is retained between calls.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rules.engine import RuleEngine
from rules.loader import load_rulebook

EXAMPLES = Path(__file__).parent / "examples"

MATCHING_EVENT: Mapping[str, Any] = {
    "event_id": "e-1",
    "user_id": "u-1",
    "name": "order_paid",
    "ts": 1_732_700_000_000,
    "properties": {"amount": 640.5, "order_id": "o-1", "currency": "EUR", "items": [{"sku": "a", "qty": 2}]},
    "device": {"platform": "ios", "app_version": "5.2.1"},
    "segments": ["vip", "newsletter"],
}
UNMATCHED_EVENT: Mapping[str, Any] = {**MATCHING_EVENT, "name": "page_viewed"}
CHANNEL_FACT: Mapping[str, Any] = {
    "rule_id": "welcome-signup",
    "template": "welcome",
    "priority": 5,
    "event": "signup",
    "platform": "ios",
    "segments": ["vip"],
    "reachable": ["inbox", "email"],
}


def per_call_us(call: Callable[[], object], n: int) -> float:
    """Mean wall time of ``call`` in microseconds over ``n`` calls."""
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


def run(directory: str | Path = EXAMPLES, n: int = 100_000) -> dict[str, float]:
    """Per-call microseconds of each case, and peak RSS in MiB before/after."""
    engine = RuleEngine.build(load_rulebook(directory))
    rss_before = _peak_rss_mib()
    candidates: Sequence[str] = ("inbox", "email")
    no_email = {**CHANNEL_FACT, "reachable": ["inbox"]}
    results = {
        "match_triggers matched (us)": per_call_us(lambda: engine.match_triggers(MATCHING_EVENT), n),
        "match_triggers unmatched (us)": per_call_us(lambda: engine.match_triggers(UNMATCHED_EVENT), n),
        "select_channels rule matched (us)": per_call_us(
            lambda: engine.select_channels(candidates, no_email), n
        ),
        "select_channels no rule (us)": per_call_us(
            lambda: engine.select_channels(candidates, CHANNEL_FACT), n
        ),
    }
    results["peak RSS before (MiB)"] = rss_before
    results["peak RSS after (MiB)"] = _peak_rss_mib()
    results["retained facts"] = float(engine.retained_facts())
    return results


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", nargs="?", default=str(EXAMPLES))
    parser.add_argument("-n", type=int, default=100_000, help="calls per case")
    args = parser.parse_args(argv)
    for name, value in run(args.directory, args.n).items():
        print(f"{name:40s} {value:10.2f}")


if __name__ == "__main__":
    main()
