-- API keys and access: create_api_key, authenticate, describe_api_key, revoke_api_key; unknown,
-- revoked and expired keys; permissions of every api function; the rate limit; the roles atp_app and
-- atp_auditor; and the security properties every api function must have.
BEGIN;
SELECT plan(258);

CREATE TEMP TABLE ck (name text PRIMARY KEY, j jsonb);
CREATE TEMP TABLE k (name text PRIMARY KEY, id uuid, key text, hash text);
CREATE FUNCTION pg_temp.add_key(n text, perms text[], rate integer DEFAULT 100000,
                                expires timestamptz DEFAULT NULL) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ck SELECT n, api.create_api_key(n, perms, rate, expires);
    INSERT INTO k SELECT n, (j ->> 'id')::uuid, j ->> 'key', encode(sha256(convert_to(j ->> 'key', 'UTF8')), 'hex')
      FROM ck WHERE name = n;
$$;
-- Puts n requests into a key's rate-limit bucket for the minute minutes_ago minutes back
-- (the bucket of an even minute is bucket_even; a bucket holds minute * 10^9 + requests).
CREATE FUNCTION pg_temp.fill_bucket(n text, minutes_ago integer, requests bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT setval(CASE WHEN (floor(extract(epoch FROM now()) / 60)::bigint - minutes_ago) % 2 = 0
                       THEN bucket_even ELSE bucket_odd END,
                  (floor(extract(epoch FROM now()) / 60)::bigint - minutes_ago) * 1000000000 + requests)
      FROM ledger.api_keys WHERE id = (SELECT id FROM k WHERE name = n);
$$;
-- The SQLSTATE, message and DETAIL of the error a statement raises (NULL if it raises none).
CREATE FUNCTION pg_temp.error_of(statement text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    _state text;
    _message text;
    _detail text;
BEGIN
    EXECUTE statement;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _message = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
    RETURN jsonb_build_object('sqlstate', _state, 'message', _message, 'detail', _detail);
END
$$;
-- Every row of every table of the ledger schema, as text, that contains the string.
CREATE FUNCTION pg_temp.rows_containing(needle text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    _table regclass;
    _n bigint;
    _total bigint := 0;
BEGIN
    FOR _table IN SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'ledger'::regnamespace AND c.relkind IN ('r', 'p')
                     AND NOT c.relispartition LOOP
        EXECUTE format('SELECT count(*) FROM %s t WHERE strpos(t::text, $1) > 0', _table) INTO _n USING needle;
        _total := _total + _n;
    END LOOP;
    RETURN _total;
END
$$;

SELECT pg_temp.add_key('read', ARRAY['read']) \g /dev/null
SELECT pg_temp.add_key('write', ARRAY['write']) \g /dev/null
SELECT pg_temp.add_key('admin', ARRAY['admin']) \g /dev/null
SELECT tap_share();

SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com') \g /dev/null

-- ---------------------------------------------------------------- create_api_key
INSERT INTO ck SELECT 'nextjs', api.create_api_key('nextjs', ARRAY['write', 'read', 'write'], 600, NULL,
                                                   correlation_id => 'corr-key');
SELECT matches(j ->> 'key', '^sk_live_[0-9a-f]{64}$', 'the key is sk_live_ and 64 random hex digits')
  FROM ck WHERE name = 'nextjs';
SELECT is(j - 'id' - 'created_at' - 'key',
          jsonb_build_object('name', 'nextjs', 'key_prefix', left(j ->> 'key', 12), 'permissions', '["read", "write"]'::jsonb,
                             'rate_limit_per_minute', 600, 'expires_at', NULL),
          'create_api_key returns name, prefix, the distinct permissions, rate limit and expiry')
  FROM ck WHERE name = 'nextjs';
SELECT matches(j ->> 'created_at', '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$', 'created_at is RFC 3339 UTC')
  FROM ck WHERE name = 'nextjs';
SELECT results_eq(
    $$SELECT k.key_hash, k.key_prefix, k.permissions, k.is_active, k.created_by FROM ledger.api_keys k
       WHERE k.id = (SELECT (j ->> 'id')::uuid FROM ck WHERE name = 'nextjs')$$,
    $$SELECT encode(sha256(convert_to(j ->> 'key', 'UTF8')), 'hex'), left(j ->> 'key', 12), ARRAY['read', 'write'],
             true, 'postgres'::text FROM ck WHERE name = 'nextjs'$$,
    'the stored key is its SHA-256, with the prefix for recognition and the creator');
SELECT is(pg_temp.rows_containing(substr(j ->> 'key', 13)), 0::bigint,
          'the secret part of the key is in no table of the ledger, audit log included')
  FROM ck WHERE name = 'nextjs';
SELECT results_eq(
    $$SELECT actor, api_key_id, correlation_id, before_state, after_state FROM ledger.audit_log
       WHERE action = 'api_key.create' AND resource_id = (SELECT j ->> 'id' FROM ck WHERE name = 'nextjs')$$,
    $$SELECT 'postgres'::text, NULL::uuid, 'corr-key'::text, NULL::jsonb, j - 'key' FROM ck WHERE name = 'nextjs'$$,
    'creating a key is audited, without the key');
SELECT isnt((SELECT j ->> 'key' FROM ck WHERE name = 'read'), (SELECT j ->> 'key' FROM ck WHERE name = 'write'),
            'every key is new');
SELECT pg_temp.add_key('dated', ARRAY['read'], 10, '2999-01-01 00:00:00+00') \g /dev/null
SELECT is((j ->> 'expires_at')::timestamptz, '2999-01-01 00:00:00+00'::timestamptz, 'an expiry is kept and shown')
  FROM ck WHERE name = 'dated';
INSERT INTO ck SELECT 'by admin', api.create_api_key('by admin', ARRAY['read'], 10, NULL,
                                                     api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
SELECT is((SELECT created_by FROM ledger.api_keys WHERE id = (SELECT (j ->> 'id')::uuid FROM ck WHERE name = 'by admin')),
          (SELECT id::text FROM k WHERE name = 'admin'), 'a key created with an admin key names that key as creator');

SELECT throws_ok(format('SELECT api.create_api_key(%s)', args), 'L4001', NULL, 'create_api_key refuses ' || why)
  FROM (VALUES ($$NULL, ARRAY['read'], 10, NULL$$, 'no name'),
               ($$'   ', ARRAY['read'], 10, NULL$$, 'a blank name'),
               ($$repeat('n', 101), ARRAY['read'], 10, NULL$$, 'a name over 100 characters'),
               ($$'x', NULL, 10, NULL$$, 'no permissions'),
               ($$'x', '{}'::text[], 10, NULL$$, 'an empty permission list'),
               ($$'x', ARRAY['root'], 10, NULL$$, 'an unknown permission'),
               ($$'x', ARRAY['read', NULL], 10, NULL$$, 'a NULL permission'),
               ($$'x', ARRAY['read'], NULL, NULL$$, 'no rate limit'),
               ($$'x', ARRAY['read'], 0, NULL$$, 'a rate limit of 0'),
               ($$'x', ARRAY['read'], 10, now() - interval '1 second'$$, 'an expiry in the past'),
               ($$'x', ARRAY['read'], 10, now()$$, 'an expiry of now')) AS t(args, why);
SELECT throws_ok(format('SELECT api.create_api_key(%L, ARRAY[%L], 10, NULL, api_key_hash => %L)', 'x', 'read',
                        (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'a write key cannot create keys');

-- ---------------------------------------------------------------- authenticate and describe_api_key
SELECT is(api.authenticate((SELECT hash FROM k WHERE name = 'read')),
          jsonb_build_object('api_key_id', (SELECT id FROM k WHERE name = 'read'), 'name', 'read',
                             'key_prefix', (SELECT left(key, 12) FROM k WHERE name = 'read'),
                             'permissions', '["read"]'::jsonb, 'rate_limit_per_minute', 100000, 'expires_at', NULL),
          'authenticate describes a valid key');
SELECT is((SELECT last_used_at FROM ledger.api_keys WHERE id = (SELECT id FROM k WHERE name = 'read')), now(),
          'a used key records when it was last used');
SELECT is(api.authenticate(upper((SELECT hash FROM k WHERE name = 'read'))) ->> 'name', 'read',
          'the hash may be given in upper case');
SELECT lives_ok(format('SELECT api.authenticate(%L, %L)', (SELECT hash FROM k WHERE name = 'admin'), p),
                'admin implies ' || p)
  FROM unnest(ARRAY['read', 'write', 'admin']) AS p;
SELECT throws_ok(format('SELECT api.authenticate(%L, %L)', (SELECT hash FROM k WHERE name = 'read'), 'write'),
                 'L4031', NULL, 'a read key has no write permission');
SELECT throws_ok(format('SELECT api.authenticate(%L, %L)', (SELECT hash FROM k WHERE name = 'write'), 'read'),
                 'L4031', NULL, 'write does not imply read');
SELECT throws_ok(format('SELECT api.authenticate(%L, %L)', (SELECT hash FROM k WHERE name = 'write'), 'admin'),
                 'L4031', NULL, 'a write key is not an admin key');
SELECT throws_ok(format('SELECT api.authenticate(%L, %s)', (SELECT hash FROM k WHERE name = 'admin'), p),
                 'L4001', NULL, 'authenticate refuses permission ' || p)
  FROM unnest(ARRAY['''bogus''', '''maintenance''', 'NULL']) AS p;
SELECT throws_ok($$SELECT api.authenticate(NULL)$$, 'L4011', NULL, 'authenticate without a key is invalid_api_key');
SELECT throws_ok(format('SELECT api.authenticate(%L)', encode(sha256('no such key'::bytea), 'hex')),
                 'L4011', NULL, 'an unknown key is invalid_api_key');
SELECT throws_ok($$SELECT api.authenticate('not even hex')$$, 'L4011', NULL, 'garbage is invalid_api_key');

SELECT is(api.describe_api_key((SELECT hash FROM k WHERE name = 'dated')),
          jsonb_build_object('api_key_id', (SELECT id FROM k WHERE name = 'dated'), 'name', 'dated',
                             'key_prefix', (SELECT left(key, 12) FROM k WHERE name = 'dated'),
                             'permissions', '["read"]'::jsonb, 'is_active', true,
                             'expires_at', ledger.rfc3339('2999-01-01 00:00:00+00')),
          'describe_api_key names a key by its hash');
SELECT is(api.describe_api_key(encode(sha256('no such key'::bytea), 'hex')), NULL, 'describe_api_key of an unknown hash is NULL');
SELECT is((SELECT pg_sequence_last_value(bucket_even) IS NULL AND pg_sequence_last_value(bucket_odd) IS NULL
             FROM ledger.api_keys WHERE id = (SELECT id FROM k WHERE name = 'dated')),
          true, 'describe_api_key does not count as a request');

-- ---------------------------------------------------------------- revoke_api_key
SELECT pg_temp.add_key('victim', ARRAY['read', 'write']) \g /dev/null
SELECT lives_ok(format('SELECT api.get_user(%L, %L)', 'a11ce000-0000-4000-8000-000000000001',
                       (SELECT hash FROM k WHERE name = 'victim')), 'the key works before it is revoked');
CREATE TEMP TABLE revoked AS
SELECT api.revoke_api_key((SELECT id FROM k WHERE name = 'victim'), api_key_hash => (SELECT hash FROM k WHERE name = 'admin'),
                          correlation_id => 'corr-revoke') AS j;
SELECT is(j - 'revoked_at', jsonb_build_object('id', (SELECT id FROM k WHERE name = 'victim'), 'name', 'victim',
                                               'is_active', false),
          'revoke_api_key returns the key as inactive') FROM revoked;
SELECT is((j ->> 'revoked_at')::timestamptz, (SELECT revoked_at FROM ledger.api_keys WHERE id = (SELECT id FROM k WHERE name = 'victim')),
          'with the stored revocation time') FROM revoked;
SELECT results_eq(
    $$SELECT actor, api_key_id, resource_id, before_state, after_state FROM ledger.audit_log WHERE action = 'api_key.revoke'$$,
    $$SELECT 'postgres'::text, (SELECT id FROM k WHERE name = 'admin'), (SELECT id::text FROM k WHERE name = 'victim'),
             '{"is_active": true}'::jsonb, jsonb_build_object('is_active', false, 'revoked_at', j ->> 'revoked_at')
        FROM revoked$$,
    'revoking is audited');
SELECT throws_ok(format('SELECT api.get_user(%L, %L)', 'a11ce000-0000-4000-8000-000000000001',
                        (SELECT hash FROM k WHERE name = 'victim')),
                 'L4011', NULL, 'a revoked key is invalid_api_key');
SELECT throws_ok(format('SELECT api.authenticate(%L)', (SELECT hash FROM k WHERE name = 'victim')),
                 'L4011', NULL, 'a revoked key does not authenticate');
SELECT is(api.describe_api_key((SELECT hash FROM k WHERE name = 'victim')) -> 'is_active', 'false'::jsonb,
          'describe_api_key shows it inactive');
SELECT is(api.revoke_api_key((SELECT id FROM k WHERE name = 'victim')), (SELECT j FROM revoked),
          'revoking a revoked key changes nothing');
SELECT is((SELECT count(*)::int FROM ledger.audit_log WHERE action = 'api_key.revoke'), 1, 'and records nothing');
SELECT throws_ok($$SELECT api.revoke_api_key('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4042', NULL, 'revoking an unknown key is not_found');
SELECT throws_ok($$SELECT api.revoke_api_key(NULL)$$, 'L4001', 'api_key_id is required', 'revoking no key is invalid_request');
SELECT throws_ok(format('SELECT api.revoke_api_key(%L, %L)', (SELECT id FROM k WHERE name = 'read'),
                        (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'a write key cannot revoke keys');

-- ---------------------------------------------------------------- expired keys
SELECT pg_temp.add_key('expired', ARRAY['read', 'write'], 100, now() + interval '1 day') \g /dev/null
UPDATE ledger.api_keys SET expires_at = now() WHERE id = (SELECT id FROM k WHERE name = 'expired');
SELECT throws_ok(format('SELECT api.get_user(%L, %L)', 'a11ce000-0000-4000-8000-000000000001',
                        (SELECT hash FROM k WHERE name = 'expired')),
                 'L4011', NULL, 'a key is invalid from its expiry on');
SELECT throws_ok(format('SELECT api.authenticate(%L)', (SELECT hash FROM k WHERE name = 'expired')),
                 'L4011', NULL, 'an expired key does not authenticate');

-- ---------------------------------------------------------------- every api function checks the key
-- call: %1$L is the key hash, %2$L the correlation id; lacking: a key without the permission the call
-- needs (read, write, admin; the maintenance jobs need admin).
CREATE TEMP TABLE calls (fn text PRIMARY KEY, lacking text, call text);
INSERT INTO calls VALUES
    ('get_user', 'write', $$SELECT api.get_user('a11ce000-0000-4000-8000-000000000001', %1$L, correlation_id => %2$L)$$),
    ('get_balance', 'write', $$SELECT api.get_balance('a11ce000-0000-4000-8000-000000000001', api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('get_history', 'write', $$SELECT api.get_history('a11ce000-0000-4000-8000-000000000001', api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('get_transfer', 'write', $$SELECT api.get_transfer('deadbeef-0000-4000-8000-000000000000', %1$L, correlation_id => %2$L)$$),
    ('verify_projections', 'write', $$SELECT api.verify_projections(%1$L, correlation_id => %2$L)$$),
    ('verify_audit_chain', 'write', $$SELECT api.verify_audit_chain(%1$L, correlation_id => %2$L)$$),
    ('authenticate', 'write', $$SELECT api.authenticate(%1$L, 'read', correlation_id => %2$L)$$),
    ('create_user', 'read', $$SELECT * FROM api.create_user(gen_random_uuid(), 'zed', 'zed@example.com', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('update_user', 'read', $$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', display_name => 'A', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('delete_user', 'read', $$SELECT * FROM api.delete_user('a11ce000-0000-4000-8000-000000000001', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('transfer', 'read', $$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'deadbeef-0000-4000-8000-000000000000', 1, idempotency_key => gen_random_uuid(), api_key_hash => %1$L, request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => %2$L)$$),
    ('refund_transfer', 'read', $$SELECT * FROM api.refund_transfer('deadbeef-0000-4000-8000-000000000000', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('transfer_batch', 'read', $$SELECT * FROM api.transfer_batch('a11ce000-0000-4000-8000-000000000001', '[]', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => %2$L)$$),
    ('mint_batch', 'write', $$SELECT * FROM api.mint_batch('[]', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('mint', 'write', $$SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 1, idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('burn', 'write', $$SELECT * FROM api.burn('a11ce000-0000-4000-8000-000000000001', 1, idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('freeze_wallet', 'write', $$SELECT * FROM api.freeze_wallet('a11ce000-0000-4000-8000-000000000001', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('unfreeze_wallet', 'write', $$SELECT * FROM api.unfreeze_wallet('a11ce000-0000-4000-8000-000000000001', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('list_events', 'write', $$SELECT api.list_events(api_key_hash => %1$L, correlation_id => %2$L)$$),
    ('create_api_key', 'write', $$SELECT api.create_api_key('k', ARRAY['read'], 1, NULL, %1$L, correlation_id => %2$L)$$),
    ('revoke_api_key', 'write', $$SELECT api.revoke_api_key('deadbeef-0000-4000-8000-000000000000', %1$L, correlation_id => %2$L)$$),
    ('rebuild_projections', 'write', $$SELECT api.rebuild_projections(%1$L, correlation_id => %2$L)$$),
    ('cleanup_rate_limits', 'write', $$SELECT api.cleanup_rate_limits(%1$L, correlation_id => %2$L)$$),
    ('expire_idempotency_keys', 'write', $$SELECT api.expire_idempotency_keys(%1$L, correlation_id => %2$L)$$),
    ('ensure_partitions', 'write', $$SELECT api.ensure_partitions(3, %1$L, correlation_id => %2$L)$$),
    ('seal_audit', 'write', $$SELECT api.seal_audit(10, %1$L, correlation_id => %2$L)$$),
    ('run_maintenance', 'write', $$SELECT api.run_maintenance(%1$L, correlation_id => %2$L)$$),
    ('create_hold', 'read', $$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001', 'deadbeef-0000-4000-8000-000000000000', 1, idempotency_key => gen_random_uuid(), api_key_hash => %1$L, request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => %2$L)$$),
    ('capture_hold', 'read', $$SELECT * FROM api.capture_hold('deadbeef-0000-4000-8000-000000000000', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => %2$L)$$),
    ('void_hold', 'read', $$SELECT * FROM api.void_hold('deadbeef-0000-4000-8000-000000000000', idempotency_key => gen_random_uuid(), api_key_hash => %1$L, request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => %2$L)$$),
    ('get_hold', 'write', $$SELECT api.get_hold('deadbeef-0000-4000-8000-000000000000', %1$L, correlation_id => %2$L)$$),
    ('expire_holds', 'write', $$SELECT api.expire_holds(10, %1$L, correlation_id => %2$L)$$);
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'api'::regnamespace
                 EXCEPT SELECT fn FROM calls ORDER BY 1),
          ARRAY['describe_api_key', 'error_codes'],
          'every api function but describe_api_key and error_codes is checked below');
SELECT throws_ok(format(call, encode(sha256('no such key'::bytea), 'hex'), 'c'), 'L4011', NULL,
                 fn || ' refuses an unknown key')
  FROM calls ORDER BY fn;
SELECT throws_ok(format(call, (SELECT hash FROM k WHERE name = 'victim'), 'c'), 'L4011', NULL,
                 fn || ' refuses a revoked key')
  FROM calls ORDER BY fn;
SELECT throws_ok(format(call, (SELECT hash FROM k WHERE name = lacking), 'c'), 'L4031', NULL,
                 fn || ' refuses a ' || lacking || ' key')
  FROM calls ORDER BY fn;
SELECT throws_ok(format((SELECT call FROM calls WHERE fn = 'run_maintenance'), (SELECT hash FROM k WHERE name = 'write'), 'c'),
                 'L4031', 'the API key write lacks the maintenance permission (admin keys hold it)',
                 'the maintenance permission, which no key is given by name, says who holds it');
SELECT throws_ok(format(call, (SELECT hash FROM k WHERE name = 'admin'), repeat('c', 129)), 'L4001', NULL,
                 fn || ' refuses a correlation id over 128 characters')
  FROM calls ORDER BY fn;
SELECT pg_temp.add_key('exhausted', ARRAY['admin'], 1) \g /dev/null
SELECT pg_temp.fill_bucket('exhausted', 0, 1000) \g /dev/null
SELECT throws_ok(format(call, (SELECT hash FROM k WHERE name = 'exhausted'), 'c'), 'L4291', NULL,
                 fn || ' refuses a key over its rate limit')
  FROM calls ORDER BY fn;

-- admin implies read and write.
SELECT is(api.get_user('a11ce000-0000-4000-8000-000000000001', (SELECT hash FROM k WHERE name = 'admin')) ->> 'username',
          'alice', 'an admin key may read');
SELECT is((SELECT status FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com',
                                              idempotency_key => gen_random_uuid(),
                                              api_key_hash => (SELECT hash FROM k WHERE name = 'admin'),
                                              correlation_id => repeat('c', 128))),
          201, 'an admin key may write');
SELECT is((SELECT correlation_id FROM ledger.audit_log WHERE resource_id = 'b0b00000-0000-4000-8000-000000000002'),
          repeat('c', 128), 'a correlation id of 128 characters is kept whole');

-- ---------------------------------------------------------------- rate limit
SELECT pg_temp.add_key('two', ARRAY['read'], 2) \g /dev/null
SELECT lives_ok(format('SELECT api.authenticate(%L)', (SELECT hash FROM k WHERE name = 'two')), 'request 1 of 2 passes');
SELECT lives_ok(format('SELECT api.get_user(%L, %L)', 'a11ce000-0000-4000-8000-000000000001',
                       (SELECT hash FROM k WHERE name = 'two')), 'request 2 of 2 passes');
CREATE TEMP TABLE limited AS
SELECT pg_temp.error_of(format('SELECT api.get_balance(%L, api_key_hash => %L)', 'a11ce000-0000-4000-8000-000000000001',
                               (SELECT hash FROM k WHERE name = 'two'))) AS e;
SELECT is(e ->> 'sqlstate', 'L4291', 'request 3 within the minute is rate_limit_exceeded') FROM limited;
SELECT ok((e ->> 'detail')::jsonb ->> 'retry_after' ~ '^\d+$'
          AND ((e ->> 'detail')::jsonb ->> 'retry_after')::int
              = ledger.retry_after(2, 3, 0, extract(epoch FROM now()) / 60.0 - floor(extract(epoch FROM now()) / 60)),
          'its DETAIL holds retry_after: the whole seconds until the sliding window has room') FROM limited;
-- Three requests against a limit of 2: the rest of this minute, then 40 s until the weighted
-- count of this minute has slid below the limit.
SELECT is(ledger.retry_after(2, 3, 0, 0.5), 70, 'retry_after waits out the minute and the slide');
SELECT is(ledger.retry_after(10, 5, 20, 0.25), 33, 'with room this minute, retry_after waits for the previous minute to slide out');
SELECT throws_ok(format('SELECT api.authenticate(%L)', (SELECT hash FROM k WHERE name = 'two')),
                 'L4291', NULL, 'and so is every further request');
SELECT is((SELECT pg_sequence_last_value(CASE WHEN floor(extract(epoch FROM now()) / 60)::bigint % 2 = 0
                                               THEN bucket_even ELSE bucket_odd END) % 1000000000
             FROM ledger.api_keys WHERE id = (SELECT id FROM k WHERE name = 'two')),
          4::bigint, 'the bucket counts all four requests, the two refused ones too');
SELECT lives_ok(format('SELECT api.authenticate(%L)', (SELECT hash FROM k WHERE name = 'read')),
                'another key is not limited by it');
-- Every request counts, also one that fails: a client that only makes failing requests (probing
-- ids, repeating bad input) must be limited like any other. Each throws_ok rolls back its call, as
-- the transaction of a failed HTTP request is rolled back.
SELECT pg_temp.add_key('failing', ARRAY['read'], 2) \g /dev/null
SELECT throws_ok(format('SELECT api.get_transfer(%L, %L)', 'deadbeef-0000-4000-8000-000000000000',
                        (SELECT hash FROM k WHERE name = 'failing')),
                 'L4042', NULL, 'failed request ' || n || ' of 2 is answered')
  FROM generate_series(1, 2) AS n;
SELECT throws_ok(format('SELECT api.get_transfer(%L, %L)', 'deadbeef-0000-4000-8000-000000000000',
                        (SELECT hash FROM k WHERE name = 'failing')),
                 'L4291', NULL, 'a third request in the minute is rate limited, also when the first two failed');
-- The window slides: the previous minute still counts (weighted), the one before it no longer does.
SELECT pg_temp.add_key('busy last minute', ARRAY['read'], 2) \g /dev/null
SELECT pg_temp.add_key('busy long ago', ARRAY['read'], 2) \g /dev/null
SELECT pg_temp.fill_bucket('busy last minute', 1, 1000) \g /dev/null
SELECT pg_temp.fill_bucket('busy long ago', 2, 1000) \g /dev/null
SELECT throws_ok(format('SELECT api.authenticate(%L)', (SELECT hash FROM k WHERE name = 'busy last minute')),
                 'L4291', NULL, 'requests of the previous minute count');
SELECT lives_ok(format('SELECT api.authenticate(%L)', (SELECT hash FROM k WHERE name = 'busy long ago')),
                'requests of two minutes ago do not');

-- ---------------------------------------------------------------- the application role
SET LOCAL ROLE atp_app;
SELECT throws_ok($$SELECT api.get_user('a11ce000-0000-4000-8000-000000000001')$$,
                 'L4011', NULL, 'atp_app cannot read without a key');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'nokey', 'nokey@example.com')$$,
                 'L4011', NULL, 'atp_app cannot write without a key');
SELECT throws_ok($$SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 1)$$,
                 'L4011', NULL, 'atp_app cannot mint without a key');
SELECT throws_ok($$SELECT api.create_api_key('x', ARRAY['admin'], 1, NULL)$$,
                 'L4011', NULL, 'atp_app cannot create keys without a key');
SELECT lives_ok($$SELECT * FROM api.create_user('ca201000-0000-4000-8000-000000000003', 'carol', 'carol@example.com',
                                                idempotency_key => gen_random_uuid(),
                                                api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
                                                correlation_id => 'corr-app')$$,
                'atp_app can write with a key');
SELECT lives_ok($$SELECT api.seal_audit()$$, 'atp_app may run the maintenance jobs without a key');
SELECT throws_ok($$SELECT api.rebuild_projections()$$, '42501', NULL, 'atp_app may not rebuild projections');
SELECT throws_ok($$SELECT count(*) FROM ledger.balances$$, '42501', NULL, 'atp_app cannot read ledger tables');
RESET ROLE;
SELECT results_eq($$SELECT actor, api_key_id FROM ledger.audit_log WHERE correlation_id = 'corr-app'$$,
                  $$SELECT 'atp_app'::text, id FROM k WHERE name = 'write'$$,
                  'a request of the application is audited under its role and its key');
SELECT is(ARRAY(SELECT c.relname::text FROM pg_class c
                 WHERE c.relnamespace = 'ledger'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
                   AND (has_table_privilege('atp_app', c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE')
                        OR (c.relkind = 'S' AND has_sequence_privilege('atp_app', c.oid, 'USAGE,SELECT,UPDATE')))
                 ORDER BY 1),
          '{}'::text[], 'atp_app holds no privilege on any ledger table or sequence');

-- ---------------------------------------------------------------- the auditor role
SET LOCAL ROLE atp_auditor;
SELECT is(api.get_user('a11ce000-0000-4000-8000-000000000001') ->> 'username', 'alice', 'an auditor reads users without a key');
SELECT is(api.get_balance('a11ce000-0000-4000-8000-000000000001') ->> 'balance', '0.00000000',
          'an auditor reads balances without a key');
SELECT is(api.get_history('a11ce000-0000-4000-8000-000000000001')::jsonb -> 'items', '[]'::jsonb,
          'an auditor reads history without a key');
SELECT throws_ok($$SELECT api.get_transfer('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4042', NULL, 'an auditor looks up transfers without a key');
SELECT is(api.verify_projections() -> 'ok', 'true'::jsonb, 'an auditor verifies the books without a key');
SELECT is(api.verify_audit_chain() -> 'ok', 'true'::jsonb, 'an auditor verifies the audit chain without a key');
SELECT is((SELECT count(*)::int FROM ledger.users WHERE is_system), 3, 'an auditor reads the ledger tables');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'aud', 'aud@example.com')$$,
                 '42501', NULL, 'an auditor cannot call a write function at all');
SELECT throws_ok($$SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 1)$$,
                 '42501', NULL, 'an auditor cannot mint');
SELECT throws_ok($$SELECT api.list_events()$$, '42501', NULL, 'an auditor cannot read the admin event feed');
SELECT throws_ok($$UPDATE ledger.users SET display_name = 'x'$$, '42501', NULL, 'an auditor cannot change tables');
RESET ROLE;

-- ---------------------------------------------------------------- what every api function must be
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'api'::regnamespace AND NOT p.prosecdef ORDER BY 1),
          '{}'::text[], 'every api function is SECURITY DEFINER');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'api'::regnamespace
                   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%') ORDER BY 1),
          '{}'::text[], 'every api function fixes its search_path');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'api'::regnamespace
                   AND COALESCE(obj_description(p.oid, 'pg_proc'), '') = '' ORDER BY 1),
          '{}'::text[], 'every api function has a COMMENT');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'api'::regnamespace
                   AND has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1),
          '{}'::text[], 'no api function is executable by PUBLIC');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace IN ('api'::regnamespace, 'ledger'::regnamespace)
                   AND p.proowner <> 'atp_owner'::regrole ORDER BY 1),
          '{}'::text[], 'atp_owner owns every function');

SELECT * FROM finish();
ROLLBACK;
