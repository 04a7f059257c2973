"""Writing back what one tool call changed in a mounted memory store (issue #19, memory mounts).

    python bench/memory_writes.py            # 200 and 2,000 files of 4 KB, SQLite

A sandbox tool call may change thousands of files in ``/mnt/memory/<store>``; the gateway
saves them with ``memories.apply_many``: one atomic rewrite of the store's index for all of
them. The baseline, in the same run and on the same disk, is one ``memories.write`` per file
(each rewrites the index), timed on the first 200 files and scaled up linearly, which flatters
it: its cost per file grows with the index.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.resources import memories, memory_stores
from gateway.schemas.memory_stores import MemoryStoreCreate, session_actor
from gateway.store import open_store

SAMPLE = 200


async def main() -> None:
    actor = session_actor("sesn_bench")
    with tempfile.TemporaryDirectory() as scratch:
        store = await open_store(f"sqlite:///{scratch}/bench.db")
        try:
            for files in (200, 2000):
                edits = [(f"/notes/f{i}.md", "x" * 4000, memories.ABSENT) for i in range(files)]
                batched = await memory_stores.create(store, MemoryStoreCreate(name="batched"))
                started = time.perf_counter()
                refused = await memories.apply_many(store, batched["id"], edits, actor)
                batch = time.perf_counter() - started
                assert not refused, refused
                single = await memory_stores.create(store, MemoryStoreCreate(name="single"))
                started = time.perf_counter()
                for path, content, expected in edits[:SAMPLE]:
                    await memories.write(
                        store, single["id"], path, content, expected_sha256=expected, actor=actor
                    )
                each = (time.perf_counter() - started) * files / SAMPLE
                print(
                    f"{files:>5} files of 4 KB: apply_many {batch:6.2f} s, "
                    f"one write each >= {each:6.1f} s  ({each / batch:.0f}x)"
                )
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
