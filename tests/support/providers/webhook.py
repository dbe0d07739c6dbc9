"""A receiver of reach's signed webhook, written the way an outside receiver would write it.

The signature is checked here with its own few lines of ``hmac`` (not with
``channels.webhook``), over the raw body: ``X-Reach-Signature: v1=<hex
HMAC-SHA256(secret, f"{X-Reach-Timestamp}.{body}")>``, timestamp within
``tolerance`` seconds. A bad or missing signature answers 401, a stale
timestamp 401 too. A valid request is recorded with its ``Idempotency-Key``
and answered ``{"id": "rcv-<n>"}``; a repeated key is answered with the same id
and not delivered twice, as a deduplicating receiver does. Scripted replies
(:meth:`WebhookServer.answer_next`) are given after the signature check.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.support.http_provider import ProviderServer, Recorded, Reply
from tests.support.providers.delivered import DeliveredLog


class WebhookServer(ProviderServer):
    """See the module docstring."""

    def __init__(
        self,
        *,
        secret: str = "webhook-signing-secret",
        path: str = "/hooks/reach",
        tolerance: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.secret = secret
        self.path = path
        self.tolerance = tolerance
        self.clock = clock
        self.delivered = DeliveredLog()  # parsed bodies, once per Idempotency-Key
        self.idempotency_keys: list[str] = []  # every verified request's key, repeats included
        self._state = threading.Lock()
        self._receipts: dict[str, str] = {}
        self._scripted: list[Reply] = []

    def answer_next(self, *replies: Reply) -> None:
        """Answer the next correctly signed requests with these replies, one each."""
        with self._state:
            self._scripted.extend(replies)

    def provider_options(self) -> dict[str, Any]:
        """Options of a ``webhook`` provider entry that posts here."""
        return {"base_url": self.base_url, "path": self.path, "secret": self.secret, "timeout": 2}

    async def handle(self, request: Recorded) -> Reply:
        if request.method != "POST" or request.path != self.path:
            return Reply(404, json={"error": "not found"})
        if not self._verified(request):
            return Reply(401, json={"error": "bad signature"})
        key = request.headers.get("idempotency-key", "")
        with self._state:
            self.idempotency_keys.append(key)
            scripted = self._scripted.pop(0) if self._scripted else None
        if scripted is not None:
            return scripted
        return Reply(200, json={"id": self._receipt(key, request)})

    def _receipt(self, key: str, request: Recorded) -> str:
        with self._state:
            known = self._receipts.get(key)
        if known is not None:
            return known
        receipt = f"rcv-{self.delivered.add(request.json())}"
        with self._state:
            self._receipts[key] = receipt
        return receipt

    def _verified(self, request: Recorded) -> bool:
        timestamp = request.headers.get("x-reach-timestamp", "")
        header = request.headers.get("x-reach-signature", "")
        if not timestamp.isdigit() or abs(self.clock() - int(timestamp)) > self.tolerance:
            return False
        signed = timestamp.encode() + b"." + request.body
        expected = "v1=" + hmac.new(self.secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, header)
