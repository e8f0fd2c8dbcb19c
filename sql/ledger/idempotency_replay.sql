-- The stored response of an executed request under this key, for a write that found one in
-- place of its accounts (the caller holds the key's lock, taken by ledger.caller); NULL if
-- there is none. A different request under the key is idempotency_conflict.
CREATE OR REPLACE FUNCTION ledger.idempotency_replay(
    scope text,
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
    SELECT * INTO _stored FROM ledger.idempotency_keys
     WHERE scope = idempotency_replay.scope AND key = idempotency_replay.idempotency_key
       AND expires_at > now();
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF _stored.operation <> idempotency_replay.operation
          OR _stored.request_hash <> idempotency_replay.request_hash THEN
        RAISE EXCEPTION USING ERRCODE = 'L4091',
            MESSAGE = format('idempotency key %s was already used for a different request',
                             idempotency_replay.idempotency_key);
    END IF;
    RETURN _stored;
END
$$;
