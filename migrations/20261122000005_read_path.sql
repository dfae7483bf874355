-- The public read path pages by keyset over (sort key, external_id). Sort keys must not be
-- null for plain row comparisons: an unknown time is stored as -infinity (shown as null).

do $$
declare
    t text;
begin
    foreach t in array array['clients', 'contacts', 'jobs', 'invoices', 'line_items', 'payments', 'attachments'] loop
        execute format('update %I set remote_updated_at = ''-infinity'' where remote_updated_at is null', t);
        execute format('update %I set created_at = ''-infinity'' where created_at is null', t);
        execute format('alter table %I alter column remote_updated_at set default ''-infinity'', alter column remote_updated_at set not null', t);
        execute format('alter table %I alter column created_at set default ''-infinity'', alter column created_at set not null', t);
        execute format('create index %I on %I (company_id, created_at, external_id)', t || '_created_idx', t);
    end loop;
end
$$;

create index jobs_number_key_idx on jobs (company_id, (coalesce(number, -1)), external_id);
create index invoices_number_key_idx on invoices (company_id, (coalesce(number, -1)), external_id);
