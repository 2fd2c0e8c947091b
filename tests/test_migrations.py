"""Migrations on an empty database, twice, and the invariants the schema keeps by itself."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from asyncpg.types import Range

from db.embedded import with_database
from db.migrate import migrate
from db.pool import init_connection

SNAPSHOT = """
select 'col' as k, table_name || '.' || column_name || ':' || data_type || ':' || is_nullable as v
  from information_schema.columns where table_schema = 'public'
union all
select 'con', conrelid::regclass::text || ':' || conname || ':' || pg_get_constraintdef(oid)
  from pg_constraint where connamespace = 'public'::regnamespace
union all
select 'idx', indexname || ':' || indexdef from pg_indexes where schemaname = 'public'
union all
select 'mig', filename || ':' || checksum from schema_migrations
order by 1, 2
"""


MIGRATIONS = ["0001_init.sql", "0002_slot_version.sql", "0003_slots_out_of_service.sql"]


@pytest.fixture
async def empty_db(pg_admin: str) -> str:
    name = "mig_empty"
    conn = await asyncpg.connect(pg_admin)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return with_database(pg_admin, name)


async def test_migrations_apply_to_empty_database_and_twice_change_nothing(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        assert await migrate(conn) == MIGRATIONS
        before = await conn.fetch(SNAPSHOT)
        assert len(before) > 50
        assert await migrate(conn) == []
        after = await conn.fetch(SNAPSHOT)
        assert before == after
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_apply_each_file_once(empty_db: str) -> None:
    a = await asyncpg.connect(empty_db)
    b = await asyncpg.connect(empty_db)
    try:
        ra, rb = await asyncio.gather(migrate(a), migrate(b))
        assert sorted(ra + rb) == MIGRATIONS
        assert await a.fetchval("select count(*) from schema_migrations") == len(MIGRATIONS)
    finally:
        await a.close()
        await b.close()


async def _seed(conn: asyncpg.Connection) -> None:
    await conn.execute("insert into stations values ('s', 'S')")
    await conn.execute("insert into cabinets values ('c', 's', 'C')")
    await conn.execute("insert into slots (cabinet_id, label, zone, size) values ('c', 'H01', 'hot', 'M')")
    await conn.execute("insert into kitchens (id, name, doc) values ('k', 'K', '{}')")
    for oid, code in (("o1", b"same"), ("o2", b"other")):
        await conn.execute(
            """insert into orders (id, commuter_id, station_id, cabinet_id, kitchen_id, eta, items,
                                   total_cents, status, code_hash, code_sealed)
               values ($1, 'x', 's', 'c', 'k', now(), '[]', 0, 'confirmed', $2, 'v1:000000')""",
            oid,
            code,
        )


async def test_schema_refuses_double_booked_slot_and_duplicate_live_code(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    await init_connection(conn)
    try:
        await _seed(conn)
        t0 = datetime(2026, 3, 3, 7, tzinfo=UTC)
        slot = await conn.fetchval("select id from slots")
        insert = """insert into parcels (order_id, zone, size, slot_id, during, expires_at)
                    values ($1, 'hot', 'S', $2, $3, $4)"""
        await conn.execute(insert, "o1", slot, Range(t0, t0 + timedelta(minutes=20)), t0)
        with pytest.raises(asyncpg.ExclusionViolationError):
            await conn.execute(
                insert, "o2", slot, Range(t0 + timedelta(minutes=19), t0 + timedelta(minutes=30)), t0
            )
        # back to back is fine: intervals are half-open
        await conn.execute(insert, "o2", slot, Range(t0 + timedelta(minutes=20), t0 + timedelta(hours=1)), t0)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("update orders set code_hash = 'same' where id = 'o2'")
        # a code may come back once the first order is no longer live
        await conn.execute("update orders set status = 'picked_up' where id = 'o1'")
        await conn.execute("update orders set code_hash = 'same' where id = 'o2'")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("update orders set status = 'lost' where id = 'o2'")
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                insert, "nope", slot, Range(t0 + timedelta(days=1), t0 + timedelta(days=2)), t0
            )
    finally:
        await conn.close()
