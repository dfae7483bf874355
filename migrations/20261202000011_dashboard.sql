-- The operators' dashboard: live or sandbox connections, paused schedules, live sync progress,
-- and one notification channel that carries admin events to every process's event streams.

-- A connection is live (a real provider account) or a sandbox (a simulator or a provider's
-- sandbox account), chosen at connect time. Test endpoints exist only on sandboxes and live
-- endpoints only on live connections (enforced where endpoints are created and edited).
alter table connections
    add column environment text not null default 'live' check (environment in ('live', 'sandbox')),
    add column sync_paused boolean not null default false;
alter table oauth_states
    add column environment text not null default 'live' check (environment in ('live', 'sandbox'));

-- The stream a running sync is on and its counters per stream, written as each page commits.
alter table sync_runs add column stream text, add column streams jsonb not null default '{}';

-- Admin events: one JSON payload per change, always naming the account it belongs to, so each
-- process's event hub hands it only to that account's streams.
create function notify_admin_sync_run() returns trigger language plpgsql as $$
begin
    perform pg_notify('clientapi_admin_events', json_build_object(
        'type', 'sync_run', 'account_id', c.account_id, 'connection_id', new.connection_id, 'run_id', new.id,
        'kind', new.kind, 'status', new.status, 'stream', new.stream, 'pages', new.pages, 'fetched', new.fetched,
        'inserted', new.inserted, 'updated', new.updated, 'unchanged', new.unchanged, 'deleted', new.deleted,
        'error', left(new.error, 1000))::text)
    from connections c where c.id = new.connection_id;
    return null;
end
$$;
create trigger sync_runs_admin_event after insert or update on sync_runs
    for each row execute function notify_admin_sync_run();

create function notify_admin_connection() returns trigger language plpgsql as $$
begin
    perform pg_notify('clientapi_admin_events', json_build_object(
        'type', 'connection', 'account_id', new.account_id, 'connection_id', new.id, 'status', new.status,
        'paused', new.sync_paused, 'last_error', left(new.last_error, 1000))::text);
    return null;
end
$$;
create trigger connections_admin_event
    after insert or update of status, name, sync_paused, sync_schedule, reconcile_schedule, last_error on connections
    for each row execute function notify_admin_connection();

create function notify_admin_endpoint() returns trigger language plpgsql as $$
declare
    e endpoints;
begin
    e := coalesce(new, old);
    perform pg_notify('clientapi_admin_events', json_build_object(
        'type', 'endpoint', 'account_id', e.account_id, 'endpoint_id', e.public_id,
        'status', case when tg_op = 'DELETE' then 'deleted' else e.status end)::text);
    return null;
end
$$;
create trigger endpoints_admin_event
    after insert or delete or update of name, access, scopes, environment, status, ip_allowlist, rate_limit_per_minute,
                                       expires_at on endpoints
    for each row execute function notify_admin_endpoint();

create function notify_admin_endpoint_key() returns trigger language plpgsql as $$
begin
    perform pg_notify('clientapi_admin_events', json_build_object(
        'type', 'endpoint', 'account_id', e.account_id, 'endpoint_id', e.public_id, 'status', e.status,
        'key', case when tg_op = 'INSERT' then 'issued' else 'changed' end)::text)
    from endpoints e where e.id = new.endpoint_id;
    return null;
end
$$;
create trigger endpoint_keys_admin_event after insert or update on endpoint_keys
    for each row execute function notify_admin_endpoint_key();

-- Companies are searched by name on the dashboard's company picker.
create index companies_connection_name_idx on companies (connection_id, lower(coalesce(name, '')), id);

-- Tombstones per company, so a company's live records are counted from indexes alone (every row
-- by the primary key, less these): the company picker counts a page of companies at a time. Only
-- tombstoned rows enter these indexes.
do $$
declare
    t text;
begin
    foreach t in array array['clients', 'contacts', 'jobs', 'invoices', 'line_items', 'payments', 'attachments'] loop
        execute format('create index %I on %I (company_id) where deleted_at is not null', t || '_deleted_idx', t);
    end loop;
end
$$;
