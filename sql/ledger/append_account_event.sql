-- Appends an account event that moves no money (AccountFrozen, AccountUnfrozen, AccountClosed)
-- and moves the projection in the same statement: the next version, the flags, the last event,
-- and a snapshot at every 100th version. The caller holds the balances row's lock.
CREATE OR REPLACE FUNCTION ledger.append_account_event(
    ctx ledger.request_context,
    account_id uuid,
    event_type text,
    data jsonb,
    at timestamptz
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    _version bigint;
BEGIN
    IF append_account_event.event_type NOT IN ('AccountFrozen', 'AccountUnfrozen', 'AccountClosed') THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001',
            MESSAGE = format('unknown account event type %s', append_account_event.event_type);
    END IF;
    WITH event AS (
        SELECT nextval('ledger.event_id_seq') AS id
    ), moved AS (
        UPDATE ledger.balances b
           SET is_frozen = CASE append_account_event.event_type WHEN 'AccountFrozen' THEN true
                                WHEN 'AccountUnfrozen' THEN false ELSE b.is_frozen END,
               is_closed = b.is_closed OR append_account_event.event_type = 'AccountClosed',
               version = b.version + 1,
               last_event_id = event.id,
               updated_at = append_account_event.at
          FROM event
         WHERE b.account_id = append_account_event.account_id
        RETURNING b.account_id, b.version, b.balance, b.is_frozen, b.is_closed, event.id AS event_id
    ), appended AS (
        INSERT INTO ledger.events (id, aggregate_type, aggregate_id, version, event_type, data, actor, api_key_id,
                                   request_user_id, correlation_id, created_at)
        SELECT m.event_id, 'account', m.account_id, m.version, append_account_event.event_type,
               append_account_event.data, ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id,
               append_account_event.at
          FROM moved m
    ), snapshot AS (
        INSERT INTO ledger.snapshots (account_id, version, balance, is_frozen, is_closed, event_created_at)
        SELECT m.account_id, m.version, m.balance, m.is_frozen, m.is_closed, append_account_event.at
          FROM moved m
         WHERE m.version % 100 = 0
    )
    SELECT m.version INTO _version FROM moved m;
    IF _version IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4092',
            MESSAGE = format('account %s does not exist', append_account_event.account_id);
    END IF;
    RETURN _version;
END
$$;
