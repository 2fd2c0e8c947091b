"""Batch consolidation and early work. ``consolidate`` moves an order's units out of a batch into
another batch of the same step that has room and whose timing still suits them, so that an emptied
batch gives its equipment time back. Both are pure Python and fast: the planner runs them before
CP-SAT, and before giving up on an order that first fit could not place.

``shift_earlier`` then moves not-started batches earlier, into equipment time that would
otherwise pass idle, so that time at the rush stays free for orders placed during the ride (which
cannot start before they are placed). It moves prep work only: packing, runs and slots keep their
times, so no deposit and no hold changes; food moved earlier keeps ``Settings.keep_fresh`` minutes
past the end of its slot time for commuters who come late.

``admit_handing_over`` is for an order first fit refused: food of one step already made (its batch
has started) for an order whose packing is later goes to the new order, and the first order's
units are made again in a later batch (one with room, else a new one where the machine is free).
Long-keeping food baked early for the night's pre-orders thus serves commuters who order during
the ride, and the oven time they would have needed at the rush goes to later, quieter time. Units
change hands only; no started work moves.

``settle_late`` works the other way, on runs about to leave: a parcel that would wait in its
slot longer than the deposit margin asks goes on a later run, when a courier is free for it then, and
its packing follows. Near departure the couriers' time is known; earlier, it is kept for orders
yet to come (a run joined early saves a courier, which is what admission and CP-SAT prefer).

Only work that has not started moves. An order's units move only to a batch that ends before the
order's next step (or its packing, or its run) starts, starts after its previous step ends, and
ends late enough that the parcel stays fresh until its slot time ends; so every rule of SPEC
section 4 that held before still holds (``solver.check`` says so in the tests).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from .admission import Insertion, PlanState, Rejection, Usage, admit, earliest_fit, latest_fit
from .model import OrderReq, Run, Settings, Task

SETTLE_WITHIN = 15  # minutes: runs leaving within this long are settled


@contextmanager
def _lifted(usage: Usage, start: int, end: int) -> Iterator[None]:
    """``usage`` without one unit over [start, end): where work taking it could go instead."""
    usage.add(start, end, -1)
    try:
        yield
    finally:
        usage.add(start, end)


def consolidate(
    state: PlanState,
    kitchen_id: str,
    now: int,
    settings: Settings,
    moved: Callable[[str], None] | None = None,
    only: set[str] | None = None,
) -> int:
    """Empty whatever batches of this kitchen can be emptied; returns how many were. ``moved`` is
    told the id of every order whose units moved; with ``only``, only those orders' units move."""
    ks = state.kitchens[kitchen_id]
    k = ks.view
    emptied = 0
    for (sku, step), tasks in list(ks.batches.items()):
        _, minutes, batch = k.menu[sku].steps[step - 1]
        if batch <= 1:
            continue
        # by start (equal starts keep their order), so the batches a window admits are a slice
        movable = sorted((t for t in tasks if not t.started(now)), key=lambda t: t.start)
        if len(movable) < 2:
            continue
        starts = [t.start for t in movable]
        room = {t.id: batch - t.total_units for t in movable}
        # the emptiest first; each goes whole or not at all
        for a in sorted(movable, key=lambda t: (t.total_units, t.start)):
            if only is not None and not only.issuperset(a.units):
                continue
            spare = dict(room)
            del spare[a.id]
            plan: list[tuple[str, int, Task]] = []
            for oid, n in sorted(a.units.items(), key=lambda kv: -kv[1]):
                window = _window(state, oid, sku, step, settings)
                near = movable[
                    bisect.bisect_left(starts, window[0]) : bisect.bisect_right(starts, window[1] - minutes)
                ]
                best = _fullest_suiting((b for b in near if b is not a), spare, n, window)
                if best is None:
                    break
                spare[best.id] -= n
                plan.append((oid, n, best))
            else:
                for oid, n, b in plan:
                    state.move_units(oid, a, b, n)
                    room[b.id] -= n
                    if moved is not None:
                        moved(oid)
                state._drop_task(a)
                i = next(i for i, t in enumerate(movable) if t is a)
                del movable[i], starts[i]
                del room[a.id]
                emptied += 1
    return emptied


def _fullest_suiting(
    batches: Iterable[Task], spare: dict[str, int], n: int, window: tuple[int, int, int]
) -> Task | None:
    """Of ``batches``, the fullest with room (``spare``: task id -> units) for ``n`` units whose
    timing suits them (``window``, from ``_window``); among equals the latest (freshest)."""
    lo_start, hi_end, fresh_end = window
    best: Task | None = None
    for b in batches:
        if spare.get(b.id, 0) < n or b.start < lo_start or b.end > hi_end or b.end < fresh_end:
            continue
        if best is None or (spare[b.id], -b.end) < (spare[best.id], -best.end):
            best = b
    return best


def _window(state: PlanState, oid: str, sku: str, step: int, settings: Settings) -> tuple[int, int, int]:
    """For an order's units of (sku, step): the earliest start, the latest end and the earliest end
    (freshness) of a batch that could hold them."""
    plan = state.plan
    order = plan.orders[oid]
    k = state.world.kitchens[order.kitchen_id]
    item = k.menu[sku]
    mine = [plan.tasks[t] for t in state.tasks_of.get(oid, ()) if t in plan.tasks]
    lo_start = max((t.end for t in mine if t.sku == sku and t.step == step - 1), default=-(10**9))
    if step < len(item.steps):
        hi_end = min(t.start for t in mine if t.sku == sku and t.step == step + 1)
        fresh_end = -(10**9)
    else:
        packs = [t.start for t in mine if t.kind == "pack"]
        if packs:
            hi_end = min(packs)
        else:
            hi_end = plan.runs[state.run_of[oid]].depart
        slot_end = max(
            (rv.end for rv in state.res_by_order.get(oid, ()) if rv.zone == item.zone),
            default=order.eta + settings.grace,
        )
        fresh_end = slot_end - item.max_hold
    return lo_start, hi_end, fresh_end


def shift_earlier(
    state: PlanState,
    kitchen_id: str,
    now: int,
    settings: Settings,
    only: set[str] | None = None,
) -> int:
    """Move not-started batches as early as their machine, their orders' earlier steps and
    freshness (``settings.keep_fresh`` past the end of slot time) allow, earliest first, so
    equipment time that would pass idle now is used and later time is left for orders yet to come.
    Packing, runs and slots do not move: nobody's hold or deposit changes. Returns how many moved."""
    ks = state.kitchens[kitchen_id]
    k = ks.view
    tasks = sorted((t for batches in ks.batches.values() for t in batches), key=lambda t: (t.start, t.id))
    moved = 0
    for t in tasks:
        if t.frozen or t.start <= now + 1 or (only is not None and not only.issuperset(t.units)):
            continue
        sku, step = t.sku or "", t.step or 1
        lo_start = now + 1
        lo_end = -(10**9)
        for oid in t.units:
            ls, _, fresh_end = _window(state, oid, sku, step, settings)
            lo_start = max(lo_start, ls)
            if step == len(k.menu[sku].steps):
                lo_end = max(lo_end, fresh_end + settings.keep_fresh)
        minutes = t.end - t.start
        lo = max(lo_start, lo_end - minutes)
        if lo >= t.start:
            continue
        usage = ks.usage[t.resource]
        with _lifted(usage, t.start, t.end):
            s = earliest_fit(usage, k.capacity[t.resource], minutes, lo, t.end, k.windows(lo, t.end))
        if s is None or s >= t.start:
            continue
        state.move_task(t, s)
        moved += 1
    return moved


def make_room(
    state: PlanState, kitchen_id: str, now: int, settings: Settings, only: set[str] | None = None
) -> tuple[int, int]:
    """Both passes, in order: (batches emptied by consolidation, batches moved earlier)."""
    merged = consolidate(state, kitchen_id, now, settings, only=only)
    return merged, shift_earlier(state, kitchen_id, now, settings, only=only)


# one unit of an order handed over from a started batch: (order, from, to)
Handover = tuple[str, Task, Task]


def admit_handing_over(
    state: PlanState, order: OrderReq, now: int, settings: Settings, new_id: Callable[[str], str]
) -> Insertion | Rejection | None:
    """Admit ``order`` with made units of its one-step items handed over to it (module
    docstring): first fit again, now also joining started batches for the units handed over in
    them. Units handed over that the order does not take go back. Returns the insertion to apply,
    else the new refusal, or None when nothing could be handed over (the state is then as it was)."""
    ks = state.kitchens[order.kitchen_id]
    moves = _hand_over(state, order, now, settings, new_id)
    if not moves:
        return None
    for _, src, _ in moves:
        ks.handed[src.id] = ks.handed.get(src.id, 0) + 1
    try:
        result = admit(state.world, state, order, now, settings, new_id)
    finally:
        ks.handed.clear()
    _give_back(state, moves, result.joins if isinstance(result, Insertion) else {})
    return result


def _hand_over(
    state: PlanState, order: OrderReq, now: int, settings: Settings, new_id: Callable[[str], str]
) -> list[Handover]:
    """Hand units of started batches over to ``order``, up to its quantity of each one-step item:
    the moves made (the state holds them)."""
    ks = state.kitchens[order.kitchen_id]
    k = ks.view
    moves: list[Handover] = []
    for sku, qty in sorted(order.items.items()):
        item = k.menu[sku]
        if len(item.steps) != 1:
            continue  # an item of several steps would be made again through all of them
        res, minutes, batch = item.steps[0]
        tasks = ks.batches.get((sku, 1), [])
        # started batches whose food would still be fresh for the order, the freshest first
        fresh_from = order.eta + settings.grace - item.max_hold
        lo = bisect.bisect_left(tasks, fresh_from, key=lambda t: t.end)
        made = [t for t in reversed(tasks[lo:]) if t.started(now) and t.end <= order.eta]
        need = qty
        for src in made:
            # the orders packed last first: theirs is the most time to make it again in
            windows = {oid: _window(state, oid, sku, 1, settings) for oid in src.units}
            for oid in sorted(windows, key=lambda o: (-windows[o][1], o)):
                lo_start, hi_end, fresh_end = windows[oid]
                while need and src.units.get(oid):
                    dst = _remake(tasks, batch, now, windows[oid])
                    if dst is None:
                        start = latest_fit(
                            ks.usage[res],
                            None,
                            k.capacity[res],
                            minutes,
                            max(now + 1, lo_start, fresh_end - minutes),
                            hi_end,
                            k.windows(now + 1, hi_end),
                        )
                        if start is None:
                            break
                        dst = Task(new_id("t"), k.id, res, "prep", sku, 1, start, start + minutes, {})
                        state._add_task(dst)
                    state.move_units(oid, src, dst)
                    moves.append((oid, src, dst))
                    need -= 1
            if not need:
                break
    return moves


def _remake(tasks: list[Task], batch: int, now: int, window: tuple[int, int, int]) -> Task | None:
    """The not-started batch of ``tasks`` (sorted by end) where a unit is made again: the fullest
    with room whose timing suits it (``_fullest_suiting``)."""
    from_fresh = tasks[bisect.bisect_left(tasks, window[2], key=lambda t: t.end) :]
    by_end = itertools.takewhile(lambda t: t.end <= window[1], from_fresh)
    waiting = [t for t in by_end if not t.started(now)]
    return _fullest_suiting(waiting, {t.id: batch - t.total_units for t in waiting}, 1, window)


def _give_back(state: PlanState, moves: list[Handover], taken: dict[str, int]) -> None:
    """Undo the hand-overs whose units the order did not take (``taken``: task id -> units it
    joined), the last first; a batch made for them goes when it is left empty and unjoined."""
    left: dict[str, int] = defaultdict(int)
    for _, src, _ in moves:
        left[src.id] += 1
    for tid, n in taken.items():
        left[tid] -= n
    for oid, src, dst in reversed(moves):
        if left[src.id] <= 0:
            continue
        left[src.id] -= 1
        state.move_units(oid, dst, src)
        if not dst.units and dst.id not in taken and dst.id in state.plan.tasks:
            state._drop_task(dst)


def settle_late(
    state: PlanState,
    kitchen_id: str,
    now: int,
    settings: Settings,
    new_id: Callable[[str], str],
    within: int = SETTLE_WITHIN,
    only: set[str] | None = None,
) -> int:
    """Shorten the hold of orders on runs leaving within ``within`` minutes: a run leaves later when
    every order it carries allows it (deposits by ``eta - margin``) and a courier is free then; an
    order that could arrive later than its run goes on a later run (one that has room, or a new one
    when a courier is free), its packing as late as that allows; and every such order's packing is
    done as late as its run's departure allows. An order moves to a later run only when its
    packing can move later with it (otherwise its hold would not change and the courier is better
    kept). Nothing started or frozen moves; with ``only``, only those orders' work. Returns how
    many orders got a later deposit or packing."""
    ks = state.kitchens[kitchen_id]
    k = ks.view
    plan = state.plan
    if k.pack is None:
        return 0  # without packing an order is ready when its items are: a later run gains nothing

    def pack_of(oid: str) -> Task | None:
        """The order's packing, if it and its slot time may move."""
        if only is not None and oid not in only:
            return None
        if any(rv.frozen or rv.start <= now for rv in state.res_by_order.get(oid, ())):
            return None
        for tid in state.tasks_of.get(oid, ()):
            t = plan.tasks[tid]
            if t.kind == "pack":
                return None if t.started(now) else t
        return None

    def latest_pack(t: Task, end_by: int) -> int | None:
        """The latest start of packing ``t`` ending by ``end_by``, if later than it is now."""
        usage, cap, windows = ks.usage[t.resource], k.capacity[t.resource], k.windows(t.start, end_by)
        with _lifted(usage, t.start, t.end):
            s = latest_fit(usage, None, cap, t.end - t.start, t.start, end_by, windows)
        return s if s is not None and s > t.start else None

    settled: set[str] = set()
    for station in sorted(ks.runs):
        travel = k.travel[station]
        runs, arrives = ks.runs[station], ks.arrives[station]
        leaving = runs[
            bisect.bisect_right(arrives, now + travel) : bisect.bisect_right(arrives, now + within + travel)
        ]
        for r in [r for r in leaving if not r.frozen]:
            packs = {oid: pack_of(oid) for oid in r.orders}
            # the whole run later, up to its earliest order's target
            if all(packs.values()):
                target = min(plan.orders[oid].eta - settings.margin for oid in r.orders)
                if target > r.arrive:
                    with _lifted(ks.couriers, r.depart, r.back):
                        a = next(ks.couriers.free_arrivals(target, r.arrive + 1, -1, travel), None)
                    if a is not None:
                        state.move_run(r, a)
                        settled.update(r.orders)
            # orders that could arrive later: onto a later run
            for oid in sorted(r.orders, key=lambda o: (-plan.orders[o].eta, o)):
                pack = packs[oid]
                target = plan.orders[oid].eta - settings.margin
                if pack is None or target <= r.arrive:
                    continue
                alone = len(r.orders) == 1  # then only joining a run helps (a shift was tried)
                joinable: dict[int, Run] = {}  # by arrival, the first in the station's order
                lo, hi = bisect.bisect_right(arrives, r.arrive), bisect.bisect_right(arrives, target)
                for x in runs[lo:hi]:
                    if not x.frozen and len(x.orders) < k.run_capacity:
                        joinable.setdefault(x.arrive, x)
                for a in range(target, r.arrive, -1):
                    join = joinable.get(a)
                    if join is None and (
                        alone or next(ks.couriers.free_arrivals(a, a, -1, travel), None) is None
                    ):
                        continue
                    s = latest_pack(pack, a - travel)
                    if s is None:
                        continue
                    if join is None:
                        join = Run(new_id("r"), kitchen_id, station, a - travel, a, a + travel, [])
                    state.move_to_run(oid, join)
                    state.move_task(pack, s)
                    settled.add(oid)
                    break
            # packing as late as the departure allows
            for oid in r.orders if r.id in plan.runs else ():
                pack = packs[oid]
                if pack is not None:
                    s = latest_pack(pack, r.depart)
                    if s is not None:
                        state.move_task(pack, s)
                        settled.add(oid)
    return len(settled)
