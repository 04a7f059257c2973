"""The sandbox's egress proxy: the only way out, an allow-list, and secrets added at the last hop.

Modules, one job each:

- ``policy``: host names, allow-list patterns, internal addresses (pure);
- ``resolve``: name resolution with ``--egress-resolve`` pins;
- ``gate``: admission of one destination and the ``tether.egress`` log line;
- ``http``: HTTP/1.1 parsing and framing; ``exchange``: one request/response, rewritten or not;
- ``credentials``: the gateway's credentials document, substitution, what to scrub;
- ``forms``, ``scrub`` and ``codings``: the forms of a secret value, finding them in a
  stream through escapes, and the content codings undone before looking;
- ``ca`` and ``tls``: the egress CA, leaf certificates, upstream verification;
- ``proxy``: the Unix-socket server; ``service``: runs it on a thread of ``tether sandbox``;
- ``mount`` and ``forwarder``: what a sandboxed command needs to reach it;
- ``config``: the ``tether sandbox`` flags.

Importing this package is cheap (no TLS or HTTP client libraries).
"""

from __future__ import annotations

from sandbox_server.egress.config import TOKEN_ENV, EgressSettings, add_egress_arguments, egress_from_args
from sandbox_server.egress.policy import PACKAGE_MANAGER_HOSTS, EgressMode

__all__ = [
    "PACKAGE_MANAGER_HOSTS",
    "TOKEN_ENV",
    "EgressMode",
    "EgressSettings",
    "add_egress_arguments",
    "egress_from_args",
]
