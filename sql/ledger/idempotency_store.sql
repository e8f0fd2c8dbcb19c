-- Stores the response of an executed request, in the transaction that made its effects.
CREATE OR REPLACE FUNCTION ledger.idempotency_store(
    ctx ledger.request_context,
    idempotency_key uuid,
    operation text,
    request_hash text,
    response_status integer,
    response_body jsonb
)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO ledger.idempotency_keys (scope, key, operation, request_hash, response_status,
                                         response_body, expires_at)
    SELECT ctx.scope, idempotency_key, operation, request_hash, response_status, response_body,
           now() + COALESCE(NULLIF(current_setting('financeatp.idempotency_ttl', true), ''), '24 hours')::interval
    WHERE idempotency_key IS NOT NULL
$$;
