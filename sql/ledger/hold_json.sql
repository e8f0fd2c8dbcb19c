-- A hold as the api answers it: json, in the order of the contract's Hold schema. A pending hold
-- past expires_at reads as expired: it can no longer settle, even before maintenance releases
-- what it reserves. Audit states take it as jsonb (a cast).
CREATE OR REPLACE FUNCTION ledger.hold_json(h ledger.holds)
RETURNS json
LANGUAGE sql
STABLE
AS $$
    SELECT json_build_object(
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
