"""The task files in deploy/examples/tasks/ are valid for the example channels and rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from api.tasks import channel_names
from models.tasks import ValidationContext, validate_task
from reach.settings import REPO_ROOT, Settings
from rules.loader import load_rulebook

EXAMPLES = sorted((REPO_ROOT / "deploy" / "examples" / "tasks").glob("*.yaml"))
NOW = int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp() * 1000)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_task_files_validate(path: Path) -> None:
    settings = Settings()
    channels = channel_names(REPO_ROOT / "deploy" / "config" / "channels.yaml")
    templates = load_rulebook(REPO_ROOT / "rules" / "examples", channels).templates
    body = yaml.safe_load(path.read_text())
    audience = body["audience"]
    if "list_file" in audience:  # the CLI uploads it and puts the list id here
        assert (path.parent / audience.pop("list_file")).exists()
        audience["lists"] = ["0123456789abcdef"]
    validate_task(body, ValidationContext(NOW, channels, templates, settings.category_names))
