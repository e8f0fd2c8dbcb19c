CREATE OR REPLACE FUNCTION api.expire_idempotency_keys(
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _ctx ledger.request_context;
    _deleted bigint;
BEGIN
    _ctx := ledger.authorize(expire_idempotency_keys.api_key_hash, 'maintenance', expire_idempotency_keys.request_user_id,
                             expire_idempotency_keys.correlation_id, expire_idempotency_keys.client_addr);
    DELETE FROM ledger.idempotency_keys WHERE expires_at <= now();
    GET DIAGNOSTICS _deleted = ROW_COUNT;
    IF _deleted > 0 THEN
        PERFORM ledger.write_audit(_ctx, 'idempotency_keys.expire', 'idempotency_keys', NULL, NULL,
                                   jsonb_build_object('deleted', _deleted));
    END IF;
    RETURN _deleted;
END
$$;

REVOKE ALL ON FUNCTION api.expire_idempotency_keys(text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.expire_idempotency_keys(text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.expire_idempotency_keys(text, uuid, text, inet) IS
'Deletes stored idempotency responses past their expiry (ledger.settings.idempotency_ttl, default 24 hours; an expired key
is already ignored before it is deleted). Returns how many. Needs an admin key, or a keyless call from atp_dba or
atp_app. Example: SELECT api.expire_idempotency_keys();';
