CREATE OR REPLACE FUNCTION api.run_maintenance(
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
BEGIN
    RETURN jsonb_build_object(
        'rate_limit_keys_cleaned', api.cleanup_rate_limits(run_maintenance.api_key_hash,
            run_maintenance.request_user_id, run_maintenance.correlation_id, run_maintenance.client_addr),
        'idempotency_keys_expired', api.expire_idempotency_keys(run_maintenance.api_key_hash,
            run_maintenance.request_user_id, run_maintenance.correlation_id, run_maintenance.client_addr),
        'holds_expired', api.expire_holds(10000, run_maintenance.api_key_hash,
            run_maintenance.request_user_id, run_maintenance.correlation_id, run_maintenance.client_addr),
        'audit', api.seal_audit(100000, run_maintenance.api_key_hash,
            run_maintenance.request_user_id, run_maintenance.correlation_id, run_maintenance.client_addr),
        -- Last: a partition it makes stays locked until the commit that follows.
        'partitions', api.ensure_partitions(3, run_maintenance.api_key_hash,
            run_maintenance.request_user_id, run_maintenance.correlation_id, run_maintenance.client_addr));
END
$$;

REVOKE ALL ON FUNCTION api.run_maintenance(text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.run_maintenance(text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.run_maintenance(text, uuid, text, inet) IS
'Runs every scheduled job once: rate-limit bucket cleanup, idempotency expiry, expired holds released, audit sealing,
and last (a partition it makes stays locked until the commit) partitions three months ahead.
The service runs it every minute. Needs an admin key, or a keyless call from atp_dba or atp_app.
Example: SELECT api.run_maintenance();';
