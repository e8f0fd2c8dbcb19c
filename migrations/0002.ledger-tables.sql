-- depends: 0001.roles-and-schemas
-- Every object is created by, and so owned by, atp_owner. The RESET at the end hands the
-- connection back to the migrating role, which records the migration in yoyo's own tables.
SET LOCAL ROLE atp_owner;

-- People and the three system users. Usernames and emails are unique among live users only,
-- so a logically deleted user's username and email can be taken again.
CREATE TABLE ledger.users (
    id uuid PRIMARY KEY,
    username text NOT NULL,
    email text NOT NULL,
    display_name text,
    is_system boolean NOT NULL DEFAULT false,
    version bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at timestamptz,
    CONSTRAINT users_username_format CHECK (username ~ '^[A-Za-z0-9_]{3,50}$'),
    CONSTRAINT users_email_format CHECK (
        length(email) <= 254 AND email ~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$'),
    CONSTRAINT users_display_name_length CHECK (
        display_name IS NULL OR length(display_name) BETWEEN 1 AND 100),
    CONSTRAINT users_version_not_negative CHECK (version >= 0),
    CONSTRAINT users_id_is_system_key UNIQUE (id, is_system)
);
CREATE UNIQUE INDEX users_username_live ON ledger.users (lower(username)) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX users_email_live ON ledger.users (lower(email)) WHERE deleted_at IS NULL;

-- The chart of accounts. One accounting model for all: an account's balance grows on its
-- normal side. ATP held by anyone is owed by the issuer (credit-normal); mint_source
-- counts what has been issued (debit-normal). See README "Accounting model".
CREATE TABLE ledger.account_types (
    code text PRIMARY KEY,
    name text NOT NULL,
    normal_side text NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    is_system_only boolean NOT NULL
);
INSERT INTO ledger.account_types (code, name, normal_side, is_system_only) VALUES
    ('user_wallet', 'User wallet', 'credit', false),
    ('mint_source', 'ATP issued', 'debit', true),
    ('fee_income', 'Fee income', 'credit', true),
    ('system_reserve', 'System reserve', 'credit', true);

-- One wallet per user; only system users hold other account types. is_system is copied
-- from users and pinned by the composite foreign key (a CHECK cannot look at users).
CREATE TABLE ledger.accounts (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    is_system boolean NOT NULL,
    account_type text NOT NULL REFERENCES ledger.account_types (code),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT accounts_user_fk FOREIGN KEY (user_id, is_system)
        REFERENCES ledger.users (id, is_system),
    CONSTRAINT accounts_one_per_type UNIQUE (user_id, account_type),
    CONSTRAINT accounts_wallet_only_for_people CHECK (is_system OR account_type = 'user_wallet')
);

-- The projection of each account aggregate: written only by the event trigger, in the
-- transaction that appends the events. NUMERIC(21,8) so that 10^12 itself fits.
CREATE TABLE ledger.balances (
    account_id uuid PRIMARY KEY REFERENCES ledger.accounts (id),
    normal_side text NOT NULL CHECK (normal_side IN ('debit', 'credit')),  -- copied from the type
    balance numeric(21, 8) NOT NULL DEFAULT 0,
    is_frozen boolean NOT NULL DEFAULT false,
    is_closed boolean NOT NULL DEFAULT false,
    version bigint NOT NULL,
    last_event_id bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    CONSTRAINT balances_within_limits CHECK (balance >= 0 AND balance <= 1000000000000),
    CONSTRAINT balances_version_positive CHECK (version > 0)
) WITH (fillfactor = 50);  -- room on each page keeps the hot balance updates HOT

CREATE SEQUENCE ledger.event_id_seq AS bigint;
CREATE SEQUENCE ledger.ledger_entry_id_seq AS bigint;

-- The event store: append-only, partitioned by month. Versions are unique per aggregate
-- because the projection trigger accepts only version = current + 1 under the row lock
-- of the aggregate (a unique index cannot span partitions).
CREATE TABLE ledger.events (
    id bigint NOT NULL DEFAULT nextval('ledger.event_id_seq'),
    tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    aggregate_type text NOT NULL,
    aggregate_id uuid NOT NULL,
    version bigint NOT NULL,
    event_type text NOT NULL,
    data jsonb NOT NULL,
    actor text NOT NULL,
    api_key_id uuid,
    request_user_id uuid,
    correlation_id text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_pkey PRIMARY KEY (id, created_at),
    CONSTRAINT events_aggregate_type CHECK (aggregate_type IN ('account', 'user')),
    CONSTRAINT events_version_positive CHECK (version > 0)
) PARTITION BY RANGE (created_at);
CREATE INDEX events_aggregate ON ledger.events (aggregate_id, version);
CREATE INDEX events_feed ON ledger.events (tx_id, id);
CREATE TABLE ledger.events_default PARTITION OF ledger.events DEFAULT;

-- Double-entry journal lines, one per money event. balance_after makes history cheap.
CREATE TABLE ledger.ledger_entries (
    id bigint NOT NULL DEFAULT nextval('ledger.ledger_entry_id_seq'),
    journal_id uuid NOT NULL,
    event_id bigint NOT NULL,
    account_id uuid NOT NULL,
    side text NOT NULL,
    amount numeric(21, 8) NOT NULL,
    balance_after numeric(21, 8) NOT NULL,
    kind text NOT NULL,
    counterparty_user_id uuid,
    memo text,
    created_at timestamptz NOT NULL,
    CONSTRAINT ledger_entries_pkey PRIMARY KEY (id, created_at),
    CONSTRAINT ledger_entries_side CHECK (side IN ('debit', 'credit')),
    CONSTRAINT ledger_entries_amount CHECK (amount > 0 AND amount <= 1000000000000),
    CONSTRAINT ledger_entries_balance_after CHECK (
        balance_after >= 0 AND balance_after <= 1000000000000),
    CONSTRAINT ledger_entries_kind CHECK (kind IN ('mint', 'burn', 'transfer_in', 'transfer_out'))
) PARTITION BY RANGE (created_at);
CREATE INDEX ledger_entries_account ON ledger.ledger_entries (account_id, id);
CREATE INDEX ledger_entries_journal ON ledger.ledger_entries (journal_id);
CREATE TABLE ledger.ledger_entries_default PARTITION OF ledger.ledger_entries DEFAULT;

-- The partitions of this month and the next three exist before anything is written;
-- ledger.ensure_partitions (run by every migrate and by maintenance) keeps them ahead.
DO $$
DECLARE
    _month date;
BEGIN
    FOR _month IN
        SELECT generate_series(date_trunc('month', now()), date_trunc('month', now()) + interval '3 months', interval '1 month')::date
    LOOP
        EXECUTE format('CREATE TABLE ledger.%I PARTITION OF ledger.events FOR VALUES FROM (%L) TO (%L)',
                       'events_' || to_char(_month, 'YYYY_MM'), _month, _month + interval '1 month');
        EXECUTE format('CREATE TABLE ledger.%I PARTITION OF ledger.ledger_entries FOR VALUES FROM (%L) TO (%L)',
                       'ledger_entries_' || to_char(_month, 'YYYY_MM'), _month, _month + interval '1 month');
    END LOOP;
END
$$;

-- Who is calling, as established by ledger.authorize; passed to every helper that records.
CREATE TYPE ledger.request_context AS (
    api_key_id uuid,
    actor text,
    request_user_id uuid,
    correlation_id text,
    client_addr inet,
    scope text
);

-- Every 100th version of an account, the state at that version: as-of balances replay at
-- most 99 events on top of the newest snapshot before the moment asked for.
CREATE TABLE ledger.snapshots (
    account_id uuid NOT NULL REFERENCES ledger.accounts (id),
    version bigint NOT NULL,
    balance numeric(21, 8) NOT NULL,
    is_frozen boolean NOT NULL,
    is_closed boolean NOT NULL,
    event_created_at timestamptz NOT NULL,
    CONSTRAINT snapshots_pkey PRIMARY KEY (account_id, version)
);

-- Stored responses of write requests, scoped to the API key (or, for a psql caller, the
-- database role). Written in the transaction that makes the effects, so both commit or neither.
CREATE TABLE ledger.idempotency_keys (
    scope text NOT NULL,
    key uuid NOT NULL,
    operation text NOT NULL,
    request_hash text NOT NULL,
    response_status integer NOT NULL,
    response_body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, key)
);
-- expires_at only grows, so a BRIN index finds the expired keys at almost no cost per insert.
CREATE INDEX idempotency_keys_expiry ON ledger.idempotency_keys USING brin (expires_at);

-- Service keys. Only the SHA-256 of a key is kept; the key itself is shown once.
CREATE TABLE ledger.api_keys (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    key_prefix text NOT NULL,
    key_hash text NOT NULL,
    permissions text[] NOT NULL,
    rate_limit_per_minute integer NOT NULL DEFAULT 1000,
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by text NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz,
    -- The rate-limit buckets: two UNLOGGED sequences, for even and odd minutes, each holding
    -- minute * 10^9 + requests. A sequence counts outside transactions, so a request that
    -- fails still counts, and no request waits for another's commit (see ledger.authorize).
    bucket_even regclass,  -- NULL once api.cleanup_rate_limits dropped a dead key's buckets
    bucket_odd regclass,
    CONSTRAINT api_keys_name_length CHECK (length(name) BETWEEN 1 AND 100),
    CONSTRAINT api_keys_hash_format CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT api_keys_hash_unique UNIQUE (key_hash),
    CONSTRAINT api_keys_permissions CHECK (
        cardinality(permissions) > 0 AND permissions <@ ARRAY['read', 'write', 'admin']),
    CONSTRAINT api_keys_rate_limit_positive CHECK (rate_limit_per_minute > 0)
);

-- The audit log: one row per state change, hashed on its own (no lock shared between
-- writers); ledger.audit_seals chains the hashes in batches behind the commit horizon.
CREATE TABLE ledger.audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY CHECK (id > 0),
    tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    api_key_id uuid,
    request_user_id uuid,
    correlation_id text,
    client_addr inet,
    action text NOT NULL,
    resource_type text NOT NULL,
    resource_id text,
    before_state jsonb,
    after_state jsonb,
    row_hash bytea NOT NULL
);
-- The only index the hot path maintains: sealing and verification walk (tx_id, id). Audit
-- searches by resource or correlation id are rare and may scan (or get an index then).
CREATE INDEX audit_log_chain_order ON ledger.audit_log (tx_id, id);

CREATE TABLE ledger.audit_seals (
    seal_no bigint PRIMARY KEY,
    last_tx_id xid8 NOT NULL,
    last_id bigint NOT NULL,
    row_count bigint NOT NULL,
    previous_hash bytea NOT NULL,
    seal_hash bytea NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Append-only means append-only for the owner too: the privilege is gone, and the
-- triggers added by sql/ledger/forbid_change.sql refuse the statement even if re-granted.
REVOKE UPDATE, DELETE, TRUNCATE ON ledger.events, ledger.ledger_entries, ledger.audit_log,
    ledger.audit_seals FROM atp_owner;

-- Auditors read everything but the key hashes, which are credentials for the application role.
REVOKE SELECT ON ledger.api_keys FROM atp_auditor;
GRANT SELECT (id, name, key_prefix, permissions, rate_limit_per_minute, is_active, created_at, created_by,
              expires_at, revoked_at, last_used_at, bucket_even, bucket_odd) ON ledger.api_keys TO atp_auditor;

RESET ROLE;
