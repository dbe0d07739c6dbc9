"""The API's error type: every error response is ``{"error", "message", "details"?}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What a 503 tells a client to wait: a broker or database failover takes seconds, and a
# client retrying sooner only adds load to a dependency that is already struggling.
RETRY_AFTER_SECONDS = 5
RETRY_LATER = {"Retry-After": str(RETRY_AFTER_SECONDS)}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = dict(headers or {})


def unavailable(message: str) -> ApiError:
    """``503 unavailable`` with ``Retry-After``: the same request may succeed later."""
    return ApiError(503, "unavailable", message, headers=RETRY_LATER)
