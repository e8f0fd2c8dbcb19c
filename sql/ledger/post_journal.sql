-- Posts one journal of two lines: debit one account, credit another, by the same amount.
-- Each side is named by its owner and account type (a wallet: the user and 'user_wallet';
-- the issuer's account: the system user and 'mint_source'). One statement finds both
-- accounts and locks their balances rows in account-id order (so opposite journals cannot
-- deadlock), as late as possible; a user who does not exist, was deleted (their wallet is
-- closed in the same transaction) or is a system user has no open wallet: not found.
-- Then one statement appends the two events, their two journal lines, the audit row and the
-- stored response for the idempotency key, and the projection trigger moves the balances.
-- Few statements and few tables, because each statement costs an executor start-up and each
-- table read takes locks (past 16 per session, through the shared lock table); measured
-- against four statements and two wallet_of calls, the gain was within noise (bench/README.md).
-- operation names the audit action and the idempotency operation; body is the response
-- without created_at, which is added here; debit_label and credit_label name the two
-- balances in the audit row's before and after states.
CREATE OR REPLACE FUNCTION ledger.post_journal(
    ctx ledger.request_context,
    journal_id uuid,
    debit_user uuid,
    debit_type text,
    credit_user uuid,
    credit_type text,
    amount numeric,
    debit_kind text,
    credit_kind text,
    memo text,
    operation text,
    body jsonb,
    debit_label text,
    credit_label text,
    idempotency_key uuid,
    request_hash text
)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    _row record;
    _debit record;
    _credit record;
    _found integer := 0;
    _debit_after numeric;
    _credit_after numeric;
    _at timestamptz;
    _body jsonb;
BEGIN
    FOR _row IN
        SELECT b.account_id, b.balance, b.is_frozen, b.is_closed, b.version, b.normal_side, a.user_id,
               a.user_id = post_journal.debit_user AND a.account_type = post_journal.debit_type AS is_debit
          FROM ledger.accounts a
          JOIN ledger.balances b ON b.account_id = a.id
         WHERE ((a.user_id = post_journal.debit_user AND a.account_type = post_journal.debit_type)
                OR (a.user_id = post_journal.credit_user AND a.account_type = post_journal.credit_type))
           AND (a.account_type <> 'user_wallet' OR NOT a.is_system)
           AND NOT b.is_closed
         ORDER BY b.account_id
           FOR UPDATE OF b
    LOOP
        IF _row.is_debit THEN
            _debit := _row;
            _found := _found | 1;
        ELSE
            _credit := _row;
            _found := _found | 2;
        END IF;
    END LOOP;
    IF _found & 1 = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = format('user %s not found', post_journal.debit_user);
    ELSIF _found & 2 = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = format('user %s not found', post_journal.credit_user);
    ELSIF _debit.is_frozen OR _credit.is_frozen THEN
        RAISE EXCEPTION USING ERRCODE = 'L4003', MESSAGE = format('the wallet of user %s is frozen',
            CASE WHEN _debit.is_frozen THEN _debit.user_id ELSE _credit.user_id END);
    END IF;

    _debit_after := _debit.balance
                  + CASE _debit.normal_side WHEN 'debit' THEN post_journal.amount ELSE -post_journal.amount END;
    _credit_after := _credit.balance
                   + CASE _credit.normal_side WHEN 'credit' THEN post_journal.amount ELSE -post_journal.amount END;
    IF _debit_after < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4002',
            MESSAGE = format('insufficient balance: user %s has %s ATP, %s ATP needed',
                             _debit.user_id, _debit.balance::numeric(21, 8), post_journal.amount::numeric(21, 8));
    ELSIF _credit_after < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4002',
            MESSAGE = format('insufficient balance: user %s has %s ATP, %s ATP needed',
                             _credit.user_id, _credit.balance::numeric(21, 8), post_journal.amount::numeric(21, 8));
    ELSIF greatest(_debit_after, _credit_after) > 1000000000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4004',
            MESSAGE = 'this would take a balance above the limit of 1000000000000 ATP';
    END IF;

    -- Taken after the locks, so that event times and versions agree per account.
    _at := clock_timestamp();
    _body := post_journal.body || jsonb_build_object('created_at', ledger.rfc3339(_at));
    WITH appended AS (
        INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor,
                                   api_key_id, request_user_id, correlation_id, created_at)
        SELECT 'account', v.account_id, v.version, v.event_type,
               jsonb_build_object('journal_id', post_journal.journal_id,
                                  'amount', post_journal.amount::numeric(21, 8)::text,
                                  'kind', v.kind, 'counterparty_user_id', v.counterparty,
                                  'memo', post_journal.memo),
               ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id, _at
          FROM (VALUES (_debit.account_id, _debit.version + 1, 'AccountDebited', post_journal.debit_kind,
                        post_journal.credit_user),
                       (_credit.account_id, _credit.version + 1, 'AccountCredited', post_journal.credit_kind,
                        post_journal.debit_user))
               AS v(account_id, version, event_type, kind, counterparty)
        RETURNING id, aggregate_id, event_type
    ), journal AS (
        -- Both lines in one INSERT, so that they reach the balance check together.
        INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after, kind,
                                           counterparty_user_id, memo, created_at)
        SELECT post_journal.journal_id, a.id, a.aggregate_id,
               CASE a.event_type WHEN 'AccountDebited' THEN 'debit' ELSE 'credit' END,
               post_journal.amount,
               CASE a.event_type WHEN 'AccountDebited' THEN _debit_after ELSE _credit_after END,
               CASE a.event_type WHEN 'AccountDebited' THEN post_journal.debit_kind ELSE post_journal.credit_kind END,
               CASE a.event_type WHEN 'AccountDebited' THEN post_journal.credit_user
                    ELSE post_journal.debit_user END,
               post_journal.memo, _at
          FROM appended a
    ), audited AS (
        INSERT INTO ledger.audit_log (actor, api_key_id, request_user_id, correlation_id, client_addr,
                                      action, resource_type, resource_id, before_state, after_state, row_hash)
        VALUES (ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id, ctx.client_addr,
                post_journal.operation, post_journal.operation, post_journal.journal_id::text,
                jsonb_build_object(post_journal.debit_label, _debit.balance::numeric(21, 8)::text,
                                   post_journal.credit_label, _credit.balance::numeric(21, 8)::text),
                _body || jsonb_build_object(post_journal.debit_label, _debit_after::numeric(21, 8)::text,
                                            post_journal.credit_label, _credit_after::numeric(21, 8)::text),
                '\x'::bytea)
    )
    -- The stored response, in the transaction that made the effects (ledger.idempotency_store).
    INSERT INTO ledger.idempotency_keys (scope, key, operation, request_hash, response_status,
                                         response_body, expires_at)
    SELECT ctx.scope, post_journal.idempotency_key, post_journal.operation, post_journal.request_hash, 201, _body,
           ledger.idempotency_expiry()
     WHERE post_journal.idempotency_key IS NOT NULL;
    RETURN _body;
END
$$;
