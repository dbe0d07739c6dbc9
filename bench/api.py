"""HTTP API throughput at 100 and 1,000 connections (`make bench-api`).

Seeds BENCH_USERS (10,000) users with 50 inbox messages each (multi-row INSERTs, their
unread counters backfilled by the same statement ``migrate`` uses), starts
``reach api --workers N`` and a bare FastAPI endpoint (``bench/bare_api.py``, same uvicorn
options, same N) on free ports, and runs wrk against each in the same run: the bare
endpoint, ``GET /v1/users/{id}/inbox`` for random seeded users, and ``POST /v1/events`` (one
event a request). Each figure comes with the machine's load average, and reach's req/s with
its ratio to the bare endpoint measured at the same connection count.

Environment: BENCH_WORKERS (default one per core), BENCH_DURATION seconds per run (15),
BENCH_USERS (10000), BENCH_TIMEOUT wrk's request timeout in seconds (2),
BENCH_KEEP_DB=1 keeps the seeded database for the next run.
The last line is JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pymysql
from aiokafka.admin import AIOKafkaAdminClient

from api.serve import default_workers
from models.storage import UNREAD_BACKFILL, migrate
from reach.settings import REPO_ROOT, Settings
from streams.topics import ensure_topics, topic_names
from tests.integration.harness import create_key, free_port, settings_env, wait_until

MESSAGES_PER_USER = 50
SEED_ROWS_PER_STATEMENT = 1000
CONNECTIONS = (100, 1000)
TARGETS = {  # name: (script, path wrk is pointed at)
    "bare": ("bench/bare.lua", "/bare"),
    "inbox": ("bench/inbox.lua", "/v1/users/bench-u0/inbox"),
    "events": ("bench/events.lua", "/v1/events"),
}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def connect(settings: Settings, database: str | None) -> Any:
    return pymysql.connect(
        host=settings.mysql_host,
        port=settings.mysql_port,
        user=settings.mysql_user,
        password=settings.mysql_password.get_secret_value(),
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )


def seeded_rows(settings: Settings) -> int:
    try:
        with connect(settings, settings.mysql_database) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM inbox_messages")
            return int(cur.fetchone()[0])
    except pymysql.err.MySQLError:  # no database yet
        return -1


def seed(settings: Settings, users: int) -> float:
    """Drop and re-create the bench database with ``users`` x 50 messages; returns seconds."""
    started = time.perf_counter()
    with connect(settings, None) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql_database}`")
    asyncio.run(migrate(settings))
    now = int(time.time() * 1000)
    rows = (
        # Every fifth message read, newest last: pages show a mix of read and unread.
        (f"b{u:08d}{m:03d}", f"bench-u{u}", "bench-rule", "bench", f"Message {m} for you",
         f"Hello bench-u{u}, this is message {m} of the benchmark inbox.", 5,
         now - (MESSAGES_PER_USER - m) * 60_000, now if m % 5 == 0 else None)
        for u in range(users) for m in range(MESSAGES_PER_USER)
    )  # fmt: skip
    marks = "(%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    with connect(settings, settings.mysql_database) as conn, conn.cursor() as cur:
        batch: list[Any] = []
        for row in rows:
            batch.append(row)
            if len(batch) == SEED_ROWS_PER_STATEMENT:
                insert_rows(cur, marks, batch)
                batch = []
        if batch:
            insert_rows(cur, marks, batch)
        cur.execute(UNREAD_BACKFILL)
        cur.execute("ANALYZE TABLE inbox_messages")
    return time.perf_counter() - started


def insert_rows(cur: Any, marks: str, rows: list[Any]) -> None:
    cur.execute(
        "INSERT INTO inbox_messages (message_id, user_id, rule_id, template, title, body, priority, "
        f"created_at, read_at) VALUES {','.join([marks] * len(rows))}",
        [value for row in rows for value in row],
    )


@contextlib.contextmanager
def server(argv: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """Run a server process until the block ends; yields its base URL once it answers."""
    base = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, cwd=REPO_ROOT)
    try:

        def answering() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"{argv} exited with {proc.returncode}; see {log}")
            try:
                return httpx.get(base + "/openapi.json", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answering, 90, f"{argv[-3:]} to answer", interval=0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(
    base: str, target: str, connections: int, seconds: int, timeout: int, env: dict[str, str]
) -> dict[str, Any]:
    script, path = TARGETS[target]
    threads = min(connections, max(2, os.cpu_count() or 2))
    load_before = os.getloadavg()[0]
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout}s", "--latency",
            "-s", script, base + path]  # fmt: skip
    out = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("WRK_JSON ")]
    figures = orjson.loads(line.removeprefix("WRK_JSON "))
    figures["req_per_s"] = round(figures["requests"] / (figures["duration_us"] / 1e6), 1)
    figures["load_1m_before"], figures["load_1m_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
    figures["non_2xx_or_3xx"] = figures.pop("status_errors")
    return figures


def print_run(target: str, connections: int, figures: dict[str, Any]) -> None:
    print(
        f"{target:>6} c={connections:<5} {figures['req_per_s']:>9.1f} req/s  p50 {figures['p50_ms']:7.1f} ms"
        f"  p95 {figures['p95_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms  timeouts {figures['timeouts']}"
        f"  socket errors {figures['connect_errors'] + figures['read_errors'] + figures['write_errors']}"
        f"  non-2xx {figures['non_2xx_or_3xx']}"
        f"  load {figures['load_1m_before']}->{figures['load_1m_after']}",
        flush=True,
    )


def verdict(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 8's targets at 1,000 connections, per reach endpoint."""
    bare = results["c1000"]["bare"]["req_per_s"]
    out = {}
    for target in ("inbox", "events"):
        figures = results["c1000"][target]
        ratio = figures["req_per_s"] / bare if bare else 0.0
        out[target] = {
            "p95_le_200ms": figures["p95_ms"] <= 200,
            "no_timeouts": figures["timeouts"] == 0,
            "ratio_ge_0_5": ratio >= 0.5,
        }
    return out


async def topics(settings: Settings, create: bool) -> None:
    if create:
        await ensure_topics(settings, [])
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topic_names(settings, []))
    finally:
        await admin.close()


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `bash deploy/stack.sh wrk` (make bench-api does)", file=sys.stderr)
        return 1
    workers = env_int("BENCH_WORKERS", default_workers())
    seconds, users, timeout = (
        env_int("BENCH_DURATION", 15),
        env_int("BENCH_USERS", 10_000),
        env_int("BENCH_TIMEOUT", 2),
    )
    settings = Settings(
        mysql_database="reach_bench_api", topic_prefix=f"bench-api-{os.getpid()}.", log_level="WARNING"
    )
    seeded_in = 0.0
    if seeded_rows(settings) != users * MESSAGES_PER_USER:
        print(f"seeding {users} users x {MESSAGES_PER_USER} inbox messages ...", flush=True)
        seeded_in = seed(settings, users)
        print(f"seeded in {seeded_in:.1f} s", flush=True)
    asyncio.run(topics(settings, create=True))
    # Every request authenticates, and counts against a rate limit too high to reach: the
    # figures include the key check and the limiter's Redis round trip, as production pays them.
    token = create_key(settings, "admin", rate_limit=1_000_000_000)
    log_dir = Path(os.environ.get("BENCH_LOG_DIR") or REPO_ROOT / "var" / "bench-api")
    log_dir.mkdir(parents=True, exist_ok=True)
    reach_port, bare_port = free_port(), free_port()
    env = {
        **os.environ,
        **settings_env(settings),
        "REACH_API_PORT": str(reach_port),
        "BENCH_USERS": str(users),
        "BENCH_AUTH": f"Bearer {token}",
    }
    results: dict[str, dict[str, Any]] = {}
    reach_argv = [sys.executable, "-m", "reach.cli", "api", "--workers", str(workers)]
    bare_argv = [sys.executable, "-m", "bench.bare_api", str(bare_port), str(workers)]
    try:
        with (
            server(reach_argv, env, reach_port, log_dir / "reach-api.log") as reach_url,
            server(bare_argv, env, bare_port, log_dir / "bare-api.log") as bare_url,
        ):
            bases = {"bare": bare_url, "inbox": reach_url, "events": reach_url}
            for target, base in bases.items():  # warm-up: pools, producer metadata, caches
                wrk(base, target, 100, 2, timeout, env)
            for connections in CONNECTIONS:
                runs = results[f"c{connections}"] = {}
                for target, base in bases.items():
                    runs[target] = wrk(base, target, connections, seconds, timeout, env)
                    print_run(target, connections, runs[target])
                bare = runs["bare"]["req_per_s"]
                for target in ("inbox", "events"):
                    runs[target]["ratio_to_bare"] = (
                        round(runs[target]["req_per_s"] / bare, 3) if bare else None
                    )
    finally:
        asyncio.run(topics(settings, create=False))
        if not os.environ.get("BENCH_KEEP_DB"):
            with connect(settings, None) as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql_database}`")
    summary = {
        "benchmark": "api",
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "duration_s": seconds,
        "wrk_timeout_s": timeout,
        "users": users,
        "messages_per_user": MESSAGES_PER_USER,
        "seed_seconds": round(seeded_in, 1),
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "results": results,
        "targets_at_1000": verdict(results),
    }
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
