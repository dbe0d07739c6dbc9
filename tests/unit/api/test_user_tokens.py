"""User tokens: the configured keys decide, never the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.user_tokens import TokenConfigError, TokenError, UserTokens, user_tokens
from reach.settings import Settings
from tests.support.tokens import HS256_SECRET, SigningKeys, signing_keys, token, unsigned


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    return signing_keys(tmp_path_factory.mktemp("jwks"))


@pytest.fixture(scope="module")
def tokens(keys: SigningKeys) -> UserTokens:
    return user_tokens(Settings(jwt_hs256_secret=HS256_SECRET, jwt_jwks_file=keys.jwks_file))  # type: ignore[arg-type]


def test_each_algorithm_from_its_configured_key_gives_the_sub(tokens: UserTokens, keys: SigningKeys) -> None:
    assert tokens.verify(token("u-1")) == "u-1"
    assert tokens.verify(token("u-2", keys.rsa, "RS256", "rsa-1")) == "u-2"
    assert tokens.verify(token("u-3", keys.ec, "ES256", "ec-1")) == "u-3"


def refused(tokens: UserTokens, credential: str) -> str:
    with pytest.raises(TokenError) as caught:
        tokens.verify(credential)
    return caught.value.reason


def test_expired_and_exp_less_tokens_are_refused(tokens: UserTokens) -> None:
    assert refused(tokens, token("u", exp=int(time.time()) - 120)) == "expired"
    no_exp = jwt.encode({"sub": "u"}, HS256_SECRET, algorithm="HS256")
    assert refused(tokens, no_exp) == "bad_token"


def test_forged_tokens_are_refused(tokens: UserTokens, keys: SigningKeys) -> None:
    assert refused(tokens, token("u", "another-secret-that-is-long-enough-too")) == "bad_token"
    head, _body, signature = token("u-1").split(".")
    other_body = token("admin").split(".")[1]
    assert refused(tokens, f"{head}.{other_body}.{signature}") == "bad_token"
    # An RS256 token signed with a key the JWKS does not hold, under the JWKS's kid.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(tokens, token("u", stranger, "RS256", "rsa-1")) == "bad_token"


def test_alg_none_unknown_kids_and_other_algorithms_are_refused(
    tokens: UserTokens, keys: SigningKeys
) -> None:
    assert refused(tokens, unsigned("u")) == "alg_not_allowed"
    assert refused(tokens, token("u", keys.rsa, "RS256", "rsa-9")) == "unknown_key"
    assert refused(tokens, token("u", HS256_SECRET * 2, "HS512")) == "alg_not_allowed"
    assert refused(tokens, token("u", keys.rsa, "RS256")) == "alg_not_allowed"  # no kid: only HS256
    assert refused(tokens, "not-a-jwt") == "bad_token"


def test_the_rsa_public_key_used_as_an_hmac_secret_is_refused(tokens: UserTokens, keys: SigningKeys) -> None:
    pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head, body, _ = token("u", HS256_SECRET, "HS256", "rsa-1").split(".")
    forged_sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(forged_sig).rstrip(b'=').decode()}"
    assert refused(tokens, forged) == "alg_not_allowed"


def test_a_sub_that_is_not_a_user_id_is_refused(tokens: UserTokens) -> None:
    assert refused(tokens, token("u\u202e1")) == "bad_token"
    assert refused(tokens, token("x" * 129)) == "bad_token"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    settings = Settings(jwt_hs256_secret=HS256_SECRET, jwt_issuer="https://id.example", jwt_audience="reach")  # type: ignore[arg-type]
    tokens = user_tokens(settings)
    assert tokens.verify(token("u", iss="https://id.example", aud="reach")) == "u"
    assert refused(tokens, token("u", iss="https://evil.example", aud="reach")) == "bad_token"
    assert refused(tokens, token("u", iss="https://id.example", aud="other")) == "bad_token"
    assert refused(tokens, token("u")) == "bad_token"


def test_unusable_configuration_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(TokenConfigError, match="at least 32 bytes"):
        user_tokens(Settings(jwt_hs256_secret="short"))  # type: ignore[arg-type]
    (tmp_path / "bad.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    with pytest.raises(TokenConfigError, match="kid"):
        user_tokens(Settings(jwt_jwks_file=tmp_path / "bad.json"))
    (tmp_path / "junk.json").write_text("nope")
    with pytest.raises(TokenConfigError):
        user_tokens(Settings(jwt_jwks_file=tmp_path / "junk.json"))
    assert not user_tokens(Settings()).configured
