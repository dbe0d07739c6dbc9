"""``reach api --workers 2``: two processes on one port, and /metrics sums both.

prometheus_client's multiprocess mode keeps one file per process in the run's
metrics directory (``reach api`` makes it under ``TMPDIR`` and removes it at exit).
The test posts events until both workers' files have counted some, then checks that
``/metrics``, answered by whichever worker, reports the sum of both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.mmap_dict import MmapedDict

from reach.settings import REPO_ROOT
from tests.integration.conftest import Pipeline
from tests.integration.harness import bearer, create_key, free_port, settings_env, wait_until

pytestmark = pytest.mark.integration

ACCEPTED = "reach_api_events_accepted_total"


def accepted_by_process(directory: Path) -> dict[int, float]:
    """Each worker's own count of accepted events, read from its counter file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if orjson.loads(key)[1] == ACCEPTED:
                counts[int(path.stem.split("_")[1])] = value
    return counts


def scraped_total(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    (line,) = [line for line in text.splitlines() if line.startswith(ACCEPTED + " ")]
    return float(line.split()[1])


def post_one(base_url: str, headers: dict[str, str], n: int) -> bool:
    event = {
        "event_id": f"workers-{n}",
        "user_id": f"workers-{n}",
        "name": "workers_probe",
        "ts": 1764291600000,
    }
    # A fresh connection per request, so the kernel hands connections to both workers.
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        return client.post("/v1/events", content=orjson.dumps(event)).status_code == 202


def test_metrics_sum_a_counter_incremented_in_two_worker_processes(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    headers = {**bearer(create_key(pipeline.settings, "events:write")), "content-type": "application/json"}
    port = free_port()
    env = {
        **os.environ,
        **settings_env(pipeline.settings),
        "REACH_API_PORT": str(port),
        "TMPDIR": str(tmp_path),
    }
    log = open(tmp_path / "api.log", "ab")  # noqa: SIM115 - owned by the subprocess
    proc = subprocess.Popen(
        [sys.executable, "-m", "reach.cli", "api", "--workers", "2"],
        env=env,
        stdout=log,
        stderr=log,
        cwd=REPO_ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        (directory,) = wait_until(
            lambda: list(tmp_path.glob("reach-api-metrics-*")), 30, "the metrics directory"
        )

        def serving() -> bool:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(serving, 60, "the API to answer /healthz")
        posted = 0

        def both_counted() -> dict[int, float] | None:
            nonlocal posted
            with ThreadPoolExecutor(8) as threads:
                posted += sum(threads.map(lambda n: post_one(base, headers, posted + n), range(16)))
            counts = accepted_by_process(directory)
            return counts if sum(v > 0 for v in counts.values()) >= 2 else None

        counts = wait_until(both_counted, 60, "events accepted by two different workers")
        assert len(counts) == 2 and all(value > 0 for value in counts.values())
        assert sum(counts.values()) == posted
        assert scraped_total(base) == posted  # either worker answers with the sum of both
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert not directory.exists()  # the run's metrics directory is removed at exit
