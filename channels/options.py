"""Typed access to a provider's raw ``options``, with errors that name the option.

Values substituted from ``${VARS}`` in the channels file arrive as strings, so
numbers and flags are accepted in their string form too.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, TypeVar

E = TypeVar("E", bound=enum.Enum)


@dataclasses.dataclass(frozen=True, slots=True)
class OptionReader:
    """Reads and validates one provider's options; every error is a ``ValueError``."""

    options: Mapping[str, Any]
    provider: str

    def error(self, key: str, reason: str) -> ValueError:
        return ValueError(f"provider {self.provider!r}: option {key!r} {reason}")

    def reject_unknown(self, allowed: frozenset[str]) -> None:
        unknown = sorted(set(self.options) - allowed)
        if unknown:
            raise self.error(unknown[0], f"is unknown; known options: {', '.join(sorted(allowed))}")

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.options.get(key)
        if value is None or value == "":
            if required:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def required(self, key: str) -> str:
        """A non-empty string option that must be present."""
        value = self.text(key, required=True)
        assert value is not None
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.options.get(key, default)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"must be an integer in {low}..{high}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.options.get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if isinstance(value, bool) or not number > 0:
            raise self.error(key, "must be a number > 0")
        return number

    def flag(self, key: str, default: bool) -> bool:
        value = self.options.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def choice(self, key: str, kind: type[E], default: E) -> E:
        value = self.options.get(key, default)
        try:
            return kind(value)
        except ValueError:
            raise self.error(key, f"must be one of {', '.join(str(m.value) for m in kind)}") from None

    def url(self, key: str, default: str) -> str:
        """An http(s) base URL without a trailing slash."""
        value = self.text(key, default=default) or default
        if not value.startswith(("https://", "http://")):
            raise self.error(key, "must be an http:// or https:// URL")
        return value.rstrip("/")
