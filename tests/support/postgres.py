"""Throwaway PostgreSQL databases for tests.

Each test gets its own uniquely named database, so tests never see each other's rows,
notifications or advisory locks. CI guarantees a server on 127.0.0.1:5432 (user
``postgres``, trust auth); when it is missing the tests fail loudly instead of being
skipped, so a broken CI setup cannot pass silently. ``TETHER_TEST_POSTGRES`` points
elsewhere (any DSN whose user may create databases).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

ADMIN_DSN = os.environ.get("TETHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
CONNECT_TIMEOUT = 5.0


async def connect_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_DSN, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    pytest.fail(
        f"PostgreSQL is not reachable at {ADMIN_DSN} ({problem}). "
        "The store conformance suite needs it: start PostgreSQL on 127.0.0.1:5432 "
        "(user postgres, trust auth) or set TETHER_TEST_POSTGRES.",
        pytrace=False,
    )


def dsn_for(database: str) -> str:
    parts = urlsplit(ADMIN_DSN)
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


@contextmanager
def fresh_database_sync() -> Iterator[str]:
    """``fresh_database`` for synchronous fixtures (gateway processes)."""
    name = asyncio.run(create_database())
    try:
        yield dsn_for(name)
    finally:
        asyncio.run(drop_database(name))
