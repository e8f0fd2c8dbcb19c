-- The hash of one audit row over every column but the hash itself, in a fixed order and a
-- rendering that no session setting changes (timestamps as RFC 3339 UTC), so a verifier
-- in any session computes the same bytes. Runs inside api functions' fixed search_path.
CREATE OR REPLACE FUNCTION ledger.audit_row_hash(entry ledger.audit_log)
RETURNS bytea
LANGUAGE sql
STABLE
AS $$
    SELECT sha256(convert_to(jsonb_build_array(
        entry.id, entry.tx_id::text, ledger.rfc3339(entry.created_at), entry.actor, entry.api_key_id,
        entry.request_user_id, entry.correlation_id, entry.client_addr::text, entry.action,
        entry.resource_type, entry.resource_id, entry.before_state, entry.after_state)::text, 'UTF8'))
$$;
