CREATE OR REPLACE FUNCTION api.freeze_wallet(
    user_id uuid,
    reason text DEFAULT NULL,
    idempotency_key uuid DEFAULT NULL,
    request_hash text DEFAULT NULL,
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL,
    OUT status integer,
    OUT body json,
    OUT replayed boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _ctx ledger.request_context;
    _hash text;
    _stored ledger.idempotency_keys;
    _body json;
BEGIN
    _ctx := ledger.authorize(freeze_wallet.api_key_hash, 'admin', freeze_wallet.request_user_id,
                             freeze_wallet.correlation_id, freeze_wallet.client_addr);
    _hash := COALESCE(freeze_wallet.request_hash, ledger.fingerprint('freeze_wallet', jsonb_build_object(
        'user_id', freeze_wallet.user_id, 'reason', freeze_wallet.reason)));
    _stored := ledger.idempotency_lookup(_ctx, freeze_wallet.idempotency_key, 'freeze_wallet', _hash);
    IF _stored.key IS NOT NULL THEN
        status := _stored.response_status;
        body := _stored.response_body;
        replayed := true;
        RETURN;
    END IF;
    _body := ledger.set_frozen(_ctx, freeze_wallet.user_id, true, freeze_wallet.reason);
    PERFORM ledger.idempotency_store(_ctx, freeze_wallet.idempotency_key, 'freeze_wallet', _hash, 200, _body);
    status := 200;
    body := _body;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.freeze_wallet(uuid, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.freeze_wallet(uuid, text, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.freeze_wallet(uuid, text, uuid, text, text, uuid, text, inet) IS
'Freezes a user''s wallet: it can neither send nor receive until unfrozen. Already in that state: nothing changes. Needs admin.
Errors: L4001 invalid_request, L4041 user_not_found, L4091 idempotency_conflict.
Returns (status 200, user body, replayed). Example: SELECT * FROM api.freeze_wallet(:alice, reason => ''support ticket 42'');';
