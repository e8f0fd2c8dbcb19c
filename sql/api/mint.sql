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
    _issued record;
    _wallet record;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _id uuid;
    _at timestamptz;
BEGIN
    -- The same three statements as api.transfer: caller, locks, post.
    SELECT * INTO _c FROM ledger.caller(mint.api_key_hash, 'admin', mint.idempotency_key, mint.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'admin', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    _hash := COALESCE(mint.request_hash, ledger.fingerprint('mint', jsonb_build_object(
        'to_user_id', mint.to_user_id, 'amount', trim_scale(mint.amount), 'reason', mint.reason)));
    _problem := ledger.amount_problem(mint.amount);
    IF _problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = _problem;
    ELSIF length(mint.reason) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'reason is longer than 500 characters';
    ELSIF mint.to_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'to_user_id is required';
    END IF;

    -- Issuing: the issued-ATP account (debit-normal) and the wallet (credit-normal) both grow.
    FOR _row IN SELECT * FROM ledger.lock_pair('00000000-0000-0000-0000-000000000001', 'mint_source',
                                               mint.to_user_id, 'user_wallet', _c.scope, mint.idempotency_key)
    LOOP
        IF _row.is_debit THEN
            _issued := _row;
        ELSE
            _wallet := _row;
        END IF;
        _found := _found | CASE WHEN _row.is_debit THEN 1 ELSE 2 END;
    END LOOP;
    IF _found <> 3 THEN
        _stored := ledger.idempotency_replay(_c.scope, mint.idempotency_key, 'mint', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(mint.to_user_id);
    ELSIF _wallet.is_frozen THEN
        RAISE EXCEPTION USING ERRCODE = 'L4003', MESSAGE = format('the wallet of user %s is frozen', mint.to_user_id);
    ELSIF _wallet.balance + mint.amount > 1000000000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4004',
            MESSAGE = 'this would take a balance above the limit of 1000000000000 ATP';
    ELSIF _issued.balance + mint.amount > 9999999999999.99999999 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4004',
            MESSAGE = 'this would take the total issued above its limit of 9999999999999.99999999 ATP';
    END IF;

    _id := ledger.uuid_v7();
    _at := clock_timestamp();
    -- The body in the contract's order; the audit state as jsonb, as in api.transfer.
    body := json_build_object(
        'mint_id', _id, 'status', 'completed', 'to_user_id', mint.to_user_id,
        'amount', mint.amount::numeric(21, 8)::text, 'reason', mint.reason, 'created_at', ledger.rfc3339(_at));
    _ctx := ROW(_c.api_key_id, _c.actor, mint.request_user_id, mint.correlation_id, mint.client_addr, _c.scope);
    status := ledger.post_transfer(
        ctx => _ctx, at => _at, journal_id => _id, amount => mint.amount, memo => mint.reason,
        debit_account => _issued.account_id, debit_user => _issued.user_id, debit_kind => 'mint',
        debit_version => _issued.version + 1, debit_after => _issued.balance + mint.amount,
        credit_account => _wallet.account_id, credit_user => mint.to_user_id, credit_kind => 'mint',
        credit_version => _wallet.version + 1, credit_after => _wallet.balance + mint.amount,
        action => 'mint',
        before_state => jsonb_build_object('issued', _issued.balance::numeric(21, 8)::text,
                                           'balance', _wallet.balance::numeric(21, 8)::text),
        after_state => jsonb_build_object(
            'mint_id', _id, 'status', 'completed', 'to_user_id', mint.to_user_id,
            'amount', mint.amount::numeric(21, 8)::text, 'reason', mint.reason, 'created_at', ledger.rfc3339(_at),
            'issued', (_issued.balance + mint.amount)::numeric(21, 8)::text,
            'balance', (_wallet.balance + mint.amount)::numeric(21, 8)::text),
        idempotency_key => mint.idempotency_key, request_hash => _hash, response_body => body);
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
