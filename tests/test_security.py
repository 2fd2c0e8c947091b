"""Access: every endpoint against every role and a wrong scope; rate limits; logs and events keep
to their scope and never carry codes or tokens."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from service.app import SafeAccessLogger, create_app
from service.clock import FixedClock
from service.settings import Settings

from .conftest import SECRET, TINY_MORNING, Client, make_client, tiny_network
from .test_api import kitchen_plan, place

ROLES = {
    "commuter": ("alice", "bob"),
    "kitchen": ("bakery", "other"),
    "operator": ("north", "south"),
    "cabinet": ("north-a", "south-a"),
}


async def _fixture_ids(c: Client) -> dict[str, str]:
    status, placed = await place(c, "alice")
    assert status == 201
    plan = await kitchen_plan(c)
    task = plan["resources"][0]["tasks"][0]["id"] if plan["resources"][0]["tasks"] else plan["next"][0]["id"]
    return {"order": placed["id"], "code": placed["pickup_code"], "task": task, "run": plan["runs"][0]["id"]}


def _endpoints(ids: dict[str, str]) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, owner role) of every endpoint that needs a token."""
    eta = (TINY_MORNING + timedelta(hours=2)).isoformat()
    o = ids["order"]
    return [
        ("GET", f"/v1/orders/{o}", None, "commuter"),
        ("GET", f"/v1/orders/{o}/qr.svg", None, "commuter"),
        ("PATCH", f"/v1/orders/{o}", {"eta": eta}, "commuter"),
        ("POST", f"/v1/orders/{o}/cancel", None, "commuter"),
        ("GET", "/v1/kitchens/bakery/plan", None, "kitchen"),
        ("POST", f"/v1/kitchens/bakery/tasks/{ids['task']}/done", None, "kitchen"),
        ("POST", f"/v1/runs/{ids['run']}/depart", None, "kitchen"),
        ("POST", "/v1/cabinets/north-a/deposit", {"order_id": o}, "kitchen"),
        ("POST", "/v1/cabinets/north-a/open", {"code": ids["code"]}, "cabinet"),
        ("GET", "/v1/stations/north/occupancy", None, "operator"),
        ("GET", "/v1/stations/north/slots", None, "operator"),
        ("POST", "/v1/slots/north-a/H01/disable", None, "operator"),
        ("POST", "/v1/slots/north-a/H01/enable", None, "operator"),
        ("POST", "/v1/slots/north-a/H01/clear", None, "operator"),
    ]


async def test_every_endpoint_against_every_role_and_a_wrong_scope_leaks_nothing(tiny: Client) -> None:
    ids = await _fixture_ids(tiny)
    checked = 0
    for method, path, body, owner in _endpoints(ids):
        for role, (own, wrong) in ROLES.items():
            scopes = [wrong] if role == owner else [own, wrong]
            for scope in scopes:
                status, resp, _ = await tiny.call(method, path, role=role, scope=scope, json=body)
                assert status in (403, 404), (method, path, role, scope, status, resp)
                assert isinstance(resp, dict) and resp["status"] == status
                # nothing of the order leaks into the problem
                assert ids["code"] not in json.dumps(resp)
                checked += 1
        status, resp, _ = await tiny.call(method, path, json=body)
        assert status == 401, (method, path)
    assert checked > 80
    # and the owner is let through (the order is still live: nothing above changed it)
    status, body, _ = await tiny.call("GET", f"/v1/orders/{ids['order']}", role="commuter", scope="alice")
    assert status == 200 and body["status"] == "confirmed"


async def test_order_placement_is_rate_limited_per_token(db_url: str) -> None:
    async for c in make_client(db_url, tiny_network(), TINY_MORNING, orders_per_minute=3):
        for _ in range(3):
            status, _ = await place(c, "spammer", items=[{"sku": "pizza", "qty": 1}])
            assert status == 409  # invalid, but counted
        status, body, h = await c.call(
            "POST",
            "/v1/orders",
            role="commuter",
            scope="spammer",
            json={
                "station_id": "north",
                "kitchen_id": "bakery",
                "eta": TINY_MORNING.isoformat(),
                "items": [{"sku": "juice", "qty": 1}],
            },
        )
        assert status == 429 and 1 <= int(h["Retry-After"]) <= 60
        assert body["type"].endswith("too-many-orders")
        status, _ = await place(c, "someone-else")
        assert status == 201  # other tokens are not slowed down
        c.clock.advance(1.1)
        status, _ = await place(c, "spammer")
        assert status == 201


async def test_events_stay_in_scope_and_logs_carry_no_code_or_token(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FixedClock(TINY_MORNING)
    cfg = Settings(secret=SECRET, expiry_sweep_seconds=3600, pool_min=1, pool_max=10)
    app = create_app(cfg, db_url, SECRET, clock=clock, network=tiny_network(), background=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log_class=SafeAccessLogger)
    try:
        c = Client(aiohttp.ClientSession(), str(server.make_url("")).rstrip("/"), app, clock, db_url)
        alice, bob, kitchen = (
            c.token("commuter", "alice"),
            c.token("commuter", "bob"),
            c.token("kitchen", "bakery"),
        )
        seen: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": [], "kitchen": []}

        async def listen(who: str, token: str) -> None:
            url = f"{c.base}/v1/events?access_token={token}"
            async with c.session.get(url) as resp:
                assert resp.status == 200
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data: "):
                        seen[who].append(json.loads(line[6:]))

        tasks = [
            asyncio.create_task(listen(w, t))
            for w, t in (("alice", alice), ("bob", bob), ("kitchen", kitchen))
        ]
        await asyncio.sleep(0.5)
        status, placed = await place(c, "alice")
        assert status == 201
        await c.call("POST", f"/v1/orders/{placed['id']}/cancel", role="commuter", scope="alice")
        for _ in range(50):
            if len(seen["alice"]) >= 2 and len(seen["kitchen"]) >= 2:
                break
            await asyncio.sleep(0.1)
        assert [e["kind"] for e in seen["alice"]][:2] == ["placed", "cancelled"]
        assert [e["kind"] for e in seen["kitchen"]][:2] == ["placed", "cancelled"]
        assert seen["bob"] == []
        for t in tasks:
            t.cancel()
        # a token in the query string of a request that completes (and is access-logged)
        async with c.session.get(f"{c.base}/v1/events?access_token={alice}x") as resp:
            assert resp.status == 401
        await c.session.close()
        text = "\n".join(r.getMessage() + " " + json.dumps(getattr(r, "path", "")) for r in caplog.records)
        assert "GET /v1/events 401" in text  # logged, without its query
        for secret in (placed["pickup_code"], alice, bob, kitchen):
            assert secret not in text
    finally:
        await server.close()


def test_a_remembered_token_is_still_refused_once_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens are verified once and remembered; expiry is checked on every use all the same, and a
    token signed with another secret is never taken for a remembered one."""
    import time

    from service.auth import TokenError, mint_token, verify_token

    token = mint_token(SECRET, "commuter", "ann", ttl_hours=1)
    assert verify_token(SECRET, token).subject == "ann"
    with pytest.raises(TokenError, match="not valid"):
        verify_token(SECRET + "-other", token)
    later = time.time() + 2 * 3600
    monkeypatch.setattr("service.auth.time.time", lambda: later)
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token)
