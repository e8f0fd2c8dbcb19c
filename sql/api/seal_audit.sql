CREATE OR REPLACE FUNCTION api.seal_audit(
    max_rows integer DEFAULT 100000,
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
    _sealed bigint := 0;
    _step jsonb;
BEGIN
    PERFORM ledger.authorize(seal_audit.api_key_hash, 'maintenance', seal_audit.request_user_id,
                             seal_audit.correlation_id, seal_audit.client_addr);
    IF seal_audit.max_rows IS NULL OR seal_audit.max_rows < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'max_rows must be at least 1';
    END IF;
    -- Seals of at most 10,000 rows each, so one seal's hash input stays small.
    LOOP
        _step := ledger.seal_audit(least(10000, seal_audit.max_rows - _sealed)::integer);
        _sealed := _sealed + (_step ->> 'sealed_rows')::bigint;
        EXIT WHEN (_step ->> 'sealed_rows')::bigint = 0 OR _sealed >= seal_audit.max_rows;
    END LOOP;
    RETURN jsonb_build_object('sealed_rows', _sealed, 'last_seal_no', (_step ->> 'seal_no')::bigint);
END
$$;

REVOKE ALL ON FUNCTION api.seal_audit(integer, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.seal_audit(integer, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.seal_audit(integer, text, uuid, text, inet) IS
'Chains the audit rows of finished transactions into seals (scheduled every minute; safe to run by hand at any time).
Needs an admin key, or a keyless call from atp_dba or atp_app. Errors: L4001 invalid_request (max_rows below 1).
Example: SELECT api.seal_audit();';
