-- The fingerprint of a request made at a psql prompt: the operation and its arguments.
-- (The HTTP layer passes its own fingerprint of method, path and body instead.)
CREATE OR REPLACE FUNCTION ledger.fingerprint(operation text, arguments jsonb)
RETURNS text
LANGUAGE sql
STABLE
PARALLEL SAFE
AS $$
    SELECT encode(sha256(convert_to(operation || ' ' || arguments::text, 'UTF8')), 'hex')
$$;
