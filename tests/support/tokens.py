"""Signing keys and JWTs for tests: an HS256 secret and RS256 / ES256 key pairs whose
public halves are written as a JWKS file, the way an identity provider publishes them."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

HS256_SECRET = "test-hs256-secret-of-at-least-32-bytes!"


@dataclasses.dataclass(frozen=True)
class SigningKeys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    jwks_file: Path


def signing_keys(directory: Path) -> SigningKeys:
    """New RS256 (kid ``rsa-1``) and ES256 (kid ``ec-1``) keys, their JWKS in ``directory``."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = [
        {
            **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())),
            "kid": "rsa-1",
            "alg": "RS256",
        },
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec-1", "alg": "ES256"},
    ]
    path = directory / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return SigningKeys(rsa_key, ec_key, path)


def token(
    sub: str, key: Any = HS256_SECRET, alg: str = "HS256", kid: str | None = None, **claims: Any
) -> str:
    """A JWT for ``sub`` expiring in an hour unless ``claims`` says otherwise."""
    body = {"sub": sub, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def unsigned(sub: str) -> str:
    """An ``alg: none`` token (PyJWT will not make one)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': sub, 'exp': int(time.time()) + 3600})}."
