"""`serve --demo`: the morning moves by itself on a virtual clock, and `/` links signed-in pages."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from aiohttp.test_utils import TestServer

from service.app import create_app
from service.auth import verify_token
from service.network_file import demo_network
from service.settings import Settings

from .conftest import SECRET


async def test_demo_orders_cook_travel_and_get_picked_up(db_url: str) -> None:
    settings = Settings(secret=SECRET, demo_speed=900, expiry_sweep_seconds=1, pool_min=1, pool_max=10)
    app = create_app(settings, db_url, SECRET, network=demo_network(), demo=True)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/")) as r:
                page = await r.text()
            links = re.findall(r'href="(/app/[^"#]+)#token=([^"]+)"', page)
            paths = {p for p, _ in links}
            assert "/app/order" in paths
            assert {f"/app/kitchen/{k.id}" for k in demo_network().kitchens} <= paths
            assert {f"/app/station/{s.id}" for s in demo_network().stations} <= paths
            for path, token in links:
                role = verify_token(SECRET, token).role
                assert (
                    role
                    == {"order": "commuter", "kitchen": "kitchen", "station": "operator"}[path.split("/")[2]]
                )
            statuses: dict[str, int] = {}
            conn = await _conn(db_url)
            try:
                for _ in range(60):  # up to 30 s of wall time; 15 s is about four virtual hours
                    await asyncio.sleep(0.5)
                    rows = await conn.fetch("select status, count(*) as n from orders group by status")
                    statuses = {r["status"]: r["n"] for r in rows}
                    if statuses.get("picked_up", 0) >= 3:
                        break
            finally:
                await conn.close()
            assert statuses.get("picked_up", 0) >= 3, statuses
            assert sum(statuses.values()) >= 20
    finally:
        await server.close()


async def _conn(dsn: str):  # type: ignore[no-untyped-def]
    import asyncpg

    return await asyncpg.connect(dsn)
