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
DECLARE
    _stored ledger.idempotency_keys;
BEGIN
    IF idempotency_lookup.idempotency_key IS NULL THEN
        IF ctx.api_key_id IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'L4001',
                MESSAGE = 'an idempotency key is required for requests made with an API key';
        END IF;
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(ctx.scope || '/' || idempotency_lookup.idempotency_key::text, 0));
    SELECT * INTO _stored FROM ledger.idempotency_keys
     WHERE scope = ctx.scope AND key = idempotency_lookup.idempotency_key;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF _stored.expires_at <= now() THEN
        -- An expired key is forgotten: it may be used for a new request.
        DELETE FROM ledger.idempotency_keys WHERE scope = _stored.scope AND key = _stored.key;
        RETURN NULL;
    END IF;
    IF _stored.operation <> idempotency_lookup.operation
       OR _stored.request_hash <> idempotency_lookup.request_hash THEN
        RAISE EXCEPTION USING ERRCODE = 'L4091',
            MESSAGE = format('idempotency key %s was already used for a different request',
                             idempotency_lookup.idempotency_key);
    END IF;
    RETURN _stored;
END
$$;
