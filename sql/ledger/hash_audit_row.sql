-- Each audit row is hashed as it is inserted, inside its own transaction: writers share no
-- lock. Chaining happens later, in ledger.seal_audit, behind the commit horizon.
CREATE OR REPLACE FUNCTION ledger.hash_audit_row()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.row_hash := ledger.audit_row_hash(NEW);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER audit_log_hash BEFORE INSERT ON ledger.audit_log
    FOR EACH ROW EXECUTE FUNCTION ledger.hash_audit_row();
