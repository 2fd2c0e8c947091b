"""The network document and its normalized rows (stations, cabinets, slots, kitchens)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from solver.model import NetworkSpec

from .plans import LIVE_STATUS

LIVE_PARCEL = "p.state in ('reserved', 'deposited')"


class NetworkRefused(ValueError):
    """A reload that would strand live orders."""


async def save_network(conn: asyncpg.Connection, spec: NetworkSpec) -> dict[str, int]:
    """Insert or update in place; ids are stable. Call inside a transaction."""
    await conn.execute("select pg_advisory_xact_lock(hashtext('exitbox:network'))")
    doc = spec.model_dump(mode="json")
    stats = {"stations": 0, "cabinets": 0, "slots_added": 0, "slots_retired": 0, "kitchens": 0}
    new_slots = {(c.id, s.label): s for st in spec.stations for c in st.cabinets for s in c.slot_list()}
    old = await conn.fetch(
        """select s.id, s.cabinet_id, s.label, s.zone, s.size, s.retired,
                  exists (select 1 from parcels p where p.slot_id = s.id and """
        + LIVE_PARCEL
        + """) as busy
             from slots s"""
    )
    for r in old:
        key = (r["cabinet_id"], r["label"])
        want = new_slots.get(key)
        changed = want is None or (want.zone, want.size) != (r["zone"], r["size"])
        if changed and not r["retired"] and r["busy"]:
            what = "remove" if want is None else "change"
            raise NetworkRefused(
                f"cannot {what} slot {key[0]}/{key[1]}: it holds or is reserved for a live order"
            )
    live_kitchens = {
        r["kitchen_id"]
        for r in await conn.fetch(f"select distinct kitchen_id from orders where {LIVE_STATUS}")
    }
    gone = live_kitchens - {k.id for k in spec.kitchens}
    if gone:
        raise NetworkRefused(f"cannot remove kitchen {sorted(gone)[0]}: it has live orders")

    await conn.execute(
        """insert into network (id, city, timezone, doc, loaded_at) values (1, $1, $2, $3, now())
           on conflict (id) do update set city = excluded.city, timezone = excluded.timezone,
               doc = excluded.doc, loaded_at = now()""",
        spec.city,
        spec.timezone,
        doc,
    )
    for st in spec.stations:
        await conn.execute(
            """insert into stations (id, name) values ($1, $2)
               on conflict (id) do update set name = excluded.name""",
            st.id,
            st.name,
        )
        stats["stations"] += 1
        for c in st.cabinets:
            await conn.execute(
                """insert into cabinets (id, station_id, name) values ($1, $2, $3)
                   on conflict (id) do update set station_id = excluded.station_id,
                       name = excluded.name""",
                c.id,
                st.id,
                c.name,
            )
            stats["cabinets"] += 1
    old_keys = {(r["cabinet_id"], r["label"]) for r in old}
    for (cab, label), s in new_slots.items():
        if (cab, label) not in old_keys:
            stats["slots_added"] += 1
        await conn.execute(
            """insert into slots (cabinet_id, label, zone, size) values ($1, $2, $3, $4)
               on conflict (cabinet_id, label) do update set zone = excluded.zone,
                   size = excluded.size, retired = false""",
            cab,
            label,
            s.zone,
            s.size,
        )
    for r in old:
        if (r["cabinet_id"], r["label"]) not in new_slots and not r["retired"]:
            await conn.execute("update slots set retired = true where id = $1", r["id"])
            stats["slots_retired"] += 1
    for k in spec.kitchens:
        await conn.execute(
            """insert into kitchens (id, name, doc) values ($1, $2, $3)
               on conflict (id) do update set name = excluded.name, doc = excluded.doc,
                   plan_version = kitchens.plan_version + 1""",
            k.id,
            k.name,
            k.model_dump(mode="json"),
        )
        stats["kitchens"] += 1
    return stats


async def load_network(conn: asyncpg.Connection) -> tuple[NetworkSpec, datetime] | None:
    row = await conn.fetchrow("select doc, loaded_at from network where id = 1")
    if row is None:
        return None
    return NetworkSpec.model_validate(row["doc"]), row["loaded_at"]


# What the world depends on: when the network was loaded, and which slots are disabled. Columns to
# select (alone or beside others: it is read on every request); ``stamp_of`` reads them back.
STAMP_COLUMNS = """(select loaded_at from network where id = 1) as loaded,
       coalesce((select array_agg(cabinet_id || '/' || label order by cabinet_id, label)
                   from slots where not enabled and not retired), '{}') as disabled"""


def stamp_of(row: Any) -> tuple[datetime | None, list[tuple[str, str]]]:
    disabled = [x.split("/", 1) for x in row["disabled"]]
    return row["loaded"], [(c, label) for c, label in disabled]


async def network_stamp(conn: asyncpg.Connection) -> tuple[datetime | None, list[tuple[str, str]]]:
    """``STAMP_COLUMNS`` in one round trip."""
    return stamp_of(await conn.fetchrow(f"select {STAMP_COLUMNS}"))
