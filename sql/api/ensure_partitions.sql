CREATE OR REPLACE FUNCTION api.ensure_partitions(
    months_ahead integer DEFAULT 3,
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
    _result jsonb;
BEGIN
    _ctx := ledger.authorize(ensure_partitions.api_key_hash, 'maintenance', ensure_partitions.request_user_id,
                             ensure_partitions.correlation_id, ensure_partitions.client_addr);
    _result := ledger.ensure_partitions(ensure_partitions.months_ahead);
    IF jsonb_array_length(_result -> 'created') > 0 THEN
        PERFORM ledger.write_audit(_ctx, 'partitions.create', 'partitions', NULL, NULL, _result);
    END IF;
    RETURN _result;
END
$$;

REVOKE ALL ON FUNCTION api.ensure_partitions(integer, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.ensure_partitions(integer, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.ensure_partitions(integer, text, uuid, text, inet) IS
'Creates the monthly partitions of events and ledger entries from this month to months_ahead months ahead (run by
api.run_maintenance every maintenance interval and by every migrate). Lists months it could not create because their
rows already sit in the default partition, and those whose table was busy for 200 ms (skipped_locked, made by a later
run: creating a partition locks its parent, and transfers would queue behind a long reader). Needs an admin key, or
a keyless call from atp_dba or atp_app.
Errors: L4001 invalid_request (months_ahead not between 0 and 120). Example: SELECT api.ensure_partitions(6);';
