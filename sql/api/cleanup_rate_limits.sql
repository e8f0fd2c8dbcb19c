CREATE OR REPLACE FUNCTION api.cleanup_rate_limits(
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
    _key record;
    _dropped bigint := 0;
BEGIN
    _ctx := ledger.authorize(cleanup_rate_limits.api_key_hash, 'maintenance', cleanup_rate_limits.request_user_id,
                             cleanup_rate_limits.correlation_id, cleanup_rate_limits.client_addr);
    -- Live keys' buckets restart by themselves each minute; a revoked or expired key can never
    -- be used again, so its buckets go.
    FOR _key IN
        SELECT id, bucket_even, bucket_odd FROM ledger.api_keys
         WHERE (NOT is_active OR expires_at <= now()) AND bucket_even IS NOT NULL
           FOR UPDATE
    LOOP
        UPDATE ledger.api_keys SET bucket_even = NULL, bucket_odd = NULL WHERE id = _key.id;
        EXECUTE format('DROP SEQUENCE IF EXISTS %s, %s', _key.bucket_even, _key.bucket_odd);
        _dropped := _dropped + 1;
        PERFORM ledger.write_audit(_ctx, 'rate_limits.cleanup', 'api_key', _key.id::text,
                                   jsonb_build_object('bucket_even', _key.bucket_even::text, 'bucket_odd', _key.bucket_odd::text),
                                   jsonb_build_object('bucket_even', NULL, 'bucket_odd', NULL));
    END LOOP;
    RETURN _dropped;
END
$$;

REVOKE ALL ON FUNCTION api.cleanup_rate_limits(text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.cleanup_rate_limits(text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.cleanup_rate_limits(text, uuid, text, inet) IS
'Drops the rate-limit buckets of revoked and expired keys (scheduled every minute); a live key''s buckets restart
by themselves each minute. Returns how many keys it cleaned up.
Needs an admin key, or a keyless call from atp_dba or atp_app. Example: SELECT api.cleanup_rate_limits();';
