"""Plan rows (tasks, runs, parcels) to and from the solver's types. Functions take a connection."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg

from solver.admission import Insertion, PlanState
from solver.model import OrderReq, Plan, Reservation, Run, Task, World, from_minute, to_minute

LIVE = ("confirmed", "cooking", "on_the_way", "in_cabinet")
# ``LIVE`` as a condition on an order's status, written out: it is the predicate of the partial
# indexes on live orders (0001_init.sql), so they serve it on any plan (``status = any($n)`` would
# leave them out of a generic plan)
LIVE_STATUS = "status in (" + ", ".join(f"'{s}'" for s in LIVE) + ")"
# A parcel ``p`` holding slot time after $2: what a state's slot time is made of. The reads of slot
# time and the counts of it (``station_counts``) must agree on it exactly.
HOLDS_SLOT_AFTER = "p.state in ('reserved', 'deposited') and p.during && tstzrange($2, null, '()')"


def ts(minute: int) -> datetime:
    return from_minute(minute)


async def _tasks(conn: asyncpg.Connection, kitchen_ids: list[str], after: datetime) -> list[Task]:
    rows = await conn.fetch(
        """select t.id, t.kitchen_id, t.resource, t.kind, t.sku, t.step, t.start_at, t.end_at,
                  t.status,
                  coalesce(array_agg(u.order_id) filter (where u.order_id is not null), '{}') as oids,
                  coalesce(array_agg(u.units) filter (where u.order_id is not null), '{}') as units
             from tasks t left join task_units u on u.task_id = t.id
            where t.kitchen_id = any($1::text[]) and t.end_at > $2
            group by t.id""",
        kitchen_ids,
        after,
    )
    now_m = to_minute(after)
    out = []
    for r in rows:
        start = to_minute(r["start_at"])
        out.append(
            Task(
                r["id"],
                r["kitchen_id"],
                r["resource"],
                r["kind"],
                r["sku"],
                r["step"],
                start,
                to_minute(r["end_at"]),
                dict(zip(r["oids"], r["units"], strict=True)),
                frozen=r["status"] == "done" or start <= now_m,
            )
        )
    return out


async def _runs(conn: asyncpg.Connection, kitchen_ids: list[str], after: datetime) -> list[Run]:
    rows = await conn.fetch(
        """select r.id, r.kitchen_id, r.station_id, r.depart_at, r.arrive_at, r.back_at, r.status,
                  coalesce(array_agg(o.order_id order by o.order_id)
                           filter (where o.order_id is not null), '{}') as oids
             from runs r left join run_orders o on o.run_id = r.id
            where r.kitchen_id = any($1::text[]) and r.back_at > $2
            group by r.id""",
        kitchen_ids,
        after,
    )
    now_m = to_minute(after)
    out = []
    for r in rows:
        depart = to_minute(r["depart_at"])
        out.append(
            Run(
                r["id"],
                r["kitchen_id"],
                r["station_id"],
                depart,
                to_minute(r["arrive_at"]),
                to_minute(r["back_at"]),
                list(r["oids"]),
                frozen=r["status"] == "departed" or depart <= now_m,
            )
        )
    return out


async def _reservations(
    conn: asyncpg.Connection, cabinet_ids: list[str], after: datetime
) -> list[Reservation]:
    rows = await conn.fetch(
        f"""select p.order_id, s.cabinet_id, p.zone, p.size, s.label,
                  lower(p.during) as f, upper(p.during) as t, p.state
             from parcels p join slots s on s.id = p.slot_id
            where s.cabinet_id = any($1::text[]) and {HOLDS_SLOT_AFTER}""",
        cabinet_ids,
        after,
    )
    return [
        Reservation(
            r["order_id"],
            r["cabinet_id"],
            r["zone"],
            r["size"],
            r["label"],
            to_minute(r["f"]),
            to_minute(r["t"]),
            frozen=r["state"] == "deposited",
        )
        for r in rows
    ]


async def live_orders_due(conn: asyncpg.Connection, kitchen_id: str, start: datetime, end: datetime) -> int:
    """How many live orders of a kitchen are due (``eta``) in [start, end)."""
    return int(
        await conn.fetchval(
            f"select count(*) from orders where kitchen_id = $1 and {LIVE_STATUS} and eta >= $2 and eta < $3",
            kitchen_id,
            start,
            end,
        )
    )


async def _live_orders(conn: asyncpg.Connection, kitchen_ids: list[str]) -> dict[str, OrderReq]:
    rows = await conn.fetch(
        """select id, kitchen_id, station_id, cabinet_id, eta, items from orders
            where kitchen_id = any($1::text[]) and status = any($2::text[])""",
        kitchen_ids,
        list(LIVE),
    )
    return {
        r["id"]: OrderReq(
            r["id"],
            r["kitchen_id"],
            r["station_id"],
            to_minute(r["eta"]),
            {i["sku"]: i["qty"] for i in r["items"]},
            r["cabinet_id"],
        )
        for r in rows
    }


def _cabinets(world: World, station_ids: list[str]) -> list[str]:
    return sorted({c for s in station_ids for c in world.station_cabinets.get(s, [])})


async def load_state(
    conn: asyncpg.Connection, world: World, kitchen_id: str, station_ids: list[str], now: datetime
) -> PlanState:
    """What admission needs: the kitchen's work still ahead and the stations' slot time."""
    state = PlanState(world)
    plan = Plan()
    for t in await _tasks(conn, [kitchen_id], now):
        plan.tasks[t.id] = t
    for r in await _runs(conn, [kitchen_id], now):
        plan.runs[r.id] = r
    plan.reservations = await _reservations(conn, _cabinets(world, station_ids), now)
    state.load(plan)
    return state


async def station_reservations(
    conn: asyncpg.Connection, world: World, station_ids: list[str], now: datetime
) -> list[Reservation]:
    return await _reservations(conn, _cabinets(world, station_ids), now)


async def station_slots(
    conn: asyncpg.Connection, world: World, station_ids: list[str], now: datetime
) -> tuple[dict[str, int], list[Reservation]]:
    """Some stations' slot versions and the slot time at them (what ends after ``now``), read in one
    snapshot: the slot time is exactly that of those versions, with no locks taken."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            "select id, slot_version from stations where id = any($1::text[])", station_ids
        )
        rvs = await _reservations(conn, _cabinets(world, station_ids), now)
    return {r["id"]: r["slot_version"] for r in rows}, rvs


async def station_counts(
    conn: asyncpg.Connection, station_ids: list[str], now: datetime
) -> dict[str, tuple[int, int]]:
    """Some stations' slot versions and how many parcels hold slot time there after ``now``, in one
    snapshot. Slot time changes without its version moving only by frees, so the same count at the
    same version means the same slot time."""
    rows = await conn.fetch(
        f"""select st.id, st.slot_version,
                  (select count(*) from parcels p
                     join slots s on s.id = p.slot_id
                     join cabinets c on c.id = s.cabinet_id
                    where c.station_id = st.id and {HOLDS_SLOT_AFTER}) as live
             from stations st where st.id = any($1::text[])""",
        station_ids,
        now,
    )
    return {r["id"]: (r["slot_version"], r["live"]) for r in rows}


async def load_plan(conn: asyncpg.Connection, world: World, kitchen_ids: list[str]) -> Plan:
    """The whole plan of live orders of some kitchens, for ``solver.check``."""
    plan = Plan()
    plan.orders = await _live_orders(conn, kitchen_ids)
    epoch = datetime.fromtimestamp(0).astimezone()
    for t in await _tasks(conn, kitchen_ids, epoch):
        t.units = {o: u for o, u in t.units.items() if o in plan.orders}
        if t.units:
            plan.tasks[t.id] = t
    for run in await _runs(conn, kitchen_ids, epoch):
        run.orders = [o for o in run.orders if o in plan.orders]
        if run.orders:
            plan.runs[run.id] = run
    cabinets = sorted({o.cabinet_id for o in plan.orders.values() if o.cabinet_id})
    plan.reservations = [
        rv for rv in await _reservations(conn, cabinets, epoch) if rv.order_id in plan.orders
    ]
    return plan


# Plan rows are written set-based: one statement whatever their number, each table's rows passed as
# parallel arrays. ``PLAN_WRITES`` is a list of CTEs over parameters $1..$28; it writes only when the
# CTE ``go`` (which the statement defines before it) says ``ok``, and its CTE ``slot_bump`` returns
# the new slot versions of the stations whose slot time it wrote. Callers hold the kitchens' and
# those stations' advisory locks.
PLAN_WRITES = """
    tasks_in as (
        insert into tasks (id, kitchen_id, resource, kind, sku, step, start_at, end_at)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                             $7::timestamptz[], $8::timestamptz[])
         where (select ok from go)),
    units_in as (
        insert into task_units (task_id, order_id, units)
        select * from unnest($9::text[], $10::text[], $11::int[]) where (select ok from go)
        on conflict (task_id, order_id) do update
           set units = excluded.units + case when $28 then 0 else task_units.units end),
    runs_in as (
        insert into runs (id, kitchen_id, station_id, depart_at, arrive_at, back_at)
        select * from unnest($12::text[], $13::text[], $14::text[], $15::timestamptz[],
                             $16::timestamptz[], $17::timestamptz[])
         where (select ok from go)),
    run_orders_in as (
        insert into run_orders (run_id, order_id)
        select * from unnest($18::text[], $19::text[]) where (select ok from go)),
    parcels_in as (
        insert into parcels (order_id, zone, size, slot_id, during, expires_at)
        select p.order_id, p.zone, p.size, s.id, tstzrange(p.f, p.t), p.expires_at
          from unnest($20::text[], $21::text[], $22::text[], $23::text[], $24::text[],
                      $25::timestamptz[], $26::timestamptz[], $27::timestamptz[])
               as p(order_id, zone, size, cabinet_id, label, f, t, expires_at)
          -- a look-up by the (cabinet, label) key per parcel: ``offset 0`` keeps the planner from
          -- turning it into a hash join over every slot of the network
          cross join lateral (select s.id from slots s
                               where s.cabinet_id = p.cabinet_id and s.label = p.label offset 0) s
         where (select ok from go)),
    slot_bump as (
        update stations set slot_version = slot_version + 1
         where id in (select station_id from cabinets where id = any($23::text[])) and (select ok from go)
        returning id, slot_version)"""
WRITTEN = "(select coalesce(jsonb_object_agg(id, slot_version), '{}') from slot_bump)"


def plan_rows(
    tasks: list[Task],
    units: Iterable[tuple[str, str, int]],
    runs: list[Run],
    run_orders: Iterable[tuple[str, str]],
    parcels: Iterable[tuple[str, list[Reservation], dict[str, int]]],
    replace_units: bool = False,
) -> list[Any]:
    """The $1..$28 of ``PLAN_WRITES``: new tasks, (task, order, units) rows (added to a stored row
    of the same pair, or replacing it), new runs, (run, order) rows, and the slot time of orders
    (order id, its reservations, expiry minute by zone)."""
    summed: dict[tuple[str, str], int] = {}
    for tid, oid, n in units:
        summed[(tid, oid)] = summed.get((tid, oid), 0) + n
    pairs = list(run_orders)
    rvs = [(oid, rv, expiry[rv.zone]) for oid, reservations, expiry in parcels for rv in reservations]
    return [
        [t.id for t in tasks],
        [t.kitchen_id for t in tasks],
        [t.resource for t in tasks],
        [t.kind for t in tasks],
        [t.sku for t in tasks],
        [t.step for t in tasks],
        [ts(t.start) for t in tasks],
        [ts(t.end) for t in tasks],
        [k[0] for k in summed],
        [k[1] for k in summed],
        list(summed.values()),
        [r.id for r in runs],
        [r.kitchen_id for r in runs],
        [r.station_id for r in runs],
        [ts(r.depart) for r in runs],
        [ts(r.arrive) for r in runs],
        [ts(r.back) for r in runs],
        [rid for rid, _ in pairs],
        [oid for _, oid in pairs],
        [oid for oid, _, _ in rvs],
        [rv.zone for _, rv, _ in rvs],
        [rv.size for _, rv, _ in rvs],
        [rv.cabinet_id for _, rv, _ in rvs],
        [rv.slot for _, rv, _ in rvs],
        [ts(rv.start) for _, rv, _ in rvs],
        [ts(rv.end) for _, rv, _ in rvs],
        [ts(exp) for _, _, exp in rvs],
        replace_units,
    ]


def insertion_rows(insertions: list[Insertion]) -> list[Any]:
    """``plan_rows`` of first-fit insertions, in the order they were admitted (a later one may join
    a batch or a run an earlier one opened)."""
    units = [(t.id, ins.order.id, t.units[ins.order.id]) for ins in insertions for t in ins.new_tasks]
    units += [(tid, ins.order.id, n) for ins in insertions for tid, n in ins.joins.items()]
    return plan_rows(
        [t for ins in insertions for t in ins.new_tasks],
        units,
        [ins.run for ins in insertions if ins.run_is_new],
        [(ins.run.id, ins.order.id) for ins in insertions],
        [(ins.order.id, ins.reservations, ins.expiry) for ins in insertions],
    )


async def write_plan_rows(conn: asyncpg.Connection, rows: list[Any]) -> dict[str, int]:
    """Write ``plan_rows`` in one round trip; the new slot versions of the stations written to."""
    written = await conn.fetchval(f"with go as (select true as ok), {PLAN_WRITES} select {WRITTEN}", *rows)
    return dict(written)


async def bump_slot_versions(conn: asyncpg.Connection, cabinet_ids: list[str]) -> dict[str, int]:
    """Say that slot time at these cabinets changed; the new slot version of each of their stations.
    Callers hold those stations' advisory locks."""
    rows = await conn.fetch(
        """update stations set slot_version = slot_version + 1
            where id in (select station_id from cabinets where id = any($1::text[]))
        returning id, slot_version""",
        sorted(set(cabinet_ids)),
    )
    return {r["id"]: r["slot_version"] for r in rows}


async def write_insertions(conn: asyncpg.Connection, insertions: list[Insertion]) -> dict[str, int]:
    """Store first-fit insertions in one round trip; the new slot versions of the stations written
    to."""
    return await write_plan_rows(conn, insertion_rows(insertions))


async def release_order(conn: asyncpg.Connection, order_id: str, kitchen_id: str, now: datetime) -> None:
    """Take an order's work that has not started out of the plan and free its reserved slots."""
    await conn.execute(
        """delete from task_units u using tasks t
            where u.task_id = t.id and u.order_id = $1 and t.status = 'planned' and t.start_at > $2""",
        order_id,
        now,
    )
    await conn.execute(
        """delete from tasks t where t.kitchen_id = $1 and t.status = 'planned' and t.start_at > $2
              and not exists (select 1 from task_units u where u.task_id = t.id)""",
        kitchen_id,
        now,
    )
    await conn.execute(
        """delete from run_orders o using runs r
            where o.run_id = r.id and o.order_id = $1 and r.status = 'planned' and r.depart_at > $2""",
        order_id,
        now,
    )
    await conn.execute(
        """delete from runs r where r.kitchen_id = $1 and r.status = 'planned' and r.depart_at > $2
              and not exists (select 1 from run_orders o where o.run_id = r.id)""",
        kitchen_id,
        now,
    )
    await conn.execute("delete from parcels where order_id = $1 and state = 'reserved'", order_id)
    await conn.execute(
        """update stations set slot_version = slot_version + 1
            where id = (select station_id from orders where id = $1)""",
        order_id,
    )


async def load_kitchen_plan(
    conn: asyncpg.Connection, world: World, kitchen_id: str, now: datetime
) -> PlanState:
    """Everything a re-plan of one kitchen needs: its live orders with all their work, the rest of
    its work still ahead (capacity), and every reservation in the cabinets it delivers to."""
    plan = Plan()
    plan.orders = await _live_orders(conn, [kitchen_id])
    epoch = datetime.fromtimestamp(0).astimezone()
    now_m = to_minute(now)
    for t in await _tasks(conn, [kitchen_id], epoch):
        mine = {o: u for o, u in t.units.items() if o in plan.orders}
        if mine or t.end > now_m:
            t.units = mine or t.units
            t.frozen = t.started(now_m)
            plan.tasks[t.id] = t
    for run in await _runs(conn, [kitchen_id], epoch):
        mine_runs = [o for o in run.orders if o in plan.orders]
        if mine_runs or run.back > now_m:
            run.orders = mine_runs or run.orders
            plan.runs[run.id] = run
    k = world.kitchens[kitchen_id]
    cabinets = sorted({c for s in k.travel for c in world.station_cabinets.get(s, [])})
    plan.reservations = await _reservations(conn, cabinets, now)
    state = PlanState(world)
    state.load(plan)
    return state


async def write_replan(
    conn: asyncpg.Connection, state: PlanState, kitchen_id: str, moved: list[str], now: datetime
) -> None:
    """Replace the stored plan of the moved orders with the one in ``state`` (already checked)."""
    from solver.simulate import order_ready

    for oid in moved:
        await release_order(conn, oid, kitchen_id, now)
    plan = state.plan
    moved_set = set(moved)
    touched = sorted({t for oid in moved for t in state.tasks_of.get(oid, set())})
    existing = {
        r["id"]
        for r in await conn.fetch(
            "select id from tasks where id = any($1::text[]) and kitchen_id = $2", touched, kitchen_id
        )
    }
    runs = {state.run_of[oid] for oid in moved}
    have_runs = {
        r["id"]
        for r in await conn.fetch(
            "select id from runs where id = any($1::text[]) and kitchen_id = $2", sorted(runs), kitchen_id
        )
    }
    parcels, ready_rows = [], []
    for oid in moved:
        tasks = [plan.tasks[t] for t in state.tasks_of[oid]]
        ready, expiry = order_ready(plan, state.world, oid, tasks)
        parcels.append((oid, state.res_by_order[oid], expiry))
        ready_rows.append((oid, ts(ready)))
    rows = plan_rows(
        [plan.tasks[tid] for tid in touched if tid not in existing],
        [(tid, oid, u) for tid in touched for oid, u in plan.tasks[tid].units.items() if oid in moved_set],
        [plan.runs[rid] for rid in sorted(runs) if rid not in have_runs],
        [(rid, oid) for rid in sorted(runs) for oid in plan.runs[rid].orders if oid in moved_set],
        parcels,
        replace_units=True,
    )
    await write_plan_rows(conn, rows)
    if ready_rows:
        await conn.executemany("update orders set ready_at = $2 where id = $1", ready_rows)


async def due_work(
    conn: asyncpg.Connection, now: datetime
) -> tuple[list[asyncpg.Record], list[asyncpg.Record], list[asyncpg.Record]]:
    """What a kitchen would report by now: tasks that have ended, runs that should have left,
    orders whose run has arrived at the station (id, cabinet_id)."""
    tasks = await conn.fetch(
        "select id, kitchen_id from tasks where status = 'planned' and end_at <= $1 order by end_at", now
    )
    runs = await conn.fetch(
        "select id from runs where status = 'planned' and depart_at <= $1 order by depart_at", now
    )
    arrived = await conn.fetch(
        """select o.id, o.cabinet_id from orders o
             join run_orders ro on ro.order_id = o.id join runs r on r.id = ro.run_id
            where o.status = 'on_the_way' and r.arrive_at <= $1""",
        now,
    )
    return list(tasks), list(runs), list(arrived)
