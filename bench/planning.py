"""Planning benchmark: greedy (the baseline, measured in the same run) against optimized.

    python bench/planning.py                      # 1k, 5k and 20k orders
    python bench/planning.py --sizes 1000 --latency-orders 2000

For each generated morning it prints, side by side: confirmed, served, on-time rate, mean and
p95 hold, expired, overflow, the upper bound on confirmed orders, checker violations and wall
time. Then admission latency (p50/p99) with an empty plan and with 2,000 live orders in one
kitchen, and the time to re-plan a partition of about 500 orders with CP-SAT.

The simulations replay deterministically (``SimConfig.deterministic``): a morning's figures are the
same on every run and every machine load, only the wall times vary. The re-plan is timed as the
service runs it, on the wall clock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver.admission import Insertion, PlanState, admit, id_factory
from solver.bounds import served_upper_bound
from solver.generate import as_sim_orders, generate
from solver.model import NetworkSpec, OrderReq, Settings, World
from solver.optimize import Optimizer
from solver.simulate import SimConfig, SimOrder, report, simulate


def morning(orders: int, seed: int, tightness: float) -> tuple[World, list[SimOrder]]:
    kitchens = max(1, round(orders / 1000 * 3 / 3))  # about 1,000 orders a kitchen
    kitchens = max(3, kitchens)
    stations = max(12, kitchens * 4)
    net, rows = generate(orders=orders, stations=stations, kitchens=kitchens, seed=seed, tightness=tightness)
    world = World.from_spec(NetworkSpec.model_validate(net))
    return world, as_sim_orders(rows)


def fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return "-" if v is None else str(v)


def compare(sizes: list[int], seed: int, tightness: float) -> None:
    cols = [
        "confirmed",
        "served",
        "on_time_rate",
        "mean_hold_minutes",
        "p95_hold_minutes",
        "expired",
        "overflow",
        "overflow_within_grace",
    ]
    print(f"\n== greedy vs optimized (tightness {tightness}, seed {seed}) ==")
    head = f"{'orders':>7} {'policy':>9} " + " ".join(f"{c[:12]:>12}" for c in cols)
    print(head + f" {'bound':>7} {'violations':>10} {'wall s':>8}")
    for n in sizes:
        world, orders = morning(n, seed, tightness)
        bound = served_upper_bound(world, orders, Settings())
        served = {}
        for policy in ("greedy", "optimized"):
            cfg = SimConfig(policy=policy)
            res = simulate(world, orders, cfg)
            rep = report(world, res, cfg, bound)
            served[policy] = rep["served"]
            row = f"{n:>7} {policy:>9} " + " ".join(f"{fmt(rep[c]):>12}" for c in cols)
            print(row + f" {bound:>7} {len(res.violations):>10} {rep['wall_seconds']:>8.1f}", flush=True)
        gain = (served["optimized"] - served["greedy"]) / max(1, served["greedy"])
        print(f"{'':>7} {'gain':>9} served {gain:+.1%}", flush=True)


def admission_latency(live: int, samples: int, seed: int) -> None:
    print(f"\n== admission latency, one kitchen (baseline: empty plan; then {live} live orders) ==")
    # one roomy kitchen with enough demand to hold `live` orders at once
    net, rows = generate(orders=3 * live, stations=16, kitchens=1, seed=seed, tightness=0.05)
    world = World.from_spec(NetworkSpec.model_validate(net))
    orders = as_sim_orders(rows)
    kid = next(iter(world.kitchens))
    mine = [o for o in orders if o.kitchen_id == kid]
    settings = Settings()

    def run(state: PlanState, batch: list[SimOrder], apply: bool) -> list[float]:
        new_id = id_factory("b")
        times = []
        for so in batch:
            o = OrderReq(so.id, so.kitchen_id, so.station_id, so.eta, dict(so.items))
            t0 = time.perf_counter()
            r = admit(world, state, o, so.placed_at - 600, settings, new_id)
            times.append((time.perf_counter() - t0) * 1000)
            if apply and isinstance(r, Insertion):
                state.apply(r)
        return times

    empty = run(PlanState(world), mine[:samples], apply=False)
    state = PlanState(world)
    filled = 0
    new_id = id_factory("f")
    for so in mine[samples:]:
        o = OrderReq(so.id, so.kitchen_id, so.station_id, so.eta, dict(so.items))
        r = admit(world, state, o, so.placed_at - 600, settings, new_id)
        if isinstance(r, Insertion):
            state.apply(r)
            filled += 1
        if filled >= live:
            break
    loaded = run(state, mine[:samples], apply=False)
    for name, xs in (("empty plan", empty), (f"{filled} live orders", loaded)):
        xs = sorted(xs)
        p50 = statistics.median(xs)
        p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
        print(f"{name:>20}: p50 {p50:.2f} ms  p99 {p99:.2f} ms  ({len(xs)} admissions)")


def replan(partition: int, seconds: float, seed: int) -> None:
    print(f"\n== re-planning a partition of about {partition} orders (time limit {seconds} s) ==")
    world, orders = morning(4 * partition, seed, 1.0)
    kid = next(iter(world.kitchens))
    state = PlanState(world)
    new_id = id_factory("p")
    settings = Settings()
    mine = sorted((o for o in orders if o.kitchen_id == kid), key=lambda o: o.placed_at)
    now = min(o.placed_at for o in mine) - 1
    for so in mine:
        o = OrderReq(so.id, so.kitchen_id, so.station_id, so.eta, dict(so.items))
        r = admit(world, state, o, now, settings, new_id)
        if isinstance(r, Insertion):
            state.apply(r)
    opt = Optimizer(world, settings)
    ids = opt.movable(state, kid, now, now, now + 24 * 60, partition)
    before = opt.objective_of(state, ids, now)
    t0 = time.perf_counter()
    rep = opt.reoptimize(state, kid, now, seconds, horizon=24 * 60, limit=partition)
    wall = time.perf_counter() - t0
    print(
        f"orders {rep.orders}, status {rep.status}, objective {before} -> {rep.objective_after} "
        f"(CP-SAT bound {fmt(rep.bound)}), committed {rep.improved}, wall {wall:.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tightness", type=float, default=2.0)
    ap.add_argument("--latency-orders", type=int, default=2000)
    ap.add_argument("--latency-samples", type=int, default=500)
    ap.add_argument("--partition", type=int, default=500)
    args = ap.parse_args()
    admission_latency(args.latency_orders, args.latency_samples, args.seed)
    replan(args.partition, 2.0, args.seed)
    compare(args.sizes, args.seed, args.tightness)


if __name__ == "__main__":
    main()
