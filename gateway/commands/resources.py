"""Generic ``list/show/create/update/archive/delete`` commands for one API resource.

A :class:`Resource` says where the resource lives (an SDK accessor, or a Tether-only path
reached through the SDK client's raw ``get/post/delete``), its table columns and its
creation flags; :func:`register` turns it into subcommands. Responses print as the gateway
sent them, minus anything secret.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import anthropic

from gateway.commands.client import connection_flags, raw, run
from gateway.commands.errors import CommandError
from gateway.commands.output import Column, next_page, output_flags, page_flags, print_item, print_items

ALL = ("list", "show", "create", "update", "archive", "delete")
SECRET_KEYS = frozenset({"token", "access_token", "refresh_token", "client_secret", "value", "secret_value"})


@dataclass(frozen=True)
class Flag:
    """A creation/update flag: ``--option VALUE`` sets ``field`` of the body (dots nest)."""

    option: str
    field: str
    help: str
    kind: str = "str"  # str | int | json | list (repeatable) | metadata (repeatable KEY=VALUE)
    build: Callable[[Any], dict[str, Any]] | None = None
    """Instead of ``field``: the part of the body this value makes (e.g. a transport)."""


@dataclass(frozen=True)
class Resource:
    name: str
    noun: str
    help: str
    columns: Sequence[Column]
    sdk: Callable[[anthropic.Anthropic], Any] | None = None
    path: str = ""
    """Raw route for Tether-only resources, e.g. ``/v1/tether/webhooks``."""
    operations: Sequence[str] = ALL
    flags: Sequence[Flag] = ()
    required: Sequence[str] = ()
    """Body fields ``create`` needs, from flags or ``--file``."""
    parent: str | None = None
    """``vault`` for credentials: a ``VAULT_ID`` argument, sent as ``vault_id``."""
    redact: bool = False
    update_flags: Sequence[Flag] | None = None
    extra: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = field(default=None)


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], resource: Resource
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = commands.add_parser(resource.name, help=resource.help, description=resource.help)
    sub = parser.add_subparsers(dest=f"{resource.name}_command", required=True, metavar="COMMAND")
    add_operations(sub, resource)
    return sub


def add_operations(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    resource: Resource,
    only: Sequence[str] | None = None,
) -> None:
    noun, parent = resource.noun, resource.parent
    for operation in only or resource.operations:
        if operation not in resource.operations:
            continue
        helps = {
            "list": f"list {noun}s",
            "show": f"show one {noun}",
            "create": f"create a {noun} from flags and/or --file",
            "update": f"update a {noun} from flags and/or --file",
            "archive": f"archive a {noun} (kept, but no longer usable)",
            "delete": f"delete a {noun}",
        }
        cmd = sub.add_parser(operation, help=helps[operation], description=helps[operation])
        if parent:
            cmd.add_argument(f"{parent}_id", metavar=f"{parent.upper()}_ID", help=f"the {parent}'s id")
        if operation != "create" and operation != "list":
            cmd.add_argument("id", metavar=f"{noun.upper().replace(' ', '_')}_ID", help=f"the {noun}'s id")
        if operation == "list":
            page_flags(cmd)
            cmd.add_argument("--include-archived", action="store_true", help="include archived ones")
        if operation in ("create", "update"):
            flags = (
                resource.flags
                if operation == "create" or resource.update_flags is None
                else resource.update_flags
            )
            for flag in flags:
                repeat = flag.kind in ("list", "metadata")
                cmd.add_argument(
                    flag.option,
                    dest=_dest(flag),
                    action="append" if repeat else "store",
                    type=int if flag.kind == "int" else str,
                    help=flag.help + (" (repeatable)" if repeat else ""),
                )
            cmd.add_argument(
                "--file",
                "-f",
                dest="body_file",
                help="a JSON or YAML file with the request body; flags override its fields",
            )
            cmd.set_defaults(flags=flags)
        output_flags(cmd)
        connection_flags(cmd)
        cmd.set_defaults(func=run(_handler(resource, operation)))


def _dest(flag: Flag) -> str:
    return "flag_" + flag.option.lstrip("-").replace("-", "_")


def _handler(resource: Resource, operation: str) -> Callable[[argparse.Namespace, anthropic.Anthropic], int]:
    def handle(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
        if operation == "list":
            query: dict[str, Any] = {}
            if args.include_archived:
                query["include_archived"] = True
            items, token = collect(
                lambda q: call(resource, client, args, "list", query=q), query, args.limit, args.page
            )
            print_items(
                args, [scrub(resource, item) for item in items], resource.columns, f"{resource.noun}s"
            )
            next_page(token)
            return 0
        body = build_body(args, resource, operation) if operation in ("create", "update") else None
        print_item(args, scrub(resource, call(resource, client, args, operation, body=body)))
        return 0

    return handle


def collect(
    fetch: Callable[[dict[str, Any]], Any],
    query: dict[str, Any],
    limit: int,
    page: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Follow ``next_page`` until ``limit`` items; returns them and the next cursor.

    Each request asks only for the items still wanted, so every page ends on a server page
    boundary and the cursor resumes exactly after the last item returned: nothing fetched is
    dropped. Filtering belongs in ``query`` (the server's), never here, for the same reason."""
    found: list[dict[str, Any]] = []
    token = page
    while len(found) < limit:
        request = {**query, "limit": min(limit - len(found), 100)}
        if token:
            request["page"] = token
        body = fetch(request)
        found += body["data"]
        token = body.get("next_page")
        if not token:
            break
    return found, token


def call(
    resource: Resource,
    client: anthropic.Anthropic,
    args: argparse.Namespace,
    operation: str,
    *,
    query: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """One API call, through the SDK when it has the resource, else the raw route."""
    parent_id = getattr(args, f"{resource.parent}_id") if resource.parent else None
    item_id = getattr(args, "id", None)
    if resource.sdk is None:
        base = resource.path.format(parent=parent_id)
        target = f"{base}/{item_id}" if item_id else base
        if operation == "list":
            return client.get(base, cast_to=object, options={"params": query or {}})
        if operation == "show":
            return client.get(target, cast_to=object)
        if operation == "delete":
            return client.delete(target, cast_to=object)
        suffix = "/archive" if operation == "archive" else ""
        return client.post(target + suffix, cast_to=object, body=body or {})
    method = getattr(resource.sdk(client).with_raw_response, {"show": "retrieve"}.get(operation, operation))
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    if item_id:
        positional.append(item_id)
        if parent_id:
            keywords[f"{resource.parent}_id"] = parent_id
    elif parent_id:
        positional.append(parent_id)
    if operation == "list":
        keywords["extra_query"] = query or {}
    if body is not None:
        known = set(inspect.signature(method).parameters)
        keywords.update({k: v for k, v in body.items() if k in known})
        keywords["extra_body"] = {k: v for k, v in body.items() if k not in known}
    return raw(method(*positional, **keywords))


def build_body(args: argparse.Namespace, resource: Resource, operation: str) -> dict[str, Any]:
    body: dict[str, Any] = load_body(args.body_file) if args.body_file else {}
    for flag in args.flags:
        value = getattr(args, _dest(flag))
        if value is None:
            continue
        if flag.kind == "json":
            value = _parse_json(flag.option, value)
        elif flag.kind == "metadata":
            value = dict(_pair(flag.option, item) for item in value)
        if flag.build is not None:
            _merge(body, flag.build(value))
        else:
            _merge(body, _nested(flag.field, value))
    if operation == "create":
        missing = [name for name in resource.required if name not in body]
        if missing:
            options = {f.field: f.option for f in resource.flags}
            named = ", ".join(options.get(name, name) for name in missing)
            raise CommandError(f"{resource.noun} create: missing {named} (a flag, or the field in --file)")
    elif not body:
        raise CommandError(f"{resource.noun} update: nothing to change: give a flag or --file")
    return body


def load_body(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        loaded = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        raise CommandError(f"{path}{where}: not valid YAML: {exc.problem or exc.context}") from None
    if not isinstance(loaded, dict):
        raise CommandError(f"{path}: expected an object (a JSON object or YAML mapping)")
    return loaded


def _parse_json(option: str, value: str) -> Any:
    if value.startswith("@"):
        return load_body(value[1:])
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{option}: not valid JSON: {exc}") from None


def _pair(option: str, item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise CommandError(f"{option}: expected KEY=VALUE, got {item!r}")
    return key, value


def _nested(path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: dict[str, Any] = {last: value}
    for name in reversed(parents):
        node = {name: node}
    return node


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def scrub(resource: Resource, item: Any) -> Any:
    """Drop secret values (vault credentials are write-only; a gateway should not echo them)."""
    if not resource.redact:
        return item
    if isinstance(item, dict):
        return {k: "[redacted]" if k in SECRET_KEYS else scrub(resource, v) for k, v in item.items()}
    if isinstance(item, list):
        return [scrub(resource, v) for v in item]
    return item


def env_secret(name: str) -> str:
    """A secret named by an environment variable, so it never appears in ``ps`` or shell history."""
    value = os.environ.get(name)
    if not value:
        raise CommandError(f"environment variable {name} is not set (it should hold the secret)")
    return value
