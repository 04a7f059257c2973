"""Storage backends behind one ``Store`` protocol (see ``base``), chosen by URL."""

from __future__ import annotations

from gateway.store.base import Store


async def open_store(url: str) -> Store:
    """Open the store a URL names: ``postgresql://`` or ``postgres://`` for PostgreSQL,
    ``sqlite:///abs/path.db`` or a plain filesystem path for SQLite.

    Backends are imported here so that a SQLite deployment never loads asyncpg.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return await PostgresStore.connect(url)
    if url.startswith("sqlite://"):
        rest = url.removeprefix("sqlite://")
        if not rest.startswith("/"):
            raise ValueError(f"sqlite URL needs an absolute path (sqlite:///abs/path.db): {url!r}")
        # sqlite:////abs/path.db (SQLAlchemy's spelling, and what f"sqlite:///{abs_path}" gives) too.
        path = "/" + rest.lstrip("/")
    elif "://" in url:
        raise ValueError(f"unsupported store URL scheme: {url!r}")
    else:
        path = url
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(path)
