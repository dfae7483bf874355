-- Rows new to the mirror are copied straight into their table (a first sync's bulk path):
-- change_seq comes from the column's default, as synced_at already does.
do $$
declare
    t text;
begin
    foreach t in array array['clients', 'contacts', 'jobs', 'invoices', 'line_items', 'payments', 'attachments'] loop
        execute format('alter table %I alter column change_seq set default nextval(''mirror_change_seq'')', t);
    end loop;
end
$$;
