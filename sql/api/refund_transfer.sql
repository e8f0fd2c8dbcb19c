CREATE OR REPLACE FUNCTION api.refund_transfer(
    transfer_id uuid,
    amount numeric DEFAULT NULL,
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
    _t record;
    _row record;
    _found integer := 0;  -- 1: the debit side (the original receiver) is locked, 2: the credit side
    _debit record;
    _credit record;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _refunded numeric;
    _amount numeric;
    _id uuid;
    _at timestamptz;
BEGIN
    -- The shape of api.transfer: caller, locks, post; the transfer is read first, and what it
    -- has had refunded is read under the lock of its receiver's account, which every refund of
    -- it takes, so that refunds of one transfer are serialized and never add up to more than it.
    SELECT * INTO _c FROM ledger.caller(refund_transfer.api_key_hash, 'write', refund_transfer.idempotency_key,
                                        refund_transfer.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'write', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    _hash := COALESCE(refund_transfer.request_hash, ledger.fingerprint('refund', jsonb_build_object(
        'transfer_id', refund_transfer.transfer_id, 'amount', trim_scale(refund_transfer.amount),
        'reason', refund_transfer.reason)));
    -- Any transfer, however it was made (POST /transfers, a batch leg, a captured hold): its journal.
    SELECT d.amount, sa.user_id AS sender, sa.account_type AS sender_type,
           ra.user_id AS receiver, ra.account_type AS receiver_type
      INTO _t
      FROM ledger.ledger_entries d
      JOIN ledger.ledger_entries c ON c.journal_id = d.journal_id AND c.side = 'credit'
      JOIN ledger.accounts sa ON sa.id = d.account_id
      JOIN ledger.accounts ra ON ra.id = c.account_id
     WHERE d.journal_id = refund_transfer.transfer_id AND d.side = 'debit' AND d.kind = 'transfer_out';
    IF _t.amount IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = CASE WHEN refund_transfer.transfer_id IS NULL THEN 'L4001' ELSE 'L4042' END,
            MESSAGE = CASE WHEN refund_transfer.transfer_id IS NULL THEN 'transfer_id is required'
                           ELSE format('transfer %s not found', refund_transfer.transfer_id) END;
    ELSIF refund_transfer.request_user_id IS DISTINCT FROM _t.receiver THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (X-Request-User-Id; request_user_id in SQL) must be the receiver of the transfer';
    END IF;
    IF refund_transfer.amount IS NOT NULL THEN
        _problem := ledger.amount_problem(refund_transfer.amount);
    END IF;
    IF _problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = _problem;
    ELSIF length(refund_transfer.reason) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'reason is longer than 500 characters';
    END IF;

    -- The money goes back: debit the original receiver, credit the original sender.
    FOR _row IN SELECT * FROM ledger.lock_pair(_t.receiver, _t.receiver_type, _t.sender, _t.sender_type,
                                               _c.scope, refund_transfer.idempotency_key)
    LOOP
        IF _row.is_debit THEN
            _debit := _row;
        ELSE
            _credit := _row;
        END IF;
        _found := _found | CASE WHEN _row.is_debit THEN 1 ELSE 2 END;
    END LOOP;
    IF _found <> 3 THEN
        _stored := ledger.idempotency_replay(_c.scope, refund_transfer.idempotency_key, 'refund', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = CASE WHEN _found & 1 = 0
            THEN ledger.user_missing(_t.receiver)
            ELSE ledger.user_missing(_t.sender) || ', the transfer''s sender: the refund has no wallet to return to' END;
    ELSIF _debit.is_frozen OR _credit.is_frozen THEN
        RAISE EXCEPTION USING ERRCODE = 'L4003', MESSAGE = format('the wallet of user %s is frozen',
            CASE WHEN _debit.is_frozen THEN _debit.user_id ELSE _credit.user_id END);
    END IF;
    SELECT COALESCE(sum(e.amount), 0) INTO _refunded
      FROM ledger.ledger_entries e
     WHERE e.refund_of = refund_transfer.transfer_id AND e.side = 'debit';
    _amount := COALESCE(refund_transfer.amount, _t.amount - _refunded);
    IF _amount <= 0 OR _amount > _t.amount - _refunded THEN
        RAISE EXCEPTION USING ERRCODE = 'L4006',
            MESSAGE = format('transfer %s of %s ATP has %s ATP refunded already; at most %s ATP can be refunded',
                             refund_transfer.transfer_id, _t.amount::numeric(21, 8), _refunded::numeric(21, 8),
                             (_t.amount - _refunded)::numeric(21, 8));
    ELSIF _debit.balance - _amount < _debit.held THEN
        RAISE EXCEPTION USING ERRCODE = 'L4002',
            MESSAGE = format('insufficient balance: user %s has %s ATP available, %s ATP needed', _debit.user_id,
                             (_debit.balance - _debit.held)::numeric(21, 8), _amount::numeric(21, 8));
    ELSIF _credit.balance + _amount > 1000000000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4004',
            MESSAGE = 'this would take a balance above the limit of 1000000000000 ATP';
    END IF;

    _id := ledger.uuid_v7();
    _at := clock_timestamp();
    body := json_build_object(
        'refund_id', _id, 'status', 'completed', 'transfer_id', refund_transfer.transfer_id,
        'from_user_id', _t.receiver, 'to_user_id', _t.sender, 'amount', _amount::numeric(21, 8)::text,
        'reason', refund_transfer.reason, 'created_at', ledger.rfc3339(_at));
    _ctx := ROW(_c.api_key_id, _c.actor, refund_transfer.request_user_id, refund_transfer.correlation_id,
                refund_transfer.client_addr, _c.scope);
    status := ledger.post_journal(
        ctx => _ctx, at => _at,
        legs => ARRAY[ROW(_id, _debit.account_id, _credit.account_id, _amount, 'refund_out', 'refund_in',
                          _t.receiver, _t.sender, refund_transfer.reason,
                          jsonb_build_object('refund_of', refund_transfer.transfer_id))::ledger.posting_leg],
        accounts => ARRAY[ROW(_debit.account_id, _debit.normal_side, _debit.balance, _debit.version, 0),
                          ROW(_credit.account_id, _credit.normal_side, _credit.balance, _credit.version,
                              0)]::ledger.account_state[],
        action => 'refund', resource_type => 'refund', resource_id => _id::text,
        before_state => jsonb_build_object('refunded_amount', _refunded::numeric(21, 8)::text,
                                           'from_balance', _debit.balance::numeric(21, 8)::text,
                                           'to_balance', _credit.balance::numeric(21, 8)::text),
        after_state => body::jsonb || jsonb_build_object(
            'refunded_amount', (_refunded + _amount)::numeric(21, 8)::text,
            'from_balance', (_debit.balance - _amount)::numeric(21, 8)::text,
            'to_balance', (_credit.balance + _amount)::numeric(21, 8)::text),
        idempotency_key => refund_transfer.idempotency_key, operation => 'refund', request_hash => _hash,
        response_status => 201, response_body => body);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.refund_transfer(uuid, numeric, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.refund_transfer(uuid, numeric, text, uuid, text, text, uuid, text, inet)
    TO atp_app, atp_dba;
COMMENT ON FUNCTION api.refund_transfer(uuid, numeric, text, uuid, text, text, uuid, text, inet) IS
'Gives back amount ATP of a transfer (default: all that is not refunded yet), from its receiver to its sender, as
a journal of its own (kinds refund_out / refund_in, refund_of = the transfer). Any number of partial refunds, never
more than the transfer in all: they are serialized by the lock of the receiver''s wallet. The acting user
(request_user_id) must be the transfer''s receiver. Needs write.
Errors: L4001 invalid_request, L4002 insufficient_balance, L4003 account_frozen, L4004 balance_limit_exceeded,
L4006 refund_exceeds_transfer, L4032 unauthorized_transfer, L4041 user_not_found, L4042 not_found,
L4091 idempotency_conflict.
Returns (status 201, body {refund_id, status, transfer_id, from_user_id, to_user_id, amount, reason, created_at}, replayed).
Example: SELECT * FROM api.refund_transfer(:''transfer_id'', 2.5, ''damaged item'', request_user_id => :bob);';
