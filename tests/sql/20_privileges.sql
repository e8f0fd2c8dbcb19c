-- Privileges: who may touch what. The checks loop over the catalogs, so a table, partition,
-- sequence or api function added later is covered without editing this file.
BEGIN;
SELECT plan(69);
SELECT tap_share();

-- ---------------------------------------------------------------------------------------
-- atp_app (the HTTP layer's login role): nothing on the private schema, of any kind.
-- ---------------------------------------------------------------------------------------
SELECT cmp_ok((SELECT count(*)::int FROM pg_class
                WHERE relnamespace = 'ledger'::regnamespace AND relkind IN ('r', 'p')), '>=', 20,
              'sanity: the loops below see the ledger tables and their partitions');

SELECT is(ARRAY(SELECT format('%s %s', c.oid::regclass, p.priv)
                  FROM pg_class c
                 CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                         'REFERENCES', 'TRIGGER']) AS p(priv)
                 WHERE c.relnamespace = 'ledger'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                   AND has_table_privilege('atp_app', c.oid, p.priv)
                 ORDER BY 1),
          '{}'::text[],
          'atp_app holds no privilege (SELECT .. TRIGGER) on any ledger table or partition');

SELECT is(ARRAY(SELECT format('%s %s', c.oid::regclass, p.priv)
                  FROM pg_class c
                 CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) AS p(priv)
                 WHERE c.relnamespace = 'ledger'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                   AND has_any_column_privilege('atp_app', c.oid, p.priv)
                 ORDER BY 1),
          '{}'::text[],
          'atp_app holds no column-level privilege on any ledger table');

SELECT cmp_ok((SELECT count(*)::int FROM pg_class
                WHERE relnamespace = 'ledger'::regnamespace AND relkind = 'S'), '>=', 3,
              'sanity: the ledger sequences exist');
SELECT is(ARRAY(SELECT format('%s %s', c.oid::regclass, p.priv)
                  FROM pg_class c
                 CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p(priv)
                 WHERE c.relnamespace = 'ledger'::regnamespace AND c.relkind = 'S'
                   AND has_sequence_privilege('atp_app', c.oid, p.priv)
                 ORDER BY 1),
          '{}'::text[],
          'atp_app holds no privilege on any ledger sequence');

SELECT ok(NOT has_schema_privilege('atp_app', 'ledger', 'USAGE'), 'atp_app has no USAGE on schema ledger');
SELECT ok(NOT has_schema_privilege('atp_app', 'ledger', 'CREATE'), 'atp_app has no CREATE on schema ledger');
SELECT ok(NOT has_schema_privilege('atp_app', 'api', 'CREATE'), 'atp_app cannot create objects in schema api');
SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'ledger'::regnamespace
                   AND has_function_privilege('atp_app', p.oid, 'EXECUTE') ORDER BY 1),
          '{}'::text[],
          'atp_app cannot execute any ledger helper');
SELECT is(ARRAY(SELECT r.rolname::text FROM pg_roles r
                 WHERE r.rolname IN ('atp_owner', 'atp_dba', 'atp_auditor')
                   AND pg_has_role('atp_app', r.oid, 'MEMBER') ORDER BY 1),
          '{}'::text[],
          'atp_app is a member of none of atp_owner, atp_dba, atp_auditor');
SELECT ok((SELECT NOT (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolreplication)
             FROM pg_roles WHERE rolname = 'atp_app'),
          'atp_app has no superuser, createrole, createdb, bypassrls or replication attribute');

SELECT is(ARRAY(SELECT rolname::text FROM pg_roles
                 WHERE rolname IN ('atp_owner', 'atp_dba', 'atp_auditor') AND rolcanlogin ORDER BY 1),
          '{}'::text[], 'nobody logs in as atp_owner, atp_dba or atp_auditor (NOLOGIN)');
SELECT ok((SELECT NOT (rolsuper OR rolbypassrls OR rolcreaterole) FROM pg_roles WHERE rolname = 'atp_owner'),
          'atp_owner, whose rights the api functions run with, is no superuser');

-- The same, tried for real. SET SESSION AUTHORIZATION makes atp_app the session user, as
-- when the HTTP layer logs in, so SET ROLE is checked against atp_app's memberships.
SET LOCAL SESSION AUTHORIZATION atp_app;
SELECT throws_ok('SELECT count(*) FROM ledger.balances', '42501', NULL,
                 'atp_app cannot read ledger.balances');
SELECT throws_ok('SELECT count(*) FROM ledger.events_default', '42501', NULL,
                 'atp_app cannot read a partition (ledger.events_default)');
SELECT throws_ok('SELECT count(*) FROM ledger.api_keys', '42501', NULL,
                 'atp_app cannot read ledger.api_keys');
SELECT throws_ok('SELECT * FROM ledger.replay_accounts()', '42501', NULL,
                 'atp_app cannot call a ledger helper');
SELECT throws_ok('SET LOCAL ROLE atp_owner', '42501', NULL, 'atp_app cannot SET ROLE atp_owner');
SELECT throws_ok('SET LOCAL ROLE atp_dba', '42501', NULL, 'atp_app cannot SET ROLE atp_dba');
SELECT throws_ok('SET LOCAL ROLE atp_auditor', '42501', NULL, 'atp_app cannot SET ROLE atp_auditor');
SELECT throws_ok('SET LOCAL ROLE postgres', '42501', NULL, 'atp_app cannot SET ROLE to the superuser');
SELECT throws_ok($$SELECT set_config('role', 'atp_owner', true)$$, '42501', NULL,
                 'atp_app cannot become atp_owner through set_config(''role'')');
SELECT is(current_user::text, 'atp_app', 'after all attempts atp_app is still atp_app');
SELECT throws_ok('SELECT count(*) FROM ledger.balances', '42501', NULL,
                 'and still cannot read ledger.balances');
RESET SESSION AUTHORIZATION;

-- ---------------------------------------------------------------------------------------
-- Schema api: every function, present and future.
-- ---------------------------------------------------------------------------------------
SELECT cmp_ok((SELECT count(*)::int FROM pg_proc WHERE pronamespace = 'api'::regnamespace), '>=', 26,
              'sanity: the loops below see the api functions');
SELECT is((SELECT count(*)::int FROM pg_class WHERE relnamespace = 'api'::regnamespace), 0,
          'schema api holds functions only: no table, view or sequence');

SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'api'::regnamespace AND NOT p.prosecdef ORDER BY 1),
          '{}'::text[],
          'every api function is SECURITY DEFINER');

SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'api'::regnamespace
                   AND NOT EXISTS (
                       SELECT FROM unnest(p.proconfig) AS c(setting)
                        CROSS JOIN LATERAL regexp_split_to_array(substr(c.setting, 13), ',\s*') AS s(path)
                        WHERE c.setting LIKE 'search_path=%'
                          AND s.path[1] = 'pg_catalog'
                          AND s.path[cardinality(s.path)] = 'pg_temp'
                          AND NOT s.path && ARRAY['public', '$user', '"$user"'])
                 ORDER BY 1),
          '{}'::text[],
          'every api function fixes search_path (pg_catalog first, pg_temp last, no public or $user)');

SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'api'::regnamespace
                   AND has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1),
          '{}'::text[],
          'no api function is executable by PUBLIC');

SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'api'::regnamespace
                   AND COALESCE(btrim(obj_description(p.oid, 'pg_proc')), '') = '' ORDER BY 1),
          '{}'::text[],
          'every api function has a COMMENT (what \df+ shows a DBA)');

SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace IN ('api'::regnamespace, 'ledger'::regnamespace)
                   AND p.proowner <> 'atp_owner'::regrole ORDER BY 1),
          '{}'::text[],
          'every api and ledger function is owned by atp_owner');

SELECT is(ARRAY(SELECT DISTINCT format('%s to %s', p.oid::regprocedure,
                                       CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END)
                  FROM pg_proc p
                 CROSS JOIN LATERAL aclexplode(COALESCE(p.proacl, acldefault('f', p.proowner))) AS a
                 WHERE p.pronamespace = 'api'::regnamespace
                   AND (a.grantee = 0 OR a.grantee::regrole::text
                        NOT IN ('atp_owner', 'atp_app', 'atp_dba', 'atp_auditor'))
                 ORDER BY 1),
          '{}'::text[],
          'api functions are granted to the four atp_ roles only');

SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p
                 WHERE p.pronamespace = 'api'::regnamespace
                   AND NOT has_function_privilege('atp_app', p.oid, 'EXECUTE') ORDER BY 1),
          ARRAY['rebuild_projections'],
          'atp_app can execute every api function except rebuild_projections (DBA only)');

SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p
                 WHERE p.pronamespace = 'api'::regnamespace
                   AND NOT has_function_privilege('atp_dba', p.oid, 'EXECUTE') ORDER BY 1),
          '{}'::text[],
          'atp_dba can execute every api function');

-- ---------------------------------------------------------------------------------------
-- atp_auditor: reads everything, writes nothing, runs only read and verify functions.
-- ---------------------------------------------------------------------------------------
SELECT is(ARRAY(SELECT c.oid::regclass::text FROM pg_class c
                 WHERE c.relnamespace = 'ledger'::regnamespace AND c.relkind IN ('r', 'p')
                   AND c.oid <> 'ledger.api_keys'::regclass
                   AND NOT has_table_privilege('atp_auditor', c.oid, 'SELECT') ORDER BY 1),
          '{}'::text[],
          'atp_auditor can SELECT every ledger table and partition but api_keys');
SELECT is(ARRAY(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = 'ledger.api_keys'::regclass AND a.attnum > 0 AND NOT a.attisdropped
                   AND NOT has_column_privilege('atp_auditor', a.attrelid, a.attnum, 'SELECT') ORDER BY 1),
          ARRAY['key_hash'],
          'of api_keys, atp_auditor reads every column but key_hash, a credential of the application role');
SELECT is(ARRAY(SELECT format('%s %s', c.oid::regclass, p.priv)
                  FROM pg_class c
                 CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(priv)
                 WHERE c.relnamespace = 'ledger'::regnamespace AND c.relkind IN ('r', 'p')
                   AND has_table_privilege('atp_auditor', c.oid, p.priv)
                 ORDER BY 1),
          '{}'::text[],
          'atp_auditor holds no write privilege on any ledger table');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p
                 WHERE p.pronamespace = 'api'::regnamespace
                   AND has_function_privilege('atp_auditor', p.oid, 'EXECUTE') ORDER BY 1),
          ARRAY['describe_api_key', 'error_codes', 'get_balance', 'get_history', 'get_hold', 'get_transfer',
                'get_user', 'verify_audit_chain', 'verify_projections'],
          'atp_auditor can execute exactly the read and verify functions');

SET LOCAL ROLE atp_auditor;
SELECT lives_ok('SELECT count(*) FROM ledger.events', 'atp_auditor reads ledger.events');
SELECT lives_ok('SELECT count(*) FROM ledger.audit_log', 'atp_auditor reads ledger.audit_log');
SELECT is(api.verify_projections() ->> 'ok', 'true', 'atp_auditor runs api.verify_projections without a key');
SELECT is(api.verify_audit_chain() ->> 'ok', 'true', 'atp_auditor runs api.verify_audit_chain without a key');
SELECT throws_ok($$SELECT * FROM api.mint('00000000-0000-0000-0000-0000000000aa', 1)$$, '42501', NULL,
                 'atp_auditor cannot call api.mint');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'audit_u', 'audit_u@example.com')$$,
                 '42501', NULL, 'atp_auditor cannot call api.create_user');
SELECT throws_ok($$SELECT api.create_api_key('k', ARRAY['admin'], 10, NULL)$$, '42501', NULL,
                 'atp_auditor cannot call api.create_api_key');
SELECT throws_ok('SELECT api.seal_audit()', '42501', NULL, 'atp_auditor cannot call api.seal_audit');
SELECT throws_ok($$INSERT INTO ledger.audit_log (actor, action, resource_type, row_hash)
                   VALUES ('x', 'x', 'x', '\x')$$, '42501', NULL,
                 'atp_auditor cannot insert into ledger.audit_log');
RESET ROLE;

-- ---------------------------------------------------------------------------------------
-- PUBLIC: nothing on api or ledger beyond what the migrations grant (which is nothing).
-- ---------------------------------------------------------------------------------------
SELECT is(ARRAY(SELECT format('%s %s', n.nspname, a.privilege_type)
                  FROM pg_namespace n
                 CROSS JOIN LATERAL aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner))) AS a
                 WHERE n.nspname IN ('api', 'ledger') AND a.grantee = 0 ORDER BY 1),
          '{}'::text[],
          'PUBLIC holds no privilege on schemas api and ledger');
SELECT is(ARRAY(SELECT a::text FROM pg_namespace n, unnest(n.nspacl) AS a
                 WHERE n.nspname = 'api' ORDER BY 1),
          ARRAY['atp_app=U/atp_owner', 'atp_auditor=U/atp_owner', 'atp_dba=U/atp_owner', 'atp_owner=UC/atp_owner'],
          'schema api: USAGE for atp_app, atp_dba and atp_auditor, nothing else');
SELECT is(ARRAY(SELECT a::text FROM pg_namespace n, unnest(n.nspacl) AS a
                 WHERE n.nspname = 'ledger' ORDER BY 1),
          ARRAY['atp_auditor=U/atp_owner', 'atp_owner=UC/atp_owner'],
          'schema ledger: USAGE for atp_auditor, nothing else');
SELECT is(ARRAY(SELECT format('%s %s', c.oid::regclass, a.privilege_type)
                  FROM pg_class c
                 CROSS JOIN LATERAL aclexplode(COALESCE(c.relacl, acldefault(
                     CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) AS a
                 WHERE c.relnamespace IN ('api'::regnamespace, 'ledger'::regnamespace)
                   AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND a.grantee = 0
                 ORDER BY 1),
          '{}'::text[],
          'PUBLIC holds no privilege on any relation or sequence of api or ledger');
SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
                 CROSS JOIN LATERAL aclexplode(COALESCE(p.proacl, acldefault('f', p.proowner))) AS a
                 WHERE p.pronamespace IN ('api'::regnamespace, 'ledger'::regnamespace) AND a.grantee = 0
                 ORDER BY 1),
          '{}'::text[],
          'PUBLIC holds EXECUTE on no api or ledger function');

-- ---------------------------------------------------------------------------------------
-- atp_app without an API key: refused (L4011) by every function that needs one.
-- ---------------------------------------------------------------------------------------
-- A user to aim at, so that only the missing key can be the reason for a refusal.
SELECT set_config('tap.alice', '0190aaaa-0000-7000-8000-00000000a11c', true) IS NOT NULL AS _;
SELECT status = 201 AS _ FROM api.create_user(current_setting('tap.alice')::uuid, 'priv_alice', 'priv_alice@example.com');

SET LOCAL ROLE atp_app;
SELECT throws_ok(format($$SELECT * FROM api.create_user(gen_random_uuid(), 'nokey', 'nokey@example.com',
                          idempotency_key => gen_random_uuid())$$),
                 'L4011', NULL, 'keyless atp_app: api.create_user refused');
SELECT throws_ok(format($$SELECT * FROM api.update_user(%L, display_name => 'x', idempotency_key => gen_random_uuid())$$,
                        current_setting('tap.alice')),
                 'L4011', NULL, 'keyless atp_app: api.update_user refused');
SELECT throws_ok(format($$SELECT * FROM api.delete_user(%L, idempotency_key => gen_random_uuid())$$,
                        current_setting('tap.alice')),
                 'L4011', NULL, 'keyless atp_app: api.delete_user refused');
SELECT throws_ok(format($$SELECT * FROM api.transfer(%L, '00000000-0000-0000-0000-000000000002', 1,
                          idempotency_key => gen_random_uuid(), request_user_id => %L)$$,
                        current_setting('tap.alice'), current_setting('tap.alice')),
                 'L4011', NULL, 'keyless atp_app: api.transfer refused');
SELECT throws_ok(format($$SELECT * FROM api.mint(%L, 1, idempotency_key => gen_random_uuid())$$,
                        current_setting('tap.alice')),
                 'L4011', NULL, 'keyless atp_app: api.mint refused');
SELECT throws_ok(format($$SELECT * FROM api.burn(%L, 1, idempotency_key => gen_random_uuid())$$,
                        current_setting('tap.alice')),
                 'L4011', NULL, 'keyless atp_app: api.burn refused');
SELECT throws_ok(format($$SELECT * FROM api.freeze_wallet(%L, idempotency_key => gen_random_uuid())$$,
                        current_setting('tap.alice')),
                 'L4011', NULL, 'keyless atp_app: api.freeze_wallet refused');
SELECT throws_ok(format($$SELECT * FROM api.unfreeze_wallet(%L, idempotency_key => gen_random_uuid())$$,
                        current_setting('tap.alice')),
                 'L4011', NULL, 'keyless atp_app: api.unfreeze_wallet refused');
SELECT throws_ok($$SELECT api.create_api_key('sneaky', ARRAY['admin'], 10, NULL)$$,
                 'L4011', NULL, 'keyless atp_app: api.create_api_key refused');
SELECT throws_ok($$SELECT api.revoke_api_key(gen_random_uuid())$$,
                 'L4011', NULL, 'keyless atp_app: api.revoke_api_key refused');
SELECT throws_ok(format($$SELECT * FROM api.mint(%L, 1, idempotency_key => gen_random_uuid(),
                          api_key_hash => encode(sha256('not a key'::bytea), 'hex'))$$,
                        current_setting('tap.alice')),
                 'L4011', NULL, 'atp_app with an unknown key hash: api.mint refused');
SELECT throws_ok($$SELECT api.authenticate(NULL, 'read')$$, 'L4011', NULL,
                 'keyless atp_app: api.authenticate refused');
RESET ROLE;

-- Every api function, present and future, called keyless by atp_app with NULL arguments:
-- refused with L4011 unless it is one of the few that are meant to run without a key
-- (maintenance jobs the app's scheduler runs, key description and the error table) or the
-- DBA-only rebuild (no EXECUTE at all: 42501).
CREATE FUNCTION pg_temp.keyless_outcomes() RETURNS TABLE (fn text, outcome text, expected text)
LANGUAGE plpgsql AS $fn$
DECLARE
    _f record;
BEGIN
    FOR _f IN
        SELECT p.proname,
               (SELECT string_agg(format('NULL::%s', format_type(t.typ, NULL)), ', ' ORDER BY t.n)
                  FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS t(typ, n)) AS args
          FROM pg_proc p
         WHERE p.pronamespace = 'api'::regnamespace
           AND p.proname NOT IN ('authenticate', 'describe_api_key', 'error_codes', 'cleanup_rate_limits',
                                 'expire_idempotency_keys', 'expire_holds', 'ensure_partitions', 'seal_audit', 'run_maintenance')
         ORDER BY p.proname
    LOOP
        fn := _f.proname;
        expected := (CASE _f.proname WHEN 'rebuild_projections' THEN '42501' ELSE 'L4011' END);
        BEGIN
            EXECUTE format('SELECT * FROM api.%I(%s)', _f.proname, COALESCE(_f.args, ''));
            outcome := 'no error';
        EXCEPTION WHEN OTHERS THEN
            outcome := SQLSTATE;
        END;
        RETURN NEXT;
    END LOOP;
END
$fn$;
SET LOCAL ROLE atp_app;
SELECT cmp_ok((SELECT count(*)::int FROM pg_temp.keyless_outcomes()), '>=', 18,
              'sanity: the keyless loop calls the keyed api functions');
SELECT is(ARRAY(SELECT format('%s: %s', fn, outcome) FROM pg_temp.keyless_outcomes()
                 WHERE outcome IS DISTINCT FROM expected),
          '{}'::text[],
          'every keyed api function refuses a keyless atp_app with L4011 (loop over pg_proc)');
-- Maintenance jobs take no caller input; the app's scheduler runs them without a key.
SELECT lives_ok('SELECT api.run_maintenance()', 'keyless atp_app may run the maintenance jobs');
RESET ROLE;

-- With a key, atp_app executes the api functions (and writes through them only).
SELECT set_config('tap.admin_hash',
                  encode(sha256(convert_to(api.create_api_key('priv admin', ARRAY['admin'], 100000, NULL) ->> 'key', 'UTF8')), 'hex'),
                  true) IS NOT NULL AS _;
SET LOCAL ROLE atp_app;
SELECT is((SELECT status FROM api.mint(current_setting('tap.alice')::uuid, 5, idempotency_key => gen_random_uuid(),
                                       api_key_hash => current_setting('tap.admin_hash'))),
          201, 'atp_app with an admin key mints');
SELECT is(api.get_balance(current_setting('tap.alice')::uuid, api_key_hash => current_setting('tap.admin_hash')) ->> 'balance',
          '5.00000000', 'atp_app with a key reads the balance through the api');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
