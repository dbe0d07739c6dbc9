"""End-user tokens: JWTs an app presents for its own user's inbox and pop-ups.

Verified with PyJWT (a maintained library: signature schemes, ``exp``/``nbf``/``iat``/``aud``/
``iss`` checks and key parsing are where home-made JWT code goes wrong). The keys are
configured, never taken from the token: ``REACH_JWT_HS256_SECRET`` (HS256, no ``kid``
needed) and/or ``REACH_JWT_JWKS_FILE`` (RS256, ES256 or HS256 keys, each with a ``kid``).
The algorithm is the key's own, so a token cannot choose one (``alg: none``, or an RSA
public key used as an HMAC secret, are refused); ``exp`` and ``sub`` are required, and
``sub`` is the user id.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jwt

from models.events import EventError, check_id
from reach.settings import Settings

ALGORITHMS = frozenset({"HS256", "RS256", "ES256"})
MIN_HS256_SECRET_BYTES = 32  # RFC 7518 3.2: a key at least as long as the hash output


class TokenError(Exception):
    """A user token that is refused; ``reason`` is a short code (no token content in it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class TokenConfigError(ValueError):
    """The configured keys cannot be used (bad JWKS file, short secret)."""


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyingKey:
    algorithm: str
    key: Any  # what PyJWT verifies with: bytes for HS256, a public key object otherwise


@dataclasses.dataclass(frozen=True, slots=True)
class UserTokens:
    by_kid: dict[str, VerifyingKey]
    without_kid: VerifyingKey | None  # the HS256 secret, for tokens that name no key
    issuer: str | None = None
    audience: str | None = None
    leeway_s: int = 30

    @property
    def configured(self) -> bool:
        return bool(self.by_kid) or self.without_kid is not None

    def verify(self, token: str) -> str:
        """The user id (``sub``) of a valid token; raises :class:`TokenError` otherwise."""
        key = self._key_for(_header(token))
        claims = self._decode(token, key)
        sub = claims.get("sub")
        try:
            return check_id("sub", sub)
        except EventError as exc:
            raise TokenError("bad_token", f"the token's sub is not a user id: {exc.detail}") from None

    def _key_for(self, header: dict[str, Any]) -> VerifyingKey:
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise TokenError("alg_not_allowed", f"token algorithm {alg!r} is not one of {sorted(ALGORITHMS)}")
        key = self.without_kid if kid is None else self.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("unknown_key", "the token names no configured key (kid)")
        if key.algorithm != alg:
            raise TokenError("alg_not_allowed", f"the token's key is {key.algorithm}, the token says {alg}")
        return key

    def _decode(self, token: str, key: VerifyingKey) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                options={"require": ["exp", "sub"]},
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("expired", "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError("bad_token", f"the token is not valid: {type(exc).__name__}") from None
        return claims


def _header(token: str) -> dict[str, Any]:
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenError("bad_token", "the credential is neither an API key nor a JWT") from None
    return header


def user_tokens(settings: Settings) -> UserTokens:
    """The verifier of ``settings``' keys; raises :class:`TokenConfigError` for unusable ones."""
    without_kid = None
    if settings.jwt_hs256_secret is not None:
        secret = settings.jwt_hs256_secret.get_secret_value().encode()
        if len(secret) < MIN_HS256_SECRET_BYTES:
            raise TokenConfigError(f"REACH_JWT_HS256_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes")
        without_kid = VerifyingKey("HS256", secret)
    by_kid = load_jwks(settings.jwt_jwks_file) if settings.jwt_jwks_file else {}
    return UserTokens(
        by_kid, without_kid, settings.jwt_issuer, settings.jwt_audience, settings.jwt_leeway_seconds
    )


def load_jwks(path: Path) -> dict[str, VerifyingKey]:
    """The keys of a JWKS file by ``kid``; every key needs a kid and an allowed algorithm."""
    try:
        keys = jwt.PyJWKSet.from_json(path.read_text()).keys
    except (OSError, jwt.PyJWKError, jwt.PyJWKSetError, ValueError) as exc:
        raise TokenConfigError(f"{path}: not a usable JWKS: {exc}") from None
    found = {}
    for key in keys:
        if not key.key_id or key.algorithm_name not in ALGORITHMS:
            raise TokenConfigError(f"{path}: every key needs a kid and one of {sorted(ALGORITHMS)}")
        found[key.key_id] = VerifyingKey(key.algorithm_name, key.key)
    return found
