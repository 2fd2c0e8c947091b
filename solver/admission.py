"""First-fit insertion of one order into a plan, in milliseconds.

``PlanState`` keeps capacity timelines (per kitchen resource, per courier pool, per cabinet slot)
next to a ``Plan``; ``admit`` searches pickup-side first:

1. candidate deposit times, latest first from ``eta - margin`` (joining a courier run already
   going to the station where one fits, else a new run), then the minutes up to ``eta``;
2. for each, a free slot per parcel in one cabinet of the station for ``[deposit, eta + grace)``;
3. a courier (join the run, or a free courier for the round trip);
4. the kitchen, scheduled backwards from the run's departure: the pack step as late as it fits,
   then every step of every item, joining an open batch of the same sku and step whose timing
   keeps the food fresh to ``eta + grace``, else a new task at the latest start the resource
   allows.

Kitchen feasibility only gets easier as the departure gets later, so once the kitchen fails
for a departure, earlier new-run candidates are not tried.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .model import (
    SIZE_RANK,
    KitchenView,
    OrderReq,
    Plan,
    Reservation,
    Run,
    Settings,
    SlotInfo,
    Task,
    World,
    parcels_of,
)

REASONS = (
    "no-kitchen-capacity",
    "no-courier-capacity",
    "no-cabinet-capacity",
    "too-late",
    "closed",
    "invalid",
)
NEVER = -(10**9)  # a minute before any plan's first


# --------------------------------------------------------------------------- timelines


class Usage:
    """Units in use per minute (sparse)."""

    __slots__ = ("m",)

    def __init__(self) -> None:
        self.m: dict[int, int] = {}

    def add(self, s: int, e: int, d: int = 1) -> None:
        m = self.m
        for t in range(s, e):
            n = m.get(t, 0) + d
            if n:
                m[t] = n
            else:
                m.pop(t, None)

    def at(self, t: int) -> int:
        return self.m.get(t, 0)


def _last_conflict(base: Usage, extra: Usage | None, s: int, e: int, cap: int) -> int | None:
    bm = base.m
    em = extra.m if extra is not None else {}
    for t in range(e - 1, s - 1, -1):
        if bm.get(t, 0) + em.get(t, 0) >= cap:
            return t
    return None


def latest_fit(
    base: Usage,
    extra: Usage | None,
    cap: int,
    minutes: int,
    lo: int,
    end_by: int,
    windows: Iterable[tuple[int, int]],
) -> int | None:
    """Latest start s >= lo with s + minutes <= end_by, inside one window, one unit free."""
    for w0, w1 in sorted(windows, reverse=True):
        s = min(end_by, w1) - minutes
        floor = max(lo, w0)
        while s >= floor:
            t = _last_conflict(base, extra, s, s + minutes, cap)
            if t is None:
                return s
            s = t - minutes
    return None


def earliest_fit(
    base: Usage, cap: int, minutes: int, lo: int, end_by: int, windows: Iterable[tuple[int, int]]
) -> int | None:
    """Earliest start s >= lo with s + minutes <= end_by, inside one window, one unit free."""
    for w0, w1 in sorted(windows):
        s = max(lo, w0)
        last = min(end_by, w1) - minutes
        while s <= last:
            t = _last_conflict(base, None, s, s + minutes, cap)
            if t is None:
                return s
            s = t + 1  # no start at or before the last busy minute can fit
    return None


def _by_end(t: Task) -> tuple[int, str]:
    return t.end, t.id


class SlotBook:
    """The parcels one slot holds, as sorted half-open intervals that do not overlap (with their
    starts and ends also as lists of their own, for bisection without building tuples)."""

    __slots__ = ("ends", "iv", "starts")

    def __init__(self) -> None:
        self.iv: list[tuple[int, int, str]] = []
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, s: int, e: int, oid: str) -> None:
        i = bisect.bisect_right(self.iv, (s, e, oid))
        self.iv.insert(i, (s, e, oid))
        self.starts.insert(i, s)
        self.ends.insert(i, e)

    def remove(self, s: int, e: int, oid: str) -> None:
        i = self.iv.index((s, e, oid))
        del self.iv[i], self.starts[i], self.ends[i]

    def clear(self) -> None:
        self.iv.clear()
        self.starts.clear()
        self.ends.clear()


# --------------------------------------------------------------------------- state


@dataclass
class KitchenState:
    view: KitchenView
    usage: dict[str, Usage] = field(default_factory=dict)
    couriers: Usage = field(default_factory=Usage)
    # prep tasks by (sku, step), sorted by (end, id): a new unit looks only at batches ending in time
    batches: dict[tuple[str, int], list[Task]] = field(default_factory=lambda: defaultdict(list))
    runs: dict[str, list[Run]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for r in self.view.capacity:
            self.usage.setdefault(r, Usage())


@dataclass
class Insertion:
    order: OrderReq
    new_tasks: list[Task]
    joins: dict[str, int]  # task id -> units added
    run: Run  # the run carrying the order (new when run_is_new)
    run_is_new: bool
    reservations: list[Reservation]
    ready: int
    expiry: dict[str, int]  # zone -> expiry minute

    @property
    def deposit(self) -> int:
        return self.run.arrive


@dataclass
class Rejection:
    reason: str
    detail: str


class PlanState:
    """A plan plus the timelines admission needs; kept in step by ``apply`` and ``remove``."""

    def __init__(self, world: World, plan: Plan | None = None) -> None:
        self.world = world
        self.plan = Plan()
        self.kitchens = {kid: KitchenState(k) for kid, k in world.kitchens.items()}
        # a slot's book, once made, stays for the state's life (emptied, never replaced)
        self.slot_busy: dict[tuple[str, str], SlotBook] = defaultdict(SlotBook)
        # the slot picker's sorted free-from index per (cabinet, zone, size rank, end), valid while
        # the cabinet's change count (``slot_changes``) is the one it was built at
        self.slot_changes: dict[str, int] = defaultdict(int)
        self.slot_index: dict[tuple[str, str, int, int], tuple[int, list[tuple[int, int]]]] = {}
        self.group_books: dict[tuple[str, str, int], list[SlotBook]] = {}  # books stay: built once
        self.res_by_order: dict[str, list[Reservation]] = defaultdict(list)
        self.run_of: dict[str, str] = {}
        self.tasks_of: dict[str, set[str]] = defaultdict(set)
        if plan is not None:
            self.load(plan)

    # -- building
    def load(self, plan: Plan) -> None:
        for o in plan.orders.values():
            self.plan.orders[o.id] = o
        for t in plan.tasks.values():
            self._add_task(t)
        for r in plan.runs.values():
            self._add_run(r)
        for rv in plan.reservations:
            self._add_reservation(rv)

    def _add_task(self, t: Task) -> None:
        self.plan.tasks[t.id] = t
        ks = self.kitchens[t.kitchen_id]
        ks.usage.setdefault(t.resource, Usage()).add(t.start, t.end)
        if t.kind == "prep" and t.sku is not None and t.step is not None:
            bisect.insort(ks.batches[(t.sku, t.step)], t, key=_by_end)
        for oid in t.units:
            self.tasks_of[oid].add(t.id)

    def move_task(self, t: Task, start: int) -> None:
        """Move a task in time (its machine time and its place among its step's batches)."""
        ks = self.kitchens[t.kitchen_id]
        ks.usage[t.resource].add(t.start, t.end, -1)
        batch = ks.batches.get((t.sku or "", t.step or 0)) if t.kind == "prep" else None
        if batch is not None:
            batch.remove(t)
        t.start, t.end = start, start + (t.end - t.start)
        ks.usage[t.resource].add(t.start, t.end)
        if batch is not None:
            bisect.insort(batch, t, key=_by_end)

    def _drop_task(self, t: Task) -> None:
        del self.plan.tasks[t.id]
        ks = self.kitchens[t.kitchen_id]
        ks.usage[t.resource].add(t.start, t.end, -1)
        if t.kind == "prep" and t.sku is not None and t.step is not None:
            ks.batches[(t.sku, t.step)].remove(t)

    def _add_run(self, r: Run) -> None:
        self.plan.runs[r.id] = r
        ks = self.kitchens[r.kitchen_id]
        ks.couriers.add(r.depart, r.back)
        ks.runs[r.station_id].append(r)
        for oid in r.orders:
            self.run_of[oid] = r.id

    def _drop_run(self, r: Run) -> None:
        del self.plan.runs[r.id]
        ks = self.kitchens[r.kitchen_id]
        ks.couriers.add(r.depart, r.back, -1)
        ks.runs[r.station_id].remove(r)

    def _add_reservation(self, rv: Reservation) -> None:
        self.plan.reservations.append(rv)
        self.slot_busy[(rv.cabinet_id, rv.slot)].add(rv.start, rv.end, rv.order_id)
        self.slot_changes[rv.cabinet_id] += 1
        self.res_by_order[rv.order_id].append(rv)

    def _drop_reservation(self, rv: Reservation) -> None:
        self.plan.reservations.remove(rv)
        self.slot_busy[(rv.cabinet_id, rv.slot)].remove(rv.start, rv.end, rv.order_id)
        self.slot_changes[rv.cabinet_id] += 1

    # -- changes
    def apply(self, ins: Insertion) -> None:
        o = ins.order
        self.plan.orders[o.id] = o
        for t in ins.new_tasks:
            self._add_task(t)
        for tid, units in ins.joins.items():
            t = self.plan.tasks[tid]
            t.units[o.id] = t.units.get(o.id, 0) + units
            self.tasks_of[o.id].add(tid)
        if ins.run_is_new:
            self._add_run(ins.run)
        else:
            run = self.plan.runs[ins.run.id]
            run.orders.append(o.id)
            self.run_of[o.id] = run.id
        for rv in ins.reservations:
            self._add_reservation(rv)

    def remove(self, order_id: str) -> None:
        """Take an order out of the plan: its units, run seat and slot time are freed."""
        for tid in sorted(self.tasks_of.pop(order_id, set())):
            t = self.plan.tasks.get(tid)
            if t is None:
                continue
            t.units.pop(order_id, None)
            if not t.units:
                self._drop_task(t)
        rid = self.run_of.pop(order_id, None)
        if rid is not None and rid in self.plan.runs:
            r = self.plan.runs[rid]
            r.orders.remove(order_id)
            if not r.orders:
                self._drop_run(r)
        for rv in self.res_by_order.pop(order_id, []):
            self._drop_reservation(rv)
        self.plan.orders.pop(order_id, None)

    def set_reservations(self, reservations: Iterable[Reservation]) -> None:
        """Replace the slot time this state knows of."""
        self.plan.reservations = []
        for book in self.slot_busy.values():
            book.clear()
        self.slot_index.clear()
        self.res_by_order = defaultdict(list)
        for rv in reservations:
            self._add_reservation(rv)

    def add_reservations(self, reservations: Iterable[Reservation]) -> None:
        """Slot time taken meanwhile by others (already in no plan of this state)."""
        for rv in reservations:
            self._add_reservation(rv)

    def replace_reservations(self, cabinets: Iterable[str], reservations: Iterable[Reservation]) -> None:
        """Replace the slot time of some cabinets; that of the others stays as it is."""
        cabs = set(cabinets)
        gone = [rv for rv in self.plan.reservations if rv.cabinet_id in cabs]
        if gone:
            self.plan.reservations = [rv for rv in self.plan.reservations if rv.cabinet_id not in cabs]
            for key, book in self.slot_busy.items():
                if key[0] in cabs:
                    book.clear()
            for cab in cabs:
                self.slot_changes[cab] += 1
            for oid in {rv.order_id for rv in gone}:
                kept = [rv for rv in self.res_by_order.pop(oid, []) if rv.cabinet_id not in cabs]
                if kept:
                    self.res_by_order[oid] = kept
        for rv in reservations:
            self._add_reservation(rv)


# --------------------------------------------------------------------------- admission


class _Attempt:
    """Tentative kitchen use for one candidate departure."""

    def __init__(self, ks: KitchenState) -> None:
        self.ks = ks
        self.extra: dict[str, Usage] = defaultdict(Usage)
        self.joined: dict[str, int] = defaultdict(int)
        self.joined_tasks: dict[str, Task] = {}
        self.new: list[Task] = []


def _schedule_kitchen(
    ks: KitchenState,
    order: OrderReq,
    depart: int,
    fresh_lo: dict[str, int],
    now: int,
    windows: list[tuple[int, int]],
    new_id: Callable[[str], str],
) -> _Attempt | None:
    """Items first (so they can join open batches), packing after them; else packing first."""
    k = ks.view
    if k.pack is None:
        att = _Attempt(ks)
        return att if _schedule_items(att, order, depart, fresh_lo, now, windows, new_id) else None
    res, minutes = k.pack
    for items_first in (True, False):
        att = _Attempt(ks)
        if items_first:
            if not _schedule_items(att, order, depart - minutes, fresh_lo, now, windows, new_id):
                continue
            lo = max(
                t.end
                for t in [*att.new, *att.joined_tasks.values()]
                if t.step == len(k.menu[t.sku or ""].steps)
            )
            s = latest_fit(ks.usage[res], att.extra[res], k.capacity[res], minutes, lo, depart, windows)
            if s is None:
                continue
        else:
            s = latest_fit(ks.usage[res], att.extra[res], k.capacity[res], minutes, now, depart, windows)
            if s is None:
                return None
            att.extra[res].add(s, s + minutes)
            if not _schedule_items(att, order, s, fresh_lo, now, windows, new_id):
                return None
        att.extra[res].add(s, s + minutes)
        att.new.append(Task(new_id("t"), k.id, res, "pack", None, None, s, s + minutes, {order.id: 1}))
        return att
    return None


def _schedule_items(
    att: _Attempt,
    order: OrderReq,
    due: int,
    fresh_lo: dict[str, int],
    now: int,
    windows: list[tuple[int, int]],
    new_id: Callable[[str], str],
) -> bool:
    """Every unit of every item through its steps, backwards from ``due``."""
    ks = att.ks
    k = ks.view
    # longest chains first: they are the hardest to fit
    for sku in sorted(order.items, key=lambda s: -k.menu[s].chain_minutes):
        qty = order.items[sku]
        item = k.menu[sku]
        deadlines = [due] * qty
        for step in range(len(item.steps), 0, -1):
            res, minutes, batch = item.steps[step - 1]
            lb = fresh_lo[sku] if step == len(item.steps) else now + minutes
            deadlines.sort(reverse=True)
            nxt: list[int] = []
            i = 0
            while i < len(deadlines):
                d = deadlines[i]
                best: Task | None = None
                open_ = ks.batches.get((sku, step), [])
                # the latest batch ending in [lb, d] with room (the list is sorted by end)
                j = bisect.bisect_right(open_, (d, "\uffff"), key=_by_end)
                while j and open_[j - 1].end >= lb:
                    j -= 1
                    t = open_[j]
                    if t.frozen or t.start <= now or batch - t.total_units - att.joined.get(t.id, 0) <= 0:
                        continue
                    best = t
                    break
                if best is not None:
                    spare = batch - best.total_units - att.joined.get(best.id, 0)
                    take = 0
                    while i < len(deadlines) and take < spare and deadlines[i] >= best.end:
                        take += 1
                        i += 1
                        nxt.append(best.start)
                    att.joined[best.id] += take
                    att.joined_tasks[best.id] = best
                    continue
                group = deadlines[i : i + batch]
                end_by = min(group)
                s = latest_fit(
                    ks.usage[res],
                    att.extra[res],
                    k.capacity[res],
                    minutes,
                    max(now, lb - minutes),
                    end_by,
                    windows,
                )
                if s is None:
                    return False
                att.extra[res].add(s, s + minutes)
                att.new.append(
                    Task(new_id("t"), k.id, res, "prep", sku, step, s, s + minutes, {order.id: len(group)})
                )
                nxt.extend([s] * len(group))
                i += len(group)
            deadlines = nxt
    return True


class _SlotPicker:
    """For one order: per arrival minute, the first cabinet with a free slot for each parcel until
    ``end`` (per parcel the smallest size that holds it, then the snuggest fit: the slot whose
    previous parcel ends last before the arrival, then the label).

    With ``end`` fixed, a slot is free from ``a`` to ``end`` exactly when ``a`` is at or after the end
    of its last parcel starting before ``end`` (its free-from minute), and that end is also the
    snug-fit measure. So a size group needs one index per ``end``: its slots' free-from minutes
    sorted (ties by label order), where the snuggest slot free at ``a`` is found by bisection. The
    index is built when the group is first needed and kept in the state until the cabinet's slot time
    changes (refused orders and their alternatives ask the same full cabinet again and again)."""

    __slots__ = ("cabinets", "end", "parcels", "state")

    INDEX_LIMIT = 4096  # indexes a state keeps (each is a group's slots); beyond, it starts afresh

    def __init__(self, state: PlanState, cabinets: list[str], parcels: dict[str, str], end: int) -> None:
        self.state = state
        self.cabinets = cabinets
        self.parcels = [(zone, SIZE_RANK[size]) for zone, size in parcels.items()]
        self.end = end

    def _index(self, cab: str, zone: str, rank: int, group: list[SlotInfo]) -> list[tuple[int, int]]:
        """The group's (free-from minute, -place in ``group``) in ascending order."""
        state, key = self.state, (cab, zone, rank, self.end)
        changes = state.slot_changes.get(cab, 0)
        got = state.slot_index.get(key)
        if got is None or got[0] != changes:
            books = state.group_books.get(key[:3])
            if books is None:
                books = state.group_books[key[:3]] = [state.slot_busy[(cab, s.label)] for s in group]
            end, left = self.end, bisect.bisect_left
            index = [
                (b.ends[j - 1] if (j := left(b.starts, end)) else NEVER, -i) for i, b in enumerate(books)
            ]
            index.sort()
            if len(state.slot_index) >= self.INDEX_LIMIT:
                state.slot_index.clear()
            got = state.slot_index[key] = (changes, index)
        return got[1]

    def pick(self, arrive: int) -> tuple[str, dict[str, SlotInfo]] | None:
        for cab in self.cabinets:
            chosen: dict[str, SlotInfo] = {}
            for zone, need in self.parcels:
                for rank, group in self.state.world.slots_by_size(cab, zone):
                    if rank < need:
                        continue
                    index = self._index(cab, zone, rank, group)
                    # the latest free-from at or before ``arrive``; of equal ones the first label
                    j = bisect.bisect_right(index, (arrive, 1))
                    if j:
                        chosen[zone] = group[-index[j - 1][1]]
                        break
                else:
                    break
            else:
                return cab, chosen
        return None


def lead_minutes(k: KitchenView, items: Iterable[str], travel: int) -> int:
    chain = max((k.menu[s].chain_minutes for s in items), default=0)
    return chain + (k.pack[1] if k.pack else 0) + travel


def validate(world: World, order: OrderReq) -> Rejection | None:
    k = world.kitchens.get(order.kitchen_id)
    if k is None:
        return Rejection("invalid", f"unknown kitchen {order.kitchen_id!r}")
    if order.station_id not in world.station_cabinets:
        return Rejection("invalid", f"unknown station {order.station_id!r}")
    if order.station_id not in k.travel:
        return Rejection("invalid", f"kitchen {k.id} does not deliver to {order.station_id}")
    if not order.items:
        return Rejection("invalid", "an order needs at least one item")
    for sku, qty in order.items.items():
        if sku not in k.menu:
            return Rejection("invalid", f"{sku!r} is not on the menu of {k.id}")
        if qty < 1:
            return Rejection("invalid", f"quantity of {sku} must be at least 1")
    if order.cabinet_id is not None and order.cabinet_id not in world.station_cabinets[order.station_id]:
        return Rejection("invalid", f"cabinet {order.cabinet_id} is not at {order.station_id}")
    return None


def admit(
    world: World,
    state: PlanState,
    order: OrderReq,
    now: int,
    settings: Settings,
    new_id: Callable[[str], str],
    explain: bool = True,
) -> Insertion | Rejection:
    """Fit one order into the plan (first fit, see the module's doc). ``explain=False`` is for dry
    runs that only ask whether it fits: a refusal for capacity then says ``no-capacity`` without
    working out which resource was short."""
    bad = validate(world, order)
    if bad is not None:
        return bad
    k = world.kitchens[order.kitchen_id]
    ks = state.kitchens[k.id]
    travel = k.travel[order.station_id]
    eta = order.eta
    end = eta + settings.grace
    fresh_lo = {sku: end - k.menu[sku].max_hold for sku in order.items}
    parcels = parcels_of(order, k)
    pack_min = k.pack[1] if k.pack else 0
    chain = max(k.menu[s].chain_minutes for s in order.items)

    # the food must be ready in (max fresh_lo, eta - travel]; some open window must allow it
    ready_hi = eta - travel
    ready_lo = max(fresh_lo.values())
    windows = k.windows(ready_lo - chain - pack_min - 24 * 60, ready_hi + 1)
    if now + lead_minutes(k, order.items, travel) > eta:
        return Rejection("too-late", "not enough time left to cook and deliver by eta")
    if ready_lo > ready_hi:
        return Rejection("too-late", "the food would not stay fresh until eta plus grace")
    if not any(w0 + chain + pack_min <= ready_hi and w1 >= ready_lo for w0, w1 in windows):
        return Rejection("closed", f"{k.id} cannot have this ready by then within its hours")

    cabinets = [order.cabinet_id] if order.cabinet_id else list(world.station_cabinets[order.station_id])
    target = eta - settings.margin
    earliest_arrive = max(now + travel, ready_lo + travel, eta - settings.search_minutes)

    # candidates: (arrive, run or None); preference: at or before target, latest first; then after
    joinable = [
        r
        for r in ks.runs.get(order.station_id, ())
        if not r.frozen
        and r.depart > now
        and len(r.orders) < k.run_capacity
        and earliest_arrive <= r.arrive <= eta
    ]
    by_arrive: dict[int, list[Run]] = defaultdict(list)
    for r in joinable:
        by_arrive[r.arrive].append(r)
    before = range(min(target, eta), earliest_arrive - 1, -1)
    after = range(target + 1, eta + 1)

    def candidates() -> Iterator[tuple[int, Run | None]]:
        # run aware: a run already going there close to the target is joined first
        near = [r for r in joinable if target - settings.join_window <= r.arrive <= eta]
        near.sort(key=lambda r: (r.arrive > target, abs(r.arrive - target), r.id))
        for r in near:
            yield r.arrive, r
        tried = {r.id for r in near}
        for a in itertools.chain(before, after):
            for r in sorted(by_arrive.get(a, []), key=lambda r: r.id):
                if r.id not in tried:
                    yield a, r
            yield a, None

    # each candidate needs a courier (or a run joined), a slot and room in the kitchen, checked
    # cheapest first; which stage a refusal reached is worked out after (the refusal's reason)
    courier_ok = False
    kitchen_failed_new = False
    # a courier busy at minute t rules out a new run arriving in (t - travel, t + travel]
    no_courier_lo = no_courier_hi = NEVER
    slots = _SlotPicker(state, cabinets, parcels, end)
    for a, run in candidates():
        depart = a - travel
        if run is None:
            if kitchen_failed_new and a <= target:
                continue
            if no_courier_lo < a <= no_courier_hi:
                continue
            busy_at = _last_conflict(ks.couriers, None, depart, a + travel, k.couriers)
            if busy_at is not None:
                no_courier_lo, no_courier_hi = busy_at - travel, busy_at + travel
                continue
        slot_pick = slots.pick(a)
        if slot_pick is None:
            continue
        courier_ok = True
        att = _schedule_kitchen(ks, order, depart, fresh_lo, now, windows, new_id)
        if att is None:
            if run is None:
                kitchen_failed_new = True
            continue
        cab, chosen = slot_pick
        if run is None:
            run = Run(new_id("r"), k.id, order.station_id, depart, a, a + travel, [order.id])
            is_new = True
        else:
            is_new = False
        reservations = [
            Reservation(order.id, cab, zone, parcels[zone], s.label, a, end) for zone, s in chosen.items()
        ]
        ends = _last_step_ends(att, k)
        packs = [t.end for t in att.new if t.kind == "pack"]
        ready = packs[0] if packs else max(max(v) for v in ends.values())
        expiry: dict[str, int] = {}
        for sku, lst in ends.items():
            item = k.menu[sku]
            expiry[item.zone] = min(expiry.get(item.zone, 10**12), min(lst) + item.max_hold)
        order.cabinet_id = cab
        return Insertion(order, att.new, dict(att.joined), run, is_new, reservations, ready, expiry)
    if courier_ok:
        return Rejection("no-kitchen-capacity", f"{k.id} has no room to cook this for that time")
    if not explain:
        return Rejection("no-capacity", "no courier and slot free together for that time")
    # a slot free from some arrival is free from any later one: the latest candidate, eta, tells
    if slots.pick(eta) is None:
        return Rejection("no-cabinet-capacity", f"no free slot at {order.station_id} for that time")
    return Rejection("no-courier-capacity", f"no courier of {k.id} free for that time")


def _last_step_ends(att: _Attempt, k: KitchenView) -> dict[str, list[int]]:
    """sku -> end minutes of the last-step tasks carrying this order's units."""
    out: dict[str, list[int]] = defaultdict(list)
    for t in [*att.new, *att.joined_tasks.values()]:
        if t.kind == "prep" and t.sku is not None and t.step == len(k.menu[t.sku].steps):
            out[t.sku].append(t.end)
    return out


def id_factory(prefix: str = "") -> Callable[[str], str]:
    counter = itertools.count(1)

    def new_id(kind: str) -> str:
        return f"{kind}{prefix}{next(counter):06d}"

    return new_id


def offerable(k: KitchenView, sku: str, station_id: str, eta: int, now: int, grace: int) -> bool:
    """Could this item, alone, be ready fresh for ``eta`` within some open window (ignoring load)?"""
    item = k.menu[sku]
    travel = k.travel[station_id]
    chain = item.chain_minutes + (k.pack[1] if k.pack else 0)
    lo = max(eta + grace - item.max_hold, now + chain)
    hi = eta - travel
    for w0, w1 in k.windows(lo - chain - 24 * 60, hi + 1):
        if max(lo, w0 + chain) <= min(hi, w1):
            return True
    return False
