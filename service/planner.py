"""The background planner: per kitchen, snapshot -> solver.optimize -> check -> commit.

It never holds a database connection while CP-SAT runs (the solve happens in a worker thread, so
the event loop keeps answering). One planner per kitchen across every instance: an advisory lock
held by an otherwise idle transaction. A plan made on stale data is never committed: the kitchen's
plan version must be the one the snapshot saw. A solve that fails, times out or crashes leaves the
last plan in force.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from db.queries.plans import live_orders_due, load_kitchen_plan, write_replan
from solver.check import check
from solver.consolidate import make_room, settle_late
from solver.model import from_minute, to_minute_ceil
from solver.optimize import Optimizer, ReoptReport

from .ordering import Ctx, emit, lock, lock_key, new_id

log = logging.getLogger("exitbox.planner")

HORIZON = 6 * 60  # minutes ahead whose orders a re-plan may move
PARTITION = 300  # orders a re-plan moves at most


@dataclass
class Outcome:
    kitchen_id: str
    result: str  # committed | no-better | stale | busy | failed | nothing
    orders: int = 0
    seconds: float = 0.0
    gap: float | None = None


async def replan_kitchen(ctx: Ctx, kitchen_id: str, seconds: float = 2.0) -> Outcome:
    t0 = time.perf_counter()
    # the lock lives as long as this (otherwise idle) transaction: however planning ends, it is
    # released when the transaction ends or the connection goes back to the pool
    async with ctx.pool.acquire() as guard, guard.transaction():
        got = await guard.fetchval("select pg_try_advisory_xact_lock($1)", lock_key(f"planner:{kitchen_id}"))
        if not got:
            return Outcome(kitchen_id, "busy")
        return await _replan(ctx, kitchen_id, seconds, t0)


async def _replan(ctx: Ctx, kitchen_id: str, seconds: float, t0: float) -> Outcome:
    now = ctx.clock.now()
    now_m = to_minute_ceil(now)
    async with ctx.pool.acquire() as conn:
        _, world = await ctx.worlds.get(conn)
        if kitchen_id not in world.kitchens:
            return Outcome(kitchen_id, "nothing")
        # a kitchen whose orders are all further ahead (the evening's pre-orders for the morning)
        # has nothing to move: a count says so, where loading its plan took the event loop 0.2-0.3 s
        # of CPU at 4,000 orders, every round. The window is a minute wider on each side than the
        # orders a re-plan may move, so the count is never too low.
        window = from_minute(now_m - 1), from_minute(now_m + HORIZON + 2)
        due = await live_orders_due(conn, kitchen_id, *window)
        if due < 2:
            return Outcome(kitchen_id, "nothing", due, time.perf_counter() - t0)
        version = await conn.fetchval("select plan_version from kitchens where id = $1", kitchen_id)
        state = await load_kitchen_plan(conn, world, kitchen_id, now)
    opt = Optimizer(world, ctx.planner, new_id=new_id)  # ids unique across kitchens and re-plans
    ids = opt.movable(state, kitchen_id, now_m, now_m, now_m + HORIZON, PARTITION)
    if len(ids) < 2:
        return Outcome(kitchen_id, "nothing", len(ids), time.perf_counter() - t0)
    old_deposit = {oid: state.plan.runs[state.run_of[oid]].arrive for oid in ids}

    def solve() -> tuple[int, ReoptReport]:
        # merge batches and use idle equipment time now (fast, frees time at the rush for orders
        # yet to come), then CP-SAT over what is left; last, runs about to leave are settled (after
        # CP-SAT, which would join them again to keep couriers for orders yet to come)
        changed = sum(make_room(state, kitchen_id, now_m, ctx.planner, only=set(ids)))
        if changed and check(world, state.plan, ctx.planner, partial=True):
            raise RuntimeError("making room broke a rule")  # never expected; the plan stays
        rep = opt.reoptimize(state, kitchen_id, now_m, seconds, HORIZON, PARTITION)
        settled = settle_late(state, kitchen_id, now_m, ctx.planner, new_id, only=set(ids))
        if settled and check(world, state.plan, ctx.planner, partial=True):
            raise RuntimeError("settling runs broke a rule")
        return changed + settled, rep

    try:
        changed, rep = await asyncio.to_thread(solve)
    except Exception:
        log.exception("planner failed for %s; the last plan stays in force", kitchen_id)
        return Outcome(kitchen_id, "failed", len(ids), time.perf_counter() - t0)
    gap = None
    if rep.objective_after is not None and rep.bound is not None and rep.objective_after:
        gap = max(0.0, (rep.objective_after - rep.bound) / max(1.0, abs(rep.objective_after)))
    if not rep.improved and not changed:
        return Outcome(kitchen_id, "no-better", rep.orders, time.perf_counter() - t0, gap)
    stations = sorted(world.kitchens[kitchen_id].travel)
    async with ctx.pool.acquire() as conn, conn.transaction():
        await lock(conn, f"kitchen:{kitchen_id}", *[f"station:{s}" for s in stations])
        current = await conn.fetchval(
            "select plan_version from kitchens where id = $1 for update", kitchen_id
        )
        if current != version:
            return Outcome(kitchen_id, "stale", rep.orders, time.perf_counter() - t0, gap)
        await write_replan(conn, state, kitchen_id, ids, now)
        await conn.execute("update kitchens set plan_version = plan_version + 1 where id = $1", kitchen_id)
        for oid in ids:
            new = state.plan.runs[state.run_of[oid]].arrive
            if new != old_deposit[oid]:
                await emit(conn, oid, "replanned", {"deposit_at": from_minute(new).isoformat()}, now)
    return Outcome(kitchen_id, "committed", rep.orders, time.perf_counter() - t0, gap)


async def planner_loop(
    ctx: Ctx, interval: float, seconds: float, on_outcome: Callable[[Outcome], None] | None = None
) -> None:
    while True:
        started = datetime.now()
        try:
            async with ctx.pool.acquire() as conn:
                _, world = await ctx.worlds.get(conn)
            for kid in sorted(world.kitchens):
                out = await replan_kitchen(ctx, kid, seconds)
                if on_outcome is not None:
                    on_outcome(out)
                if out.result == "committed":
                    log.info("re-planned %s: %d orders in %.2f s", kid, out.orders, out.seconds)
        except Exception as exc:  # outages: try again next round
            log.warning("planner round failed: %s", exc)
        spent = (datetime.now() - started) / timedelta(seconds=1)
        await asyncio.sleep(max(1.0, interval - spent))
