"""``tether audit verify SESSION``: check a session's hash chain straight from the database."""

from __future__ import annotations

import anyio

from gateway.config import Settings
from gateway.store import open_store
from gateway.store.chain import Verdict, verify


async def verify_session(database_url: str, session_id: str) -> Verdict:
    store = await open_store(database_url)
    try:
        return verify(session_id, await store.read_chain(session_id))
    finally:
        await store.close()


def run_verify(session_id: str, data_dir: str | None) -> int:
    settings = Settings.from_env(data_dir)
    verdict = anyio.run(verify_session, settings.database_url, session_id)
    if verdict.events == 0:
        print(f"{session_id}: no events (unknown session?)")
        return 1
    if verdict.ok:
        print(f"{session_id}: chain intact over {verdict.events} events; head {verdict.head}")
        return 0
    link = verdict.broken_at
    assert link is not None
    print(f"{session_id}: BROKEN at event {link.event_id} (seq {link.seq}): {verdict.reason}")
    return 1
