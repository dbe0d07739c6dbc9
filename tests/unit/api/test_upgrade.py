"""Forced upgrade: who gets 426, and the settings it is configured by."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.upgrade import UpgradeConfigError, UpgradePolicy, parse_pairs
from reach.settings import Settings


def policy(
    minimums: str = "ios=1.9.0,android=2.0", urls: str = "ios=https://apps.example/reach"
) -> UpgradePolicy:
    return UpgradePolicy.from_settings(Settings(min_app_versions=minimums, upgrade_urls=urls))


@pytest.mark.parametrize("version", ["1.9.0", "1.9", "1.10.0", "2.0.0-rc1", "v1.9.0"])
def test_at_or_above_the_minimum_is_served(version: str) -> None:
    assert policy().verdict("ios", version) is None


@pytest.mark.parametrize("version", ["1.8.9", "1.9.0-rc1", "0.1"])
def test_below_the_minimum_gets_the_minimum_and_where_to_upgrade(version: str) -> None:
    assert policy().verdict("iOS", version) == {
        "platform": "ios",
        "version": version,
        "minimum_version": "1.9.0",
        "upgrade_url": "https://apps.example/reach",
    }


def test_a_platform_without_a_minimum_or_url_is_handled() -> None:
    assert policy().verdict("web", "0.0.1") is None
    details = policy().verdict("android", "1.99")
    assert details is not None and details["upgrade_url"] == ""


def test_an_unreadable_version_of_a_gated_platform_is_a_bad_request() -> None:
    with pytest.raises(ApiError) as error:
        policy().verdict("ios", "latest")
    assert (error.value.status, error.value.code) == (400, "bad_app_version")


def test_no_configuration_gates_nothing() -> None:
    assert policy("", "").minimums == {}


@pytest.mark.parametrize(
    ("minimums", "says"),
    [
        ("ios=one", "ios='one' is not a version"),
        ("ios", "'ios' is not platform=value"),
        ("=1.0", "is not platform=value"),
    ],
)
def test_bad_settings_are_refused_naming_the_entry(minimums: str, says: str) -> None:
    with pytest.raises(UpgradeConfigError, match="REACH_MIN_APP_VERSIONS") as error:
        policy(minimums)
    assert says in str(error.value)


def test_pairs_are_trimmed_and_platforms_lower_cased() -> None:
    assert parse_pairs(" IOS = 1.9 , android=2 ,", "S") == {"ios": "1.9", "android": "2"}
