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
    _at timestamptz;
    _expired bigint;
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
    _at := clock_timestamp();
    -- Then every hold of the batch in one statement, with the rows ledger.post_journal writes
    -- for a hold's release (no journal lines: the money never moved; the wallet's held amount,
    -- the hold's row, its HoldExpired event and an audit row each). Released hold by hold, as
    -- they were until 2026-12-06, a release cost about a transfer while every wallet of the
    -- batch waited for all of them. A hold a capture or void has locked is theirs to settle:
    -- skipped, and gone by the next run (they lock the hold, then its wallets: so this run
    -- never waits for a hold). One wallet's holds are released in expiry order, each audit row
    -- saying what that wallet held before and after it.
    WITH released AS (
        UPDATE ledger.holds h
           SET status = 'expired', settled_at = _at, version = h.version + 1
         WHERE h.id IN (SELECT p.id FROM ledger.holds p
                         WHERE p.id = ANY (_ids) AND p.status = 'pending'
                           FOR UPDATE SKIP LOCKED)
        RETURNING h.id, h.from_account_id, h.amount, h.expires_at, h.version, h AS hold
    ), numbered AS (
        -- Event and audit ids in expiry order: a volatile output is computed after the sort.
        SELECT w.*, nextval('ledger.event_id_seq') AS event_id, nextval('ledger.audit_log_id_seq') AS audit_id
          FROM (SELECT r.*,
                       b.held - sum(r.amount) OVER (PARTITION BY r.from_account_id ORDER BY r.expires_at, r.id
                                                    ROWS UNBOUNDED PRECEDING) AS held_after
                  FROM released r
                  JOIN ledger.balances b ON b.account_id = r.from_account_id) w
         ORDER BY w.expires_at, w.id
    ), appended AS (
        INSERT INTO ledger.events (id, aggregate_type, aggregate_id, version, event_type, data, actor, api_key_id,
                                   request_user_id, correlation_id, created_at)
        SELECT n.event_id, 'hold', n.id, n.version, 'HoldExpired',
               jsonb_build_object('released_amount', n.amount::numeric(21, 8)::text),
               _ctx.actor, _ctx.api_key_id, _ctx.request_user_id, _ctx.correlation_id, _at
          FROM numbered n
    ), projected AS (
        UPDATE ledger.balances b
           SET held = b.held - s.amount, updated_at = _at
          FROM (SELECT r.from_account_id, sum(r.amount) AS amount FROM released r GROUP BY r.from_account_id) s
         WHERE b.account_id = s.from_account_id
    ), audited AS (
        INSERT INTO ledger.audit_log (id, tx_id, created_at, actor, api_key_id, request_user_id, correlation_id,
                                      client_addr, action, resource_type, resource_id, before_state,
                                      after_state, row_hash)
        OVERRIDING SYSTEM VALUE
        SELECT n.audit_id, pg_current_xact_id(), _at, _ctx.actor, _ctx.api_key_id, _ctx.request_user_id,
               _ctx.correlation_id, _ctx.client_addr, 'hold.expire', 'hold', n.id::text, s.before_state,
               s.after_state,
               ledger.audit_hash(n.audit_id, pg_current_xact_id(), _at, _ctx.actor, _ctx.api_key_id,
                                 _ctx.request_user_id, _ctx.correlation_id, _ctx.client_addr, 'hold.expire',
                                 'hold', n.id::text, s.before_state, s.after_state)
          FROM numbered n
          CROSS JOIN LATERAL (
            SELECT jsonb_build_object('status', 'pending',
                                      'from_held', (n.held_after + n.amount)::numeric(21, 8)::text) AS before_state,
                   ledger.hold_json(n.hold)::jsonb
                       || jsonb_build_object('from_held', n.held_after::numeric(21, 8)::text) AS after_state
            OFFSET 0) s
    )
    SELECT count(*) INTO _expired FROM numbered;
    RETURN _expired;
END
$$;

REVOKE ALL ON FUNCTION api.expire_holds(integer, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.expire_holds(integer, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.expire_holds(integer, text, uuid, text, inet) IS
'Releases what pending holds past expires_at reserve (at most max_holds, 1,000 unless given; oldest first): each
becomes expired, with its event and audit row, all of them in one statement. Every sender''s wallet of the batch stays
locked until the commit (about 40 ms for 1,000 holds), so keep batches small while the ledger is written.
api.run_maintenance runs it. Returns how many. Needs an admin key, or a keyless call from
atp_dba or atp_app. Errors: L4001 invalid_request (max_holds below 0). Example: SELECT api.expire_holds();';
