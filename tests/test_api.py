"""Every endpoint over real HTTP against real PostgreSQL: answers, denials and bad input."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from db.queries.plans import load_plan
from service.ordering import WorldCache
from solver.check import check
from solver.model import Settings as PlannerSettings

from .conftest import TINY_MORNING, Client, cycles_left_by

ETA = (TINY_MORNING + timedelta(hours=1, minutes=30)).isoformat()  # 07:30 Berlin


def order_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "station_id": "north",
        "kitchen_id": "bakery",
        "eta": ETA,
        "items": [{"sku": "croissant", "qty": 2}, {"sku": "juice", "qty": 1}],
    }
    body.update(over)
    return body


async def place(c: Client, commuter: str = "alice", **over: Any) -> tuple[int, Any]:
    status, body, _ = await c.call(
        "POST", "/v1/orders", role="commuter", scope=commuter, json=order_body(**over)
    )
    return status, body


async def assert_plan_checks(c: Client) -> None:
    conn = await c.conn()
    try:
        _, world = await WorldCache().get(conn)
        plan = await load_plan(conn, world, list(world.kitchens))
    finally:
        await conn.close()
    violations = check(world, plan, PlannerSettings())
    assert violations == [], violations


def assert_problem(body: Any, status: int) -> None:
    assert isinstance(body, dict), body
    assert body["status"] == status
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str) and body[key]


# --------------------------------------------------------------------------- public


async def test_stations_lists_cabinets_and_kitchens(tiny: Client) -> None:
    status, body, _ = await tiny.call("GET", "/v1/stations")
    assert status == 200
    north = next(s for s in body if s["id"] == "north")
    assert north == {
        "id": "north",
        "name": "North Gate",
        "cabinets": [{"id": "north-a", "name": "Exit A"}],
        "kitchens": [{"id": "bakery", "name": "Corner Bakery"}],
    }


async def test_offer_defaults_to_earliest_and_filters_by_eta(tiny: Client) -> None:
    status, body, _ = await tiny.call("GET", "/v1/stations/north/offer")
    assert status == 200
    assert body["eta"] == body["earliest_eta"]
    assert {"juice"} <= {i["sku"] for i in body["items"]}
    status, body, _ = await tiny.call("GET", f"/v1/stations/north/offer?eta={ETA.replace('+', '%2B')}")
    assert status == 200
    assert {i["sku"] for i in body["items"]} == {"croissant", "egg-roll", "juice", "bread"}
    status, body, _ = await tiny.call("GET", "/v1/stations/nowhere/offer")
    assert status == 404
    assert_problem(body, 404)
    status, body, _ = await tiny.call("GET", "/v1/stations/north/offer?eta=tomorrow")
    assert status == 422
    assert body["errors"][0]["field"] == "eta"


# --------------------------------------------------------------------------- orders


async def test_place_returns_code_and_retry_with_same_key_returns_same_order(tiny: Client) -> None:
    h = {"Idempotency-Key": "abc-1"}
    s1, b1, headers = await tiny.call(
        "POST", "/v1/orders", role="commuter", scope="alice", json=order_body(), headers=h
    )
    assert s1 == 201, b1
    assert len(b1["pickup_code"]) == 6 and b1["pickup_code"].isdigit()
    assert b1["cabinet_id"] == "north-a" and b1["status"] == "confirmed"
    assert b1["total_cents"] == 2 * 250 + 300
    assert headers["Location"] == f"/v1/orders/{b1['id']}"
    s2, b2, _ = await tiny.call(
        "POST", "/v1/orders", role="commuter", scope="alice", json=order_body(), headers=h
    )
    assert s2 == 201 and b2 == b1
    s3, b3, _ = await tiny.call(
        "POST",
        "/v1/orders",
        role="commuter",
        scope="alice",
        json=order_body(eta=(TINY_MORNING + timedelta(hours=2)).isoformat()),
        headers=h,
    )
    assert s3 == 422 and b3["type"].endswith("idempotency-key-reused")
    conn = await tiny.conn()
    try:
        assert await conn.fetchval("select count(*) from orders") == 1
        sealed = await conn.fetchval("select code_sealed from orders")
        assert b1["pickup_code"] not in sealed
    finally:
        await conn.close()
    await assert_plan_checks(tiny)


async def test_order_is_readable_by_its_commuter_only(tiny: Client) -> None:
    _, placed = await place(tiny)
    oid = placed["id"]
    status, body, _ = await tiny.call("GET", f"/v1/orders/{oid}", role="commuter", scope="alice")
    assert status == 200
    assert body["pickup_code"] == placed["pickup_code"]
    assert body["timeline"][0]["kind"] == "placed"
    assert body["deposit_at"] is not None and body["slots"]
    for role, scope in (("commuter", "bob"), ("kitchen", "bakery"), ("operator", "north")):
        status, body, _ = await tiny.call("GET", f"/v1/orders/{oid}", role=role, scope=scope)
        assert status in (403, 404), (role, status)
        assert_problem(body, status)
    status, body, _ = await tiny.call("GET", f"/v1/orders/{oid}", role="admin", scope="*")
    assert status == 200


async def test_bad_requests_get_problem_json(tiny: Client) -> None:
    status, body, h = await tiny.call(
        "POST",
        "/v1/orders",
        role="commuter",
        scope="alice",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and h["Content-Type"].startswith("application/problem+json")
    assert_problem(body, 400)
    status, body, _ = await tiny.call(
        "POST",
        "/v1/orders",
        role="commuter",
        scope="alice",
        json={"station_id": "north", "items": [{"sku": "x", "qty": 0}]},
    )
    assert status == 422
    fields = {e["field"] for e in body["errors"]}
    assert {"kitchen_id", "eta", "items.0.qty"} <= fields
    status, body, _ = await tiny.call("POST", "/v1/orders", json=order_body())
    assert status == 401
    status, body, _ = await tiny.call(
        "POST", "/v1/orders", json=order_body(), headers={"Authorization": "Bearer nonsense"}
    )
    assert status == 401 and "not valid" in body["detail"]
    status, body, _ = await tiny.call("POST", "/v1/orders", role="kitchen", scope="bakery", json=order_body())
    assert status == 403
    status, body, _ = await tiny.call("GET", "/v1/nothing-here")
    assert status == 404 and body["type"] == "/problems/not-found"
    status, body, h = await tiny.call("DELETE", "/v1/stations")
    assert status == 405 and body["status"] == 405
    big = {"station_id": "north", "pad": "x" * 200_000}
    status, body, _ = await tiny.call("POST", "/v1/orders", role="commuter", scope="alice", json=big)
    assert status == 413
    assert_problem(body, 413)


async def test_unknown_sku_station_or_kitchen_are_invalid(tiny: Client) -> None:
    status, body = await place(tiny, items=[{"sku": "pizza", "qty": 1}])
    assert status == 409 and body["reason"] == "invalid"
    status, body = await place(tiny, station_id="nowhere")
    assert status == 409 and body["reason"] == "invalid"
    from service.api.keys import CTX

    assert "nowhere" not in tiny.app[CTX].plans.slots  # requests cannot grow the cache
    status, body = await place(tiny, kitchen_id="nowhere")  # found by schemathesis: was a 500
    assert status == 409 and body["reason"] == "invalid"


async def test_rejection_has_reason_and_alternatives(tiny: Client) -> None:
    # two chilled slots at north: the third juice for the same time has no slot
    for who in ("a", "b"):
        status, _ = await place(tiny, who, items=[{"sku": "juice", "qty": 1}])
        assert status == 201
    status, body = await place(tiny, "c", items=[{"sku": "juice", "qty": 1}])
    assert status == 409
    assert body["type"] == "/problems/no-capacity"
    assert body["reason"] == "no-cabinet-capacity"
    assert body["alternatives"], body
    alt = body["alternatives"][0]
    status, placed = await place(
        tiny,
        "c",
        items=[{"sku": "juice", "qty": 1}],
        eta=alt["eta"],
        station_id=alt["station_id"],
        kitchen_id=alt["kitchen_id"],
    )
    assert status == 201, placed
    await assert_plan_checks(tiny)


async def test_answered_problems_leave_no_garbage_for_the_cycle_collector(tiny: Client) -> None:
    # a refusal's problem is raised out of the placement's future through the frames that hold that
    # future: kept with its traceback, each refused request's objects (request, body, future, ...)
    # were a cycle only a full collection freed, seconds of stalled event loop every minute at rush
    # hour. Refusals, unknown orders and bad bodies alike are freed when answered.
    for who in ("a", "b"):
        status, _ = await place(tiny, who, items=[{"sku": "juice", "qty": 1}])
        assert status == 201

    async def problems(who: str) -> None:  # a commuter each: the per-token limit stays out of the way
        status, _ = await place(tiny, who, items=[{"sku": "juice", "qty": 1}])
        assert status == 409
        status, _, _ = await tiny.call("GET", "/v1/orders/nope", role="commuter", scope=who)
        assert status == 404
        status, _ = await place(tiny, who, items=[{"sku": "juice", "qty": 0}])
        assert status == 422

    await problems("c")  # caches and first-use objects

    async def many() -> None:
        for i in range(20):
            await problems(f"c{i}")

    found = await cycles_left_by(many)
    assert found < 20, f"{found} objects in cycles after 60 answered problems"


async def test_serve_freezes_what_survives_its_full_collections() -> None:
    """`serve`'s full garbage collections on a timer freeze what survived them, so the next looks
    only at what was made since and not at every plan of the morning again (0.12 -> 0.28 s within
    45 s of the load bench, the service standing still meanwhile). On the way out all is unfrozen."""
    import asyncio
    import contextlib
    import gc
    from types import SimpleNamespace

    from aiohttp import web

    from service.api.keys import CTX
    from service.app import METRICS, Metrics, _garbage_collector

    app = web.Application()
    app[CTX] = SimpleNamespace(settings=SimpleNamespace(gc_full_seconds=0.05))  # type: ignore[misc]
    app[METRICS] = Metrics()
    collector = _garbage_collector(app)
    await collector.__anext__()  # start-up: a full collection, then everything made so far frozen
    try:
        frozen = gc.get_freeze_count()
        kept = [[i] for i in range(20_000)]  # lists the collector tracks, alive from here on
        await asyncio.sleep(0.3)  # a few full collections
        assert gc.get_freeze_count() >= frozen + len(kept)
        assert app[METRICS].counters["gc_full_total"] >= 2
        assert app[METRICS].gauges["gc_frozen_objects"] >= frozen + len(kept)
        del kept
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await collector.__anext__()
    assert gc.get_freeze_count() == 0


async def test_refusals_in_a_row_load_plans_for_suggestions_at_most_once_a_second(tiny: Client) -> None:
    # north's two chilled slots taken; with nothing cached, a suggestion at another station needs
    # a plan from the database: refusals in a row may load one per second, the rest come from the
    # cache or are left out, and each still suggests another eta
    for who in ("a", "b"):
        status, _ = await place(tiny, who, items=[{"sku": "juice", "qty": 1}])
        assert status == 201
    from service.api.keys import CTX

    plans = tiny.app[CTX].plans
    plans.clear()
    before, t0 = plans.suggestion_loads, time.monotonic()
    for i in range(5):
        status, body = await place(tiny, f"c{i}", items=[{"sku": "juice", "qty": 1}])
        assert status == 409 and body["reason"] == "no-cabinet-capacity"
        assert any(a["station_id"] == "north" and a["kitchen_id"] == "bakery" for a in body["alternatives"])
    loads = plans.suggestion_loads - before
    assert 1 <= loads <= 1 + int(time.monotonic() - t0)
    _, text, _ = await tiny.call("GET", "/metrics", role="admin")
    assert f"exitbox_plan_cache_suggestion_loads_total {plans.suggestion_loads}" in str(text)


async def test_suggestions_stop_once_they_reach_their_limit(
    tiny: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No dry run, and no plan load, is made for a suggestion that the limit would cut off."""
    from datetime import datetime

    from service import ordering
    from service.api.keys import CTX
    from solver.admission import Rejection, admit, id_factory
    from solver.model import OrderReq, to_minute, to_minute_ceil

    for who in ("a", "b"):  # north's two chilled slots taken
        status, _ = await place(tiny, who, items=[{"sku": "juice", "qty": 1}])
        assert status == 201
    ctx = tiny.app[CTX]
    assert ctx.worlds.current is not None
    world = ctx.worlds.current[1]
    state = ctx.plans.peek("bakery", "north")
    assert state is not None
    order = OrderReq("probe", "bakery", "north", to_minute(datetime.fromisoformat(ETA)), {"juice": 1})
    now = tiny.clock.now()
    refused = admit(world, state, order, to_minute_ceil(now), ctx.planner, id_factory())
    assert isinstance(refused, Rejection) and refused.reason == "no-cabinet-capacity"
    looked: list[str] = []
    real = ordering.suggestion_state

    async def counted(ctx_: Any, world_: Any, kitchen_id: str, station_id: str, now_: Any) -> Any:
        looked.append(station_id)
        return await real(ctx_, world_, kitchen_id, station_id, now_)

    monkeypatch.setattr(ordering, "suggestion_state", counted)
    every = await ordering.alternatives(ctx, world, state, order, now, refused)
    assert len(every) >= 2 and looked, every  # a later eta here, and other stations looked at
    looked.clear()
    first = await ordering.alternatives(ctx, world, state, order, now, refused, limit=1)
    assert first == every[:1] and looked == []


async def test_too_late_and_closed(tiny: Client) -> None:
    soon = (TINY_MORNING + timedelta(minutes=10)).isoformat()
    status, body = await place(tiny, eta=soon)
    assert status == 409 and body["reason"] == "too-late"
    evening = (TINY_MORNING + timedelta(hours=12)).isoformat()
    status, body = await place(tiny, eta=evening)
    assert status == 409 and body["reason"] == "closed"


# --------------------------------------------------------------------------- change, cancel


async def test_change_eta_replans_or_refuses(tiny: Client) -> None:
    _, placed = await place(tiny)
    oid = placed["id"]
    later = (TINY_MORNING + timedelta(hours=2)).isoformat()
    status, body, _ = await tiny.call(
        "PATCH", f"/v1/orders/{oid}", role="commuter", scope="alice", json={"eta": later}
    )
    assert status == 200, body
    assert body["timeline"][-1]["kind"] == "eta-changed"
    assert body["pickup_code"] == placed["pickup_code"]
    await assert_plan_checks(tiny)
    status, body, _ = await tiny.call(
        "PATCH",
        f"/v1/orders/{oid}",
        role="commuter",
        scope="alice",
        json={"eta": (TINY_MORNING + timedelta(minutes=5)).isoformat()},
    )
    assert status == 409
    status, body, _ = await tiny.call(
        "PATCH", f"/v1/orders/{oid}", role="commuter", scope="bob", json={"eta": later}
    )
    assert status == 404
    await assert_plan_checks(tiny)


async def test_cancel_refunds_by_progress(tiny: Client) -> None:
    _, a = await place(tiny, "alice")
    status, body, _ = await tiny.call("POST", f"/v1/orders/{a['id']}/cancel", role="commuter", scope="alice")
    assert status == 200 and body["status"] == "cancelled"
    assert body["refund_cents"] == body["total_cents"] and body["pickup_code"] is None
    status, body, _ = await tiny.call("POST", f"/v1/orders/{a['id']}/cancel", role="commuter", scope="alice")
    assert status == 409
    conn = await tiny.conn()
    try:
        assert await conn.fetchval("select count(*) from task_units where order_id = $1", a["id"]) == 0
        assert await conn.fetchval("select count(*) from parcels where order_id = $1", a["id"]) == 0
    finally:
        await conn.close()
    # cooking started: half back
    _, b = await place(tiny, "bob")
    plan = await kitchen_plan(tiny)
    first = next(
        t for r in plan["resources"] for t in r["tasks"] if b["id"] in [o["order_id"] for o in t["orders"]]
    )
    status, _, _ = await tiny.call(
        "POST", f"/v1/kitchens/bakery/tasks/{first['id']}/done", role="kitchen", scope="bakery"
    )
    assert status == 200
    status, body, _ = await tiny.call("POST", f"/v1/orders/{b['id']}/cancel", role="commuter", scope="bob")
    assert status == 200 and body["refund_cents"] == body["total_cents"] // 2
    await assert_plan_checks(tiny)


# --------------------------------------------------------------------------- kitchen


async def kitchen_plan(c: Client, kitchen: str = "bakery") -> Any:
    frm = (c.clock.now() - timedelta(hours=1)).isoformat().replace("+", "%2B")
    to = (c.clock.now() + timedelta(hours=4)).isoformat().replace("+", "%2B")
    status, body, _ = await c.call(
        "GET", f"/v1/kitchens/{kitchen}/plan?from={frm}&to={to}", role="kitchen", scope=kitchen
    )
    assert status == 200, body
    return body


async def test_kitchen_plan_is_scoped(tiny: Client) -> None:
    await place(tiny)
    body = await kitchen_plan(tiny)
    assert {r["id"] for r in body["resources"]} == {"oven", "counter", "pack"}
    tasks = [t for r in body["resources"] for t in r["tasks"]]
    assert any(t["sku"] == "croissant" and t["units"] == 2 and t["batch"] == 12 for t in tasks)
    assert len(body["runs"]) == 1 and body["runs"][0]["station_id"] == "north"
    status, body, _ = await tiny.call("GET", "/v1/kitchens/bakery/plan", role="kitchen", scope="other")
    assert status == 404
    status, body, _ = await tiny.call("GET", "/v1/kitchens/bakery/plan", role="operator", scope="north")
    assert status == 403
    status, body, _ = await tiny.call(
        "POST", "/v1/kitchens/bakery/tasks/t-nope/done", role="kitchen", scope="bakery"
    )
    assert status == 404
    status, body, _ = await tiny.call("POST", "/v1/runs/r-nope/depart", role="kitchen", scope="bakery")
    assert status == 404


# --------------------------------------------------------------------------- the journey


async def test_full_journey_place_cook_depart_deposit_open(tiny: Client) -> None:
    _, placed = await place(tiny)
    oid, code = placed["id"], placed["pickup_code"]
    plan = await kitchen_plan(tiny)
    mine = [t for r in plan["resources"] for t in r["tasks"] if oid in [o["order_id"] for o in t["orders"]]]
    assert {t["kind"] for t in mine} == {"prep", "pack"}
    for t in sorted(mine, key=lambda t: t["start"]):
        status, body, _ = await tiny.call(
            "POST", f"/v1/kitchens/bakery/tasks/{t['id']}/done", role="kitchen", scope="bakery"
        )
        assert status == 200 and body["status"] == "done"
    status, body, _ = await tiny.call("GET", f"/v1/orders/{oid}", role="commuter", scope="alice")
    assert body["status"] == "cooking"
    assert [e["kind"] for e in body["timeline"]][:3] == ["placed", "cooking", "ready"]
    run = plan["runs"][0]
    # a courier of another kitchen cannot report this run
    status, _, _ = await tiny.call("POST", f"/v1/runs/{run['id']}/depart", role="kitchen", scope="other")
    assert status == 404
    status, body, _ = await tiny.call("POST", f"/v1/runs/{run['id']}/depart", role="kitchen", scope="bakery")
    assert status == 200 and body["status"] == "departed" and oid in body["orders"]
    # the cabinet will not open before the food is in
    status, body, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/open", role="cabinet", scope="north-a", json={"code": code}
    )
    assert status == 409
    tiny.clock.advance(20)
    status, body, _ = await tiny.call(
        "POST", "/v1/cabinets/south-a/deposit", role="kitchen", scope="bakery", json={"order_id": oid}
    )
    assert status == 409
    status, dep, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/deposit", role="kitchen", scope="bakery", json={"order_id": oid}
    )
    assert status == 200, dep
    assert len(dep["slots"]) == 2 and not dep["overflow"]
    assert any(s.startswith("H") for s in dep["slots"]) and any(s.startswith("C") for s in dep["slots"])
    # another cabinet's keypad does not know the code
    status, body, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/open", role="cabinet", scope="south-a", json={"code": code}
    )
    assert status == 404
    tiny.clock.advance(5)
    status, opened, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/open", role="cabinet", scope="north-a", json={"code": code}
    )
    assert status == 200 and sorted(opened["slots"]) == sorted(dep["slots"])
    status, body, _ = await tiny.call("GET", f"/v1/orders/{oid}", role="commuter", scope="alice")
    assert body["status"] == "picked_up" and body["picked_up_at"] is not None
    kinds = [e["kind"] for e in body["timeline"]]
    assert kinds == ["placed", "cooking", "ready", "departed", "deposited", "picked-up"]
    # a used code opens nothing any more
    status, body, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/open", role="cabinet", scope="north-a", json={"code": code}
    )
    assert status == 403
    await assert_plan_checks(tiny)


async def test_wrong_codes_are_limited_per_cabinet(tiny: Client) -> None:
    _, placed = await place(tiny)
    wrong = f"{(int(placed['pickup_code']) + 1) % 1_000_000:06d}"
    for _ in range(4):
        status, body, _ = await tiny.call(
            "POST", "/v1/cabinets/north-a/open", role="cabinet", scope="north-a", json={"code": wrong}
        )
        assert status == 403
    status, body, h = await tiny.call(
        "POST", "/v1/cabinets/north-a/open", role="cabinet", scope="north-a", json={"code": wrong}
    )
    assert status == 403 and int(h["Retry-After"]) == 60
    status, body, h = await tiny.call(
        "POST",
        "/v1/cabinets/north-a/open",
        role="cabinet",
        scope="north-a",
        json={"code": placed["pickup_code"]},
    )
    assert status == 429 and 0 < int(h["Retry-After"]) <= 60
    assert body["type"].endswith("too-many-attempts")
    # another cabinet is not locked
    status, body, _ = await tiny.call(
        "POST", "/v1/cabinets/south-a/open", role="cabinet", scope="south-a", json={"code": wrong}
    )
    assert status == 403
    tiny.clock.advance(1.1)
    status, body, _ = await tiny.call(
        "POST",
        "/v1/cabinets/north-a/open",
        role="cabinet",
        scope="north-a",
        json={"code": placed["pickup_code"]},
    )
    assert status == 409  # accepted again: the order is simply not in the cabinet yet
    status, body, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/open", role="cabinet", scope="north-a", json={"code": "12345"}
    )
    assert status == 422


# --------------------------------------------------------------------------- expiry


async def test_expiry_sweep_frees_slot_and_refunds(tiny: Client) -> None:
    from service.api.keys import CTX
    from service.operations import sweep_expired

    _, placed = await place(tiny, items=[{"sku": "croissant", "qty": 1}])
    oid = placed["id"]
    ctx = tiny.app[CTX]
    assert await sweep_expired(ctx) == 0
    tiny.clock.advance(3 * 60)
    assert await sweep_expired(ctx) == 1
    _status, body, _ = await tiny.call("GET", f"/v1/orders/{oid}", role="commuter", scope="alice")
    assert body["status"] == "expired" and body["refund_cents"] == body["total_cents"]
    assert body["timeline"][-1]["kind"] == "expired"
    conn = await tiny.conn()
    try:
        states = await conn.fetch("select state from parcels where order_id = $1", oid)
        assert [r["state"] for r in states] == ["expired"]
    finally:
        await conn.close()


# --------------------------------------------------------------------------- operator


async def test_occupancy_and_slot_disable_moves_reservations(tiny: Client) -> None:
    _, placed = await place(tiny, items=[{"sku": "juice", "qty": 1}])
    oid = placed["id"]
    status, body, _ = await tiny.call("GET", f"/v1/orders/{oid}", role="commuter", scope="alice")
    label = body["slots"][0]
    assert label.startswith("C")
    frm = (TINY_MORNING + timedelta(hours=1)).isoformat().replace("+", "%2B")
    status, occ, _ = await tiny.call(
        "GET", f"/v1/stations/north/occupancy?from={frm}&step=10", role="operator", scope="north"
    )
    assert status == 200
    chilled = next(z for z in occ["cabinets"][0]["zones"] if z["zone"] == "chilled")
    assert chilled["capacity"] == 2
    assert max(p["reserved"] for p in chilled["series"]) == 1
    status, _, _ = await tiny.call("GET", "/v1/stations/north/occupancy", role="operator", scope="south")
    assert status == 404
    status, body, _ = await tiny.call(
        "POST", f"/v1/slots/north-a/{label}/disable", role="operator", scope="south"
    )
    assert status == 404
    status, body, _ = await tiny.call(
        "POST", f"/v1/slots/north-a/{label}/disable", role="operator", scope="north"
    )
    assert status == 200 and body["enabled"] is False
    assert body["affected"] == [
        {"order_id": oid, "outcome": "moved", "slot": "C02" if label == "C01" else "C01"}
    ]
    status, body, _ = await tiny.call("GET", f"/v1/orders/{oid}", role="commuter", scope="alice")
    assert body["slots"] != [label] and body["timeline"][-1]["kind"] == "slot-changed"
    await assert_plan_checks(tiny)
    # with the slot out of service, capacity shrinks and admission respects it
    status, occ, _ = await tiny.call("GET", "/v1/stations/north/occupancy", role="operator", scope="north")
    chilled = next(z for z in occ["cabinets"][0]["zones"] if z["zone"] == "chilled")
    assert chilled["capacity"] == 1
    status, body = await place(tiny, "bob", items=[{"sku": "juice", "qty": 1}])
    assert status == 409 and body["reason"] == "no-cabinet-capacity"
    status, body, _ = await tiny.call(
        "POST", f"/v1/slots/north-a/{label}/enable", role="operator", scope="north"
    )
    assert status == 200 and body["enabled"] is True
    status, body = await place(tiny, "bob", items=[{"sku": "juice", "qty": 1}])
    assert status == 201
    await assert_plan_checks(tiny)


# --------------------------------------------------------------------------- ops


async def test_health_ready_metrics_openapi_docs(tiny: Client) -> None:
    assert (await tiny.call("GET", "/healthz"))[0] == 200
    status, body, _ = await tiny.call("GET", "/readyz")
    assert status == 200 and body["status"] == "ready"
    await tiny.call("GET", "/v1/stations")
    status, text, _ = await tiny.call("GET", "/metrics")
    assert status == 200 and "exitbox_http_requests_total" in text
    status, spec, _ = await tiny.call("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert "/v1/orders" in spec["paths"] and "post" in spec["paths"]["/v1/orders"]
    body_ref = spec["paths"]["/v1/orders"]["post"]["requestBody"]["content"]["application/json"]
    assert body_ref["schema"]["$ref"].endswith("/PlaceOrder")
    assert "eta" in spec["components"]["schemas"]["PlaceOrder"]["properties"]
    status, html, _ = await tiny.call("GET", "/docs")
    assert status == 200 and "/openapi.json" in html


async def test_deposit_is_for_the_orders_own_kitchen_and_cabinet(tiny: Client) -> None:
    _, placed = await place(tiny)
    oid = placed["id"]
    for role, scope in (("kitchen", "other"), ("cabinet", "north-a"), ("operator", "north")):
        status, body, _ = await tiny.call(
            "POST", "/v1/cabinets/north-a/deposit", role=role, scope=scope, json={"order_id": oid}
        )
        assert status in (403, 404), (role, status)
        assert_problem(body, status)
    status, body, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/deposit", role="kitchen", scope="bakery", json={"order_id": "o-x"}
    )
    assert status == 404
    status, body, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/deposit", role="kitchen", scope="bakery", json={}
    )
    assert status == 422 and body["errors"][0]["field"] == "order_id"
    # depositing twice answers the same slots and changes nothing
    status, first, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/deposit", role="kitchen", scope="bakery", json={"order_id": oid}
    )
    status2, again, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/deposit", role="kitchen", scope="bakery", json={"order_id": oid}
    )
    assert status == status2 == 200 and first == again
    # a cancelled order cannot be deposited
    _, other = await place(tiny, "bob", items=[{"sku": "croissant", "qty": 1}])
    await tiny.call("POST", f"/v1/orders/{other['id']}/cancel", role="commuter", scope="bob")
    status, body, _ = await tiny.call(
        "POST",
        "/v1/cabinets/north-a/deposit",
        role="kitchen",
        scope="bakery",
        json={"order_id": other["id"]},
    )
    assert status == 409


async def test_metrics_count_admissions_by_outcome_and_show_cabinets_and_pool(tiny: Client) -> None:
    for who in ("a", "b"):
        assert (await place(tiny, who, items=[{"sku": "juice", "qty": 1}]))[0] == 201
    assert (await place(tiny, "c", items=[{"sku": "juice", "qty": 1}]))[0] == 409
    status, text, _ = await tiny.call("GET", "/metrics")
    assert status == 200
    assert 'exitbox_admissions_total{outcome="confirmed"} 2' in text
    assert 'exitbox_admissions_total{outcome="no-cabinet-capacity"} 1' in text
    assert 'exitbox_cabinet_slots{cabinet="north-a",zone="chilled"} 2' in text
    assert "exitbox_db_pool_size" in text and "exitbox_db_up 1" in text
    assert 'exitbox_http_request_seconds_count{route="/v1/orders"} 3' in text


async def test_one_batch_for_two_kitchens_at_a_shared_station_promises_no_slot_twice(
    demo: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Orders for two kitchens that share a station arrive together and are written in one batch:
    the second kitchen sees the slot time the first just took (no clash, no retry), and both
    cached states equal a fresh load afterwards."""
    import asyncio
    import logging

    from db.queries.plans import load_state
    from service.api.keys import CTX

    caplog.set_level(logging.WARNING, logger="exitbox.ordering")
    ctx = demo.app[CTX]
    menus = {"k-dawn": "bun-pork", "k-oven": "croissant"}
    eta = (demo.clock.now() + timedelta(minutes=150)).isoformat()

    async def one(i: int) -> tuple[int, Any]:
        kid = "k-oven" if i % 2 else "k-dawn"
        body = {"station_id": "s03", "kitchen_id": kid, "eta": eta, "items": [{"sku": menus[kid], "qty": 1}]}
        status, resp, _ = await demo.call("POST", "/v1/orders", role="commuter", scope=f"b{i}", json=body)
        return status, resp

    batches = ctx.placements.batches
    got = await asyncio.gather(*(one(i) for i in range(10)))
    assert all(status == 201 for status, _ in got), got
    assert ctx.placements.batches - batches < 10  # some were written together
    assert not [r for r in caplog.records if "taken meanwhile" in r.getMessage()]
    await assert_plan_checks(demo)
    conn = await demo.conn()
    try:
        _, world = await ctx.worlds.get(conn)
        cabs = set(world.station_cabinets["s03"])
        for kid in menus:
            fresh = await load_state(conn, world, kid, ["s03"], demo.clock.now())
            assert plan_shape(ctx.plans.entries[kid].state, cabs)[2] == plan_shape(fresh, cabs)[2]
    finally:
        await conn.close()


async def cancel_unseen(conn: Any, order_id: str) -> None:
    """An order cancelled and its slot time freed behind the plan cache's back, moving no slot
    version (as a pickup or an expiry frees slot time)."""
    async with conn.transaction():
        await conn.execute("update orders set status = 'cancelled' where id = $1", order_id)
        await conn.execute("update parcels set state = 'released' where order_id = $1", order_id)


def plan_shape(st: Any, cabinets: set[str]) -> tuple[list[Any], list[Any], list[Any]]:
    """A plan state's tasks, runs and the slot time at ``cabinets``, comparable between a cached
    state and a fresh load."""
    return (
        sorted((t.id, t.start, t.end, tuple(sorted(t.units.items()))) for t in st.plan.tasks.values()),
        sorted((r.id, r.depart, tuple(sorted(r.orders))) for r in st.plan.runs.values()),
        sorted(
            (rv.order_id, rv.cabinet_id, rv.slot, rv.start, rv.end)
            for rv in st.plan.reservations
            if rv.cabinet_id in cabinets
        ),
    )


@pytest.mark.parametrize("shared", [False, True], ids=["one-kitchen", "two-kitchens-one-station"])
async def test_plan_cache_matches_a_fresh_load_after_every_placement(demo: Client, shared: bool) -> None:
    """The cached state of a kitchen equals what the database says after each placement; with two
    kitchens taking turns at a station they share, each catches up on the other's slot time."""
    from db.queries.plans import load_state
    from service.api.keys import CTX

    ctx = demo.app[CTX]
    conn = await demo.conn()
    menus = {"k-dawn": ["bun-pork", "soy-milk"], "k-oven": ["croissant", "yogurt"]}
    try:
        for i in range(12):
            kid = "k-oven" if shared and i % 2 else "k-dawn"
            eta = (demo.clock.now() + timedelta(minutes=100 + 7 * i)).isoformat()
            body = {
                "station_id": "s03",
                "kitchen_id": kid,
                "eta": eta,
                "items": [{"sku": menus[kid][0], "qty": 1 + i % 2}, {"sku": menus[kid][1], "qty": 1}],
            }
            status, resp, _ = await demo.call("POST", "/v1/orders", role="commuter", scope=f"p{i}", json=body)
            assert status == 201, resp
            held = ctx.plans.entries[kid]
            cached = held.state
            assert held.version == await conn.fetchval("select plan_version from kitchens where id = $1", kid)
            assert held.stations["s03"][0] == await conn.fetchval(
                "select slot_version from stations where id = 's03'"
            )
            _, world = await ctx.worlds.get(conn)
            fresh = await load_state(conn, world, kid, ["s03"], demo.clock.now())
            cabs = set(world.station_cabinets["s03"])
            assert plan_shape(cached, cabs) == plan_shape(fresh, cabs)
        assert ctx.plans.hits >= 10
        if shared:  # each turn found the other kitchen's new slot time and added just that
            assert ctx.plans.caught_up >= 9
    finally:
        await conn.close()


async def test_aged_slot_time_is_read_again_out_of_the_way_frees_included_and_the_kitchens_take_it(
    demo: Client,
) -> None:
    """Slot time read more than half its age ago is read again in the background (one snapshot, no
    locks): a free that moved no slot version (as a pickup's; here written behind the cache's
    back) shows, and the cached kitchen states take the new read at once, so no placement batch has to
    stop for it."""
    from dataclasses import replace

    from db.queries.plans import load_state
    from service.api.keys import CTX

    ctx = demo.app[CTX]
    eta = (demo.clock.now() + timedelta(minutes=120)).isoformat()
    body = {"station_id": "s03", "kitchen_id": "k-dawn", "eta": eta, "items": [{"sku": "bun-pork", "qty": 1}]}
    ids = []
    for i in range(3):
        status, resp, _ = await demo.call("POST", "/v1/orders", role="commuter", scope=f"r{i}", json=body)
        assert status == 201, resp
        ids.append(resp["id"])
    conn = await demo.conn()
    try:
        _, world = await ctx.worlds.get(conn)
        cabs = set(world.station_cabinets["s03"])
        await cancel_unseen(conn, ids[0])  # gone, and its slot time free, with no slot version moved
        entry = ctx.plans.slots["s03"]
        assert await ctx.plans.refresh(conn, world, demo.clock.now()) == 0  # still fresh: nothing read
        entry.at -= ctx.plans.max_age * 0.6
        refreshed = ctx.plans.refreshed
        assert await ctx.plans.refresh(conn, world, demo.clock.now()) >= 1
        assert ctx.plans.refreshed > refreshed and ctx.plans.slots["s03"] is not entry
        assert ids[0] not in {rv.order_id for rv in ctx.plans.slots["s03"].rvs}
        held = ctx.plans.entries["k-dawn"]
        assert held.stations["s03"][2] is ctx.plans.slots["s03"]
        fresh = await load_state(conn, world, "k-dawn", ["s03"], demo.clock.now())
        assert plan_shape(held.state, cabs)[2] == plan_shape(fresh, cabs)[2]
        assert ids[0] not in {rv.order_id for rv in held.state.plan.reservations}
        status, text, _ = await demo.call("GET", "/metrics", role="admin", scope="ops")
        assert f"exitbox_plan_cache_refreshed_total {ctx.plans.refreshed}" in str(text)
        # the next placement goes the prepared way on the new read
        prepared = ctx.placements.prepared
        status, resp, _ = await demo.call("POST", "/v1/orders", role="commuter", scope="r9", json=body)
        assert status == 201, resp
        assert ctx.placements.prepared == prepared + 1
        # nothing freed since: the station is counted, not read again, and marked fresh
        entry = ctx.plans.slots["s03"]
        entry.at -= ctx.plans.max_age * 0.6
        aged, refreshed = entry.at, ctx.plans.refreshed
        assert await ctx.plans.refresh(conn, world, demo.clock.now()) == 0
        assert ctx.plans.slots["s03"] is entry and entry.at > aged and ctx.plans.refreshed == refreshed
        # slot time of a batch this process wrote ahead, not committed yet, stays on top of a read
        version = entry.version
        ahead = replace(entry.rvs[-1], order_id="o-ahead", start=1, end=2)
        ctx.plans.grow({"s03": version}, {"s03": version + 1}, [ahead], world)
        await cancel_unseen(conn, ids[1])
        ctx.plans.slots["s03"].at -= ctx.plans.max_age * 0.6
        assert await ctx.plans.refresh(conn, world, demo.clock.now()) >= 1
        entry = ctx.plans.slots["s03"]
        assert entry.version == version + 1 and entry.rvs[-1] is ahead
        assert ids[1] not in {rv.order_id for rv in entry.rvs}
        assert entry.marks[version] == len(entry.rvs) - 1 and entry.marks[version + 1] == len(entry.rvs)
        ctx.plans.clear()  # that batch "failed": the caches go
    finally:
        await conn.close()
    await assert_plan_checks(demo)


async def test_a_kitchen_state_checked_out_while_a_re_read_is_handed_round_is_left_alone(
    demo: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-read of slot time is handed to the cached kitchen states one at a time, placements
    going on in between: a state a batch checks out meanwhile is not touched (the batch catches up
    itself), and the hand-round goes on with the others."""
    from service.api.keys import CTX

    ctx = demo.app[CTX]
    eta = (demo.clock.now() + timedelta(minutes=120)).isoformat()
    menus = {"k-dawn": "bun-pork", "k-oven": "croissant"}
    ids = []
    for i, kid in enumerate(["k-dawn", "k-oven", "k-dawn"]):
        body = {"station_id": "s03", "kitchen_id": kid, "eta": eta, "items": [{"sku": menus[kid], "qty": 1}]}
        status, resp, _ = await demo.call("POST", "/v1/orders", role="commuter", scope=f"h{i}", json=body)
        assert status == 201, resp
        ids.append(resp["id"])
    first, second = list(ctx.plans.entries)
    assert all("s03" in ctx.plans.entries[k].stations for k in (first, second))
    conn = await demo.conn()
    try:
        _, world = await ctx.worlds.get(conn)
        await cancel_unseen(conn, ids[0])  # a free the cache has not seen: the station is read again
        ctx.plans.slots["s03"].at -= ctx.plans.max_age * 0.6
        taken: list[Any] = []
        rebuild = ctx.plans._rebuild

        def rebuild_then_a_batch_checks_out(*args: Any) -> None:
            rebuild(*args)
            if not taken:  # a batch takes the other kitchen's state between two hand-outs
                taken.append(ctx.plans.entries.pop(second))

        monkeypatch.setattr(ctx.plans, "_rebuild", rebuild_then_a_batch_checks_out)
        assert await ctx.plans.refresh(conn, world, demo.clock.now()) >= 1
        entry = ctx.plans.slots["s03"]
        assert ctx.plans.entries[first].stations["s03"][2] is entry
        assert taken[0].stations["s03"][2] is not entry  # left as the batch took it
        assert ids[0] not in {rv.order_id for rv in ctx.plans.entries[first].state.plan.reservations}
    finally:
        await conn.close()
    ctx.plans.clear()
    await assert_plan_checks(demo)


async def test_a_batch_prepared_on_plans_another_instance_changed_is_admitted_again_under_the_locks(
    demo: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Placements are admitted ahead on this process's cached plans; when another instance wrote to
    the kitchen and station meanwhile, the versions under the locks say so, the caches are dropped
    and the batch is admitted again on what the database holds: nothing promised twice, no retry
    on the exclusion constraint, and the cache equals a fresh load."""
    import logging

    from db.queries.plans import load_state
    from service.api.keys import CTX
    from service.auth import Principal
    from service.ordering import Ctx, place
    from service.schemas import PlaceOrder

    caplog.set_level(logging.WARNING, logger="exitbox.ordering")
    ctx = demo.app[CTX]
    other = Ctx(ctx.pool, ctx.settings, ctx.secret, ctx.clock)  # a second instance: its own caches
    eta = (demo.clock.now() + timedelta(minutes=120)).isoformat()
    body = {"station_id": "s03", "kitchen_id": "k-dawn", "eta": eta, "items": [{"sku": "bun-pork", "qty": 1}]}
    for i in range(3):
        status, resp, _ = await demo.call("POST", "/v1/orders", role="commuter", scope=f"a{i}", json=body)
        assert status == 201, resp
    prepared, dropped = ctx.placements.prepared, ctx.plans.epoch
    assert prepared >= 1  # the caches were warm: later batches were admitted ahead
    for i in range(3):
        status, _ = await place(
            other, Principal("commuter", f"o{i}", f"o{i}"), PlaceOrder.model_validate(body), None
        )
        assert status == 201
    status, resp, _ = await demo.call("POST", "/v1/orders", role="commuter", scope="late", json=body)
    assert status == 201, resp
    assert ctx.placements.prepared == prepared + 1 and ctx.plans.epoch > dropped
    assert not [r for r in caplog.records if "taken meanwhile" in r.getMessage()]
    await assert_plan_checks(demo)
    conn = await demo.conn()
    try:
        _, world = await ctx.worlds.get(conn)
        fresh = await load_state(conn, world, "k-dawn", ["s03"], demo.clock.now())
        held = ctx.plans.entries["k-dawn"]
        assert held.version == await conn.fetchval("select plan_version from kitchens where id = 'k-dawn'")
        cabs = set(world.station_cabinets["s03"])
        assert plan_shape(held.state, cabs) == plan_shape(fresh, cabs)
        assert len(plan_shape(fresh, cabs)[2]) >= 7  # all seven orders' slot time, each once
    finally:
        await conn.close()
        await other.placements.close()


async def test_a_pickup_code_live_at_the_cabinet_is_drawn_again_and_nothing_is_written_twice(
    tiny: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch write refuses a code that is live at its cabinet as a whole; the clashing order
    draws again and every row is written once."""
    drawn = iter(["424242", "424242", "515151"])
    monkeypatch.setattr("service.codes.new_code", lambda: next(drawn))
    status, first = await place(tiny, "a", items=[{"sku": "juice", "qty": 1}])
    assert status == 201 and first["pickup_code"] == "424242"
    status, second = await place(tiny, "b", items=[{"sku": "juice", "qty": 1}])
    assert status == 201, second
    assert second["cabinet_id"] == first["cabinet_id"] and second["pickup_code"] == "515151"
    conn = await tiny.conn()
    try:
        counts = await conn.fetchrow(
            """select (select count(*) from orders) as orders,
                      (select count(*) from order_events where kind = 'placed') as events,
                      (select count(*) from run_orders) as seats,
                      (select count(*) from parcels) as parcels"""
        )
    finally:
        await conn.close()
    assert dict(counts) == {"orders": 2, "events": 2, "seats": 2, "parcels": 2}
    await assert_plan_checks(tiny)


async def test_the_placement_write_looks_up_live_codes_by_key_while_statistics_lag(tiny: Client) -> None:
    """The code clash look-up in the placement batch's statement probes the live-code index with each
    new order's cabinet and code, also when the planner still believes there are few live orders
    (statistics lag behind a morning's growth until autovacuum's next analyze) and the statement
    runs on a generic plan (asyncpg prepares it; PostgreSQL moves to a generic plan after a few
    runs). With a join there, that plan read every live order of the database on every batch."""
    from service.ordering import PLACE_SQL

    status, _ = await place(tiny, "a", items=[{"sku": "juice", "qty": 1}])
    assert status == 201
    conn = await tiny.conn()
    try:
        await conn.execute("analyze orders")  # one live order, as far as the planner knows
        await conn.execute(
            """insert into orders (id, commuter_id, station_id, cabinet_id, kitchen_id, eta, items,
                                   total_cents, status, code_hash, code_sealed)
               select o.id || '-' || i, o.commuter_id, o.station_id, o.cabinet_id, o.kitchen_id, o.eta,
                      o.items, o.total_cents, o.status, sha256((o.id || '-' || i)::bytea), o.code_sealed
                 from orders o, generate_series(1, 3000) i"""
        )
        await conn.execute("prepare place_batch as " + PLACE_SQL)
        await conn.execute("set plan_cache_mode = force_generic_plan")
        n = await conn.fetchval(
            "select cardinality(parameter_types) from pg_prepared_statements where name = 'place_batch'"
        )
        plan = await conn.fetchval(f"explain (format json) execute place_batch({', '.join(['null'] * n)})")
    finally:
        await conn.close()

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    reads = [
        n for n in nodes(plan[0]["Plan"]) if n.get("Relation Name") == "orders" and "Scan" in n["Node Type"]
    ]
    assert reads, "the statement no longer reads orders; this test is out of date"
    for n in reads:
        assert n["Node Type"] in ("Index Scan", "Index Only Scan"), n
        assert n["Index Name"] == "orders_live_code", n
        assert "cabinet_id" in n["Index Cond"] and "code_hash" in n["Index Cond"], n


async def warm_placements(demo: Client) -> dict[str, Any]:
    """Two placements at s03 from k-dawn, so that what follows is prepared on the cached plans;
    returns their body, for more of the same. The placements' batcher is idle after."""
    import asyncio

    eta = (demo.clock.now() + timedelta(minutes=120)).isoformat()
    body = {"station_id": "s03", "kitchen_id": "k-dawn", "eta": eta, "items": [{"sku": "bun-pork", "qty": 1}]}
    for i in range(2):
        status, resp, _ = await demo.call("POST", "/v1/orders", role="commuter", scope=f"w{i}", json=body)
        assert status == 201, resp
    await asyncio.sleep(0.2)
    return body


def pending(body: dict[str, Any], subject: str, key: str | None) -> Any:
    """A placement request of ``subject`` as the placements' batcher holds it (``Pending``)."""
    import asyncio

    from service.auth import Principal
    from service.batching import Pending
    from service.ordering import PlaceRequest, _request_hash
    from service.schemas import PlaceOrder

    principal, order = Principal("commuter", subject, subject), PlaceOrder.model_validate(body)
    digest = "" if key is None else _request_hash(principal, order)
    req = PlaceRequest(principal, order, key, digest, {i["sku"]: i["qty"] for i in body["items"]})
    return Pending(req, asyncio.get_running_loop().create_future())


async def test_a_prepared_batch_whose_predecessor_was_written_again_meanwhile_is_admitted_again(
    demo: Client,
) -> None:
    """Two placement writings can be at work at once. Batch A is prepared, then B on top of A's
    cached result; A is then written the ordinary way (as after a failed write: caches dropped,
    admitted again from the database), under other ids but leaving the very versions B assumed,
    while B, its writing already begun, waits for its locks. B must not write what
    it was prepared on (A's run and batch as they were never stored): it is admitted again."""
    import asyncio

    from service.api.keys import CTX
    from service.ordering import _place_batch, _prepare_placements, lock_key

    ctx = demo.app[CTX]
    body = await warm_placements(demo)
    a, b = pending(body, "a", None), pending(body, "b", "b-key")
    job_a = _prepare_placements(ctx, "orders", [a])
    job_b = _prepare_placements(ctx, "orders", [b])
    assert job_a is not None and job_b is not None
    job_a.run.close()  # A's prepared writing never happens
    side = await demo.conn()
    try:
        # B's first lock is its Idempotency-Key's: held here, B waits having taken no other
        await side.execute("begin")
        await side.execute("select pg_advisory_xact_lock($1)", lock_key("idem:b:b-key"))
        writing_b = asyncio.create_task(job_b.run)
        await asyncio.sleep(0.2)
        assert not writing_b.done()
        ctx.plans.clear()  # as A's failed writing does before admitting it again
        assert await _place_batch(ctx, "orders", [a]) == []
        status, placed_a = a.future.result()
        assert status == 201
        await side.execute("commit")
        assert await asyncio.wait_for(writing_b, 10) == []
        status, placed_b = b.future.result()
        assert status == 201, placed_b
    finally:
        await side.close()
    await assert_plan_checks(demo)
    conn = await demo.conn()
    try:
        ids = [placed_a["id"], placed_b["id"]]
        seats = await conn.fetch("select order_id from run_orders where order_id = any($1::text[])", ids)
    finally:
        await conn.close()
    assert len(seats) == 2  # both stored with a run that exists


async def test_a_prepared_batch_whose_slot_was_taken_out_of_service_meanwhile_is_admitted_again(
    demo: Client,
) -> None:
    """Taking an empty slot out of service moves no plan or slot version, only the network stamp:
    the store of a batch prepared before it sees that and writes nothing, and the batch is admitted
    again on the network as it now is, into another slot."""
    from service.api.keys import CTX
    from service.ordering import _prepare_placements

    ctx = demo.app[CTX]
    body = await warm_placements(demo)
    p = pending(body, "d", None)
    job = _prepare_placements(ctx, "orders", [p])
    assert job is not None
    rv = ctx.plans.slots["s03"].rvs[-1]  # the slot time the prepared batch took
    status, resp, _ = await demo.call(
        "POST", f"/v1/slots/{rv.cabinet_id}/{rv.slot}/disable", role="operator", scope="s03"
    )
    assert status == 200 and resp["affected"] == [], resp  # nothing stored there yet
    dropped = ctx.plans.epoch
    assert await job.run == []
    status, placed = p.future.result()
    assert status == 201, placed
    assert ctx.plans.epoch > dropped  # admitted again
    status, order, _ = await demo.call("GET", f"/v1/orders/{placed['id']}", role="commuter", scope="d")
    assert status == 200 and rv.slot not in order["slots"], order
    await assert_plan_checks(demo)


async def test_a_prepared_batch_whose_idempotency_key_another_instance_took_meanwhile_is_refused(
    demo: Client,
) -> None:
    """Another instance stored a different request under the same Idempotency-Key while this one's
    batch was prepared, at another kitchen and station (no version this batch assumed moved): the
    batch writes nothing and the request is refused as a reused key, not stored as a second order."""
    from service.api.keys import CTX
    from service.auth import Principal
    from service.http import Problem
    from service.ordering import Ctx, _prepare_placements, place
    from service.schemas import PlaceOrder

    ctx = demo.app[CTX]
    other = Ctx(ctx.pool, ctx.settings, ctx.secret, ctx.clock)  # a second instance: its own caches
    body = await warm_placements(demo)
    p = pending(body, "k", "twice")
    job = _prepare_placements(ctx, "orders", [p])
    assert job is not None
    there = {**body, "station_id": "s05", "kitchen_id": "k-oven", "items": [{"sku": "croissant", "qty": 1}]}
    try:
        status, _ = await place(
            other, Principal("commuter", "k", "k"), PlaceOrder.model_validate(there), "twice"
        )
    finally:
        await other.placements.close()
    assert status == 201
    assert await job.run == []
    with pytest.raises(Problem) as refused:
        p.future.result()
    assert refused.value.status == 422 and refused.value.slug == "idempotency-key-reused"
    conn = await demo.conn()
    try:
        assert await conn.fetchval("select count(*) from orders where commuter_id = 'k'") == 1
    finally:
        await conn.close()
    await assert_plan_checks(demo)
