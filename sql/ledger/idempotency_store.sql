-- Stores the response of an executed request, in the transaction that made its effects.
-- Keys live ledger.settings' idempotency_ttl (default 24 hours).
CREATE OR REPLACE FUNCTION ledger.idempotency_store(
    ctx ledger.request_context,
    idempotency_key uuid,
    operation text,
    request_hash text,
    response_status integer,
    response_body json
)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF idempotency_store.idempotency_key IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO ledger.idempotency_keys (scope, key, operation, request_hash, response_status,
                                         response_body, expires_at)
    SELECT ctx.scope, idempotency_store.idempotency_key, idempotency_store.operation,
           idempotency_store.request_hash, idempotency_store.response_status, idempotency_store.response_body,
           e.expires_at
      FROM ledger.idempotency_expires_at() e
    -- The caller holds the key's lock and found no live response under it (ledger.idempotency_lookup):
    -- a row here can only be an expired one.
    ON CONFLICT (scope, key) DO UPDATE
       SET operation = excluded.operation, request_hash = excluded.request_hash,
           response_status = excluded.response_status, response_body = excluded.response_body,
           created_at = excluded.created_at, expires_at = excluded.expires_at;
END
$$;
