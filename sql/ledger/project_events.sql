-- The projection, in the transaction that appends the events: each account event moves its
-- balances row from version n-1 to n (anything else is a version conflict), every 100th
-- version leaves a snapshot, and the money events of the statement become journal lines in
-- one INSERT, which ledger.check_journal_balance then checks as a whole.
CREATE OR REPLACE FUNCTION ledger.project_events()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _e record;
    _delta numeric;
    _row ledger.balances;
    _journal uuid[] := '{}';
    _event bigint[] := '{}';
    _account uuid[] := '{}';
    _side text[] := '{}';
    _amount numeric[] := '{}';
    _after numeric[] := '{}';
    _kind text[] := '{}';
    _counterparty uuid[] := '{}';
    _memo text[] := '{}';
    _created timestamptz[] := '{}';
BEGIN
    FOR _e IN
        SELECT e.*, t.normal_side
          FROM new_events e
          LEFT JOIN ledger.accounts a ON e.aggregate_type = 'account' AND a.id = e.aggregate_id
          LEFT JOIN ledger.account_types t ON t.code = a.account_type
         ORDER BY e.aggregate_id, e.version
    LOOP
        IF _e.aggregate_type = 'user' THEN
            UPDATE ledger.users SET version = _e.version
             WHERE id = _e.aggregate_id AND version = _e.version - 1;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'L4092',
                    MESSAGE = format('user %s is not at version %s', _e.aggregate_id, _e.version - 1);
            END IF;
            CONTINUE;
        END IF;
        IF _e.normal_side IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'L4041',
                MESSAGE = format('event %s names account %s, which does not exist', _e.id, _e.aggregate_id);
        END IF;

        IF _e.event_type = 'AccountOpened' THEN
            INSERT INTO ledger.balances (account_id, balance, is_frozen, is_closed, version, last_event_id, updated_at)
            SELECT _e.aggregate_id, 0, false, false, 1, _e.id, _e.created_at
             WHERE _e.version = 1
            ON CONFLICT (account_id) DO NOTHING;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'L4092',
                    MESSAGE = format('account %s cannot be opened at version %s', _e.aggregate_id, _e.version);
            END IF;
            CONTINUE;
        END IF;

        IF _e.event_type NOT IN ('AccountDebited', 'AccountCredited', 'AccountFrozen', 'AccountUnfrozen',
                                 'AccountClosed') THEN
            RAISE EXCEPTION USING ERRCODE = 'L4001',
                MESSAGE = format('unknown account event type %s', _e.event_type);
        END IF;
        _delta := ledger.event_delta(_e.event_type, _e.data, _e.normal_side);

        UPDATE ledger.balances
           SET balance = balance + _delta,
               is_frozen = CASE _e.event_type WHEN 'AccountFrozen' THEN true
                                              WHEN 'AccountUnfrozen' THEN false ELSE is_frozen END,
               is_closed = is_closed OR _e.event_type = 'AccountClosed',
               version = _e.version,
               last_event_id = _e.id,
               updated_at = _e.created_at
         WHERE account_id = _e.aggregate_id AND version = _e.version - 1
        RETURNING * INTO _row;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'L4092',
                MESSAGE = format('account %s is not at version %s', _e.aggregate_id, _e.version - 1);
        END IF;

        IF _e.version % 100 = 0 THEN
            INSERT INTO ledger.snapshots (account_id, version, balance, is_frozen, is_closed, event_created_at)
            VALUES (_row.account_id, _row.version, _row.balance, _row.is_frozen, _row.is_closed, _e.created_at);
        END IF;

        IF _e.event_type IN ('AccountDebited', 'AccountCredited') THEN
            _journal := _journal || (_e.data ->> 'journal_id')::uuid;
            _event := _event || _e.id;
            _account := _account || _e.aggregate_id;
            _side := _side || CASE _e.event_type WHEN 'AccountDebited' THEN 'debit' ELSE 'credit' END;
            _amount := _amount || (_e.data ->> 'amount')::numeric;
            _after := _after || _row.balance;
            _kind := _kind || (_e.data ->> 'kind');
            _counterparty := _counterparty || (_e.data ->> 'counterparty_user_id')::uuid;
            _memo := _memo || (_e.data ->> 'memo');
            _created := _created || _e.created_at;
        END IF;
    END LOOP;

    IF cardinality(_journal) > 0 THEN
        INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after,
                                           kind, counterparty_user_id, memo, created_at)
        SELECT * FROM unnest(_journal, _event, _account, _side, _amount, _after, _kind, _counterparty,
                             _memo, _created);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER events_project AFTER INSERT ON ledger.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.project_events();
