-- The wallet account of a live (not deleted, not system) user.
CREATE OR REPLACE FUNCTION ledger.wallet_of(user_id uuid, field text DEFAULT 'user_id')
RETURNS uuid
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
DECLARE
    _account uuid;
BEGIN
    IF wallet_of.user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = format('%s is required', wallet_of.field);
    END IF;
    SELECT a.id INTO _account
      FROM ledger.users u
      JOIN ledger.accounts a ON a.user_id = u.id AND a.account_type = 'user_wallet'
     WHERE u.id = wallet_of.user_id AND u.deleted_at IS NULL AND NOT u.is_system;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(wallet_of.user_id);
    END IF;
    RETURN _account;
END
$$;
