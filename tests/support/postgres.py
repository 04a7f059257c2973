"""Throwaway PostgreSQL databases for tests.

Each test gets its own uniquely named database, so tests never see each other's rows,
notifications or advisory locks. They live in the run's throwaway cluster
(``pg_cluster.shared_cluster``: initdb on a free loopback port, stopped at the end of the
run), never in whatever happens to listen on 127.0.0.1:5432, so the suite needs no server
set up beforehand and leaves nothing in one. ``TETHER_TEST_PG_DSN`` points elsewhere
instead (any DSN whose user may create databases; ``TETHER_TEST_POSTGRES`` is its old name).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gateway.store import open_store
from gateway.store.base import Store
from tests.support.pg_cluster import shared_cluster
from tests.support.provision import PG_DSN_ENV

CONNECT_TIMEOUT = 5.0


def admin_dsn() -> str:
    """The server databases are made in: the configured one, else the run's throwaway cluster."""
    configured = os.environ.get(PG_DSN_ENV) or os.environ.get("TETHER_TEST_POSTGRES")
    return configured or shared_cluster().dsn


async def connect_admin() -> asyncpg.Connection:
    dsn = admin_dsn()
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    pytest.fail(f"PostgreSQL is not reachable at {dsn} ({problem}).", pytrace=False)


def dsn_for(database: str) -> str:
    parts = urlsplit(admin_dsn())
    return urlunsplit(parts._replace(path="/" + database))


async def create_database() -> str:
    name = "tether_test_" + secrets.token_hex(6)
    admin = await connect_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(name: str) -> None:
    """Drop it, ending any connection a test (or a killed gateway) left behind."""
    admin = await connect_admin()
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """Create an empty database, yield its DSN, then drop it."""
    name = await create_database()
    try:
        yield dsn_for(name)
    finally:
        await drop_database(name)


@asynccontextmanager
async def empty_store(kind: str, directory: Path) -> AsyncIterator[Store]:
    """An empty, open store of ``kind``: ``sqlite`` (a file in ``directory``) or ``postgres`` (a
    fresh database), closed (and the database dropped) afterwards."""
    async with AsyncExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite://{directory}/store.db"
        else:
            url = await stack.enter_async_context(fresh_database())
        store = await open_store(url)
        stack.push_async_callback(store.close)
        yield store


@contextmanager
def fresh_database_sync() -> Iterator[str]:
    """``fresh_database`` for synchronous fixtures (gateway processes)."""
    name = asyncio.run(create_database())
    try:
        yield dsn_for(name)
    finally:
        asyncio.run(drop_database(name))
