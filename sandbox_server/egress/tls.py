"""TLS for the proxy: certificates minted for intercepted hosts, and verified upstream connections.

Interception happens only for hosts where some credential may be substituted
(``credentials.Vault.applies_to``); every other ``CONNECT`` is a byte tunnel the
proxy cannot read. For an intercepted host the proxy terminates the sandbox's
TLS with a leaf certificate for exactly that host, signed by the egress CA, and
opens its own TLS connection upstream, verified against the system CAs (plus
``--upstream-ca``), so a secret only ever leaves towards a server that proved
it is the allowed host.

Both sides offer only ``http/1.1`` in ALPN: the proxy reads and rewrites HTTP/1.1.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox_server.egress.ca import CertificateAuthority
from sandbox_server.egress.policy import Host

LEAF_VALIDITY = dt.timedelta(days=30)
RENEW_BEFORE = dt.timedelta(days=1)
CACHE_SIZE = 512
ALPN = ["http/1.1"]


def upstream_context(extra_ca: Path | None = None) -> ssl.SSLContext:
    """Client context for upstream servers: system CAs, hostname checks, and ``extra_ca`` if given."""
    context = ssl.create_default_context()
    if extra_ca is not None:
        context.load_verify_locations(cafile=str(extra_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    return context


class LeafCertificates:
    """Server-side TLS contexts for intercepted hosts, minted on demand and cached.

    One leaf key, kept in memory, serves every host; each host gets its own
    short-lived certificate with the host as its only subject alternative name.
    ``ssl`` only loads certificates from files, so each one passes through a
    ``0600`` file in the private ``scratch_dir`` that is removed at once: no key
    stays on disk, even if the process is killed.
    """

    def __init__(self, ca: CertificateAuthority, scratch_dir: Path) -> None:
        self._ca = ca
        self._dir = scratch_dir
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._cache: OrderedDict[str, tuple[ssl.SSLContext, dt.datetime]] = OrderedDict()

    def context_for(self, host: Host) -> ssl.SSLContext:
        """The server context presenting a certificate for ``host`` (from the cache while it is fresh)."""
        now = dt.datetime.now(dt.UTC)
        cached = self._cache.get(host.name)
        if cached is not None and cached[1] - now > RENEW_BEFORE:
            self._cache.move_to_end(host.name)
            return cached[0]
        cert = self._mint(host, now)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(ALPN)
        fd, path = tempfile.mkstemp(dir=self._dir, suffix=".pem")  # created 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(cert.public_bytes(serialization.Encoding.PEM) + self._key_pem)
            context.load_cert_chain(path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._cache[host.name] = (context, cert.not_valid_after_utc)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return context

    def _mint(self, host: Host, now: dt.datetime) -> x509.Certificate:
        ca = self._ca.cert
        expires = min(now + LEAF_VALIDITY, ca.not_valid_after_utc)
        san: x509.GeneralName = x509.IPAddress(host.ip) if host.ip is not None else x509.DNSName(host.name)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, host.name)] if len(host.name) <= 64 else []
        )
        try:
            ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca.key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(expires)
            .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .add_extension(aki, critical=False)
            .sign(self._ca.key, hashes.SHA256())
        )
