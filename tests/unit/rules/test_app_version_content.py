"""Content per app version: min_app_version and fallback on templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.plan import render
from channels.base import Outcome, Rendered
from rules.errors import RuleSetError
from rules.loader import load_rulebook
from rules.model import SKIP, Template, content_for
from tests.unit.agents.delivery.conftest import message

TEMPLATES = {
    "v3": Template("v3", "three", "t", min_app_version="3.0", fallback="v2"),
    "v2": Template("v2", "two", "t", min_app_version="2.0.0", fallback="v1"),
    "v1": Template("v1", "one", "t", min_app_version="1.0", fallback=SKIP),
    "plain": Template("plain", "plain", "t"),
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
    template, reason = content_for(TEMPLATES, "v3", version)
    assert template is not None and (template.id, reason) == (chosen, "")


def test_below_every_minimum_with_skip_nothing_is_shown() -> None:
    assert content_for(TEMPLATES, "v3", "0.9") == (None, "app_version_too_old")


def test_a_template_without_a_minimum_is_for_every_app() -> None:
    template, _ = content_for(TEMPLATES, "plain", "0.0.1")
    assert template is not None and template.id == "plain"
    assert content_for(TEMPLATES, "missing", "1.0") == (None, "unknown_template")


def test_render_uses_the_events_app_version() -> None:
    old = message(template="v3", variables={"device": {"app_version": "2.1"}})
    rendered = render(old, TEMPLATES)
    assert isinstance(rendered, Rendered) and rendered.title == "two"
    skipped = render(message(template="v3", variables={"device": {"app_version": "0.1"}}), TEMPLATES)
    assert isinstance(skipped, Outcome) and skipped.code == "app_version_too_old"
    no_device = render(message(template="v3", variables={}), TEMPLATES)
    assert isinstance(no_device, Rendered) and no_device.title == "three"


def write(directory: Path, templates: str) -> Path:
    (directory / "rules.yaml").write_text("templates:\n" + templates)
    return directory


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('    min_app_version: "two"\n', "rules.yaml:5: 'min_app_version' 'two' is not a version"),
        ("    fallback: other\n", "rules.yaml:5: 'fallback' needs 'min_app_version'"),
        ('    min_app_version: "2.0"\n    fallback: nowhere\n', "rules.yaml:6: unknown template 'nowhere'"),
        ('    min_app_version: "2.0"\n    fallback: "Not An Id"\n', "must be a template id or 'skip'"),
    ],
)
def test_bad_version_fields_are_refused_with_file_and_line(tmp_path: Path, body: str, says: str) -> None:
    write(tmp_path, '  a:\n    title: "A"\n    text: "a"\n' + body)
    with pytest.raises(RuleSetError) as error:
        load_rulebook(tmp_path)
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
