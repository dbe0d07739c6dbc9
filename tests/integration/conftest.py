"""Fixtures for the integration suite: the real local stack, one pipeline per session.

Every run gets its own topics, consumer group, database and Redis key prefix,
so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from models.storage import migrate
from reach.settings import REPO_ROOT, Settings
from tests.integration.harness import Db, WorkerProcess, clear_redis, make_settings, unique_run_id
from tests.support.smtp_server import SmtpTestServer

SMTP_USER, SMTP_PASSWORD = "reach", "s3cret-smtp"
# Receipt secrets of the "receipts" channel's providers (tests/integration/test_receipts.py).
RECEIPT_TWILIO_TOKEN, RECEIPT_TOKEN, RECEIPT_WEBHOOK_SECRET = "tw-token", "receipt-token", "hook-secret"

pytestmark = pytest.mark.integration


def channels_yaml(smtp_port: int, email_limit: str = "", inbox_limit: str = "", window: float = 1) -> str:
    return f"""
channels:
  inbox:
    window_seconds: {window}
    {inbox_limit}
    providers:
      - name: mariadb
        type: inbox
  popup:
    window_seconds: {window}
    providers:
      - name: mariadb
        type: popup
  email:
    window_seconds: {window}
    {email_limit}
    providers:
      - name: smtp-local
        type: smtp
        options:
          host: 127.0.0.1
          port: {smtp_port}
          security: none
          username: {SMTP_USER}
          password: "${{REACH_SMTP_PASSWORD}}"
          from_addr: "Reach <noreply@reach.test>"
          unsubscribe_url: "https://reach.test/unsubscribe/{{message_id}}"
  receipts:  # no rule sends here: these entries exist for the API's receipt endpoints
    window_seconds: {window}
    providers:
      - name: twilio-receipts
        type: twilio_sms
        options: {{account_sid: AC0, auth_token: {RECEIPT_TWILIO_TOKEN}, from_number: "+15550000000"}}
      - name: aliyun-receipts
        type: aliyun_sms
        options:
          access_key_id: i
          access_key_secret: s
          sign_name: R
          template_code: T
          receipt_token: {RECEIPT_TOKEN}
      - name: tencent-receipts
        type: tencent_sms
        options:
          secret_id: i
          secret_key: k
          sdk_app_id: "1"
          sign_name: R
          template_id: "1"
          receipt_token: {RECEIPT_TOKEN}
      - name: webhook-receipts
        type: webhook
        options: {{base_url: "http://127.0.0.1:9", secret: {RECEIPT_WEBHOOK_SECRET}}}
"""


@pytest.fixture(scope="session", autouse=True)
def stack() -> None:
    """Start the local stack if it is not running (make test has done it already)."""
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "up"], check=True)


@dataclasses.dataclass
class Pipeline:
    settings: Settings
    worker: WorkerProcess
    smtp: SmtpTestServer
    db: Db
    tmp: Path


TEST_RULES = Path(__file__).parent / "rules"


def start_pipeline(
    tmp: Path, smtp: SmtpTestServer, settings_overrides: Mapping[str, Any] | None = None, **channel_args: str
) -> Pipeline:
    yaml = channels_yaml(smtp.port, **channel_args)
    settings = make_settings(tmp, unique_run_id(), yaml, **dict(settings_overrides or {}))
    for rule_file in TEST_RULES.glob("*.yaml"):
        shutil.copy(rule_file, settings.rules_dir / rule_file.name)
    asyncio.run(migrate(settings))
    worker = WorkerProcess(settings, tmp / "worker.log", {"REACH_SMTP_PASSWORD": SMTP_PASSWORD}).start()
    return Pipeline(settings, worker, smtp, Db(settings), tmp)


def stop_pipeline(pipeline: Pipeline) -> None:
    pipeline.worker.stop()
    pipeline.db.drop()
    clear_redis(pipeline.settings)


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(auth=(SMTP_USER, SMTP_PASSWORD)) as server:
        yield server


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpTestServer) -> Iterator[Pipeline]:
    """One running worker shared by the tests that do not restart it."""
    running = start_pipeline(tmp_path_factory.mktemp("pipeline"), smtp_server)
    yield running
    stop_pipeline(running)


@dataclasses.dataclass
class Api:
    base_url: str
    proc: subprocess.Popen[bytes]
    headers: dict[str, str]  # the Authorization of a key with the suite's scopes (TEST_SCOPES)


@pytest.fixture(scope="session")
def api(pipeline: Pipeline) -> Iterator[Api]:
    """``reach api --workers 1`` in a subprocess, on the shared pipeline's database and topics.
    One process: uvicorn's supervisor kills children slow to answer its health ping, which at
    load 20+ here kept the API from ever serving (``tests/integration/test_api_workers.py``
    covers several processes)."""
    import os
    import sys

    import httpx

    from tests.integration.harness import bearer, create_key, free_port, settings_env, wait_until

    headers = bearer(create_key(pipeline.settings))
    port = free_port()
    env = {**os.environ, **settings_env(pipeline.settings), "REACH_API_PORT": str(port)}
    log = open(pipeline.tmp / "api.log", "ab")  # noqa: SIM115 - owned by the subprocess
    proc = subprocess.Popen(
        [sys.executable, "-m", "reach.cli", "api", "--workers", "1"],
        env=env, stdout=log, stderr=log, cwd=REPO_ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        wait_until(healthy, 60, "the API to answer /healthz")
        assert proc.poll() is None, (pipeline.tmp / "api.log").read_text()
        yield Api(base, proc, headers)
    finally:  # a start that timed out must not leave the process behind
        proc.terminate()
        proc.wait(30)
