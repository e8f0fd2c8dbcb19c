-- Run last by every migrate: drops the functions of schemas api and ledger that this migrate
-- did not (re)create, i.e. those whose file was renamed or removed or whose signature changed.
-- CREATE OR REPLACE rewrites a function's catalog row, so its xmin is this transaction's.
-- Without CASCADE: a stale function a trigger still uses makes the migrate fail loudly.
CREATE OR REPLACE FUNCTION ledger.drop_stale_functions()
RETURNS text[]
LANGUAGE plpgsql
AS $$
DECLARE
    _stale regprocedure;
    _dropped text[] := '{}';
BEGIN
    FOR _stale IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace IN ('api'::regnamespace, 'ledger'::regnamespace)
           AND p.xmin <> pg_catalog.pg_current_xact_id()::xid
    LOOP
        EXECUTE format('DROP FUNCTION %s', _stale);
        _dropped := _dropped || _stale::text;
    END LOOP;
    RETURN _dropped;
END
$$;
