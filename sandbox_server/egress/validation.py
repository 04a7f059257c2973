"""Which allowed hosts and secret names a sandbox takes: one set of rules for the API and the sandbox.

The gateway checks ``config.networking.allowed_hosts`` of an environment and
``networking.allowed_hosts`` and ``secret_name`` of an ``environment_variable``
credential with these functions when a client writes them. The sandbox checks the
same values with the same functions when it starts (``--allow-host``) and when it
reads its credentials. So any value the API stores is one the sandbox will accept,
and a session cannot be created whose tools can never run.

Pure and standard library only, so the gateway can import it without the proxy.

Allowed host (an allow-list entry): a DNS name, a DNS name under a leading ``*.``
wildcard, or an IPv4 (dotted quad) or IPv6 literal (bare or in brackets). Labels
are 1-63 letters, digits, hyphens and underscores, not starting or ending with a
hyphen (RFC 1123, plus the ``_`` that real DNS names carry and the proxy accepts in
request hosts); a final label that looks like a number must be part of a valid
IPv4 address. No scheme, port, path, query or user info.

Secret name: a shell identifier, and not one of the variables the sandbox sets for
its commands or that changes how programs there load or run (``PATH``, ``HOME``,
``LD_PRELOAD``, ``BASH_ENV``, ``PYTHONPATH``, the proxy variables, ...). Names are
compared without regard to case.
"""

from __future__ import annotations

import ipaddress
import re

MAX_NAME_LENGTH = 253
DNS_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_NOT_BARE = re.compile(r"[/@?#\\]")

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_NAMES = frozenset(
    {
        # What the sandbox sets, and the shell's own variables.
        "_",
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TERM",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "OLDPWD",
        "TMPDIR",
        "HOSTNAME",
        "IFS",
        "ENV",
        "CDPATH",
        "GLOBIGNORE",
        "SHELLOPTS",
        "BASHOPTS",
        "PS1",
        "PS2",
        "PS4",
        "PROMPT_COMMAND",
        # The egress proxy and its CA, which the sandbox sets for every command.
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "FTP_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        # Loaders and interpreters: code or libraries run from a path or option.
        "NODE_OPTIONS",
        "NODE_PATH",
        "PERLLIB",
        "PERL5LIB",
        "PERL5OPT",
        "RUBYLIB",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "LOCALDOMAIN",
        "RES_OPTIONS",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_EXEC_PATH",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
    }
)
"""Variables a credential may not set (compared in upper case)."""
RESERVED_PREFIXES = ("LD_", "DYLD_", "BASH_", "PYTHON", "LC_", "GIT_CONFIG", "TETHER_")
"""Families of such variables: the dynamic loader, bash (incl. exported functions), Python, locales,
git's configuration from the environment, and Tether's own."""


class InvalidHost(ValueError):
    """A host name or pattern that is not a valid name or IP literal; the message is safe to log."""


class InvalidSecretName(ValueError):
    """A credential's ``secret_name`` that the sandbox would not set; the message is safe to log."""


def _ipv6(text: str) -> ipaddress.IPv6Address:
    if "%" in text:
        raise InvalidHost("IPv6 zone ids are not allowed")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise InvalidHost("not a valid IPv6 address") from None


def _dns_name(text: str) -> str:
    """``text`` (lower case) as a DNS name without its trailing dot; ``InvalidHost`` otherwise."""
    name = text.removesuffix(".")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidHost("not a valid host name")
    labels = name.split(".")
    if NUMERIC_LABEL.match(labels[-1]):
        raise InvalidHost("ends in a number but is not an IPv4 address")
    for label in labels:
        if not DNS_LABEL.match(label):
            raise InvalidHost(f"label {label!r} is not a valid DNS label")
    return name


def check_allowed_host(raw: str) -> str:
    """Validate one allow-list entry; returns it normalised (lower case, canonical IP, no trailing dot).

    Raises ``InvalidHost`` with a reason (never the rules in full) for anything else.
    """
    text = raw.lower()
    if not text:
        raise InvalidHost("empty host")
    if _NOT_BARE.search(text) or any(c.isspace() for c in text):
        raise InvalidHost("must be a bare host name or IP address, without scheme, port, path or user")
    if text.startswith("[") and text.endswith("]"):
        return str(_ipv6(text[1:-1]))
    if ":" in text:
        if text.count(":") == 1 or text.startswith("["):
            raise InvalidHost("must be a bare host name or IP address, without scheme, port, path or user")
        return str(_ipv6(text))
    if text.startswith("*."):
        rest = text[2:]
        if "*" in rest:
            raise InvalidHost("only one leading '*.' wildcard is supported")
        try:
            ipaddress.IPv4Address(rest)
        except ValueError:
            return "*." + _dns_name(rest)
        raise InvalidHost("a wildcard needs a domain name, not an IP address")
    if "*" in text:
        raise InvalidHost("only a leading '*.' wildcard is supported")
    if NUMERIC_LABEL.match(text.removesuffix(".").rsplit(".", 1)[-1]):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise InvalidHost("ends in a number but is not an IPv4 address (a.b.c.d)") from None
    return _dns_name(text)


def check_secret_name(name: str) -> str:
    """Validate a credential's environment variable name; returns it unchanged.

    Raises ``InvalidSecretName`` for names that are not shell identifiers or are reserved.
    """
    if not SECRET_NAME.match(name):
        raise InvalidSecretName(
            "must be a shell variable name: a letter or '_', then letters, digits or '_' (at most 128)"
        )
    upper = name.upper()
    if upper in RESERVED_NAMES or upper.startswith(RESERVED_PREFIXES):
        raise InvalidSecretName(
            f"{name} is reserved: the sandbox sets it, or it changes how programs there load or run"
        )
    return name
