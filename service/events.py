"""Server-sent events fed by PostgreSQL LISTEN/NOTIFY, so every instance sees every change.

One connection per process listens on the channel; each client gets a queue, and sees only the
events within its token's scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web

from .auth import Principal
from .ordering import NOTIFY_CHANNEL

log = logging.getLogger("exitbox.events")


def visible(p: Principal, ev: dict[str, Any]) -> bool:
    if p.role == "admin":
        return True
    field = {
        "commuter": "commuter_id",
        "kitchen": "kitchen_id",
        "operator": "station_id",
        "cabinet": "cabinet_id",
    }[p.role]
    value = p.subject if p.role == "commuter" else p.scope
    return ev.get(field) == value


class Hub:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.clients: set[tuple[Principal, asyncio.Queue[dict[str, Any]]]] = set()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lost = asyncio.Event()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            ev = json.loads(payload)
        except ValueError:
            return
        for principal, q in list(self.clients):
            if visible(principal, ev):
                if q.qsize() < 1000:
                    q.put_nowait(ev)

    async def _run(self) -> None:
        """Keep a listening connection; after an outage, reconnect and tell clients to resync."""
        delay = 0.5
        first = True
        while not self._stopping:
            try:
                self._lost.clear()
                self._conn = await asyncpg.connect(self.dsn)
                self._conn.add_termination_listener(lambda _c: self._lost.set())
                await self._conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                delay = 0.5
                if not first:  # events may have been missed while we were away
                    for _, q in list(self.clients):
                        q.put_nowait({"kind": "resync"})
                first = False
                await self._lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("event listener lost the database: %s", exc)
            finally:
                if self._conn is not None and not self._conn.is_closed():
                    with contextlib.suppress(Exception):
                        await self._conn.close()
            if not self._stopping:
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._lost.set()
        for _, q in list(self.clients):
            q.put_nowait({"kind": "bye"})
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    @contextlib.asynccontextmanager
    async def subscribe(self, principal: Principal) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        entry = (principal, q)
        self.clients.add(entry)
        try:
            yield q
        finally:
            self.clients.discard(entry)


HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)


async def stream(request: web.Request, principal: Principal, heartbeat: float = 15.0) -> web.StreamResponse:
    hub = request.app[HUB]
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    await resp.write(b"retry: 3000\n: connected\n\n")
    async with hub.subscribe(principal) as q:
        while True:
            try:
                ev = await asyncio.wait_for(q.get(), timeout=heartbeat)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if ev.get("kind") == "bye":
                break
            data = json.dumps(ev)
            ident = f"id: {ev['id']}\n" if "id" in ev else ""
            await resp.write(f"{ident}data: {data}\n\n".encode())
    return resp
