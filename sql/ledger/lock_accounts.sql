-- The accounts of a batch, the paying one (debit_user's debit_type) and each leg's receiver
-- (its user_id and account_type; repeats allowed), locked
-- in account-id order in one statement, so that two batches over the same users cannot
-- deadlock, and read under the lock. Like ledger.lock_pair: no row for a user without an open
-- account of that type, and nothing returned (nothing locked) when a live response is stored
-- under the idempotency key. Inlined by the planner into the calling statement.
CREATE OR REPLACE FUNCTION ledger.lock_accounts(
    debit_user uuid,
    debit_type text,
    legs ledger.batch_leg[],
    scope text,
    idempotency_key uuid
)
RETURNS SETOF ledger.locked_account
LANGUAGE sql
STABLE
AS $$
    SELECT b.account_id, a.user_id, a.account_type, b.normal_side, b.balance, b.held, b.is_frozen, b.version
      FROM ledger.accounts a
      JOIN ledger.balances b ON b.account_id = a.id
     WHERE ((a.user_id = lock_accounts.debit_user AND a.account_type = lock_accounts.debit_type)
            OR (a.user_id, a.account_type) IN (SELECT l.user_id, l.account_type FROM unnest(lock_accounts.legs) l))
       AND (a.account_type <> 'user_wallet' OR NOT a.is_system)
       AND NOT b.is_closed
       AND NOT EXISTS (SELECT FROM ledger.idempotency_keys i
                        WHERE i.scope = lock_accounts.scope AND i.key = lock_accounts.idempotency_key
                          AND i.expires_at > now())
     ORDER BY b.account_id
       FOR UPDATE OF b
$$;
