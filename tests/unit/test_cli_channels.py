"""``reach channels``: what an operator sees of the channels file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reach.cli import main

CHANNELS = """
channels:
  email:
    window_seconds: 60
    limit_per_window: 100
    providers:
      - name: relay
        type: smtp
        weight: 3
        options:
          host: smtp.example.com
          username: reach
          password: "${SMTP_PASSWORD}"
          from_addr: "Reach <noreply@example.com>"
"""


@pytest.fixture
def channels_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "channels.yaml"
    path.write_text(CHANNELS)
    monkeypatch.setenv("REACH_CHANNELS_FILE", str(path))
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2-very-secret")
    return path


def test_json_listing_masks_secrets_and_names_address_fields(
    channels_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["channels", "--json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    listing = json.loads(out)
    [relay] = listing["channels"]["email"]["providers"]
    assert relay["options"]["password"] == "****"
    assert relay["options"]["host"] == "smtp.example.com"
    assert relay["address_fields"] == ["email"]
    assert "smtp" in listing["provider_types"] and "inbox" in listing["provider_types"]


def test_text_listing(channels_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["channels"]) == 0
    out = capsys.readouterr().out
    assert "relay  type smtp  weight 3  sends to: email" in out
    assert "password: ****" in out and "hunter2" not in out


def test_a_bad_file_is_an_error_naming_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(CHANNELS.replace("type: smtp", "type: carrier-pigeon"))
    monkeypatch.setenv("REACH_CHANNELS_FILE", str(path))
    monkeypatch.setenv("SMTP_PASSWORD", "x")
    assert main(["channels"]) == 1
    err = capsys.readouterr().err
    assert "carrier-pigeon" in err and "bad.yaml" in err
