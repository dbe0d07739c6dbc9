"""Durations in rule files: ``30s``, ``30m``, ``2h``, ``1d`` (and sums such as ``1h30m``).

A bare number is refused rather than guessed at: ``delay: 30`` could mean
seconds or minutes, and a reminder sent 29.5 minutes early is a bug nobody
sees in review.
"""

from __future__ import annotations

import re

UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d{1,9})([smhd])")
EXAMPLES = "30s, 30m, 2h, 1d or 1h30m"


class DurationError(ValueError):
    """A refused duration; ``str()`` is the reason, for a rule-file error."""


def parse_duration(text: object) -> int:
    """Milliseconds of a duration such as ``30m``; raises :class:`DurationError`.

    Units run from the largest down, each at most once (``1h30m``, not ``30m1h``),
    so that a typo such as ``1m1m`` is refused rather than summed.
    """
    if not isinstance(text, str):
        raise DurationError(f"must be a duration with a unit ({EXAMPLES}), got {text!r}")
    parts = _parts(text.strip())
    total = sum(int(number) * UNIT_MS[unit] for number, unit in parts)
    if total <= 0:
        raise DurationError(f"must be longer than zero, got {text!r}")
    return total


def _parts(text: str) -> list[tuple[str, str]]:
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise DurationError(f"{text!r} is not a duration ({EXAMPLES})")
    units = [unit for _, unit in parts]
    order = list(UNIT_MS)[::-1]  # d h m s
    if units != sorted(set(units), key=order.index):
        raise DurationError(f"{text!r}: give each unit once, largest first (e.g. 1h30m)")
    return parts


def format_duration(ms: int) -> str:
    """The shortest spelling of ``ms`` in whole units (``1800000`` -> ``30m``), for messages."""
    parts = []
    rest = ms
    for unit in ("d", "h", "m", "s"):
        count, rest = divmod(rest, UNIT_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or f"{ms}ms"
