CREATE OR REPLACE FUNCTION api.authenticate(
    api_key_hash text,
    permission text DEFAULT 'read',
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
BEGIN
    IF authenticate.permission IS NULL OR authenticate.permission NOT IN ('read', 'write', 'admin') THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'permission must be read, write or admin';
    END IF;
    IF authenticate.api_key_hash IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4011', MESSAGE = 'an API key is required';
    END IF;
    _ctx := ledger.authorize(authenticate.api_key_hash, authenticate.permission, authenticate.request_user_id,
                             authenticate.correlation_id, authenticate.client_addr);
    RETURN (SELECT jsonb_build_object('api_key_id', k.id, 'name', k.name, 'key_prefix', k.key_prefix,
                                      'permissions', to_jsonb(k.permissions),
                                      'rate_limit_per_minute', k.rate_limit_per_minute,
                                      'expires_at', ledger.rfc3339(k.expires_at))
              FROM ledger.api_keys k WHERE k.id = _ctx.api_key_id);
END
$$;

REVOKE ALL ON FUNCTION api.authenticate(text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.authenticate(text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.authenticate(text, text, uuid, text, inet) IS
'Checks an API key by its SHA-256 (hex): known, active, not expired, holding the permission, within its
per-minute rate limit (the request counts). Every other api function does the same check itself, and so can raise
these errors too (and L4001 for a correlation_id longer than 128 characters). Returns the key: {api_key_id, name,
key_prefix, permissions, rate_limit_per_minute, expires_at}.
Errors: L4001 invalid_request (a permission other than read, write or admin), L4011 invalid_api_key, L4031 permission_denied, L4291 rate_limit_exceeded (DETAIL holds retry_after).
Example: SELECT api.authenticate(encode(sha256(''sk_live_...''::bytea), ''hex''), ''write'');';
