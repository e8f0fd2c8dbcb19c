-- A hold as audit states record it: the fields of ledger.hold_json as jsonb, built directly
-- rather than cast from the json body, since ledger.post_hold's caller (api.create_hold) is
-- on the hot path and a cast parses text. The two must list the same fields and values
-- (tests/sql/18_holds.sql compares them).
CREATE OR REPLACE FUNCTION ledger.hold_state(h ledger.holds)
RETURNS jsonb
LANGUAGE sql
STABLE
AS $$
    SELECT jsonb_build_object(
        'hold_id', h.id,
        'status', CASE WHEN h.status = 'pending' AND h.expires_at <= now() THEN 'expired' ELSE h.status END,
        'from_user_id', h.from_user_id,
        'to_user_id', h.to_user_id,
        'amount', h.amount::numeric(21, 8)::text,
        'captured_amount', h.captured_amount::numeric(21, 8)::text,
        'memo', h.memo,
        'expires_at', ledger.rfc3339(h.expires_at),
        'transfer_id', h.transfer_id,
        'created_at', ledger.rfc3339(h.created_at),
        'settled_at', ledger.rfc3339(h.settled_at),
        'version', h.version)
$$;
