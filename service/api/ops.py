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

    return web.Response(text=call.app[METRICS].render(), content_type="text/plain")
