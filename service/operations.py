"""Use cases of kitchens, cabinets and station operators, plus the expiry sweep."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg
from asyncpg.types import Range

from db.queries import plans as plan_q
from solver.model import SIZE_RANK

from . import codes
from .auth import Principal
from .http import Problem, not_found
from .ordering import LIVE, Ctx, _bump, emit, lock
from .schemas import (
    Affected,
    CabinetOccupancy,
    CabinetSlots,
    DepositOut,
    KitchenPlan,
    Occupancy,
    OccupancyPoint,
    OpenOut,
    ResourcePlan,
    RunOut,
    SlotOut,
    SlotState,
    StationSlots,
    TaskOrder,
    TaskOut,
    ZoneOccupancy,
)

log = logging.getLogger("exitbox.operations")


def _scoped(principal: Principal, role: str, scope_id: str, what: str) -> None:
    """Outside its scope a token sees nothing: answer as if the thing did not exist."""
    if not principal.can(role, scope_id):  # type: ignore[arg-type]
        raise not_found(what)


def _time_range(
    frm: datetime | None,
    to: datetime | None,
    start: datetime,
    span: timedelta,
    ok: Callable[[timedelta], bool],
    rule: str,
) -> tuple[datetime, datetime]:
    """A query's from/to: either end defaults from the other (or from ``start``), by ``span``."""
    if frm is None:
        frm = (to - span) if to else start
    if to is None:
        to = frm + span
    if to <= frm or not ok(to - frm):
        raise Problem(
            422,
            "validation",
            f"query field 'to': {rule}",
            errors=[{"field": "to", "in": "query", "reason": rule}],
        )
    return frm, to


# --------------------------------------------------------------------------- kitchen


def _run_out(r: asyncpg.Record, orders: list[str]) -> RunOut:
    return RunOut(
        id=r["id"],
        station_id=r["station_id"],
        depart=r["depart_at"],
        arrive=r["arrive_at"],
        back=r["back_at"],
        orders=orders,
        status=r["status"],
    )


def _task_out(r: asyncpg.Record, units: list[asyncpg.Record], batch: int) -> TaskOut:
    return TaskOut(
        id=r["id"],
        resource=r["resource"],
        kind=r["kind"],
        sku=r["sku"],
        step=r["step"],
        start=r["start_at"],
        end=r["end_at"],
        units=sum(u["units"] for u in units),
        batch=batch,
        orders=[TaskOrder(order_id=u["order_id"], units=u["units"]) for u in units],
        status=r["status"],
    )


async def kitchen_plan(
    ctx: Ctx, principal: Principal, kitchen_id: str, frm: datetime | None, to: datetime | None
) -> KitchenPlan:
    _scoped(principal, "kitchen", kitchen_id, f"kitchen {kitchen_id}")
    now = ctx.clock.now()
    frm, to = _time_range(
        frm,
        to,
        now - timedelta(minutes=30),
        timedelta(hours=2, minutes=30),
        lambda span: span <= timedelta(days=2),
        "must be after 'from' and within 2 days",
    )
    async with ctx.pool.acquire() as conn:
        spec, _ = await ctx.worlds.get(conn)
        k = spec.kitchen(kitchen_id)
        if k is None:
            raise not_found(f"kitchen {kitchen_id}")
        tasks = await conn.fetch(
            """select * from tasks where kitchen_id = $1 and end_at > $2 and start_at < $3
                order by start_at, id""",
            kitchen_id,
            frm,
            to,
        )
        units = await conn.fetch(
            "select task_id, order_id, units from task_units where task_id = any($1::text[]) "
            "order by order_id",
            [t["id"] for t in tasks],
        )
        runs = await conn.fetch(
            """select r.*, coalesce(array_agg(o.order_id order by o.order_id)
                                    filter (where o.order_id is not null), '{}') as oids
                 from runs r left join run_orders o on o.run_id = r.id
                where r.kitchen_id = $1 and r.back_at > $2 and r.depart_at < $3
                group by r.id order by r.depart_at""",
            kitchen_id,
            frm,
            to,
        )
    by_task: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for u in units:
        by_task[u["task_id"]].append(u)
    batch_of = {(m.sku, i + 1): s.batch for m in k.menu for i, s in enumerate(m.steps)}
    outs = [_task_out(t, by_task[t["id"]], batch_of.get((t["sku"], t["step"]), 1)) for t in tasks]
    resources = [
        ResourcePlan(id=r.id, capacity=r.capacity, tasks=[t for t in outs if t.resource == r.id])
        for r in k.resources
    ]
    nxt = [t for t in outs if t.status == "planned" and t.start <= now + timedelta(minutes=15)]
    return KitchenPlan(
        kitchen_id=kitchen_id,
        now=now,
        from_=frm,
        to=to,
        resources=resources,
        runs=[_run_out(r, list(r["oids"])) for r in runs],
        next=nxt[:12],
    )


async def task_done(ctx: Ctx, principal: Principal, kitchen_id: str, task_id: str) -> TaskOut:
    _scoped(principal, "kitchen", kitchen_id, f"kitchen {kitchen_id}")
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn, conn.transaction():
        t = await conn.fetchrow(
            "select * from tasks where id = $1 and kitchen_id = $2 for update", task_id, kitchen_id
        )
        if t is None:
            raise not_found(f"task {task_id}")
        units = await conn.fetch(
            "select task_id, order_id, units from task_units where task_id = $1 order by order_id",
            task_id,
        )
        if t["status"] != "done":
            await conn.execute("update tasks set status = 'done', done_at = $2 where id = $1", task_id, now)
            for u in units:
                oid = u["order_id"]
                st = await conn.fetchval("select status from orders where id = $1", oid)
                if st == "confirmed":
                    await conn.execute(
                        "update orders set status = 'cooking', updated_at = now() where id = $1", oid
                    )
                    await emit(conn, oid, "cooking", {"task_id": task_id}, now)
                if t["kind"] == "pack" and st in LIVE:
                    await conn.execute("update orders set ready_at = $2 where id = $1", oid, now)
                    await emit(conn, oid, "ready", {"task_id": task_id}, now)
            await _bump(conn, kitchen_id)
            t = await conn.fetchrow("select * from tasks where id = $1", task_id)
        spec, _ = await ctx.worlds.get(conn)
    k = spec.kitchen(kitchen_id)
    item = k.item(t["sku"]) if k and t["sku"] else None
    batch = item.steps[t["step"] - 1].batch if item and t["step"] else 1
    return _task_out(t, units, batch)


async def run_depart(ctx: Ctx, principal: Principal, run_id: str) -> RunOut:
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn, conn.transaction():
        r = await conn.fetchrow("select * from runs where id = $1 for update", run_id)
        if r is None or not principal.can("kitchen", r["kitchen_id"]):
            raise not_found(f"run {run_id}")
        oids = [
            x["order_id"]
            for x in await conn.fetch(
                "select order_id from run_orders where run_id = $1 order by order_id", run_id
            )
        ]
        if r["status"] != "departed":
            await conn.execute(
                "update runs set status = 'departed', departed_at = $2 where id = $1", run_id, now
            )
            for oid in oids:
                st = await conn.fetchval("select status from orders where id = $1", oid)
                if st in ("confirmed", "cooking"):
                    await conn.execute(
                        "update orders set status = 'on_the_way', updated_at = now() where id = $1",
                        oid,
                    )
                    await emit(conn, oid, "departed", {"run_id": run_id}, now)
            await _bump(conn, r["kitchen_id"])
            r = await conn.fetchrow("select * from runs where id = $1", run_id)
    return _run_out(r, oids)


# --------------------------------------------------------------------------- cabinet


async def _free_slot(
    conn: asyncpg.Connection,
    cabinet_id: str,
    zone: str,
    size: str,
    during: Range,
    prefer: int | None,
    exclude_parcel: int,
) -> tuple[int, str] | None:
    """A usable slot free of reservations over ``during`` and of parcels physically inside."""
    rows = await conn.fetch(
        """select s.id, s.label, s.size from slots s
            where s.cabinet_id = $1 and s.zone = $2 and s.enabled and not s.retired
              and not exists (select 1 from parcels p where p.slot_id = s.id and p.id <> $4
                                and p.state in ('reserved', 'deposited') and p.during && $3)
              and not exists (select 1 from parcels p where p.slot_id = s.id and p.id <> $4
                                and (p.state = 'deposited'
                                     or (p.state = 'expired' and p.removed_at is null)))""",
        cabinet_id,
        zone,
        during,
        exclude_parcel,
    )
    fits = [r for r in rows if SIZE_RANK[r["size"]] >= SIZE_RANK[size]]
    if not fits:
        return None
    fits.sort(key=lambda r: (r["id"] != prefer, SIZE_RANK[r["size"]], r["label"]))
    return fits[0]["id"], fits[0]["label"]


async def deposit(ctx: Ctx, principal: Principal, cabinet_id: str, order_id: str) -> DepositOut:
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn, conn.transaction():
        o = await conn.fetchrow("select * from orders where id = $1", order_id)
        if o is None or not principal.can("kitchen", o["kitchen_id"]):
            raise not_found(f"order {order_id}")
        if o["cabinet_id"] != cabinet_id:
            raise Problem(
                409, "wrong-cabinet", f"order {order_id} goes to cabinet {o['cabinet_id']}, not {cabinet_id}"
            )
        await lock(conn, f"station:{o['station_id']}")
        o = await conn.fetchrow("select * from orders where id = $1 for update", order_id)
        if o["status"] == "in_cabinet":
            already = [
                r["label"] or "overflow"
                for r in await conn.fetch(
                    "select s.label from parcels p left join slots s on s.id = p.slot_id "
                    "where p.order_id = $1 and p.state = 'deposited' order by p.zone",
                    order_id,
                )
            ]
            return DepositOut(
                order_id=order_id, cabinet_id=cabinet_id, slots=already, overflow="overflow" in already
            )
        if o["status"] not in ("confirmed", "cooking", "on_the_way"):
            raise Problem(409, "not-live", f"order {order_id} is {o['status']}")
        parcels = await conn.fetch(
            "select * from parcels where order_id = $1 and state = 'reserved' order by zone",
            order_id,
        )
        labels: list[str] = []
        for p in parcels:
            upper = max(p["during"].upper, now + timedelta(minutes=1))
            during = Range(now, upper)
            got = await _free_slot(conn, cabinet_id, p["zone"], p["size"], during, p["slot_id"], p["id"])
            slot_id, label = got if got else (None, "overflow")
            await conn.execute(
                """update parcels set state = 'deposited', deposited_at = $2, slot_id = $3,
                          during = $4 where id = $1""",
                p["id"],
                now,
                slot_id,
                during,
            )
            labels.append(label)
        await plan_q.bump_slot_versions(conn, [cabinet_id])
        await conn.execute(
            """update orders set status = 'in_cabinet', deposited_at = $2, updated_at = now()
                where id = $1""",
            order_id,
            now,
        )
        await emit(conn, order_id, "deposited", {"slots": labels}, now)
        await _bump(conn, o["kitchen_id"])
    return DepositOut(order_id=order_id, cabinet_id=cabinet_id, slots=labels, overflow="overflow" in labels)


async def _lockout_seconds(ctx: Ctx, conn: asyncpg.Connection, cabinet_id: str, now: datetime) -> int:
    limit = ctx.settings.code_attempts_per_minute
    window = timedelta(minutes=1)
    lockout = timedelta(seconds=ctx.settings.code_lockout_seconds)
    fails = [
        r["at"]
        for r in await conn.fetch(
            "select at from code_failures where cabinet_id = $1 and at > $2 order by at desc",
            cabinet_id,
            now - window - lockout,
        )
    ]
    for i, f in enumerate(fails):
        if sum(1 for g in fails[i:] if g > f - window) >= limit:
            until = f + lockout
            if until > now:
                return max(1, int((until - now).total_seconds() + 0.999))
            break
    return 0


async def open_cabinet(ctx: Ctx, principal: Principal, cabinet_id: str, code: str) -> OpenOut:
    _scoped(principal, "cabinet", cabinet_id, f"cabinet {cabinet_id}")
    now = ctx.clock.now()
    wrong_wait: int | None = None
    async with ctx.pool.acquire() as conn, conn.transaction():
        await lock(conn, f"keypad:{cabinet_id}")
        if not await conn.fetchval("select 1 from cabinets where id = $1", cabinet_id):
            raise not_found(f"cabinet {cabinet_id}")
        wait = await _lockout_seconds(ctx, conn, cabinet_id, now)
        if wait:
            raise Problem(
                429,
                "too-many-attempts",
                "too many wrong codes at this cabinet; try again later",
                headers={"Retry-After": str(wait)},
            )
        o = await conn.fetchrow(
            """select * from orders where cabinet_id = $1 and code_hash = $2
                  and status = any($3::text[]) for update""",
            cabinet_id,
            codes.code_hash(ctx.secret, cabinet_id, code),
            list(LIVE),
        )
        if o is None:
            # committed before answering (no raise inside): the limit must count this attempt
            await conn.execute("insert into code_failures (cabinet_id, at) values ($1, $2)", cabinet_id, now)
            wrong_wait = await _lockout_seconds(ctx, conn, cabinet_id, now)
            rows: list[asyncpg.Record] = []
        else:
            if o["status"] != "in_cabinet":
                raise Problem(409, "not-yet", "the order is not in the cabinet yet")
            rows = await conn.fetch(
                """select p.id, s.label, p.during from parcels p
                     left join slots s on s.id = p.slot_id
                    where p.order_id = $1 and p.state = 'deposited' order by p.zone""",
                o["id"],
            )
            for p in rows:
                await conn.execute(
                    """update parcels set state = 'picked_up', removed_at = $2,
                              during = tstzrange(lower(during), $3) where id = $1""",
                    p["id"],
                    now,
                    max(now, p["during"].lower + timedelta(seconds=1)),
                )
            await conn.execute(
                """update orders set status = 'picked_up', picked_up_at = $2, updated_at = now()
                    where id = $1""",
                o["id"],
                now,
            )
            labels = [r["label"] or "overflow" for r in rows]
            await emit(conn, o["id"], "picked-up", {"slots": labels}, now)
    if o is None:
        headers = {"Retry-After": str(wrong_wait)} if wrong_wait else {}
        raise Problem(403, "wrong-code", "this code opens nothing here", headers=headers)
    return OpenOut(order_id=o["id"], cabinet_id=cabinet_id, slots=[r["label"] or "overflow" for r in rows])


# --------------------------------------------------------------------------- operator


async def occupancy(
    ctx: Ctx, principal: Principal, station_id: str, frm: datetime | None, to: datetime | None, step: int
) -> Occupancy:
    _scoped(principal, "operator", station_id, f"station {station_id}")
    now = ctx.clock.now()
    frm, to = _time_range(
        frm,
        to,
        now,
        timedelta(hours=2),
        lambda span: span / timedelta(minutes=step) <= 500,
        "after 'from', at most 500 steps",
    )
    async with ctx.pool.acquire() as conn:
        cabs = await conn.fetch("select id from cabinets where station_id = $1 order by id", station_id)
        if not cabs:
            raise not_found(f"station {station_id}")
        caps = await conn.fetch(
            """select cabinet_id, zone, count(*) filter (where enabled) as n from slots
                where cabinet_id = any($1::text[]) and not retired group by 1, 2""",
            [c["id"] for c in cabs],
        )
        series = await conn.fetch(
            """select s.cabinet_id, s.zone, g.at,
                      count(p.id) filter (where p.state <> 'reserved') as occupied,
                      count(p.id) filter (where p.state = 'reserved') as reserved
                 from generate_series($2::timestamptz, $3::timestamptz, make_interval(mins => $4))
                      as g(at)
                 cross join slots s
                 left join parcels p on p.slot_id = s.id and p.during @> g.at
                      and p.state in ('reserved', 'deposited', 'picked_up', 'expired')
                where s.cabinet_id = any($1::text[]) and not s.retired
                group by 1, 2, 3 order by 1, 2, 3""",
            [c["id"] for c in cabs],
            frm,
            to,
            step,
        )
    cap = {(r["cabinet_id"], r["zone"]): r["n"] for r in caps}
    pts: dict[tuple[str, str], list[OccupancyPoint]] = defaultdict(list)
    for r in series:
        pts[(r["cabinet_id"], r["zone"])].append(
            OccupancyPoint(at=r["at"], occupied=r["occupied"], reserved=r["reserved"])
        )
    out = []
    for c in cabs:
        zones = [
            ZoneOccupancy(zone=z, capacity=cap[(cid, z)], series=pts[(cid, z)])
            for (cid, z) in sorted(cap)
            if cid == c["id"]
        ]
        out.append(CabinetOccupancy(cabinet_id=c["id"], zones=zones))
    return Occupancy(station_id=station_id, from_=frm, to=to, step_minutes=step, cabinets=out)


async def set_slot(ctx: Ctx, principal: Principal, cabinet_id: str, label: str, enabled: bool) -> SlotOut:
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn, conn.transaction():
        station = await conn.fetchval("select station_id from cabinets where id = $1", cabinet_id)
        if station is None or not principal.can("operator", station):
            raise not_found(f"cabinet {cabinet_id}")
        slot = await conn.fetchrow(
            "select * from slots where cabinet_id = $1 and label = $2 and not retired",
            cabinet_id,
            label,
        )
        if slot is None:
            raise not_found(f"slot {cabinet_id}/{label}")
        kitchens = sorted(
            r["kitchen_id"]
            for r in await conn.fetch(
                """select distinct o.kitchen_id from parcels p join orders o on o.id = p.order_id
                where p.slot_id = $1 and p.state in ('reserved', 'deposited')""",
                slot["id"],
            )
        )
        await lock(conn, *[f"kitchen:{k}" for k in kitchens], f"station:{station}")
        await conn.execute("update slots set enabled = $2 where id = $1", slot["id"], enabled)
        affected: list[Affected] = []
        if not enabled:
            parcels = await conn.fetch(
                """select * from parcels where slot_id = $1 and state in ('reserved', 'deposited')
                      and upper(during) > $2 order by lower(during)""",
                slot["id"],
                now,
            )
            for p in parcels:
                if p["state"] == "deposited":
                    affected.append(Affected(order_id=p["order_id"], outcome="unchanged", slot=label))
                    continue
                got = await _free_slot(conn, cabinet_id, p["zone"], p["size"], p["during"], None, p["id"])
                new_id, new_label = got if got else (None, None)
                await conn.execute("update parcels set slot_id = $2 where id = $1", p["id"], new_id)
                await plan_q.bump_slot_versions(conn, [cabinet_id])
                outcome = "moved" if got else "overflow"
                affected.append(Affected(order_id=p["order_id"], outcome=outcome, slot=new_label))
                await emit(
                    conn,
                    p["order_id"],
                    "slot-changed",
                    {"from": label, "to": new_label or "overflow", "reason": "slot taken out of service"},
                    now,
                )
        for k in kitchens:
            await _bump(conn, k)
    return SlotOut(
        cabinet_id=cabinet_id,
        label=label,
        zone=slot["zone"],
        size=slot["size"],
        enabled=enabled,
        affected=affected,
    )


# --------------------------------------------------------------------------- expiry


async def sweep_expired(ctx: Ctx) -> int:
    """Parcels past their freshness: removed, slot freed, order refunded."""
    now = ctx.clock.now()
    n = 0
    async with ctx.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """select o.id, o.total_cents, o.status from orders o
                where o.status = any($2::text[])
                  and exists (select 1 from parcels p where p.order_id = o.id
                                 and p.state in ('reserved', 'deposited') and p.expires_at <= $1)
                for update skip locked""",
            now,
            list(LIVE),
        )
        for r in rows:
            await conn.execute(
                """update parcels set state = 'expired', removed_at = $2,
                          during = case when lower(during) < $2
                                        then tstzrange(lower(during), $2) else during end
                    where order_id = $1 and state in ('reserved', 'deposited')""",
                r["id"],
                now,
            )
            await conn.execute(
                """update orders set status = 'expired', refund_cents = total_cents,
                          updated_at = now() where id = $1""",
                r["id"],
            )
            await emit(conn, r["id"], "expired", {"refund_cents": r["total_cents"]}, now)
            n += 1
    return n


# --------------------------------------------------------------------------- live surfaces


async def station_slots(ctx: Ctx, principal: Principal, station_id: str) -> StationSlots:
    _scoped(principal, "operator", station_id, f"station {station_id}")
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn:
        st = await conn.fetchrow("select id, name from stations where id = $1", station_id)
        if st is None:
            raise not_found(f"station {station_id}")
        cabs = await conn.fetch("select id, name from cabinets where station_id = $1 order by id", station_id)
        rows = await conn.fetch(
            """select s.cabinet_id, s.label, s.zone, s.size, s.enabled,
                      p.order_id, p.state, lower(p.during) as f, upper(p.during) as t, p.removed_at
                 from slots s
                 left join lateral (
                     select * from parcels p
                      where p.slot_id = s.id
                        and (p.state = 'deposited'
                             or (p.state = 'expired' and p.removed_at is null and p.deposited_at is not null)
                             or (p.state = 'reserved' and upper(p.during) > $2))
                      order by (p.state = 'reserved'), lower(p.during) limit 1) p on true
                where s.cabinet_id = any($1::text[]) and not s.retired
                order by s.cabinet_id, s.zone, s.label""",
            [c["id"] for c in cabs],
            now,
        )
    by_cab: dict[str, list[SlotState]] = defaultdict(list)
    for r in rows:
        state = "free"
        if r["state"] == "deposited":
            state = "occupied"
        elif r["state"] == "expired":
            state = "expired"
        elif r["state"] == "reserved" and r["f"] is not None and r["f"] <= now + timedelta(hours=1):
            state = "reserved"
        by_cab[r["cabinet_id"]].append(
            SlotState(
                label=r["label"],
                zone=r["zone"],
                size=r["size"],
                enabled=r["enabled"],
                state=state,
                order_id=r["order_id"] if state != "free" else None,
                since=r["f"] if state != "free" else None,
                until=r["t"] if state != "free" else None,
            )
        )
    return StationSlots(
        station_id=station_id,
        name=st["name"],
        now=now,
        cabinets=[CabinetSlots(cabinet_id=c["id"], name=c["name"], slots=by_cab[c["id"]]) for c in cabs],
    )


async def clear_slot(ctx: Ctx, principal: Principal, cabinet_id: str, label: str) -> SlotOut:
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn, conn.transaction():
        station = await conn.fetchval("select station_id from cabinets where id = $1", cabinet_id)
        if station is None or not principal.can("operator", station):
            raise not_found(f"cabinet {cabinet_id}")
        slot = await conn.fetchrow(
            "select * from slots where cabinet_id = $1 and label = $2 and not retired", cabinet_id, label
        )
        if slot is None:
            raise not_found(f"slot {cabinet_id}/{label}")
        cleared = await conn.fetch(
            """update parcels set removed_at = $2 where slot_id = $1 and state = 'expired'
                  and removed_at is null returning order_id""",
            slot["id"],
            now,
        )
        for r in cleared:
            await emit(conn, r["order_id"], "removed", {"slot": label}, now)
    return SlotOut(
        cabinet_id=cabinet_id,
        label=label,
        zone=slot["zone"],
        size=slot["size"],
        enabled=slot["enabled"],
        affected=[],
    )


async def order_qr_payload(ctx: Ctx, principal: Principal, order_id: str) -> str:
    from .ordering import _order_row

    async with ctx.pool.acquire() as conn:
        row = await _order_row(conn, order_id, principal)
    if row["status"] not in LIVE:
        raise Problem(409, "not-live", f"order {order_id} is {row['status']}")
    code = codes.unseal(ctx.secret, order_id, row["code_sealed"])
    return f"exitbox:{row['cabinet_id']}:{code}"
