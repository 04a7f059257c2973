"""Exposed names for one virtual server: unique, valid, and stable.

A virtual server merges several upstreams, so two of them may offer a tool (or prompt)
of the same name. Names are namespaced ``server__name`` only where they collide, exactly
as the harness does for agents (``gateway.tools.toolbox``), so a client sees the short
name whenever it is unambiguous, and every name matches ``^[a-zA-Z0-9_-]{1,64}$``.

Resource URIs are not names: a URI offered by one upstream passes through unchanged;
one offered by several is exposed as ``tether-mcp://SERVER/<percent-encoded URI>`` so a
read can be routed back. Colliding URI templates get the same prefix with their
``{variables}`` left intact, so expanding one yields such a namespaced URI. Results are deterministic for a given input, so the same
selection always yields the same names.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from urllib.parse import quote, unquote

from gateway.tools.toolbox import namespaced, safe_name

VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
NAMESPACED_URI_SCHEME = "tether-mcp://"

Origin = tuple[str, str]
"""(upstream server name, the item's own name or URI on that server)."""


def exposed_names(origins: Iterable[Origin]) -> dict[Origin, str]:
    """Map each origin to its exposed name; short where unique, ``server__name`` where not."""
    ordered = list(dict.fromkeys(origins))
    short = {origin: safe_name(origin[1]) for origin in ordered}
    counts = Counter(short.values())
    names = {
        origin: (namespaced(origin[0], origin[1]) if counts[name] > 1 else name)
        for origin, name in short.items()
    }
    # Sanitising can still collide (``a.b`` and ``a_b`` on one server, or a short name equal
    # to another's namespaced one): disambiguate the later ones with a digest of the origin.
    taken: set[str] = set()
    for origin in ordered:
        name = names[origin]
        if name in taken:
            digest = hashlib.sha256(f"{origin[0]}\x00{origin[1]}".encode()).hexdigest()[:8]
            name = safe_name(f"{name[:55]}_{digest}")
            names[origin] = name
        taken.add(name)
    return names


def exposed_uris(origins: Iterable[Origin]) -> dict[Origin, str]:
    """Map each (server, uri) to the URI a client sees; namespaced only where URIs collide."""
    ordered = list(dict.fromkeys(origins))
    counts = Counter(uri for _, uri in ordered)
    return {
        (server, uri): (namespaced_uri(server, uri) if counts[uri] > 1 else uri) for server, uri in ordered
    }


def namespaced_uri(server: str, uri: str) -> str:
    return f"{NAMESPACED_URI_SCHEME}{server}/{quote(uri, safe='')}"


def exposed_templates(origins: Iterable[Origin]) -> dict[Origin, str]:
    """Like ``exposed_uris`` for URI templates: a colliding one keeps its ``{variables}``
    inside the namespaced form, so a client's expansion yields a namespaced URI."""
    ordered = list(dict.fromkeys(origins))
    counts = Counter(template for _, template in ordered)
    return {
        (server, template): (
            f"{NAMESPACED_URI_SCHEME}{server}/{quote(template, safe='{}')}"
            if counts[template] > 1
            else template
        )
        for server, template in ordered
    }


def parse_namespaced_uri(uri: str) -> Origin | None:
    """``(server, original uri)`` for a ``tether-mcp://`` URI, else None."""
    if not uri.startswith(NAMESPACED_URI_SCHEME):
        return None
    server, _, encoded = uri[len(NAMESPACED_URI_SCHEME) :].partition("/")
    if not server or not encoded:
        return None
    return server, unquote(encoded)
