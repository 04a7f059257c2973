"""``tether audit verify|head SESSION``: check a session's hash chain, offline or through the API.

Offline (the default) reads the gateway's database and never writes to it: a missing data
directory or database is a one-line error, SQLite is opened read-only and PostgreSQL in a
read-only transaction, so running it from the wrong folder creates nothing.

Online (``--gateway URL --api-key KEY``, or ``TETHER_URL``/``TETHER_API_KEY``) fetches every
event with the SDK and recomputes the chain from the bodies exactly as served; the gateway's
own verdict over its stored hashes (``/v1/tether/sessions/{id}/insights``) must agree with it.

A chain that verifies can still have lost its tail: ``--expect-head HASH`` fails unless the
chain ends at a head recorded elsewhere (``tether audit head SESSION`` prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio

from gateway.config import resolve_database_url, sqlite_path
from gateway.sessionlog.events import ADMIN_LOG
from gateway.settings import DATA_DIR, DATABASE_URL, ConfigError
from gateway.store.chain import GENESIS, ChainLink, Verdict, link_hash, verify

EVENTS_PAGE = 1000
ADMIN_PATH = "/v1/tether/admin_log"


class AuditError(Exception):
    """Verification could not run (nothing to read, no access); one line for the operator."""


# Offline: the database, read-only ------------------------------------------------------------
def _offline_links(session_id: str, data_dir: str | None) -> list[ChainLink]:
    raw_url = DATABASE_URL.read(os.environ)
    if raw_url.startswith(("postgresql://", "postgres://")):
        return anyio.run(_postgres_links, raw_url, session_id)
    root = Path(data_dir or DATA_DIR.read(os.environ)).resolve()
    if not raw_url.strip().startswith("sqlite:////") and not root.is_dir():
        raise AuditError(
            f"no data directory at {root}: pass the gateway's --data-dir, or --gateway URL to ask the API"
        )
    try:
        path = sqlite_path(resolve_database_url(raw_url, root, check_parent=False))
    except ConfigError as exc:
        raise AuditError(str(exc)) from None
    assert path is not None
    if not path.is_file():
        raise AuditError(f"no database at {path}: is this the gateway's data directory?")
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open {path} read-only: {exc}") from None
    try:
        rows = db.execute(
            "SELECT seq, id, prev_hash, hash, body FROM events WHERE session_id = ? ORDER BY seq",
            (session_id,),
        ).fetchall()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read events from {path}: {exc}") from None
    finally:
        db.close()
    return [ChainLink(seq, id_, prev, digest, json.loads(body)) for seq, id_, prev, digest, body in rows]


async def _postgres_links(dsn: str, session_id: str) -> list[ChainLink]:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, server_settings={"default_transaction_read_only": "on"}, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise AuditError(f"cannot connect to the database: {exc}") from None
    try:
        rows = await conn.fetch(
            "SELECT seq, id, prev_hash, hash, body::text AS body FROM events WHERE session_id = $1 ORDER BY seq",
            session_id,
        )
    finally:
        await conn.close()
    return [ChainLink(r["seq"], r["id"], r["prev_hash"], r["hash"], json.loads(r["body"])) for r in rows]


# Online: the API, through the SDK ------------------------------------------------------------
def _online(session_id: str, url: str, api_key: str) -> tuple[list[ChainLink], dict[str, Any]]:
    """The chain recomputed from the served events, and the gateway's verdict on its stored hashes."""
    import anthropic

    try:
        with anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=2, timeout=30) as client:
            insights: Any
            if session_id == ADMIN_LOG:
                insights = {"integrity": client.get(f"{ADMIN_PATH}/integrity", cast_to=object)}
            else:
                insights = client.get(f"/v1/tether/sessions/{session_id}/insights", cast_to=object)
            bodies: list[dict[str, Any]] = []
            page: str | None = None
            while True:
                listing: Any
                if session_id == ADMIN_LOG:
                    query = {"limit": EVENTS_PAGE, **({"page": page} if page else {})}
                    listing = client.get(ADMIN_PATH, cast_to=object, options={"params": query})
                else:
                    raw = client.beta.sessions.events.with_raw_response.list(
                        session_id, limit=EVENTS_PAGE, order="asc", page=page or anthropic.omit
                    )
                    listing = raw.http_response.json()
                bodies += listing["data"]
                page = listing.get("next_page")
                if not page:
                    break
    except anthropic.NotFoundError:
        raise AuditError(f"{session_id}: no such session at {url}") from None
    except anthropic.AuthenticationError:
        raise AuditError(f"the gateway at {url} refused the API key (--api-key or TETHER_API_KEY)") from None
    except anthropic.APIConnectionError:
        raise AuditError(f"cannot reach a gateway at {url} (--gateway or TETHER_URL)") from None
    except anthropic.APIStatusError as exc:
        raise AuditError(f"the gateway at {url} answered {exc.status_code}: {exc.message}") from None
    integrity = insights.get("integrity") if isinstance(insights, dict) else None
    if not isinstance(integrity, dict):
        raise AuditError(f"the gateway at {url} reports no chain verdict for {session_id}")
    return _recomputed(session_id, bodies), integrity


def _recomputed(session_id: str, bodies: list[dict[str, Any]]) -> list[ChainLink]:
    """The links the served bodies imply, hashed exactly as the store hashes them."""
    links, prev = [], GENESIS
    for seq, body in enumerate(bodies, start=1):
        digest = link_hash(session_id, seq, prev, body)
        links.append(ChainLink(seq, str(body.get("id")), prev, digest, body))
        prev = digest
    return links


def _online_verdict(session_id: str, url: str, api_key: str) -> Verdict:
    """The recomputed chain, once the gateway's verdict on its stored hashes agrees with it."""
    links, integrity = _online(session_id, url, api_key)
    if not integrity.get("ok"):
        broken = integrity.get("broken_at") or {}
        raise _Broken(
            f"BROKEN at event {broken.get('event_id')} (seq {broken.get('seq')}): {broken.get('reason')}"
        )
    stored = int(integrity.get("events") or 0)  # events appended since then are served too
    if stored > len(links):
        raise _Broken(f"BROKEN: the gateway stores {stored} events but serves {len(links)}")
    served_head = links[stored - 1].hash if stored else GENESIS
    if served_head != integrity.get("head"):
        raise _Broken(
            "BROKEN: the served events do not hash to the head the gateway stores "
            f"({served_head} against {integrity.get('head')})"
        )
    return verify(session_id, links)


class _Broken(Exception):
    """The chain does not hold; the message says where."""


# The commands --------------------------------------------------------------------------------
def _log_name(args: argparse.Namespace) -> str | None:
    """The log to check: a session's, or with ``--admin`` the admin audit log."""
    if args.admin == bool(args.session_id):
        return None
    return ADMIN_LOG if args.admin else str(args.session_id)


def _chain(args: argparse.Namespace) -> Verdict:
    if args.gateway:  # ``TETHER_URL`` counts only when no --data-dir was given
        if not args.api_key:
            raise AuditError("--gateway needs an API key: --api-key or TETHER_API_KEY")
        return _online_verdict(args.session_id, args.gateway.rstrip("/"), args.api_key)
    return verify(args.session_id, _offline_links(args.session_id, args.data_dir))


def _verdict_or_exit(args: argparse.Namespace) -> Verdict | int:
    log_name = _log_name(args)
    if log_name is None:
        print(
            "tether audit: name a SESSION_ID, or --admin for the admin audit log (one of the two)",
            file=sys.stderr,
        )
        return 2
    args.session_id = log_name
    if args.gateway and args.data_dir:
        print("tether audit: --gateway and --data-dir are two modes; choose one", file=sys.stderr)
        return 2
    if not args.data_dir:
        args.gateway = args.gateway or os.environ.get("TETHER_URL") or None
    try:
        verdict = _chain(args)
    except AuditError as exc:
        print(f"tether audit: {exc}", file=sys.stderr)
        return 2
    except _Broken as exc:
        print(f"{args.session_id}: {exc}")
        return 1
    if verdict.events == 0:
        print(f"{args.session_id}: no events (unknown session?)")
        return 1
    if not verdict.ok:
        link = verdict.broken_at
        assert link is not None
        print(f"{args.session_id}: BROKEN at event {link.event_id} (seq {link.seq}): {verdict.reason}")
        return 1
    return verdict


def run_verify(args: argparse.Namespace) -> int:
    verdict = _verdict_or_exit(args)
    if isinstance(verdict, int):
        return verdict
    session_id = args.session_id
    if args.expect_head and args.expect_head.strip().lower() != verdict.head:
        print(
            f"{session_id}: head {verdict.head} is not the expected {args.expect_head.strip()}: "
            f"the chain holds {verdict.events} events, intact, but its tail was removed, "
            "rewritten or extended since that head was recorded"
        )
        return 1
    anchored = "; matches the expected head" if args.expect_head else ""
    print(f"{session_id}: chain intact over {verdict.events} events; head {verdict.head}{anchored}")
    return 0


def run_head(args: argparse.Namespace) -> int:
    verdict = _verdict_or_exit(args)
    if isinstance(verdict, int):
        return verdict
    print(verdict.head)
    return 0


def add_commands(commands: Any) -> None:
    """``verify`` and ``head`` under ``tether audit``."""
    for name, run, summary in (
        ("verify", run_verify, "verify a session's hash chain (offline, or through the API with --gateway)"),
        ("head", run_head, "print a session's verified chain head, to record somewhere else"),
    ):
        command = commands.add_parser(name, help=summary, description=__doc__)
        command.add_argument("session_id", nargs="?", help="the session whose log to check")
        command.add_argument(
            "--admin", action="store_true", help="check the admin audit log instead (who changed what)"
        )
        command.add_argument(
            "--data-dir",
            default=None,
            help="the gateway's data directory (default TETHER_DATA_DIR or .tether)",
        )
        command.add_argument(
            "--gateway",
            default=None,
            help="verify through this gateway's API instead (or TETHER_URL, without --data-dir)",
        )
        command.add_argument("--api-key", default=os.environ.get("TETHER_API_KEY"), help="or TETHER_API_KEY")
        if name == "verify":
            command.add_argument(
                "--expect-head",
                default=None,
                help="fail unless the chain ends at this hash (from `tether audit head`)",
            )
        command.set_defaults(func=lambda parsed, run=run: sys.exit(run(parsed)))
