from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.smtp_server import SmtpTestServer
from tests.support.tls import SelfSignedCert, TlsUnavailableError, self_signed_cert


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """A plain SMTP server without AUTH."""
    with SmtpTestServer() as server:
        yield server


@pytest.fixture
def smtp_auth_server() -> Iterator[SmtpTestServer]:
    """An SMTP server that requires AUTH as reach / s3cret-pw."""
    with SmtpTestServer(auth=("reach", "s3cret-pw")) as server:
        yield server


@pytest.fixture(scope="session")
def tls_cert() -> SelfSignedCert:
    try:
        return self_signed_cert()
    except TlsUnavailableError as exc:
        pytest.skip(str(exc))
