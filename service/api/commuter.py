"""The commuter's orders."""

from __future__ import annotations

from ..http import Call, Problem, Reply
from ..ordering import cancel, change_eta, get_order, place
from ..schemas import ChangeEta, OrderOut, OrderPlaced, PlaceOrder
from . import api
from .keys import ctx_of


@api.route(
    "POST",
    "/v1/orders",
    summary="Place an order; 409 no-capacity with alternatives",
    tag="commuter",
    roles=("commuter",),
    body=PlaceOrder,
    response=OrderPlaced,
    status=201,
    problems=(409, 429),
    headers={"Idempotency-Key": "a retry with the same key returns the same order"},
)
async def place_order(call: Call) -> Reply:
    principal = call.require()
    ctx = ctx_of(call.app)
    wait = ctx.limiter.hit(f"{principal.role}:{principal.subject}", ctx.clock.now())
    if wait:
        raise Problem(
            429,
            "too-many-orders",
            "too many orders from this token; try again shortly",
            headers={"Retry-After": str(wait)},
        )
    from ..app import METRICS

    metrics = call.app[METRICS]
    try:
        status, body = await place(ctx, principal, call.body, call.request.headers.get("Idempotency-Key"))
    except Problem as p:
        if p.status == 409:
            metrics.inc(f'admissions_total{{outcome="{p.extra.get("reason", p.slug)}"}}')
        raise
    metrics.inc('admissions_total{outcome="confirmed"}')
    return Reply(body, status, {"Location": f"/v1/orders/{body['id']}"})


@api.route(
    "GET",
    "/v1/orders/{order_id}",
    summary="An order: status, times, cabinet, timeline",
    tag="commuter",
    roles=("commuter",),
    response=OrderOut,
    problems=(404,),
)
async def read_order(call: Call) -> OrderOut:
    return await get_order(ctx_of(call.app), call.require(), call.match("order_id"))


@api.route(
    "PATCH",
    "/v1/orders/{order_id}",
    summary="Running late or early: move the pickup time",
    tag="commuter",
    roles=("commuter",),
    body=ChangeEta,
    response=OrderOut,
    problems=(404, 409),
)
async def patch_order(call: Call) -> OrderOut:
    return await change_eta(ctx_of(call.app), call.require(), call.match("order_id"), call.body.eta)


@api.route(
    "POST",
    "/v1/orders/{order_id}/cancel",
    summary="Cancel; the refund follows how far prep went",
    tag="commuter",
    roles=("commuter",),
    response=OrderOut,
    problems=(404, 409),
)
async def cancel_order(call: Call) -> OrderOut:
    return await cancel(ctx_of(call.app), call.require(), call.match("order_id"))
