CREATE OR REPLACE FUNCTION api.capture_hold(
    hold_id uuid,
    amount numeric DEFAULT NULL,
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
    _hold ledger.holds;
    _amount numeric;
    _row record;
    _found integer := 0;  -- 1: the debit side is locked, 2: the credit side
    _debit record;
    _credit record;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _transfer uuid;
    _at timestamptz;
BEGIN
    SELECT * INTO _c FROM ledger.caller(capture_hold.api_key_hash, 'write', capture_hold.idempotency_key,
                                        capture_hold.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'write', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    -- Before the key's stored response is looked at: a request without an acting user is refused as such.
    IF capture_hold.request_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (X-Request-User-Id; request_user_id in SQL) must be the sender or the receiver of the hold';
    END IF;
    _hash := COALESCE(capture_hold.request_hash, ledger.fingerprint('capture_hold', jsonb_build_object(
        'hold_id', capture_hold.hold_id, 'amount', trim_scale(capture_hold.amount),
        'request_user_id', capture_hold.request_user_id)));
    IF capture_hold.amount IS NOT NULL THEN
        _problem := ledger.amount_problem(capture_hold.amount);
        IF _problem IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = _problem;
        END IF;
    END IF;

    -- The hold first, then its wallets: the order every settlement takes.
    SELECT * INTO _hold FROM ledger.lock_hold(capture_hold.hold_id, _c.scope, capture_hold.idempotency_key);
    IF NOT FOUND THEN
        _stored := ledger.idempotency_replay(_c.scope, capture_hold.idempotency_key, 'capture_hold', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = CASE WHEN capture_hold.hold_id IS NULL THEN 'L4001' ELSE 'L4042' END,
            MESSAGE = CASE WHEN capture_hold.hold_id IS NULL THEN 'hold_id is required'
                           ELSE format('hold %s not found', capture_hold.hold_id) END;
    ELSIF capture_hold.request_user_id NOT IN (_hold.from_user_id, _hold.to_user_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (X-Request-User-Id; request_user_id in SQL) must be the sender or the receiver of the hold';
    -- The clock, not the transaction's start: a capture late in a long transaction does not
    -- settle a hold after its expiry (judged again below, once the wallets are locked).
    ELSIF _hold.status <> 'pending' OR _hold.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = 'L4095', MESSAGE = format('hold %s is %s, not pending', _hold.id,
            CASE WHEN _hold.status = 'pending' THEN 'expired' ELSE _hold.status END);
    END IF;
    _amount := COALESCE(capture_hold.amount, _hold.amount);
    IF _amount > _hold.amount THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = format('cannot capture %s ATP of a hold of %s ATP',
            _amount::numeric(21, 8), _hold.amount::numeric(21, 8));
    END IF;

    FOR _row IN SELECT * FROM ledger.lock_pair(_hold.from_user_id, 'user_wallet', _hold.to_user_id,
                                               'user_wallet', NULL, NULL)
    LOOP
        IF _row.is_debit THEN
            _debit := _row;
        ELSE
            _credit := _row;
        END IF;
        _found := _found | CASE WHEN _row.is_debit THEN 1 ELSE 2 END;
    END LOOP;
    -- The moment of the capture, after the wait for the wallets (a transfer may hold one): a
    -- hold that expired meanwhile is not captured, and no longer kept its users from being
    -- deleted, so a wallet can be missing only then.
    _at := clock_timestamp();
    IF _hold.expires_at <= _at OR _found <> 3 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4095', MESSAGE = format('hold %s is expired, not pending', _hold.id);
    ELSIF _debit.is_frozen OR _credit.is_frozen THEN
        RAISE EXCEPTION USING ERRCODE = 'L4003', MESSAGE = format('the wallet of user %s is frozen',
            CASE WHEN _debit.is_frozen THEN _debit.user_id ELSE _credit.user_id END);
    ELSIF _credit.balance + _amount > 1000000000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4004',
            MESSAGE = 'this would take a balance above the limit of 1000000000000 ATP';
    END IF;

    _transfer := ledger.uuid_v7();
    _hold.status := 'captured';
    _hold.captured_amount := _amount;
    _hold.transfer_id := _transfer;
    _hold.settled_at := _at;
    _hold.version := _hold.version + 1;
    body := ledger.hold_json(_hold);
    _ctx := ROW(_c.api_key_id, _c.actor, capture_hold.request_user_id, capture_hold.correlation_id,
                capture_hold.client_addr, _c.scope);
    -- The captured amount moves as a transfer; the sender's reservation goes entirely.
    status := ledger.post_journal(
        ctx => _ctx, at => _at,
        legs => ARRAY[ROW(_transfer, _debit.account_id, _credit.account_id, _amount, 'transfer_out',
                          'transfer_in', _hold.from_user_id, _hold.to_user_id, _hold.memo,
                          jsonb_build_object('hold_id', _hold.id))::ledger.posting_leg],
        accounts => ARRAY[ROW(_debit.account_id, _debit.normal_side, _debit.balance, _debit.version,
                              -_hold.amount),
                          ROW(_credit.account_id, _credit.normal_side, _credit.balance, _credit.version,
                              0)]::ledger.account_state[],
        action => 'hold.capture', resource_type => 'hold', resource_id => _hold.id::text,
        before_state => jsonb_build_object('status', 'pending',
                                           'from_balance', _debit.balance::numeric(21, 8)::text,
                                           'from_held', _debit.held::numeric(21, 8)::text,
                                           'to_balance', _credit.balance::numeric(21, 8)::text),
        after_state => ledger.hold_json(_hold)::jsonb || jsonb_build_object(
            'from_balance', (_debit.balance - _amount)::numeric(21, 8)::text,
            'from_held', (_debit.held - _hold.amount)::numeric(21, 8)::text,
            'to_balance', (_credit.balance + _amount)::numeric(21, 8)::text),
        idempotency_key => capture_hold.idempotency_key, operation => 'capture_hold', request_hash => _hash,
        response_status => 200, response_body => body,
        extra_events => ARRAY[ROW('hold', _hold.id, _hold.version, 'HoldCaptured', jsonb_build_object(
            'captured_amount', _hold.captured_amount::numeric(21, 8)::text,
            'released_amount', (_hold.amount - _amount)::numeric(21, 8)::text,
            'transfer_id', _transfer))]::ledger.extra_event[],
        hold => _hold);
    status := 200;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.capture_hold(uuid, numeric, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.capture_hold(uuid, numeric, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.capture_hold(uuid, numeric, uuid, text, text, uuid, text, inet) IS
'Captures a pending hold: moves amount ATP (default: all it holds; at most that) from the sender to the receiver as a
transfer (history kinds transfer_out / transfer_in, with the hold_id) and releases the rest, in one transaction. The
acting user (request_user_id) must be the sender or the receiver. Needs write.
Errors: L4001 invalid_request, L4003 account_frozen, L4004 balance_limit_exceeded, L4032 unauthorized_transfer,
L4042 not_found, L4091 idempotency_conflict, L4095 hold_not_pending (captured, voided, or past expires_at).
Returns (status 200, body: the hold, replayed). Example:
SELECT * FROM api.capture_hold(:''hold_id'', amount => 20, request_user_id => :bob);';
