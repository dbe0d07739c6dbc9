"""Hot reload from a Kubernetes ConfigMap volume (deploy/k8s): the kubelet writes every version
into a timestamped directory, points ``..data`` at it and exposes each file as a symlink
through ``..data``. An update swaps that one symlink, and the reloader must see it."""

from __future__ import annotations

import os
from pathlib import Path

from rules.reloader import RuleReloader

TRIGGERS = """
triggers:
  - {{id: greet, when: 'name == "{name}"', template: hello, channels: [inbox]}}
templates:
  hello: {{title: "Hello", text: "hi"}}
"""


def publish(mount: Path, version: str, name: str) -> None:
    """What the kubelet does: a new version directory, then an atomic swap of ``..data``."""
    (mount / version).mkdir()
    (mount / version / "triggers.yaml").write_text(TRIGGERS.format(name=name))
    os.symlink(version, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "triggers.yaml").is_symlink():
        os.symlink("..data/triggers.yaml", mount / "triggers.yaml")


def test_a_configmap_update_is_reloaded(tmp_path: Path) -> None:
    publish(tmp_path, "..2026_12_01_v1", "signup")
    reloader = RuleReloader(tmp_path, known_channels=["inbox"])
    assert [t.id for t in reloader.current.match_triggers({"name": "signup"})] == ["greet"]
    publish(tmp_path, "..2026_12_01_v2", "order_paid_and_more")  # a different size: a new stat
    assert reloader.check() is True
    assert reloader.current.match_triggers({"name": "signup"}) == []
    assert [t.id for t in reloader.current.match_triggers({"name": "order_paid_and_more"})] == ["greet"]
