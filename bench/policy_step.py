"""The policy step alone, in-process, on the real Redis and MariaDB: the time it takes per
message without a policies file and with the bench's (``bench/policies.py``), and the Redis
commands it sends per batch (``INFO commandstats`` before and after).

The end-to-end comparison in ``bench/pipeline.py`` is the figure that counts; on a shared
machine its runs differ by more than the step costs, and this measures the step itself.
Every batch is of users not seen before (like the pipeline bench), so each batch also reads
their preferences from MariaDB once. ``python -m bench.policy_step``; last line is JSON.
Environment: BENCH_STEP_BATCHES (30), BENCH_BATCH (2000 messages a batch).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from agents.delivery.batch import BatchOutcome
from agents.delivery.policy import PolicyResources, PolicyStep
from bench.channels import CHANNELS
from bench.policies import write_policies
from channels.config import parse_channels
from models.messages import ReachMessage
from models.storage import migrate
from reach.runtime import Runtime, Setup
from tests.integration.harness import Db, clear_redis, make_settings, unique_run_id

RULES = "templates:\n  t: {title: T, text: T}\n"


def messages(first: int, count: int, now: int) -> list[ReachMessage]:
    """``count`` inbox messages of the default category, each to a user of its own."""
    return [message(n, now) for n in range(first, first + count)]


def message(n: int, now: int) -> ReachMessage:
    return ReachMessage(
        f"m-{n}", f"step-user-{n}", "bench-ping", "t", "inbox", "mariadb", 5, f"e-{n}", "bench_ping",
        now, now, {"n": n}, {}, "web", category="notification",
    )  # fmt: skip


async def redis_calls(runtime: Runtime) -> dict[str, int]:
    stats = await runtime.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def measure(tmp: Path, policies: bool, batches: int, size: int) -> dict[str, Any]:
    (tmp / "rules").mkdir(parents=True)
    (tmp / "rules" / "rules.yaml").write_text(RULES)
    policies_file = write_policies(tmp)[0] if policies else None
    settings = make_settings(tmp, unique_run_id(), CHANNELS, policies_file=policies_file)
    await migrate(settings)
    runtime = await Runtime.open(Setup.load(settings, parse_channels(CHANNELS, {})))
    try:
        step = PolicyStep("inbox", PolicyResources.of(runtime), runtime.metrics)
        await step.screen(
            messages(10**9, size, runtime.clock.now_ms()), runtime.clock.now_ms(), BatchOutcome()
        )
        walls, cpus, sent = [], [], 0
        before = await redis_calls(runtime)
        for n in range(batches):
            now = runtime.clock.now_ms()
            batch = messages(n * size, size, now)
            wall, cpu = time.perf_counter(), time.process_time()
            sent += len(await step.screen(batch, now, BatchOutcome()))
            walls.append((time.perf_counter() - wall) / size * 1e6)
            cpus.append((time.process_time() - cpu) / size * 1e6)
        after = await redis_calls(runtime)
    finally:
        await runtime.close()
        Db(settings).drop()
        clear_redis(settings)
    sent_commands = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {
        "us_per_message": round(statistics.median(walls), 2),
        "client_cpu_us_per_message": round(statistics.median(cpus), 2),
        "sent": sent,
        "redis_calls_per_batch": {k: round(v / batches, 2) for k, v in sorted(sent_commands.items()) if v},
    }


def batches_of(env: str, default: int) -> int:
    return int(os.environ.get(env, str(default)))


async def main_async() -> dict[str, Any]:
    batches, size = batches_of("BENCH_STEP_BATCHES", 30), batches_of("BENCH_BATCH", 2000)
    tmp = Path(tempfile.mkdtemp(prefix="reach-step-"))
    try:
        without = await measure(tmp / "without", False, batches, size)
        with_ = await measure(tmp / "with", True, batches, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "batch": size,
        "batches": batches,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "without": without,
        "with": with_,
        "added_us_per_message": round(with_["us_per_message"] - without["us_per_message"], 2),
    }


def main() -> int:
    summary = asyncio.run(main_async())
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
