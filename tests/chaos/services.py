"""Throwaway Kafka, MariaDB and Redis instances for fault tests, so the shared stack keeps running.

Each instance is started by ``deploy/stack.sh start <service>`` with its own
state directory and ports, and reuses the shared stack's Kafka jars.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from reach.settings import REPO_ROOT
from tests.chaos.rig import Endpoints
from tests.integration.harness import free_port

STACK = REPO_ROOT / "deploy" / "stack.sh"
SHARED_KAFKA_LIB = REPO_ROOT / ".stack" / "kafka" / "lib"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ThrowawayService:
    """One service of a private stack under ``root``; ``name`` is kafka, mariadb or redis."""

    def __init__(self, name: str, root: Path, *, pause_seconds: float = 30.0) -> None:
        self.name = name
        self.root = root
        self.pause_seconds = pause_seconds
        self.port = free_port()
        self.controller_port = free_port()
        self.env = {
            **os.environ,
            "REACH_STACK_DIR": str(root),
            "REACH_KAFKA_LIB": str(SHARED_KAFKA_LIB),
            "REACH_KAFKA_PORT": str(self.port),
            "REACH_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "REACH_MYSQL_PORT": str(self.port),
            "REACH_REDIS_PORT": str(self.port),
        }

    def endpoints(self) -> Endpoints:
        """The shared stack's endpoints with this one service replaced."""
        shared = Endpoints()
        if self.name == "kafka":
            return Endpoints(f"127.0.0.1:{self.port}", shared.mysql_port, shared.redis_url)
        if self.name == "mariadb":
            return Endpoints(shared.kafka_bootstrap, self.port, shared.redis_url)
        return Endpoints(shared.kafka_bootstrap, shared.mysql_port, f"redis://127.0.0.1:{self.port}/0")

    def start(self) -> ThrowawayService:
        subprocess.run(["bash", str(STACK), "start", self.name], env=self.env, check=True)
        return self

    def pid(self) -> int:
        return int((self.root / self.name / "pid").read_text().strip())

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid(), sig)

    def kill(self) -> None:
        """SIGKILL, then wait until the port is closed."""
        self.signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        (self.root / self.name / "pid").unlink(missing_ok=True)

    def stop(self) -> None:
        try:
            self.signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        except (FileNotFoundError, ProcessLookupError):
            return
        subprocess.run(["bash", str(STACK), "down"], env=self.env, check=False)

    def __enter__(self) -> ThrowawayService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
