"""Replay a morning of orders on a virtual clock through the same admission and re-planning code
the service runs. Pure: orders come in as data, results go out as data; files are the caller's.

Policies:

* ``greedy``: first-fit insertion only, never re-planned, deposits as late as it can (at eta);
* ``optimized``: the same admission with a deposit margin; when first fit finds no kitchen room,
  batch consolidation and early work, then made food handed over (``solver.consolidate``), and
  then a bounded CP-SAT repair;
  every few virtual minutes, per kitchen, the same two passes followed by CP-SAT re-optimization;
  and every other virtual minute the runs about to leave are settled (``settle_late``).

CP-SAT's limits are work, not seconds, unless ``SimConfig.deterministic`` is off: the same morning
gives the same plan and figures whatever else the machine is doing.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .admission import Insertion, PlanState, Rejection, admit, id_factory, validate
from .check import Violation, check
from .consolidate import admit_handing_over, make_room, settle_late
from .model import SIZE_RANK, OrderReq, Plan, Settings, Task, World


@dataclass
class SimOrder:
    id: str
    placed_at: int
    station_id: str
    kitchen_id: str
    eta: int
    items: dict[str, int]
    arrival: int | None
    invalid: str | None = None  # a reason when the row itself was unusable


@dataclass
class Outcome:
    order: SimOrder
    status: str  # confirmed | rejected
    reason: str = ""
    cabinet_id: str = ""
    ready_at: int | None = None
    deposited_at: int | None = None
    picked_up_at: int | None = None
    expired: bool = False
    wait_minutes: int | None = None
    hold_minutes: int | None = None


@dataclass
class SlotUse:
    cabinet_id: str
    slot: str  # label or "overflow"
    zone: str
    size: str
    order_id: str
    start: int
    end: int
    how: str  # pickup | expired


@dataclass
class SimConfig:
    policy: str = "optimized"
    settings: Settings = field(default_factory=Settings)
    reopt_every: int = 20  # virtual minutes between background re-optimizations of a kitchen
    # deterministic: CP-SAT's limits count work, with one worker (``Optimizer``), and the repair
    # budget counts the constraints of the repairs' models, so a morning replays to the same plan
    # and figures however busy the machine is; otherwise the limits and the repair budget are
    # wall-clock seconds, as in the service
    deterministic: bool = True
    reopt_work: float = 0.05  # CP-SAT's deterministic time limit of one re-optimization
    repair_work: float = 0.02  # of one repair (it stops at the first fit)
    # repairs stop once their models have held this many constraints per order in the file; a
    # repair's has about 2,000 on a 1k morning, 6,700 on a 10k one of 3 kitchens, and takes about
    # 0.03 and 0.17 s: the budget keeps the repairs of a 10k morning, however tight, to about 50 s
    repair_constraints_per_order: int = 200
    reopt_seconds: float = 0.3  # not deterministic: CP-SAT time limit of one re-optimization
    repair_seconds: float = 0.3  # of one repair
    repair_budget_per_order: float = 0.004  # total repair wall time: this much per order in the file
    repair_budget_seconds: float | None = None  # or this much in all
    settle_every: int = 2  # virtual minutes between settling the runs about to leave (0: never)
    hand_over: bool = True  # a refused order may take food made for a later one (``admit_handing_over``)
    seed: int = 0


@dataclass
class SimResult:
    plan: Plan
    outcomes: list[Outcome]
    slots: list[SlotUse]
    violations: list[Violation]
    stats: dict[str, Any]


def _effective_settings(cfg: SimConfig) -> Settings:
    if cfg.policy == "greedy":
        # the baseline as first measured: runs joined up to 8 minutes early, no margin
        return replace(cfg.settings, margin=0, join_window=8)
    return cfg.settings


def simulate(
    world: World,
    orders: list[SimOrder],
    cfg: SimConfig,
    progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    if cfg.policy not in ("greedy", "optimized"):
        raise ValueError(f"unknown policy {cfg.policy!r}; greedy or optimized")
    t0 = time.perf_counter()
    settings = _effective_settings(cfg)
    state = PlanState(world)
    new_id = id_factory()
    outcomes: dict[str, Outcome] = {}
    stats: dict[str, Any] = defaultdict(float)
    queue = sorted(orders, key=lambda o: o.placed_at)
    next_reopt = queue[0].placed_at if queue else 0
    # repairs go on while what they spent is under the budget: their models' constraints when
    # deterministic, else seconds
    if cfg.deterministic:
        budget: float = cfg.repair_constraints_per_order * len(orders)
    elif cfg.repair_budget_seconds is not None:
        budget = cfg.repair_budget_seconds
    else:
        budget = cfg.repair_budget_per_order * len(orders)
    changed: set[str] = set()  # kitchens with new orders since their last re-optimization
    optimizer = None
    if cfg.policy == "optimized":
        from .optimize import Optimizer

        optimizer = Optimizer(world, settings, seed=cfg.seed, deterministic=cfg.deterministic)
    reopt_limit = cfg.reopt_work if cfg.deterministic else cfg.reopt_seconds
    repair_limit = cfg.repair_work if cfg.deterministic else cfg.repair_seconds
    repair_spent = 0.0
    repair_size = 0  # constraints of the repairs' models
    unmerged: set[str] = set()  # kitchens whose plan changed since their last consolidation
    settling = optimizer is not None and cfg.settle_every > 0
    next_settle = queue[0].placed_at if queue else 0

    def settle_until(minute: int) -> None:
        nonlocal next_settle
        while next_settle <= minute:
            for kid in sorted(world.kitchens):
                stats["settled_orders"] += settle_late(state, kid, next_settle, settings, new_id)
            next_settle += cfg.settle_every

    for i, so in enumerate(queue):
        now = so.placed_at
        if settling:
            settle_until(now)
        if optimizer is not None and now >= next_reopt:
            for kid in sorted(changed):
                _make_room(state, kid, now, settings, stats)
                unmerged.discard(kid)
                rep = optimizer.reoptimize(state, kid, now, reopt_limit)
                stats["reopt_runs"] += 1
                stats["reopt_improved"] += int(rep.improved)
                if rep.improved:
                    unmerged.add(kid)
                stats["reopt_seconds"] += rep.seconds
            changed.clear()
            next_reopt = now + cfg.reopt_every
        if so.invalid:
            outcomes[so.id] = Outcome(so, "rejected", "invalid")
            continue
        order = OrderReq(so.id, so.kitchen_id, so.station_id, so.eta, dict(so.items))
        if so.eta <= now:
            outcomes[so.id] = Outcome(so, "rejected", "too-late")
            continue
        bad = validate(world, order)
        if bad is not None:
            outcomes[so.id] = Outcome(so, "rejected", bad.reason)
            continue
        res: Insertion | Rejection = admit(world, state, order, now, settings, new_id)
        if (
            optimizer is not None
            and isinstance(res, Rejection)
            and res.reason == "no-kitchen-capacity"
            and order.kitchen_id in unmerged
        ):
            # free equipment time by merging batches and using idle time now, then first fit again
            _make_room(state, order.kitchen_id, now, settings, stats)
            unmerged.discard(order.kitchen_id)
            res = admit(world, state, order, now, settings, new_id)
            stats["consolidation_wins"] += int(isinstance(res, Insertion))
        if (
            optimizer is not None
            and cfg.hand_over
            and isinstance(res, Rejection)
            and res.reason == "no-kitchen-capacity"
        ):
            handed = admit_handing_over(state, order, now, settings, new_id)
            if handed is not None:
                stats["handovers_tried"] += 1
                stats["handover_wins"] += int(isinstance(handed, Insertion))
                res = handed
        if isinstance(res, Insertion):
            state.apply(res)
            changed.add(order.kitchen_id)
            unmerged.add(order.kitchen_id)
            outcomes[so.id] = Outcome(so, "confirmed", cabinet_id=order.cabinet_id or "")
        elif (
            optimizer is not None
            and res.reason.startswith("no-")
            and (repair_size if cfg.deterministic else repair_spent) < budget
        ):
            stats["repairs_tried"] += 1
            r0, size0 = time.perf_counter(), optimizer.model_constraints
            won = optimizer.repair(state, order, now, repair_limit)
            repair_spent += time.perf_counter() - r0
            repair_size += optimizer.model_constraints - size0
            if won:
                stats["repairs_won"] += 1
                changed.add(order.kitchen_id)
                unmerged.add(order.kitchen_id)
                outcomes[so.id] = Outcome(so, "confirmed", cabinet_id=order.cabinet_id or "")
            else:
                outcomes[so.id] = Outcome(so, "rejected", res.reason)
        else:
            outcomes[so.id] = Outcome(so, "rejected", res.reason)
        if progress is not None:
            progress(i + 1, len(queue))
    stats["repair_seconds"] = repair_spent
    stats["repair_constraints"] = repair_size
    if settling and queue:
        settle_until(max(o.eta for o in queue))  # the runs of the morning's last orders too
    plan = state.plan
    violations = check(world, plan, settings)
    slots = _execute(world, plan, outcomes, settings)
    stats["wall_seconds"] = time.perf_counter() - t0
    return SimResult(plan, [outcomes[o.id] for o in orders], slots, violations, dict(stats))


def _make_room(state: PlanState, kid: str, now: int, settings: Settings, stats: dict[str, Any]) -> None:
    merged, earlier = make_room(state, kid, now, settings)
    stats["consolidated_batches"] += merged
    stats["batches_made_earlier"] += earlier


def tasks_by_order(plan: Plan) -> dict[str, list[Task]]:
    out: dict[str, list[Task]] = defaultdict(list)
    for t in plan.tasks.values():
        for oid in t.units:
            out[oid].append(t)
    return out


def order_ready(plan: Plan, world: World, oid: str, tasks: list[Task]) -> tuple[int, dict[str, int]]:
    """(ready minute, zone -> expiry minute) of a planned order, from its tasks."""
    o = plan.orders[oid]
    k = world.kitchens[o.kitchen_id]
    last_ends: dict[str, list[int]] = defaultdict(list)
    pack_end = None
    for t in tasks:
        if t.kind == "pack":
            pack_end = t.end
        elif t.sku is not None and t.step == len(k.menu[t.sku].steps):
            last_ends[t.sku].append(t.end)
    ready = pack_end if pack_end is not None else max(max(v) for v in last_ends.values())
    expiry: dict[str, int] = {}
    for sku, ends in last_ends.items():
        item = k.menu[sku]
        expiry[item.zone] = min(expiry.get(item.zone, 10**12), min(ends) + item.max_hold)
    return ready, expiry


def _execute(world: World, plan: Plan, outcomes: dict[str, Outcome], settings: Settings) -> list[SlotUse]:
    """Carry the final plan out: deposits, pickups or expiry, and who found a free slot."""
    run_of = {oid: r for r in plan.runs.values() for oid in r.orders}
    res_of: dict[str, list] = defaultdict(list)
    for rv in plan.reservations:
        res_of[rv.order_id].append(rv)
    # the parcels, in deposit order
    parcels = []
    by_order = tasks_by_order(plan)
    for oid, out in outcomes.items():
        if out.status != "confirmed":
            continue
        ready, expiry = order_ready(plan, world, oid, by_order[oid])
        deposit = run_of[oid].arrive
        so = out.order
        out.ready_at, out.deposited_at = ready, deposit
        first_expiry = min(expiry.values())
        if so.arrival is not None and max(so.arrival, deposit) < first_expiry:
            pickup = max(so.arrival, deposit)
            out.picked_up_at = pickup
            out.wait_minutes = max(0, deposit - so.arrival)
            out.hold_minutes = pickup - ready
            end, how = pickup, "pickup"
        else:
            out.expired = True
            end, how = first_expiry, "expired"
            if so.arrival is not None:
                out.wait_minutes = max(0, deposit - so.arrival)
        for rv in res_of[oid]:
            parcels.append((deposit, max(end, deposit + 1), how, rv))
    parcels.sort(key=lambda p: (p[0], p[3].order_id, p[3].zone))
    busy: dict[tuple[str, str], int] = {}  # slot -> minute it frees
    slot_info = {(c, s.label): s for c, ss in world.slots.items() for s in ss}
    uses: list[SlotUse] = []
    for start, end, how, rv in parcels:
        key = (rv.cabinet_id, rv.slot)
        label = None
        if busy.get(key, -1) <= start and key in slot_info:
            label = rv.slot
        else:
            free = [
                s
                for s in world.slots.get(rv.cabinet_id, [])
                if s.zone == rv.zone
                and SIZE_RANK[s.size] >= SIZE_RANK[rv.size]
                and busy.get((rv.cabinet_id, s.label), -1) <= start
            ]
            if free:
                label = min(free, key=lambda s: (SIZE_RANK[s.size], s.label)).label
        if label is None:
            uses.append(SlotUse(rv.cabinet_id, "overflow", rv.zone, rv.size, rv.order_id, start, end, how))
            continue
        busy[(rv.cabinet_id, label)] = end
        size = slot_info[(rv.cabinet_id, label)].size
        uses.append(SlotUse(rv.cabinet_id, label, rv.zone, size, rv.order_id, start, end, how))
    return uses


def report(world: World, result: SimResult, cfg: SimConfig, bound: int | None) -> dict[str, Any]:
    outs = result.outcomes
    confirmed = [o for o in outs if o.status == "confirmed"]
    came = [o for o in confirmed if o.order.arrival is not None]
    served = [o for o in confirmed if o.picked_up_at is not None]
    expired = [o for o in came if o.expired]
    on_time = [o for o in served if (o.wait_minutes or 0) == 0]
    holds = sorted(o.hold_minutes for o in served if o.hold_minutes is not None)
    waits = [o.wait_minutes or 0 for o in served]
    rejected_by: dict[str, int] = defaultdict(int)
    for o in outs:
        if o.status == "rejected":
            rejected_by[o.reason] += 1
    overflow = [u for u in result.slots if u.slot == "overflow"]
    grace = cfg.settings.grace
    by_id = {o.order.id: o for o in outs}
    overflow_within_grace = [
        u
        for u in overflow
        if (arr := by_id[u.order_id].order.arrival) is not None and arr <= by_id[u.order_id].order.eta + grace
    ]
    return {
        "orders": len(outs),
        "confirmed": len(confirmed),
        "rejected": len(outs) - len(confirmed),
        "served": len(served),
        "expired": len(expired),
        "no_show": sum(1 for o in confirmed if o.order.arrival is None),
        "overflow": len(overflow),
        "overflow_within_grace": len(overflow_within_grace),
        "on_time_rate": round(len(on_time) / len(served), 4) if served else None,
        "mean_wait_minutes": round(sum(waits) / len(waits), 2) if waits else None,
        "mean_hold_minutes": round(sum(holds) / len(holds), 2) if holds else None,
        "p95_hold_minutes": holds[min(len(holds) - 1, math.ceil(0.95 * len(holds)) - 1)] if holds else None,
        "rejected_by_reason": dict(sorted(rejected_by.items())),
        "kitchen_utilization": utilization(world, result.plan),
        "wall_seconds": round(result.stats.get("wall_seconds", 0.0), 3),
        "policy": cfg.policy,
        "planner": {
            "check_violations": len(result.violations),
            "served_upper_bound": bound,
            "confirmed_of_bound": round(len(confirmed) / bound, 4) if bound else None,
            **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.stats.items()},
        },
    }


def utilization(world: World, plan: Plan) -> dict[str, dict[str, float]]:
    busy: dict[tuple[str, str], int] = defaultdict(int)
    span: dict[str, tuple[int, int]] = {}
    for t in plan.tasks.values():
        busy[(t.kitchen_id, t.resource)] += t.end - t.start
        lo, hi = span.get(t.kitchen_id, (t.start, t.end))
        span[t.kitchen_id] = (min(lo, t.start), max(hi, t.end))
    out: dict[str, dict[str, float]] = {}
    for kid, k in world.kitchens.items():
        if kid not in span:
            out[kid] = {r: 0.0 for r in k.capacity}
            continue
        windows = k.windows(*span[kid])
        open_minutes = sum(w1 - w0 for w0, w1 in windows) or 1
        out[kid] = {r: round(busy[(kid, r)] / (cap * open_minutes), 4) for r, cap in k.capacity.items()}
    return out
