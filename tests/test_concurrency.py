"""Concurrency is settled in the database: many placements at once never over-reserve."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from service.network_file import parse_network

from .conftest import Client, make_client

HUB = """
city: Rush Hour
timezone: Asia/Shanghai
stations:
  - id: hub
    name: Hub
    cabinets:
      - id: hub-a
        name: Exit A
        slots:
          - {zone: hot, size: M, count: 10}
          - {zone: chilled, size: M, count: 4}
kitchens:
  - id: big
    name: Big Kitchen
    open: "05:00"
    close: "11:00"
    resources:
      - {id: steamer, capacity: 200}
      - {id: pack, capacity: 200}
    pack: {resource: pack, minutes: 1}
    couriers: 100
    run_capacity: 500
    stations: {hub: 5}
    menu:
      - {sku: bun, name: Bun, price_cents: 100, zone: hot, size: S, max_hold_minutes: 60,
         steps: [{resource: steamer, minutes: 10, batch: 1000}]}
"""
MORNING = datetime(2026, 3, 3, 6, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


async def test_200_orders_at_once_never_reserve_more_than_10_hot_slots(db_url: str) -> None:
    spec = parse_network(HUB, "hub.yaml")
    eta = (MORNING + timedelta(hours=1)).isoformat()
    async for c in make_client(db_url, spec, MORNING):
        await _storm(c, eta)


async def _storm(c: Client, eta: str) -> None:
    body = {"station_id": "hub", "kitchen_id": "big", "eta": eta, "items": [{"sku": "bun", "qty": 1}]}

    async def one(i: int) -> tuple[int, str]:
        status, resp, _ = await c.call("POST", "/v1/orders", role="commuter", scope=f"c{i}", json=body)
        return status, resp.get("reason", "") if isinstance(resp, dict) else ""

    results = await asyncio.gather(*(one(i) for i in range(200)))
    statuses = [s for s, _ in results]
    assert statuses.count(201) == 10, statuses
    assert statuses.count(409) == 190
    assert {r for s, r in results if s == 409} == {"no-cabinet-capacity"}
    conn = await c.conn()
    try:
        live = await conn.fetchval("select count(*) from orders where status = 'confirmed'")
        assert live == 10
        # at no moment do more than 10 parcels hold the hot zone
        peak = await conn.fetchval(
            """select max(n) from (
                 select count(*) as n from parcels p, parcels q
                  where p.during && q.during and p.zone = 'hot' and q.zone = 'hot'
                    and lower(q.during) <= lower(p.during) and p.during @> lower(p.during)
                    and q.during @> lower(p.during)
                  group by p.id) x"""
        )
        assert peak <= 10
        slots = await conn.fetchval("select count(distinct slot_id) from parcels")
        assert slots == 10
        codes = await conn.fetchval("select count(distinct code_hash) from orders")
        assert codes == 10
    finally:
        await conn.close()


async def test_a_burst_is_written_in_batches_and_keyed_retries_in_one_batch_get_one_order(
    db_url: str,
) -> None:
    """Placements for one kitchen that arrive together share transactions; two requests with the
    same Idempotency-Key in the same burst still make one order, and a different body under that key
    is refused."""
    from service.api.keys import CTX

    spec = parse_network(HUB, "hub.yaml")
    eta = (MORNING + timedelta(hours=1)).isoformat()
    body = {"station_id": "hub", "kitchen_id": "big", "eta": eta, "items": [{"sku": "bun", "qty": 1}]}
    other = {**body, "items": [{"sku": "bun", "qty": 2}]}
    async for c in make_client(db_url, spec, MORNING):
        placements = c.app[CTX].placements

        async def one(scope: str, key: str | None, b: dict, c: Client = c) -> tuple[int, dict]:
            headers = {"Idempotency-Key": key} if key else None
            status, resp, _ = await c.call(
                "POST", "/v1/orders", role="commuter", scope=scope, json=b, headers=headers
            )
            return status, resp

        calls = [one(f"u{i}", None, body) for i in range(6)]
        calls += [one("twice", "k1", body), one("twice", "k1", body), one("twice", "k1", other)]
        results = await asyncio.gather(*calls)
        assert placements.requests >= 9 and placements.batches < placements.requests
        plain = results[:6]
        assert [s for s, _ in plain].count(201) == 6
        keyed = results[6:]
        # whichever body came first under the key made the order; the same body again gets it back
        ok = [r for s, r in keyed if s == 201]
        assert len({(r["id"], r["pickup_code"]) for r in ok}) == 1
        assert sorted(s for s, _ in keyed) in ([201, 201, 422], [201, 422, 422])
        conn = await c.conn()
        try:
            assert await conn.fetchval("select count(*) from orders") == 7
            assert await conn.fetchval("select count(*) from orders where commuter_id = 'twice'") == 1
            assert await conn.fetchval("select count(distinct code_hash) from orders") == 7
            placed = await conn.fetchval("select count(*) from order_events where kind = 'placed'")
            assert placed == 7
        finally:
            await conn.close()
