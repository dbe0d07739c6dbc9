"""App versions as the rule language compares them: ``version(device.app_version) >= version("1.9.0")``.

Ordering is semantic, not textual: numeric components (``1.10.0 > 1.9.0``),
missing components read as zero (``1.9 == 1.9.0``), a pre-release is below its
release (``2.0.0-rc1 < 2.0.0``), build metadata after ``+`` is ignored, and a
leading ``v`` is allowed. Up to four components (``major.minor.patch.build``).

Pre-release tags order as ``dev`` / ``snapshot`` < ``alpha`` / ``a`` <
``beta`` / ``b`` < ``rc`` / ``pre`` / ``preview``, each optionally numbered
(``rc1``, ``beta.2``). Anything else is not a version: :func:`version_key`
returns None, and a comparison with it is false.

durable-rules compares numbers, so a version is posted as one integer that
orders the same way (:func:`version_key`): 4 digits for each of major, minor
and patch, 3 for the build, then the pre-release rank.
"""

from __future__ import annotations

import re

MAX_COMPONENT = 9999
MAX_BUILD = 999
MAX_PRE_NUMBER = 99
_RELEASE = 999  # above every pre-release rank

_PRE_TAGS = {
    "dev": 1,
    "snapshot": 1,
    "alpha": 2,
    "a": 2,
    "beta": 3,
    "b": 3,
    "rc": 4,
    "pre": 4,
    "preview": 4,
}
_VERSION = re.compile(
    r"[vV]?(?P<numbers>\d{1,6}(?:\.\d{1,6}){0,3})"
    r"(?:[-.]?(?P<tag>[A-Za-z]+)[.-]?(?P<pre>\d{1,3})?)?"
    r"(?:\+[0-9A-Za-z.-]*)?"
)
MAX_LENGTH = 64


def version_key(text: object) -> int | None:
    """An integer that orders like the version ``text``, or None when it is not a version."""
    if not isinstance(text, str) or len(text) > MAX_LENGTH:
        return None
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    numbers = [int(part) for part in match["numbers"].split(".")]
    numbers += [0] * (4 - len(numbers))
    major, minor, patch, build = numbers
    if max(major, minor, patch) > MAX_COMPONENT or build > MAX_BUILD:
        return None
    rank = _pre_rank(match["tag"], match["pre"])
    if rank is None:
        return None
    return (((major * 10_000 + minor) * 10_000 + patch) * 1_000 + build) * 1_000 + rank


def _pre_rank(tag: str | None, number: str | None) -> int | None:
    if tag is None:
        return None if number else _RELEASE
    rank = _PRE_TAGS.get(tag.lower())
    if rank is None:
        return None
    n = int(number) if number else 0
    return None if n > MAX_PRE_NUMBER else rank * 100 + n


def looks_like_a_version_field(path: tuple[str, ...]) -> bool:
    """Whether a field's name says it holds a version (``device.app_version``, ``os_version``)."""
    return "version" in path[-1].lower()
