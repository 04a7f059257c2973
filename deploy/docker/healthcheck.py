"""Container health check: exit 0 when the process in this container answers.

``tether-healthcheck gateway`` asks the gateway's ``/health`` on loopback (HTTPS when
``TETHER_TLS_CERT`` is set: the certificate is not verified, only the answer matters here);
``tether-healthcheck tunnel`` asks the tunnel agent's admin ``/ready``. The port follows
``TETHER_PORT`` (gateway, 8420) or ``TETHER_TUNNEL_ADMIN_PORT`` (agent, 9464), as the image's
entry point passes them on. Only the standard library: it runs every few seconds.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def url(kind: str) -> str:
    if kind == "tunnel":
        return f"http://127.0.0.1:{os.environ.get('TETHER_TUNNEL_ADMIN_PORT', '9464')}/ready"
    scheme = "https" if os.environ.get("TETHER_TLS_CERT") else "http"
    return f"{scheme}://127.0.0.1:{os.environ.get('TETHER_PORT', '8420')}/health"


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else "gateway"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url(kind), timeout=4, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
