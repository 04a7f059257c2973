"""Secrets for the last hop: fetched once from the gateway, substituted only where a credential allows.

The sandbox sees each ``environment_variable`` credential as ``SECRET_NAME=<placeholder>``.
When a request leaves through the proxy, the placeholder is replaced by the
real value only if all of these hold: the request goes over TLS to a host the
credential's ``networking`` allows (and the proxy verified that host's
certificate), and the placeholder sits in a location its
``injection_location`` enables (header values and/or the body; never the
request line, so never the URL or query). Everywhere else the placeholder
travels as the harmless string it is.

Responses on intercepted connections are scrubbed the other way (value back to
placeholder, in every form ``forms`` lists and through the escapings ``scrub``
undoes), so an upstream that echoes a request cannot hand the value to the
sandbox.

The document the gateway serves mirrors the SDK's credential fields
(``anthropic.types.beta.vaults``: ``secret_name``, ``secret_value``,
``networking`` with ``type`` ``limited``/``unrestricted`` and ``allowed_hosts``,
``injection_location`` with ``header``/``body``), plus the ``placeholder`` the
gateway chose::

    {"credentials": [{"type": "environment_variable", "secret_name": "STRIPE_KEY",
                      "placeholder": "tether-ph-...", "secret_value": "sk_live_...",
                      "networking": {"type": "limited", "allowed_hosts": ["api.stripe.com"]},
                      "injection_location": {"header": true, "body": false}}]}

No error message or ``repr`` here contains a secret value.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx2

from sandbox_server.egress.forms import exact_form, unique, value_forms
from sandbox_server.egress.http import Headers, is_token
from sandbox_server.egress.policy import Host, HostPattern, InvalidHost, matches_any, parse_host_pattern
from sandbox_server.egress.scrub import Scrub, StreamScrubber
from sandbox_server.egress.validation import InvalidSecretName, check_secret_name

FETCH_TIMEOUT = 10.0
MIN_REDACTED_LENGTH = 8
"""Shorter secret values are not scrubbed from responses: they would match ordinary text."""
MAX_PRODUCED = 16
"""``Basic`` credentials remembered per connection to restore them in echoed responses."""

_PLACEHOLDER = re.compile(r"^[A-Za-z0-9._~-]{16,256}$")


class CredentialsError(Exception):
    """The credentials could not be fetched or are invalid; the message never contains a secret."""


@dataclass(frozen=True)
class Credential:
    """One ``environment_variable`` credential as the proxy uses it."""

    secret_name: str
    placeholder: str
    secret_value: str = field(repr=False)
    allowed_hosts: tuple[HostPattern, ...] | None
    """``None`` for ``networking.type == "unrestricted"``: any host the egress policy lets through."""
    header: bool
    body: bool

    def applies_to(self, host: Host) -> bool:
        if not (self.header or self.body):
            return False
        return self.allowed_hosts is None or matches_any(self.allowed_hosts, host)


def _field(entry: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = entry.get(name)
    if not isinstance(value, kind):
        raise CredentialsError(f"{where}: {name} must be a {kind.__name__}")
    return value


def _parse_one(entry: Any, index: int) -> Credential:
    where = f"credential {index}"
    if not isinstance(entry, dict):
        raise CredentialsError(f"{where}: not an object")
    if entry.get("type", "environment_variable") != "environment_variable":
        raise CredentialsError(f"{where}: type must be environment_variable")
    name = _field(entry, "secret_name", str, where)
    try:
        check_secret_name(name)
    except InvalidSecretName as exc:
        raise CredentialsError(
            f"{where}: secret_name {name!r} is not a usable environment variable name: {exc}"
        ) from None
    where = f"credential {name}"
    placeholder = _field(entry, "placeholder", str, where)
    if not _PLACEHOLDER.match(placeholder):
        raise CredentialsError(f"{where}: placeholder must be 16-256 characters of [A-Za-z0-9._~-]")
    value = entry.get("secret_value")
    if not isinstance(value, str) or not value:
        raise CredentialsError(f"{where}: secret_value must be a non-empty string")
    networking = _field(entry, "networking", dict, where)
    hosts: tuple[HostPattern, ...] | None
    if networking.get("type") == "unrestricted":
        hosts = None
    elif networking.get("type") == "limited":
        raw_hosts = networking.get("allowed_hosts")
        if not isinstance(raw_hosts, list) or not all(isinstance(h, str) for h in raw_hosts):
            raise CredentialsError(f"{where}: networking.allowed_hosts must be a list of strings")
        try:
            hosts = tuple(parse_host_pattern(h) for h in raw_hosts)
        except InvalidHost as exc:
            raise CredentialsError(f"{where}: networking.allowed_hosts: {exc}") from None
    else:
        raise CredentialsError(f"{where}: networking.type must be limited or unrestricted")
    location = entry.get("injection_location") or {}
    if not isinstance(location, dict):
        raise CredentialsError(f"{where}: injection_location must be an object")
    header, body = location.get("header", True), location.get("body", False)
    if not isinstance(header, bool) or not isinstance(body, bool):
        raise CredentialsError(f"{where}: injection_location.header and .body must be booleans")
    if header and any(c in value for c in "\r\n\x00"):
        raise CredentialsError(
            f"{where}: a secret substituted into headers cannot contain line breaks or NUL"
        )
    return Credential(name, placeholder, value, hosts, header, body)


def parse_credentials(document: Any) -> Vault:
    """Validate the gateway's JSON document (see the module docstring) into a ``Vault``."""
    if not isinstance(document, dict) or not isinstance(document.get("credentials"), list):
        raise CredentialsError('the credentials document must be {"credentials": [...]}')
    credentials = [_parse_one(entry, i) for i, entry in enumerate(document["credentials"])]
    names = [c.secret_name for c in credentials]
    if len(set(names)) != len(names):
        raise CredentialsError("two credentials have the same secret_name")
    placeholders = [c.placeholder for c in credentials]
    for i, a in enumerate(placeholders):
        for j, b in enumerate(placeholders):
            if i != j and a in b:
                raise CredentialsError(f"the placeholder of {names[i]} occurs in that of {names[j]}")
    for credential in credentials:
        if any(credential.placeholder in other.secret_value for other in credentials):
            raise CredentialsError(f"the placeholder of {credential.secret_name} occurs in a secret value")
    return Vault(tuple(credentials))


def fetch_credentials(url: str, token: str, *, verify: ssl.SSLContext) -> Vault:
    """GET ``url`` once with ``Authorization: Bearer <token>`` and parse the answer.

    The process's own proxy settings are ignored (``trust_env=False``): the
    gateway is reached directly.
    """
    try:
        with httpx2.Client(verify=verify, timeout=FETCH_TIMEOUT, trust_env=False) as client:
            response = client.get(
                url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
            )
    except httpx2.HTTPError as exc:
        raise CredentialsError(f"could not fetch credentials: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise CredentialsError(f"the credentials endpoint answered HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise CredentialsError("the credentials endpoint did not answer JSON") from None
    return parse_credentials(document)


@dataclass(frozen=True)
class Vault:
    """The credentials of one sandbox."""

    credentials: tuple[Credential, ...] = ()

    def environment(self) -> dict[str, str]:
        """What the sandbox's commands see: each name bound to its placeholder."""
        return {c.secret_name: c.placeholder for c in self.credentials}

    def applies_to(self, host: Host) -> bool:
        """Whether any secret may be substituted for ``host`` (so its HTTPS must be intercepted)."""
        return any(c.applies_to(host) for c in self.credentials)

    @cached_property
    def _scrub(self) -> Scrub:
        """Every form of every value long enough to scrub, whatever host a response comes from."""
        return Scrub(
            tuple(
                unique(
                    form
                    for c in self.credentials
                    if len(c.secret_value.encode()) >= MIN_REDACTED_LENGTH
                    for form in value_forms(c.secret_value.encode(), c.placeholder.encode())
                )
            )
        )

    def rewrite_for(self, host: Host) -> Rewrite:
        """What to do on one intercepted connection to ``host`` (a new ``Rewrite`` per connection)."""
        applicable = [c for c in self.credentials if c.applies_to(host)]
        return Rewrite(
            header=tuple(c for c in applicable if c.header),
            body=tuple(c for c in applicable if c.body),
            scrub=self._scrub,
        )


def _basic_substituted(value: str, credentials: tuple[Credential, ...]) -> tuple[str, list[str]]:
    """``Basic base64(user:pass)`` with placeholders substituted inside the decoded pair."""
    scheme, _, encoded = value.partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return value, []
    used: list[str] = []
    for credential in credentials:
        placeholder = credential.placeholder.encode()
        if placeholder in decoded:
            decoded = decoded.replace(placeholder, credential.secret_value.encode())
            used.append(credential.secret_name)
    if not used:
        return value, []
    return f"{scheme} {base64.b64encode(decoded).decode('ascii')}", used


@dataclass(frozen=True)
class Rewrite:
    """What to substitute in requests on one connection, and what to scrub from the responses.

    ``produced`` remembers the base64 ``Basic`` credentials this connection built
    (what went upstream -> what the client sent), so an upstream that echoes one
    is answered with the client's own value.
    """

    header: tuple[Credential, ...] = ()
    body: tuple[Credential, ...] = ()
    scrub: Scrub = field(default_factory=Scrub, repr=False)
    produced: dict[bytes, bytes] = field(default_factory=dict, repr=False)

    def substitute_headers(self, headers: Headers) -> list[str]:
        """Replace placeholders in header values (not names, not ``Host``); returns the secret names used."""
        if not self.header:
            return []
        used: list[str] = []
        fields: list[tuple[str, str]] = []
        for name, value in headers:
            if name.lower() != "host":
                if name.lower() == "authorization" and value[:6].lower() == "basic ":
                    sent = value
                    value, names = _basic_substituted(value, self.header)
                    if names:
                        self._remember(value[6:].strip(), sent[6:].strip())
                    used += names
                for credential in self.header:
                    placeholder = credential.placeholder
                    if placeholder in value:
                        secret = credential.secret_value.encode().decode("latin-1")
                        value = value.replace(placeholder, secret)
                        used.append(credential.secret_name)
            fields.append((name, value))
        headers.replace_values(fields)
        return sorted(set(used))

    def _remember(self, produced: str, original: str) -> None:
        self.produced.pop(produced.encode("latin-1"), None)
        self.produced[produced.encode("latin-1")] = original.encode("latin-1")
        while len(self.produced) > MAX_PRODUCED:
            del self.produced[next(iter(self.produced))]

    def substitute_body(self, body: bytes) -> tuple[bytes, list[str]]:
        used: list[str] = []
        for credential in self.body:
            placeholder = credential.placeholder.encode()
            if placeholder in body:
                body = body.replace(placeholder, credential.secret_value.encode())
                used.append(credential.secret_name)
        return body, used

    def scrubbing(self) -> Scrub:
        """The forms to scrub from a response now: every value's, and the ``Basic`` values built so far."""
        if not self.produced:
            return self.scrub
        return self.scrub.plus(exact_form(p, o) for p, o in self.produced.items())

    def redact_headers(self, headers: Headers) -> None:
        """Scrub header names and values; a field whose scrubbed name is no longer a token is dropped."""
        scrub = self.scrubbing()
        if not scrub:
            return
        fields = []
        for name, value in headers:
            clean = scrub.apply_text(name)
            if clean == name or is_token(clean):
                fields.append((clean, scrub.apply_text(value)))
        headers.replace_values(fields)

    def redact_text(self, text: str) -> str:
        """Scrub one string of the response head (the reason phrase)."""
        return self.scrubbing().apply_text(text)

    def redactor(self) -> StreamScrubber | None:
        scrub = self.scrubbing()
        return scrub.stream() if scrub else None
