"""``reach exporter``: the consumer group's lag from the broker, on its own port.

A process apart from the worker so the lag stays visible while the worker is
down (see :mod:`streams.lag`). It serves ``/metrics`` (read from Kafka at each
scrape) and ``/healthz`` until stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import make_server

import orjson
import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from channels.config import load_channels
from reach.metrics import add_standard_collectors
from reach.settings import Settings
from streams.health import QuietHandler
from streams.lag import collector_for

log = structlog.get_logger("reach.exporter")


def registry_for(settings: Settings, env: Mapping[str, str]) -> CollectorRegistry:
    channels = load_channels(settings.channels_file, env).channels
    registry = CollectorRegistry()
    add_standard_collectors(registry)
    registry.register(collector_for(settings, channels, settings.exporter_kafka_timeout))
    return registry


def exporter_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [orjson.dumps({"status": "ok"})]
        return metrics(environ, start_response)

    return app


def run(settings: Settings) -> None:
    registry = registry_for(settings, os.environ)
    server = make_server(
        settings.exporter_host,
        settings.exporter_port,
        exporter_app(registry),
        ThreadingWSGIServer,
        QuietHandler,
    )
    log.info("exporter.ready", metrics=f"http://{settings.exporter_host}:{settings.exporter_port}/metrics")
    server.serve_forever()
