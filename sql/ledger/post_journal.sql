-- Posts one journal of two lines: debit one account, credit another, by the same amount.
-- The two balances rows are locked in account-id order (so opposite journals cannot
-- deadlock) as late as possible, then checked; then the two events and their two journal
-- lines are appended, and the projection trigger moves the balances.
CREATE OR REPLACE FUNCTION ledger.post_journal(
    ctx ledger.request_context,
    journal_id uuid,
    debit_account uuid,
    credit_account uuid,
    amount numeric,
    debit_kind text,
    credit_kind text,
    debit_counterparty uuid,
    credit_counterparty uuid,
    memo text,
    OUT created_at timestamptz,
    OUT debit_before numeric,
    OUT debit_after numeric,
    OUT credit_before numeric,
    OUT credit_after numeric
)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    _row record;
    _debit record;
    _credit record;
BEGIN
    FOR _row IN
        SELECT b.account_id, b.balance, b.is_frozen, b.is_closed, b.version, b.normal_side, a.user_id
          FROM ledger.balances b
          JOIN ledger.accounts a ON a.id = b.account_id
         WHERE b.account_id IN (post_journal.debit_account, post_journal.credit_account)
         ORDER BY b.account_id
           FOR UPDATE OF b
    LOOP
        IF _row.account_id = post_journal.debit_account THEN
            _debit := _row;
        ELSE
            _credit := _row;
        END IF;
        IF _row.is_closed THEN
            RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = format('user %s not found', _row.user_id);
        ELSIF _row.is_frozen THEN
            RAISE EXCEPTION USING ERRCODE = 'L4003',
                MESSAGE = format('the wallet of user %s is frozen', _row.user_id);
        END IF;
    END LOOP;

    debit_before := _debit.balance;
    credit_before := _credit.balance;
    debit_after := _debit.balance
                 + CASE _debit.normal_side WHEN 'debit' THEN post_journal.amount ELSE -post_journal.amount END;
    credit_after := _credit.balance
                  + CASE _credit.normal_side WHEN 'credit' THEN post_journal.amount ELSE -post_journal.amount END;
    IF debit_after < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4002',
            MESSAGE = format('insufficient balance: user %s has %s ATP, %s ATP needed',
                             _debit.user_id, _debit.balance::numeric(21, 8), post_journal.amount::numeric(21, 8));
    ELSIF credit_after < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4002',
            MESSAGE = format('insufficient balance: user %s has %s ATP, %s ATP needed',
                             _credit.user_id, _credit.balance::numeric(21, 8), post_journal.amount::numeric(21, 8));
    ELSIF greatest(debit_after, credit_after) > 1000000000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4004',
            MESSAGE = 'this would take a balance above the limit of 1000000000000 ATP';
    END IF;

    -- Taken after the locks, so that event times and versions agree per account.
    post_journal.created_at := clock_timestamp();
    -- The two events (the projection trigger moves the balances) and the two journal lines,
    -- in one statement: one round of planning, and both lines reach the balance check together.
    WITH appended AS (
        INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor,
                                   api_key_id, request_user_id, correlation_id, created_at)
        VALUES ('account', _debit.account_id, _debit.version + 1, 'AccountDebited',
                jsonb_build_object('journal_id', post_journal.journal_id,
                                   'amount', post_journal.amount::numeric(21, 8)::text,
                                   'kind', post_journal.debit_kind,
                                   'counterparty_user_id', post_journal.debit_counterparty,
                                   'memo', post_journal.memo),
                ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id, post_journal.created_at),
               ('account', _credit.account_id, _credit.version + 1, 'AccountCredited',
                jsonb_build_object('journal_id', post_journal.journal_id,
                                   'amount', post_journal.amount::numeric(21, 8)::text,
                                   'kind', post_journal.credit_kind,
                                   'counterparty_user_id', post_journal.credit_counterparty,
                                   'memo', post_journal.memo),
                ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id, post_journal.created_at)
        RETURNING id, aggregate_id, event_type
    )
    INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after, kind,
                                       counterparty_user_id, memo, created_at)
    SELECT post_journal.journal_id, a.id, a.aggregate_id,
           CASE a.event_type WHEN 'AccountDebited' THEN 'debit' ELSE 'credit' END,
           post_journal.amount,
           CASE a.event_type WHEN 'AccountDebited' THEN post_journal.debit_after ELSE post_journal.credit_after END,
           CASE a.event_type WHEN 'AccountDebited' THEN post_journal.debit_kind ELSE post_journal.credit_kind END,
           CASE a.event_type WHEN 'AccountDebited' THEN post_journal.debit_counterparty
                ELSE post_journal.credit_counterparty END,
           post_journal.memo, post_journal.created_at
      FROM appended a;
END
$$;
