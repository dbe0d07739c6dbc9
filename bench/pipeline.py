"""End-to-end throughput of the real pipeline on the local stack (`make bench`).

Many users each send one trigger event; the run counts delivered inbox
messages with their result rows. One run measures, in order:

- **burst**: every event produced at once, one worker: messages a minute from
  the first event to the last result row, latency p50/p99 (event time to result
  row), the worker's peak RSS, and the Redis memory the run's keys hold per
  100,000 messages;
- the burst again **with policies** (``bench/policies.py``: caps and quiet hours that
  check every message and hold none), right after it: both rates, their ratio, and what
  the policies suppressed or deferred (``policies`` in the JSON);
- **the ceiling**, a bare two-hop faust app (``bench/bare_faust.py``) carrying
  as many records, and reach's ratio to it;
- the burst again with **two worker processes**;
- **sustained**: the highest offered rate held for ``BENCH_SUSTAIN_SECONDS``
  (60) with p99 event-to-result <= 1 s, searched in steps of 1.25x.

The last line is JSON with these figures and the load average beside each.

Then the reach-task scenario (``bench/tasks.py``): a task to a segment of BENCH_TASK_MEMBERS
users (default 1000000, 0 skips it), its ``task_*`` figures added to the same JSON line.

Environment: BENCH_EVENTS (default 200000), BENCH_PARTITIONS (4), BENCH_POLICIES=0 to skip the burst
with policies, BENCH_POLICY_ROUNDS (1) pairs of bursts without and with them (in alternating
order; ``ratio`` is the median of the pairs' ratios), BENCH_BARE=0 to skip the bare app,
BENCH_TWO_WORKERS=0 to skip two workers, BENCH_SUSTAIN_SECONDS=0 to skip the sustained search,
BENCH_TIMEOUT seconds (900), BENCH_PROFILE=1 to run the (first) worker under pyinstrument (its
report is written next to the worker log).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka.admin import AdminClient, NewTopic

from bench.channels import CHANNELS
from bench.policies import held, write_policies
from bench.tasks import task_scenario
from models.storage import migrate
from reach.producer import SyncProducer
from reach.settings import REPO_ROOT, Settings
from tests.integration.harness import (
    Db,
    WorkerProcess,
    clear_redis,
    free_port,
    make_settings,
    settings_env,
    unique_run_id,
    wait_until,
)

RULES = """
triggers:
  - id: bench-ping
    when: name == "bench_ping"
    template: bench-ping
    channels: [inbox]
    dedup_key: "{event_id}"
templates:
  bench-ping:
    title: "Hello {{ properties.n }}"
    text: "Benchmark message for {{ user_id }}"
"""


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bare_two_hop_per_minute(total: int, partitions: int, timeout: float) -> int:
    """Records a minute through the bare two-hop faust app, on topics of its own."""
    tmp = Path(tempfile.mkdtemp(prefix="reach-bare-"))
    settings = make_settings(tmp, unique_run_id(), CHANNELS, partitions=partitions, batch_within=0.05)
    topics = [settings.topic("bare.a"), settings.topic("bare.b")]
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(t, partitions, 1) for t in topics]).values():
        future.result(30)
    progress = tmp / "progress"
    env = {**os.environ, **settings_env(settings), "BARE_PROGRESS": str(progress)}
    with open(tmp / "bare.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_faust"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    try:
        producer = SyncProducer(settings.kafka_bootstrap)
        producer.send_many(topics[0], [(None, b"warm-up")])
        wait_until(lambda: _seen(progress)[0] >= 1, 120, "the bare app's first record")
        started = time.time()
        producer.send_many(topics[0], ((None, b"x" * 200) for _ in range(total)))
        wait_until(lambda: _seen(progress)[0] >= total + 1, timeout, "the bare app's records", interval=0.5)
        return round(total / (_seen(progress)[1] - started) * 60)
    finally:
        proc.terminate()
        proc.wait(30)
        admin.delete_topics(topics)
        shutil.rmtree(tmp, ignore_errors=True)


def _seen(progress: Path) -> tuple[int, float]:
    try:
        count, at = progress.read_text().split()
        return int(count), float(at)
    except (FileNotFoundError, ValueError):
        return 0, 0.0


def events(first: int, count: int) -> Iterator[tuple[bytes, bytes]]:
    """``count`` trigger events for users ``first ..``, stamped with the time they are produced."""
    for n in range(first, first + count):
        yield (
            f"bench-user-{n}".encode(),
            orjson.dumps(
                {
                    "event_id": f"bench-{n}",
                    "user_id": f"bench-user-{n}",
                    "name": "bench_ping",
                    "ts": int(time.time() * 1000),
                    "properties": {"n": n},
                    "device": {"platform": "web"},
                }
            ),
        )


class Run:
    """One benchmark run: its settings, database and worker processes."""

    def __init__(self, tmp: Path, workers: int, policies: Path | None = None) -> None:
        (tmp / "rules").mkdir()
        (tmp / "rules" / "bench.yaml").write_text(RULES)
        self.settings = make_settings(
            tmp,
            unique_run_id(),
            CHANNELS,
            partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
            batch_within=0.05,
            batch_size=int(os.environ.get("BENCH_BATCH", "2000")),
            policies_file=policies,
        )
        asyncio.run(migrate(self.settings))
        self.db = Db(self.settings)
        self.workers = [
            WorkerProcess(
                self.settings, tmp / f"worker-{n}.log", {"REACH_WORKER_METRICS_PORT": str(free_port())}
            )
            for n in range(workers)
        ]
        if os.environ.get("BENCH_PROFILE"):
            self.workers[0].command = [
                sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(tmp / "profile.txt"),
                "-m", "reach.cli", "worker",
            ]  # fmt: skip
        self.producer = SyncProducer(self.settings.kafka_bootstrap)
        self.sent = 0

    def __enter__(self) -> Run:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *_: object) -> None:
        for worker in self.workers:
            worker.stop()
        self.db.drop()
        clear_redis(self.settings)

    def produce(self, count: int) -> None:
        self.producer.send_many(self.settings.events_topic, events(self.sent, count))
        self.sent += count

    def delivered(self, since_ms: int = 0) -> int:
        sql = "SELECT COUNT(*) FROM delivery_results WHERE status = 'sent' AND event_ts >= %s"
        return int(self.db.query(sql, (since_ms,))[0][0])

    def finished(self) -> int:
        """Messages with a final result: sent, or suppressed by a policy."""
        sql = "SELECT COUNT(*) FROM delivery_results WHERE status IN ('sent', 'suppressed')"
        return int(self.db.query(sql)[0][0])

    def latencies(self, since_ms: int = 0) -> list[int]:
        sql = "SELECT completed_at - event_ts FROM delivery_results WHERE event_ts >= %s"
        return sorted(int(r[0]) for r in self.db.query(sql, (since_ms,)))

    def peak_rss_mb(self) -> float:
        return max(peak_rss_mb(w.proc.pid) if w.proc else 0.0 for w in self.workers)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(w.proc.pid) if w.proc else 0.0 for w in self.workers)


def burst(workers: int, total: int, timeout: float, policies: bool = False) -> dict[str, Any]:
    """Every event produced at once; the rate from the first event to the last result row.
    With ``policies``, the run's worker reads the file of :mod:`bench.policies`."""
    tmp = Path(tempfile.mkdtemp(prefix="reach-bench-"))
    policies_file, described = write_policies(tmp) if policies else (None, "")
    with Run(tmp, workers, policies_file) as run:
        started, cpu_before = time.time(), run.cpu_seconds()
        run.produce(total)
        print(
            f"produced {total} events in {time.time() - started:.1f}s ({workers} worker(s)"
            f"{', with policies' if policies else ''})",
            file=sys.stderr,
        )
        wait_until(lambda: run.finished() >= total, timeout, f"{total} result rows", interval=2.0)
        cpu = run.cpu_seconds() - cpu_before
        first_event, last_result = run.db.query(
            "SELECT MIN(event_ts), MAX(completed_at) FROM delivery_results"
        )[0]
        latencies = run.latencies()
        figures = {
            "messages_per_minute": round(total / ((last_result - first_event) / 1000) * 60),
            "latency_p50_ms": percentile(latencies, 0.50),
            "latency_p99_ms": percentile(latencies, 0.99),
            "worker_peak_rss_mb": round(run.peak_rss_mb(), 1),
            # less sensitive to what else runs on the machine than the rate
            "worker_cpu_us_per_message": round(cpu / total * 1e6, 1),
            "redis_bytes_per_100k_messages": redis_bytes_per_100k(run.settings, total),
        }
        if policies:
            figures.update(policies=described, **held(run.settings, run.db))
    if os.environ.get("BENCH_PROFILE"):
        print(f"profile: {tmp / 'profile.txt'}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def redis_bytes_per_100k(settings: Settings, messages: int) -> int:
    """Redis memory the run's keys hold (``MEMORY USAGE`` of a sample, scaled to every key)."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    keys = list(client.scan_iter(f"{settings.redis_prefix}*", count=5000))
    if not keys:
        return 0
    sample = random.sample(keys, min(len(keys), 2000))
    pipe = client.pipeline(transaction=False)
    for key in sample:
        pipe.memory_usage(key, samples=0)
    used = sum(n or 0 for n in pipe.execute())
    return round(used / len(sample) * len(keys) / messages * 100_000)


def paced(run: Run, rate: int, seconds: float) -> tuple[bool, int]:
    """Offer ``rate`` events a second for ``seconds``; whether every message reached its result
    row within a second of the last event with p99 <= 1 s, and that p99."""
    since = int(time.time() * 1000)
    first, slice_s = run.sent, 0.1
    started = time.time()
    for n in range(int(seconds / slice_s)):
        run.produce(round(rate * slice_s))
        time.sleep(max(0.0, started + (n + 1) * slice_s - time.time()))
    offered = run.sent - first
    try:
        wait_until(
            lambda: run.delivered(since) >= offered, 1.0 + 2 * slice_s, "the paced messages", interval=0.2
        )
    except AssertionError:
        wait_until(lambda: run.delivered(since) >= offered, 600, "the backlog to drain", interval=1.0)
        return False, percentile(run.latencies(since), 0.99)
    p99 = percentile(run.latencies(since), 0.99)
    return p99 <= 1000, p99


def sustained(start_rate: int, seconds: float) -> dict[str, Any]:
    """The highest offered rate held for ``seconds`` with p99 <= 1 s, searched from ``start_rate``
    (a burst's rate) in steps of 1.25x, at most five trials, on one worker."""
    tmp = Path(tempfile.mkdtemp(prefix="reach-bench-"))
    held, trials, rate = 0, [], start_rate
    with Run(tmp, 1) as run:
        run.produce(100)  # warm-up: the first batch pays for connections and rule compilation
        wait_until(lambda: run.delivered() >= 100, 120, "the warm-up messages")
        for _ in range(5):
            ok, p99 = paced(run, rate, seconds)
            trials.append({"events_per_s": rate, "p99_ms": p99, "held": ok, "load_avg_1m": load()})
            print(f"  paced {rate}/s for {seconds:.0f}s: p99 {p99} ms, held={ok}", file=sys.stderr)
            if ok:
                held = max(held, rate)
                rate = round(rate * 1.25)
            else:
                rate = round(rate * 0.8)
            if (held and rate <= held) or any(t["events_per_s"] == rate for t in trials):
                break
    shutil.rmtree(tmp, ignore_errors=True)
    return {"sustained_per_minute": held * 60, "sustained_trials": trials}


def load() -> float:
    return round(os.getloadavg()[0], 2)


POLICY_KEYS = ("policies", "suppressed", "suppressed_by_reason", "deferred", "cap_keys")


def policy_comparison(first_without: dict[str, Any], total: int, timeout: float) -> dict[str, Any]:
    """Bursts with policies beside bursts without them (the first one already run): one pair
    a round, the order alternating so neither side always runs second."""
    rounds: list[dict[str, Any]] = []
    for n in range(int(os.environ.get("BENCH_POLICY_ROUNDS", "1"))):
        order = (False, True) if n % 2 == 0 else (True, False)
        runs = {
            flag: first_without if n == 0 and not flag else burst(1, total, timeout, flag) for flag in order
        }
        with_policies = runs[True]
        rounds.append(
            {
                "without_per_minute": runs[False]["messages_per_minute"],
                "with_per_minute": with_policies["messages_per_minute"],
                "with_latency_p99_ms": with_policies["latency_p99_ms"],
                "without_cpu_us_per_message": runs[False]["worker_cpu_us_per_message"],
                "with_cpu_us_per_message": with_policies["worker_cpu_us_per_message"],
                "with_redis_bytes_per_100k_messages": with_policies["redis_bytes_per_100k_messages"],
                "first": "with" if order[0] else "without",
                "load_avg_1m": load(),
                **{k: with_policies[k] for k in POLICY_KEYS},
            }
        )
        print(f"  policies round {n + 1}: {rounds[-1]}", file=sys.stderr)
    # Each round's two bursts ran back to back, under about the same load: the ratio is the
    # median of the rounds' own ratios, not of medians taken apart.
    ratios = [r["with_per_minute"] / r["without_per_minute"] for r in rounds]
    cpu_ratios = [r["without_cpu_us_per_message"] / r["with_cpu_us_per_message"] for r in rounds]
    return {
        "without_per_minute": round(statistics.median(r["without_per_minute"] for r in rounds)),
        "with_per_minute": round(statistics.median(r["with_per_minute"] for r in rounds)),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "without_cpu_us_per_message": statistics.median(r["without_cpu_us_per_message"] for r in rounds),
        "with_cpu_us_per_message": statistics.median(r["with_cpu_us_per_message"] for r in rounds),
        "cpu_ratio": round(statistics.median(cpu_ratios), 3),  # as a rate: 1.0 = the policies cost nothing
        "suppressed": sum(r["suppressed"] for r in rounds),
        "deferred": sum(r["deferred"] for r in rounds),
        "rounds": rounds,
    }


def main() -> int:
    total = int(os.environ.get("BENCH_EVENTS", "200000"))
    timeout = float(os.environ.get("BENCH_TIMEOUT", "900"))
    summary: dict[str, Any] = {"messages": total, "load_avg_1m_before": load()}
    first = burst(1, total, timeout)
    summary.update(first)
    summary["load_avg_1m"] = load()
    if os.environ.get("BENCH_POLICIES", "1") != "0":
        summary["policies"] = policy_comparison(first, total, timeout)
    if os.environ.get("BENCH_BARE", "1") != "0":
        bare = bare_two_hop_per_minute(total, int(os.environ.get("BENCH_PARTITIONS", "4")), timeout)
        summary["bare_two_hop_per_minute"] = bare
        summary["ratio_to_bare"] = round(summary["messages_per_minute"] / bare, 2)
        if "policies" in summary:
            summary["policies"]["with_ratio_to_bare"] = round(
                summary["policies"]["with_per_minute"] / bare, 2
            )
        summary["load_avg_1m_after_bare"] = load()
    if os.environ.get("BENCH_TWO_WORKERS", "1") != "0":
        two = burst(2, total, timeout)
        summary["two_workers"] = {
            k: two[k] for k in ("messages_per_minute", "latency_p99_ms", "worker_peak_rss_mb")
        }
        summary["two_workers"]["load_avg_1m"] = load()
    seconds = float(os.environ.get("BENCH_SUSTAIN_SECONDS", "60"))
    if seconds > 0:
        summary.update(sustained(int(summary["messages_per_minute"] / 60 * 0.6), seconds))
    task_members = int(os.environ.get("BENCH_TASK_MEMBERS", "1000000"))
    if task_members > 0:
        partitions = int(os.environ.get("BENCH_PARTITIONS", "4"))
        sample = int(os.environ.get("BENCH_TASK_DELIVERED", "0")) or None
        summary.update(task_scenario(task_members, timeout, partitions, sample))
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
