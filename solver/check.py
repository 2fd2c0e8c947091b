"""Independent checker of every rule of SPEC section 4.

It does not share code with admission or optimization beyond the data types: it recomputes
everything from the plan, so that a bug in a planner shows up here as a violation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .model import SIZE_RANK, KitchenView, Plan, Settings, Task, World, parcels_of


@dataclass(frozen=True)
class Violation:
    rule: str  # kitchen, ready, runs, cabinet, freshness, on-time, plan
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


def _peak_exceeds(intervals: list[tuple[int, int, int]], cap: int) -> int | None:
    """First minute at which the summed weight of half-open intervals exceeds cap."""
    events: list[tuple[int, int]] = []
    for s, e, w in intervals:
        if e > s:
            events.append((s, w))
            events.append((e, -w))
    events.sort(key=lambda x: (x[0], x[1]))  # ends (negative) before starts at the same minute
    load = 0
    for t, d in events:
        load += d
        if load > cap:
            return t
    return None


def _in_windows(k: KitchenView, start: int, end: int) -> bool:
    return any(w0 <= start and end <= w1 for w0, w1 in k.windows(start, end))


def check(
    world: World, plan: Plan, settings: Settings | None = None, *, partial: bool = False
) -> list[Violation]:
    """Every rule of SPEC section 4. ``partial``: the plan is one part (a kitchen) of a larger one,
    so reservations of orders outside it are context, not errors."""
    settings = settings or Settings()
    v: list[Violation] = []
    add = v.append

    # ---------------------------------------------------------------- rule 1: kitchen
    by_resource: dict[tuple[str, str], list[Task]] = defaultdict(list)
    # (order, sku, step) -> list of (start, end, units)
    unit_runs: dict[tuple[str, str, int], list[tuple[int, int, int]]] = defaultdict(list)
    pack_of: dict[str, list[Task]] = defaultdict(list)
    for t in plan.tasks.values():
        k = world.kitchens.get(t.kitchen_id)
        if k is None:
            add(Violation("kitchen", f"task {t.id}: unknown kitchen {t.kitchen_id}"))
            continue
        if t.resource not in k.capacity:
            add(Violation("kitchen", f"task {t.id}: unknown resource {t.resource}"))
            continue
        if any(u <= 0 for u in t.units.values()) or not t.units:
            add(Violation("kitchen", f"task {t.id}: carries no units"))
        for oid in t.units:
            if oid not in plan.orders:
                add(Violation("kitchen", f"task {t.id}: unknown order {oid}"))
        if not _in_windows(k, t.start, t.end):
            add(Violation("kitchen", f"task {t.id} [{t.start},{t.end}) outside open hours"))
        by_resource[(t.kitchen_id, t.resource)].append(t)
        if t.kind == "pack":
            if k.pack is None or t.resource != k.pack[0] or t.end - t.start != k.pack[1]:
                add(Violation("kitchen", f"pack task {t.id} does not match the kitchen's pack step"))
            if len(t.units) != 1 or any(u != 1 for u in t.units.values()):
                add(Violation("kitchen", f"pack task {t.id} must pack exactly one order"))
            for oid in t.units:
                pack_of[oid].append(t)
            continue
        item = k.menu.get(t.sku or "")
        if item is None or t.step is None or not 1 <= t.step <= len(item.steps):
            add(Violation("kitchen", f"task {t.id}: unknown sku/step {t.sku}/{t.step}"))
            continue
        res, minutes, batch = item.steps[t.step - 1]
        if res != t.resource:
            add(Violation("kitchen", f"task {t.id}: step {t.step} of {t.sku} runs on {res}"))
        if t.end - t.start != minutes:
            add(Violation("kitchen", f"task {t.id}: lasts {t.end - t.start} min, step needs {minutes}"))
        if t.total_units > batch:
            add(Violation("kitchen", f"task {t.id}: {t.total_units} units exceed batch {batch}"))
        for oid, u in t.units.items():
            unit_runs[(oid, t.sku or "", t.step)].append((t.start, t.end, u))

    for (kid, res), tasks in by_resource.items():
        cap = world.kitchens[kid].capacity[res]
        at = _peak_exceeds([(t.start, t.end, 1) for t in tasks], cap)
        if at is not None:
            add(Violation("kitchen", f"{kid}/{res}: more than {cap} tasks at minute {at}"))

    # ---------------------------------------------------------------- per order: units, ready
    ready: dict[str, int] = {}
    item_ready: dict[tuple[str, str], int] = {}  # earliest unit ready per (order, sku)
    for oid, o in plan.orders.items():
        k = world.kitchens.get(o.kitchen_id)
        if k is None:
            add(Violation("plan", f"order {oid}: unknown kitchen"))
            continue
        last_end = None
        ok = True
        for sku, qty in o.items.items():
            item = k.menu.get(sku)
            if item is None:
                add(Violation("plan", f"order {oid}: unknown sku {sku}"))
                ok = False
                continue
            n = len(item.steps)
            for step in range(1, n + 1):
                got = sum(u for _, _, u in unit_runs.get((oid, sku, step), []))
                if got != qty:
                    add(Violation("kitchen", f"order {oid}: {sku} step {step} has {got} of {qty} units"))
                    ok = False
            for step in range(1, n):
                prev = unit_runs.get((oid, sku, step), [])
                nxt = unit_runs.get((oid, sku, step + 1), [])
                # Hall: units starting step i+1 by time T never exceed units done with step i by T
                events = sorted({s for s, _, _ in nxt})
                for when in events:
                    started = sum(u for s, _, u in nxt if s <= when)
                    done = sum(u for _, e, u in prev if e <= when)
                    if started > done:
                        add(
                            Violation(
                                "kitchen",
                                f"order {oid}: {sku} step {step + 1} starts "
                                f"at {when} before step {step} is done",
                            )
                        )
                        break
            lasts = unit_runs.get((oid, sku, n), [])
            if lasts:
                item_ready[(oid, sku)] = min(e for _, e, _ in lasts)
                m = max(e for _, e, _ in lasts)
                last_end = m if last_end is None else max(last_end, m)
        if not ok or last_end is None:
            continue
        if k.pack is not None:
            packs = pack_of.get(oid, [])
            if len(packs) != 1:
                add(Violation("ready", f"order {oid}: {len(packs)} pack tasks, expected 1"))
                continue
            if packs[0].start < last_end:
                add(
                    Violation(
                        "ready",
                        f"order {oid}: packed at {packs[0].start} before its items are ready at {last_end}",
                    )
                )
            ready[oid] = packs[0].end
        else:
            ready[oid] = last_end

    # ---------------------------------------------------------------- rule 3: runs
    run_of: dict[str, str] = {}
    by_kitchen_runs: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for r in plan.runs.values():
        k = world.kitchens.get(r.kitchen_id)
        if k is None or r.station_id not in k.travel:
            add(Violation("runs", f"run {r.id}: kitchen {r.kitchen_id} does not serve {r.station_id}"))
            continue
        tr = k.travel[r.station_id]
        if r.arrive != r.depart + tr or r.back != r.arrive + tr:
            add(Violation("runs", f"run {r.id}: times do not follow travel of {tr} min"))
        if len(r.orders) > k.run_capacity:
            add(Violation("runs", f"run {r.id}: {len(r.orders)} orders exceed {k.run_capacity}"))
        if not r.orders:
            add(Violation("runs", f"run {r.id}: carries nothing"))
        by_kitchen_runs[r.kitchen_id].append((r.depart, r.back, 1))
        for oid in r.orders:
            carried = plan.orders.get(oid)
            if carried is None:
                add(Violation("runs", f"run {r.id}: unknown order {oid}"))
                continue
            if oid in run_of:
                add(Violation("runs", f"order {oid} is on runs {run_of[oid]} and {r.id}"))
            run_of[oid] = r.id
            if carried.station_id != r.station_id or carried.kitchen_id != r.kitchen_id:
                add(Violation("runs", f"run {r.id} goes to {r.station_id}, order {oid} elsewhere"))
            if oid in ready and r.depart < ready[oid] and not r.frozen:
                add(
                    Violation(
                        "runs",
                        f"run {r.id} departs at {r.depart} before order {oid} is ready at {ready[oid]}",
                    )
                )
    for kid, ivs in by_kitchen_runs.items():
        cap = world.kitchens[kid].couriers
        at = _peak_exceeds(ivs, cap)
        if at is not None:
            add(Violation("runs", f"{kid}: more than {cap} runs on the road at minute {at}"))
    for oid in plan.orders:
        if oid not in run_of:
            add(Violation("runs", f"order {oid} is on no run"))

    # ---------------------------------------------------------------- rule 4, 5: cabinets, freshness
    slot_info = {(c, s.label): s for c, slots in world.slots.items() for s in slots}
    by_slot: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
    res_of: dict[str, list] = defaultdict(list)
    for rv in plan.reservations:
        res_of[rv.order_id].append(rv)
        key = (rv.cabinet_id, rv.slot)
        info = slot_info.get(key)
        if info is None:
            if not (rv.frozen and key in world.disabled):
                add(
                    Violation(
                        "cabinet",
                        f"order {rv.order_id}: slot {rv.cabinet_id}/{rv.slot} does not exist or is disabled",
                    )
                )
        else:
            if info.zone != rv.zone:
                add(Violation("cabinet", f"order {rv.order_id}: {rv.zone} parcel in {info.zone} slot"))
            if SIZE_RANK[info.size] < SIZE_RANK[rv.size]:
                add(Violation("cabinet", f"order {rv.order_id}: {rv.size} parcel in {info.size} slot"))
        if rv.end <= rv.start:
            add(Violation("cabinet", f"order {rv.order_id}: empty reservation [{rv.start},{rv.end})"))
        by_slot[key].append((rv.start, rv.end, 1))
    for key, ivs in by_slot.items():
        at = _peak_exceeds(ivs, 1)
        if at is not None:
            add(Violation("cabinet", f"slot {key[0]}/{key[1]} holds two parcels at minute {at}"))

    for oid, o in plan.orders.items():
        k = world.kitchens.get(o.kitchen_id)
        if k is None or any(s not in k.menu for s in o.items):
            continue
        rvs = res_of.get(oid, [])
        want = parcels_of(o, k)
        zones = [rv.zone for rv in rvs]
        if sorted(zones) != sorted(want):
            add(Violation("cabinet", f"order {oid}: parcels {sorted(zones)}, expected {sorted(want)}"))
            continue
        cabs = {rv.cabinet_id for rv in rvs}
        if len(cabs) != 1 or not cabs <= set(world.station_cabinets.get(o.station_id, [])):
            add(
                Violation(
                    "cabinet",
                    f"order {oid}: parcels in cabinets {sorted(cabs)}, not one cabinet of {o.station_id}",
                )
            )
        run = plan.runs.get(run_of.get(oid, ""))
        for rv in rvs:
            if rv.size != want[rv.zone]:
                add(
                    Violation(
                        "cabinet", f"order {oid}: {rv.zone} parcel is {want[rv.zone]}, reserved as {rv.size}"
                    )
                )
            if rv.frozen:
                continue
            if run is not None and rv.start != run.arrive:
                add(Violation("cabinet", f"order {oid}: deposit at {rv.start}, run arrives {run.arrive}"))
            if rv.end < o.eta + settings.grace:
                add(
                    Violation(
                        "cabinet",
                        f"order {oid}: slot reserved to {rv.end}, before eta+grace {o.eta + settings.grace}",
                    )
                )
            if rv.start > o.eta:
                add(Violation("on-time", f"order {oid}: deposited at {rv.start} after eta {o.eta}"))
            expiry = min(
                (
                    item_ready[(oid, s)] + k.menu[s].max_hold
                    for s in o.items
                    if k.menu[s].zone == rv.zone and (oid, s) in item_ready
                ),
                default=None,
            )
            if expiry is not None and expiry < rv.end:
                add(
                    Violation(
                        "freshness",
                        f"order {oid}: {rv.zone} parcel expires at {expiry}, reserved to {rv.end}",
                    )
                )
    for rv_order in res_of:
        if rv_order not in plan.orders and not partial:
            add(Violation("cabinet", f"reservation for unknown order {rv_order}"))
    return v
