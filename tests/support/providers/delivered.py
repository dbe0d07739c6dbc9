"""What a provider test server delivered, readable from the test thread.

Chat APIs answer their errors with HTTP 200, so ``ProviderServer.accepted``
counts refusals too; a server appends here only what the real provider would
have shown to someone.
"""

from __future__ import annotations

import threading
from typing import Any

from tests.support.waiting import wait_for_count


class DeliveredLog:
    """A thread-safe list of delivered payloads with a waiter."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._lock = threading.Lock()

    def add(self, item: Any) -> int:
        """Append ``item``; returns its 1-based number."""
        with self._lock:
            self._items.append(item)
            return len(self._items)

    def items(self) -> list[Any]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Any]:
        """Block until ``count`` items were delivered; returns them."""
        return wait_for_count(self.items, count, timeout, f"{count} items delivered")
