"""Live surfaces' API: the event stream, a station's slots, pickup-code QR, clearing a slot."""

from __future__ import annotations

import io

from aiohttp import web

from ..auth import TokenError, verify_token
from ..events import stream
from ..http import SECRET_KEY, Call, Problem
from ..operations import clear_slot, order_qr_payload, station_slots
from ..schemas import SlotOut, StationSlots
from . import api
from .keys import ctx_of


@api.route(
    "GET",
    "/v1/events",
    summary="Server-sent events within the token's scope (access_token= for browsers)",
    tag="live",
    roles=None,
    problems=(401,),
)
async def events(call: Call) -> web.StreamResponse:
    principal = call.principal
    if principal is None and "access_token" in call.request.query:
        try:
            principal = verify_token(call.app[SECRET_KEY], call.request.query["access_token"])
        except TokenError as exc:
            raise Problem(401, "unauthorized", str(exc)) from None
    if principal is None:
        raise Problem(
            401,
            "unauthorized",
            "a bearer token (or access_token=) is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return await stream(call.request, principal)


@api.route(
    "GET",
    "/v1/stations/{station_id}/slots",
    summary="Every slot of the station and what it holds now",
    tag="operator",
    roles=("operator",),
    response=StationSlots,
    problems=(404,),
)
async def list_station_slots(call: Call) -> StationSlots:
    return await station_slots(ctx_of(call.app), call.require(), call.match("station_id"))


@api.route(
    "POST",
    "/v1/slots/{cabinet_id}/{label}/clear",
    summary="Staff took the expired parcel out: the slot is free again",
    tag="operator",
    roles=("operator",),
    response=SlotOut,
    problems=(404,),
)
async def clear(call: Call) -> SlotOut:
    return await clear_slot(ctx_of(call.app), call.require(), call.match("cabinet_id"), call.match("label"))


@api.route(
    "GET",
    "/v1/orders/{order_id}/qr.svg",
    summary="The pickup code as a QR code (SVG)",
    tag="commuter",
    roles=("commuter",),
    problems=(404,),
)
async def order_qr(call: Call) -> web.Response:
    import segno

    payload = await order_qr_payload(ctx_of(call.app), call.require(), call.match("order_id"))
    buf = io.BytesIO()
    segno.make(payload, error="m").save(buf, kind="svg", scale=6, border=2, dark="#111", light="#fff")
    return web.Response(
        body=buf.getvalue(), content_type="image/svg+xml", headers={"Cache-Control": "no-store"}
    )
