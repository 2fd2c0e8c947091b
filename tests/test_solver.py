"""The pure planner: admission on the tiny morning, and a checker that catches broken plans."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from solver.admission import Couriers, Insertion, PlanState, Rejection, admit, id_factory, offerable
from solver.check import check
from solver.model import NetworkSpec, OrderReq, Plan, Settings, Task, World, to_minute

from .conftest import EXAMPLES, tiny_network

S = Settings()


def world() -> World:
    return World.from_spec(tiny_network())


def morning() -> list[tuple[int, OrderReq]]:
    out = []
    with open(EXAMPLES / "tiny-orders.csv", newline="") as f:
        for row in csv.DictReader(f):
            items: dict[str, int] = {}
            for part in row["items"].split(";"):
                sku, qty = part.split("*")
                items[sku] = items.get(sku, 0) + int(qty)
            out.append(
                (
                    to_minute(datetime.fromisoformat(row["placed_at"])),
                    OrderReq(
                        row["order_id"],
                        row["kitchen_id"],
                        row["station_id"],
                        to_minute(datetime.fromisoformat(row["eta"])),
                        items,
                    ),
                )
            )
    return out


def bakery_before_first_eta(
    pack: int = 1, couriers: int = 1, before: int = 120
) -> tuple[World, PlanState, Callable[[str], str], int, int]:
    """The tiny world with ``pack`` packing stations and ``couriers`` couriers (when packing or
    couriers are not what a test is about), an empty state, ids, the first morning order's eta and
    ``before`` minutes before it."""
    w = world()
    w.kitchens["bakery"].capacity["pack"] = pack
    w.kitchens["bakery"] = replace(w.kitchens["bakery"], couriers=couriers)
    eta = morning()[0][1].eta
    return w, PlanState(w), id_factory(), eta, eta - before


def placed(
    w: World,
    state: PlanState,
    oid: str,
    eta: int,
    items: dict[str, int],
    now: int,
    new_id: Callable[[str], str],
    station: str = "north",
) -> Insertion:
    """An order of the bakery for ``station``, admitted (it must fit) and applied."""
    ins = admit(w, state, OrderReq(oid, "bakery", station, eta, items), now, S, new_id)
    assert isinstance(ins, Insertion), ins
    state.apply(ins)
    return ins


def slot_time_held(st: PlanState) -> tuple[list[str], dict[Any, Any], dict[str, list[str]]]:
    """All a state holds of slot time, comparable between states: the plan's reservations, the
    slots' books and each order's reservations."""
    books = {k: list(b.iv) for k, b in st.slot_busy.items() if b.iv}
    by_order = {o: sorted(map(repr, v)) for o, v in st.res_by_order.items() if v}
    return sorted(map(repr, st.plan.reservations)), books, by_order


def random_bakery_order(rng: Any, oid: str, base: int, spread: int = 150, most: int = 2) -> OrderReq:
    """An order at the bakery for north or south with an eta in ``base`` + [0, ``spread``) and one
    or two items of up to ``most`` each."""
    eta = base + rng.randrange(0, spread)
    items = {
        s: rng.randint(1, most)
        for s in rng.sample(["croissant", "egg-roll", "juice", "bread"], rng.randint(1, 2))
    }
    return OrderReq(oid, "bakery", rng.choice(["north", "south"]), eta, items)


def admitted_plan() -> tuple[World, PlanState, dict[str, Insertion | Rejection]]:
    w = world()
    state = PlanState(w)
    new_id = id_factory()
    results: dict[str, Insertion | Rejection] = {}
    for now, order in morning():
        r = admit(w, state, order, now, S, new_id)
        results[order.id] = r
        if isinstance(r, Insertion):
            state.apply(r)
            assert check(w, state.plan, S) == [], order.id
    return w, state, results


def test_tiny_morning_admits_some_and_every_plan_passes_the_checker() -> None:
    w, state, results = admitted_plan()
    confirmed = [o for o, r in results.items() if isinstance(r, Insertion)]
    assert len(confirmed) >= 4
    assert check(w, state.plan, S) == []
    for oid in confirmed:
        ins = results[oid]
        assert isinstance(ins, Insertion)
        o = state.plan.orders[oid]
        assert ins.deposit <= o.eta  # on time
        assert all(e >= o.eta + S.grace for e in ins.expiry.values())  # fresh to eta+grace


def test_deposit_lands_margin_before_eta_when_there_is_room() -> None:
    w = world()
    state = PlanState(w)
    now, order = morning()[0]
    r = admit(w, state, order, now, S, id_factory())
    assert isinstance(r, Insertion)
    assert r.deposit == order.eta - S.margin


def test_second_order_joins_the_open_croissant_batch_and_the_run() -> None:
    w, state, new_id, eta, now = bakery_before_first_eta(pack=2)
    a = admit(w, state, OrderReq("a", "bakery", "north", eta, {"croissant": 2}), now, S, new_id)
    assert isinstance(a, Insertion)
    state.apply(a)
    b = admit(w, state, OrderReq("b", "bakery", "north", eta, {"croissant": 3}), now, S, new_id)
    assert isinstance(b, Insertion)
    assert b.joins, "the second order should join the open oven batch"
    assert not b.run_is_new and b.run.id == a.run.id
    state.apply(b)
    assert check(w, state.plan, S) == []
    ovens = [t for t in state.plan.tasks.values() if t.resource == "oven"]
    assert len(ovens) == 1 and ovens[0].total_units == 5


def test_a_run_arriving_a_little_after_the_target_is_joined_and_one_arriving_at_eta_is_not() -> None:
    """Two couriers, so a new run is always possible. A parcel that rides a run arriving up to
    ``late_join`` minutes after its target still beats nearly every commuter, and saves a trip; one
    arriving later than that goes on a new run at its target."""
    w, state, new_id, eta, now = bakery_before_first_eta(couriers=2)
    a = placed(w, state, "a", eta, {"croissant": 1}, now, new_id)
    assert a.deposit == eta - S.margin
    b_eta = a.deposit + S.margin - S.late_join  # a's run arrives late_join after b's target
    b = placed(w, state, "b", b_eta, {"croissant": 1}, now, new_id)
    assert not b.run_is_new and b.run.id == a.run.id
    c_eta = a.deposit  # a's run arrives at c's eta, margin minutes after its target
    c = placed(w, state, "c", c_eta, {"croissant": 1}, now, new_id)
    assert c.run_is_new and c.deposit == c_eta - S.margin
    assert check(w, state.plan, S) == []


def test_waiting_a_minute_past_the_target_for_a_courier_beats_a_run_long_before_it() -> None:
    """One courier, out on a's run until 7 minutes after a's eta (north is 10 minutes away). b's
    target is a minute before the courier could be there again: b goes on a new run arriving a
    minute after its target, not on a's run, which arrives 19 minutes before it."""
    w, state, new_id, eta, now = bakery_before_first_eta(couriers=1)
    a = placed(w, state, "a", eta, {"juice": 1}, now, new_id)
    travel = w.kitchens["bakery"].travel["north"]
    b_target = a.run.back + travel - 1  # the earliest arrival of a new run, less a minute
    b = placed(w, state, "b", b_target + S.margin, {"juice": 1}, now, new_id)
    assert b.run_is_new and b.deposit == b_target + 1
    assert check(w, state.plan, S) == []


def test_a_batch_that_filled_and_regained_room_is_joined_again() -> None:
    """Searches step over batches that filled (and forget them); a batch that regains room when an
    order leaves it is open to the next order again."""
    w, state, new_id, eta, now = bakery_before_first_eta(pack=3)
    size = w.kitchens["bakery"].menu["croissant"].steps[-1][2]
    assert size >= 2

    def croissants(oid: str, n: int, dry: bool = False) -> Insertion:
        r = admit(w, state, OrderReq(oid, "bakery", "north", eta, {"croissant": n}), now, S, new_id)
        assert isinstance(r, Insertion), r
        if not dry:
            state.apply(r)
        return r

    a = croissants("a", size - 1)
    (oven,) = [t for t in a.new_tasks if t.resource == "oven"]
    assert oven.id in croissants("b", 1).joins  # now full
    assert oven.id not in croissants("c", 1, dry=True).joins
    state.remove("b")
    assert oven.id in croissants("d", 1).joins
    assert check(w, state.plan, S) == []


def test_consolidation_merges_a_later_batch_into_an_earlier_one_that_keeps_it_fresh() -> None:
    """The later order came first and got its own oven batch; the earlier one could not join it (it
    would be ready too late). Consolidation moves the later order's croissants into the earlier batch,
    which still leaves them fresh until its slot time ends, and frees the oven."""
    from solver.consolidate import consolidate

    w, state, new_id, eta, now = bakery_before_first_eta(pack=2, couriers=2)  # one oven is the point
    placed(w, state, "late", eta + 16, {"croissant": 3}, now, new_id)
    assert not placed(w, state, "early", eta, {"croissant": 2}, now, new_id).joins
    assert len([t for t in state.plan.tasks.values() if t.resource == "oven"]) == 2
    moved: list[str] = []
    assert consolidate(state, "bakery", now, S, moved.append) == 1
    assert moved == ["late"]
    ovens = [t for t in state.plan.tasks.values() if t.resource == "oven"]
    assert len(ovens) == 1 and ovens[0].units == {"early": 2, "late": 3}
    assert check(w, state.plan, S) == []
    # nothing started moves
    assert consolidate(state, "bakery", now, S) == 0


def test_shift_earlier_uses_idle_oven_time_so_a_later_order_fits() -> None:
    """A loaf ordered the night before is baked as late as it can be, right where a commuter's
    croissant must go. Moved earlier (it keeps for hours), the oven is free for the croissant; the
    loaf's packing, run and slot do not move, and the plan still checks."""
    from solver.consolidate import shift_earlier

    w, state, new_id, eta, now = bakery_before_first_eta(couriers=2, before=150)
    placed(w, state, "loaf", eta, {"bread": 1}, now, new_id, "south")
    oven = next(t for t in state.plan.tasks.values() if t.resource == "oven")
    before = (oven.start, oven.end)
    deposit = state.plan.runs[state.run_of["loaf"]].arrive
    ride = OrderReq("ride", "bakery", "north", eta, {"croissant": 1})
    refused = admit(w, state, ride, eta - 40, S, new_id)
    assert isinstance(refused, Rejection) and refused.reason == "no-kitchen-capacity"
    assert shift_earlier(state, "bakery", now, S) == 1
    assert now < oven.start < before[0] and oven.end - oven.start == before[1] - before[0]
    assert state.plan.runs[state.run_of["loaf"]].arrive == deposit
    assert check(w, state.plan, S) == []
    fits = admit(w, state, ride, eta - 40, S, new_id)
    assert isinstance(fits, Insertion)
    state.apply(fits)
    assert check(w, state.plan, S) == []
    # started work never moves; once moved, nothing is left to move
    started = (oven.start, oven.end)
    shift_earlier(state, "bakery", oven.start, S)
    assert (oven.start, oven.end) == started
    assert shift_earlier(state, "bakery", oven.start, S) == 0
    assert check(w, state.plan, S) == []


def _juice_pair(couriers: int) -> tuple[World, PlanState, Callable[[str], str], int]:
    """Two juices to north, the second's eta the join window (4 minutes) after the first's: it
    joins the first's run (run aware admission), which arrives that much before the second needs it."""
    w, state, new_id, eta, now = bakery_before_first_eta(couriers=couriers)
    for oid, e in (("first", eta), ("second", eta + S.join_window)):
        placed(w, state, oid, e, {"juice": 1}, now, new_id)
    assert state.run_of["first"] == state.run_of["second"]
    assert state.plan.runs[state.run_of["second"]].arrive == eta - S.margin
    return w, state, new_id, eta


def _pack(state: PlanState, oid: str) -> Task:
    return next(state.plan.tasks[t] for t in state.tasks_of[oid] if state.plan.tasks[t].kind == "pack")


def _pack_end(state: PlanState, oid: str) -> int:
    return _pack(state, oid).end


def test_settle_late_puts_a_parcel_that_would_wait_on_a_later_run_when_a_courier_is_free() -> None:
    """Near departure, the second juice goes on a run of its own arriving at its target, packed as
    late as that allows: ready the join window (4 minutes) later, so that much less in the cabinet.
    The first stays."""
    from solver.consolidate import settle_late

    w, state, new_id, eta = _juice_pair(couriers=2)
    first_run = state.plan.runs[state.run_of["first"]]
    packed = _pack_end(state, "second")
    assert settle_late(state, "bakery", eta - 25, S, new_id) == 1
    run = state.plan.runs[state.run_of["second"]]
    assert run is not first_run and run.orders == ["second"] and run.arrive == eta + S.join_window - S.margin
    assert first_run.orders == ["first"] and first_run.arrive == eta - S.margin
    assert _pack_end(state, "second") == run.depart >= packed + S.join_window
    assert [rv.start for rv in state.res_by_order["second"]] == [run.arrive]
    assert check(w, state.plan, S) == []
    assert settle_late(state, "bakery", eta - 25, S, new_id) == 0  # nothing left to gain


def test_settle_late_keeps_a_busy_courier_and_started_work_and_moves_a_run_left_alone() -> None:
    """With one courier, out on the shared run, there is no later run for the second juice, and
    nothing moves. Once the first order is cancelled the run carries the second alone and leaves
    later, at its target. Work that has started never moves."""
    from solver.consolidate import settle_late

    w, state, new_id, eta = _juice_pair(couriers=1)
    run = state.plan.runs[state.run_of["second"]]
    packed = _pack_end(state, "second")
    assert settle_late(state, "bakery", eta - 25, S, new_id) == 0
    assert (run.arrive, _pack_end(state, "second")) == (eta - S.margin, packed)
    state.remove("first")
    assert settle_late(state, "bakery", _pack(state, "second").start, S, new_id) == 0  # packing started
    assert settle_late(state, "bakery", eta - 25, S, new_id) == 1
    assert state.run_of["second"] == run.id and run.arrive == eta + S.join_window - S.margin
    assert _pack_end(state, "second") == run.depart
    assert [rv.start for rv in state.res_by_order["second"]] == [run.arrive]
    assert check(w, state.plan, S) == []


def test_rejects_with_reasons() -> None:
    w = world()
    state = PlanState(w)
    new_id = id_factory()
    eta = morning()[0][1].eta
    too_late = admit(w, state, OrderReq("x", "bakery", "north", eta, {"bread": 1}), eta - 20, S, new_id)
    assert isinstance(too_late, Rejection) and too_late.reason == "too-late"
    closed = admit(
        w, state, OrderReq("y", "bakery", "north", eta + 12 * 60, {"croissant": 1}), eta - 60, S, new_id
    )
    assert isinstance(closed, Rejection) and closed.reason == "closed"
    invalid = admit(w, state, OrderReq("z", "bakery", "north", eta, {"pizza": 1}), eta - 90, S, new_id)
    assert isinstance(invalid, Rejection) and invalid.reason == "invalid"


def test_cabinet_full_is_reported_as_no_cabinet_capacity() -> None:
    w = world()
    state = PlanState(w)
    new_id = id_factory()
    eta = morning()[0][1].eta
    # north has 2 chilled slots: a third chilled parcel for the same time finds none
    reasons = []
    for i in range(3):
        r = admit(w, state, OrderReq(f"j{i}", "bakery", "north", eta, {"juice": 1}), eta - 120, S, new_id)
        if isinstance(r, Insertion):
            state.apply(r)
        else:
            reasons.append(r.reason)
    assert reasons == ["no-cabinet-capacity"]
    assert check(w, state.plan, S) == []


def test_a_full_cabinet_asked_again_sees_every_change_to_its_slot_time() -> None:
    """The slot picker keeps its index of a full cabinet between orders; any change of the
    cabinet's slot time (a removal, slot time replaced from elsewhere) must show at once."""
    w = world()
    state = PlanState(w)
    new_id = id_factory()
    eta = morning()[0][1].eta

    def juice(oid: str) -> Insertion | Rejection:
        return admit(w, state, OrderReq(oid, "bakery", "north", eta, {"juice": 1}), eta - 120, S, new_id)

    placed = []
    for oid in ("j0", "j1"):
        r = juice(oid)
        assert isinstance(r, Insertion)
        state.apply(r)
        placed.append(r)
    assert isinstance(juice("j2"), Rejection)  # asked twice: the index is kept
    assert isinstance(juice("j2"), Rejection)
    state.remove("j0")
    again = juice("j2")
    assert isinstance(again, Insertion)
    assert again.reservations[0].slot == placed[0].reservations[0].slot
    state.apply(again)
    assert isinstance(juice("j3"), Rejection)
    # the cabinet's slot time replaced as the database has it (here: emptied)
    state.replace_reservations([again.reservations[0].cabinet_id], [])
    assert isinstance(juice("j3"), Insertion)


def test_replacing_a_cabinets_slot_time_leaves_the_state_as_if_loaded_afresh() -> None:
    """Slot time re-read from the database replaces a cabinet's (what is in both stays untouched);
    the state then holds exactly what a state loaded with the new slot time holds."""
    import itertools
    import random

    from solver.model import Reservation

    w = world()
    rng = random.Random(7)
    ids = itertools.count()

    def some(cab: str, n: int) -> list[Reservation]:
        out = []
        for i in range(n):
            sl = rng.choice(w.slots[cab])
            start = 400 + 30 * i
            # two parcels of an order, or one of each of several orders
            oid = f"o{next(ids) // 2}"
            out.append(Reservation(oid, cab, sl.zone, sl.size, sl.label, start, start + 20))
        return out

    for _ in range(20):
        north, south = some("north-a", 8), some("south-a", 5)
        state = PlanState(w)
        state.add_reservations(north + south)
        new_north = rng.sample(north, 4) + some("north-a", 3)
        state.replace_reservations(["north-a"], new_north)
        fresh = PlanState(w)
        fresh.add_reservations(south + new_north)

        assert slot_time_held(state) == slot_time_held(fresh)


def test_remove_frees_everything_for_the_next_order() -> None:
    w, state, results = admitted_plan()
    first = next(o for o, r in results.items() if isinstance(r, Insertion))
    state.remove(first)
    assert first not in state.plan.orders
    assert all(first not in t.units for t in state.plan.tasks.values())
    assert all(first not in r.orders for r in state.plan.runs.values())
    assert check(w, state.plan, S) == []


def test_removing_orders_together_is_removing_them_one_by_one() -> None:
    """The re-planner takes all its orders out in one call (one pass over the slot time); the state
    is then what taking them out one at a time leaves, and their slot time is free."""
    w, together, results = admitted_plan()
    _, apart, _ = admitted_plan()
    placed = [o for o, r in results.items() if isinstance(r, Insertion)]
    assert len(placed) >= 4
    gone = placed[1::2]
    together.remove(*gone)
    for oid in gone:
        apart.remove(oid)

    def held(st: PlanState) -> tuple[Any, ...]:
        return (
            slot_time_held(st),
            [repr(rv) for rv in st.plan.reservations],  # in the same order, too
            sorted((t.id, t.start, sorted(t.units.items())) for t in st.plan.tasks.values()),
            sorted((r.id, r.orders) for r in st.plan.runs.values()),
            sorted(st.plan.orders),
        )

    assert held(together) == held(apart)
    assert not {rv.order_id for rv in together.plan.reservations} & set(gone)
    assert not {oid for b in together.slot_busy.values() for _, _, oid in b.iv} & set(gone)
    assert check(w, together.plan, S) == []


def test_free_courier_arrivals_are_those_whose_whole_round_trip_has_a_courier() -> None:
    """Admission finds the arrivals a courier is free for by searching a byte per minute; they are
    exactly the arrivals whose round trip [a - travel, a + travel) has fewer than ``cap`` couriers
    out at every minute, in the order asked, as trips come and go (across midnight UTC, where the
    bytes of one day end)."""
    rng = random.Random(3)
    day = 3 * 1440
    for cap in (0, 1, 2, 3):
        book = Couriers(cap)
        trips: list[tuple[int, int]] = []
        for _ in range(60):
            if trips and rng.random() < 0.3:
                s, e = trips.pop(rng.randrange(len(trips)))
                book.add(s, e, -1)
            else:
                s = rng.randint(day - 100, day + 100)
                trips.append((s, s + rng.randint(2, 16)))
                book.add(*trips[-1])
            out = {t: sum(1 for s, e in trips if s <= t < e) for t in range(day - 200, day + 200)}
            a, stop = rng.randint(day - 150, day + 150), rng.randint(day - 150, day + 150)
            travel = rng.randint(0, 7)
            step = -1 if a > stop else 1
            want = [
                x
                for x in range(a, stop + step, step)
                if travel == 0 or all(out[t] < cap for t in range(x - travel, x + travel))
            ]
            assert list(book.free_arrivals(a, stop, step, travel)) == want, (cap, a, stop, travel)
    # a run in another millennium (an eta is not bounded) adds a day of bytes, not the days between
    far = Couriers(1)
    far.add(day, day + 8)
    far.add(10**9, 10**9 + 8)
    assert sorted(len(b) for b in far.full.values()) == [1440, 1440]
    got = list(far.free_arrivals(10**9 + 10, 10**9 - 10, -1, 2))
    assert got == [10**9 + 10, *range(10**9 - 2, 10**9 - 11, -1)]


def test_offerable_respects_hours_and_lead() -> None:
    w = world()
    k = w.kitchens["bakery"]
    eta = morning()[0][1].eta
    assert offerable(k, "croissant", "north", eta, eta - 60, S.grace)
    assert not offerable(k, "bread", "north", eta, eta - 30, S.grace)
    assert not offerable(k, "croissant", "north", eta + 10 * 60, eta, S.grace)


# ---------------------------------------------------------------- the checker can fail


def _broken(mutate) -> list[str]:  # type: ignore[no-untyped-def]
    w, state, _ = admitted_plan()
    plan: Plan = state.plan.copy()
    mutate(w, plan)
    return [v.rule for v in check(w, plan, S)]


def test_checker_catches_resource_overload() -> None:
    def m(w: World, p: Plan) -> None:
        t = next(t for t in p.tasks.values() if t.resource == "oven")
        dup = replace(t, id="dup", units=dict(t.units))
        p.tasks["dup"] = dup

    assert "kitchen" in _broken(m)


def test_checker_catches_step_order_and_batch() -> None:
    def order_swap(w: World, p: Plan) -> None:
        oid = next(o for o, r in p.orders.items() if "egg-roll" in r.items)
        t2 = next(t for t in p.tasks.values() if t.sku == "egg-roll" and t.step == 2 and oid in t.units)
        t2.start, t2.end = t2.start - 30, t2.end - 30

    assert "kitchen" in _broken(order_swap)

    def overfill(w: World, p: Plan) -> None:
        t = next(t for t in p.tasks.values() if t.sku == "croissant")
        oid = next(iter(t.units))
        t.units[oid] += 40

    assert "kitchen" in _broken(overfill)


def test_checker_catches_early_departure_and_courier_overlap() -> None:
    def early(w: World, p: Plan) -> None:
        r = next(iter(p.runs.values()))
        for x in (r,):
            x.depart -= 30
            x.arrive -= 30
            x.back -= 30

    rules = _broken(early)
    assert "runs" in rules

    def extra_run(w: World, p: Plan) -> None:
        r = next(iter(p.runs.values()))
        p.runs["r-dup"] = replace(r, id="r-dup", orders=[])

    assert "runs" in _broken(extra_run)


def test_checker_catches_double_booked_slot_wrong_size_and_staleness() -> None:
    def double(w: World, p: Plan) -> None:
        a, b = (
            p.reservations[0],
            next(
                r
                for r in p.reservations[1:]
                if r.cabinet_id == p.reservations[0].cabinet_id and r.zone == p.reservations[0].zone
            ),
        )
        b.slot = a.slot
        b.start, b.end = a.start, a.end

    assert "cabinet" in _broken(double)

    def small(w: World, p: Plan) -> None:
        rv = next(r for r in p.reservations if r.size == "M" and r.zone == "hot")
        rv.slot = "H04"  # the one S slot at north

    assert "cabinet" in _broken(small)

    def stale(w: World, p: Plan) -> None:
        rv = p.reservations[0]
        rv.end += 500

    assert "freshness" in _broken(stale)


@pytest.mark.parametrize("n", [50, 200])
def test_many_random_orders_keep_every_rule(n: int) -> None:
    import random

    rng = random.Random(n)
    w = world()
    state = PlanState(w)
    new_id = id_factory()
    base = morning()[0][1].eta - 60
    confirmed = 0
    for i in range(n):
        o = random_bakery_order(rng, f"o{i}", base, most=3)
        r = admit(w, state, o, o.eta - rng.randrange(45, 200), S, new_id)
        if isinstance(r, Insertion):
            state.apply(r)
            confirmed += 1
    assert confirmed > 5
    assert check(w, state.plan, S) == []


def test_a_dry_run_answers_as_admission_does_and_its_slots_are_free() -> None:
    """A dry run (``explain=False``) takes the first free slot it finds instead of the snuggest
    (it builds no index for its ``end``): it fits exactly when admission does, at the same arrival,
    and the slots it names are free (half the orders are placed with a dry run's answer, and the
    plan keeps every rule)."""
    rng = random.Random(11)
    w = world()
    state = PlanState(w)
    new_id = id_factory()
    base = morning()[0][1].eta - 60
    fits = refused = other_slot = 0
    for i in range(300):
        o = random_bakery_order(rng, f"o{i}", base, spread=120)
        now = o.eta - rng.randrange(45, 200)
        dry = admit(w, state, replace(o, items=dict(o.items)), now, S, new_id, False)
        real = admit(w, state, o, now, S, new_id)
        assert isinstance(dry, Insertion) == isinstance(real, Insertion), i
        if not isinstance(dry, Insertion) or not isinstance(real, Insertion):
            refused += 1
            continue
        fits += 1
        assert dry.run.arrive == real.run.arrive and dry.ready == real.ready
        other_slot += [r.slot for r in dry.reservations] != [r.slot for r in real.reservations]
        state.apply(dry if i % 2 else real)
    assert fits > 5 and refused > 100  # the cabinets and couriers do fill
    assert other_slot > 0  # the dry runs did pick differently, and the plan below still holds
    assert check(w, state.plan, S) == []


def test_a_dry_run_still_fits_when_only_a_late_arrival_or_a_run_to_join_is_left() -> None:
    """A dry run gives up before asking about any candidate when there is no run to join and no
    courier for any arrival up to eta; with the one courier out, a later arrival or a run to join
    must still fit, as admission finds."""
    w = world()  # the bakery has one courier; north is 10 minutes away, south 15
    state = PlanState(w)
    new_id = id_factory()
    e = morning()[0][1].eta + 30
    # the courier is out from e - 18 to e + 12 for a run arriving at south at e - 3
    a = admit(w, state, OrderReq("a", "bakery", "south", e, {"croissant": 1}), e - 120, S, new_id)
    assert isinstance(a, Insertion) and (a.run.depart, a.run.back) == (e - 18, e + 12)
    state.apply(a)
    # placed at e - 30, north by e + 23: no arrival up to its target (e + 20) has the courier,
    # e + 22 and e + 23 do
    b = OrderReq("b", "bakery", "north", e + 23, {"juice": 1})
    real = admit(w, state, replace(b, items=dict(b.items)), e - 30, S, new_id)
    assert isinstance(real, Insertion) and real.run.arrive == e + 22
    assert isinstance(admit(w, state, b, e - 30, S, new_id, explain=False), Insertion)
    # a run to north arriving at e + 22, and an order placed at e - 30 for north by e + 24: the
    # courier is out for every arrival it could make, but the run has room
    state.apply(real)
    c = OrderReq("c", "bakery", "north", e + 24, {"juice": 1})
    real = admit(w, state, replace(c, items=dict(c.items)), e - 30, S, new_id)
    assert isinstance(real, Insertion) and not real.run_is_new and real.run.arrive == e + 22
    assert isinstance(admit(w, state, c, e - 30, S, new_id, explain=False), Insertion)


def test_a_later_eta_for_an_order_refused_for_courier_or_slot_tries_only_later_arrivals() -> None:
    """Suggesting a later eta to an order refused for want of a courier or a slot need not try the
    arrivals up to its eta again (``later_eta_from``): the answer is the one a full dry run gives."""
    import random

    from solver.admission import later_eta_from

    rng = random.Random(3)
    w = world()
    w.kitchens["bakery"] = replace(w.kitchens["bakery"], couriers=1)  # couriers run short
    state = PlanState(w)
    new_id = id_factory()
    base = morning()[0][1].eta - 60
    compared = cut = found = 0
    reasons = set()
    for i in range(300):
        o = random_bakery_order(rng, f"o{i}", base)
        eta, items = o.eta, o.items
        now = base - 120
        r = admit(w, state, o, now, S, new_id)
        if isinstance(r, Insertion):
            state.apply(r)
            continue
        reasons.add(r.reason)
        for delta in (10, 20, 30, 45, 60):
            after = later_eta_from(r, o, eta + delta)
            answers = [
                isinstance(
                    admit(w, state, replace(o, eta=eta + delta, items=dict(items)), now, S, new_id, False, a),
                    Insertion,
                )
                for a in (after, -(10**9))
            ]
            assert answers[0] == answers[1], (o, delta)
            compared += 1
            if after > -(10**9):
                cut += 1
                found += answers[0]
    assert {"no-courier-capacity", "no-cabinet-capacity"} <= reasons
    assert cut > 50 and compared > cut and found > 10  # later etas that do fit are still found
    assert check(w, state.plan, S) == []


def test_a_refused_order_takes_a_loaf_made_for_a_later_one_which_is_baked_again_later() -> None:
    """A loaf for a commuter coming in an hour was baked early (shift_earlier). A commuter on the
    train now wants one too, but the oven is taken by croissants until it is too late to bake: first
    fit refuses. Handed over, the made loaf is theirs, and the first loaf is baked again in oven time
    before its own packing; no started work moves, and every plan checks."""
    from solver.consolidate import admit_handing_over, shift_earlier

    w, state, new_id, eta, now = bakery_before_first_eta(couriers=2, before=150)
    placed(w, state, "later", eta + 60, {"bread": 1}, now, new_id, "south")
    placed(w, state, "buns", eta, {"croissant": 2}, now, new_id, "south")
    shift_earlier(state, "bakery", now, S)
    loaf = next(t for t in state.plan.tasks.values() if t.sku == "bread")
    made = (loaf.start, loaf.end)
    now = eta - 50
    assert loaf.end <= now  # baked and waiting
    ride = OrderReq("ride", "bakery", "south", eta, {"bread": 1})
    refused = admit(w, state, ride, now, S, new_id)
    assert isinstance(refused, Rejection) and refused.reason == "no-kitchen-capacity"
    before = {t.id: (t.start, t.end) for t in state.plan.tasks.values() if t.start <= now}

    handed = admit_handing_over(state, ride, now, S, new_id)
    assert isinstance(handed, Insertion)
    state.apply(handed)
    assert loaf.units == {"ride": 1} and (loaf.start, loaf.end) == made
    again = [t for t in state.plan.tasks.values() if t.sku == "bread" and t is not loaf]
    assert len(again) == 1 and again[0].units == {"later": 1} and again[0].start > now
    assert again[0].end <= _pack(state, "later").start
    assert {t.id: (t.start, t.end) for t in state.plan.tasks.values() if t.id in before} == before
    assert state.tasks_of["later"] == {again[0].id, _pack(state, "later").id}
    assert check(w, state.plan, S) == []

    # nothing left to hand over: the state is as it was, and first fit's refusal stands
    tasks = {t.id: (t.start, t.end, dict(t.units)) for t in state.plan.tasks.values()}
    other = OrderReq("other", "bakery", "south", eta, {"bread": 1})
    assert admit_handing_over(state, other, now, S, new_id) is None
    assert {t.id: (t.start, t.end, dict(t.units)) for t in state.plan.tasks.values()} == tasks
    assert state.kitchens["bakery"].handed == {}


def test_handing_over_through_a_random_morning_keeps_every_rule_and_gives_back_what_it_cannot_use() -> None:
    """A generated rush-hour morning in placement order, with early work done whenever possible (so
    there is made food to hand over); each order first fit refuses for the kitchen is tried with
    food handed over. A try that fails leaves every task as it was; one that succeeds leaves
    started batches at their times, no smaller; the plan checks after every step."""
    from solver.consolidate import admit_handing_over, shift_earlier
    from solver.generate import as_sim_orders, generate

    net, rows = generate(orders=400, stations=4, kitchens=1, seed=3, tightness=2.0)
    w = World.from_spec(NetworkSpec.model_validate(net))
    state = PlanState(w)
    new_id = id_factory()
    arrivals = [
        (so.placed_at, OrderReq(so.id, so.kitchen_id, so.station_id, so.eta, dict(so.items)))
        for so in sorted(as_sim_orders(rows), key=lambda so: (so.placed_at, so.id))
        if not so.invalid and so.eta > so.placed_at
    ]

    def tasks() -> dict[str, tuple[int, int, dict[str, int]]]:
        return {t.id: (t.start, t.end, dict(t.units)) for t in state.plan.tasks.values()}

    won = failed = 0
    for now, order in arrivals:
        shift_earlier(state, order.kitchen_id, now, S)
        got = admit(w, state, order, now, S, new_id)
        if isinstance(got, Rejection) and got.reason == "no-kitchen-capacity":
            before = tasks()
            got = admit_handing_over(state, order, now, S, new_id) or got
            if isinstance(got, Insertion):
                won += 1
                after = tasks()
                for tid, (start, end, units) in before.items():
                    if start <= now:
                        assert after[tid][:2] == (start, end)
                        assert sum(after[tid][2].values()) + got.joins.get(tid, 0) >= sum(units.values())
            else:
                failed += 1
                assert tasks() == before
        if isinstance(got, Insertion):
            state.apply(got)
        assert check(w, state.plan, S) == [], order.id
    assert won > 0 and failed > 0
