-- Posts one journal of two lines, the debit and the credit of one amount, in one statement: the
-- shape of a transfer, a mint and a burn, which make most of the ledger's writes. The same rows
-- as ledger.post_journal (two events and journal lines with the balance after and the next
-- version, both balances rows moved, a snapshot at every 100th version, the audit row with its
-- hash, the stored response), from scalar values: measured, the arrays of composites that
-- ledger.post_journal takes for batches and holds cost a single transfer 13% of its CPU. Every
-- column is given, so no default expression is read per call. The caller holds both balances
-- rows' locks and has checked what can fail.
CREATE OR REPLACE FUNCTION ledger.post_transfer(
    ctx ledger.request_context,
    at timestamptz,
    journal_id uuid,
    amount numeric,
    memo text,
    debit_account uuid,
    debit_user uuid,
    debit_kind text,
    debit_version bigint,
    debit_after numeric,
    credit_account uuid,
    credit_user uuid,
    credit_kind text,
    credit_version bigint,
    credit_after numeric,
    action text,
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
    WITH line AS (
        SELECT nextval('ledger.event_id_seq') AS event_id, nextval('ledger.ledger_entry_id_seq') AS entry_id,
               l.account_id, l.side, l.kind, l.counterparty, l.version, l.balance_after
          FROM (VALUES (post_transfer.debit_account, 'debit', post_transfer.debit_kind, post_transfer.credit_user,
                        post_transfer.debit_version, post_transfer.debit_after, 1),
                       (post_transfer.credit_account, 'credit', post_transfer.credit_kind, post_transfer.debit_user,
                        post_transfer.credit_version, post_transfer.credit_after, 2))
               AS l(account_id, side, kind, counterparty, version, balance_after, n)
         ORDER BY l.n
    ), appended AS (
        INSERT INTO ledger.events (id, tx_id, aggregate_type, aggregate_id, version, event_type, data, actor,
                                   api_key_id, request_user_id, correlation_id, created_at)
        SELECT l.event_id, pg_current_xact_id(), 'account', l.account_id, l.version,
               CASE l.side WHEN 'debit' THEN 'AccountDebited' ELSE 'AccountCredited' END,
               jsonb_build_object('journal_id', post_transfer.journal_id,
                                  'amount', post_transfer.amount::numeric(21, 8)::text, 'kind', l.kind,
                                  'counterparty_user_id', l.counterparty, 'memo', post_transfer.memo),
               ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id, post_transfer.at
          FROM line l
    ), journal AS (
        INSERT INTO ledger.ledger_entries (id, journal_id, event_id, account_id, side, amount, balance_after, kind,
                                           counterparty_user_id, memo, created_at, refund_of)
        SELECT l.entry_id, post_transfer.journal_id, l.event_id, l.account_id, l.side, post_transfer.amount,
               l.balance_after, l.kind, l.counterparty, post_transfer.memo, post_transfer.at, NULL
          FROM line l
    ), projected AS (
        UPDATE ledger.balances b
           SET balance = l.balance_after, version = l.version, last_event_id = l.event_id,
               updated_at = post_transfer.at
          FROM line l
         WHERE b.account_id = l.account_id
    ), snapshot AS (
        INSERT INTO ledger.snapshots (account_id, version, balance, is_frozen, is_closed, event_created_at)
        SELECT l.account_id, l.version, l.balance_after, false, false, post_transfer.at
          FROM line l
         WHERE l.version % 100 = 0
    ), audited AS (
        INSERT INTO ledger.audit_log (id, tx_id, created_at, actor, api_key_id, request_user_id, correlation_id,
                                      client_addr, action, resource_type, resource_id, before_state,
                                      after_state, row_hash)
        OVERRIDING SYSTEM VALUE
        SELECT r.id, r.tx_id, post_transfer.at, ctx.actor, ctx.api_key_id, ctx.request_user_id,
               ctx.correlation_id, ctx.client_addr, post_transfer.action, post_transfer.action,
               post_transfer.journal_id::text, post_transfer.before_state, post_transfer.after_state,
               ledger.audit_hash(r.id, r.tx_id, post_transfer.at, ctx.actor, ctx.api_key_id, ctx.request_user_id,
                                 ctx.correlation_id, ctx.client_addr, post_transfer.action, post_transfer.action,
                                 post_transfer.journal_id::text, post_transfer.before_state,
                                 post_transfer.after_state)
          FROM (SELECT nextval('ledger.audit_log_id_seq') AS id, pg_current_xact_id() AS tx_id) r
    )
    -- The caller holds the key's lock and found no live response under it: a row here can only
    -- be an expired one.
    INSERT INTO ledger.idempotency_keys AS i (scope, key, operation, request_hash, response_status,
                                              response_body, created_at, expires_at)
    SELECT ctx.scope, post_transfer.idempotency_key, post_transfer.action, post_transfer.request_hash, 201,
           post_transfer.response_body, post_transfer.at, e.expires_at
      FROM ledger.idempotency_expires_at() e
     WHERE post_transfer.idempotency_key IS NOT NULL
    ON CONFLICT (scope, key) DO UPDATE
       SET operation = excluded.operation, request_hash = excluded.request_hash,
           response_status = excluded.response_status, response_body = excluded.response_body,
           created_at = excluded.created_at, expires_at = excluded.expires_at;
    RETURN 201;
END
$$;
