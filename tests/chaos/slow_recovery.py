"""``reach worker`` with every committed-offset lookup delayed by ``CHAOS_COMMITTED_DELAY`` seconds.

faust seeks each stream partition to its committed offset when recovery
completes, one lookup per partition; on a loaded broker those lookups take
tens of milliseconds, and that is the window in which a recovering worker
used to lose records. The crash harness widens it on purpose.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer

from reach.cli import main

DELAY = float(os.environ.get("CHAOS_COMMITTED_DELAY", "0") or 0)
_committed = AIOKafkaConsumer.committed


async def _slow_committed(self: AIOKafkaConsumer, partition: Any) -> Any:
    await asyncio.sleep(DELAY)
    return await _committed(self, partition)


if DELAY > 0:
    AIOKafkaConsumer.committed = _slow_committed

if __name__ == "__main__":
    sys.exit(main(["worker"]))
