-- Foundation: operator accounts, their users, dashboard sessions and automation tokens,
-- and the role the public read path will run as under row-level security.

create table accounts (
    id          bigint generated always as identity primary key,
    name        text not null check (length(name) between 1 and 200),
    created_at  timestamptz not null default now()
);

create table users (
    id            bigint generated always as identity primary key,
    account_id    bigint not null references accounts (id) on delete cascade,
    email         text not null check (email = lower(email) and length(email) between 3 and 320),
    -- argon2id PHC string; the plaintext password is never stored.
    password_hash text not null,
    created_at    timestamptz not null default now(),
    constraint users_email_key unique (email)
);
create index users_account_idx on users (account_id);

-- Dashboard sessions: only SHA-256 of the cookie value is stored.
create table sessions (
    id          bigint generated always as identity primary key,
    user_id     bigint not null references users (id) on delete cascade,
    token_hash  bytea not null unique,
    csrf_token  text not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null
);
create index sessions_user_idx on sessions (user_id);

-- Automation tokens (`ak_…`): high-entropy random strings, so SHA-256 is a sufficient hash
-- and keeps verification cheap; the plaintext is shown once and never stored.
create table admin_tokens (
    id           bigint generated always as identity primary key,
    account_id   bigint not null references accounts (id) on delete cascade,
    user_id      bigint not null references users (id) on delete cascade,
    name         text not null default '',
    token_hash   bytea not null unique,
    hint         text not null,
    created_at   timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
create index admin_tokens_account_idx on admin_tokens (account_id);

-- The public read path runs as this non-owner role with the company set per transaction, so
-- row-level security (added with the mirror tables) is enforced on it. Roles are cluster-wide:
-- create it once, whichever database migrates first.
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'clientapi_reader') then
        create role clientapi_reader nologin;
    end if;
end
$$;
grant clientapi_reader to current_user;
grant usage on schema public to clientapi_reader;
