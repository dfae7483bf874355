-- Events (DESIGN.md §8): provider webhooks in, customer webhooks out.

-- Provider webhooks in. Each connection's callback URL carries a random token; the service keeps
-- the token sealed (to subscribe again at the same URL) and its SHA-256 (to find the connection
-- of a callback with one index probe).
alter table connections
    add column webhook_token_enc   bytea,
    add column webhook_token_hash  bytea unique,
    add column webhook_status      text not null default 'not_subscribed'
                                   check (webhook_status in ('not_subscribed', 'subscribed', 'failed', 'not_configured')),
    add column webhook_error       text,
    add column webhook_objects     text[] not null default '{}',
    add column webhook_subscribed_at timestamptz,
    add column last_callback_at    timestamptz,
    -- How long the last applied callback waited between its arrival and its record's commit.
    add column last_callback_lag_ms integer;

-- Callbacks, queued: one row per record a provider named. A duplicate collapses into the row
-- already there and bumps `generation`, so a callback arriving while its record is being
-- fetched is not lost: the worker deletes the row only at the generation it fetched.
create table provider_callbacks (
    connection_id  bigint not null references connections (id) on delete cascade,
    stream         text not null,
    external_id    text not null,
    generation     integer not null default 1,
    received_at    timestamptz not null default now(),
    attempts       integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    leased_until   timestamptz,
    last_error     text,
    primary key (connection_id, stream, external_id)
);
create index provider_callbacks_due_idx on provider_callbacks (next_attempt_at);

-- Customer webhooks out: an endpoint's subscriptions, for its company only.
create table webhook_subscriptions (
    company_id     bigint not null references companies (id) on delete cascade,
    -- What the endpoint and its admins see: whsub_...
    public_id      text not null unique,
    connection_id  bigint not null references connections (id) on delete cascade,
    endpoint_id    bigint not null references endpoints (id) on delete cascade,
    url            text not null check (length(url) between 1 and 2000),
    -- '*', 'job.*', 'job.created', 'sync.completed'
    events         text[] not null,
    -- Singular resource names; null for every resource the endpoint may read.
    resources      text[],
    payload        text not null default 'record' check (payload in ('record', 'id')),
    description    text not null default '' check (length(description) <= 500),
    -- Signing secrets, sealed with the master key: the current one, and the one it replaced
    -- while the rotation's overlap lasts (both sign meanwhile).
    secret_enc     bytea not null,
    previous_secret_enc bytea,
    previous_secret_expires_at timestamptz,
    status         text not null default 'active' check (status in ('active', 'paused', 'disabled')),
    disabled_reason text,
    -- The first failure of the current run of failures; null while deliveries succeed.
    failing_since  timestamptz,
    last_success_at timestamptz,
    last_failure_at timestamptz,
    last_failure   text,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    primary key (company_id, public_id)
);
create index webhook_subscriptions_connection_idx on webhook_subscriptions (connection_id);
create index webhook_subscriptions_endpoint_idx on webhook_subscriptions (endpoint_id);

-- The outbox: one row per event and subscription, written in the transaction that changed the
-- mirror (or finished the sync run), delivered at least once by the dispatcher.
create table webhook_deliveries (
    company_id      bigint not null,
    subscription_id text not null,
    -- The event's id (`webhook-id` is evt_<id>): drawn from the mirror's sequence, so one
    -- company's events are numbered in commit order like its change_seq.
    event_id        bigint not null default nextval('mirror_change_seq'),
    event_type      text not null,
    resource        text,
    external_id     text,
    -- The record's change_seq when the event was written.
    change_seq      bigint,
    -- sync.completed's facts.
    data            jsonb,
    created_at      timestamptz not null default now(),
    state           text not null default 'pending' check (state in ('pending', 'delivered', 'failed', 'dropped')),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    leased_until    timestamptz,
    last_status     smallint,
    last_error      text,
    delivered_at    timestamptz,
    primary key (company_id, subscription_id, event_id),
    foreign key (company_id, subscription_id) references webhook_subscriptions (company_id, public_id) on delete cascade
);
create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at) where state = 'pending';
-- Per-record order: a record's later event waits for its earlier one.
create index webhook_deliveries_record_idx on webhook_deliveries (company_id, subscription_id, resource, external_id, event_id)
    where state = 'pending';
create index webhook_deliveries_created_idx on webhook_deliveries (created_at);

-- Every attempt, for the delivery log.
create table webhook_attempts (
    company_id      bigint not null,
    subscription_id text not null,
    event_id        bigint not null,
    attempt         integer not null,
    attempted_at    timestamptz not null default now(),
    status          smallint,
    latency_ms      real not null,
    response        text,
    error           text,
    primary key (company_id, subscription_id, event_id, attempt),
    foreign key (company_id, subscription_id) references webhook_subscriptions (company_id, public_id) on delete cascade
);
create index webhook_attempts_at_idx on webhook_attempts (attempted_at);
