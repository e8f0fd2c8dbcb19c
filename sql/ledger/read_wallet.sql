-- Who is calling (ledger.caller, for a read) and the user's open wallet with its balance, in the
-- one statement of a read: a user who does not exist, was deleted or is a system user has no
-- row on the wallet's side (account_id NULL). It only reads, so the wallet may be read before the
-- caller's refusal is raised: nothing is returned then. An SQL set-returning function that the
-- planner inlines into the calling api function, as ledger.caller is: reading through
-- ledger.authorize and ledger.wallet_of instead cost a balance read 16% more PostgreSQL CPU
-- (bench/README.md, "Seventh pass").
CREATE OR REPLACE FUNCTION ledger.read_wallet(
    api_key_hash text,
    correlation_id text,
    user_id uuid
)
RETURNS TABLE (
    refusal text,
    actor text,
    api_key_id uuid,
    key_name text,
    rate_limit integer,
    current_count bigint,
    previous_count bigint,
    elapsed double precision,
    stale_last_used boolean,
    account_id uuid,
    username text,
    balance numeric,
    held numeric,
    is_frozen boolean,
    updated_at timestamptz
)
LANGUAGE sql
STABLE
AS $$
    SELECT c.refusal, c.actor, c.api_key_id, c.key_name, c.rate_limit, c.current_count, c.previous_count,
           c.elapsed, c.stale_last_used, w.account_id, w.username, w.balance, w.held, w.is_frozen, w.updated_at
      FROM ledger.caller(read_wallet.api_key_hash, 'read', NULL, read_wallet.correlation_id) c
      LEFT JOIN (SELECT a.id AS account_id, u.username, b.balance, b.held, b.is_frozen, b.updated_at
                   FROM ledger.users u
                   JOIN ledger.accounts a ON a.user_id = u.id AND a.account_type = 'user_wallet'
                   JOIN ledger.balances b ON b.account_id = a.id
                  WHERE u.id = read_wallet.user_id AND u.deleted_at IS NULL AND NOT u.is_system) w ON true
$$;
