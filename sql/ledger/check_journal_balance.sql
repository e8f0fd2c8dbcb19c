-- Every journal balances: the lines of one INSERT, grouped by journal, have equal debits and
-- credits. Since every INSERT is checked, every journal is balanced as a whole.
CREATE OR REPLACE FUNCTION ledger.check_journal_balance()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    _bad record;
BEGIN
    SELECT journal_id,
           COALESCE(sum(amount) FILTER (WHERE side = 'debit'), 0) AS debits,
           COALESCE(sum(amount) FILTER (WHERE side = 'credit'), 0) AS credits
      INTO _bad
      FROM new_entries
     GROUP BY journal_id
    HAVING COALESCE(sum(amount) FILTER (WHERE side = 'debit'), 0)
        <> COALESCE(sum(amount) FILTER (WHERE side = 'credit'), 0)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'L4005',
            MESSAGE = format('journal %s does not balance: debits %s, credits %s',
                             _bad.journal_id, _bad.debits, _bad.credits);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger.ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.check_journal_balance();
