"""SmtpOptions validation, message building and reply classification: no network."""

from __future__ import annotations

from typing import Any

import pytest

from channels.base import OutcomeKind, ProviderContext
from channels.email_smtp import Security, SmtpOptions, SmtpProvider, build_email, classify_reply
from tests.unit.channels.factories import delivery, smtp_config

BASE = {"host": "smtp.example.com", "from_addr": "Reach <noreply@example.com>"}


def parse(**options: Any) -> SmtpOptions:
    return SmtpOptions.parse({**BASE, **options}, "smtp-primary")


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("security", "port"), [("none", 25), ("starttls", 587), ("tls", 465)])
def test_default_port_follows_security(security: str, port: int) -> None:
    options = parse(security=security)
    assert (options.security, options.port) == (Security(security), port)


def test_defaults() -> None:
    options = parse()
    assert (options.security, options.timeout, options.retry_after_seconds, options.tls_verify) == (
        Security.NONE, 30.0, 60.0, True,
    )  # fmt: skip
    assert (options.sender, options.domain) == ("noreply@example.com", "example.com")


def test_values_substituted_from_the_environment_arrive_as_strings() -> None:
    options = parse(port="2525", tls_verify="false", timeout="2.5")
    assert (options.port, options.tls_verify, options.timeout) == (2525, False, 2.5)


def test_empty_username_and_password_mean_no_auth() -> None:
    options = parse(username="", password="")
    assert (options.username, options.password) == (None, None)


def test_password_never_appears_in_repr() -> None:
    assert "hunter2" not in repr(parse(username="reach", password="hunter2"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"host": None}, "option 'host' is required"),
        ({"from_addr": ""}, "option 'from_addr' is required"),
        ({"from_addr": "Reach"}, "option 'from_addr' must contain an address"),
        ({"port": 0}, "option 'port' must be an integer in 1..65535"),
        ({"port": "smtp"}, "option 'port' must be an integer"),
        ({"security": "ssl"}, "option 'security' must be one of none, starttls, tls"),
        ({"timeout": 0}, "option 'timeout' must be a number > 0"),
        ({"retry_after_seconds": "soon"}, "option 'retry_after_seconds' must be a number > 0"),
        ({"tls_verify": "maybe"}, "option 'tls_verify' must be true or false"),
        ({"password": "x"}, "option 'password' is set but 'username' is not"),
        ({"unsubscribe_url": "http://example.com/u/{message_id}"}, "must be an https:// URL"),
        ({"unsubscribe_url": "https://example.com/u/{email}"}, "may use only {message_id} and {user_id}"),
        ({"hostname": "x"}, "option 'hostname' is unknown; known options:"),
        ({"host": 42}, "option 'host' must be a string"),
    ],
)
def test_bad_options_name_provider_and_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="provider 'smtp-primary'") as caught:
        parse(**options)
    assert message in str(caught.value)


async def test_setup_validates_the_options() -> None:
    provider = SmtpProvider(smtp_config({"host": "h"}), ProviderContext())
    with pytest.raises(ValueError, match="'from_addr' is required"):
        await provider.setup()


async def test_send_batch_before_setup_is_a_programming_error() -> None:
    provider = SmtpProvider(smtp_config(BASE), ProviderContext())
    with pytest.raises(RuntimeError, match="setup"):
        await provider.send_batch([delivery()])


async def test_close_without_a_connection_is_a_no_op() -> None:
    provider = SmtpProvider(smtp_config(BASE), ProviderContext())
    await provider.setup()
    await provider.close()
    await provider.close()


def test_declares_its_secret_options() -> None:
    assert SmtpProvider.type_name == "smtp"
    assert SmtpProvider.secret_options == frozenset({"password"})


# --- the message ------------------------------------------------------------------------------


def test_message_headers() -> None:
    unsubscribe = "https://example.com/u/{message_id}?u={user_id}"
    options = parse(reply_to="help@example.com", unsubscribe_url=unsubscribe)
    item = delivery(3, user_id="user 3/x")
    message = build_email(item, "user3@example.org", options)

    reach_id = item.message.message_id
    assert message["From"] == "Reach <noreply@example.com>"
    assert message["To"] == "user3@example.org"
    assert message["Reply-To"] == "help@example.com"
    assert message["Subject"] == "Welcome #3"
    assert message["Message-ID"] == f"<{reach_id}@example.com>"
    assert message["X-Reach-Message-Id"] == reach_id
    assert message["List-Unsubscribe"] == f"<https://example.com/u/{reach_id}?u=user%203%2Fx>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Date"]


def test_reachs_own_signed_link_wins_over_the_configured_one() -> None:
    link = "https://reach.example/v1/unsubscribe/tok.en"
    options = parse(unsubscribe_url="https://example.com/u/{message_id}")
    message = build_email(delivery(1, variables={"unsubscribe_url": link}), "a@example.org", options)
    assert message["List-Unsubscribe"] == f"<{link}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    bare = build_email(delivery(1, variables={"unsubscribe_url": link}), "a@example.org", parse())
    assert bare["List-Unsubscribe"] == f"<{link}>"


def test_message_id_is_deterministic() -> None:
    options = parse()
    first = build_email(delivery(1), "a@example.org", options)
    again = build_email(delivery(1), "a@example.org", options)
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"] != build_email(delivery(2), "a@example.org", options)["Message-ID"]


def test_no_unsubscribe_headers_without_the_option() -> None:
    message = build_email(delivery(), "a@example.org", parse())
    assert message["List-Unsubscribe"] is None and message["List-Unsubscribe-Post"] is None


def test_text_and_html_make_a_multipart_alternative() -> None:
    message = build_email(delivery(html="<p>Hello</p>"), "a@example.org", parse())
    assert message.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]


def test_text_only_is_a_single_part() -> None:
    message = build_email(delivery(), "a@example.org", parse())
    assert message.get_content_type() == "text/plain"


def test_subject_newlines_cannot_inject_headers() -> None:
    message = build_email(delivery(title="Hi\r\nBcc: victim@example.org"), "a@example.org", parse())
    assert message["Subject"] == "Hi Bcc: victim@example.org"
    assert message["Bcc"] is None


def test_wire_bytes_are_seven_bit_even_for_non_ascii_content() -> None:
    item = delivery(title="Grüße, Ada ✓", text="Schöne Grüße", html="<p>Grüße</p>")
    raw = build_email(item, "a@example.org", parse()).as_bytes()
    assert raw.isascii()


# --- reply classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "code", "text", "kind"),
    [
        ("RCPT", 550, "5.1.1 No such user", OutcomeKind.INVALID_ADDRESS),
        ("RCPT", 550, "Mailbox unavailable", OutcomeKind.INVALID_ADDRESS),
        ("RCPT", 551, "User not local", OutcomeKind.INVALID_ADDRESS),
        ("RCPT", 553, "5.1.3 Bad recipient address syntax", OutcomeKind.INVALID_ADDRESS),
        ("RCPT", 550, "5.2.1 Mailbox disabled", OutcomeKind.INVALID_ADDRESS),
        ("RCPT", 550, "5.7.1 Rejected by policy", OutcomeKind.PERMANENT),
        ("RCPT", 550, "5.2.2 Mailbox full", OutcomeKind.PERMANENT),
        ("RCPT", 554, "Transaction failed", OutcomeKind.PERMANENT),
        ("RCPT", 552, "Storage exceeded", OutcomeKind.PERMANENT),
        ("MAIL", 550, "5.1.1 sender unknown", OutcomeKind.PERMANENT),
        ("DATA", 554, "5.6.0 Content rejected", OutcomeKind.PERMANENT),
        ("RCPT", 450, "4.2.1 Try again later", OutcomeKind.RETRY),
        ("MAIL", 421, "Service not available", OutcomeKind.RETRY),
        ("DATA", 451, "Local error", OutcomeKind.RETRY),
        ("RCPT", -1, "Malformed SMTP response", OutcomeKind.RETRY),
        ("DATA", -1, "Malformed SMTP response", OutcomeKind.UNKNOWN),
    ],
)
def test_classify_reply(stage: str, code: int, text: str, kind: OutcomeKind) -> None:
    outcome = classify_reply(stage, code, text, retry_after=42.0)
    assert outcome.kind is kind
    assert outcome.code == str(code)
    assert outcome.detail == f"{stage} refused: {code} {text}"
    assert outcome.retry_after == (42.0 if kind is OutcomeKind.RETRY else None)


@pytest.mark.parametrize(
    ("text", "code"),
    [("5.7.0 Authentication required", "auth"), ("5.7.0 Must issue a STARTTLS command first", "tls")],
)
def test_530_is_a_configuration_retry(text: str, code: str) -> None:
    outcome = classify_reply("MAIL", 530, text, retry_after=5)
    assert (outcome.kind, outcome.code, outcome.retry_after) == (OutcomeKind.RETRY, code, 5)


def test_detail_never_repeats_an_address_from_the_server() -> None:
    outcome = classify_reply("RCPT", 550, "5.1.1 <bob.smith+x@example.org>: Recipient\n rejected", 60)
    assert outcome.detail == "RCPT refused: 550 5.1.1 <address>: Recipient rejected"
