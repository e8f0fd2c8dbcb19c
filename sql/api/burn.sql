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
    OUT body json,
    OUT replayed boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _c record;
    _hash text;
    _problem text;
    _row record;
    _found integer := 0;  -- 1: the debit side is locked, 2: the credit side
    _wallet record;
    _issued record;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _id uuid;
    _at timestamptz;
BEGIN
    -- The same three statements as api.transfer: caller, locks, post.
    SELECT * INTO _c FROM ledger.caller(burn.api_key_hash, 'admin', burn.idempotency_key, burn.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'admin', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    _hash := COALESCE(burn.request_hash, ledger.fingerprint('burn', jsonb_build_object(
        'from_user_id', burn.from_user_id, 'amount', trim_scale(burn.amount), 'reason', burn.reason)));
    _problem := ledger.amount_problem(burn.amount);
    IF _problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = _problem;
    ELSIF length(burn.reason) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'reason is longer than 500 characters';
    ELSIF burn.from_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'from_user_id is required';
    END IF;

    -- Retiring: the wallet and the issued-ATP account both shrink.
    FOR _row IN SELECT * FROM ledger.lock_pair(burn.from_user_id, 'user_wallet',
                                               '00000000-0000-0000-0000-000000000001', 'mint_source',
                                               _c.scope, burn.idempotency_key)
    LOOP
        IF _row.is_debit THEN
            _wallet := _row;
        ELSE
            _issued := _row;
        END IF;
        _found := _found | CASE WHEN _row.is_debit THEN 1 ELSE 2 END;
    END LOOP;
    IF _found <> 3 THEN
        _stored := ledger.idempotency_replay(_c.scope, burn.idempotency_key, 'burn', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(burn.from_user_id);
    ELSIF _wallet.is_frozen THEN
        RAISE EXCEPTION USING ERRCODE = 'L4003', MESSAGE = format('the wallet of user %s is frozen', burn.from_user_id);
    ELSIF _wallet.balance - _wallet.held < burn.amount OR _issued.balance < burn.amount THEN
        RAISE EXCEPTION USING ERRCODE = 'L4002',
            MESSAGE = format('insufficient balance: user %s has %s ATP available, %s ATP needed', burn.from_user_id,
                             (_wallet.balance - _wallet.held)::numeric(21, 8), burn.amount::numeric(21, 8));
    END IF;

    _id := ledger.uuid_v7();
    _at := clock_timestamp();
    -- The body in the contract's order; the audit state as jsonb, as in api.transfer.
    body := json_build_object(
        'burn_id', _id, 'status', 'completed', 'from_user_id', burn.from_user_id,
        'amount', burn.amount::numeric(21, 8)::text, 'reason', burn.reason, 'created_at', ledger.rfc3339(_at));
    _ctx := ROW(_c.api_key_id, _c.actor, burn.request_user_id, burn.correlation_id, burn.client_addr, _c.scope);
    status := ledger.post_transfer(
        ctx => _ctx, at => _at, journal_id => _id, amount => burn.amount, memo => burn.reason,
        debit_account => _wallet.account_id, debit_user => burn.from_user_id, debit_kind => 'burn',
        debit_version => _wallet.version + 1, debit_after => _wallet.balance - burn.amount,
        credit_account => _issued.account_id, credit_user => _issued.user_id, credit_kind => 'burn',
        credit_version => _issued.version + 1, credit_after => _issued.balance - burn.amount,
        action => 'burn',
        before_state => jsonb_build_object('balance', _wallet.balance::numeric(21, 8)::text,
                                           'issued', _issued.balance::numeric(21, 8)::text),
        after_state => jsonb_build_object(
            'burn_id', _id, 'status', 'completed', 'from_user_id', burn.from_user_id,
            'amount', burn.amount::numeric(21, 8)::text, 'reason', burn.reason, 'created_at', ledger.rfc3339(_at),
            'balance', (_wallet.balance - burn.amount)::numeric(21, 8)::text,
            'issued', (_issued.balance - burn.amount)::numeric(21, 8)::text),
        idempotency_key => burn.idempotency_key, request_hash => _hash, response_body => body);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.burn(uuid, numeric, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.burn(uuid, numeric, text, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.burn(uuid, numeric, text, uuid, text, text, uuid, text, inet) IS
'Retires amount ATP from a user''s wallet (debit the wallet, credit mint_source); the available balance (balance
less what pending holds reserve) must cover it. Needs admin.
Errors: L4001 invalid_request, L4002 insufficient_balance, L4003 account_frozen, L4041 user_not_found, L4091 idempotency_conflict.
Returns (status 201, body, replayed). Example: SELECT * FROM api.burn(:alice, 10, ''refund reversal'');';
