-- Page writes split across lanes.
--
-- A sync may split a page across several writers, one per lane, each company's records in one
-- lane. Records owned through a job (line items, payments, attachments) are dealt to their
-- job's company before the lanes take their locks; a job moved meanwhile (a customer's write)
-- would leave them behind. Every move of a job bumps this count in its transaction, so a lane
-- can tell that the owners it was dealt have changed, and the page is dealt again.
alter table connections add column job_moves bigint not null default 0;
