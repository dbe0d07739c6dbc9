"""Logging set-up: provider secrets in request URLs never reach the logs."""

from __future__ import annotations

import logging

import httpx
import pytest

from reach import logs
from tests.support.http_provider import ProviderServer, Recorded, Reply


class OkServer(ProviderServer):
    async def handle(self, request: Recorded) -> Reply:
        return Reply(200, json={"errcode": 0})


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_request_urls_with_secrets_are_not_logged(level: str, caplog: pytest.LogCaptureFixture) -> None:
    logs.configure(level)
    caplog.set_level(logging.DEBUG)  # everything the loggers let through reaches the capture
    with OkServer() as server:
        response = httpx.get(f"{server.base_url}/cgi-bin/token", params={"secret": "app-secret-123"})
    assert response.status_code == 200
    assert "app-secret-123" not in caplog.text
