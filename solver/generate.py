"""A synthetic city and a morning of orders, sized by parameters and seeded, so anyone can make a
realistic case: stations on lines, kitchens with breakfast menus (multi-step, batched, every zone),
demand peaking at rush hour, pre-orders the night before and during the ride, early, late and
no-show arrivals. ``tightness`` > 1 sizes capacity below the peak demand on purpose."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .simulate import SimOrder
from zoneinfo import ZoneInfo

STATION_NAMES = [
    "Riverside",
    "Old Town",
    "Central",
    "Harbour",
    "University",
    "Tech Park",
    "Museum",
    "North Gate",
    "Airport Link",
    "Stadium",
    "Garden",
    "East Market",
    "West Bridge",
    "Library",
    "Hospital",
    "Lakeside",
    "Cathedral",
    "Docklands",
    "Exhibition",
    "Zoo",
    "Canal",
    "Observatory",
    "Mint",
    "Arsenal",
    "Fountain",
    "Parliament",
    "Orchard",
    "Foundry",
    "Pier",
    "Terminal",
]

# sku, name, price, zone, size, hold, steps [(resource, minutes, batch)]
MENU_POOL: list[tuple[str, str, int, str, str, int, list[tuple[str, int, int]]]] = [
    ("bun-pork", "Pork buns x2", 500, "hot", "S", 45, [("steamer", 12, 20)]),
    ("bun-veg", "Vegetable buns x2", 450, "hot", "S", 45, [("steamer", 12, 20)]),
    ("jianbing", "Jianbing crepe", 800, "hot", "M", 35, [("griddle", 4, 1), ("counter", 1, 2)]),
    ("egg-roll", "Egg and cheese roll", 600, "hot", "M", 35, [("oven", 6, 6), ("counter", 2, 2)]),
    ("croissant", "Butter croissant", 350, "hot", "S", 40, [("oven", 15, 24)]),
    ("congee", "Chicken congee", 650, "hot", "M", 35, [("stove", 25, 15), ("counter", 1, 4)]),
    ("soy-milk", "Chilled soy milk", 300, "chilled", "M", 180, [("counter", 1, 6)]),
    ("smoothie", "Mango smoothie", 550, "chilled", "M", 60, [("blender", 2, 2)]),
    ("yogurt", "Yogurt with berries", 450, "chilled", "M", 240, [("counter", 2, 4)]),
    ("sourdough", "Sourdough loaf", 700, "ambient", "L", 480, [("oven", 35, 12)]),
    ("granola", "Granola bag", 400, "ambient", "S", 600, [("counter", 1, 10)]),
]
RUN_CAPACITY = 12
KITCHEN_NAMES = [
    "Dawn Buns",
    "Stone Oven",
    "Green Bowl",
    "Night Owl",
    "Golden Griddle",
    "Morning Mill",
    "Steam House",
    "Corner Bakery",
]


@dataclass
class GenOrder:
    order_id: str
    placed_at: datetime
    station_id: str
    kitchen_id: str
    eta: datetime
    items: dict[str, int]
    arrival: datetime | None

    def row(self) -> dict[str, str]:
        return {
            "order_id": self.order_id,
            "placed_at": self.placed_at.isoformat(),
            "station_id": self.station_id,
            "kitchen_id": self.kitchen_id,
            "eta": self.eta.isoformat(),
            "items": ";".join(f"{s}*{q}" for s, q in self.items.items()),
            "arrival": self.arrival.isoformat() if self.arrival else "",
        }


def generate(
    orders: int = 1000,
    stations: int = 12,
    kitchens: int = 3,
    seed: int = 1,
    day: date = date(2026, 3, 3),
    timezone: str = "Asia/Shanghai",
    tightness: float = 1.3,
) -> tuple[dict[str, Any], list[GenOrder]]:
    if orders < 1 or stations < 1 or kitchens < 1:
        raise ValueError("orders, stations and kitchens must be at least 1")
    rng = random.Random(seed)
    tz = ZoneInfo(timezone)
    stations = min(stations, 200)
    st_ids = [f"s{i + 1:02d}" for i in range(stations)]
    names = [STATION_NAMES[i] if i < len(STATION_NAMES) else f"Station {i + 1}" for i in range(stations)]
    popularity = {s: rng.uniform(0.5, 2.0) for s in st_ids}
    # kitchens: each serves a contiguous stretch of stations (a line), overlapping its neighbours
    kdefs = []
    per = max(2, math.ceil(stations / kitchens) + 2)
    for ki in range(kitchens):
        first = (ki * stations) // kitchens
        served = [st_ids[(first + j) % stations] for j in range(min(per, stations))]
        menu_idx = sorted(rng.sample(range(len(MENU_POOL)), rng.randint(4, 6)))
        zones = {MENU_POOL[i][3] for i in menu_idx}
        if "chilled" not in zones:
            menu_idx.append(6)
        kdefs.append((f"k{ki + 1}", KITCHEN_NAMES[ki % len(KITCHEN_NAMES)], served, menu_idx))

    # demand
    base = datetime.combine(day, datetime.min.time(), tzinfo=tz)
    gen: list[GenOrder] = []
    k_orders: dict[str, int] = {k[0]: 0 for k in kdefs}
    st_orders: dict[str, int] = dict.fromkeys(st_ids, 0)
    serving = {s: [k for k in kdefs if s in k[2]] for s in st_ids}
    weights = [popularity[s] for s in st_ids]
    for n in range(orders):
        sid = rng.choices(st_ids, weights)[0]
        if not serving[sid]:
            continue
        kd = rng.choice(serving[sid])
        minute = rng.gauss(8 * 60 + 15, 40)
        minute = min(max(minute, 6 * 60 + 45), 9 * 60 + 50)
        eta = base + timedelta(minutes=int(minute))
        if rng.random() < 0.3:
            placed = base - timedelta(minutes=rng.randint(30, 270))
        else:
            placed = eta - timedelta(minutes=rng.randint(35, 75), seconds=rng.randint(0, 59))
        skus = rng.sample(kd[3], rng.choice([1, 1, 2, 2, 3]))
        items = {MENU_POOL[i][0]: rng.choice([1, 1, 1, 2]) for i in skus}
        r = rng.random()
        if r < 0.025:
            arrival = None  # no-show
        elif r < 0.06:
            arrival = eta - timedelta(minutes=rng.uniform(1.5, 3))  # early
        elif r < 0.10:
            arrival = eta + timedelta(minutes=rng.uniform(4, 20))  # late
        else:
            arrival = eta + timedelta(minutes=rng.gauss(0.5, 1.0))
        if arrival is not None:
            arrival = arrival.replace(microsecond=0)
        gen.append(GenOrder(f"o{n + 1:06d}", placed, sid, kd[0], eta, items, arrival))
        k_orders[kd[0]] += 1
        st_orders[sid] += 1
    gen.sort(key=lambda o: (o.placed_at, o.order_id))

    # eta minutes of each kitchen's orders per station (couriers are sized from the busiest hour)
    # and of the parcels per station and zone (cabinets: from the busiest quarter hour)
    zone_of = {m[0]: m[3] for m in MENU_POOL}
    k_st_etas: dict[tuple[str, str], list[int]] = defaultdict(list)
    etas: dict[tuple[str, str], list[int]] = defaultdict(list)
    for o in gen:
        minute = int((o.eta - base).total_seconds() // 60)
        k_st_etas[(o.kitchen_id, o.station_id)].append(minute)
        for z in {zone_of[s] for s in o.items}:
            etas[(o.station_id, z)].append(minute)

    # capacity sized to the peak hour (about 35% of the morning). Per-order work (packing) and
    # one-at-a-time steps get room for the peak; batched equipment (steamers, ovens) is sized for
    # half-full batches divided by ``tightness``: that is where planning pays.
    peak = 0.35
    kitchens_doc = []
    for kid, name, served, menu_idx in kdefs:
        n_k = k_orders[kid] or 1
        share = 2.0 / max(1, len(menu_idx))  # chance an order has a given item
        easy: dict[str, float] = {"pack": n_k * peak / 60 * 1.5}
        tight: dict[str, float] = {}
        for i in menu_idx:
            for res, minutes, batch in MENU_POOL[i][6]:
                units_per_hour = n_k * peak * share * 1.25
                if batch >= 6:
                    tight[res] = tight.get(res, 0.0) + units_per_hour * minutes / 60 / (batch * 0.5)
                else:
                    easy[res] = easy.get(res, 0.0) + units_per_hour * minutes / 60 / batch * 1.5
        caps: dict[str, int] = {}
        for res, val in easy.items():
            caps[res] = caps.get(res, 0) + max(1, math.ceil(val))
        for res, val in tight.items():
            caps[res] = caps.get(res, 0) + max(1, round(val / tightness))
        resources = [{"id": r, "capacity": c} for r, c in sorted(caps.items())]
        travel = {s: rng.randint(2, 7) for s in served}
        # couriers and cabinets are sized for the peak: to each station a run every 8 minutes, or
        # more where the busiest hour's orders fill runs past half their capacity; tightness
        # squeezes the kitchens, where planning has the most room to do better
        courier_minutes = sum(
            max(7.5, _busiest(k_st_etas[(kid, s)], 60) / (RUN_CAPACITY / 2)) * 2 * travel[s] for s in served
        )
        couriers = max(1, round(courier_minutes / 60))
        kitchens_doc.append(
            {
                "id": kid,
                "name": name,
                "open": "05:30",
                "close": "10:30",
                "resources": resources,
                "pack": {"resource": "pack", "minutes": 1},
                "couriers": couriers,
                "run_capacity": RUN_CAPACITY,
                "stations": travel,
                "menu": [
                    {
                        "sku": sku,
                        "name": nm,
                        "price_cents": price,
                        "zone": zone,
                        "size": size,
                        "max_hold_minutes": hold,
                        "steps": [{"resource": r, "minutes": mi, "batch": b} for r, mi, b in steps],
                    }
                    for sku, nm, price, zone, size, hold, steps in (MENU_POOL[i] for i in menu_idx)
                ],
            }
        )
    # cabinets: enough slots for the busiest quarter hour of each station (parcels held from a
    # few minutes before eta to eta plus the grace)
    stations_doc = []
    for sid, nm in zip(st_ids, names, strict=True):
        hot, chilled, ambient = (max(1, _busiest(etas[(sid, z)], 15)) for z in ("hot", "chilled", "ambient"))
        stations_doc.append(
            {
                "id": sid,
                "name": nm,
                "cabinets": [
                    {
                        "id": f"{sid}-a",
                        "name": "Exit A",
                        "slots": [
                            {"zone": "hot", "size": "M", "count": max(2, hot - hot // 4)},
                            {"zone": "hot", "size": "S", "count": max(1, hot // 4)},
                            {"zone": "chilled", "size": "M", "count": chilled},
                            {"zone": "ambient", "size": "L", "count": ambient},
                        ],
                    }
                ],
            }
        )
    network = {
        "city": f"Generated City {seed}",
        "timezone": timezone,
        "stations": stations_doc,
        "kitchens": kitchens_doc,
    }
    return network, gen


def _busiest(minutes: list[int], span: int) -> int:
    """The most of these minutes inside any ``span`` minutes."""
    xs = sorted(minutes)
    best, j = 0, 0
    for i, x in enumerate(xs):
        while xs[j] < x - (span - 1):
            j += 1
        best = max(best, i - j + 1)
    return best


def as_sim_orders(rows: list[GenOrder]) -> list[SimOrder]:
    """Generated orders in the simulator's terms (integer minutes)."""
    from .model import to_minute
    from .simulate import SimOrder

    return [
        SimOrder(
            r.order_id,
            to_minute(r.placed_at),
            r.station_id,
            r.kitchen_id,
            to_minute(r.eta),
            dict(r.items),
            to_minute(r.arrival) if r.arrival else None,
        )
        for r in rows
    ]
