"""Connection set-up shared by the service, the CLI and the tests."""

from __future__ import annotations

import json

import asyncpg


async def init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def reset_connection(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool. asyncpg's own clean-up still runs
    first (it rolls back a transaction left open and drops listeners); exitbox keeps no other
    session state on pooled connections (no session settings, cursors, LISTEN or session advisory
    locks), so the default reset, four more statements on every release, is not needed."""


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=reset_connection,
        command_timeout=30,
        timeout=5,
    )
    assert pool is not None
    return pool
