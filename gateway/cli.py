"""The ``tether`` command line: one entry point, one subcommand per program."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _gateway(args: argparse.Namespace) -> None:
    from sandbox_server.workspace_fs import enter_private_mounts

    enter_private_mounts()  # first, while single-threaded: its sandboxes' workspace mounts die with it
    from gateway.app import run_gateway

    run_gateway(host=args.host, port=args.port, data_dir=args.data_dir, policy_files=args.policy)


def _demo(args: argparse.Namespace) -> None:
    from gateway.demo import run_demo

    sys.exit(run_demo(data_dir=args.data_dir, port=args.port))


def _model(args: argparse.Namespace) -> None:
    from gateway.scripted_model.server import run

    run(host=args.host, port=args.port, script_path=args.script)


def _sandbox(args: argparse.Namespace) -> None:
    from sandbox_server.docker_backend import DockerSettings
    from sandbox_server.egress import egress_from_args
    from sandbox_server.limits import limits_from_args
    from sandbox_server.server import run

    try:
        limits = limits_from_args(args)
        egress = egress_from_args(args)
    except ValueError as exc:
        sys.exit(f"tether sandbox: {exc}")
    run(
        workspace=Path(args.workspace),
        host=args.host,
        port=args.port,
        stdio=args.stdio,
        limits=limits,
        backend=args.backend,
        docker_settings=DockerSettings(image=args.docker_image),
        egress=egress,
    )


def _tunnel(args: argparse.Namespace) -> None:
    from tunnel_agent.cli import run

    run(args)


def _policy_check(args: argparse.Namespace) -> None:
    from policies.cli import check

    sys.exit(check(args.files))


def _policy_dry_run(args: argparse.Namespace) -> None:
    from gateway.policy_replay import run_dry_run

    sys.exit(run_dry_run(args))


def _vault_rotate(args: argparse.Namespace) -> None:
    from gateway.vault.rotate import run_rotate

    sys.exit(run_rotate(args.data_dir))


def _audit_verify(args: argparse.Namespace) -> None:
    from gateway.audit import run_verify

    sys.exit(run_verify(args.session_id, args.data_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gateway = commands.add_parser("gateway", help="serve the REST API and run sessions")
    gateway.add_argument("--host", default=os.environ.get("TETHER_HOST", "127.0.0.1"))
    gateway.add_argument("--port", type=int, default=int(os.environ.get("TETHER_PORT", "8420")))
    gateway.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR", ".tether"))
    gateway.add_argument("--policy", action="append", default=[], help="policy YAML file (repeatable)")
    gateway.set_defaults(func=_gateway)

    demo = commands.add_parser("demo", help="start a gateway and run one session end to end")
    demo.add_argument("--data-dir", default=None, help="keep the demo's data here (default: a temp dir)")
    demo.add_argument("--port", type=int, default=0)
    demo.set_defaults(func=_demo)

    model = commands.add_parser("model", help="serve the scripted Messages-API model")
    model.add_argument("--host", default="127.0.0.1")
    model.add_argument("--port", type=int, default=0)
    model.add_argument("--script", default=None, help="JSON script file")
    model.set_defaults(func=_model)

    sandbox = commands.add_parser("sandbox", help="serve a workspace's toolset as an MCP server")
    sandbox.add_argument("--workspace", required=True)
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=0)
    sandbox.add_argument("--stdio", action="store_true", help="speak MCP over stdin/stdout")
    sandbox.add_argument(
        "--backend",
        choices=("bwrap", "docker", "auto"),
        default="bwrap",
        help="where bash runs: bubblewrap, a Docker container, or Docker if an engine answers (default bwrap)",
    )
    sandbox.add_argument("--docker-image", default="debian:bookworm-slim", help="image for --backend docker")
    from sandbox_server.egress import add_egress_arguments
    from sandbox_server.limits import add_limit_arguments

    add_limit_arguments(sandbox)
    add_egress_arguments(sandbox)
    sandbox.set_defaults(func=_sandbox)

    tunnel = commands.add_parser("tunnel", help="run the on-prem tunnel agent (dials out to a gateway)")
    from tunnel_agent.cli import add_arguments

    add_arguments(tunnel)
    tunnel.set_defaults(func=_tunnel)

    policy = commands.add_parser("policy", help="validate and try out policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate files and explain each rule")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=_policy_check)
    dry_run = policy_commands.add_parser(
        "dry-run", help="replay a recorded session's tool calls against new policy files"
    )
    dry_run.add_argument("files", nargs="+")
    source = dry_run.add_mutually_exclusive_group(required=True)
    source.add_argument("--session", help="a session id, fetched from --gateway")
    source.add_argument("--events", help="a JSON file of events, an events page, or a session export")
    dry_run.add_argument("--agent", help="agent JSON (with --events, when the export has none)")
    dry_run.add_argument("--gateway", default=os.environ.get("TETHER_URL", "http://127.0.0.1:8420"))
    dry_run.add_argument("--api-key", default=os.environ.get("TETHER_API_KEY"))
    dry_run.set_defaults(func=_policy_dry_run)

    vault = commands.add_parser("vault", help="manage the master key that encrypts credentials")
    vault_commands = vault.add_subparsers(dest="vault_command", required=True)
    rotate = vault_commands.add_parser("rotate-key", help="re-encrypt every credential under a new key")
    rotate.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR", ".tether"))
    rotate.set_defaults(func=_vault_rotate)

    audit = commands.add_parser("audit", help="check the tamper-evident session log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="verify a session's hash chain")
    verify.add_argument("session_id")
    verify.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR", ".tether"))
    verify.set_defaults(func=_audit_verify)

    from gateway.operator_cli import register as register_operator_commands

    register_operator_commands(commands)  # sessions list|show|tail|export, agents list|show
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
