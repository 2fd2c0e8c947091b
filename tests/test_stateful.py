"""Hypothesis drives place / change eta / cancel / cook / depart / deposit / open / expire in random
orders against the real service and PostgreSQL, and checks after every step that the stored plan
passes solver.check and that no slot or pickup code is double-booked."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from db.embedded import with_database
from db.pool import init_connection
from db.queries.plans import due_work, load_plan
from service.api.keys import CTX
from service.app import create_app
from service.clock import FixedClock
from service.operations import sweep_expired
from service.ordering import WorldCache
from service.settings import Settings as ServiceSettings
from solver.check import check
from solver.model import Settings as PlannerSettings

from .conftest import SECRET, TEMPLATE, TINY_MORNING, Client, tiny_network

_names = itertools.count()
SKUS = ["croissant", "egg-roll", "juice", "bread"]


class ServiceMachine(RuleBasedStateMachine):
    admin_uri = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.orders: dict[str, dict[str, Any]] = {}
        self.run(self._start())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        self.db = f"st_{next(_names)}"
        conn = await asyncpg.connect(self.admin_uri)
        await conn.execute(f'create database "{self.db}" template "{TEMPLATE}"')
        await conn.close()
        dsn = with_database(self.admin_uri, self.db)
        self.clock = FixedClock(TINY_MORNING)
        cfg = ServiceSettings(
            secret=SECRET,
            expiry_sweep_seconds=3600,
            pool_min=1,
            pool_max=5,
            orders_per_minute=100_000,
            # opening with the code of an order no longer live is a wrong code; the virtual clock
            # stands still, so five of them would lock the keypad (tested in test_api)
            code_attempts_per_minute=1000,
        )
        self.app = create_app(cfg, dsn, SECRET, clock=self.clock, network=tiny_network(), background=False)
        self.server = TestServer(self.app, host="127.0.0.1")
        await self.server.start_server()
        self.c = Client(
            aiohttp.ClientSession(), str(self.server.make_url("")).rstrip("/"), self.app, self.clock, dsn
        )

    def teardown(self) -> None:
        async def stop() -> None:
            await self.c.session.close()
            await self.server.close()
            conn = await asyncpg.connect(self.admin_uri)
            await conn.execute(f'drop database if exists "{self.db}" with (force)')
            await conn.close()

        self.run(stop())
        self.loop.close()

    # ------------------------------------------------------------------ rules

    @rule(
        station=st.sampled_from(["north", "south"]),
        minutes=st.integers(20, 200),
        skus=st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True),
        qty=st.integers(1, 3),
    )
    def place(self, station: str, minutes: int, skus: list[str], qty: int) -> None:
        who = f"c{len(self.orders)}"
        eta = (self.clock.now() + timedelta(minutes=minutes)).replace(second=0, microsecond=0)
        body = {
            "station_id": station,
            "kitchen_id": "bakery",
            "eta": eta.isoformat(),
            "items": [{"sku": s, "qty": qty} for s in skus],
        }
        status, resp, _ = self.run(self.c.call("POST", "/v1/orders", role="commuter", scope=who, json=body))
        assert status in (201, 409), resp
        if status == 201:
            self.orders[resp["id"]] = {"who": who, "code": resp["pickup_code"], "cabinet": resp["cabinet_id"]}
        else:
            assert resp["reason"] in (
                "no-kitchen-capacity",
                "no-courier-capacity",
                "no-cabinet-capacity",
                "too-late",
                "closed",
            )

    def _pick(self, i: int) -> tuple[str, dict[str, Any]] | None:
        if not self.orders:
            return None
        oid = sorted(self.orders)[i % len(self.orders)]
        return oid, self.orders[oid]

    @rule(i=st.integers(0, 1000), delta=st.sampled_from([-15, -5, 5, 10, 30]))
    def change_eta(self, i: int, delta: int) -> None:
        got = self._pick(i)
        if got is None:
            return
        oid, o = got
        status, body, _ = self.run(self.c.call("GET", f"/v1/orders/{oid}", role="commuter", scope=o["who"]))
        from datetime import datetime

        eta = datetime.fromisoformat(body["eta"]) + timedelta(minutes=delta)
        status, resp, _ = self.run(
            self.c.call(
                "PATCH", f"/v1/orders/{oid}", role="commuter", scope=o["who"], json={"eta": eta.isoformat()}
            )
        )
        assert status in (200, 409), resp
        if status == 200:
            assert resp["pickup_code"] == o["code"]
            o["cabinet"] = resp["cabinet_id"]

    @rule(i=st.integers(0, 1000))
    def cancel(self, i: int) -> None:
        got = self._pick(i)
        if got is None:
            return
        oid, o = got
        status, resp, _ = self.run(
            self.c.call("POST", f"/v1/orders/{oid}/cancel", role="commuter", scope=o["who"])
        )
        assert status in (200, 409), resp

    @rule(minutes=st.integers(1, 25))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes)

    @rule()
    def kitchen_works(self) -> None:
        """Tasks that have ended are reported done, runs due leave, arrived orders are deposited."""

        async def work() -> None:
            now = self.clock.now()
            conn = await asyncpg.connect(self.c.dsn)
            try:
                tasks, runs, arrived = await due_work(conn, now)
            finally:
                await conn.close()
            for t in tasks:
                s, b, _ = await self.c.call(
                    "POST", f"/v1/kitchens/bakery/tasks/{t['id']}/done", role="kitchen", scope="bakery"
                )
                assert s == 200, b
            for r in runs:
                s, b, _ = await self.c.call(
                    "POST", f"/v1/runs/{r['id']}/depart", role="kitchen", scope="bakery"
                )
                assert s == 200, b
            for o in arrived:
                s, b, _ = await self.c.call(
                    "POST",
                    f"/v1/cabinets/{o['cabinet_id']}/deposit",
                    role="kitchen",
                    scope="bakery",
                    json={"order_id": o["id"]},
                )
                assert s == 200, b

        self.run(work())

    @rule(i=st.integers(0, 1000))
    def commuter_opens(self, i: int) -> None:
        got = self._pick(i)
        if got is None:
            return
        _, o = got
        status, resp, _ = self.run(
            self.c.call(
                "POST",
                f"/v1/cabinets/{o['cabinet']}/open",
                role="cabinet",
                scope=o["cabinet"],
                json={"code": o["code"]},
            )
        )
        assert status in (200, 403, 409), resp  # 403: no longer live (picked up, expired, cancelled)

    @rule()
    def expiry_sweep(self) -> None:
        self.run(sweep_expired(self.app[CTX]))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def plan_passes_the_checker_and_nothing_is_double_booked(self) -> None:
        async def verify() -> None:
            conn = await asyncpg.connect(self.c.dsn)
            await init_connection(conn)
            try:
                _, world = await WorldCache().get(conn)
                plan = await load_plan(conn, world, list(world.kitchens))
                violations = check(world, plan, PlannerSettings())
                assert violations == [], [str(v) for v in violations]
                clash = await conn.fetchval(
                    """select count(*) from parcels p join parcels q on p.slot_id = q.slot_id and p.id < q.id
                        and p.during && q.during where p.state <> 'released' and q.state <> 'released'"""
                )
                assert clash == 0
                dup = await conn.fetchval(
                    """select count(*) from (select cabinet_id, code_hash from orders
                        where status in ('confirmed', 'cooking', 'on_the_way', 'in_cabinet')
                        group by 1, 2 having count(*) > 1) x"""
                )
                assert dup == 0
            finally:
                await conn.close()

        self.run(verify())


@pytest.fixture
def machine(pg_admin: str, template_db: str) -> type[ServiceMachine]:
    ServiceMachine.admin_uri = pg_admin
    return ServiceMachine


def test_random_operations_keep_the_plan_valid(machine: type[ServiceMachine]) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=15, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
