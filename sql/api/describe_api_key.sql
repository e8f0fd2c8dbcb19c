CREATE OR REPLACE FUNCTION api.describe_api_key(api_key_hash text)
RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object('api_key_id', k.id, 'name', k.name, 'key_prefix', k.key_prefix,
                              'permissions', to_jsonb(k.permissions), 'is_active', k.is_active,
                              'expires_at', ledger.rfc3339(k.expires_at))
      FROM ledger.api_keys k
     WHERE k.key_hash = lower(api_key_hash)
$$;

REVOKE ALL ON FUNCTION api.describe_api_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.describe_api_key(text) TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.describe_api_key(text) IS
'What the holder of a key may know about it (name, prefix, permissions, state), by its SHA-256 (hex); NULL when no
key has that hash. Does not count toward the rate limit and authorizes nothing: the HTTP layer uses it to name keys
in its logs. Example: SELECT api.describe_api_key(encode(sha256(''sk_live_...''::bytea), ''hex''));';
