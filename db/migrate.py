"""Apply the plain SQL files of db/migrations in order, each in its own transaction.

A table records the applied files with a checksum; a session advisory lock makes sure two
processes never migrate at once (the second waits, then finds nothing left to do).
"""

from __future__ import annotations

import hashlib
from importlib import resources

import asyncpg

LOCK_KEY = 0x65786974626F78  # "exitbox"


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("db") / "migrations"
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in files]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; return the names applied now."""
    applied_now: list[str] = []
    await conn.execute("select pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(
            """create table if not exists schema_migrations (
                   filename   text primary key,
                   checksum   text not null,
                   applied_at timestamptz not null default now())"""
        )
        done = {
            r["filename"]: r["checksum"]
            for r in await conn.fetch("select filename, checksum from schema_migrations")
        }
        for name, sql in migration_files():
            digest = hashlib.sha256(sql.encode()).hexdigest()
            if name in done:
                if done[name] != digest:
                    raise RuntimeError(
                        f"migration {name} was changed after it was applied; add a new file instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "insert into schema_migrations (filename, checksum) values ($1, $2)",
                    name,
                    digest,
                )
            applied_now.append(name)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", LOCK_KEY)
    return applied_now
