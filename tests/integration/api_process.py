"""``reach api`` in a subprocess with settings of a test's own (a dead port, a short timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from reach.settings import REPO_ROOT, Settings
from tests.integration.harness import bearer, create_key, free_port, settings_env, wait_until


class ApiProcess:
    """Start with :meth:`start`; :meth:`wait_serving` waits for it, :meth:`stop` ends it."""

    def __init__(self, settings: Settings, log_path: Path, *args: str) -> None:
        """``args`` are added to ``reach api``: ``"--workers", "1"`` runs no uvicorn supervisor,
        whose health pings kill a child slow to start on a loaded machine."""
        self.settings = settings.model_copy(update={"api_port": free_port()})
        self.args = args
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{self.settings.api_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.headers: dict[str, str] = {}

    def with_key(self, *scopes: str) -> ApiProcess:
        """Make a key in the process's database and send it with :attr:`headers`."""
        self.headers = bearer(create_key(self.settings, *scopes))
        return self

    def start(self) -> ApiProcess:
        env = {**os.environ, **settings_env(self.settings)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reach.cli", "api", *self.args],
                env=env, stdout=log, stderr=log, cwd=REPO_ROOT,
            )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float = 30) -> ApiProcess:
        """Wait until ``/healthz`` answers; fail with the log if the process exits first."""
        assert self.proc is not None

        def serving() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(serving, timeout, "the API to answer /healthz")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
