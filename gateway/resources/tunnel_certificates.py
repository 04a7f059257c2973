"""Tunnel certificates: the CA certificates a tunnel's TLS last hops are verified against.

A tunnel's non-archived certificates are its trusted set (the SDK: ``archived_at`` is "null
if it is still in the trusted set"). The gateway sends that set with every stream it opens
(``trusted_pems``), and the tunnel agent, which makes the TLS connection to the on-prem
target itself, verifies the server's certificate against it instead of its default roots.
A tunnel that never had certificates keeps the agent's default (system) trust; one whose
certificates are all archived rejects MCP traffic until a new one is added (the SDK's rule for
archiving the last one: ``TrustWithdrawn``).

At most ``MAX_ACTIVE`` certificates are in a tunnel's trusted set, each fingerprint at most
once. Creation is checked after the insert, against the certificates inserted before it, so
two gateways creating at once cannot both pass a check that each made alone; the loser's
document is removed again. Archiving is per record and irreversible; a tunnel's archive
archives its certificates with the same ``archived_at`` (``archive_all``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

import anyio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway import ids
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.resources import common
from gateway.schemas.tunnels import TunnelCertificateCreate, certificate_body
from gateway.store.base import Body, Page, Store
from gateway.tunnels.errors import TrustWithdrawn

log = logging.getLogger("tether.tunnels")

KIND = "tunnel_certificate"
ID_PREFIX = "tcrt"
TUNNEL_KIND = "tunnel"
"""``gateway.resources.tunnels.KIND``; not imported, as that module imports this one."""
MAX_PEM_BYTES = 8 * 1024
MAX_ACTIVE = 2
MAX_SENT = 4
"""Most certificates sent with a stream (the head is at most 64 KiB): more than ``MAX_ACTIVE``
exist only for the moment between a refused insert and its removal."""

_PEM_LABEL = re.compile(r"-----BEGIN ([^-\r\n]{1,64})-----", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedCA:
    pem: str
    """The certificate alone, re-encoded: no text from around it is kept or sent on."""
    fingerprint: str
    expires_at: str | None


def parse_ca(text: str, now: datetime) -> ParsedCA:
    """Exactly one PEM CA certificate, unexpired, with no private key anywhere in ``text``;
    ``InvalidRequest`` naming the first reason it is not (never echoing the text)."""
    if len(text.encode()) > MAX_PEM_BYTES:
        raise _refused(f"is larger than {MAX_PEM_BYTES} bytes")
    labels = [label.upper() for label in _PEM_LABEL.findall(text)]
    if any("PRIVATE KEY" in label for label in labels):
        raise _refused("contains private-key material; send only the CA certificate")
    others = sorted({label for label in labels if label != "CERTIFICATE"})
    if others:
        raise _refused(f"must hold only a CERTIFICATE block, not {', '.join(others)}")
    if not labels:
        raise _refused("is not PEM: no '-----BEGIN CERTIFICATE-----' block")
    if len(labels) > 1:
        raise _refused(f"must contain exactly one certificate, found {len(labels)}")
    try:
        certificate = x509.load_pem_x509_certificate(text.encode())
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise _refused("is not a CA certificate: it has no basicConstraints extension") from None
    except ValueError as exc:
        raise _refused(f"is not a valid X.509 certificate ({exc})") from None
    if not constraints.ca:
        raise _refused("is not a CA certificate: basicConstraints has CA=false")
    if not _may_sign_certificates(certificate):
        raise _refused("is not a CA certificate: its keyUsage lacks keyCertSign")
    expiry = certificate.not_valid_after_utc
    if expiry <= now:
        raise _refused(f"expired at {ids.timestamp(expiry)}")
    return ParsedCA(
        pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
        # 9999-12-31T23:59:59Z is RFC 5280's "no well-defined expiration date".
        expires_at=None if expiry.year == 9999 else ids.timestamp(expiry),
    )


def _may_sign_certificates(certificate: x509.Certificate) -> bool:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _refused(reason: str) -> InvalidRequest:
    return InvalidRequest(f"ca_certificate_pem: {reason}")


async def _tunnel(store: Store, tunnel_id: str) -> Body:
    return await common.fetch(store, TUNNEL_KIND, tunnel_id)


async def create(store: Store, tunnel_id: str, request: TunnelCertificateCreate) -> Body:
    tunnel = await _tunnel(store, tunnel_id)
    if tunnel.get("archived_at"):
        raise InvalidRequest(f"tunnel {tunnel_id} is archived; it accepts no new certificates")
    parsed = parse_ca(request.ca_certificate_pem, ids.now())
    body = certificate_body(
        ids.new_id(ID_PREFIX), tunnel_id, parsed.fingerprint, ids.timestamp(), parsed.expires_at
    )
    await store.insert(KIND, {**body, "_pem": parsed.pem})
    try:
        await _admit(store, body)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await store.delete(KIND, body["id"])
        raise
    log.info("tunnel %s: certificate %s (sha256 %s) added", tunnel_id, body["id"], parsed.fingerprint)
    return body


async def _admit(store: Store, body: Body) -> None:
    """Keep ``body`` only if the certificates inserted before it leave it room; checked after
    the insert (and the tunnel re-read) so concurrent creates and archives cannot slip past."""
    tunnel_id = body["tunnel_id"]
    if (await _tunnel(store, tunnel_id)).get("archived_at"):
        raise InvalidRequest(f"tunnel {tunnel_id} is archived; it accepts no new certificates")
    active = await _active(store, tunnel_id, limit=100)
    earlier = active[: _index(active, body["id"])]
    for item in earlier:
        if item["fingerprint"] == body["fingerprint"]:
            raise Conflict(
                f"tunnel {tunnel_id} already trusts this certificate as {item['id']} "
                f"(sha256 {body['fingerprint']})"
            )
    if len({item["fingerprint"] for item in earlier}) >= MAX_ACTIVE:
        raise Conflict(
            f"tunnel {tunnel_id} already holds {MAX_ACTIVE} non-archived certificates; "
            "archive one before adding another"
        )


def _index(items: list[Body], certificate_id: str) -> int:
    for index, item in enumerate(items):
        if item["id"] == certificate_id:
            return index
    return len(items)


async def _active(store: Store, tunnel_id: str, limit: int) -> list[Body]:
    """Non-archived certificates of the tunnel, oldest first."""
    page = await store.list_resources(
        KIND, cursor=None, limit=limit, include_archived=False, equals={"tunnel_id": tunnel_id}, order="asc"
    )
    return page.items


async def get(store: Store, tunnel_id: str, certificate_id: str) -> Body:
    return common.public(await _own(store, tunnel_id, certificate_id))


async def _own(store: Store, tunnel_id: str, certificate_id: str) -> Body:
    await _tunnel(store, tunnel_id)
    document = await store.get(KIND, certificate_id)
    if document is None or document["tunnel_id"] != tunnel_id:
        raise NotFound(KIND, certificate_id)
    return document


async def list_page(
    store: Store, tunnel_id: str, *, cursor: int | None, limit: int, include_archived: bool
) -> Page:
    """Newest first, like the other lists; items are wire shapes."""
    await _tunnel(store, tunnel_id)
    page = await store.list_resources(
        KIND, cursor=cursor, limit=limit, include_archived=include_archived, equals={"tunnel_id": tunnel_id}
    )
    return Page([common.public(item) for item in page.items], page.next_cursor)


async def archive(store: Store, tunnel_id: str, certificate_id: str) -> Body:
    """Idempotent: a repeat returns the record with its first ``archived_at``. Streams opened
    from now on no longer carry the certificate, so new TLS connections stop trusting it."""
    await _own(store, tunnel_id, certificate_id)
    body = await _mark(store, certificate_id, ids.timestamp())
    log.info("tunnel %s: certificate %s archived", tunnel_id, certificate_id)
    return body


async def _mark(store: Store, certificate_id: str, moment: str) -> Body:
    def mark(current: Body) -> Body:
        return current if current.get("archived_at") else {**current, "archived_at": moment}

    body = await store.update(KIND, certificate_id, mark)
    if body is None:
        raise NotFound(KIND, certificate_id)
    return common.public(body)


async def archive_all(store: Store, tunnel_id: str, moment: str) -> int:
    """Archive every certificate still trusted by ``tunnel_id`` (the tunnel is being archived)."""
    active = await _active(store, tunnel_id, limit=1_000_000)
    for item in active:
        await _mark(store, item["id"], moment)
    return len(active)


async def trusted_pems(store: Store, tunnel_id: str) -> list[str]:
    """The tunnel's trusted set as PEM text, oldest first (empty: it never had certificates,
    so the agent's default trust); ``TrustWithdrawn`` when all it had are archived."""
    active = [item["_pem"] for item in await _active(store, tunnel_id, limit=MAX_SENT)]
    if not active:
        ever = await store.list_resources(
            KIND, cursor=None, limit=1, include_archived=True, equals={"tunnel_id": tunnel_id}
        )
        if ever.items:
            raise TrustWithdrawn(tunnel_id)
    return active
