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
    _deleted bigint;
BEGIN
    PERFORM ledger.authorize(cleanup_rate_limits.api_key_hash, 'maintenance', cleanup_rate_limits.request_user_id,
                             cleanup_rate_limits.correlation_id, cleanup_rate_limits.client_addr);
    -- The sliding window reads this minute and the one before; older counters are dead.
    DELETE FROM ledger.rate_limit_buckets WHERE window_start < date_trunc('minute', now()) - interval '1 minute';
    GET DIAGNOSTICS _deleted = ROW_COUNT;
    RETURN _deleted;
END
$$;

REVOKE ALL ON FUNCTION api.cleanup_rate_limits(text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.cleanup_rate_limits(text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.cleanup_rate_limits(text, uuid, text, inet) IS
'Deletes rate-limit counters older than the sliding window (scheduled every minute). Returns how many.
Needs an admin key, or a keyless call from atp_dba or atp_app. Example: SELECT api.cleanup_rate_limits();';
