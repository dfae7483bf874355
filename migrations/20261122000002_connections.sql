-- Connected provider accounts and the OAuth flow that creates them.

create table connections (
    id                  bigint generated always as identity primary key,
    account_id          bigint not null references accounts (id) on delete cascade,
    provider            text not null,
    external_account_id text not null,
    name                text not null default '',
    status              text not null default 'active'
                        check (status in ('active', 'needs_reauth', 'disconnected')),
    -- AES-256-GCM (nonce || ciphertext), the AAD binding each to this connection and field.
    access_token_enc    bytea,
    refresh_token_enc   bytea,
    token_expires_at    timestamptz,
    scopes              text[] not null default '{}',
    -- Six-field cron expressions (sec min hour day month weekday), UTC.
    sync_schedule       text not null default '0 */5 * * * *',
    reconcile_schedule  text not null default '0 30 3 * * *',
    last_error          text,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint connections_account_provider_external_key unique (account_id, provider, external_account_id)
);
create index connections_account_idx on connections (account_id);

-- One row per authorize call: single use, short-lived, bound to the admin who started it.
-- Only SHA-256 of `state` is stored; the PKCE verifier is encrypted like tokens.
create table oauth_states (
    state_hash        bytea primary key,
    account_id        bigint not null references accounts (id) on delete cascade,
    user_id           bigint not null references users (id) on delete cascade,
    provider          text not null,
    pkce_verifier_enc bytea not null,
    created_at        timestamptz not null default now(),
    expires_at        timestamptz not null
);
