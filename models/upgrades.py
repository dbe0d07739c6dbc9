"""Where each platform's app must be to stay supported, and where it upgrades.

Configured by ``REACH_MIN_APP_VERSIONS`` (``ios=1.9.0,android=1.9.0``) and
``REACH_UPGRADE_URLS`` (``ios=https://apps.apple.com/...``). The API answers ``426`` to
apps below their platform's minimum (:mod:`api.upgrade`); an upgrade pop-up
(``kind: upgrade`` templates) names them when its template does not
(:func:`upgrade_details`). Versions compare as in rules (:mod:`rules.versions`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from rules.versions import version_key


class UpgradeConfigError(ValueError):
    """A minimum version or upgrade URL setting that cannot be used."""


@dataclasses.dataclass(frozen=True)
class UpgradeTarget:
    """A platform's minimum supported version (``key`` its order, None when only a URL
    is configured) and its upgrade URL."""

    text: str
    key: int | None
    upgrade_url: str


def upgrade_targets(min_versions: str, upgrade_urls: str) -> dict[str, UpgradeTarget]:
    """Per platform, from the two settings' texts; raises :class:`UpgradeConfigError`
    naming the setting and the bad entry."""
    versions = parse_pairs(min_versions, "REACH_MIN_APP_VERSIONS")
    urls = parse_pairs(upgrade_urls, "REACH_UPGRADE_URLS")
    targets = {}
    for platform in sorted(set(versions) | set(urls)):
        text = versions.get(platform, "")
        key = version_key(text) if text else None
        if text and key is None:
            raise UpgradeConfigError(f"REACH_MIN_APP_VERSIONS: {platform}={text!r} is not a version")
        targets[platform] = UpgradeTarget(text, key, urls.get(platform, ""))
    return targets


def parse_pairs(text: str, setting: str) -> dict[str, str]:
    """``"ios=1.9.0, android=2.0"`` as ``{"ios": "1.9.0", "android": "2.0"}`` (names lower-cased)."""
    pairs: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UpgradeConfigError(f"{setting}: {entry!r} is not platform=value")
        pairs[name.strip().lower()] = value.strip()
    return pairs


def upgrade_details(
    targets: Mapping[str, UpgradeTarget], platform: str, minimum_version: str = "", upgrade_url: str = ""
) -> dict[str, str]:
    """What an upgrade pop-up says: ``platform``, ``minimum_version`` and ``upgrade_url``,
    each given value kept and the others the platform's configured ones (``""`` when none)."""
    target = targets.get(platform.strip().lower())
    return {
        "platform": platform,
        "minimum_version": minimum_version or (target.text if target else ""),
        "upgrade_url": upgrade_url or (target.upgrade_url if target else ""),
    }
