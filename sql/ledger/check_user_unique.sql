-- Username and email are unique among live users, case-insensitively. Checked first for a
-- clear message; the partial unique indexes decide races (the callers turn their unique_violation
-- into user_exists).
CREATE OR REPLACE FUNCTION ledger.check_user_unique(user_id uuid, username text, email text)
RETURNS void
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
BEGIN
    IF check_user_unique.username IS NOT NULL AND EXISTS (
        SELECT FROM ledger.users
         WHERE lower(username) = lower(check_user_unique.username) AND deleted_at IS NULL
           AND id <> check_user_unique.user_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'L4093',
            MESSAGE = format('username %s is already taken', check_user_unique.username);
    END IF;
    IF check_user_unique.email IS NOT NULL AND EXISTS (
        SELECT FROM ledger.users
         WHERE lower(email) = lower(check_user_unique.email) AND deleted_at IS NULL
           AND id <> check_user_unique.user_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'L4093',
            MESSAGE = format('email %s is already taken', check_user_unique.email);
    END IF;
END
$$;
