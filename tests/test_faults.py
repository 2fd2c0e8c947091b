"""Faults and several instances, with real servers: PostgreSQL stopped and started under the
service, and two service instances on one database."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from db.embedded import EmbeddedPostgres, ensure_database
from service.app import create_app
from service.clock import FixedClock
from service.settings import Settings

from .conftest import SECRET, TINY_MORNING, Client, tiny_network
from .test_api import order_body
from .test_concurrency import HUB, MORNING

ORDER = order_body()
DEMO_CITY = Path(__file__).resolve().parents[1] / "service" / "data" / "demo-city.yaml"


async def _serve(dsn: str, network: Any, at: Any) -> tuple[TestServer, Client]:
    clock = FixedClock(at)
    cfg = Settings(secret=SECRET, expiry_sweep_seconds=3600, pool_min=1, pool_max=30)
    app = create_app(cfg, dsn, SECRET, clock=clock, network=network, background=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, Client(aiohttp.ClientSession(), str(server.make_url("")).rstrip("/"), app, clock, dsn)


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    home = tmp_path / "pg"
    os.makedirs(home)
    os.chmod(tmp_path, 0o755)
    pg = EmbeddedPostgres(home)
    admin = pg.start()
    dsn = await ensure_database(admin, "faults")
    try:
        yield pg, dsn
    finally:
        pg.stop()


async def test_database_outage_answers_503_then_recovers_without_losing_anything(
    own_postgres: tuple[EmbeddedPostgres, str],
) -> None:
    pg, dsn = own_postgres
    server, c = await _serve(dsn, tiny_network(), TINY_MORNING)
    try:
        status, placed, _ = await c.call("POST", "/v1/orders", role="commuter", scope="ann", json=ORDER)
        assert status == 201
        await asyncio.to_thread(pg.stop)
        status, body, h = await c.call("POST", "/v1/orders", role="commuter", scope="bo", json=ORDER)
        assert status == 503, body
        assert h["Content-Type"].startswith("application/problem+json") and int(h["Retry-After"]) > 0
        assert body["type"] == "/problems/unavailable"
        status, body, h = await c.call("GET", "/readyz")
        assert status == 503 and "Retry-After" in h
        assert (await c.call("GET", "/healthz"))[0] == 200
        await asyncio.to_thread(pg.start)
        for _ in range(50):
            status, _, _ = await c.call("GET", "/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert status == 200
        for _ in range(10):  # the pool replaces its dead connections by itself
            status, again, _ = await c.call("GET", f"/v1/orders/{placed['id']}", role="commuter", scope="ann")
            if status == 200:
                break
        assert status == 200 and again["pickup_code"] == placed["pickup_code"]
        assert [e["kind"] for e in again["timeline"]] == ["placed"]
        status, _, _ = await c.call("POST", "/v1/orders", role="commuter", scope="bo", json=ORDER)
        assert status == 201
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("select count(*) from orders") == 2
            assert await conn.fetchval("select count(*) from order_events where kind = 'placed'") == 2
        finally:
            await conn.close()
    finally:
        await c.session.close()
        await server.close()


async def test_two_instances_never_over_reserve_and_share_events(db_url: str) -> None:
    from service.network_file import parse_network

    spec = parse_network(HUB, "hub.yaml")
    (sa, a), (sb, b) = await _serve(db_url, spec, MORNING), await _serve(db_url, spec, MORNING)
    try:
        seen: list[dict[str, Any]] = []

        async def listen() -> None:
            async with b.session.get(f"{b.base}/v1/events?access_token={b.token('kitchen', 'big')}") as resp:
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.3)
        eta = MORNING.replace(hour=7).isoformat()
        body = {"station_id": "hub", "kitchen_id": "big", "eta": eta, "items": [{"sku": "bun", "qty": 1}]}

        async def one(i: int) -> int:
            c = a if i % 2 else b
            status, _, _ = await c.call("POST", "/v1/orders", role="commuter", scope=f"r{i}", json=body)
            return status

        statuses = await asyncio.gather(*(one(i) for i in range(60)))
        assert statuses.count(201) == 10 and statuses.count(409) == 50
        for _ in range(50):
            if len([e for e in seen if e["kind"] == "placed"]) >= 10:
                break
            await asyncio.sleep(0.1)
        assert len([e for e in seen if e["kind"] == "placed"]) == 10  # from both instances, on B
        listener.cancel()
        conn = await asyncpg.connect(db_url)
        try:
            assert await conn.fetchval("select count(distinct slot_id) from parcels") == 10
        finally:
            await conn.close()
    finally:
        for s, c in ((sa, a), (sb, b)):
            await c.session.close()
            await s.close()


async def test_sigkill_mid_load_loses_nothing_confirmed_and_the_planner_resumes(
    own_postgres: tuple[EmbeddedPostgres, str], tmp_path: Path
) -> None:
    import random
    import signal
    import socket
    import sys
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from db.pool import init_connection
    from db.queries.plans import load_plan
    from service.ordering import WorldCache
    from solver.check import check
    from solver.model import Settings as PlannerSettings

    _, dsn = own_postgres
    exitbox = Path(sys.executable).parent / "exitbox"
    network = DEMO_CITY
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "EXITBOX_SECRET": SECRET,
        "EXITBOX_HOME": str(tmp_path / "home"),
        "EXITBOX_PLANNER_INTERVAL_SECONDS": "1",
        "EXITBOX_PLANNER_SECONDS": "0.5",
    }
    base = f"http://127.0.0.1:{port}"

    async def start() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            str(exitbox),
            "serve",
            "--port",
            str(port),
            "--network",
            str(network),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as s:
            for _ in range(150):
                try:
                    async with s.get(base + "/readyz") as r:
                        if r.status == 200:
                            return proc
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError("the service did not come up")

    from service.auth import mint_token

    proc = await start()
    acknowledged: dict[str, str] = {}
    day = (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(days=1)).date()
    stop = asyncio.Event()

    async def worker(i: int) -> None:
        rng = random.Random(i)
        token = mint_token(SECRET, "commuter", f"w{i}")
        async with aiohttp.ClientSession() as s:
            n = 0
            while not stop.is_set() and n < 200:
                n += 1
                eta = datetime(
                    day.year, day.month, day.day, 7, rng.randint(0, 59), tzinfo=ZoneInfo("Asia/Shanghai")
                )
                body = {
                    "station_id": "s03",
                    "kitchen_id": "k-dawn",
                    "eta": eta.isoformat(),
                    "items": [{"sku": rng.choice(["bun-pork", "soy-milk", "tea-egg"]), "qty": 1}],
                }
                try:
                    async with s.post(
                        base + "/v1/orders", json=body, headers={"Authorization": f"Bearer {token}"}
                    ) as r:
                        data = await r.json()
                        if r.status == 201:
                            acknowledged[data["id"]] = data["pickup_code"]
                except (aiohttp.ClientError, ValueError):
                    return  # the server went away mid-request: that order was never acknowledged

    workers = [asyncio.create_task(worker(i)) for i in range(8)]
    for _ in range(100):
        if len(acknowledged) >= 15:
            break
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    stop.set()
    await asyncio.gather(*workers)
    assert len(acknowledged) >= 15

    proc = await start()
    try:
        async with aiohttp.ClientSession() as s:
            for oid, code in acknowledged.items():
                who = None
                conn = await asyncpg.connect(dsn)
                try:
                    who = await conn.fetchval("select commuter_id from orders where id = $1", oid)
                finally:
                    await conn.close()
                assert who is not None, f"acknowledged order {oid} was lost"
                token = mint_token(SECRET, "commuter", who)
                async with s.get(
                    f"{base}/v1/orders/{oid}", headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    body = await r.json()
                    assert r.status == 200 and body["pickup_code"] == code
            # the planner is back at work
            for _ in range(50):
                async with s.get(base + "/metrics") as r:
                    text = await r.text()
                if "exitbox_planner_runs_total" in text:
                    break
                await asyncio.sleep(0.2)
            assert "exitbox_planner_runs_total" in text
        conn = await asyncpg.connect(dsn)
        await init_connection(conn)
        try:
            placed = await conn.fetchval("select count(*) from order_events where kind = 'placed'")
            orders = await conn.fetchval("select count(*) from orders")
            assert placed == orders  # no event lost or doubled, no half-written order
            _, world = await WorldCache().get(conn)
            plan = await load_plan(conn, world, list(world.kitchens))
            assert check(world, plan, PlannerSettings()) == []
        finally:
            await conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.wait()
