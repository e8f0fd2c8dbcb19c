CREATE OR REPLACE FUNCTION api.void_hold(
    hold_id uuid,
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
    _hold ledger.holds;
    _debit record;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _at timestamptz;
BEGIN
    SELECT * INTO _c FROM ledger.caller(void_hold.api_key_hash, 'write', void_hold.idempotency_key,
                                        void_hold.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'write', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    -- Before the key's stored response is looked at: a request without an acting user is refused as such.
    IF void_hold.request_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (X-Request-User-Id; request_user_id in SQL) must be the sender or the receiver of the hold';
    END IF;
    _hash := COALESCE(void_hold.request_hash, ledger.fingerprint('void_hold', jsonb_build_object(
        'hold_id', void_hold.hold_id, 'request_user_id', void_hold.request_user_id)));

    SELECT * INTO _hold FROM ledger.lock_hold(void_hold.hold_id, _c.scope, void_hold.idempotency_key);
    IF NOT FOUND THEN
        _stored := ledger.idempotency_replay(_c.scope, void_hold.idempotency_key, 'void_hold', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = CASE WHEN void_hold.hold_id IS NULL THEN 'L4001' ELSE 'L4042' END,
            MESSAGE = CASE WHEN void_hold.hold_id IS NULL THEN 'hold_id is required'
                           ELSE format('hold %s not found', void_hold.hold_id) END;
    ELSIF void_hold.request_user_id NOT IN (_hold.from_user_id, _hold.to_user_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (X-Request-User-Id; request_user_id in SQL) must be the sender or the receiver of the hold';
    -- The clock, not the transaction's start: a void late in a long transaction does not settle
    -- a hold after its expiry (judged again below, once the wallet is locked).
    ELSIF _hold.status <> 'pending' OR _hold.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = 'L4095', MESSAGE = format('hold %s is %s, not pending', _hold.id,
            CASE WHEN _hold.status = 'pending' THEN 'expired' ELSE _hold.status END);
    END IF;

    -- Only the sender's wallet changes: what it reserves. A frozen wallet may release.
    SELECT * INTO _debit FROM ledger.lock_pair(_hold.from_user_id, 'user_wallet', _hold.from_user_id,
                                               'user_wallet', NULL, NULL);
    -- The moment of the void, after the wait for the wallet (a transfer may hold it): a hold that
    -- expired meanwhile is the expiry job's to release. (The wallet is there: its balance covers
    -- the hold, so its user cannot have been deleted; were it missing, nothing is posted.)
    _at := clock_timestamp();
    IF _hold.expires_at <= _at OR NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'L4095', MESSAGE = format('hold %s is expired, not pending', _hold.id);
    END IF;
    _hold.status := 'voided';
    _hold.settled_at := _at;
    _hold.version := _hold.version + 1;
    body := ledger.hold_json(_hold);
    _ctx := ROW(_c.api_key_id, _c.actor, void_hold.request_user_id, void_hold.correlation_id,
                void_hold.client_addr, _c.scope);
    status := ledger.post_journal(
        ctx => _ctx, at => _at, legs => '{}',
        accounts => ARRAY[ROW(_debit.account_id, _debit.normal_side, _debit.balance, _debit.version,
                              -_hold.amount)]::ledger.account_state[],
        action => 'hold.void', resource_type => 'hold', resource_id => _hold.id::text,
        before_state => jsonb_build_object('status', 'pending', 'from_held', _debit.held::numeric(21, 8)::text),
        after_state => ledger.hold_json(_hold)::jsonb || jsonb_build_object(
            'from_held', (_debit.held - _hold.amount)::numeric(21, 8)::text),
        idempotency_key => void_hold.idempotency_key, operation => 'void_hold', request_hash => _hash,
        response_status => 200, response_body => body,
        extra_events => ARRAY[ROW('hold', _hold.id, _hold.version, 'HoldVoided', jsonb_build_object(
            'released_amount', _hold.amount::numeric(21, 8)::text))]::ledger.extra_event[],
        hold => _hold);
    status := 200;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.void_hold(uuid, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.void_hold(uuid, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.void_hold(uuid, uuid, text, text, uuid, text, inet) IS
'Voids a pending hold: releases all it reserves, nothing moves. The acting user (request_user_id) must be the sender
or the receiver; allowed on a frozen wallet. Needs write.
Errors: L4001 invalid_request, L4032 unauthorized_transfer, L4042 not_found, L4091 idempotency_conflict,
L4095 hold_not_pending (captured, voided, or past expires_at).
Returns (status 200, body: the hold, replayed). Example: SELECT * FROM api.void_hold(:''hold_id'', request_user_id => :alice);';
