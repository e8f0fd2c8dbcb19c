-- A hold, locked for its settlement (capture, void, expiry: each takes the hold's row lock
-- before any wallet's, so they settle it at most once and cannot deadlock with each other).
-- Nothing is returned, and nothing locked, when a live response is stored under the
-- idempotency key: the call is a replay then (as in ledger.lock_pair). Inlined by the planner.
CREATE OR REPLACE FUNCTION ledger.lock_hold(
    hold_id uuid,
    scope text,
    idempotency_key uuid
)
RETURNS SETOF ledger.holds
LANGUAGE sql
STABLE
AS $$
    SELECT h.*
      FROM ledger.holds h
     WHERE h.id = lock_hold.hold_id
       AND NOT EXISTS (SELECT FROM ledger.idempotency_keys i
                        WHERE i.scope = lock_hold.scope AND i.key = lock_hold.idempotency_key
                          AND i.expires_at > now())
       FOR UPDATE
$$;
