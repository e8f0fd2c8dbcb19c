-- Writes a new hold in one statement: the hold row, its HoldCreated event, what the sender's
-- balances row reserves (held grows; balance and version do not move), the audit row with its
-- hash and the stored response. The scalar sibling of ledger.post_journal for the hold that
-- moves no money, as ledger.post_transfer is for one journal: the general statement's arrays
-- and empty parts cost a hold a third more than a transfer. The caller holds the sender's
-- balances row lock and has checked the available balance.
CREATE OR REPLACE FUNCTION ledger.post_hold(
    ctx ledger.request_context,
    at timestamptz,
    hold ledger.holds,
    event_data jsonb,
    before_state jsonb,
    after_state jsonb,
    idempotency_key uuid,
    request_hash text,
    response_body json
)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    WITH appended AS (
        INSERT INTO ledger.events (id, tx_id, aggregate_type, aggregate_id, version, event_type, data, actor,
                                   api_key_id, request_user_id, correlation_id, created_at)
        VALUES (nextval('ledger.event_id_seq'), pg_current_xact_id(), 'hold', (post_hold.hold).id, 1, 'HoldCreated',
                post_hold.event_data, ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id,
                post_hold.at)
    ), held AS (
        INSERT INTO ledger.holds SELECT (post_hold.hold).*
    ), reserved AS (
        UPDATE ledger.balances b
           SET held = b.held + (post_hold.hold).amount, updated_at = post_hold.at
         WHERE b.account_id = (post_hold.hold).from_account_id
    ), audited AS (
        INSERT INTO ledger.audit_log (id, tx_id, created_at, actor, api_key_id, request_user_id, correlation_id,
                                      client_addr, action, resource_type, resource_id, before_state,
                                      after_state, row_hash)
        OVERRIDING SYSTEM VALUE
        SELECT r.id, r.tx_id, post_hold.at, ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id,
               ctx.client_addr, 'hold.create', 'hold', (post_hold.hold).id::text, post_hold.before_state,
               post_hold.after_state,
               ledger.audit_hash(r.id, r.tx_id, post_hold.at, ctx.actor, ctx.api_key_id, ctx.request_user_id,
                                 ctx.correlation_id, ctx.client_addr, 'hold.create', 'hold',
                                 (post_hold.hold).id::text, post_hold.before_state, post_hold.after_state)
          FROM (SELECT nextval('ledger.audit_log_id_seq') AS id, pg_current_xact_id() AS tx_id) r
    )
    -- The caller holds the key's lock and found no live response under it: a row here can only
    -- be an expired one.
    INSERT INTO ledger.idempotency_keys AS i (scope, key, operation, request_hash, response_status,
                                              response_body, created_at, expires_at)
    SELECT ctx.scope, post_hold.idempotency_key, 'create_hold', post_hold.request_hash, 201,
           post_hold.response_body, post_hold.at, e.expires_at
      FROM ledger.idempotency_expires_at() e
     WHERE post_hold.idempotency_key IS NOT NULL
    ON CONFLICT (scope, key) DO UPDATE
       SET operation = excluded.operation, request_hash = excluded.request_hash,
           response_status = excluded.response_status, response_body = excluded.response_body,
           created_at = excluded.created_at, expires_at = excluded.expires_at;
    RETURN 201;
END
$$;
