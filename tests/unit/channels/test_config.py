from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from channels.base import ProviderConfig
from channels.config import ChannelConfig, ChannelsConfigError, load_channels, masked, parse_channels
from channels.email_smtp import SmtpOptions
from channels.registry import known_types

REPO = Path(__file__).resolve().parents[3]

EXAMPLE = """\
channels:
  inbox:
    window_seconds: 1
    limit_per_window: 50000
    providers:
      - name: mariadb
        type: inbox
  email:
    window_seconds: 60
    limit_per_window: 6000
    providers:
      - name: smtp-primary
        type: smtp
        weight: 70
        limit_per_window: 4000
        options: {host: 127.0.0.1, port: 2525, security: none, username: reach,
                  password: "${REACH_SMTP_PASSWORD}", from_addr: "Reach <noreply@example.com>",
                  unsubscribe_url: "https://example.com/u/{message_id}"}
      - name: smtp-backup
        type: smtp
        weight: 30
        options: {host: "${BACKUP_HOST:-backup.example.com}", from_addr: noreply@example.com}
"""
ENV = {"REACH_SMTP_PASSWORD": "hunter2"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "channels.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ChannelsConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ChannelsConfigError) as caught:
        load_channels(path, env or {})
    assert str(path) in str(caught.value)
    return caught.value


def one_channel(provider: str = "", channel: str = "", extra_provider: str = "") -> str:
    """A one-channel file; ``channel``/``provider`` lines are added to the email channel / its provider."""
    return (
        "channels:\n  email:\n    window_seconds: 60\n"
        + "".join(f"    {line}\n" for line in channel.splitlines())
        + "    providers:\n      - name: smtp-primary\n        type: smtp\n"
        + "".join(f"        {line}\n" for line in provider.splitlines())
        + extra_provider
    )


# --- the happy path ---------------------------------------------------------------------------


def test_loads_channels_and_providers(tmp_path: Path) -> None:
    config = load_channels(write(tmp_path, EXAMPLE), ENV)

    assert list(config.channels) == ["inbox", "email"]
    inbox = config.channels["inbox"]
    assert inbox == ChannelConfig("inbox", 1.0, 50000, (ProviderConfig("mariadb", "inbox"),), 60_000)
    email = config.channels["email"]
    assert (email.window_seconds, email.limit_per_window) == (60.0, 6000)
    primary, backup = email.providers
    assert (primary.name, primary.type, primary.weight, primary.limit_per_window) == (
        "smtp-primary", "smtp", 70, 4000,
    )  # fmt: skip
    assert primary.options["password"] == "hunter2"
    assert primary.options["port"] == 2525
    assert (backup.weight, backup.limit_per_window) == (30, None)


def test_content_limit_defaults_to_the_strictest_provider_type(tmp_path: Path) -> None:
    sms = (
        "channels:\n  sms:\n    window_seconds: 1\n    providers:\n"
        "      - name: twilio\n        type: twilio_sms\n"
        "        options: {account_sid: A, auth_token: t, from_number: '+1'}\n"
        "      - {name: hook, type: webhook, options: {base_url: 'http://127.0.0.1:9', secret: s}}\n"
    )
    assert load_channels(write(tmp_path, sms), {}).channels["sms"].max_content_bytes == 2048
    email = load_channels(write(tmp_path, one_channel()), {}).channels["email"]
    assert email.max_content_bytes == 5 * 1024 * 1024


def test_content_limit_can_be_set_per_channel(tmp_path: Path) -> None:
    config = load_channels(write(tmp_path, one_channel(channel="max_content_bytes: 1000")), {})
    assert config.channels["email"].max_content_bytes == 1000
    assert masked(config)["channels"]["email"]["max_content_bytes"] == 1000


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "true", "big"])
def test_content_limit_must_be_a_positive_integer(tmp_path: Path, value: str) -> None:
    error = load_error(tmp_path, one_channel(channel=f"max_content_bytes: {value}"))
    assert "max_content_bytes must be a positive integer" in str(error)
    assert error.line == 3


def test_defaults_weight_one_and_empty_options(tmp_path: Path) -> None:
    provider = load_channels(write(tmp_path, one_channel()), {}).channels["email"].providers[0]
    assert (provider.weight, provider.limit_per_window, dict(provider.options)) == (1, None, {})


def test_configuration_is_immutable(tmp_path: Path) -> None:
    config = load_channels(write(tmp_path, EXAMPLE), ENV)
    options = config.channels["email"].providers[0].options
    assert isinstance(config.channels, MappingProxyType)
    with pytest.raises(TypeError):
        options["host"] = "elsewhere"  # type: ignore[index]


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, "backup.example.com"), ({"BACKUP_HOST": ""}, "backup.example.com"), ({"BACKUP_HOST": "b2"}, "b2")],
)
def test_default_applies_when_variable_is_unset_or_empty(env: dict[str, str], expected: str) -> None:
    config = parse_channels(EXAMPLE, {**ENV, **env})
    assert config.channels["email"].providers[1].options["host"] == expected


def test_variables_come_only_from_the_mapping_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REACH_SMTP_PASSWORD", "from-os-environ")
    with pytest.raises(ChannelsConfigError, match="REACH_SMTP_PASSWORD is not set"):
        parse_channels(EXAMPLE, {})


def test_substitutes_inside_nested_options_and_keeps_other_text() -> None:
    text = one_channel(
        provider='options: {headers: {X-Key: "k-${A}-$${literal}"}, hosts: ["${A}", "b"], port: 25}'
    )
    options = parse_channels(text, {"A": "a"}).channels["email"].providers[0].options
    assert options["headers"]["X-Key"] == "k-a-${literal}"
    assert options["hosts"] == ("a", "b")
    assert options["port"] == 25


# --- each validation error names file, line, channel and provider ------------------------------


def test_missing_variable_names_it_and_the_provider(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE)
    assert "channel 'email', provider 'smtp-primary'" in str(error)
    assert "environment variable REACH_SMTP_PASSWORD is not set" in str(error)
    assert error.line == 16  # the options mapping holding the reference


def test_malformed_variable_reference(tmp_path: Path) -> None:
    error = load_error(tmp_path, one_channel(provider='options: {host: "${HOST"}'))
    assert "malformed variable reference" in error.reason


def test_unknown_provider_type_lists_the_known_ones(tmp_path: Path) -> None:
    error = load_error(tmp_path, one_channel().replace("type: smtp", "type: smtpp"))
    assert "channel 'email', provider 'smtp-primary'" in str(error)
    assert f"unknown provider type 'smtpp'; known types: {', '.join(known_types())}" in str(error)
    assert error.line == 5


@pytest.mark.parametrize("weight", ["0", "-3", "1.5", '"3"', "true"])
def test_weight_must_be_a_positive_integer(tmp_path: Path, weight: str) -> None:
    error = load_error(tmp_path, one_channel(provider=f"weight: {weight}"))
    assert "provider 'smtp-primary'" in str(error)
    assert "weight must be a positive integer" in error.reason


def test_provider_names_must_be_unique_in_a_channel(tmp_path: Path) -> None:
    duplicate = "      - name: smtp-primary\n        type: smtp\n"
    error = load_error(tmp_path, one_channel(extra_provider=duplicate))
    assert "channel 'email', provider 'smtp-primary': duplicate provider name" in str(error)
    assert error.line == 7


def test_channel_names_must_be_unique(tmp_path: Path) -> None:
    text = one_channel() + "  email:\n    window_seconds: 1\n"
    error = load_error(tmp_path, text)
    assert "duplicate key 'email'" in error.reason
    assert error.line == 7


@pytest.mark.parametrize("window", ["0", "-1", '"60"', ".inf", "null"])
def test_window_must_be_a_positive_number(tmp_path: Path, window: str) -> None:
    error = load_error(tmp_path, one_channel().replace("window_seconds: 60", f"window_seconds: {window}"))
    assert "channel 'email': window_seconds must be a number > 0" in str(error)


def test_window_is_required(tmp_path: Path) -> None:
    error = load_error(tmp_path, one_channel().replace("    window_seconds: 60\n", ""))
    assert "window_seconds must be a number > 0, got None" in error.reason


def test_fractional_window_is_allowed() -> None:
    text = one_channel().replace("window_seconds: 60", "window_seconds: 0.5")
    assert parse_channels(text, {}).channels["email"].window_seconds == 0.5


@pytest.mark.parametrize("limit", ["0", "-5", "2.5", '"10"'])
def test_channel_limit_must_be_positive(tmp_path: Path, limit: str) -> None:
    error = load_error(tmp_path, one_channel(channel=f"limit_per_window: {limit}"))
    assert "channel 'email': limit_per_window must be a positive integer" in str(error)


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_provider_limit_must_be_positive(tmp_path: Path, limit: str) -> None:
    error = load_error(tmp_path, one_channel(provider=f"limit_per_window: {limit}"))
    assert "provider 'smtp-primary': limit_per_window must be a positive integer" in str(error)


def test_null_limit_means_unlimited() -> None:
    text = one_channel(channel="limit_per_window: null")
    assert parse_channels(text, {}).channels["email"].limit_per_window is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected a mapping with a 'channels' key"),
        ("- a list\n", "expected a mapping with a 'channels' key"),
        ("channels: {}\n", "'channels' must be a non-empty mapping"),
        ("channels:\n  email:\n    window_seconds: 1\n", "'providers' must be a non-empty list"),
        (
            "channels:\n  email:\n    window_seconds: 1\n    providers: []\n",
            "channel 'email': 'providers' must be a non-empty list",
        ),
        (one_channel(provider="options: [1, 2]"), "provider 'smtp-primary': 'options' must be a mapping"),
        (one_channel(provider="wieght: 3"), "unknown key(s) wieght; expected: limit_per_window, name,"),
        (one_channel(channel="limit: 3"), "channel 'email': unknown key(s) limit"),
        ("chanels: {}\n", "unknown key(s) chanels; expected: channels"),
        (one_channel().replace("name: smtp-primary", "name: ''"), "provider #1: 'name' must be a non-empty"),
        ("channels:\n  email: 3\n", "channel 'email': expected a mapping"),
    ],
)
def test_structural_errors(tmp_path: Path, text: str, reason: str) -> None:
    assert reason in str(load_error(tmp_path, text))


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, "channels:\n  email: [unclosed\n  other: 1\n")
    assert "invalid YAML" in error.reason
    assert error.line is not None and error.line >= 2


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ChannelsConfigError, match="cannot read"):
        load_channels(tmp_path / "missing.yaml", {})


def test_error_is_a_value_error() -> None:
    assert issubclass(ChannelsConfigError, ValueError)


# --- masking ----------------------------------------------------------------------------------


def test_masked_hides_declared_and_conventional_secrets() -> None:
    text = one_channel(
        provider=(
            'options: {host: smtp.example.com, username: reach, password: "${P}", api_key: k1,\n'
            "          auth: {client_secret: s1, token_url: https://t}, refresh_token: t1,\n"
            "          from_addr: noreply@example.com}"
        )
    )
    listing = masked(parse_channels(text, {"P": "hunter2"}))

    options = listing["channels"]["email"]["providers"][0]["options"]
    assert options["password"] == "****"
    assert options["api_key"] == "****"
    assert options["refresh_token"] == "****"
    assert options["auth"] == {"client_secret": "****", "token_url": "****"}
    assert (options["host"], options["username"]) == ("smtp.example.com", "reach")
    dumped = json.dumps(listing)  # plain data, ready to print
    assert "hunter2" not in dumped and "k1" not in dumped and "s1" not in dumped


def test_masked_keeps_the_shape_and_does_not_touch_the_config() -> None:
    config = parse_channels(EXAMPLE, ENV)
    listing = masked(config)
    email = listing["channels"]["email"]
    assert (email["window_seconds"], email["limit_per_window"]) == (60.0, 6000)
    assert [p["name"] for p in email["providers"]] == ["smtp-primary", "smtp-backup"]
    assert email["providers"][0]["weight"] == 70
    assert config.channels["email"].providers[0].options["password"] == "hunter2"


# --- the shipped files ------------------------------------------------------------------------


def test_shipped_default_file_loads_with_an_empty_environment() -> None:
    config = load_channels(REPO / "deploy" / "config" / "channels.yaml", {})
    assert set(config.channels) == {"inbox", "popup", "email"}
    for provider in config.channels["email"].providers:
        options = SmtpOptions.parse(provider.options, provider.name)
        assert (options.host, options.port, options.username) == ("127.0.0.1", 2525, None)


def test_shipped_default_file_takes_relay_settings_from_the_environment() -> None:
    env = {"REACH_SMTP_HOST": "relay.example.com", "REACH_SMTP_SECURITY": "starttls",
           "REACH_SMTP_USERNAME": "reach", "REACH_SMTP_PASSWORD": "pw", "REACH_SMTP_PORT": "587"}  # fmt: skip
    provider = load_channels(REPO / "deploy" / "config" / "channels.yaml", env).channels["email"].providers[0]
    options = SmtpOptions.parse(provider.options, provider.name)
    assert (options.host, options.port, options.security, options.password) == (
        "relay.example.com", 587, "starttls", "pw",
    )  # fmt: skip


def test_shipped_test_file_needs_the_test_server_port() -> None:
    path = REPO / "deploy" / "config" / "channels.test.yaml"
    with pytest.raises(ChannelsConfigError, match="REACH_TEST_SMTP_PORT"):
        load_channels(path, {})
    provider = load_channels(path, {"REACH_TEST_SMTP_PORT": "2526"}).channels["email"].providers[0]
    assert SmtpOptions.parse(provider.options, provider.name).port == 2526


def test_unhashable_key_is_a_yaml_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "channels:\n  ? [a, b]\n  : 1\n")
    assert "unhashable mapping key" in error.reason
    assert error.line == 2
