"""Liveness, readiness and metrics."""

from __future__ import annotations

from aiohttp import web

from ..http import Call, Problem
from ..schemas import Health
from . import api
from .keys import CTX


@api.route("GET", "/healthz", summary="Liveness", tag="ops", roles=None, response=Health)
async def healthz(call: Call) -> Health:
    return Health(status="ok")


@api.route(
    "GET",
    "/readyz",
    summary="Readiness: the database answers",
    tag="ops",
    roles=None,
    response=Health,
    problems=(503,),
)
async def readyz(call: Call) -> Health:
    ctx = call.app[CTX]
    try:
        async with ctx.pool.acquire(timeout=2) as conn:
            await conn.fetchval("select 1")
    except Exception:
        raise Problem(
            503, "unavailable", "the database is unreachable", headers={"Retry-After": "5"}
        ) from None
    return Health(status="ready")


@api.route("GET", "/metrics", summary="Prometheus metrics (text format)", tag="ops", roles=None)
async def metrics(call: Call) -> web.Response:
    from ..app import METRICS

    ctx = call.app[CTX]
    lines = [
        f"exitbox_db_pool_size {ctx.pool.get_size()}",
        f"exitbox_db_pool_idle {ctx.pool.get_idle_size()}",
        f"exitbox_db_pool_max {ctx.pool.get_max_size()}",
        f"exitbox_placement_batches_total {ctx.placements.batches}",
        f"exitbox_placement_batches_prepared_total {ctx.placements.prepared}",
        f"exitbox_placement_requests_total {ctx.placements.requests}",
        f"exitbox_plan_cache_hits_total {ctx.plans.hits}",
        f"exitbox_plan_cache_misses_total {ctx.plans.misses}",
        f"exitbox_plan_cache_dropped_total {ctx.plans.epoch}",
        f"exitbox_plan_cache_suggestion_loads_total {ctx.plans.suggestion_loads}",
        f"exitbox_plan_cache_refreshed_total {ctx.plans.refreshed}",
    ]
    try:
        async with ctx.pool.acquire(timeout=2) as conn:
            rows = await conn.fetch(
                """select s.cabinet_id, s.zone, count(*) filter (where s.enabled) as capacity,
                          count(p.id) as occupied
                     from slots s left join parcels p on p.slot_id = s.id
                      and (p.state = 'deposited' or (p.state = 'expired' and p.removed_at is null))
                    where not s.retired group by 1, 2 order by 1, 2"""
            )
        for r in rows:
            labels = f'cabinet="{r["cabinet_id"]}",zone="{r["zone"]}"'
            lines.append(f"exitbox_cabinet_slots{{{labels}}} {r['capacity']}")
            lines.append(f"exitbox_cabinet_occupied{{{labels}}} {r['occupied']}")
    except Exception:  # metrics still answer while the database is away
        lines.append("exitbox_db_up 0")
    else:
        lines.append("exitbox_db_up 1")
    text = call.app[METRICS].render() + "\n".join(lines) + "\n"
    return web.Response(text=text, content_type="text/plain")
