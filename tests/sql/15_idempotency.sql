-- Idempotency: replays, conflicts, scoping per API key (or database role), expiry, and which
-- outcomes are stored (successes only).
BEGIN;
SELECT plan(57);

CREATE TEMP TABLE k (name text PRIMARY KEY, id uuid, key text, hash text);
INSERT INTO k
SELECT n, (t.j ->> 'id')::uuid, t.j ->> 'key', encode(sha256(convert_to(t.j ->> 'key', 'UTF8')), 'hex')
  FROM (VALUES ('write', 'write'), ('write2', 'write'), ('admin', 'admin')) AS p(n, perm),
       LATERAL api.create_api_key('idem-' || n, ARRAY[perm], 100000, NULL) AS t(j);
CREATE TEMP TABLE res (name text PRIMARY KEY, status integer, body jsonb, replayed boolean);

SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com') \g /dev/null
SELECT * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com') \g /dev/null
SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 100) \g /dev/null

CREATE FUNCTION pg_temp.wallet(u uuid) RETURNS numeric LANGUAGE sql AS $$
    SELECT b.balance FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
     WHERE a.user_id = u AND a.account_type = 'user_wallet'
$$;

-- ---------------------------------------------------------------- create_user replay and conflict
INSERT INTO res SELECT 'create 1', * FROM api.create_user(
    'ca201000-0000-4000-8000-000000000003', 'carol', 'carol@example.com',
    idempotency_key => '1d000000-0000-4000-8000-000000000001', api_key_hash => (SELECT hash FROM k WHERE name = 'write'));
INSERT INTO res SELECT 'create 2', * FROM api.create_user(
    'ca201000-0000-4000-8000-000000000003', 'carol', 'carol@example.com',
    idempotency_key => '1d000000-0000-4000-8000-000000000001', api_key_hash => (SELECT hash FROM k WHERE name = 'write'));
SELECT results_eq($$SELECT status, replayed FROM res WHERE name IN ('create 1', 'create 2') ORDER BY name$$,
                  $$VALUES (201, false), (201, true)$$,
                  'the same request with the same key is executed once and replayed once');
SELECT is((SELECT body FROM res WHERE name = 'create 2'), (SELECT body FROM res WHERE name = 'create 1'),
          'the replay returns the first response body');
SELECT results_eq(
    $$SELECT (SELECT count(*) FROM ledger.events WHERE aggregate_id = 'ca201000-0000-4000-8000-000000000003'),
             (SELECT count(*) FROM ledger.audit_log WHERE resource_id = 'ca201000-0000-4000-8000-000000000003')$$,
    $$VALUES (1::bigint, 1::bigint)$$,
    'the replay appended no event and no audit row');
SELECT results_eq(
    $$SELECT scope, operation, response_status, response_body::jsonb = (SELECT body FROM res WHERE name = 'create 1')
        FROM ledger.idempotency_keys WHERE key = '1d000000-0000-4000-8000-000000000001'$$,
    $$SELECT (SELECT id::text FROM k WHERE name = 'write'), 'create_user'::text, 201, true$$,
    'the response is stored under the API key''s scope');
SELECT throws_ok($$SELECT * FROM api.create_user('ca201000-0000-4000-8000-000000000003', 'carol2', 'carol@example.com',
                                                 idempotency_key => '1d000000-0000-4000-8000-000000000001',
                                                 api_key_hash => (SELECT hash FROM k WHERE name = 'write'))$$,
                 'L4091', NULL, 'the same key with different arguments is idempotency_conflict');
SELECT throws_ok($$SELECT * FROM api.update_user('ca201000-0000-4000-8000-000000000003', display_name => 'C',
                                                 idempotency_key => '1d000000-0000-4000-8000-000000000001',
                                                 api_key_hash => (SELECT hash FROM k WHERE name = 'write'))$$,
                 'L4091', NULL, 'the same key for another operation is idempotency_conflict');
SELECT is(api.get_user('ca201000-0000-4000-8000-000000000003') ->> 'display_name', NULL,
          'the conflicting update changed nothing');

-- ---------------------------------------------------------------- transfer replay: money moves once
INSERT INTO res SELECT 'transfer 1', * FROM api.transfer(
    'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 10, 'rent',
    idempotency_key => '1d000000-0000-4000-8000-000000000002', api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001');
INSERT INTO res SELECT 'transfer 2', * FROM api.transfer(
    'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 10, 'rent',
    idempotency_key => '1d000000-0000-4000-8000-000000000002', api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001');
SELECT results_eq($$SELECT status, replayed FROM res WHERE name IN ('transfer 1', 'transfer 2') ORDER BY name$$,
                  $$VALUES (201, false), (201, true)$$, 'a repeated transfer is replayed');
SELECT is((SELECT body FROM res WHERE name = 'transfer 2'), (SELECT body FROM res WHERE name = 'transfer 1'),
          'the replayed transfer has the same transfer_id and body');
SELECT results_eq(
    $$SELECT pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'),
             (SELECT count(*) FROM ledger.events WHERE event_type IN ('AccountDebited', 'AccountCredited')),
             (SELECT count(*) FROM ledger.audit_log WHERE action = 'transfer')$$,
    $$VALUES (90::numeric, 10::numeric, 4::bigint, 1::bigint)$$,
    'the money moved once: one journal, one audit row');

-- A replay answers from the store: it does not run the request again, even if it would now fail.
SELECT * FROM api.freeze_wallet('a11ce000-0000-4000-8000-000000000001') \g /dev/null
SELECT is((SELECT body::jsonb FROM api.transfer(
              'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 10, 'rent',
              idempotency_key => '1d000000-0000-4000-8000-000000000002',
              api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
              request_user_id => 'a11ce000-0000-4000-8000-000000000001')),
          (SELECT body FROM res WHERE name = 'transfer 1'),
          'a replay returns the stored response even after the sender was frozen');
SELECT * FROM api.unfreeze_wallet('a11ce000-0000-4000-8000-000000000001') \g /dev/null
-- The stored response is the json text of the first answer, fields in the contract's order, and
-- a replay answers that text as it is.
SELECT ok((SELECT response_body::text LIKE '{"transfer_id" : %, "status" : "completed", "from_user_id" : %'
             FROM ledger.idempotency_keys
            WHERE key = '1d000000-0000-4000-8000-000000000002' AND scope = (SELECT id::text FROM k WHERE name = 'write')),
          'the stored response keeps the order of the first answer''s fields');
SELECT is((SELECT body::text FROM api.transfer(
              'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 10, 'rent',
              idempotency_key => '1d000000-0000-4000-8000-000000000002',
              api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
              request_user_id => 'a11ce000-0000-4000-8000-000000000001')),
          (SELECT response_body::text FROM ledger.idempotency_keys
            WHERE key = '1d000000-0000-4000-8000-000000000002' AND scope = (SELECT id::text FROM k WHERE name = 'write')),
          'a replay answers the stored text, byte for byte');
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                                              11, 'rent', idempotency_key => '1d000000-0000-4000-8000-000000000002',
                                              api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
                                              request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4091', NULL, 'the same key with another amount is idempotency_conflict');

-- ---------------------------------------------------------------- scope: per API key, per database role
INSERT INTO res SELECT 'other key', * FROM api.transfer(
    'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 5,
    idempotency_key => '1d000000-0000-4000-8000-000000000002', api_key_hash => (SELECT hash FROM k WHERE name = 'write2'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001');
SELECT is(replayed, false, 'another API key may use the same idempotency key for its own request')
  FROM res WHERE name = 'other key';
SELECT isnt((SELECT body ->> 'transfer_id' FROM res WHERE name = 'other key'),
            (SELECT body ->> 'transfer_id' FROM res WHERE name = 'transfer 1'), 'and it is a new transfer');
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 85::numeric, 'which moved its own money');
INSERT INTO res SELECT 'dba 1', * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 1,
                                                idempotency_key => '1d000000-0000-4000-8000-000000000002');
INSERT INTO res SELECT 'dba 2', * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 1,
                                                idempotency_key => '1d000000-0000-4000-8000-000000000002');
SELECT results_eq($$SELECT status, replayed FROM res WHERE name IN ('dba 1', 'dba 2') ORDER BY name$$,
                  $$VALUES (201, false), (201, true)$$,
                  'a DBA without a key has a scope of its own, and gets replays too');
SELECT is(pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'), 16::numeric, 'the DBA''s mint happened once');
SELECT set_eq($$SELECT scope FROM ledger.idempotency_keys WHERE key = '1d000000-0000-4000-8000-000000000002'$$,
              $$SELECT id::text FROM k WHERE name IN ('write', 'write2') UNION ALL SELECT 'role:postgres'$$,
              'one stored response per scope');

-- ---------------------------------------------------------------- a key is required with an API key
SELECT throws_ok(format('SELECT * FROM api.%s, api_key_hash => %L)', call, (SELECT hash FROM k WHERE name = 'admin')),
                 'L4001', NULL, split_part(call, '(', 1) || ' with an API key needs an idempotency key')
  FROM unnest(ARRAY[
      $$create_user(gen_random_uuid(), 'dave', 'dave@example.com'$$,
      $$update_user('a11ce000-0000-4000-8000-000000000001', display_name => 'A'$$,
      $$delete_user('ca201000-0000-4000-8000-000000000003'$$,
      $$transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 1, request_user_id => 'a11ce000-0000-4000-8000-000000000001'$$,
      $$mint('a11ce000-0000-4000-8000-000000000001', 1$$,
      $$burn('a11ce000-0000-4000-8000-000000000001', 1$$,
      $$freeze_wallet('a11ce000-0000-4000-8000-000000000001'$$,
      $$unfreeze_wallet('a11ce000-0000-4000-8000-000000000001'$$]) AS call;

-- ---------------------------------------------------------------- only successes are stored
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                                              500, idempotency_key => '1d000000-0000-4000-8000-000000000003',
                                              api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
                                              request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4002', NULL, 'a transfer beyond the balance fails');
SELECT is((SELECT count(*)::int FROM ledger.idempotency_keys WHERE key = '1d000000-0000-4000-8000-000000000003'), 0,
          'a failed request stores no response');
SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 500) \g /dev/null
INSERT INTO res SELECT 'retry', * FROM api.transfer(
    'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 500,
    idempotency_key => '1d000000-0000-4000-8000-000000000003', api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001');
SELECT results_eq($$SELECT status, replayed FROM res WHERE name = 'retry'$$, $$VALUES (201, false)$$,
                  'the same key can be retried after a failure, and then executes');
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 85::numeric, 'the retried transfer moved the money');
SELECT is((SELECT expires_at FROM ledger.idempotency_keys WHERE key = '1d000000-0000-4000-8000-000000000003'),
          now() + interval '24 hours', 'a stored response expires after 24 hours by default');

-- ---------------------------------------------------------------- replays of the other write operations
INSERT INTO res SELECT 'update 1', * FROM api.update_user(
    'a11ce000-0000-4000-8000-000000000001', display_name => 'A', idempotency_key => '1d000000-0000-4000-8000-000000000004',
    request_hash => 'http-hash-1', api_key_hash => (SELECT hash FROM k WHERE name = 'write'));
INSERT INTO res SELECT 'update 2', * FROM api.update_user(
    'a11ce000-0000-4000-8000-000000000001', display_name => 'A', idempotency_key => '1d000000-0000-4000-8000-000000000004',
    request_hash => 'http-hash-1', api_key_hash => (SELECT hash FROM k WHERE name = 'write'));
SELECT results_eq($$SELECT status, replayed, body ->> 'version' FROM res WHERE name IN ('update 1', 'update 2') ORDER BY name$$,
                  $$VALUES (200, false, '2'), (200, true, '2')$$,
                  'a repeated update_user is replayed, with the version of the first response');
SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', display_name => 'A',
                                                 idempotency_key => '1d000000-0000-4000-8000-000000000004',
                                                 request_hash => 'http-hash-2',
                                                 api_key_hash => (SELECT hash FROM k WHERE name = 'write'))$$,
                 'L4091', NULL, 'a caller''s own request_hash is what identifies the request');

INSERT INTO res SELECT 'delete 1', * FROM api.delete_user('ca201000-0000-4000-8000-000000000003',
    idempotency_key => '1d000000-0000-4000-8000-000000000005', api_key_hash => (SELECT hash FROM k WHERE name = 'write'));
INSERT INTO res SELECT 'delete 2', * FROM api.delete_user('ca201000-0000-4000-8000-000000000003',
    idempotency_key => '1d000000-0000-4000-8000-000000000005', api_key_hash => (SELECT hash FROM k WHERE name = 'write'));
SELECT results_eq($$SELECT status, replayed, body FROM res WHERE name IN ('delete 1', 'delete 2') ORDER BY name$$,
                  $$SELECT status, r, body FROM res, (VALUES (false), (true)) v(r) WHERE name = 'delete 1' ORDER BY r$$,
                  'a repeated delete_user replays 200 instead of finding no user');
SELECT throws_ok($$SELECT * FROM api.delete_user('ca201000-0000-4000-8000-000000000003',
                                                 idempotency_key => gen_random_uuid(),
                                                 api_key_hash => (SELECT hash FROM k WHERE name = 'write'))$$,
                 'L4041', NULL, 'while a new delete of that user is user_not_found');

INSERT INTO res SELECT 'burn 1', * FROM api.burn('b0b00000-0000-4000-8000-000000000002', 1, 'fee',
    idempotency_key => '1d000000-0000-4000-8000-000000000006', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
INSERT INTO res SELECT 'burn 2', * FROM api.burn('b0b00000-0000-4000-8000-000000000002', 1, 'fee',
    idempotency_key => '1d000000-0000-4000-8000-000000000006', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
SELECT results_eq($$SELECT replayed, body = (SELECT body FROM res WHERE name = 'burn 1') FROM res WHERE name LIKE 'burn %' ORDER BY name$$,
                  $$VALUES (false, true), (true, true)$$, 'a repeated burn is replayed');
INSERT INTO res SELECT 'mint 1', * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 3, 'bonus',
    idempotency_key => '1d000000-0000-4000-8000-000000000007', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
INSERT INTO res SELECT 'mint 2', * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 3, 'bonus',
    idempotency_key => '1d000000-0000-4000-8000-000000000007', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
SELECT results_eq($$SELECT replayed, body = (SELECT body FROM res WHERE name = 'mint 1') FROM res WHERE name LIKE 'mint %' ORDER BY name$$,
                  $$VALUES (false, true), (true, true)$$, 'a repeated mint with a key is replayed');
SELECT is(pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'), 518::numeric,
          'bob: 10 + 5 + 500 received, 1 minted by the DBA, 1 burned once, 3 minted once');
INSERT INTO res SELECT 'freeze 1', * FROM api.freeze_wallet('b0b00000-0000-4000-8000-000000000002', 'check',
    idempotency_key => '1d000000-0000-4000-8000-000000000008', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
INSERT INTO res SELECT 'freeze 2', * FROM api.freeze_wallet('b0b00000-0000-4000-8000-000000000002', 'check',
    idempotency_key => '1d000000-0000-4000-8000-000000000008', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
SELECT results_eq($$SELECT status, replayed FROM res WHERE name LIKE 'freeze %' ORDER BY name$$,
                  $$VALUES (200, false), (200, true)$$, 'a repeated freeze_wallet is replayed');
INSERT INTO res SELECT 'unfreeze 1', * FROM api.unfreeze_wallet('b0b00000-0000-4000-8000-000000000002', 'checked',
    idempotency_key => '1d000000-0000-4000-8000-000000000009', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
INSERT INTO res SELECT 'unfreeze 2', * FROM api.unfreeze_wallet('b0b00000-0000-4000-8000-000000000002', 'checked',
    idempotency_key => '1d000000-0000-4000-8000-000000000009', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
SELECT results_eq($$SELECT status, replayed, body -> 'is_frozen' FROM res WHERE name LIKE 'unfreeze %' ORDER BY name$$,
                  $$VALUES (200, false, 'false'::jsonb), (200, true, 'false'::jsonb)$$,
                  'a repeated unfreeze_wallet is replayed');

-- Every write operation refuses its used key for a different request.
SELECT throws_ok(format('SELECT * FROM api.%s, api_key_hash => %L)', call, (SELECT hash FROM k WHERE name = key_name)),
                 'L4091', NULL, split_part(call, '(', 1) || ' refuses a used key for a different request')
  FROM (VALUES ('write', $$delete_user('b0b00000-0000-4000-8000-000000000002', idempotency_key => '1d000000-0000-4000-8000-000000000005'$$),
               ('admin', $$burn('b0b00000-0000-4000-8000-000000000002', 2, 'fee', idempotency_key => '1d000000-0000-4000-8000-000000000006'$$),
               ('admin', $$mint('b0b00000-0000-4000-8000-000000000002', 3, 'other', idempotency_key => '1d000000-0000-4000-8000-000000000007'$$),
               ('admin', $$freeze_wallet('b0b00000-0000-4000-8000-000000000002', 'other', idempotency_key => '1d000000-0000-4000-8000-000000000008'$$),
               ('admin', $$unfreeze_wallet('a11ce000-0000-4000-8000-000000000001', 'checked', idempotency_key => '1d000000-0000-4000-8000-000000000009'$$))
       AS t(key_name, call);
SELECT is(pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'), 518::numeric, 'the refused requests moved nothing');

-- ---------------------------------------------------------------- expiry
UPDATE ledger.idempotency_keys SET expires_at = now() - interval '1 second'
 WHERE key = '1d000000-0000-4000-8000-000000000001';
INSERT INTO res SELECT 'after expiry', * FROM api.create_user(
    'da7e0000-0000-4000-8000-000000000004', 'dave', 'dave@example.com',
    idempotency_key => '1d000000-0000-4000-8000-000000000001', api_key_hash => (SELECT hash FROM k WHERE name = 'write'));
SELECT results_eq($$SELECT status, replayed, body ->> 'username' FROM res WHERE name = 'after expiry'$$,
                  $$VALUES (201, false, 'dave')$$,
                  'an expired key is forgotten: it may carry a new request');
SELECT is((SELECT response_body ->> 'username' FROM ledger.idempotency_keys
            WHERE key = '1d000000-0000-4000-8000-000000000001'),
          'dave', 'and the new response replaces the expired one');

UPDATE ledger.settings SET idempotency_ttl = '90 minutes';
SELECT * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 1, idempotency_key => '1d000000-0000-4000-8000-00000000000a')
\g /dev/null
SELECT is((SELECT expires_at FROM ledger.idempotency_keys WHERE key = '1d000000-0000-4000-8000-00000000000a'),
          now() + interval '90 minutes', 'ledger.settings.idempotency_ttl sets how long a response is kept');
SELECT * FROM api.create_user('77170000-0000-4000-8000-000000000077', 'ttlcarol', 'ttlcarol@example.com',
                              idempotency_key => '1d000000-0000-4000-8000-00000000000c') \g /dev/null
SELECT is((SELECT expires_at FROM ledger.idempotency_keys WHERE key = '1d000000-0000-4000-8000-00000000000c'),
          now() + interval '90 minutes', 'and so for writes that store their response apart from a journal');
-- A session's own setting changes nothing: the TTL was once financeatp.idempotency_ttl, which any
-- connection could set below zero for itself and so have a key executed at every call.
SET LOCAL financeatp.idempotency_ttl = '-1 hour';
SELECT * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 1, idempotency_key => '1d000000-0000-4000-8000-00000000000b')
\g /dev/null
SELECT is((SELECT replayed FROM api.mint('b0b00000-0000-4000-8000-000000000002', 1,
                                         idempotency_key => '1d000000-0000-4000-8000-00000000000b')),
          true, 'a session setting of the TTL changes nothing: the same key is replayed');
RESET financeatp.idempotency_ttl;
SELECT is(pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'), 520::numeric, 'two mints happened, the replay moved nothing');
SELECT throws_ok($$UPDATE ledger.settings SET idempotency_ttl = '0'$$, '23514', NULL, 'a TTL under one second is refused');
SET LOCAL ROLE atp_app;
SELECT throws_ok($$UPDATE ledger.settings SET idempotency_ttl = '1 second'$$, '42501', NULL,
                 'the application role cannot change the settings');
RESET ROLE;

SELECT is(api.verify_projections() -> 'ok', 'true'::jsonb, 'the books verify');

SELECT * FROM finish();
ROLLBACK;
