-- Timestamps leave the database as RFC 3339 in UTC, whatever the session's TimeZone.
CREATE OR REPLACE FUNCTION ledger.rfc3339(ts timestamptz)
RETURNS text
LANGUAGE sql
STABLE
PARALLEL SAFE
AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;
