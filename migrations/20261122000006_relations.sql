-- GraphQL relations walk from a client to its invoices; every other relation already has a
-- (company_id, column) index.
create index invoices_client_idx on invoices (company_id, client_id);
