"""The pop-up provider's decisions without a database: options, window, show-once, outcomes."""

from __future__ import annotations

from typing import Any

import pytest

from channels.base import Delivery, OutcomeKind, ProviderConfig, ProviderContext, Rendered
from channels.config import load_channels
from channels.popup import (
    DAY,
    MAX_TITLE_CHARS,
    PopupError,
    PopupOptions,
    PopupProvider,
    display_window,
    popup_item,
)
from models.popups import PopupItem
from reach.settings import REPO_ROOT
from tests.unit.channels.factories import reach_message

T0 = 1_700_000_000_000  # created_ts
HOUR = 3_600_000


def popup(properties: dict[str, Any] | None = None, **overrides: Any) -> Delivery:
    fields: dict[str, Any] = {"channel": "popup", "provider": "mariadb", "created_ts": T0, "contact": {}}
    fields.update(overrides)
    message = reach_message(variables={"properties": properties or {}}, **fields)
    return Delivery(message, Rendered(title="Your cart misses you", text="2 items are waiting."))


def test_options_default_to_a_week_capped_at_ninety_days_shown_once() -> None:
    assert PopupOptions.parse({}) == PopupOptions(7 * DAY, 90 * DAY, True)
    parsed = PopupOptions.parse({"display_seconds": "3600", "show_once": "false"})
    assert (parsed.display_seconds, parsed.show_once) == (3600, False)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"display_seconds": 0}, "'display_seconds'"),
        ({"display_seconds": 100 * DAY}, "'display_seconds'"),  # over max_display_seconds
        ({"show_once": "yes"}, "'show_once'"),
        ({"ttl": 5}, "'ttl'"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PopupOptions.parse(options, "popup-main")


def test_the_shipped_channels_file_configures_the_defaults() -> None:
    shipped = load_channels(REPO_ROOT / "deploy" / "config" / "channels.yaml", {}).channels["popup"]
    [config] = shipped.providers
    assert config.type == "popup"
    assert PopupOptions.parse(config.options, config.name) == PopupOptions()


async def test_setup_refuses_to_run_without_the_mysql_pool() -> None:
    provider = PopupProvider(ProviderConfig(name="p", type="popup"), ProviderContext())
    with pytest.raises(ValueError, match="MySQL pool"):
        await provider.setup()


def test_the_window_starts_when_the_message_is_due_and_lasts_display_seconds() -> None:
    options = PopupOptions(display_seconds=3600)
    assert display_window(T0, {}, options) == (T0, T0 + HOUR)
    deferred = popup_item(popup(not_before=T0 + 5000), options)
    assert isinstance(deferred, PopupItem)
    assert (deferred.show_from, deferred.show_until) == (T0 + 5000, T0 + 5000 + HOUR)


@pytest.mark.parametrize(
    ("properties", "window"),
    [
        ({"popup_until": T0 + 2 * HOUR}, (T0, T0 + 2 * HOUR)),
        ({"popup_from": T0 + HOUR}, (T0 + HOUR, T0 + HOUR + 7 * 24 * HOUR)),
        ({"popup_from": T0 + HOUR, "popup_until": T0 + 3 * HOUR}, (T0 + HOUR, T0 + 3 * HOUR)),
        ({"popup_until": "2023-11-15T01:13:20.000+01:00"}, (T0, T0 + 2 * HOUR)),
        ({"popup_until": "2023-11-15T00:13:20Z"}, (T0, T0 + 2 * HOUR)),
        ({"popup_from": T0 - HOUR}, (T0 - HOUR, T0 - HOUR + 7 * 24 * HOUR)),  # already open
        ({"popup_until": T0 + 365 * 24 * HOUR}, (T0, T0 + 90 * 24 * HOUR)),  # capped
    ],
)
def test_the_event_can_set_either_end(properties: dict[str, Any], window: tuple[int, int]) -> None:
    assert display_window(T0, properties, PopupOptions()) == window


@pytest.mark.parametrize(
    ("properties", "code"),
    [
        ({"popup_until": "tomorrow"}, "bad_popup_property"),
        ({"popup_until": "2023-11-15T10:00:00"}, "bad_popup_property"),  # no offset
        ({"popup_until": 1_700_000_000}, "bad_popup_property"),  # seconds, not ms
        ({"popup_from": True}, "bad_popup_property"),
        ({"popup_until": 1.7e12}, "bad_popup_property"),
        ({"popup_from": T0 + 2 * HOUR, "popup_until": T0 + HOUR}, "bad_popup_window"),
        ({"popup_from": T0 - 2 * HOUR, "popup_until": T0 - HOUR}, "popup_expired"),
        ({"popup_until": T0}, "popup_expired"),
    ],
)
def test_unusable_windows_are_permanent_failures(properties: dict[str, Any], code: str) -> None:
    with pytest.raises(PopupError) as caught:
        display_window(T0, properties, PopupOptions())
    assert caught.value.code == code
    outcome = popup_item(popup(properties), PopupOptions())
    assert not isinstance(outcome, PopupItem)
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, code)


def test_show_once_comes_from_the_option_unless_the_event_says_otherwise() -> None:
    def show_once(properties: dict[str, Any], option: bool) -> bool | str:
        item = popup_item(popup(properties), PopupOptions(show_once=option))
        return item.show_once if isinstance(item, PopupItem) else item.code

    assert show_once({}, True) is True
    assert show_once({}, False) is False
    assert show_once({"popup_show_once": False}, True) is False
    assert show_once({"popup_show_once": True}, False) is True
    assert show_once({"popup_show_once": "no"}, True) == "bad_popup_property"


def test_the_row_carries_the_rendered_content_and_the_rule() -> None:
    item = popup_item(popup(priority=7), PopupOptions())
    assert isinstance(item, PopupItem)
    assert (item.title, item.body, item.priority, item.rule_id, item.created_at) == (
        "Your cart misses you",
        "2 items are waiting.",
        7,
        "welcome",
        T0,
    )
    assert item.shown_at is None and item.dismissed_at is None


def test_content_too_long_for_the_table_is_refused() -> None:
    long = Delivery(popup().message, Rendered(title="x" * (MAX_TITLE_CHARS + 1), text="ok"))
    outcome = popup_item(long, PopupOptions())
    assert not isinstance(outcome, PopupItem) and outcome.code == "content_too_long"


def test_an_upgrade_is_stored_with_its_type_and_details() -> None:
    details = {"platform": "ios", "minimum_version": "1.9.0", "upgrade_url": "https://apps.example/ios"}
    upgrade = Delivery(popup().message, Rendered("Upgrade", "Please", kind="upgrade", details=details))
    item = popup_item(upgrade, PopupOptions())
    assert isinstance(item, PopupItem) and (item.type, item.detail_map) == ("upgrade", details)
    plain = popup_item(popup(), PopupOptions())
    assert isinstance(plain, PopupItem) and (plain.type, plain.details, plain.detail_map) == (
        "message",
        "",
        {},
    )


def test_an_app_at_an_upgrades_minimum_does_not_get_it() -> None:
    from api.schemas import PopupMessage
    from models.popups import upgraded

    def item(platform: str, minimum: str, kind: str = "upgrade") -> PopupItem:
        details = f'{{"platform": "{platform}", "minimum_version": "{minimum}", "upgrade_url": "u"}}'
        return PopupItem(
            "m", "u-1", "r", "t", "T", "B", 5, T0, T0 + HOUR, False, T0, type=kind, details=details
        )

    hidden = upgraded("iOS", "1.9.0")
    assert hidden is not None
    assert hidden(item("ios", "1.9.0")) and hidden(item("", "1.8"))
    assert not hidden(item("ios", "1.10.0"))  # below: shown
    assert not hidden(item("android", "1.0"))  # another platform's: shown
    assert not hidden(item("ios", ""))  # no minimum known: shown
    assert not hidden(item("ios", "1.0", kind="message"))
    assert upgraded(None, "1.9") is None and upgraded("ios", "junk") is None and upgraded("ios", None) is None
    shown = PopupMessage.from_item(item("ios", "2.0"))
    assert shown.type == "upgrade" and shown.upgrade is not None
    assert (shown.upgrade.platform, shown.upgrade.minimum_version, shown.upgrade.upgrade_url) == (
        "ios",
        "2.0",
        "u",
    )
    assert PopupMessage.from_item(item("ios", "2.0", kind="message")).upgrade is None
