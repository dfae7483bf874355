-- Scoped customer endpoints, their keys, and the request log.

create table endpoints (
    id                    bigint generated always as identity primary key,
    -- What customers see in their URL: /api/public/{public_id}
    public_id             text not null unique,
    account_id            bigint not null references accounts (id) on delete cascade,
    connection_id         bigint not null references connections (id) on delete cascade,
    company_id            bigint not null references companies (id) on delete cascade,
    name                  text not null check (length(name) between 1 and 200),
    access                text not null check (access in ('read_only', 'read_write')),
    scopes                text[] not null,
    environment           text not null default 'live' check (environment in ('live', 'test')),
    status                text not null default 'active' check (status in ('active', 'inactive')),
    ip_allowlist          cidr[] not null default '{}',
    rate_limit_per_minute integer not null default 600 check (rate_limit_per_minute between 1 and 1000000),
    expires_at            timestamptz,
    last_used_at          timestamptz,
    last_used_ip          inet,
    created_at            timestamptz not null default now(),
    updated_at            timestamptz not null default now()
);
create index endpoints_account_idx on endpoints (account_id);

-- Keys: argon2id PHC hashes only. During a reissue's grace window the old key has
-- expires_at in the future; a revoked key has revoked_at set.
create table endpoint_keys (
    id          bigint generated always as identity primary key,
    endpoint_id bigint not null references endpoints (id) on delete cascade,
    key_hash    text not null,
    hint        text not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
create index endpoint_keys_endpoint_idx on endpoint_keys (endpoint_id) where revoked_at is null;

-- One row per public request, written in batches off the request path. Daily partitions are
-- created ahead and dropped past the retention by the service.
create table request_logs (
    created_at   timestamptz not null,
    request_id   text not null,
    endpoint_id  bigint,
    key_id       bigint,
    method       text not null,
    path         text not null,
    resource     text,
    status       smallint not null,
    item_count   integer,
    duration_ms  real not null,
    query        jsonb,
    error_code   text,
    client_ip    inet,
    user_agent   text,
    operation    text
) partition by range (created_at);
create table request_logs_default partition of request_logs default;
create index request_logs_endpoint_idx on request_logs (endpoint_id, created_at);

-- Any change to an endpoint or its keys tells every process to drop cached verifications.
create function notify_endpoint_change() returns trigger language plpgsql as $$
begin
    perform pg_notify('clientapi_endpoints', coalesce(new.endpoint_id, old.endpoint_id)::text);
    return null;
end
$$;
create function notify_endpoint_row_change() returns trigger language plpgsql as $$
begin
    perform pg_notify('clientapi_endpoints', coalesce(new.id, old.id)::text);
    return null;
end
$$;
create trigger endpoint_keys_changed after insert or update or delete on endpoint_keys
    for each row execute function notify_endpoint_change();
-- Not on last_used_*: those are batch-written every few seconds and change no access decision.
create trigger endpoints_changed
    after update of public_id, connection_id, company_id, name, access, scopes, environment, status, ip_allowlist,
                    rate_limit_per_minute, expires_at
    or delete on endpoints
    for each row execute function notify_endpoint_row_change();
