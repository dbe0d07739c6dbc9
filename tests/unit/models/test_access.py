"""API keys: token shape, secret checks with the rotation grace period, scopes."""

from __future__ import annotations

import pytest

from models.access import (
    ApiKey,
    KeyOperationError,
    Scope,
    format_token,
    hash_secret,
    parse_scopes,
    parse_token,
)

KEY_ID = "0123456789abcdef"


def key(scopes: set[Scope], previous: str | None = None, until: int | None = None) -> ApiKey:
    return ApiKey(KEY_ID, "k", hash_secret("new"), previous and hash_secret(previous), until,
                  frozenset(scopes), None, None, 0, None, None)  # fmt: skip


def test_a_token_round_trips_and_other_shapes_are_not_keys() -> None:
    assert parse_token(format_token(KEY_ID, "s_e-cret")) == (KEY_ID, "s_e-cret")
    for other in ("rk_short_x", f"rk_{KEY_ID}", f"rk_{KEY_ID}_", f"xx_{KEY_ID}_s", "eyJhbGciOi.x.y", ""):
        assert parse_token(other) is None, other


def test_the_secret_and_within_the_grace_period_the_previous_one_match() -> None:
    rotated = key({Scope.STATS_READ}, previous="old", until=1000)
    assert rotated.matches("new", 5000)
    assert rotated.matches("old", 999) and not rotated.matches("old", 1000)
    assert not rotated.matches("guess", 0) and not key({Scope.STATS_READ}).matches("old", 0)


def test_admin_holds_every_scope_and_others_only_their_own() -> None:
    assert all(key({Scope.ADMIN}).allows(scope) for scope in Scope)
    reader = key({Scope.INBOX_READ})
    assert reader.allows(Scope.INBOX_READ) and not reader.allows(Scope.EVENTS_WRITE)


def test_scopes_are_checked_by_name() -> None:
    assert parse_scopes(["events:write", "admin"]) == {Scope.EVENTS_WRITE, Scope.ADMIN}
    with pytest.raises(KeyOperationError, match="known: events:write"):
        parse_scopes(["events:read"])
    with pytest.raises(KeyOperationError, match="at least one"):
        parse_scopes([])


def test_a_listing_never_shows_the_hashes() -> None:
    shown = key({Scope.ADMIN}, previous="old", until=1).public()
    assert hash_secret("new") not in str(shown) and hash_secret("old") not in str(shown)
