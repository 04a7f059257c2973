"""A client that hangs up in the middle of its request body costs the gateway one warning line:
method, path and bytes received; no traceback, no 500."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.support.processes import ServerProcess

DECLARED = 1_000_000
MARKER = "client disconnected before sending the whole body"


def _lines_after(server: ServerProcess, start: int, settle: float = 0.5, timeout: float = 10.0) -> list[str]:
    """The output lines from ``start`` on, once the warning has appeared and ``settle`` passed quietly."""
    deadline = time.monotonic() + timeout
    while not any(MARKER in line for line in server.output[start:]):
        if time.monotonic() > deadline:
            raise AssertionError("no warning logged:\n" + "\n".join(server.output[start:]))
        time.sleep(0.02)
    time.sleep(settle)
    # A request after it: the gateway is still serving, and anything the dropped one logs is out.
    assert httpx2.get(server.url + "/health").status_code == 200
    return server.output[start:]


@pytest.mark.parametrize("sent", [0, 5000])
def test_a_client_gone_mid_body_is_one_warning_line_without_a_traceback(
    gateway: ServerProcess, api_key: str, sent: int
) -> None:
    start = len(gateway.output)
    url = urlsplit(gateway.url)
    assert url.hostname is not None and url.port is not None
    head = (
        "POST /v1/agents HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        f"x-api-key: {api_key}\r\n"
        "content-type: application/json\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port)) as client:
        client.sendall(head.encode() + (b'{"name": "' + b"x" * sent)[:sent])
        time.sleep(0.2)  # let the gateway start reading the body before the hang-up

    lines = _lines_after(gateway, start)

    about_it = [line for line in lines if MARKER in line]
    assert len(about_it) == 1, lines
    assert "WARNING" in about_it[0]
    assert f"POST /v1/agents ({sent} of {DECLARED} bytes received)" in about_it[0]
    assert not any("Traceback" in line for line in lines), lines
    assert not any("Exception in ASGI application" in line or "unhandled error" in line for line in lines)
