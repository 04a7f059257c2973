"""The ``tether`` command line: one entry point, one subcommand per program."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _gateway(args: argparse.Namespace) -> None:
    from gateway.serving import TLSFiles

    # Unusable TLS files are found before the gateway's heavy imports: the answer comes at once.
    if bool(args.tls_cert) != bool(args.tls_key):
        sys.exit("tether gateway: --tls-cert and --tls-key go together (env TETHER_TLS_CERT, TETHER_TLS_KEY)")
    tls = TLSFiles(args.tls_cert, args.tls_key) if args.tls_cert else None
    if tls is not None and (problem := tls.check()) is not None:
        sys.exit(f"tether gateway: {problem}")
    from sandbox_server.workspace_fs import enter_private_mounts

    enter_private_mounts()  # first, while single-threaded: its sandboxes' workspace mounts die with it
    from gateway.app import run_gateway

    run_gateway(host=args.host, port=args.port, data_dir=args.data_dir, policy_files=args.policy, tls=tls)


def _demo(args: argparse.Namespace) -> None:
    from gateway.demo import run_demo

    sys.exit(run_demo(data_dir=args.data_dir, port=args.port))


def _model(args: argparse.Namespace) -> None:
    from gateway.scripted_model.server import run

    run(host=args.host, port=args.port, script_path=args.script)


def _sandbox(args: argparse.Namespace) -> None:
    from sandbox_server.cli import run_from_args

    run_from_args(args)  # the same as ``python -m sandbox_server``, which starters run


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


def _config_show(args: argparse.Namespace) -> None:
    from gateway.settings_doc import show

    sys.exit(show())


def _config_table(args: argparse.Namespace) -> None:
    from gateway.settings_doc import settings_table

    sys.stdout.write(settings_table())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gateway = commands.add_parser("gateway", help="serve the REST API and run sessions")
    gateway.add_argument(
        "--host",
        default=os.environ.get("TETHER_HOST", "127.0.0.1"),
        help="address to listen on (env TETHER_HOST; default 127.0.0.1, loopback only)",
    )
    gateway.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("TETHER_PORT", "8420")),
        help="port to listen on (env TETHER_PORT; default 8420; 0 picks a free one)",
    )
    gateway.add_argument(
        "--data-dir",
        default=os.environ.get("TETHER_DATA_DIR", ".tether"),
        help="where the database, keys and workspaces live (env TETHER_DATA_DIR; default ./.tether)",
    )
    gateway.add_argument("--policy", action="append", default=[], help="policy YAML file (repeatable)")
    gateway.add_argument(
        "--tls-cert",
        default=os.environ.get("TETHER_TLS_CERT") or None,
        help="PEM certificate chain: serve HTTPS only (with --tls-key; env TETHER_TLS_CERT)",
    )
    gateway.add_argument(
        "--tls-key",
        default=os.environ.get("TETHER_TLS_KEY") or None,
        help="PEM private key of --tls-cert (env TETHER_TLS_KEY)",
    )
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
    from sandbox_server.cli import add_arguments as add_sandbox_arguments

    add_sandbox_arguments(sandbox, warm=False)
    sandbox.set_defaults(func=_sandbox)

    tunnel = commands.add_parser("tunnel", help="run the on-prem tunnel agent (dials out to a gateway)")
    from tunnel_agent.cli import add_arguments

    add_arguments(tunnel)
    tunnel.set_defaults(func=_tunnel)

    policy = commands.add_parser("policy", help="validate and try out policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate files and explain each rule")
    check.add_argument("files", nargs="+", help="policy YAML files")
    check.set_defaults(func=_policy_check)
    dry_run = policy_commands.add_parser(
        "dry-run", help="replay a recorded session's tool calls against new policy files"
    )
    dry_run.add_argument("files", nargs="+", help="the policy YAML files to try")
    source = dry_run.add_mutually_exclusive_group(required=True)
    source.add_argument("--session", help="a session id, fetched from --gateway")
    source.add_argument("--events", help="a JSON file of events, an events page, or a session export")
    dry_run.add_argument("--agent", help="agent JSON (with --events, when the export has none)")
    dry_run.add_argument(
        "--gateway",
        default=os.environ.get("TETHER_URL", "http://127.0.0.1:8420"),
        help="gateway URL, with --session (default: TETHER_URL or http://127.0.0.1:8420)",
    )
    dry_run.add_argument(
        "--api-key",
        default=os.environ.get("TETHER_API_KEY"),
        help="the gateway's API key (default: TETHER_API_KEY)",
    )
    dry_run.set_defaults(func=_policy_dry_run)

    vault = commands.add_parser("vault", help="manage the master key that encrypts credentials")
    vault_commands = vault.add_subparsers(dest="vault_command", required=True)
    rotate = vault_commands.add_parser("rotate-key", help="re-encrypt every credential under a new key")
    rotate.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR", ".tether"))
    rotate.set_defaults(func=_vault_rotate)

    audit = commands.add_parser("audit", help="check the tamper-evident session log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    from gateway.audit import add_commands as add_audit_commands

    add_audit_commands(audit_commands)  # verify, head

    config = commands.add_parser("config", help="the settings Tether reads from the environment")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    config_show = config_commands.add_parser("show", help="print the values in effect (secrets masked)")
    config_show.set_defaults(func=_config_show)
    config_table = config_commands.add_parser("table", help="print every setting as a Markdown table")
    config_table.set_defaults(func=_config_table)

    from gateway.commands import register as register_client_commands

    register_client_commands(commands)  # sessions, agents, environments, vaults, tunnels, webhooks, MCP
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
