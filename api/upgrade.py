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
from models.upgrades import UpgradeConfigError, UpgradeTarget, parse_pairs, upgrade_targets
from reach.settings import Settings
from rules.versions import version_key

__all__ = ["UPGRADE_RESPONSES", "UpgradeConfigError", "UpgradePolicy", "parse_pairs"]

PLATFORM_HEADER = "x-app-platform"
VERSION_HEADER = "x-app-version"

#: the OpenAPI entry of the answer every gated route may give
UPGRADE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "`bad_app_version`: X-App-Version is not a version"},
    426: {"description": "`upgrade_required`: the app is below its platform's minimum version"},
}


@dataclasses.dataclass(frozen=True)
class UpgradePolicy:
    minimums: Mapping[str, UpgradeTarget]

    @classmethod
    def from_settings(cls, settings: Settings) -> UpgradePolicy:
        """Raises :class:`UpgradeConfigError` naming the setting and the bad entry."""
        targets = upgrade_targets(settings.min_app_versions, settings.upgrade_urls)
        return cls({platform: t for platform, t in targets.items() if t.key is not None})

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
        if minimum.key is None or key >= minimum.key:
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
