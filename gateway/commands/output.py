"""How client commands print: ``--output table|json|yaml`` (``--json`` for short) on every one.

Lists print as a table, JSON lines (one object a line, for ``jq`` and ``grep``) or one YAML
document; single objects as field/value lines, indented JSON or YAML.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import IO, Any

import yaml

Column = tuple[str, Callable[[dict[str, Any]], Any]]
"""A table column: its heading and how to get the cell from a raw object."""


def output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="print a table (default), JSON (one object a line for lists) or YAML",
    )
    parser.add_argument(
        "--json", dest="output", action="store_const", const="json", help="short for --output json"
    )


def json_line(value: Any, out: IO[str] | None = None) -> None:
    (out or sys.stdout).write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")


def print_items(
    args: argparse.Namespace, items: list[dict[str, Any]], columns: Sequence[Column], noun: str
) -> None:
    if args.output == "json":
        for item in items:
            json_line(item)
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(items, sort_keys=False, allow_unicode=True))
    elif not items:
        print(f"no {noun}")
    else:
        rows = [[heading for heading, _ in columns]]
        rows += [[cell(get(item)) for _, get in columns] for item in items]
        table(rows)


def print_item(args: argparse.Namespace, item: Any) -> None:
    if args.output == "json":
        print(json.dumps(item, indent=2, ensure_ascii=False))
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(item, sort_keys=False, allow_unicode=True))
    elif isinstance(item, dict):
        width = max((len(key) for key in item), default=0)
        for key, value in item.items():
            print(f"{key.ljust(width)}  {cell(value)}".rstrip())
    else:
        print(cell(item))


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def table(rows: Sequence[Sequence[str]], out: IO[str] | None = None) -> None:
    stream = out or sys.stdout
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        stream.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{value / 3600:.1f}h"


def clock(stamp: str | None) -> str:
    if not stamp:
        return ""
    try:
        return datetime.fromisoformat(stamp).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return stamp


def page_flags(parser: argparse.ArgumentParser, default_limit: int = 50) -> None:
    """``--limit`` and ``--page``/``--after`` for a listing; ``next_page`` prints the cursor to resume."""
    parser.add_argument(
        "--limit", type=int, default=default_limit, help=f"at most this many (default {default_limit})"
    )
    parser.add_argument(
        "--page", "--after", dest="page", help="start at this cursor (printed as `more: --page ...`)"
    )


def next_page(token: str | None) -> None:
    """The cursor of the next page, on stderr so JSON on stdout stays clean."""
    if token:
        print(f"more: --page {token}", file=sys.stderr)
