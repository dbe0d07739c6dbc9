"""The reach-task scenario of ``make bench``: a task "now" to one segment of BENCH_TASK_MEMBERS
(default 1,000,000) users, through a fresh worker to the inbox channel.

Measures the time from the task's creation until every recipient is planned onto the
outbox (target <= 60 s), the delivered rate through the inbox, and the worker's peak RSS
(target < 300 MB during the expansion), with the load and a ceiling measured in the same
run (:func:`bare_produce`). BENCH_TASK_DELIVERED times the delivered rate over the first
that many messages instead of all. BENCH_TASK_PROFILE=FILE samples the worker with py-spy
(on PATH) from the task's creation until it is planned and writes its collapsed stacks to
FILE, and beside it the CPU seconds per worker thread and per program, and the worker's
log. ``python -m bench.tasks`` runs it alone and prints its JSON; ``bench/pipeline.py``
adds the same figures to its last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pymysql
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.records import value_limit
from bench.channels import CHANNELS
from models.outbox import pack
from models.storage import create_pool, migrate
from models.tasks import ValidationContext, first_runs, validate_task
from models.taskstore import TaskStore
from reach.settings import Settings
from tests.integration.harness import Db, WorkerProcess, clear_redis, make_settings, unique_run_id, wait_until

SEED_ROWS = 5000  # rows per INSERT while seeding
TASK = {
    "name": "bench task",
    "category": "marketing",
    "audience": {"segments": ["bench-seg"]},
    "content": {"title": "Hello", "text": "A task message for {{ user_id }}"},
    "channels": ["inbox"],
    "schedule": {"kind": "now"},
}


def seed(settings: Settings, members: int) -> None:
    """``members`` profiles in one segment, written straight to MariaDB (the profiles topic
    would measure the segments agent, not the task)."""
    conn = pymysql.connect(
        host=settings.mysql_host,
        port=settings.mysql_port,
        user=settings.mysql_user,
        password=settings.mysql_password.get_secret_value(),
        database=settings.mysql_database,
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            for start in range(0, members, SEED_ROWS):
                users = [f"bt-{n:08d}" for n in range(start, min(members, start + SEED_ROWS))]
                marks = ",".join(["(%s,'[\"bench-seg\"]','{}','',NULL,0)"] * len(users))
                cur.execute(
                    "INSERT INTO user_profiles (user_id, segments, contact, timezone, attributes, "
                    f"updated_at) VALUES {marks}",
                    users,
                )
                cur.execute(
                    f"INSERT INTO segment_members (segment, user_id, updated_at) VALUES "
                    f"{','.join(['(%s,%s,0)'] * len(users))}",
                    [v for user in users for v in ("bench-seg", user)],
                )
    finally:
        conn.close()


async def create_task(settings: Settings) -> int:
    pool = await create_pool(settings)
    try:
        now = int(time.time() * 1000)
        spec = validate_task(TASK, ValidationContext(now, ["inbox"], {}, settings.categories))
        task_no, _ = await TaskStore(pool).create(spec, first_runs(spec.schedule, now), "bench", now)
        return task_no
    finally:
        pool.close()
        await pool.wait_closed()


def ready(settings: Settings) -> bool:
    try:
        url = f"http://127.0.0.1:{settings.worker_metrics_port}/readyz"
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


Profile = tuple[subprocess.Popen[bytes], int, dict[str, float], dict[str, float]]


def start_profile(worker: WorkerProcess) -> Profile | None:
    """py-spy sampling the worker (threads included, without pausing it), when asked."""
    out = os.environ.get("BENCH_TASK_PROFILE")
    if not out or worker.proc is None:
        return None
    pid = worker.proc.pid
    command = ["py-spy", "record", "--pid", str(pid), "--rate", "50", "--nonblocking",
               "--threads", "--format", "raw", "--output", out]  # fmt: skip
    return (
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        pid,
        cpu_seconds(Path(f"/proc/{pid}/task").glob("*/stat")),
        cpu_seconds(Path("/proc").glob("[0-9]*/stat"), by_name=True),
    )


def stop_profile(profile: Profile | None) -> None:
    """Stop py-spy and write, next to its output, the CPU seconds each worker thread (by
    the id py-spy names it with) and each program on the box spent over the expansion."""
    if profile is None:
        return
    profiler, pid, threads, programs = profile
    spent = {
        "threads": _spent(threads, cpu_seconds(Path(f"/proc/{pid}/task").glob("*/stat"))),
        "programs": _spent(programs, cpu_seconds(Path("/proc").glob("[0-9]*/stat"), by_name=True)),
    }
    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    profiler.wait(60)
    Path(os.environ["BENCH_TASK_PROFILE"] + ".cpu.json").write_bytes(orjson.dumps(spent))


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    spent = {key: round(cpu - before.get(key, 0.0), 2) for key, cpu in after.items()}
    return dict(sorted(((k, v) for k, v in spent.items() if v >= 0.05), key=lambda kv: -kv[1]))


def cpu_seconds(stats: Iterable[Path], by_name: bool = False) -> dict[str, float]:
    """User plus system CPU seconds from /proc stat files, by id (or summed by program name)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for stat in stats:
        with contextlib.suppress(OSError):
            text = stat.read_text()
            name, rest = text.split(" (", 1)[1].rsplit(")", 1)
            fields = rest.split()
            key = name if by_name else stat.parent.name
            found[key] = found.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


CEILING_MESSAGE = 575  # bytes of one planned inbox message of this task (measured)
CEILING_PAGE = 5000  # messages acknowledged at a time (fixed, so ceilings compare across page sizes)


async def bare_produce(settings: Settings, members: int, partitions: int) -> float:
    """The ceiling of planning: the seconds to produce ``members`` messages of a planned
    message's size, framed and acknowledged page by page as the runner does, from a bare
    aiokafka producer with nothing else to do. Measured in the same run as the task, so
    ``task_planned_per_s / task_ceiling_produce_per_s`` compares like with like on a shared box."""
    topic = f"{settings.topic_prefix}bench.ceiling"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    limit = value_limit(settings.kafka_max_message_bytes)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, max_batch_size=512 * 1024,
        max_request_size=settings.kafka_max_message_bytes,
    )  # fmt: skip
    await producer.start()
    try:
        started = time.perf_counter()
        for first in range(0, members, CEILING_PAGE):
            page = [
                (f"bt-{n:08d}".encode(), b'{"m":"' + b"x" * (CEILING_MESSAGE - 8) + b'"}')
                for n in range(first, min(members, first + CEILING_PAGE))
            ]
            frames = pack(page, settings.outbox_frame_messages, limit)
            acks = [await producer.send(topic, value, key=key) for key, value in frames]
            await asyncio.gather(*acks)
        return time.perf_counter() - started
    finally:
        await producer.stop()
        async with asyncio.timeout(30):
            admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([topic])
            finally:
                await admin.close()


def task_scenario(
    members: int, timeout: float, partitions: int = 4, sample: int | None = None
) -> dict[str, Any]:
    """``sample``: time the delivered rate over the first this many messages (all by default;
    fewer when the delivery of a large audience would take longer than the run may)."""
    sample = min(members, sample or members)
    tmp = Path(tempfile.mkdtemp(prefix="reach-bench-task-"))
    (tmp / "rules").mkdir()  # no trigger rules: only the task sends
    (tmp / "rules" / "bench.yaml").write_text("templates:\n  unused: {title: t, text: t}\n")
    settings = make_settings(tmp, unique_run_id(), CHANNELS, partitions=partitions, batch_within=0.05)
    asyncio.run(migrate(settings))
    db = Db(settings)
    seeded = time.time()
    seed(settings, members)
    seed_s = time.time() - seeded
    ceiling_s = asyncio.run(bare_produce(settings, members, partitions))
    worker = WorkerProcess(settings, tmp / "worker.log").start()
    try:
        wait_until(lambda: ready(settings), 120, "the worker's partitions (readyz)", interval=0.2)
        load_at_start = os.getloadavg()[0]
        profiler = start_profile(worker)
        created = time.time()
        task_no = asyncio.run(create_task(settings))
        run = lambda: db.query("SELECT state, planned FROM task_runs WHERE task_no = %s", [task_no])[0]  # noqa: E731
        wait_until(lambda: run()[0] == "planned", timeout, "every recipient planned", interval=0.2)
        planned_s = time.time() - created
        stop_profile(profiler)
        load_at_planned = os.getloadavg()[0]
        started_at, finished_at = db.query(
            "SELECT started_at, finished_at FROM task_runs WHERE task_no = %s", [task_no]
        )[0]
        rss_planned = peak_rss_mb(worker.proc.pid) if worker.proc else 0.0
        sent = lambda: int(  # noqa: E731
            db.query(
                "SELECT COALESCE(SUM(n), 0) FROM task_counts WHERE task_no = %s AND status = 'sent'",
                [task_no],
            )[0][0]
        )
        wait_until(lambda: sent() >= sample, timeout, "the task messages timed", interval=1.0)
        first, last = db.query(
            "SELECT MIN(completed_at), MAX(completed_at) FROM (SELECT completed_at FROM delivery_results "
            "WHERE rule_id = %s ORDER BY completed_at LIMIT %s) timed",
            [f"task:{task_no}", sample],
        )[0]
        rss = peak_rss_mb(worker.proc.pid) if worker.proc else 0.0
    finally:
        worker.stop()
        if os.environ.get("BENCH_TASK_PROFILE"):  # the worker's log too
            shutil.copy(tmp / "worker.log", os.environ["BENCH_TASK_PROFILE"] + ".log")
        db.drop()
        clear_redis(settings)
        shutil.rmtree(tmp, ignore_errors=True)
    delivery_s = max(0.001, (last - first) / 1000)
    return {
        "task_members": members,
        "task_seed_s": round(seed_s, 1),
        "task_planned_s": round(planned_s, 2),  # from the task's creation
        "task_expansion_s": round((finished_at - started_at) / 1000, 2),  # the run's own time
        "task_planned_per_s": round(members / planned_s),
        "task_ceiling_produce_per_s": round(members / ceiling_s),  # see bare_produce
        "task_planned_to_ceiling": round(ceiling_s / planned_s, 3),
        "task_planned_peak_rss_mb": round(rss_planned, 1),
        "task_load_avg_1m": [round(load_at_start, 2), round(load_at_planned, 2)],  # at creation, at planned
        "task_delivered_per_minute": round(sample / delivery_s * 60),
        "task_delivered_timed": sample,
        "task_worker_peak_rss_mb": round(rss, 1),
    }


def main() -> int:
    members = int(os.environ.get("BENCH_TASK_MEMBERS", "1000000"))
    sample = int(os.environ.get("BENCH_TASK_DELIVERED", "0")) or None
    summary = task_scenario(members, float(os.environ.get("BENCH_TIMEOUT", "900")), sample=sample)
    summary["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
