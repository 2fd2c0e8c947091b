"""Station operators: occupancy and slots in and out of service."""

from __future__ import annotations

from ..http import Call
from ..operations import occupancy, set_slot
from ..schemas import Occupancy, OccupancyQuery, SlotOut
from . import api
from .keys import ctx_of


@api.route(
    "GET",
    "/v1/stations/{station_id}/occupancy",
    summary="Per cabinet and zone: capacity, occupied and reserved over time",
    tag="operator",
    roles=("operator",),
    query=OccupancyQuery,
    response=Occupancy,
    problems=(404,),
)
async def station_occupancy(call: Call) -> Occupancy:
    q: OccupancyQuery = call.query
    return await occupancy(ctx_of(call.app), call.require(), call.match("station_id"), q.from_, q.to, q.step)


@api.route(
    "POST",
    "/v1/slots/{cabinet_id}/{label}/disable",
    summary="Take a slot out of service; reserved parcels move to other slots",
    tag="operator",
    roles=("operator",),
    response=SlotOut,
    problems=(404,),
)
async def disable_slot(call: Call) -> SlotOut:
    return await set_slot(
        ctx_of(call.app), call.require(), call.match("cabinet_id"), call.match("label"), False
    )


@api.route(
    "POST",
    "/v1/slots/{cabinet_id}/{label}/enable",
    summary="Put a slot back in service",
    tag="operator",
    roles=("operator",),
    response=SlotOut,
    problems=(404,),
)
async def enable_slot(call: Call) -> SlotOut:
    return await set_slot(
        ctx_of(call.app), call.require(), call.match("cabinet_id"), call.match("label"), True
    )
