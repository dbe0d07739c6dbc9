"""End-to-end throughput of the real pipeline on the local stack (`make bench`).

Many users each send one trigger event; the run counts delivered inbox
messages with their result rows. In the same run it measures the ceiling, a
bare two-hop faust app (``bench/bare_faust.py``) carrying as many records. It
prints a last line of JSON with ``messages_per_minute``, the bare app's
``bare_two_hop_per_minute`` and ``ratio_to_bare``, end-to-end latency p50/p99
(event time to result row) and the worker's peak RSS.

Then the reach-task scenario (``bench/tasks.py``): a task to a segment of BENCH_TASK_MEMBERS
users (default 1000000, 0 skips it), its ``task_*`` figures added to the same JSON line.

Environment: BENCH_EVENTS (default 200000), BENCH_PARTITIONS (4), BENCH_BARE=0 to skip the bare app,
BENCH_TIMEOUT seconds (900), BENCH_PROFILE=1 to run the worker under
pyinstrument (its report is written next to the worker log).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient, NewTopic

from bench.tasks import task_scenario
from models.storage import migrate
from reach.producer import SyncProducer
from reach.settings import REPO_ROOT
from tests.integration.harness import (
    Db,
    WorkerProcess,
    clear_redis,
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

CHANNELS = """
channels:
  inbox:
    window_seconds: 1
    providers:
      - name: mariadb
        type: inbox
"""


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


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


def main() -> int:
    total = int(os.environ.get("BENCH_EVENTS", "200000"))
    timeout = float(os.environ.get("BENCH_TIMEOUT", "900"))
    tmp = Path(tempfile.mkdtemp(prefix="reach-bench-"))
    (tmp / "rules").mkdir()
    (tmp / "rules" / "bench.yaml").write_text(RULES)
    settings = make_settings(
        tmp,
        unique_run_id(),
        CHANNELS,
        partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
        batch_within=0.05,
        batch_size=int(os.environ.get("BENCH_BATCH", "2000")),
    )
    asyncio.run(migrate(settings))
    db = Db(settings)
    worker = WorkerProcess(settings, tmp / "worker.log")
    if os.environ.get("BENCH_PROFILE"):
        worker.command = [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "text",
            "-o",
            str(tmp / "profile.txt"),
            "-m",
            "reach.cli",
            "worker",
        ]
    worker.start()
    try:
        producer = SyncProducer(settings.kafka_bootstrap)
        started = time.time()

        def records():
            for n in range(total):
                now = int(time.time() * 1000)
                yield (
                    f"bench-user-{n}".encode(),
                    orjson.dumps(
                        {
                            "event_id": f"bench-{n}",
                            "user_id": f"bench-user-{n}",
                            "name": "bench_ping",
                            "ts": now,
                            "properties": {"n": n},
                            "device": {"platform": "web"},
                        }
                    ),
                )

        producer.send_many(settings.events_topic, records())
        produced_s = time.time() - started
        print(f"produced {total} events in {produced_s:.1f}s", file=sys.stderr)

        def done() -> bool:
            (count,) = db.query("SELECT COUNT(*) FROM delivery_results WHERE status = 'sent'")[0]
            print(f"  {count}/{total} delivered", file=sys.stderr)
            return count >= total

        wait_until(done, timeout, f"{total} result rows", interval=2.0)
        rss = peak_rss_mb(worker.proc.pid) if worker.proc else 0.0
        (first_event, last_result) = db.query(
            "SELECT MIN(event_ts), MAX(completed_at) FROM delivery_results"
        )[0]
        latencies = sorted(r[0] for r in db.query("SELECT completed_at - event_ts FROM delivery_results"))
        (inbox_rows,) = db.query("SELECT COUNT(*) FROM inbox_messages")[0]
    finally:
        worker.stop()
        db.drop()
        clear_redis(settings)
    elapsed_s = (last_result - first_event) / 1000
    summary = {
        "messages": total,
        "inbox_rows": inbox_rows,
        "elapsed_s": round(elapsed_s, 2),
        "messages_per_minute": round(total / elapsed_s * 60),
        "latency_p50_ms": percentile(latencies, 0.50),
        "latency_p99_ms": percentile(latencies, 0.99),
        "worker_peak_rss_mb": round(rss, 1),
        "producer_s": round(produced_s, 2),
        "partitions": settings.partitions,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if os.environ.get("BENCH_BARE", "1") != "0":
        bare = bare_two_hop_per_minute(total, settings.partitions, timeout)
        summary["bare_two_hop_per_minute"] = bare
        summary["ratio_to_bare"] = round(summary["messages_per_minute"] / bare, 2)
        summary["load_avg_1m_after_bare"] = round(os.getloadavg()[0], 2)
    task_members = int(os.environ.get("BENCH_TASK_MEMBERS", "1000000"))
    if task_members > 0:
        summary.update(task_scenario(task_members, timeout, settings.partitions))
    if os.environ.get("BENCH_PROFILE"):
        print(f"profile: {tmp / 'profile.txt'}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
