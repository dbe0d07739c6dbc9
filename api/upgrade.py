"""Forced upgrade: the app-facing endpoints answer ``426 Upgrade Required`` to apps below
the minimum supported version of their platform.

The apps say what they are in two headers, ``X-App-Platform`` (``ios``, ``android``, ...)
and ``X-App-Version`` (``1.9.0``). A request without them (a backend, the web) is not
gated; a platform without a configured minimum is not gated. Versions compare as the
rule language compares them (:mod:`rules.versions`), so ``1.10.0`` is above ``1.9.0``.

Configured by ``REACH_MIN_APP_VERSIONS`` (``ios=1.9.0,android=1.9.0``) and
``REACH_UPGRADE_URLS`` (``ios=https://apps.apple.com/...,android=https://play.google.com/...``).
The ``426`` body names the minimum and where to upgrade::

    {"error": "upgrade_required", "message": "...",
     "details": {"platform": "ios", "version": "1.8.2", "minimum_version": "1.9.0",
                 "upgrade_url": "https://apps.apple.com/..."}}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from api.errors import ApiError
from reach.settings import Settings
from rules.versions import version_key

PLATFORM_HEADER = "x-app-platform"
VERSION_HEADER = "x-app-version"

#: the OpenAPI entry of the answer every gated route may give
UPGRADE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "`bad_app_version`: X-App-Version is not a version"},
    426: {"description": "`upgrade_required`: the app is below its platform's minimum version"},
}


class UpgradeConfigError(ValueError):
    """A minimum version or upgrade URL setting that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Minimum:
    text: str
    key: int
    upgrade_url: str


@dataclasses.dataclass(frozen=True)
class UpgradePolicy:
    minimums: Mapping[str, Minimum]

    @classmethod
    def from_settings(cls, settings: Settings) -> UpgradePolicy:
        """Raises :class:`UpgradeConfigError` naming the setting and the bad entry."""
        versions = parse_pairs(settings.min_app_versions, "REACH_MIN_APP_VERSIONS")
        urls = parse_pairs(settings.upgrade_urls, "REACH_UPGRADE_URLS")
        minimums = {}
        for platform, text in versions.items():
            key = version_key(text)
            if key is None:
                raise UpgradeConfigError(f"REACH_MIN_APP_VERSIONS: {platform}={text!r} is not a version")
            minimums[platform] = Minimum(text, key, urls.get(platform, ""))
        return cls(minimums)

    def verdict(self, platform: str, version: str) -> dict[str, str] | None:
        """The 426 details when ``version`` is below ``platform``'s minimum, else None.

        Raises ``400 bad_app_version`` for a gated platform whose version cannot be read.
        """
        minimum = self.minimums.get(platform.strip().lower())
        if minimum is None:
            return None
        key = version_key(version)
        if key is None:
            raise ApiError(400, "bad_app_version", f"X-App-Version {version[:64]!r} is not a version")
        if key >= minimum.key:
            return None
        return {
            "platform": platform.strip().lower(),
            "version": version.strip(),
            "minimum_version": minimum.text,
            "upgrade_url": minimum.upgrade_url,
        }

    async def gate(self, request: Request) -> None:
        """The route dependency: raise ``426`` for an app below its minimum."""
        platform = request.headers.get(PLATFORM_HEADER)
        version = request.headers.get(VERSION_HEADER)
        if not self.minimums or platform is None or version is None:
            return
        details = self.verdict(platform, version)
        if details is not None:
            message = (
                f"{details['platform']} app {details['version']} is no longer supported; "
                f"upgrade to {details['minimum_version']} or later"
            )
            raise ApiError(426, "upgrade_required", message, details)


def parse_pairs(text: str, setting: str) -> dict[str, str]:
    """``"ios=1.9.0, android=2.0"`` as ``{"ios": "1.9.0", "android": "2.0"}`` (names lower-cased)."""
    pairs: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UpgradeConfigError(f"{setting}: {entry!r} is not platform=value")
        pairs[name.strip().lower()] = value.strip()
    return pairs
