"""File sources in a model request, sent inline.

A user can name an uploaded file in a message (``{"type": "image", "source": {"type": "file",
"file_id": ...}}``); a Tether file id means nothing to the Messages API, so just before a
request is sent each such ``image`` or ``document`` block gets the file's bytes instead: a
``base64`` source with the type sniffed from the bytes (PNG, JPEG, GIF, WebP, PDF), or a
``text`` source for plain text. Only the copy sent carries the bytes: the session log, the
request the harness measures and the one it traces keep the reference. A file that can no
longer be sent (deleted or expired since the message) becomes a text block saying so, so the
conversation goes on and the model can tell the user.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.resources import content_types, uploads
from gateway.store.base import Store

MAX_INLINE_BYTES = 32 * 1024 * 1024
"""The Messages API refuses requests over 32 MB; a file that alone exceeds it cannot be sent."""

Loader = Callable[[str, str], Awaitable[uploads.Loaded]]
"""``(file_id, block_type)`` to the file's bytes; raises ``uploads.Unavailable``."""
Block = dict[str, Any]


def loader(store: Store, data_dir: Path) -> Loader:
    directory = uploads.files_dir(data_dir)

    def load(file_id: str, block_type: str) -> Awaitable[uploads.Loaded]:
        return uploads.load(store, directory, file_id, block_type, MAX_INLINE_BYTES)

    return load


def _is_file_block(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") in ("image", "document")
        and isinstance(block.get("source"), dict)
        and block["source"].get("type") == "file"
    )


def _nested(block: Any) -> list[Any]:
    """Blocks inside a block: a tool result's content."""
    if (
        isinstance(block, dict)
        and block.get("type") == "tool_result"
        and isinstance(block.get("content"), list)
    ):
        return list(block["content"])
    return []


def has_file_blocks(request: dict[str, Any]) -> bool:
    for message in request.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if _is_file_block(block) or any(_is_file_block(inner) for inner in _nested(block)):
                    return True
    return False


def _inlined(block: Block, loaded: uploads.Loaded) -> Block:
    fields = {key: value for key, value in block.items() if key != "source" and value is not None}
    if loaded.media_type == content_types.TEXT:
        text = loaded.data.decode("utf-8").removeprefix("\ufeff")
        return {**fields, "source": {"type": "text", "media_type": content_types.TEXT, "data": text}}
    data = base64.b64encode(loaded.data).decode("ascii")
    return {**fields, "source": {"type": "base64", "media_type": loaded.media_type, "data": data}}


class _Resolver:
    """Loads and encodes each file once per request, however many blocks name it, and sends
    no more than ``MAX_INLINE_BYTES`` of files in one request: every block naming a file costs
    its encoded size (the request carries each copy), and those over the budget become notes.
    Without the budget a message naming one large file many times would cost gigabytes."""

    def __init__(self, load: Loader) -> None:
        self.load = load
        self.budget = MAX_INLINE_BYTES
        self.sources: dict[tuple[str, str], Block | str] = {}

    async def block(self, block: Any) -> Any:
        if _is_file_block(block):
            key = (str(block["source"].get("file_id", "")), str(block["type"]))
            if key not in self.sources:
                try:
                    self.sources[key] = _inlined(block, await self.load(*key))["source"]
                except uploads.Unavailable as exc:
                    self.sources[key] = str(exc)
            source = self.sources[key]
            if isinstance(source, str):
                return {"type": "text", "text": f"[{key[1]} not available: {source}]"}
            cost = len(source["data"])
            if cost > self.budget:
                return {
                    "type": "text",
                    "text": f"[{key[1]} {key[0]} not sent: the files of one request may total "
                    f"{MAX_INLINE_BYTES} bytes]",
                }
            self.budget -= cost
            fields = {name: value for name, value in block.items() if name != "source" and value is not None}
            return {**fields, "source": source}
        if _nested(block):
            return {**block, "content": [await self.block(inner) for inner in block["content"]]}
        return block


@dataclass(frozen=True)
class Uploads:
    """Where uploaded files are: what the harness needs to send them."""

    store: Store
    data_dir: Path


async def inline(request: dict[str, Any], uploads: Uploads | None) -> dict[str, Any]:
    """``request`` with every file source replaced; the same object when it has none (or when
    the harness has no ``uploads``: tests that build one by hand)."""
    if uploads is None:
        return request
    return await inline_with(request, loader(uploads.store, uploads.data_dir))


async def inline_with(request: dict[str, Any], load: Loader) -> dict[str, Any]:
    if not has_file_blocks(request):
        return request
    resolver = _Resolver(load)
    messages = []
    for message in request["messages"]:
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": [await resolver.block(block) for block in content]}
        messages.append(message)
    return {**request, "messages": messages}
