-- Idempotency keys of public writes (DESIGN.md §5), kept 24 hours. A create's provider id is
-- chosen before the provider is called and kept here, so a retry after a lost answer looks the
-- record up instead of creating it twice.
create table idempotency_keys (
    endpoint_id     bigint not null references endpoints (id) on delete cascade,
    key             text not null,
    request_hash    text not null,
    state           text not null default 'in_flight' check (state in ('in_flight', 'retryable', 'done')),
    record_id       text,
    response_status smallint,
    response_body   text,
    created_at      timestamptz not null default now(),
    primary key (endpoint_id, key)
);
create index idempotency_keys_created_idx on idempotency_keys (created_at);
