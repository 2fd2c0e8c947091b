"""Public reads: stations and what can be ordered."""

from __future__ import annotations

from solver.admission import offerable
from solver.model import from_minute, to_minute_ceil

from ..http import Call, not_found
from ..ordering import earliest_eta
from ..schemas import Named, OfferItem, OfferOut, OfferQuery, StationOut
from . import api
from .keys import ctx_of


@api.route(
    "GET",
    "/v1/stations",
    summary="Stations with their cabinets and the kitchens serving them",
    tag="public",
    roles=None,
    response=list[StationOut],
)
async def list_stations(call: Call) -> list[StationOut]:
    ctx = ctx_of(call.app)
    async with ctx.pool.acquire() as conn:
        spec, _ = await ctx.worlds.get(conn)
    return [
        StationOut(
            id=s.id,
            name=s.name,
            cabinets=[Named(id=c.id, name=c.name) for c in s.cabinets],
            kitchens=[Named(id=k.id, name=k.name) for k in spec.kitchens if s.id in k.stations],
        )
        for s in spec.stations
    ]


@api.route(
    "GET",
    "/v1/stations/{station_id}/offer",
    summary="What can be ordered for a pickup time",
    tag="public",
    roles=None,
    query=OfferQuery,
    response=OfferOut,
    problems=(404,),
)
async def station_offer(call: Call) -> OfferOut:
    ctx = ctx_of(call.app)
    sid = call.match("station_id")
    q: OfferQuery = call.query
    async with ctx.pool.acquire() as conn:
        spec, world = await ctx.worlds.get(conn)
    if spec.station(sid) is None:
        raise not_found(f"station {sid}")
    kitchens = [k.id for k in spec.kitchens if sid in k.stations]
    now = ctx.clock.now()
    earliest = earliest_eta(world, kitchens, sid, now, ctx.settings.deposit_margin_minutes)
    eta = q.eta or earliest
    eta_m, now_m = to_minute_ceil(eta), to_minute_ceil(now)
    items = [
        OfferItem(kitchen_id=kid, sku=m.sku, name=m.name, price_cents=m.price_cents, zone=m.zone, size=m.size)
        for kid in kitchens
        for m in spec.kitchen(kid).menu  # type: ignore[union-attr]
        if offerable(world.kitchens[kid], m.sku, sid, eta_m, now_m, ctx.settings.grace_minutes)
    ]
    return OfferOut(station_id=sid, eta=from_minute(eta_m), earliest_eta=earliest, items=items)
