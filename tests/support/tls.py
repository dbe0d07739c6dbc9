"""A throwaway self-signed certificate for TLS test servers.

Made with the ``openssl`` command line tool (the ``cryptography`` package is not
a dependency), once per test process, valid for ``localhost`` and ``127.0.0.1``.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path


class TlsUnavailableError(RuntimeError):
    """No way to make a certificate here; TLS tests should be skipped with this reason."""


@dataclasses.dataclass(frozen=True, slots=True)
class SelfSignedCert:
    cert_file: Path  # PEM certificate; also the CA file a client must trust
    key_file: Path  # PEM private key, unencrypted

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this certificate."""
        return ssl.create_default_context(cafile=str(self.cert_file))


@functools.cache
def self_signed_cert() -> SelfSignedCert:
    """The process-wide test certificate; raises :class:`TlsUnavailableError` without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsUnavailableError("the openssl command is not installed, so no test certificate")
    directory = Path(tempfile.mkdtemp(prefix="reach-test-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    cert = SelfSignedCert(directory / "cert.pem", directory / "key.pem")
    _run_openssl(openssl, cert)
    return cert


def _run_openssl(openssl: str, cert: SelfSignedCert) -> None:
    command = [
        openssl, "req", "-x509", "-nodes", "-days", "2",
        # An EC key is generated in milliseconds, unlike RSA.
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(cert.key_file), "-out", str(cert.cert_file),
        "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise TlsUnavailableError(f"openssl could not make a test certificate: {result.stderr.strip()}")
