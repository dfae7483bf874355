-- Sites, visits, staff and lookups (DESIGN.md §4 "Sites"), and the one scoping rule for sites:
-- an endpoint's company is the head office with all its sites, and every record of any of them.

-- Jobs carry their job type and custom field values.
alter table jobs add column job_type_id text, add column custom_fields jsonb;

-- A site: a client with a head office (ServiceM8 `company.parent_company_uuid`), mirrored under
-- the head office's company like everything at the site.
create table sites (
    company_id bigint not null, external_id text not null,
    client_id text, name text not null default '', address text,
    created_at timestamptz not null default '-infinity', remote_updated_at timestamptz not null default '-infinity',
    remote_data jsonb not null, synced_at timestamptz not null default now(), deleted_at timestamptz,
    change_seq bigint not null default nextval('mirror_change_seq'),
    primary key (company_id, external_id)
) partition by hash (company_id);

-- Scheduled work on a job (ServiceM8 `jobactivity`): moves with its job.
create table visits (
    company_id bigint not null, external_id text not null,
    job_id text, staff_id text, start_at timestamptz, end_at timestamptz, status text not null default '',
    created_at timestamptz not null default '-infinity', remote_updated_at timestamptz not null default '-infinity',
    remote_data jsonb not null, synced_at timestamptz not null default now(), deleted_at timestamptz,
    change_seq bigint not null default nextval('mirror_change_seq'),
    primary key (company_id, external_id)
) partition by hash (company_id);

-- Account-wide at the provider: mirrored once per connection, under its account scope (the
-- registry's company with the reserved external id '', for which no endpoint is issued).
create table staff (
    company_id bigint not null, external_id text not null,
    first_name text, last_name text, email text, phone text, job_title text, active boolean not null default true,
    created_at timestamptz not null default '-infinity', remote_updated_at timestamptz not null default '-infinity',
    remote_data jsonb not null, synced_at timestamptz not null default now(), deleted_at timestamptz,
    change_seq bigint not null default nextval('mirror_change_seq'),
    primary key (company_id, external_id)
) partition by hash (company_id);

create table job_types (
    company_id bigint not null, external_id text not null,
    name text not null default '', colour text,
    created_at timestamptz not null default '-infinity', remote_updated_at timestamptz not null default '-infinity',
    remote_data jsonb not null, synced_at timestamptz not null default now(), deleted_at timestamptz,
    change_seq bigint not null default nextval('mirror_change_seq'),
    primary key (company_id, external_id)
) partition by hash (company_id);

create table custom_fields (
    company_id bigint not null, external_id text not null,
    name text not null default '', label text, field_type text not null default 'text', choices jsonb,
    created_at timestamptz not null default '-infinity', remote_updated_at timestamptz not null default '-infinity',
    remote_data jsonb not null, synced_at timestamptz not null default now(), deleted_at timestamptz,
    change_seq bigint not null default nextval('mirror_change_seq'),
    primary key (company_id, external_id)
) partition by hash (company_id);

create table tax_rates (
    company_id bigint not null, external_id text not null,
    name text not null default '', rate numeric(18, 4), is_default boolean not null default false,
    created_at timestamptz not null default '-infinity', remote_updated_at timestamptz not null default '-infinity',
    remote_data jsonb not null, synced_at timestamptz not null default now(), deleted_at timestamptz,
    change_seq bigint not null default nextval('mirror_change_seq'),
    primary key (company_id, external_id)
) partition by hash (company_id);

create table materials (
    company_id bigint not null, external_id text not null,
    name text not null default '', item_number text, price numeric(18, 4), tax_rate_id text,
    currency text not null default '',
    created_at timestamptz not null default '-infinity', remote_updated_at timestamptz not null default '-infinity',
    remote_data jsonb not null, synced_at timestamptz not null default now(), deleted_at timestamptz,
    change_seq bigint not null default nextval('mirror_change_seq'),
    primary key (company_id, external_id)
) partition by hash (company_id);

-- The account scope of a company's connection, for the reader role (which cannot read the
-- registry itself): the rows of staff and lookups an endpoint may see.
create function clientapi_account_scope(company bigint) returns bigint
    language sql stable security definer set search_path = public as $$
    select a.id from companies c
    join companies a on a.connection_id = c.connection_id and a.external_id = ''
    where c.id = company
$$;

-- The provider id of the company the read transaction is scoped to (its head office).
create function clientapi_scope_client() returns text
    language sql stable security definer set search_path = public as $$
    select external_id from companies where id = nullif(current_setting('clientapi.company_id', true), '')::bigint
$$;

revoke all on function clientapi_account_scope(bigint) from public;
revoke all on function clientapi_scope_client() from public;
grant execute on function clientapi_account_scope(bigint) to clientapi_reader;
grant execute on function clientapi_scope_client() to clientapi_reader;

do $$
declare
    t text;
    i int;
begin
    foreach t in array array['sites', 'visits', 'staff', 'job_types', 'custom_fields', 'tax_rates', 'materials'] loop
        for i in 0..7 loop
            execute format('create table %I partition of %I for values with (modulus 8, remainder %s)', t || '_p' || i, t, i);
        end loop;
        execute format('create index %I on %I (company_id, remote_updated_at, external_id)', t || '_updated_idx', t);
        execute format('create index %I on %I (company_id, created_at, external_id)', t || '_created_idx', t);
        execute format('create index %I on %I (company_id, change_seq)', t || '_change_idx', t);
        execute format('alter table %I alter column remote_data set statistics 0', t);
        execute format('alter table %I enable row level security', t);
        if t in ('sites', 'visits') then
            execute format(
                'create policy company_scope on %I for select to clientapi_reader
                 using (company_id = nullif(current_setting(''clientapi.company_id'', true), '''')::bigint)', t);
        else
            execute format(
                'create policy company_scope on %I for select to clientapi_reader
                 using (company_id = clientapi_account_scope(nullif(current_setting(''clientapi.company_id'', true), '''')::bigint))', t);
        end if;
        execute format('grant select on %I to clientapi_reader', t);
    end loop;
end
$$;

create index sites_client_idx on sites (company_id, client_id);
create index visits_job_idx on visits (company_id, job_id, start_at);

-- Existing mirrors, brought to the rule. A record that named a site before it was known to be
-- one (a contact or job at a site) was mirrored under a company of the site's own id: every
-- such record moves to where the site lives (its head office's company), nothing dropped.
do $$
declare
    m record;
    t text;
begin
    for m in
        select own.id as from_id, c.company_id as to_id
        from clients c
        join mirror_keys k on k.resource = 'client' and k.external_id = c.external_id and k.company_id = c.company_id
        join companies own on own.connection_id = k.connection_id and own.external_id = c.external_id
        where c.parent_id is not null and own.id <> c.company_id
    loop
        foreach t in array array['clients', 'contacts', 'jobs', 'invoices', 'line_items', 'payments', 'attachments'] loop
            execute format(
                'update %I set company_id = $2, change_seq = nextval(''mirror_change_seq''), synced_at = now()
                 where company_id = $1', t) using m.from_id, m.to_id;
        end loop;
        update mirror_keys set company_id = m.to_id where company_id = m.from_id;
    end loop;
end
$$;

-- The sites the mirror already holds among its clients, as sites.
insert into sites (company_id, external_id, client_id, name, address, created_at, remote_updated_at, remote_data,
                   synced_at, deleted_at)
select company_id, external_id, parent_id, name, address, created_at, remote_updated_at, remote_data, synced_at,
       deleted_at
from clients where parent_id is not null;

insert into mirror_keys (connection_id, resource, external_id, company_id)
select k.connection_id, 'site', s.external_id, s.company_id
from sites s join mirror_keys k on k.resource = 'client' and k.external_id = s.external_id and k.company_id = s.company_id
on conflict do nothing;
