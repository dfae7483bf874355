-- What a provider said during a run that an admin should act on, though the run succeeded (Jobber's
-- warning that the pinned API version is going away).
alter table sync_runs add column notices text[] not null default '{}';
