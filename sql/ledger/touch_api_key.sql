-- Moves a key's last_used_at, at most once a minute (ledger.caller says when), and never waits
-- for a lock to do so.
CREATE OR REPLACE FUNCTION ledger.touch_api_key(api_key_id uuid)
RETURNS void
LANGUAGE sql
AS $$
    UPDATE ledger.api_keys SET last_used_at = now()
     WHERE id = (SELECT id FROM ledger.api_keys WHERE id = touch_api_key.api_key_id FOR UPDATE SKIP LOCKED)
$$;
