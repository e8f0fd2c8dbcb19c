-- A live user as the API shows it, with the wallet's balance and state: json, in the order of
-- the contract's User schema. An audit state takes it as jsonb (a cast: users are off the hot path).
CREATE OR REPLACE FUNCTION ledger.user_json(user_id uuid)
RETURNS json
LANGUAGE sql
STABLE
AS $$
    SELECT json_build_object(
               'user_id', u.id,
               'username', u.username,
               'email', u.email,
               'display_name', u.display_name,
               'balance', b.balance::numeric(21, 8)::text,
               'is_frozen', b.is_frozen,
               'version', u.version,
               'created_at', ledger.rfc3339(u.created_at),
               'updated_at', ledger.rfc3339(u.updated_at))
      FROM ledger.users u
      JOIN ledger.accounts a ON a.user_id = u.id AND a.account_type = 'user_wallet'
      JOIN ledger.balances b ON b.account_id = a.id
     WHERE u.id = user_json.user_id AND u.deleted_at IS NULL AND NOT u.is_system
$$;
