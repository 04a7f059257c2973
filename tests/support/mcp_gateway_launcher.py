"""Run a gateway for the MCP gateway tests: ``gateway.app.run_gateway`` with policy files.

The app wires its MCP gateway itself (routes, lifespan, the tunnel transport, public
``/mcp/`` prefixes); this only adds ``--policy`` files and the scripted model's address.

Run: ``python -m tests.support.mcp_gateway_launcher --port 0 --data-dir DIR [--policy FILE]``.
"""

from __future__ import annotations

import argparse
import logging

from gateway.app import create_app
from gateway.config import SCRIPTED_MODEL_PATH, Settings
from gateway.serving import bind_socket, serve_socket, socket_url
from policies.engine import PolicySet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--policy", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx2", "httpx", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings.from_env(args.data_dir)
    settings.policy_files += args.policy
    policies = PolicySet.load(settings.policy_files)
    sock = bind_socket(args.host, args.port)
    if settings.model_base_url is None and settings.model_api_key is None:
        settings.serve_scripted_model = True
        settings.model_base_url = socket_url(sock) + SCRIPTED_MODEL_PATH
    serve_socket(create_app(settings, policies), sock, log_level="warning")


if __name__ == "__main__":
    main()
