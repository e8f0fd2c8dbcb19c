CREATE OR REPLACE FUNCTION api.create_api_key(
    name text,
    permissions text[],
    rate_limit_per_minute integer DEFAULT 1000,
    expires_at timestamptz DEFAULT NULL,
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
    -- 244 random bits from the server's strong random source; only the hash is kept.
    _key text := 'sk_live_' || replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
    _id uuid := ledger.uuid_v7();
    _row ledger.api_keys;
    _body jsonb;
BEGIN
    _ctx := ledger.authorize(create_api_key.api_key_hash, 'admin', create_api_key.request_user_id,
                             create_api_key.correlation_id, create_api_key.client_addr);
    IF create_api_key.name IS NULL OR length(btrim(create_api_key.name)) = 0 OR length(create_api_key.name) > 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'name must be 1 to 100 characters';
    END IF;
    IF create_api_key.permissions IS NULL OR cardinality(create_api_key.permissions) = 0
       OR NOT create_api_key.permissions <@ ARRAY['read', 'write', 'admin'] THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001',
            MESSAGE = 'permissions must be a non-empty list of read, write and admin';
    END IF;
    IF create_api_key.rate_limit_per_minute IS NULL OR create_api_key.rate_limit_per_minute < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'rate_limit_per_minute must be at least 1';
    END IF;
    IF create_api_key.expires_at <= now() THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'expires_at must be in the future';
    END IF;

    -- The key's two rate-limit buckets (see ledger.authorize).
    EXECUTE format('CREATE UNLOGGED SEQUENCE ledger.%I AS bigint', 'rate_' || replace(_id::text, '-', '') || '_even');
    EXECUTE format('CREATE UNLOGGED SEQUENCE ledger.%I AS bigint', 'rate_' || replace(_id::text, '-', '') || '_odd');
    INSERT INTO ledger.api_keys (id, name, key_prefix, key_hash, permissions, rate_limit_per_minute,
                                 created_by, expires_at, bucket_even, bucket_odd)
    VALUES (_id, create_api_key.name, left(_key, 12),
            encode(sha256(convert_to(_key, 'UTF8')), 'hex'),
            ARRAY(SELECT DISTINCT unnest(create_api_key.permissions) ORDER BY 1),
            create_api_key.rate_limit_per_minute,
            COALESCE(_ctx.api_key_id::text, _ctx.actor), create_api_key.expires_at,
            format('ledger.%I', 'rate_' || replace(_id::text, '-', '') || '_even')::regclass,
            format('ledger.%I', 'rate_' || replace(_id::text, '-', '') || '_odd')::regclass)
    RETURNING * INTO _row;
    _body := jsonb_build_object(
        'id', _row.id,
        'name', _row.name,
        'key_prefix', _row.key_prefix,
        'permissions', to_jsonb(_row.permissions),
        'rate_limit_per_minute', _row.rate_limit_per_minute,
        'expires_at', ledger.rfc3339(_row.expires_at),
        'created_at', ledger.rfc3339(_row.created_at));
    PERFORM ledger.write_audit(_ctx, 'api_key.create', 'api_key', _row.id::text, NULL, _body);
    RETURN _body || jsonb_build_object('key', _key);
END
$$;

REVOKE ALL ON FUNCTION api.create_api_key(text, text[], integer, timestamptz, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_api_key(text, text[], integer, timestamptz, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.create_api_key(text, text[], integer, timestamptz, text, uuid, text, inet) IS
'Creates an API key and returns it once, in "key"; only its SHA-256 is stored, so it cannot be shown again.
permissions: read, write, admin (admin implies the others). Needs admin.
Errors: L4001 invalid_request. Not idempotent by key: the response holds the secret, which is never stored.
Example: SELECT api.create_api_key(''nextjs'', ARRAY[''read'', ''write''], 6000, NULL);';
