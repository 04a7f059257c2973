"""Webhooks: a small receiver that checks each delivery's signature and prints session events.

Tether posts every session status change (``session.status_running``, ``_idle``,
``_rescheduled``, ``_terminated``) to registered endpoints, signed the Standard Webhooks way:
``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(secret, "{webhook-id}.{webhook-timestamp}.{body}")),
the key being the base64 part of the endpoint's ``whsec_…`` secret. Deliveries are retried
until the receiver answers 2xx, with the same ``webhook-id``, so drop repeats by id.

Run it, registering itself with the gateway (the secret is shown only at registration):

    .venv/bin/python examples/webhooks_receiver.py --port 8421 --register

or register by hand and pass the secret in ``TETHER_WEBHOOK_SECRET``:

    curl -s http://127.0.0.1:8420/v1/tether/webhooks -H "x-api-key: $TETHER_API_KEY" \\
         -H 'content-type: application/json' \\
         -d '{"url": "http://127.0.0.1:8421/tether", "event_types": ["session.status_idle"]}'
    TETHER_WEBHOOK_SECRET=whsec_... .venv/bin/python examples/webhooks_receiver.py --port 8421

The gateway refuses internal targets (loopback, private networks) unless the operator allows
them: start it with ``TETHER_WEBHOOK_ALLOWED_HOSTS=127.0.0.1`` to try this on one machine.
Then run any other example (``examples/quickstart.py``) and watch the deliveries. Any
Standard Webhooks library (``standardwebhooks``, Svix) verifies these too; this file uses
the standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import signal
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_SECONDS = 300


class Refused(Exception):
    """Not a genuine, fresh delivery for our secret."""


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> Any:
    """The delivery's JSON payload, or ``Refused`` when its signature or timestamp is wrong."""
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    presented = headers.get("webhook-signature")
    if not message_id or not stamp or not presented:
        raise Refused("missing webhook-id, webhook-timestamp or webhook-signature")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
        raise Refused("timestamp missing or too far from our clock (a replay?)")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    # Several space-separated signatures are allowed: a sender rotating secrets sends both.
    if not any(hmac.compare_digest(candidate, expected) for candidate in presented.split()):
        raise Refused("no signature matches")
    return json.loads(body)


class Receiver:
    """The secret deliveries must be signed with, and the ids already seen (repeats are dropped)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def receive(self, headers: Mapping[str, str], body: bytes) -> int:
        """Check and print one delivery; the HTTP status to answer."""
        try:
            payload = verify(self.secret, headers, body)
        except (Refused, ValueError) as exc:
            print(f"refused: {exc}", flush=True)
            return 401
        with self.lock:
            repeat = headers["webhook-id"] in self.seen
            self.seen.add(headers["webhook-id"])
        if not repeat:
            data = payload["data"]
            stop = (data["event"].get("stop_reason") or {}).get("type", "")
            print(f"verified {payload['type']} {data['session_id']} {stop}".rstrip(), flush=True)
        return 204  # any 2xx ends the retries


def bind(host: str, port: int, receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = receiver.receive({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

    return ThreadingHTTPServer((host, port), Handler)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description="Verify and print Tether webhook deliveries.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8421, help="0 picks a free port")
    parser.add_argument("--register", action="store_true", help="register with the gateway; removed on exit")
    parser.add_argument("--public-url", help="URL the gateway posts to (default http://HOST:PORT/tether)")
    parser.add_argument("--event-type", action="append", default=[], help="subscribe to this type only")
    args = parser.parse_args()
    receiver = Receiver(os.environ.get("TETHER_WEBHOOK_SECRET", ""))
    if not (args.register or receiver.secret):
        raise SystemExit("pass --register, or set TETHER_WEBHOOK_SECRET to the secret shown at registration")

    server = bind(args.host, args.port, receiver)
    url = args.public_url or f"http://{args.host}:{server.server_address[1]}/tether"
    client: Any = None
    endpoint: Any = None
    if args.register:
        from _common import connect

        client = connect()
        body: dict[str, Any] = {"url": url, "description": "examples/webhooks_receiver.py"}
        if args.event_type:
            body["event_types"] = args.event_type
        endpoint = client.post("/v1/tether/webhooks", cast_to=object, body=body)
        receiver.secret = endpoint["secret"]  # returned by this call only, never again
        print(f"registered {endpoint['id']} for {url}", flush=True)
    signal.signal(signal.SIGTERM, _stop)
    print(f"listening on {url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if client is not None and endpoint is not None:
            client.delete(f"/v1/tether/webhooks/{endpoint['id']}", cast_to=object)
            print(f"unregistered {endpoint['id']}", flush=True)


if __name__ == "__main__":
    main()
