CREATE OR REPLACE FUNCTION api.get_user(
    user_id uuid,
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL
)
RETURNS json
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _body json;
BEGIN
    PERFORM ledger.authorize(get_user.api_key_hash, 'read', get_user.request_user_id,
                             get_user.correlation_id, get_user.client_addr);
    _body := ledger.user_json(get_user.user_id);
    IF _body IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = CASE WHEN get_user.user_id IS NULL THEN 'L4001' ELSE 'L4041' END,
            MESSAGE = CASE WHEN get_user.user_id IS NULL THEN 'user_id is required'
                           ELSE ledger.user_missing(get_user.user_id) END;
    END IF;
    RETURN _body;
END
$$;

REVOKE ALL ON FUNCTION api.get_user(uuid, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.get_user(uuid, text, uuid, text, inet) TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.get_user(uuid, text, uuid, text, inet) IS
'A live user with the wallet''s balance. Needs read. Errors: L4001 invalid_request (no user_id), L4041 user_not_found.
Example: SELECT api.get_user(:alice);';
