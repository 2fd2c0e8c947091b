"""Use cases. Each owns one transaction; handlers only parse, call one of these and shape the answer.

Placement and every change to a kitchen's plan take advisory transaction locks in one order:
the idempotency keys, then the kitchens, then the stations (each kind sorted). Cabinets are shared
by the kitchens serving a station, so the station lock keeps two kitchens from promising the same
slot time; the exclusion constraint on parcels is the last word.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from db.queries import plans as plan_q
from db.queries.network import STAMP_COLUMNS, load_network, network_stamp, stamp_of
from solver.admission import NEVER, Insertion, PlanState, Rejection, admit, id_factory, later_eta_from
from solver.model import NetworkSpec, OrderReq, Reservation, World, from_minute, to_minute, to_minute_ceil
from solver.model import Settings as PlannerSettings

from . import codes
from .auth import Principal
from .batching import Batcher, Pending, Writing
from .clock import Clock
from .http import Problem, not_found
from .schemas import (
    Alternative,
    OrderItemOut,
    OrderOut,
    OrderPlaced,
    PlaceOrder,
    TimelineEvent,
)
from .settings import Settings

log = logging.getLogger("exitbox.ordering")
LIVE = plan_q.LIVE
NOTIFY_CHANNEL = "exitbox_events"


class WorldCache:
    """The network in planner terms, rebuilt when the network or the disabled slots change."""

    def __init__(self) -> None:
        self._stamp: Any = None
        self._value: tuple[NetworkSpec, World] | None = None

    async def get(
        self, conn: asyncpg.Connection, stamp: tuple[datetime | None, list[tuple[str, str]]] | None = None
    ) -> tuple[NetworkSpec, World]:
        """The world at ``stamp`` (``network_stamp``), read now when not given."""
        loaded, disabled = stamp if stamp is not None else await network_stamp(conn)
        if loaded is None:
            raise Problem(503, "no-network", "no network is loaded yet", headers={"Retry-After": "5"})
        key = (loaded, tuple(disabled))
        if self._value is None or key != self._stamp:
            got = await load_network(conn)
            assert got is not None
            spec = got[0]
            self._value = (spec, World.from_spec(spec, disabled))
            self._stamp = key
        return self._value

    @property
    def current(self) -> tuple[NetworkSpec, World] | None:
        """The world last read, without asking the database whether it still stands."""
        return self._value


@dataclass
class StationSlots:
    """A station's slot time as read from the database at ``at`` (monotonic seconds), then grown by
    this process's own commits: ``rvs[:marks[v]]`` is the slot time at slot version ``v``. A
    kitchen's state that follows this read at version ``v`` catches up by adding ``rvs[marks[v]:]``
    instead of rebuilding its slot books."""

    version: int
    at: float
    rvs: list[Reservation]
    marks: dict[int, int]


@dataclass
class Held:
    """A kitchen's plan state as this process last knew it: the kitchen's plan version, and for each
    station whose slot time it holds, that station's slot version and when it was read."""

    version: int
    world: int
    state: PlanState
    # station -> (slot version, when its slot time was read, the shared read it follows or None)
    stations: dict[str, tuple[int, float, StationSlots | None]] = field(default_factory=dict)


SUGGESTION_LOAD_SECONDS = 1.0


class PlanCache:
    """A kitchen's work ahead and the slot time at its stations, kept between placements.

    A kitchen's entry is used only while its stored plan version stands still (every change to its
    tasks or runs bumps that version), and is checked out while a placement batch changes it. Slot
    time is kept per station with the station's slot version (bumped by every change that adds or
    moves slot time, ``db/migrations/0002``); frees that do not bump it (pickups, expiries) are
    picked up at the latest after ``max_age`` seconds. The exclusion constraint on parcels stays the
    last word."""

    def __init__(self, max_age: float = 10.0) -> None:
        self.max_age = max_age
        self.entries: dict[str, Held] = {}
        self.slots: dict[str, StationSlots] = {}
        self.hits = 0
        self.misses = 0
        self.caught_up = 0  # stations brought up to date by adding what other kitchens added
        self.epoch = 0  # moves whenever entries are dropped for being possibly wrong
        self.suggestion_loaded_at = -SUGGESTION_LOAD_SECONDS
        self.suggestion_loads = 0  # plans loaded for refusals' suggestions
        self.refreshed = 0  # stations' slot time re-read ahead of its age (``refresh``)

    async def checkout(
        self,
        conn: asyncpg.Connection,
        world: World,
        kitchen_id: str,
        version: int,
        slot_versions: dict[str, int],
        now: datetime,
    ) -> tuple[Held, dict[str, int]]:
        """The kitchen's state at plan ``version`` with fresh slot time at the stations of
        ``slot_versions`` (read under the locks, with ``VERSIONS_COLUMNS``), and those versions;
        the entry leaves the cache until ``checkin``. Ids that are not stations are left out (orders
        for them are refused as invalid) so that requests cannot grow the cache."""
        versions = {sid: v for sid, v in slot_versions.items() if sid in world.station_cabinets}
        held = self.entries.pop(kitchen_id, None)
        if held is None or held.version != version or held.world != id(world):
            self.misses += 1
            held = Held(version, id(world), await plan_q.load_state(conn, world, kitchen_id, [], now))
        else:
            self.hits += 1
        clock = time.monotonic()
        fetch = [
            sid
            for sid in sorted(versions)
            if not self._held_fresh(held, sid, versions[sid], clock)
            and not self._shared_fresh(sid, versions[sid], clock)
        ]
        if fetch:
            got = await plan_q.station_reservations(conn, world, fetch, now)
            for sid in fetch:
                cabs = set(world.station_cabinets[sid])
                rvs = [rv for rv in got if rv.cabinet_id in cabs]
                self.slots[sid] = StationSlots(versions[sid], clock, rvs, {versions[sid]: len(rvs)})
        self._catch_up(held, world, versions, clock)
        return held, versions

    def take(self, world: World, wants: dict[str, dict[str, int]]) -> dict[str, Held] | None:
        """``checkout`` without the database, for a batch prepared ahead: each kitchen's entry of
        ``wants`` with the slot time of its stations at the given versions, when all of it is here
        and fresh (the caller then checks those versions and the entries' under the locks); else
        None, and nothing is taken."""
        clock = time.monotonic()
        for kid, versions in wants.items():
            held = self.entries.get(kid)
            if held is None or held.world != id(world):
                return None
            for sid, v in versions.items():
                if not (self._held_fresh(held, sid, v, clock) or self._shared_fresh(sid, v, clock)):
                    return None
        taken = {kid: self.entries.pop(kid) for kid in wants}
        for kid, held in taken.items():
            self.hits += 1
            self._catch_up(held, world, wants[kid], clock)
        return taken

    def _held_fresh(self, held: Held, sid: str, version: int, clock: float) -> bool:
        mine = held.stations.get(sid)
        return mine is not None and mine[0] == version and clock - mine[1] <= self.max_age

    def _shared_fresh(self, sid: str, version: int, clock: float) -> bool:
        entry = self.slots.get(sid)
        return entry is not None and entry.version == version and clock - entry.at <= self.max_age

    def _catch_up(self, held: Held, world: World, versions: dict[str, int], clock: float) -> None:
        """Bring a kitchen's slot time at stations where it is not fresh up to the shared read (at
        ``versions``, which must be there): by adding the tail it missed, else by rebuilding."""
        rebuild = []
        for sid in sorted(versions):
            if self._held_fresh(held, sid, versions[sid], clock):
                continue
            entry, mine = self.slots[sid], held.stations.get(sid)
            if mine is not None and mine[2] is entry and mine[0] in entry.marks:
                held.state.add_reservations(entry.rvs[entry.marks[mine[0]] :])
                held.stations[sid] = (entry.version, entry.at, entry)
                self.caught_up += 1
            else:
                rebuild.append(sid)
        self._rebuild(held, world, rebuild)

    def _rebuild(self, held: Held, world: World, station_ids: list[str]) -> None:
        """A kitchen's slot time at these stations replaced by the shared reads of them."""
        if not station_ids:
            return
        held.state.replace_reservations(
            [c for sid in station_ids for c in world.station_cabinets[sid]],
            [rv for sid in station_ids for rv in self.slots[sid].rvs],
        )
        for sid in station_ids:
            entry = self.slots[sid]
            held.stations[sid] = (entry.version, entry.at, entry)

    async def refresh(self, conn: asyncpg.Connection, world: World, now: datetime, limit: int = 5) -> int:
        """Re-read, oldest first, up to ``limit`` stations whose shared slot time is past half its
        ``max_age``, so that placement batches find it fresh and never stop to read it themselves
        (stations read together would otherwise all age out together, and a batch would read them
        all). A station whose count of parcels says nothing was freed is only marked fresh
        (``_unchanged``); the others are read again (``_reread``). A read that overlaps a drop of
        possibly wrong entries is not used. Returns how many stations were read again."""
        clock = time.monotonic()
        due = sorted((e.at, sid) for sid, e in self.slots.items() if clock - e.at > self.max_age / 2)
        sids = [sid for _, sid in due[:limit]]
        if not sids:
            return 0
        epoch = self.epoch
        # first only count: most often nothing was freed, and the read is then just marked fresh
        counts = await plan_q.station_counts(conn, sids, now)
        if self.epoch != epoch:
            return 0
        sids = [sid for sid in sids if not self._unchanged(sid, counts.get(sid), to_minute(now), clock)]
        if not sids:
            return 0
        versions, rvs = await plan_q.station_slots(conn, world, sids, now)
        if self.epoch != epoch:
            return 0
        await self._reread(world, sids, versions, rvs, clock)
        return len(sids)

    def _unchanged(self, sid: str, count: tuple[int, int] | None, now_m: int, clock: float) -> bool:
        """Whether a station's shared slot time is what the database holds, by ``count`` (its slot
        version and how many parcels hold slot time after now): slot time changes without its
        version moving only by frees, so the same count at a version it has means the same slot
        time. If so, the read and the kitchens' that follow it are marked fresh."""
        entry = self.slots.get(sid)
        if entry is None or count is None or count[0] not in entry.marks:
            return False
        if sum(1 for rv in entry.rvs[: entry.marks[count[0]]] if rv.end > now_m) != count[1]:
            return False
        entry.at = clock
        for held in self.entries.values():
            follows = held.stations.get(sid)
            if follows is not None and follows[2] is entry and follows[0] == entry.version:
                held.stations[sid] = (follows[0], clock, entry)
        return True

    async def _reread(
        self, world: World, sids: list[str], versions: dict[str, int], rvs: list[Reservation], clock: float
    ) -> None:
        """Take a read of these stations' slot time (``plan_q.station_slots``: their ``versions`` and
        the slot time at them) as the shared one. Slot time this process has added in batches not
        yet committed stays on top of the read. The kitchens' states in the cache take the new
        reads at once, one kitchen at a time with placements going on in between (a state a batch
        has checked out meanwhile is left alone), rather than all at once in some placement batch
        when their own reads age out."""
        fresh: dict[str, StationSlots] = {}
        for sid in sids:
            entry, version = self.slots.get(sid), versions.get(sid)
            if version is None:
                continue
            cabs = set(world.station_cabinets.get(sid, []))
            mine = [rv for rv in rvs if rv.cabinet_id in cabs]
            marks = {version: len(mine)}
            if entry is not None and entry.version > version:
                # batches this process wrote ahead are not in the database yet: they stay on top
                if version not in entry.marks:
                    continue
                base = entry.marks[version]
                mine.extend(entry.rvs[base:])
                marks = {v: n - base + marks[version] for v, n in entry.marks.items() if v >= version}
                version = entry.version
            fresh[sid] = self.slots[sid] = StationSlots(version, clock, mine, marks)
            self.refreshed += 1
        for kid, held in list(self.entries.items()):
            if self.entries.get(kid) is not held or held.world != id(world):
                continue
            self._rebuild(
                held,
                world,
                [
                    sid
                    for sid in fresh
                    if sid in held.stations and held.stations[sid][0] <= fresh[sid].version
                ],
            )
            await asyncio.sleep(0)

    def shared_version(self, station_id: str) -> int | None:
        """The slot version of a station's fresh shared read, if this process has one."""
        entry = self.slots.get(station_id)
        if entry is None or time.monotonic() - entry.at > self.max_age:
            return None
        return entry.version

    def grow(
        self, read: dict[str, int], written: dict[str, int], added: list[Reservation], world: World
    ) -> None:
        """After a commit that added ``added`` (slot time at any of its stations, in admission order)
        and moved stations from the ``read`` slot versions to the ``written`` ones: the shared slot
        time grows with it where it followed exactly; a station that moved by more is forgotten."""
        for sid, new in written.items():
            entry = self.slots.get(sid)
            if new == read.get(sid, -1) + 1 and entry is not None and entry.version == read[sid]:
                cabs = set(world.station_cabinets.get(sid, []))
                entry.rvs.extend(rv for rv in added if rv.cabinet_id in cabs)
                entry.version = new
                entry.marks[new] = len(entry.rvs)
            else:
                self.slots.pop(sid, None)

    def checkin(
        self, kitchen_id: str, held: Held, version: int, read: dict[str, int], written: dict[str, int]
    ) -> None:
        """Back into the cache after a commit (and ``grow``): the kitchen now at ``version``. Its state
        must hold all the slot time the commit added at the stations it read (``read``); those
        stations are now at their ``written`` versions. Stations it did not read catch up later."""
        held.version = version
        for sid, new in written.items():
            if sid not in read:
                continue
            mine = held.stations.get(sid)
            if new == read[sid] + 1 and mine is not None:
                entry = self.slots.get(sid)
                follows = entry is not None and mine[2] is entry and entry.version == new
                held.stations[sid] = (new, mine[1], entry if follows else None)
            else:
                held.stations.pop(sid, None)
        self.entries[kitchen_id] = held

    def peek(self, kitchen_id: str, station_id: str) -> PlanState | None:
        """A kitchen's cached state for dry runs (suggestions, never promises) at a station whose
        slot time it holds, however old (it may miss frees since); None when this process has
        none to hand."""
        held = self.entries.get(kitchen_id)
        if held is None or station_id not in held.stations:
            return None
        return held.state

    def may_load_for_suggestions(self) -> bool:
        """Whether a dry run may load a plan from the database now: at most once per
        ``SUGGESTION_LOAD_SECONDS``, so that refusals at rush hour never turn into plan loads on the
        event loop (their other suggestions come from the cache)."""
        clock = time.monotonic()
        if clock - self.suggestion_loaded_at < SUGGESTION_LOAD_SECONDS:
            return False
        self.suggestion_loaded_at = clock
        self.suggestion_loads += 1
        return True

    def forget(self, kitchen_id: str, station_ids: Iterable[str] = ()) -> None:
        self.epoch += 1
        self.entries.pop(kitchen_id, None)
        for sid in station_ids:
            self.slots.pop(sid, None)

    def clear(self) -> None:
        """Forget everything: a batch written on assumptions (``take``) did not get written."""
        self.epoch += 1
        self.entries.clear()
        self.slots.clear()


# The plan versions of some kitchens ($1) and the slot versions of some stations ($2), for
# ``checkout``.
VERSIONS_COLUMNS = """coalesce((select jsonb_object_agg(id, plan_version) from kitchens
                  where id = any($1::text[])), '{}') as versions,
       coalesce((select jsonb_object_agg(id, slot_version) from stations
                  where id = any($2::text[])), '{}') as slots"""


class RateLimiter:
    """A sliding window per key, in this process (each instance limits its own share)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.hits: dict[str, deque[datetime]] = {}

    def hit(self, key: str, now: datetime) -> int:
        """0 if allowed (and counted), else the seconds to wait."""
        window = self.hits.setdefault(key, deque())
        while window and window[0] <= now - timedelta(minutes=1):
            window.popleft()
        if len(window) >= self.per_minute:
            return max(1, int((window[0] + timedelta(minutes=1) - now).total_seconds() + 0.999))
        window.append(now)
        if len(self.hits) > 100_000:  # forget the quiet ones
            self.hits = {k: v for k, v in self.hits.items() if v and v[-1] > now - timedelta(minutes=1)}
        return 0


@dataclass
class Ctx:
    pool: asyncpg.Pool
    settings: Settings
    secret: str
    clock: Clock
    worlds: WorldCache = field(default_factory=WorldCache)
    plans: PlanCache = field(default_factory=PlanCache)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(10))
    placements: Batcher[PlaceRequest] = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.orders_per_minute)
        self.placements = Batcher(
            lambda key, batch: _place_batch(self, key, batch),
            prepare=lambda key, batch: _prepare_placements(self, key, batch),
            # a batch's locks queue at the database behind the batch before it, instead of being
            # asked for after that one's commit (a depth of 3 made smaller batches and measured
            # worse; the figures are in the commit that set this)
            depth=2,
        )

    @property
    def planner(self) -> PlannerSettings:
        return PlannerSettings(grace=self.settings.grace_minutes, margin=self.settings.deposit_margin_minutes)


def new_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(6)}"


def lock_key(name: str) -> int:
    """The advisory lock key of a name (64 bits of its BLAKE2b hash), the same in every process."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


async def lock(conn: asyncpg.Connection, *names: str) -> None:
    """Advisory transaction locks, taken in the order given, in one round trip."""
    await conn.execute(
        "select pg_advisory_xact_lock(k) from unnest($1::bigint[]) as k", [lock_key(n) for n in names]
    )


@contextlib.asynccontextmanager
async def locked_transaction(conn: asyncpg.Connection, *names: str) -> AsyncIterator[None]:
    """A transaction that begins with ``lock(*names)``, both in one round trip (the keys are
    integers, so the statement carries no text from outside); committed on leaving, rolled back
    on any error."""
    keys = ",".join(str(lock_key(n)) for n in names)
    try:
        await conn.execute(f"begin; select pg_advisory_xact_lock(k) from unnest('{{{keys}}}'::bigint[]) as k")
        yield
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            with contextlib.suppress(Exception):
                await conn.execute("rollback")
        raise
    await conn.execute("commit")


EMIT_SQL = """with e as (insert into order_events (order_id, kind, data, at)
                      values ($1, $2, $3, coalesce($4, now())) returning id, at, order_id, kind)
           select pg_notify($5, json_build_object(
                      'id', e.id, 'order_id', e.order_id, 'kind', e.kind, 'at', e.at,
                      'commuter_id', o.commuter_id, 'kitchen_id', o.kitchen_id,
                      'station_id', o.station_id, 'cabinet_id', o.cabinet_id, 'status', o.status)::text)
             from e join orders o on o.id = e.order_id"""


async def emit(
    conn: asyncpg.Connection,
    order_id: str,
    kind: str,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Record a timeline event and tell every instance (NOTIFY is sent on commit): one round trip."""
    await conn.execute(EMIT_SQL, order_id, kind, data or {}, at, NOTIFY_CHANNEL)


def _item_lines(spec: NetworkSpec, kitchen_id: str, items: dict[str, int]) -> list[OrderItemOut]:
    k = spec.kitchen(kitchen_id)
    out = []
    for sku, qty in items.items():
        m = k.item(sku) if k else None
        out.append(
            OrderItemOut(sku=sku, name=m.name if m else sku, qty=qty, price_cents=m.price_cents if m else 0)
        )
    return out


def _items_of(body_items: list[Any]) -> dict[str, int]:
    items: dict[str, int] = {}
    for it in body_items:
        items[it.sku] = items.get(it.sku, 0) + it.qty
    return items


# --------------------------------------------------------------------------- offer


def earliest_eta(
    world: World, kitchen_ids: list[str], station_id: str, now: datetime, margin: int
) -> datetime:
    """The first pickup time for which some item of these kitchens can be cooked and delivered."""
    now_m = to_minute_ceil(now)
    best: int | None = None
    for kid in kitchen_ids:
        k = world.kitchens[kid]
        travel = k.travel[station_id]
        for item in k.menu.values():
            chain = item.chain_minutes + (k.pack[1] if k.pack else 0)
            for w0, w1 in k.windows(now_m, now_m + 3 * 24 * 60):
                ready = max(now_m, w0) + chain
                if ready <= w1:
                    eta = ready + travel + margin
                    best = eta if best is None else min(best, eta)
                    break
    return from_minute(best if best is not None else now_m)


# --------------------------------------------------------------------------- place


def _request_hash(principal: Principal, body: PlaceOrder) -> str:
    raw = json.dumps(body.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(f"{principal.subject}|{raw}".encode()).hexdigest()


@dataclass
class PlaceRequest:
    principal: Principal
    body: PlaceOrder
    idem_key: str | None
    request_hash: str
    items: dict[str, int]

    @property
    def idem(self) -> tuple[str, str] | None:
        return None if self.idem_key is None else (self.principal.subject, self.idem_key)


async def place(
    ctx: Ctx, principal: Principal, body: PlaceOrder, idem_key: str | None
) -> tuple[int, dict[str, Any]]:
    """Confirm an order with a pickup code, or raise 409 no-capacity with alternatives.

    Placements are written in batches (``service.batching``): the orders that arrive while a batch
    is being written are admitted one after another, kitchen by kitchen in arrival order, and
    stored together in the next transaction."""
    if idem_key is not None and not (1 <= len(idem_key) <= 128):
        raise Problem(400, "bad-idempotency-key", "Idempotency-Key must be 1 to 128 characters")
    # the request hash only serves an Idempotency-Key (a repeat must carry the same request)
    digest = "" if idem_key is None else _request_hash(principal, body)
    req = PlaceRequest(principal, body, idem_key, digest, _items_of(body.items))
    result: tuple[int, dict[str, Any]] = await ctx.placements.submit("orders", req)
    return result


@dataclass
class _Placed:
    pending: Pending[PlaceRequest]
    insertion: Insertion
    total: int
    code: str = ""
    code_hash: bytes = b""
    out: dict[str, Any] = field(default_factory=dict)  # the 201 answer, once its code is drawn


async def _place_batch(
    ctx: Ctx, _key: str, batch: list[Pending[PlaceRequest]]
) -> list[Pending[PlaceRequest]]:
    try:
        return await _place_batch_once(ctx, batch)
    except asyncpg.ExclusionViolationError:
        # cached slot time missed a change: nothing was written; forget it and read afresh
        kitchens = sorted({p.item.body.kitchen_id for p in batch})
        log.warning("placement batch at %s met a slot taken meanwhile; retrying from the database", kitchens)
        for kid in kitchens:
            ctx.plans.forget(kid, {p.item.body.station_id for p in batch})
        return await _place_batch_once(ctx, [p for p in batch if p.open])


@dataclass
class _KitchenTurn:
    """One kitchen's part of a placement batch."""

    kitchen_id: str
    work: list[Pending[PlaceRequest]]
    state: PlanState | None = None  # the held plan's; an empty one made at admission when none is held
    held: Held | None = None
    read: dict[str, int] = field(default_factory=dict)
    placed: int = 0
    seen: dict[str, int] = field(default_factory=dict)  # station -> batch additions in its state


@dataclass
class _Batch:
    """A placement batch: its requests by kitchen, and once admitted, what it placed and refused."""

    world: World
    now: datetime
    again: list[Pending[PlaceRequest]]  # a second request with a key already in the batch: next time
    keyed: dict[tuple[str, str], Pending[PlaceRequest]]
    turns: dict[str, _KitchenTurn]
    placed: list[_Placed] = field(default_factory=list)
    rejected: list[tuple[Pending[PlaceRequest], OrderReq, Rejection, PlanState]] = field(default_factory=list)
    added: dict[str, list[Reservation]] = field(default_factory=dict)  # station -> slot time taken, in order

    @classmethod
    def of(cls, world: World, now: datetime, batch: list[Pending[PlaceRequest]]) -> _Batch:
        again: list[Pending[PlaceRequest]] = []
        keyed: dict[tuple[str, str], Pending[PlaceRequest]] = {}
        turns: dict[str, _KitchenTurn] = {}
        for p in batch:
            idem = p.item.idem
            if idem is not None:
                if idem in keyed:
                    again.append(p)
                    continue
                keyed[idem] = p
            kid = p.item.body.kitchen_id
            if kid not in turns:
                turns[kid] = _KitchenTurn(kid, [])
            turns[kid].work.append(p)
        return cls(world, now, again, keyed, turns)

    @property
    def kitchens(self) -> list[str]:
        return sorted(self.turns)

    @property
    def stations(self) -> list[str]:
        return sorted({p.item.body.station_id for t in self.turns.values() for p in t.work})

    def lock_names(self) -> list[str]:
        return [
            *[f"idem:{s}:{k}" for s, k in sorted(self.keyed)],
            *[f"kitchen:{k}" for k in self.kitchens],
            *[f"station:{s}" for s in self.stations],
        ]

    def admit(self, ctx: Ctx) -> None:
        """Kitchens take their turns in order of arrival; each admits its open orders against its
        state plus the slot time that kitchens before it in this batch took at its stations."""
        now_m = to_minute_ceil(self.now)
        world = self.world
        for turn in self.turns.values():
            if turn.held is not None:
                for sid in turn.read:
                    turn.held.state.add_reservations(self.added.get(sid, []))
            state = turn.state = turn.state or PlanState(world)  # none held (unknown kitchen): empty
            for p in turn.work:
                if not p.open:
                    continue
                body = p.item.body
                order = OrderReq(
                    new_id("o"), turn.kitchen_id, body.station_id, to_minute(body.eta), p.item.items
                )
                result = admit(world, state, order, now_m, ctx.planner, new_id)
                if isinstance(result, Rejection):
                    self.rejected.append((p, order, result, state))
                    continue
                state.apply(result)
                turn.placed += 1
                self.added.setdefault(body.station_id, []).extend(result.reservations)
                menu = world.kitchens[turn.kitchen_id].menu
                self.placed.append(
                    _Placed(p, result, sum(menu[s].price_cents * q for s, q in order.items.items()))
                )
            turn.seen = {sid: len(self.added.get(sid, [])) for sid in turn.read}

    def check_in(self, ctx: Ctx, read: dict[str, int], written: dict[str, int]) -> None:
        """The caches after the batch's write, which moved its stations from the ``read`` slot
        versions to the ``written`` ones: the shared slot time grows, and each kitchen's state gets
        what kitchens after it took at its stations and goes back in the cache."""
        stations = self.stations
        ctx.plans.grow(read, written, [rv for sid in stations for rv in self.added.get(sid, [])], self.world)
        for turn in self.turns.values():
            if turn.held is not None:
                for sid, n in turn.seen.items():
                    turn.held.state.add_reservations(self.added.get(sid, [])[n:])
                version = turn.held.version + (1 if turn.placed else 0)
                ctx.plans.checkin(turn.kitchen_id, turn.held, version, turn.read, written)

    def refuse(self, ctx: Ctx) -> None:
        """The refused get their 409 with alternatives, in a task of their own (dry runs that may
        read other kitchens' plans: the next batch need not wait). A refusal writes nothing, so a
        prepared batch answers them as soon as its read under its locks has shown that what it was
        prepared on holds (and no Idempotency-Key of it is stored), before its write."""
        if self.rejected:
            ctx.placements.later(_refuse(ctx, self.world, self.rejected, self.now))
            self.rejected = []

    def answer(self, ctx: Ctx) -> list[Pending[PlaceRequest]]:
        """After the commit: the confirmed get their 201, the refused not answered yet their 409
        (``refuse``); returns the requests for the next batch."""
        for pl in self.placed:
            pl.pending.resolve((201, pl.out))
        self.refuse(ctx)
        return self.again


# The batch's read under its locks: the network stamp, plan and slot versions ($1 kitchens, $2
# stations) and the idempotency keys already stored ($3 commuters, $4 keys).
BATCH_READ_SQL = f"""select {STAMP_COLUMNS}, {VERSIONS_COLUMNS},
       (select coalesce(jsonb_agg(jsonb_build_object('commuter_id', commuter_id,
                   'key', key, 'request_hash', request_hash, 'status', status,
                   'response', response)), '[]')
          from idempotency_keys
         where (commuter_id, key) in (select * from unnest($3::text[], $4::text[]))) as idem"""


async def _read_batch(conn: asyncpg.Connection, b: _Batch) -> asyncpg.Record:
    return await conn.fetchrow(
        BATCH_READ_SQL, b.kitchens, b.stations, [s for s, _ in b.keyed], [k for _, k in b.keyed]
    )


async def _place_batch_once(ctx: Ctx, batch: list[Pending[PlaceRequest]]) -> list[Pending[PlaceRequest]]:
    """One transaction for a batch of placements at any kitchens, admitted under its locks; returns
    those to retry (a second request with an Idempotency-Key already in this batch waits for the
    next)."""
    async with ctx.pool.acquire() as conn:
        spec, world = ctx.worlds.current or await ctx.worlds.get(conn)
        b = _Batch.of(world, ctx.clock.now(), batch)
        async with locked_transaction(conn, *b.lock_names()):
            row = await _read_batch(conn, b)
            for done in row["idem"]:
                p = b.keyed[(done["commuter_id"], done["key"])]
                if done["request_hash"] != p.item.request_hash:
                    p.fail(
                        Problem(
                            422,
                            "idempotency-key-reused",
                            "this Idempotency-Key was used with a different request",
                        )
                    )
                else:
                    p.resolve((done["status"], done["response"]))
            spec, world = await ctx.worlds.get(conn, stamp_of(row))
            if world is not b.world:  # the network changed just now
                b = _Batch.of(world, b.now, [p for p in batch if p.open])
            for turn in b.turns.values():
                version = row["versions"].get(turn.kitchen_id)
                mine = sorted({p.item.body.station_id for p in turn.work})
                if turn.kitchen_id in world.kitchens and version is not None:
                    turn.held, turn.read = await ctx.plans.checkout(
                        conn,
                        world,
                        turn.kitchen_id,
                        version,
                        {s: row["slots"].get(s, 0) for s in mine},
                        b.now,
                    )
                    turn.state = turn.held.state
            b.admit(ctx)
            written: dict[str, int] = {}
            if b.placed:
                written = await _store_placements(ctx, conn, b.placed, spec)
        b.check_in(ctx, {sid: row["slots"].get(sid, 0) for sid in b.stations}, written)
    return b.answer(ctx)


def _prepare_placements(
    ctx: Ctx, _key: str, batch: list[Pending[PlaceRequest]]
) -> Writing[PlaceRequest] | None:
    """The pipeline's first stage (``Batcher``'s ``prepare``): admit a batch on this process's
    cached plans while the previous batch is being written, assuming that write succeeds, and put
    the result in the caches at once (the next batch builds on it). Returns the batch's writing
    (``_write_prepared``), or None when the caches lack something (the batch then goes the ordinary
    way, admitted under its locks)."""
    current = ctx.worlds.current
    if current is None:
        return None
    spec, world = current
    b = _Batch.of(world, ctx.clock.now(), batch)
    read: dict[str, int] = {}
    for sid in b.stations:
        version = ctx.plans.shared_version(sid)
        if version is None:
            return None
        read[sid] = version
    known = [t for t in b.turns.values() if t.kitchen_id in world.kitchens]  # the others: refused
    wants = {
        t.kitchen_id: {p.item.body.station_id: read[p.item.body.station_id] for p in t.work} for t in known
    }
    taken = ctx.plans.take(world, wants)
    if taken is None:
        return None
    for turn in known:
        turn.held, turn.read = taken[turn.kitchen_id], wants[turn.kitchen_id]
        turn.state = turn.held.state
    epoch = ctx.plans.epoch
    versions = {kid: held.version for kid, held in taken.items()}
    b.admit(ctx)
    written = {sid: read[sid] + 1 for sid in b.stations if b.added.get(sid)}
    b.check_in(ctx, read, written)
    busy = asyncio.Event()
    return Writing(_write_prepared(ctx, spec, b, epoch, versions, read, written, batch, busy), busy)


async def _write_prepared(
    ctx: Ctx,
    spec: NetworkSpec,
    b: _Batch,
    epoch: int,
    versions: dict[str, int],
    read: dict[str, int],
    written: dict[str, int],
    batch: list[Pending[PlaceRequest]],
    busy: asyncio.Event,
) -> list[Pending[PlaceRequest]]:
    """Write a prepared batch if, under its locks, everything it was prepared on still holds: the
    caches were not dropped since, the network, every kitchen's plan version and every station's
    slot version are those it assumed, and none of its Idempotency-Keys is stored. Otherwise the
    caches are dropped and the batch is placed the ordinary way. It may begin while the previous
    batch's writing is still at work (``Batcher`` depth 2): its locks then wait for that one's
    commit or rollback at the database, and what it reads under them tells which it was."""
    try:
        async with ctx.pool.acquire() as conn:
            async with locked_transaction(conn, *b.lock_names()):
                row = await _read_batch(conn, b)
                _, world = await ctx.worlds.get(conn, stamp_of(row))
                holds = (
                    # asked under the locks: a writing before this one may have dropped the caches
                    # and written its batch again, the ordinary way, meanwhile; the versions it
                    # left can be the very ones assumed here, on other plans
                    ctx.plans.epoch == epoch
                    and world is b.world
                    and not row["idem"]
                    and all(row["versions"].get(k) == v for k, v in versions.items())
                    and all(row["slots"].get(s) == v for s, v in read.items())
                )
                if holds:
                    busy.set()  # the next batch may be prepared while this one is stored
                    b.refuse(ctx)
                    got = await _store_placements(ctx, conn, b.placed, spec) if b.placed else {}
            if holds:
                if got != written:  # written, but not as the caches assumed
                    ctx.plans.clear()
                return b.answer(ctx)
    except asyncpg.ExclusionViolationError:  # nothing was written
        log.warning("a prepared placement batch met a slot taken meanwhile; admitting it again")
    except BaseException:
        ctx.plans.clear()
        raise
    ctx.plans.clear()
    later = {id(p) for p in b.again}
    return [*b.again, *await _place_batch(ctx, "orders", [p for p in batch if p.open and id(p) not in later])]


async def _refuse(
    ctx: Ctx,
    world: World,
    rejected: list[tuple[Pending[PlaceRequest], OrderReq, Rejection, PlanState]],
    now: datetime,
) -> None:
    """Answer refused placements: 409 no-capacity with the reason and alternatives."""
    try:
        for p, order, rej, state in rejected:
            alts = await alternatives(ctx, world, state, order, now, rej)
            p.fail(
                Problem(
                    409,
                    "no-capacity",
                    rej.detail,
                    title="The order cannot be confirmed",
                    reason=rej.reason,
                    alternatives=[a.model_dump(mode="json") for a in alts],
                )
            )
    except Exception as exc:
        for p, *_ in rejected:
            p.fail(exc)


def _placed_out(spec: NetworkSpec, kitchen_id: str, pl: _Placed) -> dict[str, Any]:
    body = pl.pending.item.body
    return OrderPlaced(
        id=pl.insertion.order.id,
        status="confirmed",
        cabinet_id=pl.insertion.reservations[0].cabinet_id,
        pickup_code=pl.code,
        eta=body.eta,
        total_cents=pl.total,
        items=_item_lines(spec, kitchen_id, pl.pending.item.items),
    ).model_dump(mode="json")


# One statement stores a batch of placements: orders, plan rows (``PLAN_WRITES``), timeline events
# (each NOTIFYed on commit, in event order), idempotency keys and the kitchen's plan version. It
# writes nothing when one of the drawn pickup codes is already live at its cabinet, and returns
# those codes (``clash``) to be drawn again. Its own parameters follow ``PLAN_WRITES``'s $1..$28.
PLACE_SQL = f"""
with new_orders as (
        select * from unnest($29::text[], $30::text[], $31::text[], $32::text[], $33::text[],
                             $34::timestamptz[], $35::text[], $36::int[], $37::bytea[], $38::text[],
                             $39::timestamptz[], $40::text[])
             as n(id, commuter_id, station_id, cabinet_id, kitchen_id, eta, items, total_cents,
                  code_hash, code_sealed, ready_at, placed)),
    -- one probe of the live-code index per new order: a subquery in the condition stays a
    -- per-row look-up, where a join (under the statement's generic plan) read every live order
    clash as materialized (
        select n.code_hash from new_orders n
         where (select true from orders o
                 where o.cabinet_id = n.cabinet_id and o.code_hash = n.code_hash and o.{plan_q.LIVE_STATUS}
                 limit 1)),
    go as materialized (select not exists (select 1 from clash) as ok),
    orders_in as (
        insert into orders (id, commuter_id, station_id, cabinet_id, kitchen_id, eta, items,
                            total_cents, status, code_hash, code_sealed, ready_at)
        select id, commuter_id, station_id, cabinet_id, kitchen_id, eta, items::jsonb, total_cents,
               'confirmed', code_hash, code_sealed, ready_at
          from new_orders where (select ok from go)),
    {plan_q.PLAN_WRITES},
    kitchen_bump as (
        update kitchens set plan_version = plan_version + 1
         where id in (select kitchen_id from new_orders) and (select ok from go)),
    events_in as (
        insert into order_events (order_id, kind, data)
        select id, 'placed', placed::jsonb from new_orders where (select ok from go)
        returning id, at, order_id),
    keys_in as (
        insert into idempotency_keys (commuter_id, key, request_hash, status, response)
        select c, k, h, 201, r::jsonb
          from unnest($41::text[], $42::text[], $43::text[], $44::text[]) as i(c, k, h, r)
         where (select ok from go))
select (select coalesce(array_agg(code_hash), '{{}}') from clash) as clash,
       {plan_q.WRITTEN} as written,
       (select count(pg_notify($45, x.payload))
          from (select json_build_object('id', e.id, 'order_id', e.order_id, 'kind', 'placed',
                                         'at', e.at, 'commuter_id', n.commuter_id,
                                         'kitchen_id', n.kitchen_id, 'station_id', n.station_id,
                                         'cabinet_id', n.cabinet_id, 'status', 'confirmed')::text as payload
                  from events_in e join new_orders n on n.id = e.order_id order by e.id) x) as notified"""


async def _store_placements(
    ctx: Ctx, conn: asyncpg.Connection, placed: list[_Placed], spec: NetworkSpec
) -> dict[str, int]:
    """Draw each placement a pickup code, unique among the live orders of its cabinet (the keyed
    hash covers cabinet and code) and within the batch, and write the batch (``PLACE_SQL``); the
    new slot versions."""
    plan_rows = plan_q.insertion_rows([pl.insertion for pl in placed])
    events = [
        json.dumps(
            {
                "deposit_at": from_minute(pl.insertion.deposit).isoformat(),
                "slots": [r.slot for r in pl.insertion.reservations],
            }
        )
        for pl in placed
    ]
    todo = list(placed)
    drawn: set[bytes] = set()
    for _ in range(50):
        for pl in todo:
            cabinet = pl.insertion.reservations[0].cabinet_id
            while True:
                pl.code = codes.new_code()
                pl.code_hash = codes.code_hash(ctx.secret, cabinet, pl.code)
                if pl.code_hash not in drawn:
                    break
            drawn.add(pl.code_hash)
            pl.out = _placed_out(spec, pl.insertion.order.kitchen_id, pl)
        keyed = [pl for pl in placed if pl.pending.item.idem_key is not None]
        row = await conn.fetchrow(
            PLACE_SQL,
            *plan_rows,
            [pl.insertion.order.id for pl in placed],
            [pl.pending.item.principal.subject for pl in placed],
            [pl.pending.item.body.station_id for pl in placed],
            [pl.insertion.reservations[0].cabinet_id for pl in placed],
            [pl.insertion.order.kitchen_id for pl in placed],
            [pl.pending.item.body.eta for pl in placed],
            [json.dumps([{"sku": s, "qty": q} for s, q in pl.pending.item.items.items()]) for pl in placed],
            [pl.total for pl in placed],
            [pl.code_hash for pl in placed],
            [codes.seal(ctx.secret, pl.insertion.order.id, pl.code) for pl in placed],
            [from_minute(pl.insertion.ready) for pl in placed],
            events,
            [pl.pending.item.principal.subject for pl in keyed],
            [pl.pending.item.idem_key for pl in keyed],
            [pl.pending.item.request_hash for pl in keyed],
            [json.dumps(pl.out) for pl in keyed],
            NOTIFY_CHANNEL,
        )
        clash = set(row["clash"])
        if not clash:
            return dict(row["written"])
        todo = [pl for pl in placed if pl.code_hash in clash]
    raise Problem(503, "busy", "could not draw a free pickup code; try again", headers={"Retry-After": "1"})


async def _bump(conn: asyncpg.Connection, kitchen_id: str) -> None:
    await conn.execute("update kitchens set plan_version = plan_version + 1 where id = $1", kitchen_id)


async def alternatives(
    ctx: Ctx,
    world: World,
    state: PlanState,
    order: OrderReq,
    now: datetime,
    refused: Rejection,
    limit: int = 4,
) -> list[Alternative]:
    """Dry runs: a later (or earlier) eta here, another kitchen at this station, another station.
    Other kitchens' and stations' states come from the plan cache (they may be a placement or two
    behind, or miss recent frees: an alternative is a suggestion, admission decides), loaded from
    the database only within a small budget (``suggestion_state``). When the order was ``refused``
    because the station's cabinets are full then, no other kitchen is tried there at that eta: they
    share those cabinets; a later eta here tries only arrivals after the refused one's eta when
    those up to it are known to fail (``later_eta_from``)."""
    out: list[Alternative] = []
    now_m = to_minute_ceil(now)
    dry_ids = id_factory("-dry-")  # a dry run's tasks and runs are thrown away: no random ids for them

    def fits(st: PlanState, o: OrderReq, after: int = NEVER) -> bool:  # ``o`` is made for the dry run
        return isinstance(
            admit(world, st, o, now_m, ctx.planner, dry_ids, explain=False, after=after), Insertion
        )

    for delta in (10, 20, 30, 45, 60, -10, -20):
        o = OrderReq(order.id, order.kitchen_id, order.station_id, order.eta + delta, order.items)
        if o.eta > now_m and fits(state, o, later_eta_from(refused, order, o.eta)):
            out.append(Alternative(station_id=o.station_id, kitchen_id=o.kitchen_id, eta=from_minute(o.eta)))
            if len(out) >= 2:
                break
    for kid, k in sorted(world.kitchens.items()) if refused.reason != "no-cabinet-capacity" else ():
        if len(out) >= limit:  # no dry run (or plan load) whose answer would be cut off
            break
        if kid == order.kitchen_id or order.station_id not in k.travel:
            continue
        if not all(s in k.menu for s in order.items):
            continue
        st = await suggestion_state(ctx, world, kid, order.station_id, now)
        o = OrderReq(order.id, kid, order.station_id, order.eta, order.items)
        if st is not None and fits(st, o):
            out.append(Alternative(station_id=o.station_id, kitchen_id=kid, eta=from_minute(o.eta)))
    own = world.kitchens.get(order.kitchen_id)
    if own is not None and len(out) < limit:
        others = sorted((t, s) for s, t in own.travel.items() if s != order.station_id)
        for _, sid in others[:3]:
            st = await suggestion_state(ctx, world, order.kitchen_id, sid, now)
            o = OrderReq(order.id, order.kitchen_id, sid, order.eta, order.items)
            if st is not None and fits(st, o):
                out.append(Alternative(station_id=sid, kitchen_id=o.kitchen_id, eta=from_minute(o.eta)))
                break
    return out[:limit]


async def suggestion_state(
    ctx: Ctx, world: World, kitchen_id: str, station_id: str, now: datetime
) -> PlanState | None:
    """A state for a dry run at another kitchen or station: the cached one, else one loaded from
    the database when the load budget allows, else None (that suggestion is left out)."""
    st = ctx.plans.peek(kitchen_id, station_id)
    if st is None and ctx.plans.may_load_for_suggestions():
        async with ctx.pool.acquire() as conn:
            st = await plan_q.load_state(conn, world, kitchen_id, [station_id], now)
    return st


# --------------------------------------------------------------------------- read


async def _order_row(
    conn: asyncpg.Connection, order_id: str, principal: Principal, for_update: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "select * from orders where id = $1" + (" for update" if for_update else ""), order_id
    )
    if row is None or not (
        principal.role == "admin"
        or (principal.role == "commuter" and row["commuter_id"] == principal.subject)
    ):
        raise not_found(f"order {order_id}")
    return row


async def order_view(ctx: Ctx, conn: asyncpg.Connection, row: asyncpg.Record) -> OrderOut:
    spec, _ = await ctx.worlds.get(conn)
    parcels = await conn.fetch(
        """select p.zone, s.label, p.state from parcels p left join slots s on s.id = p.slot_id
            where p.order_id = $1 order by p.zone""",
        row["id"],
    )
    deposit_at = await conn.fetchval(
        "select r.arrive_at from run_orders o join runs r on r.id = o.run_id where o.order_id = $1",
        row["id"],
    )
    events = await conn.fetch(
        "select at, kind, data from order_events where order_id = $1 order by id", row["id"]
    )
    live = row["status"] in LIVE
    return OrderOut(
        id=row["id"],
        status=row["status"],
        station_id=row["station_id"],
        cabinet_id=row["cabinet_id"],
        kitchen_id=row["kitchen_id"],
        eta=row["eta"],
        items=_item_lines(spec, row["kitchen_id"], {i["sku"]: i["qty"] for i in row["items"]}),
        total_cents=row["total_cents"],
        refund_cents=row["refund_cents"],
        pickup_code=codes.unseal(ctx.secret, row["id"], row["code_sealed"]) if live else None,
        ready_at=row["ready_at"],
        deposit_at=deposit_at,
        deposited_at=row["deposited_at"],
        picked_up_at=row["picked_up_at"],
        slots=[p["label"] or "overflow" for p in parcels if p["state"] != "released"],
        timeline=[TimelineEvent(at=e["at"], kind=e["kind"], data=e["data"]) for e in events],
    )


async def get_order(ctx: Ctx, principal: Principal, order_id: str) -> OrderOut:
    async with ctx.pool.acquire() as conn:
        row = await _order_row(conn, order_id, principal)
        return await order_view(ctx, conn, row)


# --------------------------------------------------------------------------- change eta, cancel


async def _live_order(
    conn: asyncpg.Connection, order_id: str, principal: Principal, now: datetime
) -> tuple[asyncpg.Record, bool]:
    """A live order of this principal, locked (kitchen, station, row) for a change, and whether any
    of its cooking has started."""
    row = await _order_row(conn, order_id, principal)
    await lock(conn, f"kitchen:{row['kitchen_id']}", f"station:{row['station_id']}")
    row = await _order_row(conn, order_id, principal, for_update=True)
    if row["status"] not in LIVE:
        raise Problem(409, "not-live", f"order {order_id} is already {row['status']}")
    started = await conn.fetchval(
        """select exists (select 1 from task_units u join tasks t on t.id = u.task_id
                           where u.order_id = $1 and (t.status = 'done' or t.start_at <= $2))""",
        order_id,
        now,
    )
    return row, bool(started)


async def change_eta(ctx: Ctx, principal: Principal, order_id: str, eta: datetime) -> OrderOut:
    now = ctx.clock.now()
    settings = ctx.planner
    async with ctx.pool.acquire() as conn, conn.transaction():
        row, started = await _live_order(conn, order_id, principal, now)
        _spec, world = await ctx.worlds.get(conn)
        new_eta = to_minute(eta)
        if row["status"] == "confirmed" and not started:
            await plan_q.release_order(conn, order_id, row["kitchen_id"], now)
            state = await plan_q.load_state(conn, world, row["kitchen_id"], [row["station_id"]], now)
            items = {i["sku"]: i["qty"] for i in row["items"]}
            order = OrderReq(
                order_id, row["kitchen_id"], row["station_id"], new_eta, items, row["cabinet_id"]
            )
            result = admit(world, state, order, to_minute_ceil(now), settings, new_id)
            if isinstance(result, Rejection):
                order.cabinet_id = None
                result = admit(world, state, order, to_minute_ceil(now), settings, new_id)
            if isinstance(result, Rejection):
                raise Problem(
                    409,
                    "no-capacity",
                    f"cannot move the order to that time: {result.detail}",
                    reason=result.reason,
                )
            cabinet = result.reservations[0].cabinet_id
            if cabinet != row["cabinet_id"]:
                code = codes.unseal(ctx.secret, order_id, row["code_sealed"])
                clash = await conn.fetchval(
                    """select 1 from orders where cabinet_id = $1 and code_hash = $2
                          and status = any($3::text[]) and id <> $4""",
                    cabinet,
                    codes.code_hash(ctx.secret, cabinet, code),
                    list(LIVE),
                    order_id,
                )
                if clash:
                    raise Problem(409, "no-capacity", "cannot move the order to that time")
                await conn.execute(
                    "update orders set cabinet_id = $2, code_hash = $3 where id = $1",
                    order_id,
                    cabinet,
                    codes.code_hash(ctx.secret, cabinet, code),
                )
            await plan_q.write_insertions(conn, [result])
            await conn.execute(
                "update orders set eta = $2, ready_at = $3, updated_at = now() where id = $1",
                order_id,
                eta,
                from_minute(result.ready),
            )
        else:
            # work has started: only the slot time can follow the commuter
            parcels = await conn.fetch(
                "select id, during, expires_at, state from parcels where order_id = $1 "
                "and state in ('reserved', 'deposited')",
                order_id,
            )
            deposit = max(p["during"].lower for p in parcels) if parcels else now
            end = eta + timedelta(minutes=settings.grace)
            if eta < deposit:
                raise Problem(
                    409,
                    "too-early",
                    f"the food reaches the cabinet at {deposit.isoformat()}; "
                    "an earlier time is no longer possible",
                )
            if any(end > p["expires_at"] for p in parcels):
                raise Problem(409, "not-fresh", "the food would not stay fresh until then")
            try:
                async with conn.transaction():
                    for p in parcels:
                        await conn.execute(
                            "update parcels set during = tstzrange(lower(during), $2) where id = $1",
                            p["id"],
                            end,
                        )
                    await plan_q.bump_slot_versions(conn, [row["cabinet_id"]])
            except asyncpg.ExclusionViolationError:
                raise Problem(
                    409, "no-cabinet-capacity", "the slot is promised to another order at that time"
                ) from None
            await conn.execute("update orders set eta = $2, updated_at = now() where id = $1", order_id, eta)
        await _bump(conn, row["kitchen_id"])
        await emit(conn, order_id, "eta-changed", {"from": row["eta"].isoformat(), "to": eta.isoformat()})
        row = await _order_row(conn, order_id, principal)
        return await order_view(ctx, conn, row)


async def cancel(ctx: Ctx, principal: Principal, order_id: str) -> OrderOut:
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn, conn.transaction():
        row, started = await _live_order(conn, order_id, principal, now)
        if row["status"] in ("on_the_way", "in_cabinet"):
            refund, rule = 0, "the food has left the kitchen"
        elif started or row["status"] == "cooking":
            refund, rule = row["total_cents"] // 2, "cooking had started: half refunded"
        else:
            refund, rule = row["total_cents"], "nothing was cooked yet: fully refunded"
        await plan_q.release_order(conn, order_id, row["kitchen_id"], now)
        await conn.execute(
            """update parcels set state = 'expired', removed_at = null
                where order_id = $1 and state = 'deposited'""",
            order_id,
        )
        await conn.execute(
            "update orders set status = 'cancelled', refund_cents = $2, updated_at = now() where id = $1",
            order_id,
            refund,
        )
        await _bump(conn, row["kitchen_id"])
        await emit(conn, order_id, "cancelled", {"refund_cents": refund, "rule": rule})
        row = await _order_row(conn, order_id, principal)
        return await order_view(ctx, conn, row)
