-- exitbox schema: the record of truth. The invariants live here, not only in the code.
create extension if not exists btree_gist;

-- the network document as loaded (one row), normalized below for foreign keys
create table network (
    id          int primary key default 1 check (id = 1),
    city        text not null,
    timezone    text not null,
    doc         jsonb not null,
    loaded_at   timestamptz not null default now()
);

create table stations (
    id      text primary key check (id ~ '^[a-z0-9-]{1,32}$'),
    name    text not null
);

create table cabinets (
    id          text primary key check (id ~ '^[a-z0-9-]{1,32}$'),
    station_id  text not null references stations(id),
    name        text not null
);

create table slots (
    id          bigint generated always as identity primary key,
    cabinet_id  text not null references cabinets(id),
    label       text not null,
    zone        text not null check (zone in ('hot', 'chilled', 'ambient')),
    size        text not null check (size in ('S', 'M', 'L')),
    enabled     boolean not null default true,
    retired     boolean not null default false, -- removed from the network file
    unique (cabinet_id, label)
);

create table kitchens (
    id          text primary key check (id ~ '^[a-z0-9-]{1,32}$'),
    name        text not null,
    doc         jsonb not null,
    plan_version bigint not null default 0
);

create table orders (
    id              text primary key,
    commuter_id     text not null,
    station_id      text not null references stations(id),
    cabinet_id      text not null references cabinets(id),
    kitchen_id      text not null references kitchens(id),
    eta             timestamptz not null,
    items           jsonb not null,
    total_cents     int not null check (total_cents >= 0),
    status          text not null check (status in
                      ('confirmed', 'cooking', 'on_the_way', 'in_cabinet',
                       'picked_up', 'expired', 'cancelled')),
    refund_cents    int not null default 0 check (refund_cents >= 0),
    code_hash       bytea not null,        -- keyed hash (HMAC) of cabinet and code: look-up only
    code_sealed     text not null,         -- the code masked with a keyed stream: owner read-back
    ready_at        timestamptz,
    deposited_at    timestamptz,
    picked_up_at    timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
create index orders_commuter on orders (commuter_id, created_at desc);
create index orders_kitchen_live on orders (kitchen_id) where status in ('confirmed', 'cooking', 'on_the_way', 'in_cabinet');
-- a live pickup code is unique within its cabinet
create unique index orders_live_code on orders (cabinet_id, code_hash)
    where status in ('confirmed', 'cooking', 'on_the_way', 'in_cabinet');

create table parcels (
    id              bigint generated always as identity primary key,
    order_id        text not null references orders(id) on delete cascade,
    zone            text not null check (zone in ('hot', 'chilled', 'ambient')),
    size            text not null check (size in ('S', 'M', 'L')),
    slot_id         bigint references slots(id),   -- null: overflow (held by station staff)
    during          tstzrange not null,             -- reserved / occupied time
    expires_at      timestamptz not null,
    state           text not null default 'reserved' check (state in
                      ('reserved', 'deposited', 'picked_up', 'expired', 'released')),
    deposited_at    timestamptz,
    removed_at      timestamptz,
    unique (order_id, zone),
    check (not isempty(during))
);
-- no slot ever holds two parcels at overlapping times
alter table parcels add constraint parcels_no_double_booking
    exclude using gist (slot_id with =, during with &&) where (state <> 'released' and slot_id is not null);
create index parcels_slot_time on parcels using gist (slot_id, during);

create table tasks (
    id          text primary key,
    kitchen_id  text not null references kitchens(id),
    resource    text not null,
    kind        text not null check (kind in ('prep', 'pack')),
    sku         text,
    step        int check (step is null or step >= 1),
    start_at    timestamptz not null,
    end_at      timestamptz not null,
    status      text not null default 'planned' check (status in ('planned', 'done')),
    done_at     timestamptz,
    check (end_at > start_at),
    check ((kind = 'pack') = (step is null))
);
create index tasks_kitchen_time on tasks (kitchen_id, end_at);

create table task_units (
    task_id     text not null references tasks(id) on delete cascade,
    order_id    text not null references orders(id) on delete cascade,
    units       int not null check (units > 0),
    primary key (task_id, order_id)
);
create index task_units_order on task_units (order_id);

create table runs (
    id          text primary key,
    kitchen_id  text not null references kitchens(id),
    station_id  text not null references stations(id),
    depart_at   timestamptz not null,
    arrive_at   timestamptz not null,
    back_at     timestamptz not null,
    status      text not null default 'planned' check (status in ('planned', 'departed')),
    departed_at timestamptz,
    check (depart_at < arrive_at and arrive_at < back_at)
);
create index runs_kitchen_time on runs (kitchen_id, back_at);

create table run_orders (
    run_id      text not null references runs(id) on delete cascade,
    order_id    text not null references orders(id) on delete cascade,
    primary key (run_id, order_id),
    unique (order_id)
);

create table order_events (
    id          bigint generated always as identity primary key,
    order_id    text not null references orders(id) on delete cascade,
    at          timestamptz not null default now(),
    kind        text not null,
    data        jsonb not null default '{}'::jsonb
);
create index order_events_order on order_events (order_id, id);

create table idempotency_keys (
    commuter_id  text not null,
    key          text not null,
    request_hash text not null,
    status       int not null,
    response     jsonb not null,
    created_at   timestamptz not null default now(),
    primary key (commuter_id, key)
);

-- wrong codes typed at a cabinet keypad, for the per-cabinet limit
create table code_failures (
    id          bigint generated always as identity primary key,
    cabinet_id  text not null references cabinets(id),
    at          timestamptz not null default now()
);
create index code_failures_cabinet on code_failures (cabinet_id, at);
