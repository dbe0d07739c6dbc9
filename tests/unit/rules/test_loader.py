"""Loading rule directories: the rule book, and every problem with file, line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.engine import MAX_PENDING_ALTERNATIVES
from rules.errors import RuleFileError, RuleSetError
from rules.loader import load_rulebook
from tests.unit.rules.conftest import write

NAM_TYPO = "unknown field 'nam' in event facts (did you mean 'name'?) (column 1)"
TEMPLATES = """
templates:
  welcome:
    title: "Welcome"
    text: "Hello"
"""


def problems(directory: Path, known_channels: list[str] | None = None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(RuleSetError) as caught:
        load_rulebook(directory, known_channels)
    return [(Path(e.path).name, e.line, e.reason) for e in caught.value.errors]


def only_problem(directory: Path, known_channels: list[str] | None = None) -> tuple[str, int | None, str]:
    found = problems(directory, known_channels)
    assert len(found) == 1, found
    return found[0]


def test_a_directory_loads_in_file_order(rules_dir: Path) -> None:
    write(rules_dir, "b.yaml", TEMPLATES)
    write(
        rules_dir,
        "a.yml",
        """
        triggers:
          - id: second-in-a
            when: name == "signup"
            template: welcome
            channels: [inbox, email]
        channel_rules:
          - id: inbox-only
            when: priority <= 2
            use: [inbox]
        """,
    )
    write(
        rules_dir,
        "c.yaml",
        """
        # comments are fine
        triggers:
          - id: in-c
            description: documented
            when: name == "login"
            template: welcome
            channels: [email]
            priority: 9
            dedup_key: "login:{user_id}"
        """,
    )
    write(rules_dir, ".#a.yaml", "not: [valid")  # editor lock files are skipped
    write(rules_dir, "notes.txt", "not a rule file")
    book = load_rulebook(rules_dir)
    assert [t.id for t in book.triggers] == ["second-in-a", "in-c"]
    assert book.triggers[0].source == f"{rules_dir / 'a.yml'}:2"
    assert book.triggers[0].priority == 5 and book.triggers[0].dedup_key == "{event_id}"
    assert book.triggers[1].channels == ("email",) and book.triggers[1].priority == 9
    assert [c.use for c in book.channel_rules] == [("inbox",)]
    assert set(book.templates) == {"welcome"}
    assert book.files == tuple(str(rules_dir / n) for n in ("a.yml", "b.yaml", "c.yaml"))
    assert book.summary() == "2 triggers, 1 channel rules, 1 templates"
    with pytest.raises(TypeError):
        book.templates["x"] = book.templates["welcome"]  # type: ignore[index]


def test_the_fingerprint_follows_content(rules_dir: Path) -> None:
    write(rules_dir, "t.yaml", TEMPLATES)
    first = load_rulebook(rules_dir).fingerprint
    assert load_rulebook(rules_dir).fingerprint == first
    write(rules_dir, "t.yaml", TEMPLATES.replace("Hello", "Hi"))
    assert load_rulebook(rules_dir).fingerprint != first


def test_a_single_file_loads_on_its_own(rules_dir: Path) -> None:
    path = write(rules_dir, "t.yaml", TEMPLATES)
    assert set(load_rulebook(path).templates) == {"welcome"}


def test_error_strings_are_path_line_reason() -> None:
    assert str(RuleFileError("rules/x.yaml", 12, "unknown template 'welcom'")) == (
        "rules/x.yaml:12: unknown template 'welcom'"
    )
    assert str(RuleFileError("rules", None, "no rule files")) == "rules: no rule files"


def test_bad_yaml_points_at_the_line(rules_dir: Path) -> None:
    write(rules_dir, "bad.yaml", 'triggers:\n  - id: x\n    when: "unclosed\n    template: t\n')
    name, line, reason = only_problem(rules_dir)
    assert (name, line) == ("bad.yaml", 5)
    assert reason.startswith("YAML syntax error: found unexpected end of stream")


def test_duplicate_yaml_keys_are_refused(rules_dir: Path) -> None:
    write(rules_dir, "dup.yaml", TEMPLATES + "    text: again\n")
    assert only_problem(rules_dir) == ("dup.yaml", 5, "YAML: duplicate key 'text'")


def test_unknown_template_lists_the_known_ones(rules_dir: Path) -> None:
    write(rules_dir, "templates.yaml", TEMPLATES + '  vip-thanks:\n    title: "t"\n    text: "t"\n')
    write(
        rules_dir,
        "x.yaml",
        """
        triggers:
          - id: welcome-signup
            when: name == "signup"
            template: welcom
            channels: [inbox]
        """,
    )
    assert only_problem(rules_dir) == ("x.yaml", 4, "unknown template 'welcom' (known: vip-thanks, welcome)")


def test_duplicate_ids_across_two_files(rules_dir: Path) -> None:
    write(
        rules_dir,
        "a.yaml",
        TEMPLATES + '\ntriggers:\n  - {id: same, when: name == "a", template: welcome, channels: [inbox]}\n',
    )
    write(
        rules_dir,
        "b.yaml",
        """
        channel_rules:
          - id: other
            when: priority > 1
            use: [inbox]
          - id: same
            when: priority > 2
            use: [inbox]
        templates:
          welcome: {title: a, text: b}
        """,
    )
    found = problems(rules_dir)
    assert ("b.yaml", 5, f"duplicate id 'same' (first defined at {rules_dir / 'a.yaml'}:7)") in found
    assert ("b.yaml", 9, f"duplicate id 'welcome' (first defined at {rules_dir / 'a.yaml'}:2)") in found
    assert len(found) == 2


def test_bad_expression_points_at_the_when_line(rules_dir: Path) -> None:
    write(
        rules_dir,
        "x.yaml",
        TEMPLATES
        + """
triggers:
  - id: ok
    when: name == "signup"
    template: welcome
    channels: [inbox]
  - id: typo
    when: nam == "signup"
    template: welcome
    channels: [inbox]
  - id: block
    when: |
      name == "signup"
      and properties.amount >= 1e-05
    template: welcome
    channels: [inbox]
""",
    )
    assert problems(rules_dir) == [
        (
            "x.yaml",
            12,
            "invalid expression in 'when': " + NAM_TYPO,
        ),
        (
            "x.yaml",
            18,
            "invalid expression in 'when': number 1e-05 cannot be used: write it without an exponent "
            "(expression line 2, column 26)",
        ),
    ]


def test_expressions_durable_rules_refuses_are_reported_on_their_line(rules_dir: Path) -> None:
    complex_when = " or ".join(f"(properties.a == {i} and properties.b == {i})" for i in range(16))
    write(
        rules_dir,
        "x.yaml",
        TEMPLATES + f"triggers:\n  - id: complex\n    when: {complex_when}\n"
        "    template: welcome\n    channels: [inbox]\n",
    )
    name, line, reason = only_problem(rules_dir)
    assert (name, line) == ("x.yaml", 7)
    assert "expression too complex for durable-rules" in reason


@pytest.mark.parametrize(
    ("entry", "line", "reason"),
    [
        (
            "{id: Bad_Id, when: 'name == \"a\"', template: welcome, channels: [inbox]}",
            6,
            "'id' 'Bad_Id' must match",
        ),
        (
            "{id: a, when: 5, template: welcome, channels: [inbox]}",
            6,
            "'when' must be a string, got a number",
        ),
        (
            "{id: a, when: 'name == \"a\"', template: welcome, channels: []}",
            6,
            "'channels' must be a non-empty list",
        ),
        (
            "{id: a, when: 'name == \"a\"', template: welcome, channels: inbox}",
            6,
            "'channels' must be a non-empty list",
        ),
        (
            "{id: a, when: 'name == \"a\"', template: welcome, channels: [Inbox]}",
            6,
            "channel name 'Inbox' in 'channels'",
        ),
        ("{id: a, when: 'name == \"a\"', template: welcome, channels: [inbox, inbox]}", 6, "listed twice"),
        (
            "{id: a, when: 'name == \"a\"', template: welcome, channels: [inbox], priority: 10}",
            6,
            "from 0 to 9",
        ),
        (
            "{id: a, when: 'name == \"a\"', template: welcome, channels: [inbox], priority: true}",
            6,
            "from 0 to 9",
        ),
        (
            "{id: a, when: 'name == \"a\"', template: welcome, channels: [inbox], dedup_key: '{x[0]}'}",
            6,
            "invalid 'dedup_key'",
        ),
        (
            "{id: a, when: 'name == \"a\"', template: welcome, channels: [inbox], chanel: x}",
            6,
            "unknown key 'chanel' in trigger (did you mean 'channels'?)",
        ),
        ("{id: a, when: 'name == \"a\"', template: welcome}", 6, "trigger is missing 'channels'"),
        ("{id: a, when: '  ', template: welcome, channels: [inbox]}", 6, "'when' must not be empty"),
        ("just a string", 6, "each entry of 'triggers' must be a mapping, got str"),
    ],
)
def test_trigger_field_problems(rules_dir: Path, entry: str, line: int, reason: str) -> None:
    write(rules_dir, "x.yaml", TEMPLATES + f"triggers:\n  - {entry}\n")
    name, found_line, found_reason = only_problem(rules_dir)
    assert (name, found_line) == ("x.yaml", line)
    assert reason in found_reason


def test_unknown_channels_are_refused_when_the_known_ones_are_given(rules_dir: Path) -> None:
    write(
        rules_dir,
        "x.yaml",
        TEMPLATES
        + """
triggers:
  - {id: a, when: 'name == "a"', template: welcome, channels: [inbox, sms]}
channel_rules:
  - {id: b, when: 'priority > 1', use: [push]}
""",
    )
    assert load_rulebook(rules_dir).triggers[0].channels == ("inbox", "sms")
    assert problems(rules_dir, ["inbox", "email"]) == [
        ("x.yaml", 7, "unknown channel 'sms' (known: email, inbox)"),
        ("x.yaml", 9, "unknown channel 'push' (known: email, inbox)"),
    ]


def test_template_problems(rules_dir: Path) -> None:
    write(
        rules_dir,
        "t.yaml",
        """
        templates:
          ok: {title: a, text: b}
          no-text: {title: a}
          Bad: {title: a, text: b}
          broken:
            title: "fine"
            text: |
              line one
              {{ user_id
          typo: {title: a, text: b, htm: c}
          scalar: "just text"
        """,
    )
    assert problems(rules_dir) == [
        ("t.yaml", 3, "template is missing 'text'"),
        ("t.yaml", 4, "template id 'Bad' must match [a-z0-9][a-z0-9_.-]*"),
        (
            "t.yaml",
            9,
            "template syntax error in 'text': unexpected end of template, expected 'end of print statement'.",
        ),
        ("t.yaml", 10, "unknown key 'htm' in template (did you mean 'html'?)"),
        ("t.yaml", 11, "template 'scalar' must be a mapping with title, text and optional html"),
    ]


def test_file_level_problems(rules_dir: Path) -> None:
    write(rules_dir, "a.yaml", "- just\n- a list\n")
    write(rules_dir, "b.yaml", "trigers: []\n")
    write(rules_dir, "c.yaml", "triggers: {id: x}\ntemplates: [a]\n")
    (rules_dir / "d.yaml").write_bytes(b"templates: {\xff}\n")
    write(rules_dir, "e.yaml", "")  # an empty file is fine
    assert problems(rules_dir) == [
        ("a.yaml", 1, "the top level must be a mapping with triggers, channel_rules, templates"),
        ("b.yaml", 1, "unknown key 'trigers' in top level (did you mean 'triggers'?)"),
        ("c.yaml", 1, "'triggers' must be a list of entries"),
        ("c.yaml", 2, "'templates' must be a mapping of template id to {title, text, html}"),
        ("d.yaml", None, "not UTF-8 text: invalid start byte at byte 12"),
    ]


def test_empty_and_missing_directories_are_refused(rules_dir: Path) -> None:
    assert only_problem(rules_dir) == ("rules", None, "no rule files (*.yaml, *.yml)")
    name, line, reason = only_problem(rules_dir / "missing")
    assert (name, line) == ("missing", None)
    assert reason.startswith("cannot read rule directory")


def test_every_problem_is_reported_not_only_the_first(rules_dir: Path) -> None:
    write(rules_dir, "bad.yaml", "triggers: [\n")
    write(
        rules_dir,
        "x.yaml",
        """
        triggers:
          - {id: a, when: 'nam == "x"', template: nope, channels: [inbox], priority: 12}
          - {id: b, when: 'name == "x"', template: nope, channels: [inbox]}
        """,
    )
    with pytest.raises(RuleSetError) as caught:
        load_rulebook(rules_dir)
    # YAML; a's expression, priority and template (reported although a is invalid); b's template
    assert len(caught.value.errors) == 5
    assert str(caught.value).splitlines()[0] == "5 problems in rules"


def test_too_many_rules_for_one_event_are_refused(rules_dir: Path) -> None:
    entries = "".join(
        f"  - {{id: r{i}, when: 'name == \"signup\"', template: welcome, channels: [inbox]}}\n"
        for i in range(MAX_PENDING_ALTERNATIVES + 1)
    )
    write(rules_dir, "x.yaml", TEMPLATES + "triggers:\n" + entries)
    name, line, reason = only_problem(rules_dir)
    assert (name, line) == ("x.yaml", 6 + MAX_PENDING_ALTERNATIVES)  # the last rule of the group
    assert reason.startswith(f"up to {MAX_PENDING_ALTERNATIVES + 1} rule alternatives can match one event")
    assert '61 with name == "signup"' in reason


def test_rules_for_different_events_do_not_add_up(rules_dir: Path) -> None:
    entries = "".join(
        f"  - {{id: r{i}, when: 'name == \"e{i % 3}\" and properties.n != {i}', "
        "template: welcome, channels: [inbox]}\n"
        for i in range(3 * MAX_PENDING_ALTERNATIVES // 2)
    )
    write(rules_dir, "x.yaml", TEMPLATES + "triggers:\n" + entries)
    book = load_rulebook(rules_dir)
    assert len(book.triggers) == 90
