"""One row of the benchmark table: a path measured against its baseline and its goal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Row:
    path: str
    tether: str
    baseline: str
    ratio: float | None
    """Tether over the baseline (for rates: Tether's rate over the baseline's)."""
    goal: str
    met: bool | None
    """None when the row has no goal of its own (shown for context)."""


def render(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (what the README's Benchmarks section shows)."""
    lines = ["| path | Tether | baseline | ratio | goal | met |", "|---|---:|---:|---:|---|---|"]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.path} | {row.tether} | {row.baseline} | {ratio} | {row.goal} | {met} |")
    return "\n".join(lines)


def as_json(rows: Sequence[Row]) -> str:
    return json.dumps([asdict(row) for row in rows], indent=2)
