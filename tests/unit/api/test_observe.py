"""The request-metrics middleware: plain ASGI, labelled by route template and status."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware.base import BaseHTTPMiddleware

from api.observe import RequestMetrics
from reach.metrics import ApiMetrics


def app_with(registry: CollectorRegistry) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestMetrics, metrics=ApiMetrics(registry))

    @app.get("/users/{user_id}")
    async def user(user_id: str) -> dict[str, str]:
        return {"id": user_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


def count(registry: CollectorRegistry, method: str, route: str, status: str) -> float | None:
    labels = {"method": method, "route": route, "status": status}
    return registry.get_sample_value("reach_api_request_seconds_count", labels)


async def test_requests_are_counted_by_route_template_and_status() -> None:
    registry = CollectorRegistry()
    app = app_with(registry)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for user in ("ada", "bob"):
            assert (await client.get(f"/users/{user}")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/boom")).status_code == 500
    assert count(registry, "GET", "/users/{user_id}", "200") == 2  # ids never become labels
    assert count(registry, "GET", "unmatched", "404") == 1
    assert count(registry, "GET", "/boom", "500") == 1


def test_the_api_uses_no_base_http_middleware(tmp_path: Path) -> None:
    from api.app import create_app
    from reach.settings import Settings

    channels = tmp_path / "channels.yaml"
    channels.write_text("channels: {}\n")
    app = create_app(Settings(channels_file=channels))
    classes = [m.cls for m in app.user_middleware]
    assert classes == [RequestMetrics]
    assert not any(isinstance(c, type) and issubclass(c, BaseHTTPMiddleware) for c in classes)
