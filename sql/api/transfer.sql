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
    _debit record;
    _credit record;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _id uuid;
    _at timestamptz;
    _debit_after numeric;
    _credit_after numeric;
BEGIN
    -- Statement 1: who is calling, the rate limit, and the idempotency key's lock.
    SELECT * INTO _c FROM ledger.caller(transfer.api_key_hash, 'write', transfer.idempotency_key,
                                        transfer.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'write', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    -- Without a sender, the request is incomplete (400 below), not someone else's money.
    IF transfer.from_user_id IS NOT NULL AND transfer.request_user_id IS DISTINCT FROM transfer.from_user_id THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (X-Request-User-Id; request_user_id in SQL) must be the sender (from_user_id)';
    END IF;
    _hash := COALESCE(transfer.request_hash, ledger.fingerprint('transfer', jsonb_build_object(
        'from_user_id', transfer.from_user_id, 'to_user_id', transfer.to_user_id,
        'amount', trim_scale(transfer.amount), 'memo', transfer.memo)));
    _problem := ledger.amount_problem(transfer.amount);
    IF _problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = _problem;
    ELSIF length(transfer.memo) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'memo is longer than 500 characters';
    ELSIF transfer.from_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'from_user_id is required';
    ELSIF transfer.to_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'to_user_id is required';
    ELSIF transfer.from_user_id = transfer.to_user_id THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'a transfer needs two different users';
    END IF;

    -- Statement 2: both wallets, locked in id order, unless a response is stored under the key.
    FOR _row IN SELECT * FROM ledger.lock_pair(transfer.from_user_id, 'user_wallet', transfer.to_user_id,
                                               'user_wallet', _c.scope, transfer.idempotency_key)
    LOOP
        IF _row.is_debit THEN
            _debit := _row;
        ELSE
            _credit := _row;
        END IF;
        _found := _found | CASE WHEN _row.is_debit THEN 1 ELSE 2 END;
    END LOOP;
    IF _found <> 3 THEN
        _stored := ledger.idempotency_replay(_c.scope, transfer.idempotency_key, 'transfer', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(
            CASE WHEN _found & 1 = 0 THEN transfer.from_user_id ELSE transfer.to_user_id END);
    ELSIF _debit.is_frozen OR _credit.is_frozen THEN
        RAISE EXCEPTION USING ERRCODE = 'L4003', MESSAGE = format('the wallet of user %s is frozen',
            CASE WHEN _debit.is_frozen THEN _debit.user_id ELSE _credit.user_id END);
    END IF;
    _debit_after := _debit.balance - transfer.amount;
    _credit_after := _credit.balance + transfer.amount;
    IF _debit_after < _debit.held THEN
        RAISE EXCEPTION USING ERRCODE = 'L4002',
            MESSAGE = format('insufficient balance: user %s has %s ATP available, %s ATP needed', _debit.user_id,
                             (_debit.balance - _debit.held)::numeric(21, 8), transfer.amount::numeric(21, 8));
    ELSIF _credit_after > 1000000000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4004',
            MESSAGE = 'this would take a balance above the limit of 1000000000000 ATP';
    END IF;

    -- Statement 3 (ledger.post_transfer): events, journal lines, balances, snapshots, audit row,
    -- stored response.
    _id := ledger.uuid_v7();
    _at := clock_timestamp();  -- after the locks, so that event times and versions agree per account
    -- The body in the contract's order (json keeps it); the audit state is the same fields and
    -- the balances as jsonb, built here rather than cast from the body's text.
    body := json_build_object(
        'transfer_id', _id, 'status', 'completed', 'from_user_id', transfer.from_user_id,
        'to_user_id', transfer.to_user_id, 'amount', transfer.amount::numeric(21, 8)::text,
        'memo', transfer.memo, 'created_at', ledger.rfc3339(_at));
    _ctx := ROW(_c.api_key_id, _c.actor, transfer.request_user_id, transfer.correlation_id, transfer.client_addr,
                _c.scope);
    status := ledger.post_transfer(
        ctx => _ctx, at => _at, journal_id => _id, amount => transfer.amount, memo => transfer.memo,
        debit_account => _debit.account_id, debit_user => transfer.from_user_id, debit_kind => 'transfer_out',
        debit_version => _debit.version + 1, debit_after => _debit_after,
        credit_account => _credit.account_id, credit_user => transfer.to_user_id, credit_kind => 'transfer_in',
        credit_version => _credit.version + 1, credit_after => _credit_after,
        action => 'transfer',
        before_state => jsonb_build_object('from_balance', _debit.balance::numeric(21, 8)::text,
                                           'to_balance', _credit.balance::numeric(21, 8)::text),
        after_state => jsonb_build_object(
            'transfer_id', _id, 'status', 'completed', 'from_user_id', transfer.from_user_id,
            'to_user_id', transfer.to_user_id, 'amount', transfer.amount::numeric(21, 8)::text,
            'memo', transfer.memo, 'created_at', ledger.rfc3339(_at),
            'from_balance', _debit_after::numeric(21, 8)::text, 'to_balance', _credit_after::numeric(21, 8)::text),
        idempotency_key => transfer.idempotency_key, request_hash => _hash, response_body => body);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.transfer(uuid, uuid, numeric, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.transfer(uuid, uuid, numeric, text, uuid, text, text, uuid, text, inet)
    TO atp_app, atp_dba;
COMMENT ON FUNCTION api.transfer(uuid, uuid, numeric, text, uuid, text, text, uuid, text, inet) IS
'Moves amount ATP from one user''s wallet to another''s. The acting user (request_user_id) must be the sender, and
the sender''s available balance (balance less what pending holds reserve) must cover the amount. Needs write.
Errors: L4001 invalid_request, L4002 insufficient_balance, L4003 account_frozen, L4004 balance_limit_exceeded,
L4032 unauthorized_transfer, L4041 user_not_found, L4091 idempotency_conflict.
Returns (status 201, body, replayed). Example:
SELECT * FROM api.transfer(from_user_id => :alice, to_user_id => :bob, amount => 12.5, memo => ''lunch'', request_user_id => :alice);';
