CREATE OR REPLACE FUNCTION api.mint(
    to_user_id uuid,
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
    _ctx := ledger.authorize(mint.api_key_hash, 'admin', mint.request_user_id,
                             mint.correlation_id, mint.client_addr);
    _hash := COALESCE(mint.request_hash, ledger.fingerprint('mint', jsonb_build_object(
        'to_user_id', mint.to_user_id, 'amount', trim_scale(mint.amount), 'reason', mint.reason)));
    _stored := ledger.idempotency_lookup(_ctx, mint.idempotency_key, 'mint', _hash);
    IF _stored.key IS NOT NULL THEN
        status := _stored.response_status;
        body := _stored.response_body;
        replayed := true;
        RETURN;
    END IF;

    PERFORM ledger.check_amount(mint.amount);
    IF length(mint.reason) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'reason is longer than 500 characters';
    END IF;
    IF mint.to_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'to_user_id is required';
    END IF;
    -- Issuing: the issued-ATP account (debit-normal) and the wallet (credit-normal) both grow.
    body := ledger.post_journal(
        _ctx, _id, '00000000-0000-0000-0000-000000000001', 'mint_source', mint.to_user_id, 'user_wallet',
        mint.amount, 'mint', 'mint', mint.reason,
        'mint', jsonb_build_object(
            'mint_id', _id, 'status', 'completed', 'to_user_id', mint.to_user_id,
            'amount', mint.amount::numeric(21, 8)::text, 'reason', mint.reason),
        'issued', 'balance', mint.idempotency_key, _hash);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.mint(uuid, numeric, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.mint(uuid, numeric, text, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.mint(uuid, numeric, text, uuid, text, text, uuid, text, inet) IS
'Issues amount new ATP into a user''s wallet (debit mint_source, credit the wallet). Needs admin.
Errors: L4001 invalid_request, L4003 account_frozen, L4004 balance_limit_exceeded, L4041 user_not_found, L4091 idempotency_conflict.
Returns (status 201, body, replayed). Example: SELECT * FROM api.mint(:alice, 1000, ''welcome grant'');';
