-- Claims an idempotency key for this transaction and returns the stored response if the
-- request was already executed. The advisory lock makes concurrent duplicates wait for the
-- first to commit or roll back; after it, a committed response is visible (READ COMMITTED
-- takes a new snapshot per statement), so exactly one of them executes.
CREATE OR REPLACE FUNCTION ledger.idempotency_lookup(
    ctx ledger.request_context,
    idempotency_key uuid,
    operation text,
    request_hash text
)
RETURNS ledger.idempotency_keys
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    IF idempotency_lookup.idempotency_key IS NULL THEN
        IF ctx.api_key_id IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'L4001',
                MESSAGE = 'an idempotency key is required for requests made with an API key';
        END IF;
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(ctx.scope || '/' || idempotency_lookup.idempotency_key::text, 0));
    -- An expired key is forgotten: it may be used for a new request (ledger.idempotency_store
    -- replaces its row).
    RETURN ledger.idempotency_replay(ctx.scope, idempotency_lookup.idempotency_key, idempotency_lookup.operation,
                                     idempotency_lookup.request_hash);
END
$$;
