-- Why a user's id finds no live user, in words: a deleted user's records stay (history, the
-- counterparties' histories, transfers), but its own reads answer 404, which should say so.
-- Called only on the way to that error.
CREATE OR REPLACE FUNCTION ledger.user_missing(user_id uuid)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT format('user %s %s', user_missing.user_id,
                  CASE WHEN EXISTS (SELECT FROM ledger.users u
                                     WHERE u.id = user_missing.user_id AND u.deleted_at IS NOT NULL)
                       THEN 'was deleted' ELSE 'not found' END)
$$;
