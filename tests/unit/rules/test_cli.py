"""`reach rules validate`: OK lines, every problem as path:line: reason, exit status."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rules.cli import main, validate, validate_like_worker
from rules.loader import RuleLimits
from rules.templating import MAX_RENDERED_CHARS
from tests.unit.rules.conftest import EXAMPLES, write

NAM_TYPO = "unknown field 'nam' in event facts (did you mean 'name'?) (column 1)"


def test_valid_directories_print_ok_and_return_0() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert validate([str(EXAMPLES)], out, err) == 0
    assert out.getvalue() == f"OK {EXAMPLES}: 5 triggers, 2 channel rules, 5 templates\n"
    assert err.getvalue() == ""


def test_every_problem_is_printed_and_the_status_is_1(rules_dir: Path) -> None:
    write(
        rules_dir, "x.yaml", "triggers:\n  - {id: a, when: 'nam == 1', template: nope, channels: [inbox]}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert validate([str(EXAMPLES), str(rules_dir)], out, err) == 1
    assert out.getvalue().startswith(f"OK {EXAMPLES}:")
    path = rules_dir / "x.yaml"
    assert err.getvalue().splitlines() == [
        f"{path}:2: invalid expression in 'when': " + NAM_TYPO,
        f"{path}:2: unknown template 'nope' (known: none)",
    ]


def test_known_channels_are_checked(capsys: object) -> None:
    assert main([str(EXAMPLES), "--channel", "inbox"]) == 1


# --- like the worker: channels file, size limits, templates rendered -------------------

SHIPPED_CHANNELS = EXAMPLES.parents[1] / "deploy" / "config" / "channels.yaml"
INBOX_ONLY = (
    "channels:\n  inbox:\n    window_seconds: 1\n    providers:\n      - {name: mariadb, type: inbox}\n"
)


def run(paths: list[str], channels: Path, limits: RuleLimits | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = validate_like_worker(paths, channels, {}, limits or RuleLimits(), out, err)
    return status, out.getvalue(), err.getvalue()


def test_the_examples_pass_with_the_shipped_channels_file() -> None:
    assert run([str(EXAMPLES)], SHIPPED_CHANNELS) == (
        0,
        f"OK {EXAMPLES}: 5 triggers, 2 channel rules, 5 templates\n",
        "",
    )


def test_channels_missing_from_the_channels_file_fail_as_the_worker_refuses_them(tmp_path: Path) -> None:
    channels = write(tmp_path, "channels.yaml", INBOX_ONLY)
    status, out, err = run([str(EXAMPLES)], channels)
    assert (status, out) == (1, "")
    lines = err.splitlines()
    source = (EXAMPLES / "triggers.yaml").read_text().splitlines()
    first = next(n for n, line in enumerate(source, 1) if "channels: [inbox, email]" in line)
    assert f"{EXAMPLES / 'triggers.yaml'}:{first}: unknown channel 'email' (known: inbox)" in lines
    assert all(": unknown channel '" in line for line in lines)


def test_an_unloadable_channels_file_exits_2(tmp_path: Path) -> None:
    status, out, err = run([str(EXAMPLES)], tmp_path / "nope.yaml")
    assert (status, out) == (2, "")
    assert err.startswith(f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory")


RENDER_FAILS = """
triggers:
  - {id: a, when: 'name == "a"', template: huge, channels: [inbox]}
templates:
  huge:
    title: "{{ properties.missing_field + 1 }}"
    text: "{{ 'x' * 100000000 }}"
  peeking:
    title: "{{ user_id.__class__ }}"
    text: "fine"
  defaults:
    title: "Hi {{ properties.nickname | default('there') }}"
    text: "{{ properties.not_in_the_sample.deeper }}{{ properties.amount * 2 }}"
"""


def test_templates_are_rendered_sandbox_violations_and_huge_output_fail(
    rules_dir: Path, tmp_path: Path
) -> None:
    path = write(rules_dir, "t.yaml", RENDER_FAILS)
    status, out, err = run([str(rules_dir)], write(tmp_path, "channels.yaml", INBOX_ONLY))
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"{path}:4: template 'huge' text: a repetition would be 100000000 characters or items, "
        f"over the limit of {MAX_RENDERED_CHARS}",
        f"{path}:7: template 'peeking' title: access to attribute '__class__' of 'str' object is unsafe",
    ]  # a missing variable (huge's title, defaults) is not an error


def test_an_oversized_file_is_refused_before_parsing(rules_dir: Path) -> None:
    big = write(rules_dir, "big.yaml", "triggers: [\n" + "#" * 5000 + "\n")
    status, _, err = run([str(rules_dir)], SHIPPED_CHANNELS, RuleLimits(4096, 1 << 20))
    assert status == 1
    assert err == f"{big}: file is 5013 bytes, over the limit of 4096 (REACH_RULES_MAX_FILE_BYTES)\n"


def reach_validate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``reach rules validate`` in its own process: the entry point configures logging globally."""
    return subprocess.run(
        [sys.executable, "-m", "reach.cli", "rules", "validate", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reach_rules_validate_takes_the_limits_and_channels_file_from_settings(
    rules_dir: Path, tmp_path: Path
) -> None:
    write(rules_dir, "a.yaml", "# " + "x" * 2000 + "\n")
    inbox_only = str(write(tmp_path, "channels.yaml", INBOX_ONLY))
    refused = reach_validate(str(rules_dir), REACH_RULES_MAX_FILE_BYTES="1024")
    assert refused.returncode == 1
    assert "a.yaml: file is 2003 bytes, over the limit of 1024 (REACH_RULES_MAX_FILE_BYTES)" in refused.stderr

    unknown = reach_validate(str(EXAMPLES), REACH_CHANNELS_FILE=inbox_only)
    assert unknown.returncode == 1 and "unknown channel 'email' (known: inbox)" in unknown.stderr
    chosen = reach_validate(
        str(EXAMPLES), "--channels", str(SHIPPED_CHANNELS), REACH_CHANNELS_FILE=inbox_only
    )
    assert (chosen.returncode, chosen.stdout) == (
        0,
        f"OK {EXAMPLES}: 5 triggers, 2 channel rules, 5 templates\n",
    )


def test_reach_rules_validate_takes_the_delay_limit_from_settings() -> None:
    refused = reach_validate(str(EXAMPLES), "--channels", str(SHIPPED_CHANNELS), REACH_RULES_MAX_DELAY="600")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        f"{EXAMPLES / 'reminders.yaml'}:24: 'delay' 30m is over the limit of 10m (REACH_RULES_MAX_DELAY)\n"
    )
    allowed = reach_validate(str(EXAMPLES), "--channels", str(SHIPPED_CHANNELS), REACH_RULES_MAX_DELAY="1800")
    assert allowed.returncode == 0, allowed.stderr


def test_a_sandbox_violation_behind_a_variable_the_sample_lacks_is_still_found(
    rules_dir: Path, tmp_path: Path
) -> None:
    # The sample event has no 'coupon': the field stops there unless validation fills it in.
    path = write(
        rules_dir,
        "t.yaml",
        """
        templates:
          hidden:
            title: "t"
            text: "{{ properties.coupon }} {{ properties.coupon.code }} {{ user_id.__class__ }}"
        """,
    )
    status, _out, err = run([str(rules_dir)], write(tmp_path, "channels.yaml", INBOX_ONLY))
    assert status == 1
    assert err.splitlines() == [
        f"{path}:2: template 'hidden' text: access to attribute '__class__' of 'str' object is unsafe"
    ]


NOT_GUARANTEED = """
triggers:
  - {id: paid, when: 'name == "paid" and properties.amount > 0', template: receipt, channels: [inbox]}
  - id: paid-checked
    when: 'name == "paid" and has(properties.order_id) and properties.amount > 0'
    template: receipt
    channels: [inbox]
templates:
  receipt:
    title: "Order {{ properties.order_id }}"
    text: "{{ properties.amount }}{% if properties.currency %} {{ properties.currency }}{% endif %}"
"""


def test_variables_a_trigger_does_not_guarantee_are_warned_about_without_failing(
    rules_dir: Path, tmp_path: Path
) -> None:
    path = write(rules_dir, "t.yaml", NOT_GUARANTEED)
    status, out, err = run([str(rules_dir)], write(tmp_path, "channels.yaml", INBOX_ONLY))
    assert (status, out) == (0, f"OK {rules_dir}: 2 triggers, 0 channel rules, 1 templates\n")
    assert err.splitlines() == [
        f"{path}:2: warning: trigger 'paid' sends template 'receipt', which uses properties.order_id"
        " without a default or a test; its 'when' does not guarantee it: an event without it fails"
        " as template_variable_missing (add has(properties.order_id) to 'when', or a default)"
    ]
