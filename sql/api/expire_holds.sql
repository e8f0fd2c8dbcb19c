CREATE OR REPLACE FUNCTION api.expire_holds(
    max_holds integer DEFAULT 1000,
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _ctx ledger.request_context;
    _hold ledger.holds;
    _wallet record;
    _at timestamptz;
    _expired bigint := 0;
    _ids uuid[];
BEGIN
    _ctx := ledger.authorize(expire_holds.api_key_hash, 'maintenance', expire_holds.request_user_id,
                             expire_holds.correlation_id, expire_holds.client_addr);
    IF expire_holds.max_holds < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'max_holds must not be negative (NULL: no limit)';
    END IF;
    -- The senders' wallets first, all of them, in account-id order, as every movement locks
    -- wallets: taken hold by hold, in expiry order, they would form a cycle with a transfer
    -- between two of them (a deadlock, and a 503 for its client), or with another run.
    SELECT array_agg(h.id) INTO _ids
      FROM (SELECT id FROM ledger.holds
             WHERE status = 'pending' AND expires_at <= now()
             ORDER BY expires_at
             LIMIT expire_holds.max_holds) h;
    PERFORM FROM ledger.balances b
      JOIN ledger.accounts a ON a.id = b.account_id
     WHERE a.account_type = 'user_wallet'
       AND a.user_id IN (SELECT from_user_id FROM ledger.holds WHERE id = ANY (_ids))
     ORDER BY b.account_id
       FOR UPDATE OF b;
    -- A hold a capture or void has locked is theirs to settle: skipped, and gone by the next run
    -- (they lock the hold, then its wallets: so this run never waits for a hold).
    FOR _hold IN SELECT * FROM ledger.holds
                  WHERE id = ANY (_ids) AND status = 'pending'
                  ORDER BY expires_at
                    FOR UPDATE SKIP LOCKED
    LOOP
        SELECT * INTO _wallet FROM ledger.lock_pair(_hold.from_user_id, 'user_wallet', _hold.from_user_id,
                                                    'user_wallet', NULL, NULL);
        _at := clock_timestamp();
        _hold.status := 'expired';
        _hold.settled_at := _at;
        _hold.version := _hold.version + 1;
        PERFORM ledger.post_journal(
            ctx => _ctx, at => _at, legs => '{}',
            accounts => ARRAY[ROW(_wallet.account_id, _wallet.normal_side, _wallet.balance, _wallet.version,
                                  -_hold.amount)]::ledger.account_state[],
            action => 'hold.expire', resource_type => 'hold', resource_id => _hold.id::text,
            before_state => jsonb_build_object('status', 'pending',
                                               'from_held', _wallet.held::numeric(21, 8)::text),
            after_state => ledger.hold_json(_hold)::jsonb || jsonb_build_object(
                'from_held', (_wallet.held - _hold.amount)::numeric(21, 8)::text),
            idempotency_key => NULL, operation => NULL, request_hash => NULL,
            response_status => NULL, response_body => NULL,
            extra_events => ARRAY[ROW('hold', _hold.id, _hold.version, 'HoldExpired', jsonb_build_object(
                'released_amount', _hold.amount::numeric(21, 8)::text))]::ledger.extra_event[],
            hold => _hold);
        _expired := _expired + 1;
    END LOOP;
    RETURN _expired;
END
$$;

REVOKE ALL ON FUNCTION api.expire_holds(integer, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.expire_holds(integer, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.expire_holds(integer, text, uuid, text, inet) IS
'Releases what pending holds past expires_at reserve (at most max_holds, 1,000 unless given; oldest first): each
becomes expired, with its event and audit row. Every sender''s wallet of the batch stays locked until the commit, so
keep batches small while the ledger is written. api.run_maintenance runs it. Returns how many. Needs an admin key, or a keyless call from
atp_dba or atp_app. Errors: L4001 invalid_request (max_holds below 0). Example: SELECT api.expire_holds();';
