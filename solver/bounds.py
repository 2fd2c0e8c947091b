"""Upper bounds on how many orders any plan could confirm, printed beside results.

Each is a relaxation that every valid plan satisfies, so the smallest is still an upper bound:

* per kitchen and resource: work minutes shared perfectly by batches (fractional knapsack);
* per kitchen: pack minutes, and courier minutes with every run full;
* per station and zone: slot time from ``eta`` to ``eta + grace`` at least (interval packing).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol

from .model import OrderReq, Settings, World, parcels_of


class _Order(Protocol):
    id: str
    kitchen_id: str
    station_id: str
    eta: int
    items: dict[str, int]


def _knapsack_count(needs: Iterable[float], capacity: float) -> int:
    """Most items of these weights that fit in capacity (all values 1): smallest first."""
    n = 0
    used = 0.0
    for w in sorted(needs):
        if used + w > capacity + 1e-9:
            break
        used += w
        n += 1
    return n


def _interval_packing(intervals: list[tuple[int, int]], machines: int) -> int:
    """Most half-open intervals that fit on ``machines`` parallel machines (greedy by end)."""
    if machines <= 0:
        return 0
    free: list[int] = []  # end times of busy machines, as a max-heap via negatives
    count = 0
    for s, e in sorted(intervals, key=lambda x: (x[1], x[0])):
        # best fit: the machine that became free latest but no later than s
        candidates = [-x for x in free if -x <= s]
        if candidates:
            best = max(candidates)
            free.remove(-best)
            heapq.heapify(free)
            heapq.heappush(free, -e)
            count += 1
        elif len(free) < machines:
            heapq.heappush(free, -e)
            count += 1
    return count


def served_upper_bound(world: World, orders: Iterable[_Order], settings: Settings) -> int:
    valid: list[_Order] = []
    for o in orders:
        k = world.kitchens.get(o.kitchen_id)
        if (
            k is None
            or o.station_id not in k.travel
            or not o.items
            or any(s not in k.menu or q < 1 for s, q in o.items.items())
        ):
            continue
        valid.append(o)
    by_kitchen: dict[str, list[_Order]] = defaultdict(list)
    by_station: dict[str, list[_Order]] = defaultdict(list)
    for o in valid:
        by_kitchen[o.kitchen_id].append(o)
        by_station[o.station_id].append(o)
    kitchen_total = 0
    for kid, lst in by_kitchen.items():
        k = world.kitchens[kid]
        span = k.windows(min(o.eta for o in lst) - 24 * 60, max(o.eta for o in lst))
        open_minutes = sum(w1 - w0 for w0, w1 in span)
        bounds = [len(lst)]
        for res, cap in k.capacity.items():
            needs = []
            for o in lst:
                need = 0.0
                for sku, qty in o.items.items():
                    for r, minutes, batch in k.menu[sku].steps:
                        if r == res:
                            need += qty * minutes / batch
                if k.pack and k.pack[0] == res:
                    need += k.pack[1]
                needs.append(need)
            bounds.append(_knapsack_count(needs, cap * open_minutes))
        courier_minutes = k.couriers * (open_minutes + 2 * max(k.travel.values()))
        bounds.append(
            _knapsack_count((2 * k.travel[o.station_id] / k.run_capacity for o in lst), courier_minutes)
        )
        kitchen_total += min(bounds)
    station_total = 0
    for sid, lst in by_station.items():
        zones: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for o in lst:
            req = OrderReq(o.id, o.kitchen_id, o.station_id, o.eta, o.items)
            for zone in parcels_of(req, world.kitchens[o.kitchen_id]):
                zones[zone].append((o.eta, o.eta + max(1, settings.grace)))
        per_zone = 0
        for zone, ivs in zones.items():
            slots = sum(
                1 for c in world.station_cabinets[sid] for s in world.slots.get(c, []) if s.zone == zone
            )
            per_zone += _interval_packing(ivs, slots)
        station_total += min(len(lst), per_zone)
    return min(len(valid), kitchen_total, station_total)
