CREATE OR REPLACE FUNCTION api.transfer_batch(
    from_user_id uuid,
    transfers jsonb,
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
    _legs ledger.batch_leg[];
    _locked ledger.locked_account[];
    _debit ledger.locked_account;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _posting ledger.posting_leg[];
    _accounts ledger.account_state[];
    _items json;
    _total numeric;
    _id uuid;
    _at timestamptz;
BEGIN
    -- The shape of api.transfer: caller, locks (all accounts in one statement), post.
    SELECT * INTO _c FROM ledger.caller(transfer_batch.api_key_hash, 'write', transfer_batch.idempotency_key,
                                        transfer_batch.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'write', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    -- Without a sender, the request is incomplete (400 below), not someone else's money.
    IF transfer_batch.from_user_id IS NOT NULL AND transfer_batch.request_user_id IS DISTINCT FROM transfer_batch.from_user_id THEN
        RAISE EXCEPTION USING ERRCODE = 'L4032',
            MESSAGE = 'the acting user (X-Request-User-Id; request_user_id in SQL) must be the sender (from_user_id)';
    END IF;
    _hash := COALESCE(transfer_batch.request_hash, ledger.fingerprint('transfer_batch', jsonb_build_object(
        'from_user_id', transfer_batch.from_user_id, 'transfers', transfer_batch.transfers)));
    IF transfer_batch.from_user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'from_user_id is required';
    END IF;
    _legs := ledger.batch_legs(transfer_batch.transfers, 'transfers', 100, true, transfer_batch.from_user_id);

    -- Every account of the batch, locked in id order, unless a response is stored under the key.
    SELECT array_agg(l) INTO _locked
      FROM ledger.lock_accounts(
               transfer_batch.from_user_id, 'user_wallet', _legs, _c.scope, transfer_batch.idempotency_key) l;
    IF _locked IS NULL THEN
        _stored := ledger.idempotency_replay(_c.scope, transfer_batch.idempotency_key, 'transfer_batch', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
    END IF;
    PERFORM ledger.batch_check('transfers', _legs, _locked, transfer_batch.from_user_id, 'user_wallet');

    _id := ledger.uuid_v7();
    _at := clock_timestamp();
    SELECT d.* INTO _debit FROM unnest(_locked) d
     WHERE d.user_id = transfer_batch.from_user_id AND d.account_type = 'user_wallet';
    WITH posted AS (
        SELECT l.n, l.amount, ROW(ledger.uuid_v7(), _debit.account_id, r.account_id, l.amount, 'transfer_out',
                                  'transfer_in', transfer_batch.from_user_id, l.user_id, l.memo,
                                  jsonb_build_object('batch_id', _id))::ledger.posting_leg AS leg
          FROM unnest(_legs) l
          JOIN unnest(_locked) r ON r.user_id = l.user_id AND r.account_type = l.account_type
    )
    SELECT array_agg(p.leg ORDER BY p.n),
           json_agg(json_build_object(
               'transfer_id', (p.leg).journal_id, 'status', 'completed', 'from_user_id', transfer_batch.from_user_id,
               'to_user_id', (p.leg).credit_user, 'amount', p.amount::numeric(21, 8)::text, 'memo', (p.leg).memo,
               'created_at', ledger.rfc3339(_at)) ORDER BY p.n),
           sum(p.amount),
           (SELECT array_agg(ROW(a.account_id, a.normal_side, a.balance, a.version, 0)::ledger.account_state)
              FROM unnest(_locked) a)
      INTO _posting, _items, _total, _accounts
      FROM posted p;
    -- The body and its legs in the contract's order (json); the audit state is its jsonb.
    body := json_build_object('batch_id', _id, 'from_user_id', transfer_batch.from_user_id,
                              'amount', _total::numeric(21, 8)::text, 'transfers', _items,
                              'created_at', ledger.rfc3339(_at));
    _ctx := ROW(_c.api_key_id, _c.actor, transfer_batch.request_user_id, transfer_batch.correlation_id,
                transfer_batch.client_addr, _c.scope);
    status := ledger.post_journal(
        ctx => _ctx, at => _at, legs => _posting, accounts => _accounts,
        action => 'transfer_batch', resource_type => 'transfer_batch', resource_id => _id::text,
        before_state => jsonb_build_object('from_balance', _debit.balance::numeric(21, 8)::text),
        after_state => body::jsonb
                       || jsonb_build_object('from_balance', (_debit.balance - _total)::numeric(21, 8)::text),
        idempotency_key => transfer_batch.idempotency_key, operation => 'transfer_batch', request_hash => _hash,
        response_status => 201, response_body => body);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.transfer_batch(uuid, jsonb, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.transfer_batch(uuid, jsonb, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.transfer_batch(uuid, jsonb, uuid, text, text, uuid, text, inet) IS
'Moves ATP from one sender to 1 to 100 receivers, all or nothing, in one transaction: transfers is a JSON array
of {"to_user_id", "amount", "memo"}; a leg to SYSTEM_FEE (00000000-0000-0000-0000-000000000002) credits the fee
account. Each leg is a transfer of its own (its transfer_id in the answer, in both histories, refundable); the
events carry batch_id; one audit row holds the whole batch. The acting user (request_user_id) must be the sender,
whose available balance must cover the sum. Needs write. A leg that fails fails the batch, and the error''s
DETAIL is {"index": n} (0-based).
Errors: L4001 invalid_request, L4002 insufficient_balance, L4003 account_frozen, L4004 balance_limit_exceeded,
L4032 unauthorized_transfer, L4041 user_not_found, L4091 idempotency_conflict.
Returns (status 201, body {batch_id, from_user_id, amount, transfers, created_at}, replayed). Example:
SELECT * FROM api.transfer_batch(:alice, jsonb_build_array(
    jsonb_build_object(''to_user_id'', :bob, ''amount'', ''95''),
    jsonb_build_object(''to_user_id'', ''00000000-0000-0000-0000-000000000002'', ''amount'', ''5'', ''memo'', ''fee'')),
    request_user_id => :alice);';
