"""The kitchen's plan and progress reports."""

from __future__ import annotations

from ..http import Call
from ..operations import deposit, kitchen_plan, run_depart, task_done
from ..schemas import DepositIn, DepositOut, KitchenPlan, PlanQuery, RunOut, TaskOut
from . import api
from .keys import ctx_of


@api.route(
    "GET",
    "/v1/kitchens/{kitchen_id}/plan",
    summary="Tasks by resource, runs, and what to start next",
    tag="kitchen",
    roles=("kitchen",),
    query=PlanQuery,
    response=KitchenPlan,
    problems=(404,),
)
async def get_kitchen_plan(call: Call) -> KitchenPlan:
    q: PlanQuery = call.query
    return await kitchen_plan(ctx_of(call.app), call.require(), call.match("kitchen_id"), q.from_, q.to)


@api.route(
    "POST",
    "/v1/kitchens/{kitchen_id}/tasks/{task_id}/done",
    summary="A task is done",
    tag="kitchen",
    roles=("kitchen",),
    response=TaskOut,
    problems=(404,),
)
async def mark_task_done(call: Call) -> TaskOut:
    return await task_done(ctx_of(call.app), call.require(), call.match("kitchen_id"), call.match("task_id"))


@api.route(
    "POST",
    "/v1/runs/{run_id}/depart",
    summary="A courier run has left the kitchen",
    tag="kitchen",
    roles=("kitchen",),
    response=RunOut,
    problems=(404,),
)
async def depart_run(call: Call) -> RunOut:
    return await run_depart(ctx_of(call.app), call.require(), call.match("run_id"))


@api.route(
    "POST",
    "/v1/cabinets/{cabinet_id}/deposit",
    summary="The courier deposits an order: slot labels to open",
    tag="kitchen",
    roles=("kitchen",),
    body=DepositIn,
    response=DepositOut,
    problems=(404, 409),
)
async def deposit_order(call: Call) -> DepositOut:
    return await deposit(ctx_of(call.app), call.require(), call.match("cabinet_id"), call.body.order_id)
