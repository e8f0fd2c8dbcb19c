-- The hash of one audit row over every column but the hash itself, as canonical JSON
-- rendered in UTC, so that a verifier in any session computes the same bytes.
CREATE OR REPLACE FUNCTION ledger.audit_row_hash(entry ledger.audit_log)
RETURNS bytea
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO'
AS $$
    SELECT sha256(convert_to((to_jsonb(entry) - 'row_hash')::text, 'UTF8'))
$$;
