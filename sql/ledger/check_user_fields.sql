-- The rules for a user's username, email and display name, with a message per rule. The
-- table's CHECK constraints say the same and stand behind these.
CREATE OR REPLACE FUNCTION ledger.check_user_fields(username text, email text, display_name text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
AS $$
BEGIN
    IF username IS NOT NULL AND username !~ '^[A-Za-z0-9_]{3,50}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001',
            MESSAGE = 'username must be 3 to 50 characters: letters, digits and underscores';
    END IF;
    IF email IS NOT NULL AND (length(email) > 254
                              OR email !~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+[.][A-Za-z]{2,}$') THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'email is not a valid email address';
    END IF;
    IF display_name IS NOT NULL AND length(display_name) > 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'display_name is longer than 100 characters';
    END IF;
END
$$;
