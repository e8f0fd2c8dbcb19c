-- When a stored response written now expires: financeatp.idempotency_ttl (default 24 hours).
-- The one place that rule lives; a plain SQL function, so both callers inline it.
CREATE OR REPLACE FUNCTION ledger.idempotency_expiry()
RETURNS timestamptz
LANGUAGE sql
STABLE
AS $$
    SELECT now() + COALESCE(NULLIF(current_setting('financeatp.idempotency_ttl', true), ''), '24 hours')::interval
$$;
