"""The ceiling reach's pipeline is measured against: a bare two-hop faust app.

Same faust configuration as reach's worker (``streams.app.create_app``), raw
bytes, ``take(1000, within=0.05)`` at concurrency 1: hop one forwards every
record of topic A to topic B, hop two counts them and writes its count and
the time to a progress file. ``bench/pipeline.py`` starts it as
``python -m bench.bare_faust`` with ``REACH_*`` settings and reads the file.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust

from reach.settings import Settings
from streams.app import create_app

TAKE, WITHIN = 1000, 0.05


def build(settings: Settings, progress: Path) -> faust.App:
    app = create_app(settings)
    first = app.topic(settings.topic("bare.a"))
    second = app.topic(settings.topic("bare.b"))
    hop_b = settings.topic("bare.b")

    async def forward(stream: Any) -> None:
        async for values in stream.take(TAKE, within=WITHIN):
            pending = [await app.producer.send(hop_b, None, v, None, None, None) for v in values]
            await asyncio.gather(*pending)

    async def count(stream: Any) -> None:
        seen = 0
        async for values in stream.take(TAKE, within=WITHIN):
            seen += len(values)
            progress.write_text(f"{seen} {time.time():.3f}")  # noqa: ASYNC240 - a few bytes, once a batch

    app.agent(first, name="bare.forward")(forward)
    app.agent(second, name="bare.count")(count)
    return app


def main() -> int:
    settings = Settings()
    app = build(settings, Path(os.environ["BARE_PROGRESS"]))
    faust.Worker(app, loglevel="WARNING", override_logging=False).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
