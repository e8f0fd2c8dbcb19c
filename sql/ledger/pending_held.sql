-- What an account's pending holds reserve: the value its balances row's held must have.
CREATE OR REPLACE FUNCTION ledger.pending_held(account_id uuid)
RETURNS numeric
LANGUAGE sql
STABLE
PARALLEL SAFE
AS $$
    SELECT COALESCE(sum(h.amount), 0) FROM ledger.holds h
     WHERE h.from_account_id = pending_held.account_id AND h.status = 'pending'
$$;
