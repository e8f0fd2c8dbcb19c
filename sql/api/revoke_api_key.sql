CREATE OR REPLACE FUNCTION api.revoke_api_key(
    api_key_id uuid,
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _ctx ledger.request_context;
    _row ledger.api_keys;
    _body jsonb;
BEGIN
    _ctx := ledger.authorize(revoke_api_key.api_key_hash, 'admin', revoke_api_key.request_user_id,
                             revoke_api_key.correlation_id, revoke_api_key.client_addr);
    SELECT * INTO _row FROM ledger.api_keys WHERE id = revoke_api_key.api_key_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = CASE WHEN revoke_api_key.api_key_id IS NULL THEN 'L4001' ELSE 'L4042' END,
            MESSAGE = CASE WHEN revoke_api_key.api_key_id IS NULL THEN 'api_key_id is required'
                           ELSE format('API key %s not found', revoke_api_key.api_key_id) END;
    END IF;
    IF _row.is_active THEN
        UPDATE ledger.api_keys SET is_active = false, revoked_at = clock_timestamp()
         WHERE id = _row.id RETURNING * INTO _row;
        PERFORM ledger.write_audit(_ctx, 'api_key.revoke', 'api_key', _row.id::text,
                                   jsonb_build_object('is_active', true),
                                   jsonb_build_object('is_active', false, 'revoked_at', ledger.rfc3339(_row.revoked_at)));
    END IF;
    _body := jsonb_build_object('id', _row.id, 'name', _row.name, 'is_active', _row.is_active,
                                'revoked_at', ledger.rfc3339(_row.revoked_at));
    RETURN _body;
END
$$;

REVOKE ALL ON FUNCTION api.revoke_api_key(uuid, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.revoke_api_key(uuid, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.revoke_api_key(uuid, text, uuid, text, inet) IS
'Revokes an API key at once; revoking a revoked key changes nothing. Needs admin. Errors: L4001 invalid_request (no api_key_id), L4042 not_found.
Example: SELECT api.revoke_api_key(:''key_id'');';
