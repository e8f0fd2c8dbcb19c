-- Users: create, get, update and delete, with their events, wallets and audit rows.
-- alice and carol are created with a write key (as the HTTP layer would), bob by a DBA without one.
BEGIN;
SELECT plan(76);

CREATE TEMP TABLE k (name text PRIMARY KEY, id uuid, key text, hash text);
INSERT INTO k
SELECT p, (t.j ->> 'id')::uuid, t.j ->> 'key', encode(sha256(convert_to(t.j ->> 'key', 'UTF8')), 'hex')
  FROM unnest(ARRAY['read', 'write']) AS p,
       LATERAL api.create_api_key('users-' || p, ARRAY[p], 100000, NULL) AS t(j);
CREATE TEMP TABLE res (name text PRIMARY KEY, status integer, body jsonb, replayed boolean);

-- ---------------------------------------------------------------- create_user
INSERT INTO res
SELECT 'create alice', * FROM api.create_user(
    'a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com', 'Alice',
    idempotency_key => 'e0000000-0000-4000-8000-000000000001',
    api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001',
    correlation_id => 'corr-create-alice', client_addr => '10.1.2.3');

SELECT is(status, 201, 'create_user answers 201') FROM res WHERE name = 'create alice';
SELECT is(replayed, false, 'a first create_user is not a replay') FROM res WHERE name = 'create alice';
SELECT is(body - 'created_at' - 'updated_at',
          '{"user_id": "a11ce000-0000-4000-8000-000000000001", "username": "alice", "email": "alice@example.com",
            "display_name": "Alice", "balance": "0.00000000", "is_frozen": false, "version": 1}'::jsonb,
          'create_user returns the user with a zero balance shown with 8 decimals')
  FROM res WHERE name = 'create alice';
SELECT matches(body ->> 'created_at', '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$',
               'created_at is RFC 3339 in UTC')
  FROM res WHERE name = 'create alice';
SELECT is((body ->> 'created_at')::timestamptz, (SELECT created_at FROM ledger.users
                                                   WHERE id = 'a11ce000-0000-4000-8000-000000000001'),
          'created_at is the stored creation time')
  FROM res WHERE name = 'create alice';
SELECT cmp_ok((body ->> 'updated_at')::timestamptz, '>=', (body ->> 'created_at')::timestamptz,
              'updated_at of a new user is RFC 3339 too, not before created_at')
  FROM res WHERE name = 'create alice';

SELECT results_eq(
    $$SELECT a.account_type, a.is_system, b.balance, b.version, b.is_frozen, b.is_closed
        FROM ledger.accounts a JOIN ledger.balances b ON b.account_id = a.id
       WHERE a.user_id = 'a11ce000-0000-4000-8000-000000000001'$$,
    $$VALUES ('user_wallet', false, 0::numeric, 1::bigint, false, false)$$,
    'create_user opens exactly one wallet, at balance 0 and version 1');

SELECT results_eq(
    $$SELECT e.aggregate_type, e.version, e.event_type, e.data, e.actor, e.api_key_id, e.request_user_id,
             e.correlation_id
        FROM ledger.events e
       WHERE e.aggregate_id = 'a11ce000-0000-4000-8000-000000000001'
          OR e.aggregate_id = (SELECT id FROM ledger.accounts WHERE user_id = 'a11ce000-0000-4000-8000-000000000001')
       ORDER BY e.id$$,
    $$VALUES ('user', 1::bigint, 'UserCreated',
              '{"username": "alice", "email": "alice@example.com", "display_name": "Alice"}'::jsonb,
              'postgres', (SELECT id FROM k WHERE name = 'write'), 'a11ce000-0000-4000-8000-000000000001'::uuid,
              'corr-create-alice'),
             ('account', 1::bigint, 'AccountOpened',
              '{"user_id": "a11ce000-0000-4000-8000-000000000001", "account_type": "user_wallet"}'::jsonb,
              'postgres', (SELECT id FROM k WHERE name = 'write'), 'a11ce000-0000-4000-8000-000000000001'::uuid,
              'corr-create-alice')$$,
    'create_user appends UserCreated and AccountOpened, stamped with key, acting user and correlation id');

SELECT results_eq(
    $$SELECT actor, api_key_id, request_user_id, correlation_id, client_addr, resource_type, before_state,
             after_state
        FROM ledger.audit_log WHERE action = 'user.create' AND resource_id = 'a11ce000-0000-4000-8000-000000000001'$$,
    $$SELECT 'postgres'::text, (SELECT id FROM k WHERE name = 'write'), 'a11ce000-0000-4000-8000-000000000001'::uuid,
             'corr-create-alice'::text, '10.1.2.3'::inet, 'user'::text, NULL::jsonb,
             (SELECT body FROM res WHERE name = 'create alice')$$,
    'create_user writes one audit row with the caller, the key, the acting user, the correlation id and the new user');

-- bob by a DBA at a psql prompt: no key, no idempotency key.
INSERT INTO res SELECT 'create bob', * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob',
                                                            'bob@example.com');
SELECT is(body ->> 'display_name', NULL, 'display_name is optional') FROM res WHERE name = 'create bob';
SELECT results_eq(
    $$SELECT actor, api_key_id FROM ledger.audit_log
       WHERE action = 'user.create' AND resource_id = 'b0b00000-0000-4000-8000-000000000002'$$,
    $$VALUES ('postgres'::text, NULL::uuid)$$,
    'a keyless create_user by a DBA is audited under the database role');

-- An empty display_name means none; the longest legal values pass.
INSERT INTO res SELECT 'create carol', * FROM api.create_user(
    'ca201000-0000-4000-8000-000000000003', repeat('c', 50), 'carol@example.com', '',
    idempotency_key => gen_random_uuid(), api_key_hash => (SELECT hash FROM k WHERE name = 'write'));
SELECT is((SELECT display_name FROM ledger.users WHERE id = 'ca201000-0000-4000-8000-000000000003'), NULL,
          'an empty display_name is stored as none');
SELECT is(body ->> 'username', repeat('c', 50), 'a 50-character username is accepted') FROM res WHERE name = 'create carol';
SELECT lives_ok($$SELECT * FROM api.create_user('d0000000-0000-4000-8000-000000000004', 'dora', 'dora@example.com',
                                                repeat('d', 100))$$,
                'a 100-character display_name is accepted');

-- Taken: the id (even with new names), the username and the email, case-insensitively.
SELECT throws_ok($$SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice2', 'alice2@example.com')$$,
                 'L4093', NULL, 'a taken user id is refused');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'ALICE', 'other@example.com')$$,
                 'L4093', NULL, 'a taken username is refused, whatever its case');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'alice3', 'Alice@Example.COM')$$,
                 'L4093', NULL, 'a taken email is refused, whatever its case');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'system_mint', 'x@example.com')$$,
                 'L4093', NULL, 'the username of a system user is taken too');
SELECT throws_ok($$SELECT * FROM api.create_user('00000000-0000-0000-0000-000000000001', 'mallory', 'm@example.com')$$,
                 'L4093', 'user id 00000000-0000-0000-0000-000000000001 is reserved for the ledger''s own accounts',
                 'a system user''s id is refused, and the message says why');

-- Invalid values.
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'ab', 'ab@example.com')$$,
                 'L4001', NULL, 'a username shorter than 3 characters is refused');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), repeat('x', 51), 'x51@example.com')$$,
                 'L4001', NULL, 'a username longer than 50 characters is refused');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'has space', 'hs@example.com')$$,
                 'L4001', NULL, 'a username with a space is refused');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'noemail', 'not-an-email')$$,
                 'L4001', NULL, 'an email without @ is refused');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'longmail', repeat('a', 243) || '@example.com')$$,
                 'L4001', NULL, 'an email longer than 254 characters is refused');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'longname', 'ln@example.com', repeat('d', 101))$$,
                 'L4001', NULL, 'a display_name longer than 100 characters is refused');
SELECT throws_ok($$SELECT * FROM api.create_user(NULL, 'noid', 'noid@example.com')$$,
                 'L4001', NULL, 'user_id is required');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), NULL, 'nouser@example.com')$$,
                 'L4001', NULL, 'username is required');
SELECT throws_ok($$SELECT * FROM api.create_user(gen_random_uuid(), 'nomail', NULL)$$,
                 'L4001', NULL, 'email is required');
SELECT is((SELECT count(*)::int FROM ledger.users WHERE NOT is_system), 4,
          'none of the refused creates left a user behind');

-- ---------------------------------------------------------------- get_user
SELECT is(api.get_user('a11ce000-0000-4000-8000-000000000001', (SELECT hash FROM k WHERE name = 'read'))::jsonb,
          (SELECT body FROM res WHERE name = 'create alice'),
          'get_user returns the user as create_user did');
SELECT throws_ok($$SELECT api.get_user('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4041', NULL, 'get_user of an unknown id is user_not_found');
SELECT throws_ok($$SELECT api.get_user('00000000-0000-0000-0000-000000000001')$$,
                 'L4041', NULL, 'system users are not visible through get_user');
SELECT throws_ok($$SELECT api.get_user(NULL)$$, 'L4001', 'user_id is required', 'get_user of no id is invalid_request');

-- ---------------------------------------------------------------- update_user
INSERT INTO res SELECT 'rename display', * FROM api.update_user(
    'a11ce000-0000-4000-8000-000000000001', display_name => 'Alice A.', expected_version => 1,
    idempotency_key => gen_random_uuid(), api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    correlation_id => 'corr-update-alice');
SELECT is(status, 200, 'update_user answers 200') FROM res WHERE name = 'rename display';
SELECT is(body - 'updated_at',
          (SELECT body - 'updated_at' FROM res WHERE name = 'create alice')
              || '{"display_name": "Alice A.", "version": 2}'::jsonb,
          'update_user changes the display_name and the version, and nothing else')
  FROM res WHERE name = 'rename display';
SELECT cmp_ok((body ->> 'updated_at')::timestamptz, '>', (body ->> 'created_at')::timestamptz,
              'update_user moves updated_at')
  FROM res WHERE name = 'rename display';
SELECT results_eq(
    $$SELECT version, event_type, data, correlation_id FROM ledger.events
       WHERE aggregate_id = 'a11ce000-0000-4000-8000-000000000001' AND version = 2$$,
    $$VALUES (2::bigint, 'UserUpdated', '{"display_name": "Alice A."}'::jsonb, 'corr-update-alice')$$,
    'update_user appends UserUpdated with the changed fields only');
SELECT results_eq(
    $$SELECT before_state, after_state, api_key_id FROM ledger.audit_log
       WHERE action = 'user.update' AND correlation_id = 'corr-update-alice'$$,
    $$SELECT (SELECT body FROM res WHERE name = 'create alice'), (SELECT body FROM res WHERE name = 'rename display'),
             (SELECT id FROM k WHERE name = 'write')$$,
    'update_user audits the user before and after');

SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', display_name => 'Stale',
                                                 expected_version => 1)$$,
                 'L4092', NULL, 'an update based on an old version is a version conflict');
SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', display_name => 'Zero',
                                                 expected_version => 0)$$,
                 'L4001', 'expected_version must be at least 1 (a user starts at version 1)',
                 'an expected_version below 1 is an invalid request, not a version conflict');

INSERT INTO res SELECT 'rename user', * FROM api.update_user(
    'a11ce000-0000-4000-8000-000000000001', username => 'alice_w', email => 'Alice.W@example.com',
    expected_version => 2);
SELECT is(body - 'updated_at' - 'created_at',
          '{"user_id": "a11ce000-0000-4000-8000-000000000001", "username": "alice_w", "email": "Alice.W@example.com",
            "display_name": "Alice A.", "balance": "0.00000000", "is_frozen": false, "version": 3}'::jsonb,
          'update_user changes username and email and keeps the display_name')
  FROM res WHERE name = 'rename user';
SELECT is((SELECT data FROM ledger.events WHERE aggregate_id = 'a11ce000-0000-4000-8000-000000000001' AND version = 3),
          '{"username": "alice_w", "email": "Alice.W@example.com"}'::jsonb,
          'the UserUpdated event names only the fields that were given');
SELECT is((SELECT body ->> 'username' FROM api.update_user('a11ce000-0000-4000-8000-000000000001', username => 'ALICE_W')),
          'ALICE_W', 'a user may change the case of its own username');

INSERT INTO res SELECT 'clear display', * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', display_name => '');
SELECT ok(body ? 'display_name' AND body -> 'display_name' = 'null'::jsonb, 'an empty display_name clears it')
  FROM res WHERE name = 'clear display';
SELECT is((SELECT data FROM ledger.events WHERE aggregate_id = 'a11ce000-0000-4000-8000-000000000001' AND version = 5),
          '{"display_name": null}'::jsonb, 'clearing is recorded as display_name null');

SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001')$$,
                 'L4001', NULL, 'an update with nothing to change is refused');
SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', username => 'BOB')$$,
                 'L4093', NULL, 'renaming to a taken username is refused, whatever its case');
SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', email => 'BOB@example.com')$$,
                 'L4093', NULL, 'changing to a taken email is refused, whatever its case');
SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', username => 'x')$$,
                 'L4001', NULL, 'update_user checks the username rules');
SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', email => 'nope')$$,
                 'L4001', NULL, 'update_user checks the email rules');
SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', display_name => repeat('d', 101))$$,
                 'L4001', NULL, 'update_user checks the display_name length');
SELECT throws_ok($$SELECT * FROM api.update_user('deadbeef-0000-4000-8000-000000000000', display_name => 'x')$$,
                 'L4041', NULL, 'update_user of an unknown user is user_not_found');
SELECT throws_ok($$SELECT * FROM api.update_user('00000000-0000-0000-0000-000000000001', display_name => 'x')$$,
                 'L4041', NULL, 'system users cannot be updated');
SELECT results_eq(
    $$SELECT u.version, (SELECT count(*) FROM ledger.events e WHERE e.aggregate_id = u.id),
             (SELECT max(e.version) FROM ledger.events e WHERE e.aggregate_id = u.id)
        FROM ledger.users u WHERE u.id = 'a11ce000-0000-4000-8000-000000000001'$$,
    $$VALUES (5::bigint, 5::bigint, 5::bigint)$$,
    'the user version counts its events: refused updates left none');

-- ---------------------------------------------------------------- delete_user
SELECT lives_ok($$SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 5)$$, 'alice gets 5 ATP');
SELECT throws_ok($$SELECT * FROM api.delete_user('a11ce000-0000-4000-8000-000000000001')$$,
                 'L4094', NULL, 'a user holding ATP cannot be deleted');
SELECT lives_ok($$SELECT * FROM api.burn('a11ce000-0000-4000-8000-000000000001', 5)$$, 'alice''s 5 ATP are burned');

INSERT INTO res SELECT 'delete alice', * FROM api.delete_user(
    'a11ce000-0000-4000-8000-000000000001', idempotency_key => gen_random_uuid(),
    api_key_hash => (SELECT hash FROM k WHERE name = 'write'), correlation_id => 'corr-delete-alice');
SELECT is(status, 200, 'delete_user answers 200') FROM res WHERE name = 'delete alice';
SELECT is(body - 'deleted_at', '{"user_id": "a11ce000-0000-4000-8000-000000000001", "status": "deleted"}'::jsonb,
          'delete_user reports the user as deleted')
  FROM res WHERE name = 'delete alice';
SELECT is((body ->> 'deleted_at')::timestamptz,
          (SELECT deleted_at FROM ledger.users WHERE id = 'a11ce000-0000-4000-8000-000000000001'),
          'deleted_at is the stored deletion time')
  FROM res WHERE name = 'delete alice';
SELECT results_eq(
    $$SELECT aggregate_type, event_type FROM ledger.events WHERE correlation_id = 'corr-delete-alice' ORDER BY id$$,
    $$VALUES ('user', 'UserDeleted'), ('account', 'AccountClosed')$$,
    'delete_user appends UserDeleted and AccountClosed');
SELECT results_eq(
    $$SELECT b.is_closed, b.balance FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
       WHERE a.user_id = 'a11ce000-0000-4000-8000-000000000001'$$,
    $$VALUES (true, 0::numeric)$$,
    'the wallet of a deleted user is closed and empty');
SELECT results_eq(
    $$SELECT before_state ->> 'username', before_state ->> 'balance', after_state, api_key_id
        FROM ledger.audit_log WHERE action = 'user.delete'$$,
    $$SELECT 'ALICE_W', '0.00000000', (SELECT body FROM res WHERE name = 'delete alice'),
             (SELECT id FROM k WHERE name = 'write')$$,
    'delete_user audits the user it deleted');

SELECT throws_ok($$SELECT api.get_user('a11ce000-0000-4000-8000-000000000001')$$,
                 'L4041', NULL, 'a deleted user is not found');
SELECT throws_ok($$SELECT api.get_balance('a11ce000-0000-4000-8000-000000000001')$$,
                 'L4041', NULL, 'a deleted user has no balance to show');
SELECT throws_ok($$SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', display_name => 'x')$$,
                 'L4041', NULL, 'a deleted user cannot be updated');
SELECT throws_ok($$SELECT * FROM api.delete_user('a11ce000-0000-4000-8000-000000000001')$$,
                 'L4041', NULL, 'a deleted user cannot be deleted again');
SELECT lives_ok($$SELECT * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 10)$$, 'bob gets 10 ATP');
SELECT throws_ok($$SELECT * FROM api.transfer('b0b00000-0000-4000-8000-000000000002',
                                              'a11ce000-0000-4000-8000-000000000001', 1,
                                              request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4041', NULL, 'nobody can send ATP to a deleted user');
SELECT throws_ok($$SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 1)$$,
                 'L4041', NULL, 'no ATP can be minted to a deleted user');
SELECT throws_ok($$SELECT * FROM api.delete_user('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4041', NULL, 'delete_user of an unknown id is user_not_found');
SELECT throws_ok($$SELECT * FROM api.delete_user('00000000-0000-0000-0000-000000000002')$$,
                 'L4041', NULL, 'system users cannot be deleted');

-- The username and email of a deleted user are free again (and the new user is a new wallet).
INSERT INTO res SELECT 'reuse', * FROM api.create_user('a11ce000-0000-4000-8000-000000000099', 'alice_w',
                                                       'alice.w@EXAMPLE.com', 'Alice again');
SELECT is(status, 201, 'a new user may take the username and email of a deleted one') FROM res WHERE name = 'reuse';
SELECT isnt((SELECT id FROM ledger.accounts WHERE user_id = 'a11ce000-0000-4000-8000-000000000099'),
            (SELECT id FROM ledger.accounts WHERE user_id = 'a11ce000-0000-4000-8000-000000000001'),
            'the new user has a wallet of its own');
SELECT throws_ok($$SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'zed', 'zed@example.com')$$,
                 'L4093',
                 'user id a11ce000-0000-4000-8000-000000000001 belonged to a user who was deleted, and is never used again',
                 'the id of a deleted user stays taken, and the message says why');

SELECT is(api.verify_projections() -> 'ok', 'true'::jsonb, 'the books still verify');

SELECT * FROM finish();
ROLLBACK;
