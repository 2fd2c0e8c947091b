"""First-fit insertion of one order into a plan, in milliseconds.

``PlanState`` keeps capacity timelines (per kitchen resource, per courier pool, per cabinet slot)
next to a ``Plan``; ``admit`` searches pickup-side first:

1. candidate deposit times near the target ``eta - margin``: a courier run already going to the
   station arriving a little before or after it (``Settings.join_window``, ``late_join``), then
   per minute latest first from the target down to ``early_first`` before it (a run to join, else
   a new run), then the minutes after the target up to ``eta``, then the earlier ones;
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
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

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


class Couriers(Usage):
    """A kitchen's couriers out per minute, with a byte per minute that says whether all ``cap`` of
    them are out (``full``, a bytearray per UTC day of epoch minutes, made when a run first touches
    the day), so that admission finds the arrivals a courier is free for by searching bytes
    (``free_arrivals``) instead of stepping through the minutes."""

    __slots__ = ("cap", "full")

    DAY = 1440

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.full: dict[int, bytearray] = {}

    def add(self, s: int, e: int, d: int = 1) -> None:
        super().add(s, e, d)
        m, cap, day = self.m, self.cap, self.DAY
        t = s
        while t < e:
            base = t - t % day
            flags = self.full.get(base)
            if flags is None:
                flags = self.full[base] = bytearray(day)
            for u in range(t, min(e, base + day)):
                flags[u - base] = m.get(u, 0) >= cap
            t = base + day

    def _flags(self, s: int, e: int) -> bytes:
        """The full-minute bytes of minutes [s, e) (a day no run touched is all free)."""
        day, out = self.DAY, []
        t = s
        while t < e:
            base = t - t % day
            end = min(e, base + day)
            flags = self.full.get(base)
            out.append(bytes(end - t) if flags is None else flags[t - base : end - base])
            t = end
        return b"".join(out)

    def free_arrivals(self, a: int, stop: int, step: int, travel: int) -> Iterator[int]:
        """Arrivals from ``a`` to ``stop`` (``step`` 1 or -1) for which a courier is free from
        departure to return, ``[arrival - travel, arrival + travel)``, in that order."""
        if travel <= 0:
            yield from range(a, stop + step, step)
            return
        lo, hi = (stop, a) if step < 0 else (a, stop)
        if self.cap <= 0 or lo > hi:
            return
        # the minutes [lo - travel, hi + travel) hold every round trip asked about
        flags, need = self._flags(lo - travel, hi + travel), 2 * travel
        free = bytes(need)
        if step < 0:
            end = len(flags)
            while (i := flags.rfind(free, 0, end)) >= 0:
                yield lo + i
                end = i + need - 1  # the next round trip down starts a minute earlier
        else:
            start = 0
            while (i := flags.find(free, start)) >= 0:
                yield lo + i
                start = i + 1


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


# a reservation as a tuple of all its fields, to compare slot time by value in sets and dicts
_rv_key = operator.attrgetter(*(f.name for f in fields(Reservation)))


def _by_arrive(r: Run) -> tuple[int, str]:
    return r.arrive, r.id


class SlotBook:
    """The parcels one slot holds, as sorted half-open intervals that do not overlap (with their
    starts and ends also as lists of their own, for bisection without building tuples). Once the
    slot picker indexes the slot's size group, every change also notes the slot's place in the
    group's change log (``log``, ``pos``)."""

    __slots__ = ("ends", "iv", "log", "pos", "starts")

    def __init__(self) -> None:
        self.iv: list[tuple[int, int, str]] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.log: GroupLog | None = None
        self.pos = 0

    def add(self, s: int, e: int, oid: str) -> None:
        i = bisect.bisect_right(self.iv, (s, e, oid))
        self.iv.insert(i, (s, e, oid))
        self.starts.insert(i, s)
        self.ends.insert(i, e)
        if self.log is not None:
            self.log.note(self.pos)

    def remove(self, s: int, e: int, oid: str) -> None:
        i = self.iv.index((s, e, oid))
        del self.iv[i], self.starts[i], self.ends[i]
        if self.log is not None:
            self.log.note(self.pos)


class GroupLog:
    """The places (in a size group) of the slots whose books changed, in order. ``base`` counts the
    notes dropped from the front: an index that has seen fewer than ``base`` is rebuilt."""

    __slots__ = ("base", "limit", "places")

    def __init__(self, size: int) -> None:
        self.base = 0
        self.places: list[int] = []
        self.limit = 2 * size + 64

    def note(self, pos: int) -> None:
        self.places.append(pos)
        if len(self.places) > self.limit:
            self.base += len(self.places)
            self.places.clear()

    @property
    def count(self) -> int:
        return self.base + len(self.places)


# --------------------------------------------------------------------------- state


@dataclass
class KitchenState:
    view: KitchenView
    usage: dict[str, Usage] = field(default_factory=dict)
    couriers: Couriers = field(init=False)
    # prep tasks by (sku, step), sorted by (end, id): a new unit looks only at batches ending in time
    batches: dict[tuple[str, int], list[Task]] = field(default_factory=lambda: defaultdict(list))
    # the same with room for more units, and some that filled since (dropped when a search finds
    # them full): every batch with room is here, so a search need not step over full ones
    roomy: dict[tuple[str, int], list[Task]] = field(default_factory=lambda: defaultdict(list))
    roomy_ids: set[str] = field(default_factory=set)
    runs: dict[str, list[Run]] = field(default_factory=lambda: defaultdict(list))  # by (arrive, id)
    arrives: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # runs' arrivals
    # started batches with made units handed over to the order being admitted: task id -> units
    # (``solver.consolidate.admit_handing_over``); a started batch is otherwise never joined
    handed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.couriers = Couriers(self.view.couriers)
        for r in self.view.capacity:
            self.usage.setdefault(r, Usage())

    def note_room(self, t: Task) -> None:
        """A prep task that may have room for more units (new, or units taken out of it)."""
        if t.id in self.roomy_ids or t.sku is None or t.step is None:
            return
        if t.total_units < self.view.menu[t.sku].steps[t.step - 1][2]:
            bisect.insort(self.roomy[(t.sku, t.step)], t, key=_by_end)
            self.roomy_ids.add(t.id)

    def drop_room(self, t: Task) -> None:
        """A prep task that is leaving its place in the batch lists (moved or dropped)."""
        if t.id in self.roomy_ids:
            self.roomy[(t.sku or "", t.step or 0)].remove(t)
            self.roomy_ids.discard(t.id)


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
        # the slot picker's sorted free-from index per (cabinet, zone, size rank, end), brought up
        # to date from its group's change log when asked (``_SlotPicker._index``)
        self.slot_index: dict[tuple[str, str, int, int], SlotIndex] = {}
        self.group_books: dict[tuple[str, str, int], tuple[list[SlotBook], GroupLog]] = {}
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
            ks.note_room(t)
        for oid in t.units:
            self.tasks_of[oid].add(t.id)

    def move_task(self, t: Task, start: int) -> None:
        """Move a task in time (its machine time and its place among its step's batches)."""
        ks = self.kitchens[t.kitchen_id]
        ks.usage[t.resource].add(t.start, t.end, -1)
        batch = ks.batches.get((t.sku or "", t.step or 0)) if t.kind == "prep" else None
        if batch is not None:
            batch.remove(t)
            ks.drop_room(t)
        t.start, t.end = start, start + (t.end - t.start)
        ks.usage[t.resource].add(t.start, t.end)
        if batch is not None:
            bisect.insort(batch, t, key=_by_end)
            ks.note_room(t)

    def _drop_task(self, t: Task) -> None:
        del self.plan.tasks[t.id]
        ks = self.kitchens[t.kitchen_id]
        ks.usage[t.resource].add(t.start, t.end, -1)
        if t.kind == "prep" and t.sku is not None and t.step is not None:
            ks.batches[(t.sku, t.step)].remove(t)
            ks.drop_room(t)

    def _add_run(self, r: Run) -> None:
        self.plan.runs[r.id] = r
        ks = self.kitchens[r.kitchen_id]
        ks.couriers.add(r.depart, r.back)
        runs = ks.runs[r.station_id]
        i = bisect.bisect_right(runs, _by_arrive(r), key=_by_arrive)
        runs.insert(i, r)
        ks.arrives[r.station_id].insert(i, r.arrive)
        for oid in r.orders:
            self.run_of[oid] = r.id

    def _drop_run(self, r: Run) -> None:
        del self.plan.runs[r.id]
        ks = self.kitchens[r.kitchen_id]
        ks.couriers.add(r.depart, r.back, -1)
        i = ks.runs[r.station_id].index(r)
        del ks.runs[r.station_id][i], ks.arrives[r.station_id][i]

    def move_run(self, r: Run, arrive: int) -> None:
        """Re-time a run of the plan to arrive at ``arrive``: its courier time, its place among its
        station's runs, and the slot time of the orders it carries (see ``_deposit_at``)."""
        travel = r.arrive - r.depart
        self._drop_run(r)
        r.depart, r.arrive, r.back = arrive - travel, arrive, arrive + travel
        self._add_run(r)
        for oid in r.orders:
            self._deposit_at(oid, arrive)

    def move_to_run(self, order_id: str, run: Run) -> None:
        """Put an order on another run, one of the plan's or a new one (given without orders): off
        its own (dropped once empty), its slot time from the new run's arrival (``_deposit_at``)."""
        old = self.plan.runs[self.run_of[order_id]]
        old.orders.remove(order_id)
        if not old.orders:
            self._drop_run(old)
        run.orders.append(order_id)
        if run.id in self.plan.runs:
            self.run_of[order_id] = run.id
        else:
            self._add_run(run)
        self._deposit_at(order_id, run.arrive)

    def _deposit_at(self, order_id: str, arrive: int) -> None:
        """An order's slot time starts at its new deposit (its slots, and when they are free to,
        stay as they are: the caller knows they are free from then on, as they are for a later
        deposit)."""
        for rv in self.res_by_order[order_id]:
            book = self.slot_busy[(rv.cabinet_id, rv.slot)]
            book.remove(rv.start, rv.end, order_id)
            rv.start = arrive
            book.add(rv.start, rv.end, order_id)

    def _add_reservation(self, rv: Reservation) -> None:
        self.plan.reservations.append(rv)
        self.slot_busy[(rv.cabinet_id, rv.slot)].add(rv.start, rv.end, rv.order_id)
        self.res_by_order[rv.order_id].append(rv)

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

    def set_units(self, t: Task, units: dict[str, int]) -> None:
        """A task of the plan that stays takes these units (a re-plan moved some orders out of it
        or into it): its orders know it, and it is open to joins again if it has room."""
        t.units = dict(units)
        for oid in t.units:
            self.tasks_of[oid].add(t.id)
        self.kitchens[t.kitchen_id].note_room(t)

    def move_units(self, order_id: str, src: Task, dst: Task, n: int = 1) -> None:
        """``n`` of an order's units of one step go from one task of the plan to another of the
        same step (the caller has checked that ``dst`` has room and suits them); ``src`` is open to
        joins again."""
        src.units[order_id] -= n
        if not src.units[order_id]:
            del src.units[order_id]
            self.tasks_of[order_id].discard(src.id)
        dst.units[order_id] = dst.units.get(order_id, 0) + n
        self.tasks_of[order_id].add(dst.id)
        self.kitchens[src.kitchen_id].note_room(src)

    def remove(self, *order_ids: str) -> None:
        """Take orders out of the plan: their units, run seats and slot time are freed."""
        gone: list[Reservation] = []
        for order_id in order_ids:
            for tid in sorted(self.tasks_of.pop(order_id, set())):
                t = self.plan.tasks.get(tid)
                if t is None:
                    continue
                t.units.pop(order_id, None)
                if not t.units:
                    self._drop_task(t)
                else:
                    self.kitchens[t.kitchen_id].note_room(t)
            rid = self.run_of.pop(order_id, None)
            if rid is not None and rid in self.plan.runs:
                r = self.plan.runs[rid]
                r.orders.remove(order_id)
                if not r.orders:
                    self._drop_run(r)
            gone.extend(self.res_by_order.pop(order_id, []))
            self.plan.orders.pop(order_id, None)
        self._drop_reservations(gone)

    def _drop_reservations(self, gone: list[Reservation]) -> None:
        """Free this slot time: one pass over the plan's, by identity (``res_by_order`` and the
        books hold the very objects of ``plan.reservations``)."""
        if not gone:
            return
        drop = {id(rv) for rv in gone}
        self.plan.reservations = [rv for rv in self.plan.reservations if id(rv) not in drop]
        for rv in gone:
            self.slot_busy[(rv.cabinet_id, rv.slot)].remove(rv.start, rv.end, rv.order_id)
            left = [x for x in self.res_by_order.pop(rv.order_id, []) if id(x) not in drop]
            if left:
                self.res_by_order[rv.order_id] = left

    def add_reservations(self, reservations: Iterable[Reservation]) -> None:
        """Slot time taken meanwhile by others (already in no plan of this state)."""
        for rv in reservations:
            self._add_reservation(rv)

    def replace_reservations(self, cabinets: Iterable[str], reservations: Iterable[Reservation]) -> None:
        """Replace the slot time of some cabinets; that of the others stays as it is. Slot time
        that is in both stays untouched (a re-read mostly finds what was there), so only the slots
        whose time differs change."""
        cabs = set(cabinets)
        incoming = {_rv_key(rv): rv for rv in reservations}
        kept: set[tuple[Any, ...]] = set()
        gone: list[Reservation] = []
        for rv in self.plan.reservations:
            if rv.cabinet_id in cabs:
                key = _rv_key(rv)
                if key not in incoming or key in kept:
                    gone.append(rv)
                else:
                    kept.add(key)
        self._drop_reservations(gone)
        for key, rv in incoming.items():
            if key not in kept:
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
                open_ = ks.roomy.get((sku, step), [])
                # the latest batch ending in [lb, d] with room (the list is sorted by end)
                j = bisect.bisect_right(open_, (d, "\uffff"), key=_by_end)
                while j and open_[j - 1].end >= lb:
                    j -= 1
                    t = open_[j]
                    room = batch - t.total_units
                    if room <= 0:  # filled since it was listed
                        del open_[j]
                        ks.roomy_ids.discard(t.id)
                        continue
                    if t.started(now):
                        room = min(room, ks.handed.get(t.id, 0))
                    spare = room - att.joined.get(t.id, 0)
                    if spare <= 0:
                        continue
                    best = t
                    break
                if best is not None:
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


class SlotIndex:
    """A size group's slots' free-from minutes for one ``end``, per place (``free``), and sorted by
    (free-from, -place) as the plain numbers free-from * ``m`` - place (``order``; ``m`` is more
    than any place, and numbers sort much faster than pairs), as of ``seen`` notes of the group's
    change log. ``pick(a)`` is the place of the last slot free at ``a`` in that order."""

    __slots__ = ("free", "m", "order", "seen")

    def __init__(self, seen: int, books: list[SlotBook], end: int) -> None:
        self.seen = seen
        self.m = m = len(books)
        left = bisect.bisect_left
        self.free = free = [
            (b.ends[j - 1] if (j := left(b.starts, end)) else NEVER) if b.starts else NEVER for b in books
        ]
        self.order = sorted([f * m - i for i, f in enumerate(free)])

    def move(self, i: int, f: int) -> None:
        """Slot ``i`` is now free from ``f``."""
        order, m = self.order, self.m
        del order[bisect.bisect_left(order, self.free[i] * m - i)]
        bisect.insort(order, f * m - i)
        self.free[i] = f

    def pick(self, arrive: int) -> int | None:
        j = bisect.bisect_right(self.order, arrive * self.m)
        return -self.order[j - 1] % self.m if j else None


def _free_from(book: SlotBook, end: int) -> int:
    """The end of the slot's last parcel starting before ``end`` (NEVER when there is none)."""
    j = bisect.bisect_left(book.starts, end)
    return book.ends[j - 1] if j else NEVER


class _SlotPicker:
    """For one order: per arrival minute, the first cabinet with a free slot for each parcel until
    ``end`` (per parcel the smallest size that holds it, then the snuggest fit: the slot whose
    previous parcel ends last before the arrival, then the label).

    With ``end`` fixed, a slot is free from ``a`` to ``end`` exactly when ``a`` is at or after the end
    of its last parcel starting before ``end`` (its free-from minute), and that end is also the
    snug-fit measure. So a size group needs one index per ``end``: its slots' free-from minutes
    sorted (ties by label order), where the snuggest slot free at ``a`` is found by bisection. The
    index is built when the group is first needed and kept in the state; when asked again it takes
    in only the slots changed since (the group's change log), or is built afresh after many. A dry
    run needs only some free slot (not ``snug``): it looks through the group unless an index for
    its ``end`` is at hand, as most dry runs' ends are asked for once."""

    __slots__ = ("cabinets", "end", "parcels", "snug", "state")

    INDEX_LIMIT = 4096  # indexes a state keeps (each is a group's slots); beyond, it starts afresh

    def __init__(
        self,
        state: PlanState,
        cabinets: list[str],
        parcels: list[tuple[str, int]],
        end: int,
        snug: bool = True,
    ) -> None:
        self.state = state
        self.cabinets = cabinets
        self.parcels = parcels  # (zone, size rank)
        self.end = end
        self.snug = snug

    def _books(
        self, cab: str, zone: str, rank: int, group: list[SlotInfo]
    ) -> tuple[list[SlotBook], GroupLog]:
        """The group's slot books, tied to its change log."""
        state = self.state
        got = state.group_books.get((cab, zone, rank))
        if got is None:
            log = GroupLog(len(group))
            books = [state.slot_busy[(cab, s.label)] for s in group]
            for i, b in enumerate(books):
                b.log, b.pos = log, i
            got = state.group_books[(cab, zone, rank)] = (books, log)
        return got

    def _free(self, cab: str, zone: str, rank: int, group: list[SlotInfo], arrive: int) -> int | None:
        """The place of a slot of the group free from ``arrive`` to ``end``: the snuggest from the
        group's index; when any will do (not ``snug``) and there is no index for this ``end`` yet,
        the first found in label order, without building one (a dry run's ``end`` is seldom
        asked for again, and most of the time a free slot is found among the first few)."""
        if self.snug or (cab, zone, rank, self.end) in self.state.slot_index:
            return self._index(cab, zone, rank, group).pick(arrive)
        end = self.end
        for i, b in enumerate(self._books(cab, zone, rank, group)[0]):
            if _free_from(b, end) <= arrive:
                return i
        return None

    def _index(self, cab: str, zone: str, rank: int, group: list[SlotInfo]) -> SlotIndex:
        """The group's index for ``end``, up to date."""
        state, end = self.state, self.end
        books, log = self._books(cab, zone, rank, group)
        key = (cab, zone, rank, end)
        ix = state.slot_index.get(key)
        if ix is not None and ix.seen < log.count:
            changed = set(log.places[ix.seen - log.base :]) if ix.seen >= log.base else None
            if changed is None or 2 * len(changed) > len(books):
                ix = None  # many changes: building afresh is cheaper
            else:
                free = ix.free
                for i in changed:
                    f = _free_from(books[i], end)
                    if f != free[i]:
                        ix.move(i, f)
                ix.seen = log.count
        if ix is None:
            if len(state.slot_index) >= self.INDEX_LIMIT:
                state.slot_index.clear()
            ix = state.slot_index[key] = SlotIndex(log.count, books, end)
        return ix

    def pick(self, arrive: int) -> tuple[str, dict[str, SlotInfo]] | None:
        for cab in self.cabinets:
            chosen: dict[str, SlotInfo] = {}
            for zone, need in self.parcels:
                for rank, group in self.state.world.slots_by_size(cab, zone):
                    if rank < need:
                        continue
                    i = self._free(cab, zone, rank, group, arrive)
                    if i is not None:
                        chosen[zone] = group[i]
                        break
                else:
                    break
            else:
                return cab, chosen
        return None


def later_eta_from(refused: Rejection, order: OrderReq, eta: int) -> int:
    """For a dry run of a refused ``order`` at another ``eta`` on the same plan: the arrival minute up
    to which nothing can work (``admit``'s ``after``). When it was refused for want of a courier or
    a slot, no arrival up to its eta had both (a run to join, or a free courier, and a free slot);
    at a later eta the slot is needed longer and the couriers are as busy, so only arrivals after
    its eta are new."""
    if eta > order.eta and refused.reason in ("no-courier-capacity", "no-cabinet-capacity"):
        return order.eta
    return NEVER


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


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """What admission needs to know of an order that does not depend on its eta or the plan."""

    kitchen: KitchenView
    travel: int
    parcels: dict[str, str]  # zone -> size (``parcels_of``)
    cabinets: list[str]  # the cabinets it may use, in order
    ranked: list[tuple[str, int]]  # (zone, size rank) of its parcels, for ``_SlotPicker``
    holds: tuple[tuple[str, int], ...]  # (sku, max_hold)
    min_hold: int
    pack_min: int
    chain: int  # the longest chain of steps among its items


def order_facts(world: World, order: OrderReq) -> OrderFacts | Rejection:
    """``validate``'s verdict, else the order's facts; both kept on ``world`` per kitchen, station,
    cabinet and items, as dry runs ask again and again about the same few (read only: shared)."""
    key = (order.kitchen_id, order.station_id, order.cabinet_id, *order.items.items())
    got = world.facts.get(key)
    if got is None:
        got = validate(world, order)
        if got is None:
            k = world.kitchens[order.kitchen_id]
            holds = tuple((sku, k.menu[sku].max_hold) for sku in order.items)
            parcels = parcels_of(order, k)
            got = OrderFacts(
                k,
                k.travel[order.station_id],
                parcels,
                [order.cabinet_id] if order.cabinet_id else list(world.station_cabinets[order.station_id]),
                [(zone, SIZE_RANK[size]) for zone, size in parcels.items()],
                holds,
                min(h for _, h in holds),
                k.pack[1] if k.pack else 0,
                max(k.menu[s].chain_minutes for s in order.items),
            )
        if len(world.facts) >= 65536:
            world.facts.clear()
        world.facts[key] = got
    return got


def admit(
    world: World,
    state: PlanState,
    order: OrderReq,
    now: int,
    settings: Settings,
    new_id: Callable[[str], str],
    explain: bool = True,
    after: int = NEVER,
) -> Insertion | Rejection:
    """Fit one order into the plan (first fit, see the module's doc). ``explain=False`` is for dry
    runs that only ask whether it fits: a refusal for capacity then says ``no-capacity`` without
    working out which resource was short (and says it before asking about the kitchen's hours when
    no courier or run is there at all), and a fit's slots are free but not always the snuggest
    (``_SlotPicker``'s ``snug``). Arrivals at or before ``after`` are not tried (a caller
    that knows they cannot work, see ``later_eta_from``)."""
    facts = order_facts(world, order)
    if isinstance(facts, Rejection):
        return facts
    k, travel, parcels, cabinets = facts.kitchen, facts.travel, facts.parcels, facts.cabinets
    ks = state.kitchens[k.id]
    eta = order.eta
    end = eta + settings.grace
    pack_min, chain = facts.pack_min, facts.chain

    # the food must be ready in (latest fresh_lo, eta - travel]; some open window must allow it
    # (asked below, after a dry run's quick way out)
    ready_hi = eta - travel
    ready_lo = end - facts.min_hold
    if now + chain + pack_min + travel > eta:  # cooking, packing and the ride take that long
        return Rejection("too-late", "not enough time left to cook and deliver by eta")
    if ready_lo > ready_hi:
        return Rejection("too-late", "the food would not stay fresh until eta plus grace")

    target = eta - settings.margin
    earliest_arrive = max(now + travel, ready_lo + travel, eta - settings.search_minutes, after + 1)

    # candidates: (arrive, run or None); preference: at or before target, latest first; then after
    there, arrives = ks.runs.get(order.station_id, []), ks.arrives.get(order.station_id, [])
    joinable = [
        r
        for r in there[bisect.bisect_left(arrives, earliest_arrive) : bisect.bisect_right(arrives, eta)]
        if not r.frozen and r.depart > now and len(r.orders) < k.run_capacity
    ]
    if (
        not explain
        and not joinable
        and next(ks.couriers.free_arrivals(eta, earliest_arrive, -1, travel), None) is None
    ):
        # a dry run with no run to join and no courier free for any arrival that could work
        # (none before ``earliest_arrive`` can) needs no candidate asked about
        return Rejection("no-capacity", "no courier and slot free together for that time")
    windows = k.windows(ready_lo - chain - pack_min - 24 * 60, ready_hi + 1)
    if not any(w0 + chain + pack_min <= ready_hi and w1 >= ready_lo for w0, w1 in windows):
        return Rejection("closed", f"{k.id} cannot have this ready by then within its hours")
    fresh_lo = {sku: end - hold for sku, hold in facts.holds}
    by_arrive: dict[int, list[Run]] = defaultdict(list)
    for r in joinable:
        by_arrive[r.arrive].append(r)  # in id order, as the list is

    def candidates() -> Iterator[tuple[int, Run | None]]:
        # run aware: a run already going there close to the target is joined first
        near = [
            r
            for r in joinable
            if target - settings.join_window <= r.arrive <= min(eta, target + settings.late_join)
        ]
        near.sort(key=lambda r: (r.arrive > target, abs(r.arrive - target), r.id))
        for r in near:
            yield r.arrive, r
        tried = {r.id for r in near}
        # then per arrival minute: just before the target latest first, then after it, then the
        # rest before it; the runs arriving then, then a new run (when a courier is free for it)
        top = min(target, eta)
        early = top - settings.early_first
        phases = [(top, max(earliest_arrive, early), -1), (max(target, after) + 1, eta, 1)]
        if early - 1 >= earliest_arrive:
            phases.append((early - 1, earliest_arrive, -1))
        for hi, lo, step in phases:
            news = ks.couriers.free_arrivals(hi, lo, step, travel)  # arrivals a new run could make
            nxt = next(news, None)
            minutes = [m for m in by_arrive if (lo <= m <= hi if step < 0 else hi <= m <= lo)]
            minutes.sort(reverse=step < 0)
            for m in minutes:
                while nxt is not None and (nxt > m if step < 0 else nxt < m):
                    if step < 0 and kitchen_failed_new:  # it failed for a later new run
                        nxt = None
                        break
                    yield nxt, None
                    nxt = next(news, None)
                for r in by_arrive[m]:
                    if r.id not in tried:
                        yield m, r
            while nxt is not None and not (step < 0 and kitchen_failed_new):
                yield nxt, None
                nxt = next(news, None)

    # each candidate needs a courier (or a run joined), a slot and room in the kitchen, checked
    # cheapest first; which stage a refusal reached is worked out after (the refusal's reason)
    reached_kitchen = False  # some candidate had a courier and a slot
    kitchen_failed_new = False
    slots = _SlotPicker(state, cabinets, facts.ranked, end, snug=explain)
    # no slot free from an arrival means none free from any earlier one (the slot time needed
    # only grows): arrivals at or before ``no_slot`` are not asked again
    no_slot = NEVER
    picked: tuple[int, tuple[str, dict[str, SlotInfo]] | None] = (NEVER, None)
    for a, run in candidates():
        if a <= no_slot:
            continue
        depart = a - travel
        if picked[0] != a:  # a run joined and a new run at the same minute share one pick
            picked = (a, slots.pick(a))
        slot_pick = picked[1]
        if slot_pick is None:
            no_slot = a
            continue
        reached_kitchen = True
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
    if reached_kitchen:
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
