"""``tether agents list|show|versions|create|update|archive``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic

from gateway.commands.client import connection_flags, raw, run
from gateway.commands.output import next_page, output_flags, page_flags, print_item, print_items
from gateway.commands.resources import Flag, Resource, add_operations, collect


def model_id(agent: dict[str, Any]) -> str:
    model = agent.get("model")
    return str(model.get("id") if isinstance(model, dict) else model or "")


def _tools(agent: dict[str, Any]) -> str:
    return ",".join(
        str(t.get("name") or t.get("mcp_server_name") or t.get("type")) for t in agent.get("tools") or []
    )


COLUMNS = [
    ("ID", lambda a: a["id"]),
    ("NAME", lambda a: a.get("name")),
    ("VERSION", lambda a: a.get("version")),
    ("MODEL", model_id),
    ("TOOLS", _tools),
    ("ARCHIVED", lambda a: "yes" if a.get("archived_at") else ""),
]

AGENTS = Resource(
    name="agents",
    noun="agent",
    help="agents: model, system prompt, tools",
    sdk=lambda client: client.beta.agents,
    operations=("create", "update", "archive"),
    columns=COLUMNS,
    flags=[
        Flag("--name", "name", "its name"),
        Flag("--model", "model", "the model id, e.g. claude-sonnet-4-6"),
        Flag("--system", "system", "the system prompt"),
        Flag("--description", "description", "a description"),
        Flag("--tools", "tools", "the tools as a JSON list (or @file.json)", kind="json"),
        Flag("--metadata", "metadata", "a metadata entry KEY=VALUE", kind="metadata"),
    ],
    update_flags=[
        Flag(
            "--version", "version", "the version being updated (refused if it is not the latest)", kind="int"
        ),
        Flag("--name", "name", "a new name"),
        Flag("--model", "model", "a new model id"),
        Flag("--system", "system", "a new system prompt"),
        Flag("--description", "description", "a new description"),
        Flag("--tools", "tools", "the tools as a JSON list (or @file.json)", kind="json"),
        Flag("--metadata", "metadata", "a metadata entry KEY=VALUE", kind="metadata"),
    ],
    required=["name", "model"],
)


def agents_list(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    query: dict[str, Any] = {}
    if args.include_archived:
        query["include_archived"] = True
    found, token = collect(
        lambda q: raw(client.beta.agents.with_raw_response.list(**q)), query, args.limit, args.page
    )
    print_items(args, found, COLUMNS, "agents")
    next_page(token)
    return 0


def agents_show(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    query: dict[str, Any] = {"version": args.version} if args.version is not None else {}
    print_item(args, raw(client.beta.agents.with_raw_response.retrieve(args.agent_id, **query)))
    return 0


def agents_versions(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    found, token = collect(
        lambda q: raw(client.beta.agents.versions.with_raw_response.list(args.agent_id, **q)),
        {},
        args.limit,
        args.page,
    )
    print_items(args, found, COLUMNS, "versions")
    next_page(token)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("agents", help="list, inspect, create and change agents")
    sub = parser.add_subparsers(dest="agents_command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", help="agents with their latest version")
    page_flags(listing)
    listing.add_argument("--include-archived", action="store_true", help="include archived agents")
    listing.set_defaults(func=run(agents_list))
    show = sub.add_parser("show", help="one agent")
    show.add_argument("agent_id", help="the agent's id")
    show.add_argument("--version", type=int, help="a specific version (default: the latest)")
    show.set_defaults(func=run(agents_show))
    versions = sub.add_parser("versions", help="every version of one agent")
    versions.add_argument("agent_id", help="the agent's id")
    page_flags(versions)
    versions.set_defaults(func=run(agents_versions))
    for command in (listing, show, versions):
        output_flags(command)
        connection_flags(command)
    add_operations(sub, AGENTS)
