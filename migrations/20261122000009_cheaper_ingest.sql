-- Cheaper ingest.
--
-- The key registry is written for every record a sync mirrors. Its foreign key to connections
-- cost a trigger and a lookup per row (a third of the registry's insert time at a million
-- rows); a statement-level trigger keeps the cleanup the cascade gave, once per delete.
alter table mirror_keys drop constraint mirror_keys_connection_id_fkey;

create function mirror_keys_forget_connections() returns trigger language plpgsql as $$
begin
    delete from mirror_keys k using gone where k.connection_id = gone.id;
    return null;
end
$$;

create trigger connections_forget_mirror_keys after delete on connections
    referencing old table as gone for each statement execute function mirror_keys_forget_connections();

-- Nothing filters by number alone: sorting by number uses (company_id, coalesce(number, -1),
-- external_id), so these two only cost every insert.
drop index jobs_number_idx;
drop index invoices_number_idx;

-- The provider's raw record is returned, never searched: no planner statistics for it. ANALYZE
-- (autovacuum's, during a bulk sync) otherwise sorts and compares every sampled document.
do $$
declare
    t text;
begin
    foreach t in array array['clients', 'contacts', 'jobs', 'invoices', 'line_items', 'payments', 'attachments'] loop
        execute format('alter table %I alter column remote_data set statistics 0', t);
    end loop;
end
$$;
