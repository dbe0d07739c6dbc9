"""deploy/stack.sh against the running local stack."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reach.settings import REPO_ROOT

pytestmark = pytest.mark.integration


def test_up_reuses_a_broker_that_answers_without_resolving_the_kafka_jars(tmp_path: Path) -> None:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "mvn").write_text(f"#!/bin/sh\necho called > {tmp_path}/mvn-called\nexit 1\n")
    (stubs / "mvn").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "REACH_STACK_DIR": str(tmp_path / "stack"),  # no resolved jars here
        "REACH_KAFKA_LIB": str(tmp_path / "stack" / "lib"),
    }
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "kafka: reusing the broker" in done.stderr + done.stdout
    assert not (tmp_path / "mvn-called").exists()
