"""Planning types in whole minutes.

Two layers live here:

* the network file of SPEC section 2 (``NetworkSpec`` and friends), validated with pydantic so
  that every error names the path of the bad field;
* the planner's view in integer minutes since the Unix epoch (``World``, ``Plan``, ``Task``,
  ``Run``, ``Reservation``, ``OrderReq``), which every solver module works on.

No I/O and no clock: callers pass ``now`` in and read files themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from .admission import OrderFacts, Rejection

Zone = Literal["hot", "chilled", "ambient"]
Size = Literal["S", "M", "L"]
SIZE_RANK: dict[str, int] = {"S": 0, "M": 1, "L": 2}
ZONE_PREFIX: dict[str, str] = {"hot": "H", "chilled": "C", "ambient": "A"}
ID_PATTERN = r"^[a-z0-9-]{1,32}$"
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


# --------------------------------------------------------------------------- network file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepSpec(_Strict):
    resource: str
    minutes: int = Field(ge=1, le=24 * 60)
    batch: int = Field(default=1, ge=1, le=10_000)


class MenuItemSpec(_Strict):
    sku: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0, le=1_000_000)
    zone: Zone
    size: Size
    max_hold_minutes: int = Field(ge=1, le=24 * 60)
    steps: list[StepSpec] = Field(min_length=1, max_length=20)


class ResourceSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    capacity: int = Field(ge=1, le=10_000)


class PackSpec(_Strict):
    resource: str
    minutes: int = Field(ge=1, le=120)


class SlotGroupSpec(_Strict):
    zone: Zone
    size: Size
    count: int = Field(ge=1, le=999)


class CabinetSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    slots: list[SlotGroupSpec] = Field(min_length=1)

    def slot_list(self) -> list[SlotInfo]:
        """Slots with their labels: H01, H02 ... per zone, in the order the groups are listed."""
        counters: dict[str, int] = {}
        out: list[SlotInfo] = []
        for group in self.slots:
            for _ in range(group.count):
                n = counters.get(group.zone, 0) + 1
                counters[group.zone] = n
                label = f"{ZONE_PREFIX[group.zone]}{n:02d}"
                out.append(SlotInfo(self.id, label, group.zone, group.size))
        return out


class StationSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    cabinets: list[CabinetSpec] = Field(min_length=1)


class KitchenSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    open: str
    close: str
    resources: list[ResourceSpec] = Field(min_length=1)
    pack: PackSpec | None = None
    couriers: int = Field(ge=1, le=1000)
    run_capacity: int = Field(ge=1, le=10_000)
    stations: dict[str, int] = Field(min_length=1)
    menu: list[MenuItemSpec] = Field(min_length=1)

    @field_validator("open", "close")
    @classmethod
    def _clock(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError("must be a clock time HH:MM, such as 05:30")
        return v

    @field_validator("stations")
    @classmethod
    def _travel(cls, v: dict[str, int]) -> dict[str, int]:
        for sid, minutes in v.items():
            if not isinstance(minutes, int) or minutes < 1 or minutes > 600:
                raise ValueError(f"travel minutes to {sid!r} must be a whole number from 1 to 600")
        return v

    @model_validator(mode="after")
    def _refs(self) -> KitchenSpec:
        if minutes_of(self.open) >= minutes_of(self.close):
            raise ValueError(f"open {self.open} must be before close {self.close}")
        ids = [r.id for r in self.resources]
        dup = _first_duplicate(ids)
        if dup:
            raise ValueError(f"resource id {dup!r} is listed twice")
        known = set(ids)
        if self.pack is not None and self.pack.resource not in known:
            raise ValueError(f"pack.resource {self.pack.resource!r} is not a resource of this kitchen")
        skus = [m.sku for m in self.menu]
        dup = _first_duplicate(skus)
        if dup:
            raise ValueError(f"menu sku {dup!r} is listed twice")
        for i, item in enumerate(self.menu):
            for j, step in enumerate(item.steps):
                if step.resource not in known:
                    raise ValueError(
                        f"menu[{i}].steps[{j}].resource {step.resource!r} is not a resource "
                        f"of this kitchen (known: {', '.join(sorted(known))})"
                    )
        return self

    def item(self, sku: str) -> MenuItemSpec | None:
        for m in self.menu:
            if m.sku == sku:
                return m
        return None


class NetworkSpec(_Strict):
    city: str = Field(min_length=1, max_length=200)
    timezone: str
    stations: list[StationSpec] = Field(min_length=1)
    kitchens: list[KitchenSpec] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {v!r}") from exc
        return v

    @model_validator(mode="after")
    def _refs(self) -> NetworkSpec:
        dup = _first_duplicate([s.id for s in self.stations])
        if dup:
            raise ValueError(f"station id {dup!r} is listed twice")
        dup = _first_duplicate([c.id for s in self.stations for c in s.cabinets])
        if dup:
            raise ValueError(f"cabinet id {dup!r} is listed twice")
        dup = _first_duplicate([k.id for k in self.kitchens])
        if dup:
            raise ValueError(f"kitchen id {dup!r} is listed twice")
        stations = {s.id for s in self.stations}
        for i, k in enumerate(self.kitchens):
            for sid in k.stations:
                if sid not in stations:
                    raise ValueError(f"kitchens[{i}].stations: unknown station {sid!r}")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def station(self, sid: str) -> StationSpec | None:
        return next((s for s in self.stations if s.id == sid), None)

    def kitchen(self, kid: str) -> KitchenSpec | None:
        return next((k for k in self.kitchens if k.id == kid), None)


def _first_duplicate(values: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def minutes_of(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


# --------------------------------------------------------------------------- time conversion


def to_minute(ts: datetime) -> int:
    """Whole minutes since the Unix epoch (floor)."""
    if ts.tzinfo is None:
        raise ValueError("time without a UTC offset")
    return int(ts.timestamp() // 60)


def to_minute_ceil(ts: datetime) -> int:
    s = ts.timestamp()
    m = int(s // 60)
    return m if m * 60 == s else m + 1


def from_minute(minute: int, tz: ZoneInfo | None = None) -> datetime:
    dt = datetime.fromtimestamp(minute * 60, tz=UTC)
    return dt.astimezone(tz) if tz is not None else dt


def local_windows(
    open_hhmm: str, close_hhmm: str, tz: ZoneInfo, start: int, end: int
) -> list[tuple[int, int]]:
    """Open hours as epoch-minute intervals for every local day touching [start, end)."""
    day0 = start // 1440
    every = _day_windows(open_hhmm, close_hhmm, tz, day0, max(day0, (end - 1) // 1440))
    return [(w0, w1) for w0, w1 in every if w1 > start and w0 < end]


@lru_cache(maxsize=4096)
def _day_windows(
    open_hhmm: str, close_hhmm: str, tz: ZoneInfo, day0: int, day1: int
) -> tuple[tuple[int, int], ...]:
    """Open hours of every local day touching the UTC epoch days ``day0`` to ``day1``, one day more
    each side (admission asks for them with every order)."""
    start, end = day0 * 1440, (day1 + 1) * 1440
    first = from_minute(start, tz).date() - timedelta(days=1)
    last = from_minute(end, tz).date() + timedelta(days=1)
    o, c = minutes_of(open_hhmm), minutes_of(close_hhmm)
    out = []
    d: date = first
    while d <= last:
        base = datetime.combine(d, time(0, 0), tzinfo=tz)
        w0 = to_minute(base.replace(hour=o // 60, minute=o % 60))
        w1 = to_minute(base.replace(hour=c // 60, minute=c % 60))
        if w1 > start and w0 < end:
            out.append((w0, w1))
        d += timedelta(days=1)
    return tuple(out)


# --------------------------------------------------------------------------- planner view


@dataclass(frozen=True)
class SlotInfo:
    cabinet_id: str
    label: str
    zone: str
    size: str


@dataclass(frozen=True)
class ItemView:
    sku: str
    zone: str
    size: str
    max_hold: int
    steps: tuple[tuple[str, int, int], ...]  # (resource, minutes, batch)
    price_cents: int = 0
    name: str = ""

    @cached_property
    def chain_minutes(self) -> int:
        return sum(m for _, m, _ in self.steps)


@dataclass(frozen=True)
class KitchenView:
    id: str
    capacity: dict[str, int]
    pack: tuple[str, int] | None
    couriers: int
    run_capacity: int
    travel: dict[str, int]
    menu: dict[str, ItemView]
    open_hhmm: str
    close_hhmm: str
    tz: ZoneInfo

    def windows(self, start: int, end: int) -> list[tuple[int, int]]:
        return local_windows(self.open_hhmm, self.close_hhmm, self.tz, start, end)


@dataclass
class World:
    """The network in the planner's terms."""

    kitchens: dict[str, KitchenView]
    slots: dict[str, list[SlotInfo]]  # cabinet -> slots (enabled ones only)
    station_cabinets: dict[str, list[str]]
    tz: ZoneInfo
    disabled: set[tuple[str, str]] = field(default_factory=set)
    _by_size: dict[tuple[str, str], list[tuple[int, list[SlotInfo]]]] = field(
        default_factory=dict, repr=False, compare=False
    )
    # admission's facts about an order that do not depend on its eta (``admission.order_facts``)
    facts: dict[tuple[Any, ...], OrderFacts | Rejection] = field(
        default_factory=dict, repr=False, compare=False
    )

    def slots_by_size(self, cabinet_id: str, zone: str) -> list[tuple[int, list[SlotInfo]]]:
        """A cabinet's slots of one zone, grouped by size rank (smallest first), each group in label
        order."""
        key = (cabinet_id, zone)
        got = self._by_size.get(key)
        if got is None:
            groups: dict[int, list[SlotInfo]] = {}
            for sl in self.slots.get(cabinet_id, ()):
                if sl.zone == zone:
                    groups.setdefault(SIZE_RANK[sl.size], []).append(sl)
            got = [(rank, sorted(g, key=lambda sl: sl.label)) for rank, g in sorted(groups.items())]
            self._by_size[key] = got
        return got

    @classmethod
    def from_spec(cls, spec: NetworkSpec, disabled: Iterable[tuple[str, str]] = ()) -> World:
        tz = spec.tz
        kitchens = {}
        for k in spec.kitchens:
            menu = {
                m.sku: ItemView(
                    m.sku,
                    m.zone,
                    m.size,
                    m.max_hold_minutes,
                    tuple((s.resource, s.minutes, s.batch) for s in m.steps),
                    m.price_cents,
                    m.name,
                )
                for m in k.menu
            }
            kitchens[k.id] = KitchenView(
                k.id,
                {r.id: r.capacity for r in k.resources},
                (k.pack.resource, k.pack.minutes) if k.pack else None,
                k.couriers,
                k.run_capacity,
                dict(k.stations),
                menu,
                k.open,
                k.close,
                tz,
            )
        dis = set(disabled)
        slots = {
            c.id: [s for s in c.slot_list() if (c.id, s.label) not in dis]
            for st in spec.stations
            for c in st.cabinets
        }
        station_cabinets = {st.id: [c.id for c in st.cabinets] for st in spec.stations}
        return cls(kitchens, slots, station_cabinets, tz, dis)


@dataclass(frozen=True)
class Settings:
    """Planner settings, all in minutes."""

    grace: int = 10
    margin: int = 3
    search_minutes: int = 90
    # admission's order of deposit times (``solver.admission.admit``): courier runs arriving up to
    # ``join_window`` before the target or ``late_join`` after it are joined first, then new runs
    # are tried up to ``early_first`` before the target, then the minutes after the target up to
    # eta, then earlier ones. A parcel deposited a minute or two after the target still beats
    # nearly every commuter (few come more than a minute or two before eta), where one deposited
    # well before it adds those minutes to every hold.
    join_window: int = 4
    late_join: int = 2
    early_first: int = 2
    # work moved earlier (to use equipment time now) stays fresh this long past eta plus grace,
    # for commuters who come late
    keep_fresh: int = 10


@dataclass
class OrderReq:
    id: str
    kitchen_id: str
    station_id: str
    eta: int
    items: dict[str, int]
    cabinet_id: str | None = None


@dataclass
class Task:
    id: str
    kitchen_id: str
    resource: str
    kind: Literal["prep", "pack"]
    sku: str | None
    step: int | None  # 1-based; None for pack
    start: int
    end: int
    units: dict[str, int] = field(default_factory=dict)
    frozen: bool = False

    @property
    def total_units(self) -> int:
        return sum(self.units.values())

    def started(self, now: int) -> bool:
        """Started by ``now``, or held where it is: it never moves, and takes no new units."""
        return self.frozen or self.start <= now


@dataclass
class Run:
    id: str
    kitchen_id: str
    station_id: str
    depart: int
    arrive: int
    back: int
    orders: list[str] = field(default_factory=list)
    frozen: bool = False


@dataclass
class Reservation:
    order_id: str
    cabinet_id: str
    zone: str
    size: str  # the parcel's size
    slot: str  # the slot label
    start: int  # deposit
    end: int  # eta + grace (or pickup / expiry once known)
    frozen: bool = False


@dataclass
class Plan:
    orders: dict[str, OrderReq] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    reservations: list[Reservation] = field(default_factory=list)

    def copy(self) -> Plan:
        import copy

        return copy.deepcopy(self)


def parcels_of(order: OrderReq, kitchen: KitchenView) -> dict[str, str]:
    """zone -> parcel size (the largest item size in that zone)."""
    out: dict[str, str] = {}
    for sku in order.items:
        item = kitchen.menu[sku]
        cur = out.get(item.zone)
        if cur is None or SIZE_RANK[item.size] > SIZE_RANK[cur]:
            out[item.zone] = item.size
    return out
