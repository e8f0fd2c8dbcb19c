-- The projection, in the transaction that appends the event (AFTER INSERT: a BEFORE trigger
-- of the second row of a multi-row INSERT would not see what the first row's trigger did,
-- and two events of one version would both pass): an account event moves its
-- balances row from version n-1 to n (anything else is a version conflict, so versions are
-- unique per aggregate although no index can span the partitions), and every 100th
-- version leaves a snapshot. User events move the user's version the same way. The
-- journal lines of money events are written by ledger.post_journal in the same statement.
CREATE OR REPLACE FUNCTION ledger.project_event()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    _balance numeric;
    _frozen boolean;
    _closed boolean;
BEGIN
    IF NEW.aggregate_type = 'user' THEN
        UPDATE ledger.users SET version = NEW.version
         WHERE id = NEW.aggregate_id AND version = NEW.version - 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'L4092',
                MESSAGE = format('user %s is not at version %s', NEW.aggregate_id, NEW.version - 1);
        END IF;
        RETURN NULL;
    END IF;

    IF NEW.event_type = 'AccountOpened' THEN
        INSERT INTO ledger.balances (account_id, normal_side, balance, is_frozen, is_closed, version,
                                     last_event_id, updated_at)
        SELECT a.id, t.normal_side, 0, false, false, 1, NEW.id, NEW.created_at
          FROM ledger.accounts a
          JOIN ledger.account_types t ON t.code = a.account_type
         WHERE a.id = NEW.aggregate_id AND NEW.version = 1
        ON CONFLICT (account_id) DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'L4092',
                MESSAGE = format('account %s cannot be opened at version %s', NEW.aggregate_id, NEW.version);
        END IF;
        RETURN NULL;
    ELSIF NEW.event_type NOT IN ('AccountDebited', 'AccountCredited', 'AccountFrozen', 'AccountUnfrozen',
                                 'AccountClosed') THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = format('unknown account event type %s', NEW.event_type);
    END IF;

    UPDATE ledger.balances b
       SET balance = b.balance + ledger.event_delta(NEW.event_type, NEW.data, b.normal_side),
           is_frozen = CASE NEW.event_type WHEN 'AccountFrozen' THEN true
                                           WHEN 'AccountUnfrozen' THEN false ELSE b.is_frozen END,
           is_closed = b.is_closed OR NEW.event_type = 'AccountClosed',
           version = NEW.version,
           last_event_id = NEW.id,
           updated_at = NEW.created_at
     WHERE b.account_id = NEW.aggregate_id AND b.version = NEW.version - 1
    RETURNING b.balance, b.is_frozen, b.is_closed INTO _balance, _frozen, _closed;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'L4092',
            MESSAGE = format('account %s does not exist or is not at version %s', NEW.aggregate_id, NEW.version - 1);
    END IF;
    IF NEW.version % 100 = 0 THEN
        INSERT INTO ledger.snapshots (account_id, version, balance, is_frozen, is_closed, event_created_at)
        VALUES (NEW.aggregate_id, NEW.version, _balance, _frozen, _closed, NEW.created_at);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER events_project AFTER INSERT ON ledger.events
    FOR EACH ROW EXECUTE FUNCTION ledger.project_event();
