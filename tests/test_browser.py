"""The pages in a real browser (Debian's Chromium driven by Playwright), live through SSE."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from .conftest import Client

CHROMIUM = os.environ.get("EXITBOX_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
expect.set_options(timeout=15_000)  # a loaded CI machine is slower than a laptop


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    assert HAVE_CHROMIUM, f"{CHROMIUM} is missing: install Debian's chromium package"
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
            ],
        )
        yield b
        await b.close()


async def open_page(browser: Browser, url: str, errors: list[str], width: int = 1100) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": 900})
    page.on(
        "console", lambda m: errors.append(f"{url.split('#')[0]}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: errors.append(f"{url.split('#')[0]}: {e}"))
    page.on("dialog", lambda d: d.accept())
    await page.goto(url)
    return page


async def test_commuter_orders_kitchen_cooks_station_sees_the_parcel(tiny: Client, browser: Browser) -> None:
    errors: list[str] = []
    commuter = tiny.token("commuter", "ann")
    page = await open_page(browser, f"{tiny.base}/app/order#token={commuter}", errors, width=390)
    await page.select_option("#station", "north")
    await expect(page.get_by_label("more Butter croissant")).to_be_visible()
    await page.get_by_label("more Butter croissant").click()
    await page.get_by_label("more Butter croissant").click()
    await page.get_by_role("button", name="Order", exact=True).click()
    code = page.locator("#code")
    await expect(code).to_have_text(re.compile(r"^\d{6}$"))
    await expect(page.locator("#qr svg")).to_be_visible()
    await expect(page.locator("#status")).to_have_attribute("data-status", "confirmed")
    order_id = await _only_order(tiny, "ann")

    # the kitchen board shows the task; done on the board moves the commuter's page, live
    tiny.clock.advance(10)
    board = await open_page(
        browser, f"{tiny.base}/app/kitchen/bakery#token={tiny.token('kitchen', 'bakery')}", errors
    )
    entry = board.locator("#next .entry", has_text="croissant")
    await expect(entry).to_be_visible()
    await expect(board.locator(".task", has_text="croissant 2/12")).to_be_visible()
    await entry.get_by_role("button", name="Done").click()
    await expect(page.locator("#status")).to_have_attribute("data-status", "cooking", timeout=10_000)
    await expect(page.locator(".timeline")).to_contain_text("cooking")

    # the station monitor shows the parcel once the courier deposits it
    station = await open_page(
        browser, f"{tiny.base}/app/station/north#token={tiny.token('operator', 'north')}", errors
    )
    await expect(station.locator(".slot").first).to_be_visible()
    assert await station.locator(".slot.occupied").count() == 0
    tiny.clock.advance(25)
    status, dep, _ = await tiny.call(
        "POST", "/v1/cabinets/north-a/deposit", role="kitchen", scope="bakery", json={"order_id": order_id}
    )
    assert status == 200, dep
    slot = station.locator(f'.slot[data-label="{dep["slots"][0]}"]')
    await expect(slot).to_have_class(re.compile("occupied"), timeout=10_000)
    await expect(page.locator("#status")).to_have_attribute("data-status", "in_cabinet", timeout=10_000)

    # taking a free slot out of service from the monitor
    free = station.locator(".slot.free").first
    label = await free.get_attribute("data-label")
    await free.click()
    await expect(station.locator(f'.slot[data-label="{label}"]')).to_have_class(re.compile("disabled"))
    status, body, _ = await tiny.call("GET", "/v1/stations/north/slots", role="operator", scope="north")
    assert any(s["label"] == label and not s["enabled"] for c in body["cabinets"] for s in c["slots"])
    assert errors == []


async def _only_order(c: Client, commuter: str) -> str:
    conn = await c.conn()
    try:
        ids = [r["id"] for r in await conn.fetch("select id from orders where commuter_id = $1", commuter)]
    finally:
        await conn.close()
    assert len(ids) == 1
    return ids[0]


async def test_rejection_shows_reason_and_alternatives_as_buttons(tiny: Client, browser: Browser) -> None:
    errors: list[str] = []
    # fill the two chilled slots at north for the page's default time
    _, offer, _ = await tiny.call("GET", "/v1/stations/north/offer")
    eta = _plus(offer["earliest_eta"], 30)
    for who in ("a", "b"):
        s, body, _ = await tiny.call(
            "POST",
            "/v1/orders",
            role="commuter",
            scope=who,
            json={
                "station_id": "north",
                "kitchen_id": "bakery",
                "eta": eta,
                "items": [{"sku": "juice", "qty": 1}],
            },
        )
        assert s == 201, body
    page = await open_page(
        browser, f"{tiny.base}/app/order#token={tiny.token('commuter', 'cy')}", errors, 390
    )
    await page.select_option("#station", "north")
    await page.get_by_label("more Orange juice").click()
    await page.get_by_role("button", name="Order", exact=True).click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("cabinet at that exit is full")
    alt = alert.locator(".alts button").first
    await expect(alt).to_be_visible()
    await alt.click()
    await expect(page.locator("#code")).to_have_text(re.compile(r"^\d{6}$"))
    # the browser itself logs the 409 answer of the first try; nothing else may complain
    assert [e for e in errors if "status of 409" not in e] == []


def _plus(iso: str, minutes: int) -> str:
    from datetime import datetime

    return (datetime.fromisoformat(iso) + timedelta(minutes=minutes)).isoformat()


async def test_pages_ask_for_a_token_and_index_links_them(tiny: Client, browser: Browser) -> None:
    errors: list[str] = []
    for path in ("/app/order", "/app/kitchen/bakery", "/app/station/north"):
        page = await open_page(browser, f"{tiny.base}{path}", errors)
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.close()
    page = await open_page(browser, f"{tiny.base}/", errors)
    await expect(page.get_by_role("link", name="Order breakfast")).to_be_visible()
    await expect(page.get_by_role("link", name="API documentation")).to_be_visible()
    docs = await open_page(browser, f"{tiny.base}/docs", errors)
    await expect(docs.locator("summary", has_text="/v1/orders").first).to_be_visible()
    assert errors == []
