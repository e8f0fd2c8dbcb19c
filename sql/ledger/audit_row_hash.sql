-- The hash a stored audit row must carry (ledger.audit_hash over its columns): what
-- api.verify_audit_chain compares with row_hash.
CREATE OR REPLACE FUNCTION ledger.audit_row_hash(entry ledger.audit_log)
RETURNS bytea
LANGUAGE sql
STABLE
AS $$
    SELECT ledger.audit_hash(entry.id, entry.tx_id, entry.created_at, entry.actor, entry.api_key_id,
                             entry.request_user_id, entry.correlation_id, entry.client_addr, entry.action,
                             entry.resource_type, entry.resource_id, entry.before_state, entry.after_state)
$$;
