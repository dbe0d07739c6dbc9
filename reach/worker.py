"""``reach worker``: the stream-processing worker.

Start-up, in this order (each step raises, and the worker does not start, when its part of
the configuration is bad or its service is unreachable):

1. configuration: the channels file, rules, policies (:meth:`Setup.load`, opens nothing);
2. the schema and the topics;
3. the worker's resources (:meth:`Runtime.open`: MariaDB, Redis, the providers);
4. the faust app and its agents, handed the open runtime (:func:`streams.app.build`);
5. faust runs the app; once it and its agents have stopped, the runtime is closed.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Mapping
from typing import Any

import faust
import structlog
import uvloop

from channels.config import load_channels
from models.storage import migrate
from reach.runtime import Runtime, Setup
from reach.settings import Settings
from streams.app import Topology, build
from streams.health import serve
from streams.topics import ensure_topics

log = structlog.get_logger("reach.worker")

# The collector's thresholds (Python's are 700, 10, 10). A task page decodes 20,000 members
# in one go; at the default thresholds a collection ran in the middle of nearly every page,
# the page's objects reached the oldest generation and set off a full collection, ~120 ms,
# almost once a page: about 10 s of a million-member expansion's 37 (measured). Here the
# youngest generation is collected every 10,000 allocations and a full collection may run
# every 20 million at most, still seconds apart at the worker's rates (its heap stayed flat).
GC_THRESHOLDS = (10_000, 20, 100)


class Worker(faust.Worker):
    """faust's worker, which closes the runtime once the app and its agents have stopped
    (``mode`` stops a service's children before its ``on_shutdown``)."""

    def __init__(self, topology: Topology, **kwargs: Any) -> None:
        super().__init__(topology.app, **kwargs)
        self.runtime = topology.runtime

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.runtime.close()
        log.info("worker.closed")


def prepare(settings: Settings, env: Mapping[str, str]) -> tuple[asyncio.AbstractEventLoop, Topology]:
    """Steps 1 to 4 of the start-up; nothing stays open when one of them fails."""
    channels = load_channels(settings.channels_file, env)
    setup = Setup.load(settings, channels)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(migrate(settings))
    loop.run_until_complete(ensure_topics(settings, channels.channels))
    runtime = loop.run_until_complete(Runtime.open(setup))
    try:
        return loop, build(settings, runtime)
    except BaseException:
        loop.run_until_complete(runtime.close())
        raise


def run(settings: Settings) -> None:
    loop, topology = prepare(settings, os.environ)
    if settings.worker_metrics_port:
        serve(
            settings.worker_metrics_port,
            topology.runtime.registry,
            topology.health,
            settings.worker_metrics_host,
        )
    log.info(
        "worker.ready",
        events_topic=settings.events_topic,
        rules_dir=str(settings.rules_dir),
        metrics=f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
        if settings.worker_metrics_port
        else None,
    )
    worker = Worker(topology, loop=loop, loglevel=settings.log_level, override_logging=False)
    # What start-up built (modules, rules, the faust app: most of the heap) never becomes
    # garbage. Frozen, it is left out of the collections that the hot paths' allocations
    # trigger: building a task page's recipients over a worker-sized heap (~740k objects)
    # took 3.1 us each before and 1.1 us after (measured).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    worker.execute_from_commandline()
