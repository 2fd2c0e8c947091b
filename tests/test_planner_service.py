"""The service's background planner: re-plans a kitchen from the database, commits only a checked,
better plan made on fresh data, and never loses an order or a code."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from db.queries.plans import load_plan
from service.api.keys import CTX
from service.ordering import WorldCache
from service.planner import replan_kitchen
from solver.check import check
from solver.model import Settings as PlannerSettings

from .conftest import DEMO_MORNING, Client


async def _place(
    c: Client, who: str, station: str, minutes: int, sku: str = "soy-milk", kitchen: str = "k-dawn"
) -> dict:
    eta = (DEMO_MORNING + timedelta(minutes=minutes)).isoformat()
    status, body, _ = await c.call(
        "POST",
        "/v1/orders",
        role="commuter",
        scope=who,
        json={"station_id": station, "kitchen_id": kitchen, "eta": eta, "items": [{"sku": sku, "qty": 1}]},
    )
    assert status == 201, body
    return body


# two orders this many minutes apart get a run each from admission (beyond its join window, 4
# minutes) and one run from the optimizer (the hold costs less than a second courier trip, W_RUN 10)
MERGEABLE_APART = 6


async def _runs(c: Client, kitchen: str = "k-dawn") -> list:
    """A kitchen's stored runs by departure: id, depart_at and the orders they carry (every run,
    one without orders too)."""
    conn = await c.conn()
    try:
        return await conn.fetch(
            """select r.id, r.depart_at, array_remove(array_agg(o.order_id), null) as orders
                 from runs r left join run_orders o on o.run_id = r.id
                where r.kitchen_id = $1 group by r.id order by r.depart_at, r.id""",
            kitchen,
        )
    finally:
        await conn.close()


async def test_planner_merges_runs_and_commits_a_checked_plan(demo: Client) -> None:
    a = await _place(demo, "a", "s03", 120)
    b = await _place(demo, "b", "s03", 120 + MERGEABLE_APART)
    assert len(await _runs(demo)) == 2
    ctx = demo.app[CTX]
    out = await replan_kitchen(ctx, "k-dawn", 2.0)
    assert out.result == "committed", out
    assert len(await _runs(demo)) == 1  # one courier trip now carries both
    conn = await demo.conn()
    try:
        _, world = await WorldCache().get(conn)
        plan = await load_plan(conn, world, ["k-dawn"])
        assert check(world, plan, PlannerSettings()) == []
        assert set(plan.orders) == {a["id"], b["id"]}
        kinds = [
            r["kind"] for r in await conn.fetch("select kind from order_events where order_id = $1", b["id"])
        ]
        assert "replanned" in kinds
    finally:
        await conn.close()
    for who, placed in (("a", a), ("b", b)):
        _, body, _ = await demo.call("GET", f"/v1/orders/{placed['id']}", role="commuter", scope=who)
        assert body["status"] == "confirmed" and body["pickup_code"] == placed["pickup_code"]
    # nothing left to gain: the next round changes nothing
    again = await replan_kitchen(ctx, "k-dawn", 2.0)
    assert again.result in ("no-better", "nothing")


async def test_planner_counts_before_it_loads_a_kitchen_whose_orders_are_all_further_ahead(
    demo: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders for the next morning are past the planner's horizon: a round says there is nothing to
    move from a count, without loading the kitchen's plan onto the event loop (0.2-0.3 s of CPU at
    4,000 orders, every round). Orders due within the horizon are still loaded and re-planned."""
    import service.planner

    loads: list[str] = []
    real = service.planner.load_kitchen_plan

    async def load(*args: Any) -> Any:
        loads.append(args[2])
        return await real(*args)

    monkeypatch.setattr(service.planner, "load_kitchen_plan", load)
    ctx = demo.app[CTX]
    for who, minutes in (("a", 24 * 60 + 120), ("b", 24 * 60 + 132)):  # tomorrow
        await _place(demo, who, "s03", minutes)
    out = await replan_kitchen(ctx, "k-dawn", 2.0)
    assert (out.result, out.orders, loads) == ("nothing", 0, [])
    for who, minutes in (("c", 120), ("d", 132)):  # today, within the horizon
        await _place(demo, who, "s03", minutes)
    out = await replan_kitchen(ctx, "k-dawn", 2.0)
    assert out.result == "committed" and loads == ["k-dawn"], out


async def test_re_plans_of_two_kitchens_make_runs_of_their_own(demo: Client) -> None:
    """Each re-plan makes a new optimizer. Runs it makes must not take the id of a run stored for
    another kitchen: the orders would be written onto that run, to its station, at its time."""
    ctx = demo.app[CTX]
    mine: dict[str, set[str]] = {}
    # each pair ends up on a run leaving at a minute neither had before: a new run, a new id
    for kitchen, station, sku, eta in (("k-oven", "s05", "yogurt", 120), ("k-dawn", "s03", "soy-milk", 121)):
        pair = [
            await _place(demo, who, station, m, sku, kitchen)
            for who, m in (("a", eta), ("b", eta + MERGEABLE_APART))
        ]
        before = {r["id"] for r in await _runs(demo, kitchen)}
        out = await replan_kitchen(ctx, kitchen, 2.0)
        assert out.result == "committed", out
        runs = await _runs(demo, kitchen)
        assert len(runs) == 1 and runs[0]["id"] not in before, runs
        mine[kitchen] = {p["id"] for p in pair}
    conn = await demo.conn()
    try:
        for kitchen, orders in mine.items():
            assert {o for r in await _runs(demo, kitchen) for o in r["orders"]} == orders
        _, world = await WorldCache().get(conn)
        plan = await load_plan(conn, world, sorted(mine))
        assert check(world, plan, PlannerSettings()) == []
    finally:
        await conn.close()


async def test_planner_settles_a_run_about_to_leave_so_a_parcel_waits_less(demo: Client) -> None:
    """b (eta 4 minutes after a's) joins a's run, which would leave it 7 minutes in the cabinet.
    Far ahead that saves a courier for orders yet to come; 11 minutes before departure the planner
    puts b on a run of its own arriving by b's eta minus the margin, packed as late as that allows.
    The stored plan checks, b's timeline says so, and a stays as it was."""
    a = await _place(demo, "a", "s03", 120)
    b = await _place(demo, "b", "s03", 124)
    runs = await _runs(demo)
    assert len(runs) == 1 and set(runs[0]["orders"]) == {a["id"], b["id"]}
    demo.clock.advance(100)  # a's run leaves at 111 (eta 120, margin 3, travel 6)
    out = await replan_kitchen(demo.app[CTX], "k-dawn", 2.0)
    assert out.result == "committed", out
    conn = await demo.conn()
    try:
        rows = await conn.fetch(
            """select o.order_id, r.arrive_at, (select max(t.end_at) from task_units u join tasks t
                      on t.id = u.task_id where u.order_id = o.order_id and t.kind = 'pack') as packed,
                      r.depart_at
                 from run_orders o join runs r on r.id = o.run_id where r.kitchen_id = 'k-dawn'"""
        )
        at = {r["order_id"]: r for r in rows}
        margin = timedelta(minutes=PlannerSettings().margin)
        assert at[a["id"]]["arrive_at"] == DEMO_MORNING + timedelta(minutes=120) - margin
        assert at[b["id"]]["arrive_at"] == DEMO_MORNING + timedelta(minutes=124) - margin
        assert at[b["id"]]["packed"] == at[b["id"]]["depart_at"]
        _, world = await WorldCache().get(conn)
        plan = await load_plan(conn, world, ["k-dawn"])
        assert check(world, plan, PlannerSettings()) == []
        events = await conn.fetch("select kind, data from order_events where order_id = $1", b["id"])
        assert any(e["kind"] == "replanned" for e in events)
    finally:
        await conn.close()


async def test_planner_does_not_commit_on_stale_data(demo: Client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    await _place(demo, "a", "s03", 120)
    await _place(demo, "b", "s03", 132)
    ctx = demo.app[CTX]
    from solver.optimize import Optimizer

    real = Optimizer.reoptimize

    def slow_and_stale(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        import asyncpg  # an order placed elsewhere while CP-SAT runs

        async def bump() -> None:
            c = await asyncpg.connect(demo.dsn)
            await c.execute("update kitchens set plan_version = plan_version + 1 where id = 'k-dawn'")
            await c.close()

        import asyncio

        asyncio.run(bump())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Optimizer, "reoptimize", slow_and_stale)
    before = [r["id"] for r in await _runs(demo)]
    out = await replan_kitchen(ctx, "k-dawn", 1.0)
    assert out.result == "stale"
    assert [r["id"] for r in await _runs(demo)] == before


async def test_one_planner_per_kitchen(demo: Client) -> None:
    await _place(demo, "a", "s03", 120)
    await _place(demo, "b", "s03", 132)
    conn = await demo.conn()
    try:
        from service.ordering import lock_key

        await conn.execute("select pg_advisory_lock($1)", lock_key("planner:k-dawn"))
        out = await replan_kitchen(demo.app[CTX], "k-dawn", 1.0)
        assert out.result == "busy"
    finally:
        await conn.close()


async def test_a_planner_that_crashes_leaves_the_last_plan_in_force(demo: Client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    await _place(demo, "a", "s03", 120)
    await _place(demo, "b", "s03", 132)
    from solver.optimize import Optimizer

    def boom(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("solver crashed")

    monkeypatch.setattr(Optimizer, "reoptimize", boom)
    before = [r["id"] for r in await _runs(demo)]
    out = await replan_kitchen(demo.app[CTX], "k-dawn", 1.0)
    assert out.result == "failed"
    assert [r["id"] for r in await _runs(demo)] == before
    # and the service goes on placing orders
    await _place(demo, "c", "s03", 150)


async def test_planner_merges_steamer_batches_and_the_stored_plan_checks(demo: Client) -> None:
    late = await _place(demo, "late", "s03", 150, sku="bun-pork")  # first: its own batch, just in time
    early = await _place(demo, "early", "s03", 120, sku="bun-pork")  # cannot join it: ready too late
    conn = await demo.conn()
    try:
        steams = "select count(*) from tasks where kitchen_id = 'k-dawn' and resource = 'steamer'"
        assert await conn.fetchval(steams) == 2
        out = await replan_kitchen(demo.app[CTX], "k-dawn", 2.0)
        assert out.result == "committed", out
        assert await conn.fetchval(steams) == 1  # one batch, still fresh for the later commuter
        _, world = await WorldCache().get(conn)
        plan = await load_plan(conn, world, ["k-dawn"])
        assert check(world, plan, PlannerSettings()) == []
        assert set(plan.orders) == {late["id"], early["id"]}
    finally:
        await conn.close()


async def test_planner_moves_long_keeping_work_into_idle_time_and_keeps_deposits(demo: Client) -> None:
    """Soy milk keeps for hours: the planner makes it now, while the counter is idle, instead of just
    before its run (leaving rush-hour time to orders placed during the ride); the two batches may
    also merge into one. Deposits stay put."""
    a = await _place(demo, "a", "s03", 150)
    b = await _place(demo, "b", "s03", 120)
    conn = await demo.conn()
    try:
        prep = "select id, start_at from tasks where kitchen_id = 'k-dawn' and kind = 'prep' order by id"
        before = {r["id"]: r["start_at"] for r in await conn.fetch(prep)}
        departures = [r["depart_at"] for r in await _runs(demo)]
        out = await replan_kitchen(demo.app[CTX], "k-dawn", 2.0)
        assert out.result == "committed", out
        after = await conn.fetch(prep)
        assert after and max(r["start_at"] for r in after) < min(before.values())
        assert [r["depart_at"] for r in await _runs(demo)] == departures
        _, world = await WorldCache().get(conn)
        plan = await load_plan(conn, world, ["k-dawn"])
        assert check(world, plan, PlannerSettings()) == []
        assert set(plan.orders) == {a["id"], b["id"]}
    finally:
        await conn.close()
