CREATE OR REPLACE FUNCTION api.transfer(
    from_user_id uuid,
    to_user_id uuid,
    amount numeric,
    memo text DEFAULT NULL,
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
    _ctx := ledger.authorize(transfer.api_key_hash, 'write', transfer.request_user_id,
                             transfer.correlation_id, transfer.client_addr);
    IF transfer.request_user_id IS DISTINCT FROM transfer.from_user_id THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (request_user_id) must be the sender (from_user_id)';
    END IF;
    _hash := COALESCE(transfer.request_hash, ledger.fingerprint('transfer', jsonb_build_object(
        'from_user_id', transfer.from_user_id, 'to_user_id', transfer.to_user_id,
        'amount', trim_scale(transfer.amount), 'memo', transfer.memo)));
    _stored := ledger.idempotency_lookup(_ctx, transfer.idempotency_key, 'transfer', _hash);
    IF _stored.key IS NOT NULL THEN
        status := _stored.response_status;
        body := _stored.response_body;
        replayed := true;
        RETURN;
    END IF;

    PERFORM ledger.check_amount(transfer.amount);
    IF length(transfer.memo) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'memo is longer than 500 characters';
    END IF;
    IF transfer.from_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'from_user_id is required';
    ELSIF transfer.to_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'to_user_id is required';
    ELSIF transfer.from_user_id = transfer.to_user_id THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'a transfer needs two different users';
    END IF;

    body := ledger.post_journal(
        _ctx, _id, transfer.from_user_id, 'user_wallet', transfer.to_user_id, 'user_wallet',
        transfer.amount, 'transfer_out', 'transfer_in', transfer.memo,
        'transfer', jsonb_build_object(
            'transfer_id', _id, 'status', 'completed', 'from_user_id', transfer.from_user_id,
            'to_user_id', transfer.to_user_id, 'amount', transfer.amount::numeric(21, 8)::text,
            'memo', transfer.memo),
        'from_balance', 'to_balance', transfer.idempotency_key, _hash);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.transfer(uuid, uuid, numeric, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.transfer(uuid, uuid, numeric, text, uuid, text, text, uuid, text, inet)
    TO atp_app, atp_dba;
COMMENT ON FUNCTION api.transfer(uuid, uuid, numeric, text, uuid, text, text, uuid, text, inet) IS
'Moves amount ATP from one user''s wallet to another''s. The acting user (request_user_id) must be the sender. Needs write.
Errors: L4001 invalid_request, L4002 insufficient_balance, L4003 account_frozen, L4004 balance_limit_exceeded,
L4032 unauthorized_transfer, L4041 user_not_found, L4091 idempotency_conflict.
Returns (status 201, body, replayed). Example:
SELECT * FROM api.transfer(from_user_id => :alice, to_user_id => :bob, amount => 12.5, memo => ''lunch'', request_user_id => :alice);';
