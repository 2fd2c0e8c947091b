"""The application factory. Nothing happens at import time: the pool, migrations, the network and
background loops are opened and closed by cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources

import asyncpg
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from db.migrate import migrate
from db.pool import create_pool, init_connection
from db.queries.network import save_network
from solver.model import NetworkSpec

from .api import load_all
from .api.keys import CTX
from .clock import Clock, SystemClock, VirtualClock
from .events import HUB, Hub
from .http import SECRET_KEY, Api, openapi, problem_middleware
from .ordering import Ctx
from .planner import Outcome
from .settings import Settings
from .web.pages import DEMO_LINKS

log = logging.getLogger("exitbox.app")
VERSION = "0.1.0"


@dataclass
class Metrics:
    """A few Prometheus series kept in process."""

    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)
    latency_sum: dict[str, float] = field(default_factory=dict)
    latency_buckets: dict[tuple[str, float], int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, float("inf"))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency_sum[route] = self.latency_sum.get(route, 0.0) + seconds
        for b in self.BUCKETS:
            if seconds <= b:
                self.latency_buckets[(route, b)] = self.latency_buckets.get((route, b), 0) + 1

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def observe_planner(self, out: Outcome) -> None:
        self.gauges[f'planner_last_seconds{{kitchen="{out.kitchen_id}"}}'] = out.seconds
        if out.gap is not None:
            self.gauges[f'planner_gap_to_bound{{kitchen="{out.kitchen_id}"}}'] = out.gap

    def render(self) -> str:
        lines = ["# TYPE exitbox_http_requests_total counter"]
        for (route, method, status), n in sorted(self.requests.items()):
            lines.append(
                f'exitbox_http_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}'
            )
        lines.append("# TYPE exitbox_http_request_seconds histogram")
        for (route, b), n in sorted(self.latency_buckets.items()):
            le = "+Inf" if b == float("inf") else str(b)
            lines.append(f'exitbox_http_request_seconds_bucket{{route="{route}",le="{le}"}} {n}')
        for route, s in sorted(self.latency_sum.items()):
            lines.append(f'exitbox_http_request_seconds_sum{{route="{route}"}} {s:.6f}')
            count = self.latency_buckets.get((route, float("inf")), 0)
            lines.append(f'exitbox_http_request_seconds_count{{route="{route}"}} {count}')
        for name, n in sorted(self.counters.items()):
            lines.append(f"exitbox_{name} {n}")
        for name, v in sorted(self.gauges.items()):
            lines.append(f"exitbox_{name} {v:.6f}")
        return "\n".join(lines) + "\n"


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


class SafeAccessLogger(AbstractAccessLogger):
    """One JSON-ready line per request: method, path without its query (tokens may ride there),
    status, duration and the request id. Never headers, never bodies."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,
            response.status,
            time * 1000,
            extra={"request_id": response.headers.get("X-Request-Id", ""), "path": request.path},
        )  # noqa: RUF100


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    t0 = time.perf_counter()
    resp = await handler(request)
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    request.app[METRICS].observe(name, request.method, resp.status, time.perf_counter() - t0)
    return resp


def create_app(
    settings: Settings,
    database_url: str,
    secret: str,
    *,
    clock: Clock | None = None,
    network: NetworkSpec | None = None,
    background: bool = True,
    demo: bool = False,
    extra_startup: Callable[[web.Application], AsyncIterator[None]] | None = None,
    manage_gc: bool = False,
) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware, problem_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SECRET_KEY] = secret
    app[METRICS] = Metrics()
    api = load_all()
    api.register(app)
    _ops_routes(app, api)
    virtual = None
    if demo and clock is None and network is not None:
        from .demo import demo_links, demo_start

        virtual = VirtualClock(demo_start(network, SystemClock().now()), settings.demo_speed)
        clock = virtual
        app[DEMO_LINKS] = demo_links(network, secret)
    clock = clock or SystemClock()

    async def database(app: web.Application) -> AsyncIterator[None]:
        conn = await asyncpg.connect(database_url)
        try:
            await init_connection(conn)
            applied = await migrate(conn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            if network is not None:
                async with conn.transaction():
                    stats = await save_network(conn, network)
                log.info("network %s loaded: %s", network.city, stats)
        finally:
            await conn.close()
        pool = await create_pool(database_url, settings.pool_min, settings.pool_max)
        app[CTX] = Ctx(pool, settings, secret, clock)
        yield
        await app[CTX].placements.close()
        await pool.close()

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        from .planner import planner_loop

        tasks = []
        if background:
            tasks.append(asyncio.create_task(_sweep_loop(app)))
            tasks.append(asyncio.create_task(_slot_refresh_loop(app)))
            m = app[METRICS]

            def count(out: Outcome) -> None:
                m.inc(f'planner_runs_total{{result="{out.result}"}}')
                m.observe_planner(out)

            tasks.append(
                asyncio.create_task(
                    planner_loop(app[CTX], settings.planner_interval_seconds, settings.planner_seconds, count)
                )
            )
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def events(app: web.Application) -> AsyncIterator[None]:
        hub = Hub(database_url)
        app[HUB] = hub
        await hub.start()
        yield
        await hub.stop()

    async def end_streams(app: web.Application) -> None:
        # open event streams would hold shutdown up: tell them goodbye first
        if HUB in app:
            await app[HUB].stop()

    app.on_shutdown.append(end_streams)

    async def demo_driver(app: web.Application) -> AsyncIterator[None]:
        from .demo import DemoDriver

        assert virtual is not None and network is not None
        driver = DemoDriver(app[CTX], network, virtual)
        task = asyncio.create_task(driver.run())
        log.info("demo morning from %s at %sx", virtual.start.isoformat(), settings.demo_speed)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(events)
    app.cleanup_ctx.append(sweeper)
    if virtual is not None:
        app.cleanup_ctx.append(demo_driver)
    if extra_startup is not None:
        app.cleanup_ctx.append(extra_startup)
    if manage_gc:
        app.cleanup_ctx.append(_garbage_collector)
    return app


async def _garbage_collector(app: web.Application) -> AsyncIterator[None]:
    """The process's full garbage collections on a timer instead of by allocation count.

    Left to itself, CPython runs a full collection each time the heap has grown by a quarter; with
    plan caches of many thousands of objects growing by every order, that is a pause of 50 to 150 ms
    every few seconds at rush hour. So: what start-up made is frozen out of collection, full
    collections run only every ``gc_full_seconds`` (their length is in /metrics), young ones every
    2,000 net allocations, and the middle generation is left to the full ones. Under the load
    benchmark, young collections every 10,000 allocations took 10 ms on average (up to 24 ms) and
    middle ones up to 78 ms, together the worst 1% of placements; at 2,000 a young one takes
    about 2 ms, and p99 went from 79-96 ms to 53-55 ms.

    What survives a full collection is frozen too, so the next one looks only at what was made
    since. Otherwise every full collection went through all the morning's plans again: under the
    load benchmark, 15 s apart, they took 0.12, 0.22 and 0.28 s (124,000 to 204,000 objects),
    the whole service standing still meanwhile; frozen, 0.11, 0.06 and 0.10 s. Frozen objects are
    still freed when their last reference goes; only a reference cycle among them would stay (the
    plan states and the network have none), and the frozen count is in /metrics."""
    settings = app[CTX].settings
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(2_000, 1_000_000, 1_000_000_000)  # no middle or full collection by count

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.gc_full_seconds)
            t0 = time.perf_counter()
            n = gc.collect()
            gc.freeze()  # what survived is left out of the next full collection
            app[METRICS].gauges["gc_last_full_seconds"] = time.perf_counter() - t0
            app[METRICS].gauges["gc_frozen_objects"] = gc.get_freeze_count()
            app[METRICS].inc("gc_full_total")
            app[METRICS].inc("gc_collected_total", n)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gc.unfreeze()
    gc.set_threshold(*old)


async def _sweep_loop(app: web.Application) -> None:
    from .operations import sweep_expired

    ctx = app[CTX]
    while True:
        try:
            n = await sweep_expired(ctx)
            if n:
                app[METRICS].inc("parcels_expired_total", n)
                log.info("expired %d orders", n)
        except Exception as exc:  # keep sweeping through outages
            log.warning("expiry sweep failed: %s", exc)
        await asyncio.sleep(ctx.settings.expiry_sweep_seconds)


async def _slot_refresh_loop(app: web.Application, every: float = 1.0) -> None:
    """Keep the slot time placements read from the plan cache fresh, out of their way."""
    ctx = app[CTX]
    while True:
        await asyncio.sleep(every)
        current = ctx.worlds.current
        if current is None:
            continue
        try:
            async with ctx.pool.acquire() as conn:
                await ctx.plans.refresh(conn, current[1], ctx.clock.now())
        except Exception as exc:  # outages: the batches read for themselves meanwhile
            log.warning("slot time refresh failed: %s", exc)


def _ops_routes(app: web.Application, api: Api) -> None:
    spec_doc = openapi(api, "exitbox", VERSION)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(spec_doc)

    async def docs(request: web.Request) -> web.Response:
        html = (resources.files("service.web") / "static" / "docs.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html")

    async def problem_doc(request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        return web.Response(text=json.dumps({"type": f"/problems/{slug}"}), content_type="application/json")

    from .web import pages

    pages.register(app)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get("/problems/{slug}", problem_doc)
