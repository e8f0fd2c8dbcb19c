-- The hash of one audit row over every column but the hash itself, in a fixed order and a
-- rendering that no session setting changes (timestamps as RFC 3339 UTC), so a verifier in any
-- session computes the same bytes. A plain SQL expression: the statement that inserts the row
-- computes it inline (no trigger), and ledger.audit_row_hash recomputes it for a stored row.
CREATE OR REPLACE FUNCTION ledger.audit_hash(
    id bigint,
    tx_id xid8,
    created_at timestamptz,
    actor text,
    api_key_id uuid,
    request_user_id uuid,
    correlation_id text,
    client_addr inet,
    action text,
    resource_type text,
    resource_id text,
    before_state jsonb,
    after_state jsonb
)
RETURNS bytea
LANGUAGE sql
STABLE
AS $$
    SELECT sha256(convert_to(jsonb_build_array(
        id, tx_id::text, ledger.rfc3339(created_at), actor, api_key_id, request_user_id, correlation_id,
        client_addr::text, action, resource_type, resource_id, before_state, after_state)::text, 'UTF8'))
$$;
