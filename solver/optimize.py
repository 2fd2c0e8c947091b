"""CP-SAT re-planning of one kitchen's work that has not started.

A partition is a set of *movable* orders of one kitchen: none of their tasks has started, their
run has not left, nothing of theirs is in a cabinet, and they share no task with an order that is
not movable. Everything else (other orders' tasks and runs, every other reservation in the
cabinets they use) is fixed context.

The model keeps each movable task's batch (its units) and re-times it; each order picks a courier
departure among the existing runs and a grid of candidate departures; parcels reserve slot time in
a cumulative per cabinet, zone and size level (S parcels fit M and L slots); physical slot labels
are given afterwards by interval colouring. For a *repair*, the new order's units may join open
batches (fixed or movable) or take new tasks.

Objective, in order of weight: deposit by ``eta - margin``; fewer courier runs; least hold time
(ready to eta). A result is committed only if ``check`` passes on the kitchen's plan and, for
background re-optimization, only if it is no worse than the plan it replaces.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from .admission import PlanState, id_factory
from .check import check
from .model import SIZE_RANK, KitchenView, OrderReq, Plan, Reservation, Run, Settings, Task, World, parcels_of

W_LATE = 1000
W_RUN = 10
W_HOLD = 1
W_TASK = 5
MAX_BATCH_CHOICES = 4  # other batches a bundle of units may move to
WAVE_STEP = 3


@dataclass
class ReoptReport:
    improved: bool
    status: str
    orders: int
    objective_before: int | None
    objective_after: int | None
    bound: float | None
    seconds: float


@dataclass
class _Solution:
    starts: dict[str, int]  # movable task id -> new start (present ones)
    dropped: set[str]  # movable tasks left without units
    units: dict[str, dict[str, int]]  # batch tasks whose units may change -> final units
    wave_of: dict[str, int]  # order id -> wave index
    waves: list[tuple[str, int, str | None]]  # (station, depart, fixed run id | "~" own run | None)
    new_tasks: list[Task]  # repair: the new order's own tasks
    objective: int
    bound: float
    status: str


def _unit_flows(
    bundles: list[tuple[str, str, int, int, str | None]], plan: Plan, now: list[int], nxt: list[int]
) -> list[tuple[int, int]]:
    """Which bundle of step i feeds which bundle of step i+1, as the current plan has it: the
    units done first go on first. Each pair must stay in order wherever the bundles move."""
    a = sorted(now, key=lambda b: plan.tasks[bundles[b][4] or ""].end)
    c = sorted(nxt, key=lambda b: plan.tasks[bundles[b][4] or ""].start)
    left_a = [bundles[b][3] for b in a]
    left_c = [bundles[b][3] for b in c]
    pairs = []
    i = j = 0
    while i < len(a) and j < len(c):
        pairs.append((a[i], c[j]))
        n = min(left_a[i], left_c[j])
        left_a[i] -= n
        left_c[j] -= n
        if left_a[i] == 0:
            i += 1
        if left_c[j] == 0:
            j += 1
    return pairs


def _window(k: KitchenView, minute: int) -> tuple[int, int]:
    for w in k.windows(minute - 1, minute + 1):
        if w[0] <= minute < w[1]:
            return w
    return (minute, minute)


class Optimizer:
    """``new_id`` names the runs and tasks a re-plan or repair makes. The default numbers them per
    optimizer, which is enough for one plan held in memory (the simulator's); a service that makes
    an optimizer per re-plan and stores every kitchen's plan in one database must pass ids unique
    across all of them.

    ``deterministic``: the ``seconds`` of a re-plan or repair are CP-SAT's deterministic time (work
    counted, not measured) with one worker, so the same plan and order always give the same result,
    however busy the machine is (the simulator's replays); by default they are wall-clock seconds
    (the service's, which must answer in time)."""

    def __init__(
        self,
        world: World,
        settings: Settings,
        seed: int = 0,
        workers: int = 2,
        new_id: Callable[[str], str] | None = None,
        deterministic: bool = False,
    ) -> None:
        self.world = world
        self.settings = settings
        self.seed = seed
        self.workers = workers
        self.deterministic = deterministic
        # constraints of the CP-SAT models built so far: a measure of the work done that does not
        # depend on the machine (the simulator budgets its repairs with it)
        self.model_constraints = 0
        self._new_id = new_id or id_factory("x")

    # ------------------------------------------------------------------ partition

    def movable(self, state: PlanState, kid: str, now: int, lo: int, hi: int, limit: int) -> list[str]:
        plan = state.plan
        cand = []
        for o in plan.orders.values():
            if o.kitchen_id != kid or not lo <= o.eta <= hi:
                continue
            rid = state.run_of.get(o.id)
            if rid is None or plan.runs[rid].depart <= now or plan.runs[rid].frozen:
                continue
            if any(plan.tasks[t].started(now) for t in state.tasks_of[o.id]):
                continue
            if any(rv.start <= now or rv.frozen for rv in state.res_by_order[o.id]):
                continue
            cand.append(o)
        cand.sort(key=lambda o: (abs(o.eta - (lo + hi) // 2), o.id))
        return sorted((o.id for o in cand[:limit]), key=lambda x: (plan.orders[x].eta, x))

    # ------------------------------------------------------------------ public

    def reoptimize(
        self, state: PlanState, kid: str, now: int, seconds: float, horizon: int = 150, limit: int = 300
    ) -> ReoptReport:
        t0 = time.perf_counter()
        ids = self.movable(state, kid, now, now, now + horizon, limit)
        if len(ids) < 2:
            return ReoptReport(False, "nothing to move", len(ids), None, None, None, time.perf_counter() - t0)
        before = self.objective_of(state, ids, now)
        # ``seconds`` bounds the whole re-plan: 15% is kept for reading the solution out of CP-SAT,
        # checking and committing it (on 500 orders: 0.08 s, then 0.05-0.12 s; a tenth was not
        # always enough)
        budget = seconds if self.deterministic else 0.85 * seconds - (time.perf_counter() - t0)
        sol = self._solve(state, kid, now, ids, None, budget)
        if sol is None:
            return ReoptReport(False, "no solution", len(ids), before, None, None, time.perf_counter() - t0)
        if sol.objective >= before:
            return ReoptReport(
                False, sol.status, len(ids), before, sol.objective, sol.bound, time.perf_counter() - t0
            )
        ok = self._commit(state, kid, now, ids, None, sol)
        return ReoptReport(
            ok, sol.status, len(ids), before, sol.objective, sol.bound, time.perf_counter() - t0
        )

    def repair(
        self, state: PlanState, order: OrderReq, now: int, seconds: float, window: int = 45, limit: int = 30
    ) -> bool:
        """Make room for ``order`` by moving not-started work; True if it is now in the plan.
        Feasibility is all that is asked: the first solution found is taken."""
        kid = order.kitchen_id
        ids = self.movable(state, kid, now, order.eta - window, order.eta + window, limit)
        sol = self._solve(state, kid, now, ids, order, seconds, first_solution=True, wave_span=24)
        if sol is None:
            return False
        return self._commit(state, kid, now, ids, order, sol)

    # ------------------------------------------------------------------ objective of the plan as is

    def objective_of(self, state: PlanState, ids: list[str], now: int) -> int:
        """The objective the model minimizes, evaluated on the plan as it stands."""
        plan = state.plan
        k_runs = set()
        total = 0
        for oid in ids:
            o = plan.orders[oid]
            run = plan.runs[state.run_of[oid]]
            k_runs.add(run.id)
            total += W_LATE * max(0, run.arrive - (o.eta - self.settings.margin))
            ready = max(plan.tasks[t].end for t in state.tasks_of[oid] if self._is_final(plan, t))
            total += W_HOLD * (o.eta - ready)
        movable = set(ids)
        for rid in k_runs:
            if all(x in movable for x in plan.runs[rid].orders):
                total += W_RUN
        tasks = {t for oid in ids for t in state.tasks_of[oid]}
        for tid in tasks:
            t = plan.tasks[tid]
            if t.kind == "prep" and t.start > now and all(o in movable for o in t.units):
                total += W_TASK
        return total

    def _is_final(self, plan: Plan, tid: str) -> bool:
        t = plan.tasks[tid]
        if t.kind == "pack":
            return True
        k = self.world.kitchens[t.kitchen_id]
        return k.pack is None and t.sku is not None and t.step == len(k.menu[t.sku].steps)

    # ------------------------------------------------------------------ model

    def _solve(
        self,
        state: PlanState,
        kid: str,
        now: int,
        ids: list[str],
        extra: OrderReq | None,
        seconds: float,
        first_solution: bool = False,
        wave_span: int = 60,
    ) -> _Solution | None:
        t_start = time.perf_counter()
        world, st = self.world, self.settings
        k = world.kitchens[kid]
        plan = state.plan
        base = now
        movable = set(ids)
        m = cp_model.CpModel()
        orders = [plan.orders[i] for i in ids]
        if extra is not None:
            orders.append(extra)
        # every variable of the model lies in [lo_h, hi_h): no work, run or slot time of these orders
        # begins before the earliest departure any of them may take (or before where their work is
        # now, which comes before their runs), none ends after eta plus the grace or the way back;
        # fixed work wholly outside that cannot meet them and is left out of the model
        lo_h = max(
            now + 1,
            min(
                [o.eta - k.travel[o.station_id] - st.search_minutes for o in orders]
                + [plan.tasks[t].start for oid in ids for t in state.tasks_of[oid]]
            ),
        )
        hi_h = max(o.eta + max(st.grace, k.travel[o.station_id]) for o in orders)

        # ---- kitchen. A bundle is the units of one order in one task; it may move to another
        # batch of the same sku and step (or, for the new order, to a new task). Tasks re-time;
        # a movable task left without units disappears, which is how batches merge.
        ks = state.kitchens[kid]
        intervals: dict[str, list[Any]] = defaultdict(list)
        start: dict[str, Any] = {}  # task id -> start var (movable) or constant (fixed)
        presence: dict[str, Any] = {}  # movable prep task -> literal
        stay: dict[str, int] = {}  # candidate task -> units of orders that stay in it
        pool: dict[tuple[str, int], list[Task]] = defaultdict(list)
        for (sku, step), lst in ks.batches.items():
            for t in lst:
                if t.started(now):
                    continue
                pool[(sku, step)].append(t)
                stay[t.id] = sum(u for o, u in t.units.items() if o not in movable)
        movable_pack: dict[str, Task] = {}
        for oid in ids:
            for tid in state.tasks_of[oid]:
                t = plan.tasks[tid]
                if t.kind == "pack":
                    movable_pack[oid] = t

        def movable_var(t: Task, optional: bool) -> Any:
            dur = t.end - t.start
            w0, w1 = _window(k, t.start)
            lo, hi = max(lo_h, w0), min(w1, hi_h) - dur
            if lo > hi:
                return None
            sv = m.new_int_var(lo - base, hi - base, f"s_{t.id}")
            m.add_hint(sv, min(max(t.start, lo), hi) - base)
            start[t.id] = sv
            if optional:
                lit = m.new_bool_var(f"p_{t.id}")
                m.add_hint(lit, 1)
                presence[t.id] = lit
                intervals[t.resource].append(m.new_optional_fixed_size_interval_var(sv, dur, lit, ""))
            else:
                intervals[t.resource].append(m.new_fixed_size_interval_var(sv, dur, ""))
            return sv

        for lst in pool.values():
            for t in lst:
                if stay[t.id] == 0 and any(o in movable for o in t.units):
                    if movable_var(t, optional=True) is None:
                        return None
                else:
                    start[t.id] = t.start - base
        for t in movable_pack.values():
            if movable_var(t, optional=False) is None:
                return None
        for t in plan.tasks.values():
            if t.kitchen_id != kid or (t.id in start and not isinstance(start[t.id], int)):
                continue
            if t.end <= lo_h or t.start >= hi_h:
                continue
            s0 = max(t.start, now)
            intervals[t.resource].append(m.new_fixed_size_interval_var(s0 - base, t.end - s0, ""))

        # bundles: (order, sku, step, units, current task or None, candidates)
        bundles: list[tuple[str, str, int, int, str | None]] = []
        for oid in ids:
            for tid in sorted(state.tasks_of[oid]):
                t = plan.tasks[tid]
                if t.kind == "prep" and t.sku is not None and t.step is not None:
                    bundles.append((oid, t.sku, t.step, t.units[oid], tid))
        new_tasks: list[tuple[Task, Any, Any]] = []  # the new order's own: (task, presence, start)
        flows: list[tuple[int, int]] = []  # (bundle, bundle of the next step its units go on to)
        if extra is not None:
            for sku, qty in extra.items.items():
                item = k.menu[sku]
                bsize = min(b for _, _, b in item.steps)
                for i in range(0, qty, bsize):
                    for step in range(1, len(item.steps) + 1):
                        if step > 1:  # the same units go on to the next step
                            flows.append((len(bundles) - 1, len(bundles)))
                        bundles.append((extra.id, sku, step, min(bsize, qty - i), None))
        y: dict[tuple[int, str], Any] = {}
        v: dict[int, Any] = {}
        by_order: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        for bi, (oid, sku, step, units, cur) in enumerate(bundles):
            res, dur, batch = k.menu[sku].steps[step - 1]
            anchor = plan.tasks[cur].start if cur else (extra.eta if extra else now)
            opts = []
            near = sorted(
                (t for t in pool.get((sku, step), ()) if t.id == cur or units <= batch - stay[t.id]),
                key=lambda t: (t.id != cur, abs(t.start - anchor)),
            )
            for t in near[: 1 + MAX_BATCH_CHOICES]:
                if t.id != cur and abs(t.start - anchor) > 45:
                    continue
                lit = m.new_bool_var("")
                y[(bi, t.id)] = lit
                opts.append((lit, start[t.id]))
                m.add_hint(lit, t.id == cur)
            vb = m.new_int_var(-(10**6), 10**6, "")
            if cur is not None:
                m.add_hint(vb, plan.tasks[cur].start - base)
            if cur is None:
                # the new order may also take a task of its own
                w0, w1 = _window(k, extra.eta - k.travel[extra.station_id]) if extra else (now, now)
                lo, hi = max(lo_h, w0), min(w1 - dur, extra.eta if extra else now)
                if lo > hi:
                    return None
                own = m.new_int_var(lo - base, hi - base, "")
                lit = m.new_bool_var("")
                intervals[res].append(m.new_optional_fixed_size_interval_var(own, dur, lit, ""))
                task = Task(self._new_id("t"), kid, res, "prep", sku, step, 0, 0, {oid: units})
                new_tasks.append((task, lit, own))
                opts.append((lit, own))
            if not opts:
                return None
            m.add_exactly_one(lit for lit, _ in opts)
            for lit, sv in opts:
                m.add(vb == sv).only_enforce_if(lit)
            v[bi] = vb
            by_order[(oid, sku, step)].append(bi)
        chosen_by: dict[str, list[int]] = {}  # task -> the bundles that may go in it
        for bi, tid in y:
            chosen_by.setdefault(tid, []).append(bi)
        for tid, lit in presence.items():
            users = [y[(bi, tid)] for bi in chosen_by.get(tid, ())]
            for u in users:
                m.add_implication(u, lit)
            m.add(sum(users) >= 1).only_enforce_if(lit)
        for (sku, step), lst in pool.items():
            batch = k.menu[sku].steps[step - 1][2]
            for t in lst:
                users = [(bundles[bi][3], y[(bi, t.id)]) for bi in chosen_by.get(t.id, ())]
                if users:
                    m.add(sum(u * lit for u, lit in users) <= batch - stay[t.id])

        # precedence, freshness and readiness
        ready: dict[str, Any] = {}
        for o in orders:
            finals = []
            for sku in o.items:
                item = k.menu[sku]
                n = len(item.steps)
                if o.id in movable:
                    for i in range(1, n):
                        flows.extend(
                            _unit_flows(bundles, plan, by_order[(o.id, sku, i)], by_order[(o.id, sku, i + 1)])
                        )
                for b1 in by_order[(o.id, sku, n)]:
                    m.add(v[b1] + item.steps[n - 1][1] >= o.eta + st.grace - item.max_hold - base)
                    finals.append(v[b1] + item.steps[n - 1][1])
            if k.pack is not None:
                pres, pdur = k.pack
                if o.id in movable_pack:
                    pv = start[movable_pack[o.id].id]
                else:
                    w0, w1 = _window(k, o.eta - k.travel[o.station_id])
                    lo, hi = max(lo_h, w0), min(w1 - pdur, o.eta)
                    if lo > hi:
                        return None
                    pv = m.new_int_var(lo - base, hi - base, "")
                    intervals[pres].append(m.new_fixed_size_interval_var(pv, pdur, ""))
                    pack = Task(self._new_id("t"), kid, pres, "pack", None, None, 0, 0, {o.id: 1})
                    new_tasks.append((pack, None, pv))
                for f in finals:
                    m.add(pv >= f)
                ready[o.id] = pv + pdur
            else:
                rmax = m.new_int_var(-(10**6), 10**6, "")
                m.add_max_equality(rmax, finals)
                ready[o.id] = rmax
        for b1, b2 in flows:
            _, sku, step, _, _ = bundles[b1]
            m.add(v[b2] >= v[b1] + k.menu[sku].steps[step - 1][1])
        for res, ivs in intervals.items():
            m.add_cumulative(ivs, [1] * len(ivs), k.capacity[res])

        # waves: fixed runs (carrying orders that stay) and candidate departures
        fixed_runs: dict[str, Run] = {}
        fixed_load: dict[str, int] = {}
        courier_ivs = []
        for r in plan.runs.values():
            if r.kitchen_id != kid or r.back <= lo_h or r.depart >= hi_h:
                continue
            staying = [o for o in r.orders if o not in movable]
            if not staying:
                continue
            fixed_runs[r.id] = r
            fixed_load[r.id] = len(staying)
            s0 = max(r.depart, now)
            courier_ivs.append(m.new_fixed_size_interval_var(s0 - base, r.back - s0, ""))
        waves: list[tuple[str, int, str | None]] = []
        wave_index: dict[tuple[str, int, str | None], int] = {}

        def wave(station: str, dep: int, rid: str | None) -> int:
            key = (station, dep, rid)
            if key not in wave_index:
                wave_index[key] = len(waves)
                waves.append(key)
            return wave_index[key]

        x: dict[tuple[str, int], Any] = {}
        per_order_waves: dict[str, list[int]] = {}
        for o in orders:
            tr = k.travel[o.station_id]
            latest = o.eta - tr
            earliest = max(now + 1, o.eta - tr - st.search_minutes)
            cand = set()
            for rid, r in fixed_runs.items():
                if r.station_id == o.station_id and earliest <= r.depart <= latest and r.depart > now:
                    if fixed_load[rid] < k.run_capacity:
                        cand.add(wave(o.station_id, r.depart, rid))
            g = latest - latest % WAVE_STEP
            while g >= earliest and latest - g <= wave_span:
                cand.add(wave(o.station_id, g, None))
                g -= WAVE_STEP
            for d in (o.eta - st.margin - tr, latest):
                if d >= earliest:
                    cand.add(wave(o.station_id, d, None))
            cur = state.run_of.get(o.id)
            if cur is not None and o.id in movable:
                r = plan.runs[cur]
                if cur in fixed_runs:
                    cand.add(wave(o.station_id, r.depart, cur))
                elif r.depart >= earliest:
                    # its own run, as a wave of its own: runs leaving at the same minute stay apart
                    cand.add(wave(o.station_id, r.depart, "~" + cur))
            if not cand:
                return None
            per_order_waves[o.id] = sorted(cand)
            for w in cand:
                x[(o.id, w)] = m.new_bool_var("")
            m.add_exactly_one(x[(o.id, w)] for w in cand)
        hinted: set[int] = set()  # waves the current plan uses
        for oid in ids:
            cur = state.run_of[oid]
            r = plan.runs[cur]
            key = (plan.orders[oid].station_id, r.depart, cur if cur in fixed_runs else "~" + cur)
            if key in wave_index:
                hinted.add(wave_index[key])
            for w in per_order_waves[oid]:
                m.add_hint(x[(oid, w)], waves[w] == key)
        used: dict[int, Any] = {}
        members: dict[int, list[Any]] = defaultdict(list)
        for (oid, w), lit in x.items():
            members[w].append(lit)
            m.add(ready[oid] <= waves[w][1] - base).only_enforce_if(lit)
        for w, lits in members.items():
            station, dep, wrid = waves[w]
            if wrid is not None and not wrid.startswith("~"):
                m.add(sum(lits) <= k.run_capacity - fixed_load[wrid])
                continue
            u = m.new_bool_var(f"used_{w}")
            m.add_hint(u, w in hinted)
            used[w] = u
            for lit in lits:
                m.add_implication(lit, u)
            m.add(sum(lits) <= k.run_capacity)
            m.add(sum(lits) >= 1).only_enforce_if(u)
            tr = k.travel[station]
            courier_ivs.append(m.new_optional_fixed_size_interval_var(dep - base, 2 * tr, u, ""))
        if courier_ivs:
            m.add_cumulative(courier_ivs, [1] * len(courier_ivs), k.couriers)

        # deposits and cabinets
        deposit: dict[str, Any] = {}
        for o in orders:
            tr = k.travel[o.station_id]
            ows = per_order_waves[o.id]
            lo = min(waves[w][1] for w in ows) + tr - base
            hi = max(waves[w][1] for w in ows) + tr - base
            dv = m.new_int_var(lo, hi, f"dep_{o.id}")
            m.add(dv == sum((waves[w][1] + tr - base) * x[(o.id, w)] for w in ows))
            if o.id in movable:
                m.add_hint(dv, plan.runs[state.run_of[o.id]].arrive - base)
            deposit[o.id] = dv
        cabinet_of: dict[str, str] = {}
        for o in orders:
            if o.id in movable:
                cabinet_of[o.id] = state.res_by_order[o.id][0].cabinet_id
            else:
                cabinet_of[o.id] = self._cabinet_for(o, k)
        groups: dict[tuple[str, str], list[tuple[Any, int]]] = defaultdict(list)  # -> (interval, rank)
        for o in orders:
            end = o.eta + st.grace - base
            for zone, size in parcels_of(o, k).items():
                dv = deposit[o.id]
                ln = m.new_int_var(0, 10**6, "")
                m.add(ln == end - dv)
                if o.id in movable:
                    m.add_hint(ln, end - (plan.runs[state.run_of[o.id]].arrive - base))
                iv = m.new_interval_var(dv, ln, end, "")
                groups[(cabinet_of[o.id], zone)].append((iv, SIZE_RANK[size]))
        held: dict[tuple[str, str], list[Reservation]] = defaultdict(list)  # slot time that stays
        for rv in plan.reservations:
            if (rv.cabinet_id, rv.zone) in groups and rv.order_id not in movable and rv.end > lo_h:
                if rv.start >= hi_h:
                    continue
                held[(rv.cabinet_id, rv.zone)].append(rv)
        for (cab, zone), members_cz in groups.items():
            for rv in held[(cab, zone)]:
                s0 = max(rv.start, now)
                members_cz.append(
                    (m.new_fixed_size_interval_var(s0 - base, rv.end - s0, ""), SIZE_RANK[rv.size])
                )
            slots = [sl for sl in world.slots.get(cab, []) if sl.zone == zone]
            for level in range(3):
                cap = sum(1 for sl in slots if SIZE_RANK[sl.size] >= level)
                ivs = [iv for iv, rank in members_cz if rank >= level]
                if not ivs:
                    continue
                if cap == 0:
                    return None
                m.add_cumulative(ivs, [1] * len(ivs), cap)

        # objective and hints
        terms = []
        for o in orders:
            late = m.new_int_var(0, 10**5, "")
            if o.id in movable:
                m.add_hint(late, max(0, plan.runs[state.run_of[o.id]].arrive - (o.eta - st.margin)))
            m.add(late >= deposit[o.id] - (o.eta - st.margin - base))
            if first_solution:
                # a repair takes the first plan it finds: it may not make anyone later than now
                cur_arrive = plan.runs[state.run_of[o.id]].arrive if o.id in movable else o.eta - st.margin
                m.add(deposit[o.id] <= max(cur_arrive, o.eta - st.margin) - base)
            terms.append(W_LATE * late)
            terms.append(W_HOLD * (o.eta - base - ready[o.id]))
        terms.extend(W_RUN * u for u in used.values())
        terms.extend(W_TASK * lit for lit in presence.values())
        terms.extend(W_TASK * lit for _, lit, _ in new_tasks if lit is not None)
        m.minimize(sum(terms))
        self.model_constraints += len(m.proto.constraints)

        solver = cp_model.CpSolver()
        if self.deterministic:
            solver.parameters.max_deterministic_time = seconds
        else:
            # the time limit is for the whole call: what building the model took is taken off
            solver.parameters.max_time_in_seconds = max(0.05, seconds - (time.perf_counter() - t_start))
        solver.parameters.random_seed = self.seed
        # CP-SAT would take over Ctrl-C while it solves and leave SIGINT's default action behind
        # (the process dies at once: no shutdown, the embedded PostgreSQL left running)
        solver.parameters.catch_sigint_signal = False
        if first_solution:
            # feasibility in a hurry: one worker without presolve finds it fastest here
            solver.parameters.num_workers = 1
            solver.parameters.cp_model_presolve = False
            solver.parameters.stop_after_first_solution = True
        else:
            solver.parameters.num_workers = 1 if self.deterministic else self.workers
            # presolve of a large partition can eat the whole time limit
            solver.parameters.cp_model_presolve = len(ids) <= 150
        status = solver.solve(m)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        starts = {
            tid: solver.value(sv) + base
            for tid, sv in start.items()
            if not isinstance(sv, int) and (tid not in presence or solver.boolean_value(presence[tid]))
        }
        dropped = {tid for tid, lit in presence.items() if not solver.boolean_value(lit)}
        final_units: dict[str, dict[str, int]] = {}
        for lst in pool.values():
            for t in lst:
                if t.id in chosen_by or any(o in movable for o in t.units):
                    final_units[t.id] = {o: u for o, u in t.units.items() if o not in movable}
        for (bi, tid), lit in y.items():
            if solver.boolean_value(lit):
                oid, _, _, n, _ = bundles[bi]
                final_units[tid][oid] = final_units[tid].get(oid, 0) + n
        wave_of = {}
        for o in orders:
            for w in per_order_waves[o.id]:
                if solver.boolean_value(x[(o.id, w)]):
                    wave_of[o.id] = w
        made: list[Task] = []
        for task, lit, sv in new_tasks:
            if lit is None or solver.boolean_value(lit):
                st0 = solver.value(sv) + base
                dur = (
                    k.pack[1]
                    if task.kind == "pack" and k.pack
                    else k.menu[task.sku or ""].steps[(task.step or 1) - 1][1]
                )
                task.start, task.end = st0, st0 + dur
                made.append(task)
        return _Solution(
            starts,
            dropped,
            final_units,
            wave_of,
            waves,
            made,
            int(solver.objective_value),
            float(solver.best_objective_bound),
            solver.status_name(status),
        )

    def _cabinet_for(self, o: OrderReq, k: KitchenView) -> str:
        zones = set(parcels_of(o, k))
        cabs = self.world.station_cabinets[o.station_id]
        for c in cabs:
            if zones <= {s.zone for s in self.world.slots.get(c, [])}:
                return c
        return cabs[0]

    # ------------------------------------------------------------------ commit

    def _commit(
        self,
        state: PlanState,
        kid: str,
        now: int,
        ids: list[str],
        extra: OrderReq | None,
        sol: _Solution,
    ) -> bool:
        world, st = self.world, self.settings
        k = world.kitchens[kid]
        plan = state.plan
        movable = set(ids)
        orders = {oid: plan.orders[oid] for oid in ids}
        if extra is not None:
            orders[extra.id] = extra
        # tasks in their new form: re-timed and re-filled copies; dropped ones disappear
        new_tasks: dict[str, Task] = {}
        for tid in set(sol.starts) | set(sol.units):
            if tid in sol.dropped:
                continue
            t = plan.tasks[tid]
            s0 = sol.starts.get(tid, t.start)
            units = sol.units.get(tid, t.units)
            new_tasks[tid] = Task(
                t.id, t.kitchen_id, t.resource, t.kind, t.sku, t.step, s0, s0 + (t.end - t.start), dict(units)
            )
        for t in sol.new_tasks:
            new_tasks[t.id] = t
        # runs: waves of fixed runs keep their id; new waves reuse ids of the runs they replace
        old_runs = {state.run_of[oid] for oid in ids}
        reusable = sorted(
            (plan.runs[r].depart, r) for r in old_runs if all(o in movable for o in plan.runs[r].orders)
        )
        reuse_by_dep: dict[tuple[str, int], str] = {}
        for dep, rid in reusable:
            reuse_by_dep.setdefault((plan.runs[rid].station_id, dep), rid)
        run_orders: dict[int, list[str]] = defaultdict(list)
        for oid, w in sol.wave_of.items():
            run_orders[w].append(oid)
        new_runs: dict[str, Run] = {}
        joined_fixed: dict[str, list[str]] = defaultdict(list)
        used_ids: set[str] = set()
        for w, oids in sorted(run_orders.items()):
            station, dep, wrid = sol.waves[w]
            if wrid is not None and not wrid.startswith("~"):
                joined_fixed[wrid].extend(sorted(oids))
                continue
            tr = k.travel[station]
            reuse = wrid[1:] if wrid is not None else reuse_by_dep.get((station, dep))
            if reuse is None or reuse in used_ids:
                reuse = self._new_id("r")
            used_ids.add(reuse)
            new_runs[reuse] = Run(reuse, kid, station, dep, dep + tr, dep + 2 * tr, sorted(oids))
        arrive = {}
        for oid, w in sol.wave_of.items():
            station, dep, _ = sol.waves[w]
            arrive[oid] = dep + k.travel[station]
        # reservations: colour the slots again for the parcels that moved
        reservations = self._colour(state, orders, arrive, movable)
        if reservations is None:
            return False

        # candidate kitchen plan for the checker, before anything changes
        cand = Plan()
        for o in plan.orders.values():
            if o.kitchen_id == kid:
                cand.orders[o.id] = o
        if extra is not None:
            extra.cabinet_id = reservations[extra.id][0].cabinet_id
            cand.orders[extra.id] = extra
        for t in plan.tasks.values():
            if t.kitchen_id == kid and t.id not in sol.dropped:
                cand.tasks[t.id] = t
        for t in new_tasks.values():
            cand.tasks[t.id] = t
        for r in plan.runs.values():
            if r.kitchen_id != kid:
                continue
            keep = [o for o in r.orders if o not in movable]
            if keep:  # runs made only of moved orders are replaced by new_runs
                cand.runs[r.id] = Run(
                    r.id,
                    r.kitchen_id,
                    r.station_id,
                    r.depart,
                    r.arrive,
                    r.back,
                    keep + joined_fixed.get(r.id, []),
                    r.frozen,
                )
        for rid, r in new_runs.items():
            cand.runs[rid] = r
        cabs = {rv.cabinet_id for lst in reservations.values() for rv in lst}
        cabs |= {c for o in cand.orders.values() for c in [o.cabinet_id] if c}
        for rv in plan.reservations:
            if rv.cabinet_id in cabs and rv.order_id not in reservations:
                cand.reservations.append(rv)
        for lst in reservations.values():
            cand.reservations.extend(lst)
        # old runs of moved orders that are now empty disappear; tasks left without units too
        cand.tasks = {tid: t for tid, t in cand.tasks.items() if t.units}
        violations = check(world, cand, st, partial=True)
        if violations:
            return False

        # apply
        state.remove(*ids)
        for tid, t in new_tasks.items():
            old = plan.tasks.get(tid)
            if old is None:
                state._add_task(t)
                continue
            state.set_units(old, t.units)  # a task that stayed (shared with orders that stay)
        for oid in orders:
            state.plan.orders[oid] = orders[oid]
        for rid, extra_orders in joined_fixed.items():
            r = plan.runs[rid]
            for oid in extra_orders:
                r.orders.append(oid)
                state.run_of[oid] = rid
        for r in new_runs.values():
            state._add_run(r)
        for lst in reservations.values():
            for rv in lst:
                state._add_reservation(rv)
        return True

    def _colour(
        self,
        state: PlanState,
        orders: dict[str, OrderReq],
        arrive: dict[str, int],
        movable: set[str],
    ) -> dict[str, list[Reservation]] | None:
        """Physical slots for the parcels of ``orders``: keep the old label where it is free."""
        st = self.settings
        plan = state.plan
        out: dict[str, list[Reservation]] = defaultdict(list)
        busy: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        for rv in plan.reservations:
            if rv.order_id not in movable and rv.order_id not in orders:
                busy[(rv.cabinet_id, rv.slot)].append((rv.start, rv.end))
        old_label: dict[tuple[str, str], tuple[str, str]] = {}
        for oid in movable:
            for rv in state.res_by_order.get(oid, []):
                old_label[(oid, rv.zone)] = (rv.cabinet_id, rv.slot)
        todo = []
        for oid, o in orders.items():
            k = self.world.kitchens[o.kitchen_id]
            for zone, size in parcels_of(o, k).items():
                prev = old_label.get((oid, zone))
                cab = prev[0] if prev else self._cabinet_for(o, k)
                todo.append((arrive[oid], o.eta + st.grace, oid, zone, size, cab, prev[1] if prev else None))
        todo.sort(key=lambda x: (x[0], x[1], x[2], x[3]))
        for s, e, oid, zone, size, cab, prev_label in todo:

            def free(label: str, cab: str = cab, s: int = s, e: int = e) -> bool:
                return all(b <= s or e <= a for a, b in busy[(cab, label)])

            label = None
            if prev_label is not None and free(prev_label):
                label = prev_label
            else:
                fits = [
                    x
                    for x in self.world.slots.get(cab, [])
                    if x.zone == zone and SIZE_RANK[x.size] >= SIZE_RANK[size] and free(x.label)
                ]
                if fits:
                    label = min(fits, key=lambda x: (SIZE_RANK[x.size], x.label)).label
            if label is None:
                return None
            busy[(cab, label)].append((s, e))
            out[oid].append(Reservation(oid, cab, zone, size, label, s, e))
        return out
