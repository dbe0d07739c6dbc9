"""Content per app version: min_app_version and fallback on templates (another template,
skip, or another channel), and upgrade templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.plan import Moved, deliveries_for, render
from channels.base import Outcome, Rendered
from models.upgrades import upgrade_targets
from rules.errors import RuleSetError
from rules.loader import load_rulebook
from rules.model import SKIP, ContentChoice, Template, content_for
from tests.unit.agents.delivery.conftest import message

TEMPLATES = {
    "v3": Template("v3", "three", "t", min_app_version="3.0", fallback="v2"),
    "v2": Template("v2", "two", "t", min_app_version="2.0.0", fallback="v1"),
    "v1": Template("v1", "one", "t", min_app_version="1.0", fallback=SKIP),
    "plain": Template("plain", "plain", "t"),
    # a carousel pop-up: older apps get it in the inbox; the rich one falls back to an SMS text
    "carousel": Template("carousel", "carousel", "swipe", min_app_version="2.0", fallback_channel="inbox"),
    "rich": Template("rich", "rich", "r", min_app_version="2.0", fallback="rich-sms", fallback_channel="sms"),
    "rich-sms": Template("rich-sms", "", "rich, as text"),
    "upgrade": Template(
        "upgrade", "Upgrade to {{ upgrade.minimum_version }}", "{{ upgrade.upgrade_url }}", kind="upgrade"
    ),
}


@pytest.mark.parametrize(
    ("version", "chosen"),
    [
        ("3.1", "v3"),
        ("3.0.0", "v3"),
        ("3.0.0-rc1", "v2"),
        ("2.5", "v2"),
        ("1.10", "v1"),
        (None, "v3"),
        ("junk", "v3"),
    ],
)
def test_the_newest_template_the_app_can_show_is_chosen(version: object, chosen: str) -> None:
    choice = content_for(TEMPLATES, "v3", version)
    assert choice.template is not None and (choice.template.id, choice.reason) == (chosen, "")
    assert choice.fallback == ("" if chosen == "v3" else "template")


def test_below_every_minimum_with_skip_nothing_is_shown() -> None:
    assert content_for(TEMPLATES, "v3", "0.9") == ContentChoice(None, "app_version_too_old", "skip")


def test_a_template_without_a_minimum_is_for_every_app() -> None:
    choice = content_for(TEMPLATES, "plain", "0.0.1")
    assert choice.template is not None and choice.template.id == "plain"
    assert content_for(TEMPLATES, "missing", "1.0") == ContentChoice(None, "unknown_template")


def test_an_older_app_gets_the_content_on_the_fallback_channel() -> None:
    carousel, rich_sms = TEMPLATES["carousel"], TEMPLATES["rich-sms"]
    assert content_for(TEMPLATES, "carousel", "2.0", "popup") == ContentChoice(carousel)
    moved = ContentChoice(carousel, "app_version_fallback", "channel", "inbox")
    assert content_for(TEMPLATES, "carousel", "1.4", "popup") == moved
    # on the channel it falls back to, the content is shown as it is
    assert content_for(TEMPLATES, "carousel", "1.4", "inbox") == ContentChoice(carousel)
    # a named template is what the other channel gets
    rich = ContentChoice(rich_sms, "app_version_fallback", "channel", "sms")
    assert content_for(TEMPLATES, "rich", "1.0", "popup") == rich


def test_render_uses_the_events_app_version() -> None:
    old = message(template="v3", variables={"device": {"app_version": "2.1"}})
    rendered = render(old, TEMPLATES)
    assert isinstance(rendered, Rendered) and rendered.title == "two"
    skipped = render(message(template="v3", variables={"device": {"app_version": "0.1"}}), TEMPLATES)
    assert isinstance(skipped, Outcome) and skipped.code == "app_version_too_old"
    no_device = render(message(template="v3", variables={}), TEMPLATES)
    assert isinstance(no_device, Rendered) and no_device.title == "three"


def test_render_prefers_the_app_version_planned_with_the_message() -> None:
    """A task message has no event: its app version is the profile's, planned with it."""
    planned = message(template="v3", app_version="2.1", variables={"device": {"app_version": "3.5"}})
    rendered = render(planned, TEMPLATES)
    assert isinstance(rendered, Rendered) and rendered.title == "two"


def test_a_message_moves_once() -> None:
    old = message(template="carousel", channel="popup", app_version="1.2")
    assert render(old, TEMPLATES) == Moved(old, "inbox", "carousel")
    on_inbox = old.replace(channel="inbox", fallback_from="popup")
    rendered = render(on_inbox, TEMPLATES)
    assert isinstance(rendered, Rendered) and rendered.text == "swipe"
    # a message that moved already does not move again: it is too old there too
    again = old.replace(fallback_from="email")
    outcome = render(again, TEMPLATES)
    assert isinstance(outcome, Outcome) and outcome.code == "app_version_too_old"


def test_deliveries_count_each_fallback_taken() -> None:
    messages = [
        message(1, template="v3", app_version="3.0"),
        message(2, template="v3", app_version="2.0"),
        message(3, template="v3", app_version="0.5"),
        message(4, template="carousel", channel="popup", app_version="1.0"),
        message(5, template="plain", app_version="0.5"),
    ]
    prepared = deliveries_for(messages, TEMPLATES, 10_000)
    assert [d.message.message_id for d in prepared.ready] == ["m-1", "m-2", "m-5"]
    assert [m.message_id for m, _ in prepared.failed] == ["m-3"]
    assert [m.message.message_id for m in prepared.moved] == ["m-4"]
    assert prepared.fallbacks == {"template": 1, "skip": 1, "channel": 1}


def test_an_upgrade_template_names_its_platforms_minimum_and_url() -> None:
    targets = upgrade_targets("ios=1.9.0,android=2.0", "ios=https://apps.example/ios")
    ios = render(message(template="upgrade", app_platform="ios"), TEMPLATES, targets)
    assert isinstance(ios, Rendered) and ios.kind == "upgrade"
    assert ios.details == {
        "platform": "ios",
        "minimum_version": "1.9.0",
        "upgrade_url": "https://apps.example/ios",
    }
    assert (ios.title, ios.text) == ("Upgrade to 1.9.0", "https://apps.example/ios")
    # without an app platform: the event's device platform; none configured for it: ""
    android = render(message(template="upgrade", platform="Android"), TEMPLATES, targets)
    assert isinstance(android, Rendered) and android.details["minimum_version"] == "2.0"
    assert android.details["upgrade_url"] == ""
    given = Template(
        "u", "t", "x", kind="upgrade", minimum_version="3.0", upgrade_url="https://x.test", platform="ios"
    )
    fixed = render(message(template="u", app_platform="android"), {"u": given}, targets)
    assert isinstance(fixed, Rendered)
    assert fixed.details == {"platform": "ios", "minimum_version": "3.0", "upgrade_url": "https://x.test"}


def write(directory: Path, templates: str) -> Path:
    (directory / "rules.yaml").write_text("templates:\n" + templates)
    return directory


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('    min_app_version: "two"\n', "rules.yaml:5: 'min_app_version' 'two' is not a version"),
        ("    fallback: other\n", "rules.yaml:5: 'fallback' needs 'min_app_version'"),
        ('    min_app_version: "2.0"\n    fallback: nowhere\n', "rules.yaml:6: unknown template 'nowhere'"),
        ('    min_app_version: "2.0"\n    fallback: "Not An Id"\n', "must be a template id, 'skip' or"),
        ('    min_app_version: "2.0"\n    fallback: {channel: fax}\n', "rules.yaml:6: unknown channel 'fax'"),
        ('    min_app_version: "2.0"\n    fallback: {template: b}\n', "fallback is missing 'channel'"),
        ('    min_app_version: "2.0"\n    fallback: {channel: inbox, template: x}\n', "unknown template 'x'"),
        ("    kind: banner\n", "rules.yaml:5: 'kind' 'banner' must be 'upgrade' or left out"),
        ('    upgrade_url: "https://x.test"\n', "rules.yaml:5: 'upgrade_url' is for 'kind: upgrade'"),
        ('    kind: upgrade\n    minimum_version: "new"\n', "rules.yaml:6: 'minimum_version' 'new' is not"),
        ("    kind: upgrade\n    upgrade_url: ftp://x\n", "'upgrade_url' 'ftp://x' must be an http(s) URL"),
    ],
)
def test_bad_version_fields_are_refused_with_file_and_line(tmp_path: Path, body: str, says: str) -> None:
    write(tmp_path, '  a:\n    title: "A"\n    text: "a"\n' + body)
    with pytest.raises(RuleSetError) as error:
        load_rulebook(tmp_path, known_channels=["inbox", "popup"])
    assert says in str(error.value)


def test_a_fallback_loop_is_refused(tmp_path: Path) -> None:
    loop = (
        '  a:\n    title: "A"\n    text: "a"\n    min_app_version: "2"\n    fallback: b\n'
        '  b:\n    title: "B"\n    text: "b"\n    min_app_version: "1"\n    fallback: a\n'
    )
    with pytest.raises(RuleSetError) as error:
        load_rulebook(write(tmp_path, loop))
    assert "template fallbacks loop: a -> b -> a" in str(error.value)


def test_a_minimum_alone_means_older_apps_get_nothing(tmp_path: Path) -> None:
    book = load_rulebook(write(tmp_path, '  a:\n    title: "A"\n    text: "a"\n    min_app_version: "2"\n'))
    assert (book.templates["a"].min_app_version, book.templates["a"].fallback) == ("2", SKIP)


def test_a_channel_fallback_loads_and_ends_a_fallback_chain(tmp_path: Path) -> None:
    templates = (
        '  a:\n    title: "A"\n    text: "a"\n    min_app_version: "3"\n    fallback: b\n'
        '  b:\n    title: "B"\n    text: "b"\n    min_app_version: "2"\n'
        "    fallback: {channel: inbox, template: a}\n"
        '  up:\n    title: "U"\n    text: "u"\n    kind: upgrade\n    platform: iOS\n'
    )
    book = load_rulebook(write(tmp_path, templates), known_channels=["inbox", "popup"])
    b = book.templates["b"]
    assert (b.fallback, b.fallback_channel) == ("a", "inbox")  # b -> (inbox) a is no loop
    up = book.templates["up"]
    assert (up.kind, up.platform, up.minimum_version) == ("upgrade", "ios", "")


def test_a_channel_fallback_to_a_template_that_moves_again_is_refused(tmp_path: Path) -> None:
    templates = (
        '  a:\n    title: "A"\n    text: "a"\n    min_app_version: "2"\n'
        "    fallback: {channel: inbox, template: b}\n"
        '  b:\n    title: "B"\n    text: "b"\n    min_app_version: "2"\n    fallback: {channel: popup}\n'
    )
    with pytest.raises(RuleSetError) as error:
        load_rulebook(write(tmp_path, templates), known_channels=["inbox", "popup"])
    assert "fallback template 'b' falls back to channel 'popup' itself" in str(error.value)
