"""``tether vault rotate-key``: re-encrypt every credential under a new master key."""

from __future__ import annotations

import os

import anyio

from gateway.config import Settings
from gateway.resources.vaults import rotate_master_key
from gateway.store import open_store
from gateway.vault.keyring import KeyRing


async def _rotate(settings: Settings) -> tuple[int, str]:
    keyring = KeyRing.load(settings.data_dir / "master.keys")
    store = await open_store(settings.database_url)
    try:
        count = await rotate_master_key(store, keyring)
    finally:
        await store.close()
    return count, keyring.active


def run_rotate(data_dir: str | None) -> int:
    if os.environ.get("TETHER_MASTER_KEY"):
        print("tether vault rotate-key: the master key comes from TETHER_MASTER_KEY; rotate it there")
        return 2
    count, active = anyio.run(_rotate, Settings.from_env(data_dir))
    print(f"re-encrypted {count} credentials under key {active}; older keys removed")
    return 0
