"""The demo that moves: a synthetic morning on a virtual clock, driven through the same use cases
the API calls. Commuters order (some the night before, most on the train), kitchens finish tasks,
couriers leave and deposit, commuters open the cabinets."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from db.queries.plans import due_work
from solver.model import NetworkSpec

from .auth import Principal
from .clock import VirtualClock
from .http import Problem
from .operations import deposit, open_cabinet, run_depart, task_done
from .ordering import Ctx, place
from .schemas import ItemQty, PlaceOrder

log = logging.getLogger("exitbox.demo")
ADMIN = Principal("admin", "demo-driver", "*")


def demo_start(spec: NetworkSpec, now: datetime) -> datetime:
    """06:00 local on the next morning (today if it is still before six)."""
    tz = ZoneInfo(spec.timezone)
    local = now.astimezone(tz)
    day = local.date() if local.time() < time(6, 0) else local.date() + timedelta(days=1)
    return datetime.combine(day, time(6, 0), tzinfo=tz)


@dataclass
class _Pickup:
    order_id: str
    cabinet_id: str
    code: str
    arrival: datetime


class DemoDriver:
    def __init__(
        self, ctx: Ctx, spec: NetworkSpec, clock: VirtualClock, seed: int = 7, orders_per_hour: float = 160.0
    ) -> None:
        self.ctx = ctx
        self.spec = spec
        self.clock = clock
        self.rng = random.Random(seed)
        self.rate = orders_per_hour
        self.pickups: list[_Pickup] = []
        self.n = 0
        self.tz = ZoneInfo(spec.timezone)
        self.last = clock.now()

    def _intensity(self, t: datetime) -> float:
        """Orders per virtual minute: a rush-hour bell around 08:10."""
        local = t.astimezone(self.tz)
        m = local.hour * 60 + local.minute - (8 * 60 + 10)
        return self.rate / 60 * (0.15 + math.exp(-((m / 45) ** 2)))

    def _random_order(self, eta: datetime) -> PlaceOrder | None:
        st = self.rng.choice(self.spec.stations)
        ks = [k for k in self.spec.kitchens if st.id in k.stations]
        if not ks:
            return None
        k = self.rng.choice(ks)
        picks = self.rng.sample(k.menu, min(len(k.menu), self.rng.choice([1, 1, 2, 2, 3])))
        return PlaceOrder(
            station_id=st.id,
            kitchen_id=k.id,
            eta=eta,
            items=[ItemQty(sku=m.sku, qty=self.rng.choice([1, 1, 2])) for m in picks],
        )

    async def _place(self, eta: datetime) -> None:
        body = self._random_order(eta.replace(second=0, microsecond=0))
        if body is None:
            return
        self.n += 1
        rider = Principal("commuter", f"rider-{self.n:05d}", f"rider-{self.n:05d}")
        try:
            _, out = await place(self.ctx, rider, body, None)
        except Problem:
            return  # rejected: the commuter picks something else or walks to a bakery
        if self.rng.random() < 0.04:
            return  # a no-show
        arrival = eta + timedelta(minutes=self.rng.gauss(0.5, 1.2))
        self.pickups.append(_Pickup(out["id"], out["cabinet_id"], out["pickup_code"], arrival))

    async def seed_night_before(self, count: int = 60) -> None:
        start = self.clock.now()
        for _ in range(count):
            eta = start + timedelta(minutes=self.rng.randint(40, 200))
            await self._place(eta)

    async def step(self) -> None:
        now = self.clock.now()
        minutes = max(0.0, (now - self.last).total_seconds() / 60)
        self.last = now
        expected = self._intensity(now) * minutes
        arrivals = int(expected) + (1 if self.rng.random() < expected - int(expected) else 0)
        for _ in range(arrivals):
            await self._place(now + timedelta(minutes=self.rng.randint(35, 70)))
        await self._advance(now)

    async def _advance(self, now: datetime) -> None:
        async with self.ctx.pool.acquire() as conn:
            tasks, runs, arrived = await due_work(conn, now)
        for t in tasks:
            await task_done(self.ctx, ADMIN, t["kitchen_id"], t["id"])
        for r in runs:
            await run_depart(self.ctx, ADMIN, r["id"])
        for o in arrived:
            await deposit(self.ctx, ADMIN, o["cabinet_id"], o["id"])
        due = [p for p in self.pickups if p.arrival <= now]
        self.pickups = [p for p in self.pickups if p.arrival > now]
        for p in due:
            try:
                await open_cabinet(self.ctx, ADMIN, p.cabinet_id, p.code)
            except Problem as exc:
                if exc.status == 409 and p.arrival > now - timedelta(minutes=30):
                    self.pickups.append(_Pickup(p.order_id, p.cabinet_id, p.code, now + timedelta(minutes=2)))

    async def run(self, tick_seconds: float = 1.0) -> None:
        await self.seed_night_before()
        while True:
            try:
                await self.step()
            except Exception as exc:  # the demo keeps going through hiccups
                log.warning("demo step failed: %s", exc)
            await asyncio.sleep(tick_seconds)


def demo_links(spec: NetworkSpec, secret: str) -> list[tuple[str, str, str]]:
    from .auth import mint_token

    links = [
        (
            "Order breakfast",
            f"/app/order#token={mint_token(secret, 'commuter', 'demo-commuter')}",
            "as commuter demo-commuter",
        )
    ]
    for k in spec.kitchens:
        links.append(
            (
                f"Prep board: {k.name}",
                f"/app/kitchen/{k.id}#token={mint_token(secret, 'kitchen', k.id)}",
                f"kitchen {k.id}",
            )
        )
    for st in spec.stations:
        tok = mint_token(secret, "operator", f"operator-{st.id}", st.id)
        links.append((f"Station monitor: {st.name}", f"/app/station/{st.id}#token={tok}", f"station {st.id}"))
    return links
