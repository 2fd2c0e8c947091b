"""`exitbox simulate` and `exitbox generate`: files in, files out (SPEC section 3 and 5)."""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from solver.bounds import served_upper_bound
from solver.model import World, from_minute, to_minute, to_minute_ceil
from solver.simulate import SimConfig, SimOrder, SimResult, report, simulate

from .network_file import NetworkFileError

ORDER_COLUMNS = ["order_id", "placed_at", "station_id", "kitchen_id", "eta", "items", "arrival"]


class OrdersFileError(ValueError):
    pass


def _time(value: str, where: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise OrdersFileError(f"{where}: {value!r} is not an ISO 8601 time") from None
    if ts.tzinfo is None:
        raise OrdersFileError(f"{where}: {value!r} has no UTC offset")
    return ts


def read_orders(path: str | Path) -> list[SimOrder]:
    p = Path(path)
    try:
        f = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise OrdersFileError(f"{p}: cannot read: {exc.strerror or exc}") from None
    out: list[SimOrder] = []
    seen: set[str] = set()
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in ORDER_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise OrdersFileError(f"{p}: header: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            where = f"{p}: line {line}"
            oid = (row["order_id"] or "").strip()
            if not oid:
                raise OrdersFileError(f"{where}: order_id: empty")
            if oid in seen:
                raise OrdersFileError(f"{where}: order_id: {oid!r} appears twice")
            seen.add(oid)
            placed = to_minute_ceil(_time(row["placed_at"], f"{where}: placed_at"))
            eta = to_minute(_time(row["eta"], f"{where}: eta"))
            arrival = (
                to_minute(_time(row["arrival"], f"{where}: arrival"))
                if (row["arrival"] or "").strip()
                else None
            )
            items: dict[str, int] = {}
            invalid = None
            for part in (row["items"] or "").split(";"):
                sku, star, qty = part.strip().partition("*")
                if not sku or not star or not qty.isdigit() or int(qty) < 1:
                    invalid = f"items: {part!r} is not sku*qty"
                    break
                items[sku] = items.get(sku, 0) + int(qty)
            out.append(
                SimOrder(oid, placed, row["station_id"], row["kitchen_id"], eta, items, arrival, invalid)
            )
    return out


class Progress:
    """A progress bar on a terminal; silent otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.tty or total == 0:
            return
        pct = done * 100 // total
        if pct == self.last:
            return
        self.last = pct
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        sys.stderr.write(f"\r{self.label} [{bar}] {pct:3d}% {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def write_outputs(world: World, result: SimResult, rep: dict[str, Any], out: Path) -> None:
    tz = world.tz

    def t(m: int | None) -> str:
        return from_minute(m, tz).isoformat() if m is not None else ""

    out.mkdir(parents=True, exist_ok=True)
    with (out / "orders.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "order_id",
                "status",
                "reason",
                "station_id",
                "cabinet_id",
                "kitchen_id",
                "eta",
                "arrival",
                "ready_at",
                "deposited_at",
                "picked_up_at",
                "expired",
                "wait_minutes",
                "hold_minutes",
            ]
        )
        for o in result.outcomes:
            so = o.order
            w.writerow(
                [
                    so.id,
                    o.status,
                    o.reason if o.status == "rejected" else "",
                    so.station_id,
                    o.cabinet_id,
                    so.kitchen_id,
                    t(so.eta),
                    t(so.arrival),
                    t(o.ready_at),
                    t(o.deposited_at),
                    t(o.picked_up_at),
                    ("true" if o.expired else "false") if o.status == "confirmed" else "",
                    "" if o.wait_minutes is None else o.wait_minutes,
                    "" if o.hold_minutes is None else o.hold_minutes,
                ]
            )
    plan = result.plan
    with (out / "tasks.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["kitchen_id", "resource", "task_id", "kind", "sku", "step", "start", "end", "units", "orders"]
        )
        for task in sorted(plan.tasks.values(), key=lambda x: (x.kitchen_id, x.resource, x.start, x.id)):
            w.writerow(
                [
                    task.kitchen_id,
                    task.resource,
                    task.id,
                    task.kind,
                    task.sku or "",
                    task.step if task.step is not None else "",
                    t(task.start),
                    t(task.end),
                    task.total_units,
                    ";".join(f"{o}*{u}" for o, u in sorted(task.units.items())),
                ]
            )
    with (out / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kitchen_id", "run_id", "station_id", "depart", "arrive", "back", "orders"])
        for r in sorted(plan.runs.values(), key=lambda x: (x.kitchen_id, x.depart, x.id)):
            w.writerow(
                [
                    r.kitchen_id,
                    r.id,
                    r.station_id,
                    t(r.depart),
                    t(r.arrive),
                    t(r.back),
                    ";".join(sorted(r.orders)),
                ]
            )
    with (out / "slots.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cabinet_id", "slot", "zone", "size", "order_id", "from", "to", "end"])
        for u in sorted(result.slots, key=lambda x: (x.cabinet_id, x.start, x.slot, x.order_id)):
            w.writerow([u.cabinet_id, u.slot, u.zone, u.size, u.order_id, t(u.start), t(u.end), u.how])
    (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    plot(world, result, out)


def plot(world: World, result: SimResult, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    tz = world.tz
    # cabinet occupancy of the busiest stations
    cab_station = {c: s for s, cs in world.station_cabinets.items() for c in cs}
    per_station: dict[str, list[Any]] = defaultdict(list)
    for u in result.slots:
        per_station[cab_station.get(u.cabinet_id, "?")].append(u)
    busiest = sorted(per_station, key=lambda s: -len(per_station[s]))[:4]
    if busiest:
        fig, axes = plt.subplots(len(busiest), 1, figsize=(10, 2.6 * len(busiest)), squeeze=False)
        for ax, sid in zip(axes[:, 0], busiest, strict=True):
            uses = per_station[sid]
            lo = min(u.start for u in uses)
            hi = max(u.end for u in uses)
            xs = list(range(lo, hi + 1))
            for zone, color in (("hot", "#d9480f"), ("chilled", "#1c7ed6"), ("ambient", "#868e96")):
                zs = [u for u in uses if u.zone == zone]
                if not zs:
                    continue
                ys = [sum(1 for u in zs if u.start <= m < u.end) for m in xs]
                cap = sum(
                    1 for c in world.station_cabinets[sid] for s in world.slots.get(c, []) if s.zone == zone
                )
                ax.plot([from_minute(m, tz) for m in xs], ys, color=color, label=f"{zone} (capacity {cap})")
                ax.axhline(cap, color=color, linestyle=":", linewidth=1)
            ax.set_title(f"Cabinet occupancy at {sid}")
            ax.set_ylabel("parcels")
            ax.legend(loc="upper left", fontsize=8)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
        fig.tight_layout()
        fig.savefig(out / "cabinet_occupancy.png", dpi=90)
        plt.close(fig)
    # kitchen resource load
    kitchens = sorted(world.kitchens)
    fig, axes = plt.subplots(len(kitchens), 1, figsize=(10, 2.6 * len(kitchens)), squeeze=False)
    for ax, kid in zip(axes[:, 0], kitchens, strict=True):
        tasks = [x for x in result.plan.tasks.values() if x.kitchen_id == kid]
        k = world.kitchens[kid]
        if tasks:
            lo = min(x.start for x in tasks)
            hi = max(x.end for x in tasks)
            xs = list(range(lo, hi + 1))
            for res, cap in sorted(k.capacity.items()):
                load = [sum(1 for x in tasks if x.resource == res and x.start <= m < x.end) / cap for m in xs]
                ax.plot([from_minute(m, tz) for m in xs], load, label=f"{res} (capacity {cap})")
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
        ax.set_ylim(0, 1.05)
        ax.set_title(f"Resource load at {kid} (share of capacity)")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "kitchen_load.png", dpi=90)
    plt.close(fig)


def run_simulation(
    network_path: str,
    orders_path: str,
    policy: str,
    out: str,
    seed: int = 0,
    grace: int = 10,
    margin: int = 3,
) -> dict[str, Any]:
    from solver.model import Settings

    from .network_file import read_network

    spec = read_network(network_path)
    orders = read_orders(orders_path)
    world = World.from_spec(spec)
    cfg = SimConfig(policy=policy, seed=seed, settings=Settings(grace=grace, margin=margin))
    result = simulate(world, orders, cfg, Progress(f"simulate {policy}"))
    bound = served_upper_bound(world, orders, cfg.settings)
    rep = report(world, result, cfg, bound)
    write_outputs(world, result, rep, Path(out))
    return rep


def run_generate(out: str, orders: int, stations: int, kitchens: int, seed: int, tightness: float) -> str:
    from solver.generate import generate

    from .network_file import parse_network

    network, rows = generate(
        orders=orders, stations=stations, kitchens=kitchens, seed=seed, tightness=tightness
    )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(network, sort_keys=False)
    try:
        parse_network(text, "generated network")
    except NetworkFileError as exc:  # a generator bug, never the user's
        raise RuntimeError(str(exc)) from None
    (folder / "network.yaml").write_text(text)
    with (folder / "orders.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ORDER_COLUMNS)
        w.writeheader()
        for o in rows:
            w.writerow(o.row())
    return (
        f"{folder}/network.yaml and {folder}/orders.csv: {len(rows)} orders, "
        f"{stations} stations, {kitchens} kitchens"
    )
