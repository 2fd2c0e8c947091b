"""Shared fixtures: one embedded PostgreSQL per test session, a migrated template database cloned
for every test, and the service on a real localhost port with a clock the test moves."""

from __future__ import annotations

import gc
import itertools
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from db.embedded import EmbeddedPostgres, with_database
from db.migrate import migrate
from db.pool import init_connection
from service.app import create_app
from service.auth import mint_token
from service.clock import FixedClock
from service.network_file import demo_network, read_network
from service.settings import Settings
from solver.model import NetworkSpec

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = Path(__file__).resolve().parent / "data"
SECRET = "test-secret-0123456789abcdef-0123456789"
TEMPLATE = "exitbox_template"
_counter = itertools.count()


def tiny_network() -> NetworkSpec:
    return read_network(EXAMPLES / "tiny-network.yaml")


@pytest.fixture(scope="session")
def pg_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("EXITBOX_TEST_DATABASE_URL")
    if url:
        yield url
        return
    home = tmp_path_factory.mktemp("pg")
    os.chmod(home, 0o755)
    server = EmbeddedPostgres(home)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uri = server.start()
    try:
        yield uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def template_db(pg_admin: str) -> str:
    conn = await asyncpg.connect(pg_admin)
    try:
        await conn.execute(f'drop database if exists "{TEMPLATE}"')
        await conn.execute(f'create database "{TEMPLATE}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(with_database(pg_admin, TEMPLATE))
    try:
        await init_connection(conn)
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE


@pytest.fixture
async def db_url(pg_admin: str, template_db: str) -> AsyncIterator[str]:
    """A fresh migrated database for one test."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    conn = await asyncpg.connect(pg_admin)
    try:
        await conn.execute(f'create database "{name}" template "{template_db}"')
    finally:
        await conn.close()
    yield with_database(pg_admin, name)
    conn = await asyncpg.connect(pg_admin)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


class Client:
    """Real HTTP against the service, with tokens minted like `exitbox token` does."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, app: Any, clock: FixedClock, dsn: str
    ) -> None:
        self.session = session
        self.base = base
        self.app = app
        self.clock = clock
        self.dsn = dsn

    def token(self, role: str, scope: str, subject: str | None = None) -> str:
        return mint_token(SECRET, role, subject or scope, scope)

    def auth(self, role: str, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, scope)}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        role: str | None = None,
        scope: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        h = dict(headers or {})
        if role is not None:
            h.update(self.auth(role, scope or "x"))
        async with self.session.request(method, self.base + path, json=json, headers=h, data=data) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json(content_type=None) if "json" in ctype else await resp.text()
            return resp.status, body, resp.headers

    async def conn(self) -> asyncpg.Connection:
        c = await asyncpg.connect(self.dsn)
        await init_connection(c)
        return c


async def make_client(dsn: str, network: NetworkSpec, at: datetime, **settings: Any) -> AsyncIterator[Client]:
    clock = FixedClock(at)
    cfg = Settings(secret=SECRET, expiry_sweep_seconds=3600, pool_min=1, pool_max=30, **settings)
    app = create_app(cfg, dsn, SECRET, clock=clock, network=network, background=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Client(session, str(server.make_url("")).rstrip("/"), app, clock, dsn)
    await server.close()


TINY_MORNING = datetime(2026, 3, 3, 6, 0, tzinfo=ZoneInfo("Europe/Berlin"))
DEMO_MORNING = datetime(2026, 3, 3, 5, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


@pytest.fixture
async def tiny(db_url: str) -> AsyncIterator[Client]:
    async for c in make_client(db_url, tiny_network(), TINY_MORNING):
        yield c


@pytest.fixture
async def demo(db_url: str) -> AsyncIterator[Client]:
    async for c in make_client(db_url, demo_network(), DEMO_MORNING):
        yield c


async def cycles_left_by(work: Callable[[], Awaitable[None]]) -> int:
    """How many objects in reference cycles ``work`` leaves for the full collection to free (the
    collector is off while it runs, and what was there before is collected first)."""
    gc.collect()
    gc.disable()
    try:
        await work()
        return gc.collect()
    finally:
        gc.enable()
