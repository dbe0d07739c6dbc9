"""App versions in the rule language: semantic ordering, refused text comparisons, matching."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from rules.engine import RuleEngine
from rules.errors import ExpressionError, RuleSetError
from rules.expr import TRIGGER_FACT, compile_expression
from rules.loader import load_rulebook
from rules.versions import looks_like_a_version_field, version_key

ORDERED = [
    "0.9",
    "1.0.0-dev",
    "1.0.0-alpha",
    "1.0.0-alpha.2",
    "1.0.0-alpha.99",
    "1.0.0-beta",
    "1.0.0-beta.99",
    "1.0.0-rc1",
    "1.0.0-rc2",
    "1.0.0-rc99",  # the highest pre-release number
    "1.0.0",
    "1.0.0.1",
    "1.0.0.999",
    "1.0.1-dev",  # a later patch's pre-release is above the earlier patch and its builds
    "1.0.1",
    "1.2",
    "1.9.0",
    "1.9.1",
    "1.10.0",
    "1.99.0",
    "2.0.0-rc1",
    "2.0.0",
    "10.0",
]


@pytest.mark.parametrize(("lower", "higher"), list(itertools.pairwise(ORDERED)))
def test_versions_order_semantically(lower: str, higher: str) -> None:
    low, high = version_key(lower), version_key(higher)
    assert low is not None and high is not None and low < high


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.9", "1.9.0"),
        ("1", "1.0.0.0"),
        ("v2.1", "2.1.0"),
        ("1.2.3+build.7", "1.2.3"),
        ("1.0.0-RC1", "1.0.0-rc.1"),
        ("1.0.0-rc", "1.0.0-rc0"),
        ("1.0.0-snapshot", "1.0.0-dev"),
        ("1.0.0-a1", "1.0.0-alpha.1"),
        ("1.0.0-b2", "1.0.0-beta.2"),
        ("1.0.0-pre3", "1.0.0-rc3"),
        ("1.0.0-preview3", "1.0.0-rc3"),
        (" 1.0 ".ljust(64), "1.0"),  # the longest text read as a version
    ],
)
def test_spellings_of_the_same_version_are_equal(a: str, b: str) -> None:
    assert version_key(a) == version_key(b) is not None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "abc",
        "1..2",
        "1.2.",
        ".1",
        "1.2.3-nightly",
        "1.2.3.4.5",
        "10000.0",
        "1.0.0.1000",
        "-1",
        "1.0-rc100",
        "x" * 65,
        "1.0".ljust(65),
        None,
        19,
        1.9,
    ],
)
def test_what_is_not_a_version_has_no_key(garbage: object) -> None:
    assert version_key(garbage) is None


def test_every_key_fits_durable_rules_64_bit_integers() -> None:
    biggest = version_key("9999.9999.9999.999")
    assert biggest is not None and biggest < 2**63


def test_fields_named_like_versions() -> None:
    assert looks_like_a_version_field(("device", "app_version"))
    assert looks_like_a_version_field(("properties", "osVersion"))
    assert not looks_like_a_version_field(("properties", "amount"))
    assert not looks_like_a_version_field(("properties", "version_info", "name"))  # the field's own name


@pytest.mark.parametrize(
    "source",
    [
        'version(device.app_version) >= version("1.9.0")',
        'version("1.9.0") <= version(device.app_version)',
        'version(device.app_version) >= "1.9.0"',
        'device.app_version >= version("1.9.0")',
    ],
)
def test_the_version_forms_compile_to_the_same_condition(source: str) -> None:
    expected = compile_expression('version(device.app_version) >= version("1.9.0")', TRIGGER_FACT)
    assert compile_expression(source, TRIGGER_FACT).definition_json == expected.definition_json


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ('device.app_version >= "1.9.0"', 'write version(device.app_version) >= version("1.9.0")'),
        ('properties.min_version < "2"', "compares text"),
        ('version(device.app_version) > version("1.x")', "'1.x' is not a version"),
        ('version("1.0") < version("2.0")', "compares a field with a version"),
        ("version(device.app_version) > version(device.os_version)", "compares a field with a version"),
        ('version(device.app_version, "x") > "1"', "a function call is not supported"),
    ],
)
def test_bad_version_comparisons_are_refused_with_the_fix(source: str, says: str) -> None:
    with pytest.raises(ExpressionError) as error:
        compile_expression(source, TRIGGER_FACT)
    assert says in str(error.value)


def test_equality_of_a_version_string_is_still_allowed() -> None:
    compile_expression('device.app_version == "1.9.0"', TRIGGER_FACT)


RULES = """
triggers:
  - id: new-app
    when: name == "opened" and version(device.app_version) >= version("1.9.0")
    template: t
    channels: [inbox]
  - id: old-app
    when: name == "opened" and version(device.app_version) < "1.9"
    template: t
    channels: [inbox]
templates:
  t:
    title: "Hi"
    text: "hi"
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> RuleEngine:
    directory = tmp_path_factory.mktemp("rules")
    (directory / "rules.yaml").write_text(RULES)
    return RuleEngine.build(load_rulebook(directory, known_channels=["inbox"]))


def matches(engine: RuleEngine, app_version: object) -> list[str]:
    fact = {"name": "opened", "device": {"app_version": app_version}, "segments": []}
    return [rule.id for rule in engine.match_triggers(fact)]


@pytest.mark.parametrize(
    ("app_version", "rules"),
    [
        ("1.10.0", ["new-app"]),
        ("1.9", ["new-app"]),
        ("2.0.0-rc1", ["new-app"]),
        ("1.9.0-rc1", ["old-app"]),
        ("1.8.9", ["old-app"]),
    ],
)
def test_the_engine_matches_by_version_order(engine: RuleEngine, app_version: str, rules: list[str]) -> None:
    assert matches(engine, app_version) == rules


def test_an_unparsable_or_missing_version_matches_neither_and_is_counted(engine: RuleEngine) -> None:
    before = engine.unparsable_versions
    assert matches(engine, "latest") == []
    assert matches(engine, 19) == []
    assert engine.unparsable_versions == before + 2
    assert matches(engine, None) == []  # absent: nothing to count
    assert engine.unparsable_versions == before + 2


def test_a_rule_file_comparing_versions_as_text_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        RULES.replace('version(device.app_version) < "1.9"', 'device.app_version < "1.9"')
    )
    with pytest.raises(RuleSetError) as error:
        load_rulebook(tmp_path, known_channels=["inbox"])
    text = str(error.value)
    assert (
        "rules.yaml:8: invalid expression" in text and 'version(device.app_version) < version("1.9")' in text
    )
