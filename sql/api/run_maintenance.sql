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
DECLARE
    _max_seal CONSTANT integer := 100000;
    _max_holds CONSTANT integer := 1000;
    _cleaned bigint;
    _keys bigint;
    _audit jsonb;
    _holds bigint;
    _partitions jsonb;
BEGIN
    _cleaned := api.cleanup_rate_limits(run_maintenance.api_key_hash, run_maintenance.request_user_id,
                                        run_maintenance.correlation_id, run_maintenance.client_addr);
    _keys := api.expire_idempotency_keys(run_maintenance.api_key_hash, run_maintenance.request_user_id,
                                         run_maintenance.correlation_id, run_maintenance.client_addr);
    _audit := api.seal_audit(_max_seal, run_maintenance.api_key_hash, run_maintenance.request_user_id,
                             run_maintenance.correlation_id, run_maintenance.client_addr);
    -- Holds late and 1,000 at a time: every sender's wallet of the batch stays locked until the
    -- commit that follows (6,216 holds, released one by one as they were then, held every writer
    -- for 1.4 s; 1,000 take about 40 ms in one statement now). When a batch or the seal stops at
    -- its limit, 'more' says so and the service runs the jobs again at once, in a new transaction.
    _holds := api.expire_holds(_max_holds, run_maintenance.api_key_hash, run_maintenance.request_user_id,
                               run_maintenance.correlation_id, run_maintenance.client_addr);
    -- Last: a partition it makes stays locked until the commit that follows.
    _partitions := api.ensure_partitions(3, run_maintenance.api_key_hash, run_maintenance.request_user_id,
                                         run_maintenance.correlation_id, run_maintenance.client_addr);
    RETURN jsonb_build_object(
        'rate_limit_keys_cleaned', _cleaned, 'idempotency_keys_expired', _keys, 'holds_expired', _holds,
        'audit', _audit, 'partitions', _partitions,
        -- More holds wait when this run released some and expired ones are still pending: the
        -- batch was full, or holds a settlement had locked were skipped while others past the
        -- batch wait (counting only a full batch left those for the next interval). A run that
        -- released none ends the round, so a hold locked for long does not keep it going.
        'more', (_holds > 0 AND EXISTS (SELECT FROM ledger.holds
                                         WHERE status = 'pending' AND expires_at <= now()))
                OR (_audit ->> 'sealed_rows')::bigint >= _max_seal);
END
$$;

REVOKE ALL ON FUNCTION api.run_maintenance(text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.run_maintenance(text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.run_maintenance(text, uuid, text, inet) IS
'Runs every scheduled job once: rate-limit bucket cleanup, idempotency expiry, audit sealing (100,000 rows at most),
expired holds released (1,000 at most), and last (a partition it makes stays locked until the commit) partitions
three months ahead. more is true when sealing stopped at its limit, or when holds were released and expired ones are
still pending. The service runs it every minute,
and again at once while more is true. Needs an admin key, or a keyless call from atp_dba or atp_app.
Example: SELECT api.run_maintenance();';
