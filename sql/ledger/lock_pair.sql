-- The two accounts of a movement, locked in account-id order (so opposite movements cannot
-- deadlock) and read under the lock, each named by its owner and type (a wallet: the user and
-- 'user_wallet'; the issuer's account: the system user and 'mint_source'). A user who does not
-- exist, was deleted (the wallet is closed in the same transaction) or is a system user has no
-- open wallet, and no row. Nothing is returned, and nothing locked, when a live response is
-- stored under the idempotency key: the call is a replay then (the caller holds the key's
-- lock, and this statement's snapshot is newer than its taking). An SQL set-returning function
-- that the planner inlines into the calling statement: no function call at run time.
CREATE OR REPLACE FUNCTION ledger.lock_pair(
    debit_user uuid,
    debit_type text,
    credit_user uuid,
    credit_type text,
    scope text,
    idempotency_key uuid
)
RETURNS TABLE (
    account_id uuid,
    user_id uuid,
    is_debit boolean,
    normal_side text,
    balance numeric,
    held numeric,
    is_frozen boolean,
    version bigint
)
LANGUAGE sql
STABLE
AS $$
    SELECT b.account_id, a.user_id, a.user_id = lock_pair.debit_user AND a.account_type = lock_pair.debit_type,
           b.normal_side, b.balance, b.held, b.is_frozen, b.version
      FROM ledger.accounts a
      JOIN ledger.balances b ON b.account_id = a.id
     WHERE ((a.user_id = lock_pair.debit_user AND a.account_type = lock_pair.debit_type)
            OR (a.user_id = lock_pair.credit_user AND a.account_type = lock_pair.credit_type))
       AND (a.account_type <> 'user_wallet' OR NOT a.is_system)
       AND NOT b.is_closed
       AND NOT EXISTS (SELECT FROM ledger.idempotency_keys i
                        WHERE i.scope = lock_pair.scope AND i.key = lock_pair.idempotency_key
                          AND i.expires_at > now())
     ORDER BY b.account_id
       FOR UPDATE OF b
$$;
