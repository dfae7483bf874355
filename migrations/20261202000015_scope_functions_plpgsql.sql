-- The two scope functions the reader role calls, rewritten in PL/pgSQL with the same results.
-- A SQL-language function that cannot be inlined (these are security definer) has its body
-- planned again in every statement that calls it; a PL/pgSQL function keeps its plan for the
-- session. On the jobs list (which asks clientapi_scope_client() once per statement) that was a
-- quarter of the statement's execution time, and with technicians:read the staff lookup asked
-- clientapi_account_scope() on every row (bench/README.md).

create or replace function clientapi_account_scope(company bigint) returns bigint
    language plpgsql stable security definer set search_path = public as $$
begin
    return (select a.id from companies c
            join companies a on a.connection_id = c.connection_id and a.external_id = ''
            where c.id = company);
end
$$;

create or replace function clientapi_scope_client() returns text
    language plpgsql stable security definer set search_path = public as $$
begin
    return (select external_id from companies
            where id = nullif(current_setting('clientapi.company_id', true), '')::bigint);
end
$$;
