CREATE OR REPLACE FUNCTION api.get_hold(
    hold_id uuid,
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
    PERFORM ledger.authorize(get_hold.api_key_hash, 'read', get_hold.request_user_id,
                             get_hold.correlation_id, get_hold.client_addr);
    SELECT ledger.hold_json(h) INTO _body FROM ledger.holds h WHERE h.id = get_hold.hold_id;
    IF _body IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = CASE WHEN get_hold.hold_id IS NULL THEN 'L4001' ELSE 'L4042' END,
            MESSAGE = CASE WHEN get_hold.hold_id IS NULL THEN 'hold_id is required'
                           ELSE format('hold %s not found', get_hold.hold_id) END;
    END IF;
    RETURN _body;
END
$$;

REVOKE ALL ON FUNCTION api.get_hold(uuid, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.get_hold(uuid, text, uuid, text, inet) TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.get_hold(uuid, text, uuid, text, inet) IS
'One hold: status pending, captured, voided or expired (a pending hold past expires_at reads as expired), amount,
captured_amount, transfer_id (when captured). Needs read. Errors: L4001 invalid_request (no hold_id), L4042 not_found.
Example: SELECT api.get_hold(:''hold_id'');';
