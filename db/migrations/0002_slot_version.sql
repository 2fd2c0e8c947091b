-- A station's slot version moves whenever slot time at its cabinets is added, moved or released
-- by a plan change (placement, re-plan, eta change, cancel, deposit, slot taken out of service);
-- writers bump it under the station's advisory lock. Pickups and expiries only free time and may
-- leave it: a cache that misses them is cautious, never wrong.
alter table stations add column slot_version bigint not null default 0;
