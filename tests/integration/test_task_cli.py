"""``reach tasks`` against the API: bad task files refused with every problem and nothing
stored; a task file with an uploaded list created, shown and cancelled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reach.settings import REPO_ROOT
from tests.integration.conftest import Api, Pipeline
from tests.integration.harness import create_key, settings_env

pytestmark = pytest.mark.integration

EXAMPLES = REPO_ROOT / "deploy" / "examples" / "tasks"


def reach_tasks(
    pipeline: Pipeline, api: Api, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``reach tasks ARGS`` with the suite's key (``key``: another one; ``""``: none)."""
    token = api.headers["authorization"].removeprefix("Bearer ") if key is None else key
    env = {**os.environ, **settings_env(pipeline.settings), "REACH_API_KEY": token}
    if not token:
        del env["REACH_API_KEY"]
    return subprocess.run(
        [sys.executable, "-m", "reach.cli", "tasks", *args, "--api", api.base_url],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_without_a_key_or_with_one_lacking_tasks_write_nothing_is_sent(pipeline: Pipeline, api: Api) -> None:
    keyless = reach_tasks(pipeline, api, "list", key="")
    assert keyless.returncode == 1 and "REACH_API_KEY" in keyless.stderr, keyless.stderr
    reader = create_key(pipeline.settings, "inbox:read")
    refused = reach_tasks(pipeline, api, "list", key=reader)
    assert refused.returncode == 1 and "tasks:write" in refused.stderr, refused.stderr


def test_bad_task_files_are_refused_with_every_problem(pipeline: Pipeline, api: Api, tmp_path: Path) -> None:
    before = pipeline.db.query("SELECT COUNT(*) FROM tasks")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\naudience: [unclosed\n")
    result = reach_tasks(pipeline, api, "create", str(broken))
    assert result.returncode == 1 and f"{broken}:3: not YAML" in result.stderr, result.stderr
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(
        "name: x\ncategory: gossip\naudience: {segments: [a]}\ncontent: {template: nope}\n"
        "channels: [inbox]\nschedule: {kind: at, at: 2020-01-01T00:00:00Z}\n"
    )
    result = reach_tasks(pipeline, api, "create", str(invalid))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == ["category", "content.template", "schedule.at"], lines
    assert pipeline.db.query("SELECT COUNT(*) FROM tasks") == before


def test_a_task_file_with_a_list_is_uploaded_created_shown_and_cancelled(
    pipeline: Pipeline, api: Api, tmp_path: Path
) -> None:
    task_file = tmp_path / "later.yaml"
    task_file.write_text(
        (EXAMPLES / "uploaded-list.yaml").read_text().replace("{kind: now}", "{kind: at, at: 4102444800000}")
    )
    (tmp_path / "recall-users.csv").write_text((EXAMPLES / "recall-users.csv").read_text())
    created = reach_tasks(pipeline, api, "create", str(task_file))
    assert created.returncode == 0, created.stderr
    assert "uploaded 3 user ids" in created.stdout
    task_no = created.stdout.split("task ")[1].split()[0]
    shown = reach_tasks(pipeline, api, "show", task_no)
    assert f"task {task_no}: recall-notice [transactional]" in shown.stdout
    assert "status scheduled, schedule at, next run 2100-01-01 00:00:00Z" in shown.stdout
    listed = reach_tasks(pipeline, api, "list", "--status", "scheduled")
    assert task_no in listed.stdout
    cancelled = reach_tasks(pipeline, api, "cancel", task_no)
    assert cancelled.stdout.strip() == f"task {task_no} is cancelled"
    watched = reach_tasks(pipeline, api, "show", task_no, "--watch")
    assert watched.returncode == 0 and "status cancelled" in watched.stdout
