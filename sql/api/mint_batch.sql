CREATE OR REPLACE FUNCTION api.mint_batch(
    mints jsonb,
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
    _legs ledger.batch_leg[];
    _locked ledger.locked_account[];
    _issued ledger.locked_account;
    _stored ledger.idempotency_keys;
    _ctx ledger.request_context;
    _posting ledger.posting_leg[];
    _accounts ledger.account_state[];
    _items json;
    _total numeric;
    _id uuid;
    _at timestamptz;
BEGIN
    -- The shape of api.mint with the locks of api.transfer_batch.
    SELECT * INTO _c FROM ledger.caller(mint_batch.api_key_hash, 'admin', mint_batch.idempotency_key,
                                        mint_batch.correlation_id, true);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, 'admin', _c.rate_limit, _c.current_count,
                              _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    _hash := COALESCE(mint_batch.request_hash, ledger.fingerprint('mint_batch', jsonb_build_object(
        'mints', mint_batch.mints, 'reason', mint_batch.reason)));
    IF length(mint_batch.reason) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'reason is longer than 500 characters';
    END IF;
    _legs := ledger.batch_legs(mint_batch.mints, 'mints', 1000, false);

    SELECT array_agg(l) INTO _locked
      FROM ledger.lock_accounts(
               '00000000-0000-0000-0000-000000000001', 'mint_source', _legs, _c.scope, mint_batch.idempotency_key) l;
    IF _locked IS NULL THEN
        _stored := ledger.idempotency_replay(_c.scope, mint_batch.idempotency_key, 'mint_batch', _hash);
        IF _stored.key IS NOT NULL THEN
            status := _stored.response_status;
            body := _stored.response_body;
            replayed := true;
            RETURN;
        END IF;
    END IF;
    PERFORM ledger.batch_check('mints', _legs, _locked, '00000000-0000-0000-0000-000000000001', 'mint_source');

    _id := ledger.uuid_v7();
    _at := clock_timestamp();
    SELECT d.* INTO _issued FROM unnest(_locked) d WHERE d.account_type = 'mint_source';
    WITH posted AS (
        SELECT l.n, l.amount, ROW(ledger.uuid_v7(), _issued.account_id, r.account_id, l.amount, 'mint', 'mint',
                                  _issued.user_id, l.user_id, mint_batch.reason,
                                  jsonb_build_object('batch_id', _id))::ledger.posting_leg AS leg
          FROM unnest(_legs) l
          JOIN unnest(_locked) r ON r.user_id = l.user_id AND r.account_type = l.account_type
    )
    SELECT array_agg(p.leg ORDER BY p.n),
           json_agg(json_build_object(
               'mint_id', (p.leg).journal_id, 'status', 'completed', 'to_user_id', (p.leg).credit_user,
               'amount', p.amount::numeric(21, 8)::text, 'reason', mint_batch.reason,
               'created_at', ledger.rfc3339(_at)) ORDER BY p.n),
           sum(p.amount),
           (SELECT array_agg(ROW(a.account_id, a.normal_side, a.balance, a.version, 0)::ledger.account_state)
              FROM unnest(_locked) a)
      INTO _posting, _items, _total, _accounts
      FROM posted p;
    -- The body and its legs in the contract's order (json); the audit state is its jsonb.
    body := json_build_object('batch_id', _id, 'amount', _total::numeric(21, 8)::text, 'reason', mint_batch.reason,
                              'mints', _items, 'created_at', ledger.rfc3339(_at));
    _ctx := ROW(_c.api_key_id, _c.actor, mint_batch.request_user_id, mint_batch.correlation_id,
                mint_batch.client_addr, _c.scope);
    status := ledger.post_journal(
        ctx => _ctx, at => _at, legs => _posting, accounts => _accounts,
        action => 'mint_batch', resource_type => 'mint_batch', resource_id => _id::text,
        before_state => jsonb_build_object('issued', _issued.balance::numeric(21, 8)::text),
        after_state => body::jsonb || jsonb_build_object('issued', (_issued.balance + _total)::numeric(21, 8)::text),
        idempotency_key => mint_batch.idempotency_key, operation => 'mint_batch', request_hash => _hash,
        response_status => 201, response_body => body);
    status := 201;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.mint_batch(jsonb, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.mint_batch(jsonb, text, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.mint_batch(jsonb, text, uuid, text, text, uuid, text, inet) IS
'Issues new ATP into 1 to 1,000 wallets, all or nothing, in one transaction: mints is a JSON array of
{"to_user_id", "amount"}. Each leg is a mint of its own (its mint_id in the answer, kind mint in the history); the
events carry batch_id; ONE audit row holds the whole batch with every leg. Needs admin. A leg that fails fails the
batch, and the error''s DETAIL is {"index": n} (0-based).
Errors: L4001 invalid_request, L4003 account_frozen, L4004 balance_limit_exceeded, L4041 user_not_found,
L4091 idempotency_conflict.
Returns (status 201, body {batch_id, amount, reason, mints, created_at}, replayed). Example:
SELECT * FROM api.mint_batch(jsonb_build_array(jsonb_build_object(''to_user_id'', :alice, ''amount'', ''100''),
                                              jsonb_build_object(''to_user_id'', :bob, ''amount'', ''50'')), ''airdrop'');';
