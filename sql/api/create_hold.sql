CREATE OR REPLACE FUNCTION api.create_hold(
    from_user_id uuid,
    to_user_id uuid,
    amount numeric,
    memo text DEFAULT NULL,
    expires_in_seconds integer DEFAULT 3600,
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
    _found integer := 0;  -- 1: the sender's wallet is locked, 2: the receiver's
    _debit record;
    _credit record;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _hold ledger.holds;
    _at timestamptz;
    _expires_in integer := COALESCE(create_hold.expires_in_seconds, 3600);  -- NULL: absent from the request
BEGIN
    -- The three statements of api.transfer: caller, locks, post (which also writes the hold).
    SELECT * INTO _c FROM ledger.caller(create_hold.api_key_hash, 'write', create_hold.idempotency_key,
                                        create_hold.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'write', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    -- Without a sender, the request is incomplete (400 below), not someone else's money.
    IF create_hold.from_user_id IS NOT NULL AND create_hold.request_user_id IS DISTINCT FROM create_hold.from_user_id THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (X-Request-User-Id; request_user_id in SQL) must be the sender (from_user_id)';
    END IF;
    _hash := COALESCE(create_hold.request_hash, ledger.fingerprint('create_hold', jsonb_build_object(
        'from_user_id', create_hold.from_user_id, 'to_user_id', create_hold.to_user_id,
        'amount', trim_scale(create_hold.amount), 'memo', create_hold.memo,
        'expires_in_seconds', _expires_in)));
    _problem := ledger.amount_problem(create_hold.amount);
    IF _problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = _problem;
    ELSIF length(create_hold.memo) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'memo is longer than 500 characters';
    ELSIF create_hold.from_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'from_user_id is required';
    ELSIF create_hold.to_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'to_user_id is required';
    ELSIF create_hold.from_user_id = create_hold.to_user_id THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'a hold needs two different users';
    ELSIF _expires_in NOT BETWEEN 1 AND 2592000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'expires_in_seconds must be between 1 and 2592000';
    END IF;

    FOR _row IN SELECT * FROM ledger.lock_pair(create_hold.from_user_id, 'user_wallet', create_hold.to_user_id,
                                               'user_wallet', _c.scope, create_hold.idempotency_key)
    LOOP
        IF _row.is_debit THEN
            _debit := _row;
        ELSE
            _credit := _row;
        END IF;
        _found := _found | CASE WHEN _row.is_debit THEN 1 ELSE 2 END;
    END LOOP;
    IF _found <> 3 THEN
        _stored := ledger.idempotency_replay(_c.scope, create_hold.idempotency_key, 'create_hold', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(
            CASE WHEN _found & 1 = 0 THEN create_hold.from_user_id ELSE create_hold.to_user_id END);
    ELSIF _debit.is_frozen OR _credit.is_frozen THEN
        RAISE EXCEPTION USING ERRCODE = 'L4003', MESSAGE = format('the wallet of user %s is frozen',
            CASE WHEN _debit.is_frozen THEN _debit.user_id ELSE _credit.user_id END);
    ELSIF _debit.balance - _debit.held < create_hold.amount THEN
        RAISE EXCEPTION USING ERRCODE = 'L4002',
            MESSAGE = format('insufficient balance: user %s has %s ATP available, %s ATP needed', _debit.user_id,
                             (_debit.balance - _debit.held)::numeric(21, 8), create_hold.amount::numeric(21, 8));
    END IF;

    _at := clock_timestamp();
    _hold := ROW(ledger.uuid_v7(), create_hold.from_user_id, create_hold.to_user_id, _debit.account_id,
                 _credit.account_id, create_hold.amount, 0, 'pending', create_hold.memo,
                 _at + make_interval(secs => _expires_in), NULL, _at, NULL, 1);
    body := ledger.hold_json(_hold);  -- the body in the contract's order
    _ctx := ROW(_c.api_key_id, _c.actor, create_hold.request_user_id, create_hold.correlation_id,
                create_hold.client_addr, _c.scope);
    status := ledger.post_hold(
        ctx => _ctx, at => _at, hold => _hold,
        event_data => jsonb_build_object(
            'from_user_id', _hold.from_user_id, 'to_user_id', _hold.to_user_id,
            'from_account_id', _hold.from_account_id, 'to_account_id', _hold.to_account_id,
            'amount', _hold.amount::numeric(21, 8)::text, 'memo', _hold.memo,
            'expires_at', ledger.rfc3339(_hold.expires_at)),
        before_state => jsonb_build_object('from_held', _debit.held::numeric(21, 8)::text),
        after_state => body::jsonb || jsonb_build_object(
            'from_held', (_debit.held + create_hold.amount)::numeric(21, 8)::text),
        idempotency_key => create_hold.idempotency_key, request_hash => _hash, response_body => body);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.create_hold(uuid, uuid, numeric, text, integer, uuid, text, text, uuid, text, inet)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_hold(uuid, uuid, numeric, text, integer, uuid, text, text, uuid, text, inet)
    TO atp_app, atp_dba;
COMMENT ON FUNCTION api.create_hold(uuid, uuid, numeric, text, integer, uuid, text, text, uuid, text, inet) IS
'Reserves amount ATP of the sender for the receiver (a two-phase transfer): the sender''s available balance falls,
the posted balance does not move. The acting user (request_user_id) must be the sender. The hold expires after
expires_in_seconds (1 to 2592000; default, or NULL, 3600); capture it with api.capture_hold, release it with api.void_hold.
Needs write. Errors: L4001 invalid_request, L4002 insufficient_balance, L4003 account_frozen,
L4032 unauthorized_transfer, L4041 user_not_found, L4091 idempotency_conflict.
Returns (status 201, body, replayed). Example:
SELECT * FROM api.create_hold(from_user_id => :alice, to_user_id => :bob, amount => 30, memo => ''order 17'', request_user_id => :alice);';
