"""The planning engine: repair and re-optimization keep every rule, simulation writes SPEC files."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

from solver.admission import Insertion, PlanState, admit, id_factory
from solver.bounds import served_upper_bound
from solver.check import check
from solver.generate import as_sim_orders, generate
from solver.model import NetworkSpec, OrderReq, Settings, World
from solver.optimize import Optimizer
from solver.simulate import SimConfig, SimResult, report, simulate

from .conftest import EXAMPLES
from .test_solver import morning, world

S = Settings()


def small_city(orders: int = 240, seed: int = 4, tightness: float = 2.0) -> tuple[World, list]:
    net, rows = generate(orders=orders, stations=4, kitchens=1, seed=seed, tightness=tightness)
    w = World.from_spec(NetworkSpec.model_validate(net))
    return w, as_sim_orders(rows)


def test_repair_makes_room_by_moving_confirmed_work_and_keeps_every_rule() -> None:
    w, orders = small_city()
    state = PlanState(w)
    new_id = id_factory()
    opt = Optimizer(w, S)
    won = tried = 0
    for so in sorted(orders, key=lambda o: o.placed_at):
        o = OrderReq(so.id, so.kitchen_id, so.station_id, so.eta, dict(so.items))
        r = admit(w, state, o, so.placed_at, S, new_id)
        if isinstance(r, Insertion):
            state.apply(r)
        elif r.reason == "no-kitchen-capacity" and tried < 15:
            tried += 1
            before = set(state.plan.orders)
            if opt.repair(state, o, so.placed_at, 2.0):
                won += 1
                assert set(state.plan.orders) == before | {o.id}  # nobody was dropped
                assert check(w, state.plan, S) == []
    assert tried > 0, "the instance should be tight enough to need repairs"
    assert won > 0
    assert check(w, state.plan, S) == []


def half_admitted(seed: int = 5) -> tuple[World, PlanState, Optimizer, str, int]:
    """A small city's first half of orders (by placing time) admitted first fit: its world, plan
    state and optimizer, its kitchen, and the minute the second half begins."""
    w, orders = small_city(seed=seed)
    state = PlanState(w)
    new_id = id_factory()
    ordered = sorted(orders, key=lambda o: o.placed_at)
    for so in ordered[: len(ordered) // 2]:
        o = OrderReq(so.id, so.kitchen_id, so.station_id, so.eta, dict(so.items))
        r = admit(w, state, o, so.placed_at, S, new_id)
        if isinstance(r, Insertion):
            state.apply(r)
    return w, state, Optimizer(w, S), next(iter(w.kitchens)), ordered[len(ordered) // 2].placed_at


def test_reoptimize_never_commits_a_worse_or_broken_plan() -> None:
    w, state, opt, kid, now = half_admitted()
    ids = opt.movable(state, kid, now, now, now + 150, 300)
    before = opt.objective_of(state, ids, now) if len(ids) >= 2 else None
    confirmed = set(state.plan.orders)
    rep = opt.reoptimize(state, kid, now, 2.0)
    assert set(state.plan.orders) == confirmed
    assert check(w, state.plan, S) == []
    if rep.improved:
        assert before is not None and rep.objective_after is not None
        assert rep.objective_after < before
        assert opt.objective_of(state, ids, now) <= before


def test_simulation_of_the_tiny_morning_passes_the_checker_for_both_policies() -> None:
    from service.simulation import read_orders

    w = world()
    orders = read_orders(EXAMPLES / "tiny-orders.csv")
    for policy in ("greedy", "optimized"):
        cfg = SimConfig(policy=policy)
        result = simulate(w, orders, cfg)
        assert result.violations == []
        rep = report(w, result, cfg, served_upper_bound(w, orders, cfg.settings))
        assert rep["orders"] == 10 and rep["confirmed"] + rep["rejected"] == 10
        assert rep["confirmed"] <= rep["planner"]["served_upper_bound"]
        assert rep["rejected_by_reason"].get("too-late", 0) >= 1  # t08: ordered 10 min ahead


@functools.cache
def tight_morning() -> tuple[World, list]:
    return small_city(orders=200, seed=7, tightness=2.5)


@functools.cache
def tight_morning_optimized() -> SimResult:
    """The tight morning replayed with the default settings, once for the tests that read it
    (a replay is deterministic: every call would give the same)."""
    w, orders = tight_morning()
    return simulate(w, orders, SimConfig())


def test_optimized_serves_at_least_as_many_as_greedy_on_a_tight_morning() -> None:
    w, orders = tight_morning()
    results = {}
    for policy in ("greedy", "optimized"):
        cfg = SimConfig(policy=policy)
        res = simulate(w, orders, cfg) if policy == "greedy" else tight_morning_optimized()
        assert res.violations == []
        results[policy] = report(w, res, cfg, None)
    assert results["optimized"]["served"] >= results["greedy"]["served"]
    assert results["optimized"]["on_time_rate"] >= results["greedy"]["on_time_rate"]


def test_the_simulators_repairs_stop_once_their_models_have_used_the_budget() -> None:
    w, orders = tight_morning()
    full = tight_morning_optimized()
    tried, size = full.stats["repairs_tried"], full.stats["repair_constraints"]
    assert tried >= 4 and size > 0
    half = simulate(w, orders, SimConfig(repair_constraints_per_order=size // 2 // len(orders)))
    assert 1 <= half.stats["repairs_tried"] < tried
    assert half.stats["repair_constraints"] < size
    none = simulate(w, orders, SimConfig(repair_constraints_per_order=0))
    assert none.stats.get("repairs_tried", 0) == 0
    assert half.violations == none.violations == []


def test_a_replay_gives_the_same_plan_however_busy_the_machine_is() -> None:
    """The simulator's CP-SAT counts work, not seconds, and its repair budget counts the repairs'
    model constraints: a morning replayed while another thread keeps a core busy gives the same
    plan and the same figures."""
    import threading

    w, orders = tight_morning()
    cfg = SimConfig(policy="optimized")
    quiet = tight_morning_optimized()
    assert quiet.stats["repairs_tried"] > 0 and quiet.stats["reopt_runs"] > 0  # CP-SAT had a say
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(10_000))

    busy = threading.Thread(target=spin)
    busy.start()
    try:
        loaded = simulate(w, orders, cfg)
    finally:
        stop.set()
        busy.join()
    assert loaded.violations == [] and quiet.violations == []
    assert loaded.plan.tasks == quiet.plan.tasks
    assert loaded.plan.runs == quiet.plan.runs
    assert loaded.plan.reservations == quiet.plan.reservations
    assert loaded.outcomes == quiet.outcomes and loaded.slots == quiet.slots


def test_a_generated_morning_below_tightness_one_has_couriers_for_its_peak() -> None:
    """``tightness`` squeezes the kitchens; couriers are sized for the peak whatever the morning's
    size. With a thousand orders a kitchen (as bench/planning.py makes for 5,000 orders), couriers
    sized from the number of stations alone turned away one order in seven at tightness 0.5."""
    net, rows = generate(orders=5000, stations=20, kitchens=5, seed=1, tightness=0.5)
    w = World.from_spec(NetworkSpec.model_validate(net))
    cfg = SimConfig(policy="greedy")
    res = simulate(w, as_sim_orders(rows), cfg)
    assert res.violations == []
    rep = report(w, res, cfg, None)
    assert rep["rejected_by_reason"].get("no-courier-capacity", 0) < 0.01 * len(rows), rep[
        "rejected_by_reason"
    ]
    assert rep["confirmed"] > 0.9 * len(rows)


def test_simulate_cli_writes_every_spec_file(tmp_path: Path) -> None:
    from .test_cli import run

    r = run(
        "generate",
        "--out",
        str(tmp_path),
        "--orders",
        "120",
        "--stations",
        "4",
        "--kitchens",
        "2",
        "--seed",
        "9",
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = run(
        "simulate",
        "--network",
        str(tmp_path / "network.yaml"),
        "--orders",
        str(tmp_path / "orders.csv"),
        "--policy",
        "greedy",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    headers = {
        "orders.csv": "order_id,status,reason,station_id,cabinet_id,kitchen_id,eta,arrival,ready_at,"
        "deposited_at,picked_up_at,expired,wait_minutes,hold_minutes",
        "tasks.csv": "kitchen_id,resource,task_id,kind,sku,step,start,end,units,orders",
        "runs.csv": "kitchen_id,run_id,station_id,depart,arrive,back,orders",
        "slots.csv": "cabinet_id,slot,zone,size,order_id,from,to,end",
    }
    for name, header in headers.items():
        lines = (out / name).read_text().splitlines()
        assert lines[0] == header, name
    rows = list(csv.DictReader((out / "orders.csv").open()))
    assert len(rows) == 120
    assert {r["status"] for r in rows} <= {"confirmed", "rejected"}
    assert all(r["reason"] == "" for r in rows if r["status"] == "confirmed")
    assert all(r["eta"].endswith("+08:00") for r in rows)
    rep = json.loads((out / "report.json").read_text())
    for key in (
        "orders",
        "confirmed",
        "rejected",
        "served",
        "expired",
        "no_show",
        "overflow",
        "on_time_rate",
        "mean_wait_minutes",
        "mean_hold_minutes",
        "p95_hold_minutes",
        "rejected_by_reason",
        "kitchen_utilization",
        "wall_seconds",
        "policy",
    ):
        assert key in rep, key
    assert rep["planner"]["check_violations"] == 0
    assert (out / "cabinet_occupancy.png").stat().st_size > 1000
    assert (out / "kitchen_load.png").stat().st_size > 1000
    bad = tmp_path / "bad.csv"
    bad.write_text("order_id,placed_at\nx,yesterday\n")
    r = run("simulate", "--network", str(tmp_path / "network.yaml"), "--orders", str(bad), "--out", str(out))
    assert r.returncode == 2 and "header: missing column(s)" in r.stderr
    bad.write_text((EXAMPLES / "tiny-orders.csv").read_text().replace("2026-03-02T21:10:00+01:00", "soon"))
    r = run(
        "simulate", "--network", str(EXAMPLES / "tiny-network.yaml"), "--orders", str(bad), "--out", str(out)
    )
    assert r.returncode == 2 and "line 2: placed_at: 'soon' is not an ISO 8601 time" in r.stderr


def test_bound_is_an_upper_bound_on_confirmed() -> None:
    w, orders = small_city(orders=150, seed=3, tightness=3.0)
    cfg = SimConfig(policy="greedy")
    res = simulate(w, orders, cfg)
    assert sum(1 for o in res.outcomes if o.status == "confirmed") <= served_upper_bound(w, orders, S)
    assert morning()  # the tiny morning still parses with the shared helpers


_SOLVE_THEN_CTRL_C = """
import os, signal, threading
from tests.test_planning import half_admitted

w, state, opt, kid, now = half_admitted()
heard = []
signal.signal(signal.SIGINT, lambda *_: heard.append("SIGINT"))
reports = []
# as the service does: the solve runs in a worker thread
t = threading.Thread(target=lambda: reports.append(opt.reoptimize(state, kid, now, 1.0)))
t.start()
t.join()
print("solved:", reports[0].status, flush=True)
os.kill(os.getpid(), signal.SIGINT)
print("heard:", heard, flush=True)
"""


def test_ctrl_c_after_a_solve_still_reaches_the_program() -> None:
    # CP-SAT catches SIGINT during a solve by default and leaves SIGINT's default action behind
    # it, so a later Ctrl-C killed `exitbox serve` outright (no shutdown, PostgreSQL left running)
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _SOLVE_THEN_CTRL_C], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"rc {done.returncode}: {done.stdout}{done.stderr[-2000:]}"
    solved = done.stdout.split("solved:", 1)[1].split()[0]
    assert solved in ("OPTIMAL", "FEASIBLE"), done.stdout  # CP-SAT did run
    assert "heard: ['SIGINT']" in done.stdout
