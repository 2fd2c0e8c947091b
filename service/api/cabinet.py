"""The cabinet keypad."""

from __future__ import annotations

from ..http import Call
from ..operations import open_cabinet
from ..schemas import OpenIn, OpenOut
from . import api
from .keys import ctx_of


@api.route(
    "POST",
    "/v1/cabinets/{cabinet_id}/open",
    summary="Open the slots of the order with this code; wrong codes are limited",
    tag="cabinet",
    roles=("cabinet",),
    body=OpenIn,
    response=OpenOut,
    problems=(403, 404, 409, 429),
)
async def open_with_code(call: Call) -> OpenOut:
    return await open_cabinet(ctx_of(call.app), call.require(), call.match("cabinet_id"), call.body.code)
