-- When a stored response written now expires: now plus ledger.settings' idempotency_ttl (24 hours
-- unless the owner changed it). The one place that rule lives. It is an SQL function that returns
-- a row, for its callers' FROM, where the planner inlines it as a scan of the one-row table: as a
-- scalar with a subquery it would not inline, and would be a function call per request.
CREATE OR REPLACE FUNCTION ledger.idempotency_expires_at()
RETURNS TABLE (expires_at timestamptz)
LANGUAGE sql
STABLE
AS $$
    SELECT now() + s.idempotency_ttl FROM ledger.settings s
$$;
