CREATE OR REPLACE FUNCTION api.burn(
    from_user_id uuid,
    amount numeric,
    reason text DEFAULT NULL,
    idempotency_key uuid DEFAULT NULL,
    request_hash text DEFAULT NULL,
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL,
    OUT status integer,
    OUT body jsonb,
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
    _id uuid := ledger.uuid_v7();
BEGIN
    _ctx := ledger.authorize(burn.api_key_hash, 'admin', burn.request_user_id,
                             burn.correlation_id, burn.client_addr);
    _hash := COALESCE(burn.request_hash, ledger.fingerprint('burn', jsonb_build_object(
        'from_user_id', burn.from_user_id, 'amount', trim_scale(burn.amount), 'reason', burn.reason)));
    _stored := ledger.idempotency_lookup(_ctx, burn.idempotency_key, 'burn', _hash);
    IF _stored.key IS NOT NULL THEN
        status := _stored.response_status;
        body := _stored.response_body;
        replayed := true;
        RETURN;
    END IF;

    PERFORM ledger.check_amount(burn.amount);
    IF length(burn.reason) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'reason is longer than 500 characters';
    END IF;
    IF burn.from_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'from_user_id is required';
    END IF;
    -- Retiring: the wallet and the issued-ATP account both shrink.
    body := ledger.post_journal(
        _ctx, _id, burn.from_user_id, 'user_wallet', '00000000-0000-0000-0000-000000000001', 'mint_source',
        burn.amount, 'burn', 'burn', burn.reason,
        'burn', jsonb_build_object(
            'burn_id', _id, 'status', 'completed', 'from_user_id', burn.from_user_id,
            'amount', burn.amount::numeric(21, 8)::text, 'reason', burn.reason),
        'balance', 'issued', burn.idempotency_key, _hash);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.burn(uuid, numeric, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.burn(uuid, numeric, text, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.burn(uuid, numeric, text, uuid, text, text, uuid, text, inet) IS
'Retires amount ATP from a user''s wallet (debit the wallet, credit mint_source). Needs admin.
Errors: L4001 invalid_request, L4002 insufficient_balance, L4003 account_frozen, L4041 user_not_found, L4091 idempotency_conflict.
Returns (status 201, body, replayed). Example: SELECT * FROM api.burn(:alice, 10, ''refund reversal'');';
