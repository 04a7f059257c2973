"""The egress certificate authority: created once per deployment, trusted only inside sandboxes.

The proxy reads the sandbox's HTTPS requests to credential hosts in order to
put secrets into them, so it must present certificates the sandbox trusts. A
private CA does that without touching any trust store outside the sandbox: its
certificate is bind-mounted into the sandbox and named by ``SSL_CERT_FILE`` and
friends (``mount``), and its key never leaves the host.

``ensure_ca`` is what a deployment calls (say on the gateway's data directory)
to get stable paths for ``--ca-cert``/``--ca-key``; a sandbox started without
them makes a throwaway CA of its own, kept in memory only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

CA_CERT_NAME = "egress-ca.pem"
CA_KEY_NAME = "egress-ca-key.pem"
CA_VALIDITY = dt.timedelta(days=3650)


class CAError(Exception):
    """The CA files are unusable; the message names the file, never key material."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A loaded CA: the certificate (public) and its signing key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert_pem: bytes

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        try:
            cert_pem = cert_path.read_bytes()
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot read the CA certificate {cert_path}: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            raise CAError(f"cannot read the CA key {key_path}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CAError(f"the CA key {key_path} is neither an EC nor an RSA key")
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise CAError(f"the CA key {key_path} does not belong to {cert_path}")
        return cls(cert, key, cert_pem)

    @classmethod
    def generate(cls) -> CertificateAuthority:
        """A throwaway CA that exists only in memory (a sandbox started without ``--ca-cert``)."""
        return _generate()


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _new_ca() -> tuple[bytes, bytes]:
    """A fresh CA as ``(cert PEM, key PEM)``, for writing to disk."""
    ca = CertificateAuthority.generate()
    key_pem = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.cert_pem, key_pem


def _generate() -> CertificateAuthority:
    """A fresh self-signed CA, EC P-256, path length 0."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tether"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tether egress CA " + os.urandom(4).hex()),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key, cert.public_bytes(serialization.Encoding.PEM))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically with ``mode`` from the first byte (no window with wider permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise ``ensure_ca`` between processes (two sandboxes starting at once)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_ca(directory: Path | str) -> tuple[Path, Path]:
    """``(cert_path, key_path)`` of the CA in ``directory``, generating it on first use.

    The directory is created ``0700`` and the key written ``0600``; an existing
    key with wider permissions is narrowed. A half-written pair (one file
    without the other, from a crash) is replaced, since nothing can have trusted
    a certificate whose key was never stored, or used a key without its certificate.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    with _locked(directory):
        if cert_path.exists() and key_path.exists():
            if key_path.stat().st_mode & 0o077:
                key_path.chmod(0o600)
            CertificateAuthority.load(cert_path, key_path)
            return cert_path, key_path
        cert_pem, key_pem = _new_ca()
        _write_new(key_path, key_pem, 0o600)
        _write_new(cert_path, cert_pem, 0o644)
    return cert_path, key_path
