-- Events, journal lines, audit rows and seals are append-only. The privileges are revoked
-- from the owner in the migration; these triggers refuse the statement even if someone
-- grants them back. Partitions get their TRUNCATE trigger from ledger.ensure_partitions.
CREATE OR REPLACE FUNCTION ledger.forbid_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'L4033',
        MESSAGE = format('%s.%s is append-only: %s is not allowed',
                         TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP),
        HINT = 'Record a correcting event instead of changing history.';
END
$$;

CREATE OR REPLACE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON ledger.events
    FOR EACH ROW EXECUTE FUNCTION ledger.forbid_change();
CREATE OR REPLACE TRIGGER events_no_truncate BEFORE TRUNCATE ON ledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();
CREATE OR REPLACE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger.ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger.forbid_change();
CREATE OR REPLACE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger.ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();
CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON ledger.audit_log
    FOR EACH ROW EXECUTE FUNCTION ledger.forbid_change();
CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON ledger.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();
CREATE OR REPLACE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON ledger.audit_seals
    FOR EACH ROW EXECUTE FUNCTION ledger.forbid_change();
CREATE OR REPLACE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON ledger.audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();
