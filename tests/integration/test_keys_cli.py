"""``reach keys ...`` and ``reach audit`` on the real MariaDB, run in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from models.storage import migrate
from reach import cli
from reach.settings import Settings
from tests.integration.harness import Db, settings_env, unique_run_id

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    built = Settings(mysql_database=f"reach_{unique_run_id()}")
    for name, value in settings_env(built).items():
        monkeypatch.setenv(name, value)
    yield built
    Db(built).drop()


def run(*args: str) -> int:
    """``reach ARGS`` without ``cli.main``'s logging set-up, which would bind structlog to
    this test's captured stdout and break every later test that logs."""
    parsed = cli._parser().parse_args(list(args))
    result: int = parsed.run(Settings(), parsed)
    return result


def reach(capsys: pytest.CaptureFixture[str], *args: str, status: int = 0) -> str:
    assert run(*args) == status
    return capsys.readouterr().out


def test_keys_are_created_listed_rotated_revoked_and_audited(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    made = orjson.loads(
        reach(
            capsys,
            "keys",
            "create",
            "orders-backend",
            "--scope",
            "events:write",
            "--event",
            "order_paid",
            "--json",
        )
    )
    assert made["token"].startswith(f"rk_{made['key_id']}_") and made["events"] == ["order_paid"]
    listing = reach(capsys, "keys", "list")
    assert made["key_id"] in listing and made["token"] not in listing
    rotated = orjson.loads(reach(capsys, "keys", "rotate", made["key_id"], "--json"))
    assert rotated["token"] != made["token"]
    assert f"revoked {made['key_id']}" in reach(capsys, "keys", "revoke", made["key_id"])
    assert "revoked" in next(
        line for line in reach(capsys, "keys", "list").splitlines() if made["key_id"] in line
    )
    log = reach(capsys, "audit")
    assert all(f"key.{action}  {made['key_id']}" in log for action in ("create", "rotate", "revoke"))
    secrets = (made["token"].split("_", 2)[2], rotated["token"].split("_", 2)[2])
    assert not any(secret in log for secret in secrets)


def test_unknown_keys_and_scopes_fail_with_a_reason(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(migrate(settings))
    assert run("keys", "revoke", "0123456789abcdef") == 1
    assert "no active key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("keys", "create", "x", "--scope", "root")
