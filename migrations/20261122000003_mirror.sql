-- The mirror: one table per unified resource, hash-partitioned by company, every key and index
-- leading with company_id (Citus-ready: create_distributed_table(<table>, 'company_id')).
-- Row-level security confines the public read path (role clientapi_reader) to the company set
-- for its transaction with set_config('clientapi.company_id', …, true); unset sees nothing.

-- Customer companies inside a connection, allocated on first sight.
create table companies (
    id            bigint generated always as identity primary key,
    connection_id bigint not null references connections (id) on delete cascade,
    external_id   text not null,
    name          text,
    created_at    timestamptz not null default now(),
    constraint companies_connection_external_key unique (connection_id, external_id)
);

-- The cursor of the changes feed: bumped only when a row really changes.
create sequence mirror_change_seq;

-- Where each mirrored record lives now: finds the old company when a record moves.
create table mirror_keys (
    connection_id bigint not null references connections (id) on delete cascade,
    resource      text not null,
    external_id   text not null,
    company_id    bigint not null,
    primary key (connection_id, resource, external_id)
);

create table clients (
    company_id bigint not null, external_id text not null,
    name text not null default '', is_individual boolean not null default false, address text,
    billing_address text, website text, parent_id text,
    created_at timestamptz, remote_updated_at timestamptz, remote_data jsonb not null,
    synced_at timestamptz not null default now(), deleted_at timestamptz, change_seq bigint not null,
    primary key (company_id, external_id)
) partition by hash (company_id);

create table contacts (
    company_id bigint not null, external_id text not null,
    client_id text, first_name text, last_name text, email text, phone text, mobile text, kind text,
    is_primary boolean not null default false,
    created_at timestamptz, remote_updated_at timestamptz, remote_data jsonb not null,
    synced_at timestamptz not null default now(), deleted_at timestamptz, change_seq bigint not null,
    primary key (company_id, external_id)
) partition by hash (company_id);

create table jobs (
    company_id bigint not null, external_id text not null,
    client_id text, number bigint, status text not null default '', description text, address text,
    purchase_order text, scheduled_on date, completed_at timestamptz, total numeric(18, 4),
    currency text not null default '',
    created_at timestamptz, remote_updated_at timestamptz, remote_data jsonb not null,
    synced_at timestamptz not null default now(), deleted_at timestamptz, change_seq bigint not null,
    primary key (company_id, external_id)
) partition by hash (company_id);

create table invoices (
    company_id bigint not null, external_id text not null,
    client_id text, job_id text, number bigint, status text not null default '', issued_at timestamptz,
    paid_at timestamptz, total numeric(18, 4), currency text not null default '',
    created_at timestamptz, remote_updated_at timestamptz, remote_data jsonb not null,
    synced_at timestamptz not null default now(), deleted_at timestamptz, change_seq bigint not null,
    primary key (company_id, external_id)
) partition by hash (company_id);

create table line_items (
    company_id bigint not null, external_id text not null,
    job_id text, invoice_id text, name text not null default '', quantity numeric(18, 4) not null default 0,
    unit_price numeric(18, 4), total numeric(18, 4), currency text not null default '',
    created_at timestamptz, remote_updated_at timestamptz, remote_data jsonb not null,
    synced_at timestamptz not null default now(), deleted_at timestamptz, change_seq bigint not null,
    primary key (company_id, external_id)
) partition by hash (company_id);

create table payments (
    company_id bigint not null, external_id text not null,
    job_id text, invoice_id text, amount numeric(18, 4) not null default 0, method text, paid_at timestamptz,
    note text, is_deposit boolean not null default false, currency text not null default '',
    created_at timestamptz, remote_updated_at timestamptz, remote_data jsonb not null,
    synced_at timestamptz not null default now(), deleted_at timestamptz, change_seq bigint not null,
    primary key (company_id, external_id)
) partition by hash (company_id);

create table attachments (
    company_id bigint not null, external_id text not null,
    job_id text, related_object text, related_object_id text, name text not null default '', file_type text,
    source text,
    created_at timestamptz, remote_updated_at timestamptz, remote_data jsonb not null,
    synced_at timestamptz not null default now(), deleted_at timestamptz, change_seq bigint not null,
    primary key (company_id, external_id)
) partition by hash (company_id);

do $$
declare
    t text;
    i int;
begin
    foreach t in array array['clients', 'contacts', 'jobs', 'invoices', 'line_items', 'payments', 'attachments'] loop
        for i in 0..7 loop
            execute format('create table %I partition of %I for values with (modulus 8, remainder %s)', t || '_p' || i, t, i);
        end loop;
        execute format('create index %I on %I (company_id, remote_updated_at, external_id)', t || '_updated_idx', t);
        execute format('create index %I on %I (company_id, change_seq)', t || '_change_idx', t);
        execute format('alter table %I enable row level security', t);
        execute format(
            'create policy company_scope on %I for select to clientapi_reader
             using (company_id = nullif(current_setting(''clientapi.company_id'', true), '''')::bigint)', t);
        execute format('grant select on %I to clientapi_reader', t);
    end loop;
end
$$;

create index contacts_client_idx on contacts (company_id, client_id);
create index jobs_client_idx on jobs (company_id, client_id);
create index jobs_number_idx on jobs (company_id, number);
create index invoices_job_idx on invoices (company_id, job_id);
create index invoices_number_idx on invoices (company_id, number);
create index line_items_job_idx on line_items (company_id, job_id);
create index line_items_invoice_idx on line_items (company_id, invoice_id);
create index payments_job_idx on payments (company_id, job_id);
create index payments_invoice_idx on payments (company_id, invoice_id);
create index attachments_job_idx on attachments (company_id, job_id);

-- Per connection × stream: the committed watermark, and the scan in progress (resumable).
create table sync_state (
    connection_id   bigint not null references connections (id) on delete cascade,
    stream          text not null,
    watermark       text,
    scan_page       text,
    scan_max        text,
    last_success_at timestamptz,
    last_full_at    timestamptz,
    updated_at      timestamptz not null default now(),
    primary key (connection_id, stream)
);

create table sync_runs (
    id            bigint generated always as identity primary key,
    connection_id bigint not null references connections (id) on delete cascade,
    kind          text not null check (kind in ('incremental', 'full')),
    status        text not null default 'running' check (status in ('running', 'succeeded', 'failed')),
    started_at    timestamptz not null default now(),
    finished_at   timestamptz,
    pages         bigint not null default 0,
    fetched       bigint not null default 0,
    inserted      bigint not null default 0,
    updated       bigint not null default 0,
    unchanged     bigint not null default 0,
    deleted       bigint not null default 0,
    unowned       bigint not null default 0,
    record_errors jsonb not null default '[]',
    error         text,
    lag_seconds   double precision
);
create index sync_runs_connection_idx on sync_runs (connection_id, id desc);

-- At most one running sync per connection, across any number of worker processes.
alter table connections add column sync_lease_owner uuid, add column sync_lease_until timestamptz;
