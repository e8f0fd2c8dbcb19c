-- Holds: create_hold, capture_hold, void_hold, get_hold, expire_holds; the available balance they
-- reserve (transfer, burn and another hold are checked against it), their events, journal lines and
-- audit rows, every error, idempotency, delete_user's refusal, verify and rebuild of held.
BEGIN;
SELECT plan(91);

CREATE TEMP TABLE k (name text PRIMARY KEY, id uuid, key text, hash text);
INSERT INTO k
SELECT p, (t.j ->> 'id')::uuid, t.j ->> 'key', encode(sha256(convert_to(t.j ->> 'key', 'UTF8')), 'hex')
  FROM unnest(ARRAY['read', 'write']) AS p,
       LATERAL api.create_api_key('holds-' || p, ARRAY[p], 100000, NULL) AS t(j);
CREATE TEMP TABLE res (name text PRIMARY KEY, status integer, body jsonb, replayed boolean);

SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com') \g /dev/null
SELECT * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com') \g /dev/null
SELECT * FROM api.create_user('ca201000-0000-4000-8000-000000000003', 'carol', 'carol@example.com') \g /dev/null
SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 100) \g /dev/null

CREATE FUNCTION pg_temp.bal(u uuid) RETURNS jsonb LANGUAGE sql AS $$
    SELECT api.get_balance(u)::jsonb - 'user_id' - 'username' - 'updated_at' - 'is_frozen'
$$;

-- ---------------------------------------------------------------- create_hold
INSERT INTO res SELECT 'h1', * FROM api.create_hold(
    'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 30, 'order 17',
    idempotency_key => '40000000-0000-4000-8000-000000000001',
    api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => 'corr-h1');
SELECT is((SELECT (status, replayed) FROM res WHERE name = 'h1'), (201, false), 'create_hold answers 201');
SELECT is((SELECT body - 'hold_id' - 'expires_at' - 'created_at' FROM res WHERE name = 'h1'),
          '{"status": "pending", "from_user_id": "a11ce000-0000-4000-8000-000000000001",
            "to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "30.00000000",
            "captured_amount": "0.00000000", "memo": "order 17", "transfer_id": null, "settled_at": null,
            "version": 1}'::jsonb,
          'the new hold is pending, with nothing captured');
SELECT is((SELECT (body ->> 'expires_at')::timestamptz - (body ->> 'created_at')::timestamptz FROM res WHERE name = 'h1'),
          interval '1 hour', 'a hold expires after 3600 seconds by default');
SELECT is(pg_temp.bal('a11ce000-0000-4000-8000-000000000001'),
          '{"balance": "100.00000000", "available": "70.00000000", "held": "30.00000000"}'::jsonb,
          'the hold reserves: available falls, the posted balance does not move');
SELECT is(pg_temp.bal('b0b00000-0000-4000-8000-000000000002'),
          '{"balance": "0.00000000", "available": "0.00000000", "held": "0.00000000"}'::jsonb,
          'the receiver gets nothing yet');
SELECT is(api.get_hold((SELECT (body ->> 'hold_id')::uuid FROM res WHERE name = 'h1'),
                       (SELECT hash FROM k WHERE name = 'read'))::jsonb,
          (SELECT body FROM res WHERE name = 'h1'), 'get_hold answers the hold as create_hold did');
SELECT results_eq(
    $$SELECT aggregate_type, version, event_type, data ->> 'amount', correlation_id FROM ledger.events
       WHERE aggregate_id = (SELECT (body ->> 'hold_id')::uuid FROM res WHERE name = 'h1')$$,
    $$VALUES ('hold', 1::bigint, 'HoldCreated', '30.00000000', 'corr-h1')$$,
    'creating a hold is an event of the hold');
SELECT is((SELECT count(*)::int FROM ledger.ledger_entries WHERE created_at >= (SELECT (body ->> 'created_at')::timestamptz FROM res WHERE name = 'h1')),
          0, 'and no journal line: no money moves');
SELECT results_eq(
    $$SELECT action, resource_type, after_state ->> 'from_held', row_hash IS NOT NULL FROM ledger.audit_log
       WHERE resource_id = (SELECT body ->> 'hold_id' FROM res WHERE name = 'h1')$$,
    $$VALUES ('hold.create', 'hold', '30.00000000', true)$$, 'and an audit row with its hash');
SELECT is((SELECT after_state FROM ledger.audit_log
            WHERE resource_id = (SELECT body ->> 'hold_id' FROM res WHERE name = 'h1')),
          (SELECT body || '{"from_held": "30.00000000"}'::jsonb FROM res WHERE name = 'h1'),
          'whose after state is the hold as answered, with what the sender holds');

-- ---------------------------------------------------------------- idempotency
INSERT INTO res SELECT 'h1-again', * FROM api.create_hold(
    'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 30, 'order 17',
    idempotency_key => '40000000-0000-4000-8000-000000000001',
    api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001');
SELECT is((SELECT (status, body, replayed) FROM res WHERE name = 'h1-again'),
          (SELECT (status, body, true) FROM res WHERE name = 'h1'), 'the same key replays the first answer');
SELECT is((SELECT count(*)::int FROM ledger.holds), 1, 'and creates no second hold');
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'b0b00000-0000-4000-8000-000000000002', 31, 'order 17',
                   idempotency_key => '40000000-0000-4000-8000-000000000001',
                   api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
                   request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4091', NULL, 'the same key for another hold is idempotency_conflict');

-- ---------------------------------------------------------------- reserved money cannot be spent
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001',
                   'ca201000-0000-4000-8000-000000000003', 70.00000001,
                   request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4002', NULL, 'a transfer cannot spend reserved ATP');
SELECT throws_ok($$SELECT * FROM api.burn('a11ce000-0000-4000-8000-000000000001', 70.00000001)$$,
                 'L4002', NULL, 'a burn cannot retire reserved ATP');
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'ca201000-0000-4000-8000-000000000003', 70.00000001,
                   request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4002', NULL, 'a second hold cannot reserve reserved ATP');
SELECT is(pg_temp.bal('a11ce000-0000-4000-8000-000000000001') ->> 'available', '70.00000000',
          'and nothing changed');

-- ---------------------------------------------------------------- create_hold errors
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'b0b00000-0000-4000-8000-000000000002', 1, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4032', NULL, 'only the sender may create a hold');
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'b0b00000-0000-4000-8000-000000000002', 1)$$,
                 'L4032', NULL, 'a hold without an acting user is unauthorized_transfer (psql too)');
SELECT throws_ok(format($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'b0b00000-0000-4000-8000-000000000002', %s,
                   request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$, a),
                 'L4001', NULL, 'a hold of ' || a || ' is invalid_request')
  FROM unnest(ARRAY['0', '-1', '0.000000001', '1000000000001', 'NULL']) AS a;
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'a11ce000-0000-4000-8000-000000000001', 1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4001', NULL, 'a hold needs two users');
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   NULL, 1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4001', NULL, 'a hold needs a receiver');
SELECT throws_ok($$SELECT * FROM api.create_hold(NULL, 'b0b00000-0000-4000-8000-000000000002', 1)$$,
                 'L4001', 'from_user_id is required', 'a hold needs a sender (a DBA''s call, no acting user)');
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'b0b00000-0000-4000-8000-000000000002', 1, repeat('m', 501),
                   request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4001', NULL, 'a memo over 500 characters is invalid_request');
SELECT throws_ok(format($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'b0b00000-0000-4000-8000-000000000002', 1, expires_in_seconds => %s,
                   request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$, s),
                 'L4001', NULL, 'expires_in_seconds ' || s || ' is invalid_request')
  FROM unnest(ARRAY['0', '-5', '2592001']) AS s;
SELECT lives_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'b0b00000-0000-4000-8000-000000000002', 1, expires_in_seconds => 2592000,
                   request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                'expires_in_seconds may be 30 days');
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'deadbeef-0000-4000-8000-000000000000', 1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4041', NULL, 'a hold for an unknown user is user_not_found');
SELECT throws_ok($$SELECT * FROM api.create_hold('deadbeef-0000-4000-8000-000000000000',
                   'a11ce000-0000-4000-8000-000000000001', 1, request_user_id => 'deadbeef-0000-4000-8000-000000000000')$$,
                 'L4041', NULL, 'a hold from an unknown user is user_not_found');
SELECT * FROM api.freeze_wallet('ca201000-0000-4000-8000-000000000003') \g /dev/null
SELECT throws_ok($$SELECT * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
                   'ca201000-0000-4000-8000-000000000003', 1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4003', NULL, 'a hold towards a frozen wallet is account_frozen');
SELECT * FROM api.unfreeze_wallet('ca201000-0000-4000-8000-000000000003') \g /dev/null

-- ---------------------------------------------------------------- capture_hold
CREATE TEMP TABLE h AS SELECT (body ->> 'hold_id')::uuid AS id FROM res WHERE name = 'h1';
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h), request_user_id => 'ca201000-0000-4000-8000-000000000003')$$,
                 'L4032', NULL, 'a third user cannot capture');
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h))$$,
                 'L4032', NULL, 'capturing needs an acting user');
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h), 30.00000001, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4001', NULL, 'capturing more than the hold is invalid_request');
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h), 0, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4001', NULL, 'capturing 0 is invalid_request');
SELECT throws_ok($$SELECT * FROM api.capture_hold('deadbeef-0000-4000-8000-000000000000', request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4042', NULL, 'capturing an unknown hold is not_found');
SELECT * FROM api.freeze_wallet('a11ce000-0000-4000-8000-000000000001') \g /dev/null
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h), request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4003', NULL, 'capturing from a frozen wallet is account_frozen');
SELECT * FROM api.unfreeze_wallet('a11ce000-0000-4000-8000-000000000001') \g /dev/null
SELECT * FROM api.freeze_wallet('b0b00000-0000-4000-8000-000000000002') \g /dev/null
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h), request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4003', NULL, 'capturing into a frozen wallet is account_frozen');
SELECT * FROM api.unfreeze_wallet('b0b00000-0000-4000-8000-000000000002') \g /dev/null

INSERT INTO res SELECT 'cap', * FROM api.capture_hold((SELECT id FROM h), 20,
    idempotency_key => '40000000-0000-4000-8000-000000000002',
    api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'b0b00000-0000-4000-8000-000000000002', correlation_id => 'corr-cap');
SELECT is((SELECT (status, replayed) FROM res WHERE name = 'cap'), (200, false), 'capture_hold answers 200');
SELECT is((SELECT body - 'transfer_id' - 'settled_at' - 'expires_at' - 'created_at' - 'hold_id' FROM res WHERE name = 'cap'),
          '{"status": "captured", "from_user_id": "a11ce000-0000-4000-8000-000000000001",
            "to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "30.00000000",
            "captured_amount": "20.00000000", "memo": "order 17", "version": 2}'::jsonb,
          'the hold is captured for 20 of its 30');
CREATE TEMP TABLE t AS SELECT (body ->> 'transfer_id')::uuid AS id FROM res WHERE name = 'cap';
SELECT isnt((SELECT id FROM t), NULL, 'with the transfer that moved it');
SELECT is(pg_temp.bal('a11ce000-0000-4000-8000-000000000001'),
          '{"balance": "80.00000000", "available": "79.00000000", "held": "1.00000000"}'::jsonb,
          'the sender paid 20 and got the other 10 back (1 is still held by the 30-day hold)');
SELECT is(pg_temp.bal('b0b00000-0000-4000-8000-000000000002') ->> 'balance', '20.00000000', 'the receiver got 20');
SELECT is(api.get_transfer((SELECT id FROM t))::jsonb - 'created_at' - 'refunded_amount',  -- refunds add it
          jsonb_build_object('transfer_id', (SELECT id FROM t), 'status', 'completed',
                             'from_user_id', 'a11ce000-0000-4000-8000-000000000001',
                             'to_user_id', 'b0b00000-0000-4000-8000-000000000002',
                             'amount', '20.00000000', 'memo', 'order 17'),
          'get_transfer finds the capture''s transfer');
SELECT is((api.get_history('a11ce000-0000-4000-8000-000000000001', 1)::jsonb -> 'items' -> 0) - 'created_at',
          jsonb_build_object('id', (SELECT id FROM t), 'kind', 'transfer_out', 'amount', '20.00000000',
                             'counterparty', 'b0b00000-0000-4000-8000-000000000002', 'memo', 'order 17',
                             'balance_after', '80.00000000', 'hold_id', (SELECT id FROM h)),
          'the sender''s history shows a transfer_out with the hold id');
SELECT is(api.get_history('b0b00000-0000-4000-8000-000000000002', 1) -> 'items' -> 0 ->> 'kind', 'transfer_in',
          'the receiver''s history shows a transfer_in');
SELECT is(api.get_history('b0b00000-0000-4000-8000-000000000002', 1) -> 'items' -> 0 ->> 'hold_id',
          (SELECT id::text FROM h), 'with the hold id');
SELECT results_eq(
    $$SELECT side, amount, kind, data ->> 'hold_id' FROM ledger.ledger_entries l
        JOIN ledger.events e ON e.id = l.event_id
       WHERE l.journal_id = (SELECT id FROM t) ORDER BY side DESC$$,
    $$VALUES ('debit', 20.00000000::numeric, 'transfer_out', (SELECT id::text FROM h)),
             ('credit', 20.00000000::numeric, 'transfer_in', (SELECT id::text FROM h))$$,
    'two journal lines move the captured amount, and their events name the hold');
SELECT results_eq(
    $$SELECT version, event_type, data ->> 'captured_amount', data ->> 'released_amount' FROM ledger.events
       WHERE aggregate_type = 'hold' AND aggregate_id = (SELECT id FROM h) ORDER BY version$$,
    $$VALUES (1::bigint, 'HoldCreated', NULL, NULL), (2::bigint, 'HoldCaptured', '20.00000000', '10.00000000')$$,
    'the capture is an event of the hold');
SELECT is((SELECT count(*)::int FROM ledger.audit_log WHERE action = 'hold.capture' AND correlation_id = 'corr-cap'),
          1, 'and has its audit row');
INSERT INTO res SELECT 'cap-again', * FROM api.capture_hold((SELECT id FROM h), 20,
    idempotency_key => '40000000-0000-4000-8000-000000000002',
    api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'b0b00000-0000-4000-8000-000000000002');
SELECT is((SELECT (status, body, replayed) FROM res WHERE name = 'cap-again'),
          (SELECT (status, body, true) FROM res WHERE name = 'cap'), 'a repeated capture replays its answer');
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h), 10,
                   idempotency_key => '40000000-0000-4000-8000-000000000002',
                   api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
                   request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4091', NULL, 'the capture''s key for another amount is idempotency_conflict');
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h), request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4095', NULL, 'a captured hold cannot be captured again');
SELECT throws_ok($$SELECT * FROM api.void_hold((SELECT id FROM h), request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4095', NULL, 'nor voided');

-- ---------------------------------------------------------------- void_hold
INSERT INTO res SELECT 'h2', * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
    'b0b00000-0000-4000-8000-000000000002', 50, request_user_id => 'a11ce000-0000-4000-8000-000000000001');
CREATE TEMP TABLE h2 AS SELECT (body ->> 'hold_id')::uuid AS id FROM res WHERE name = 'h2';
SELECT throws_ok($$SELECT * FROM api.void_hold((SELECT id FROM h2), request_user_id => 'ca201000-0000-4000-8000-000000000003')$$,
                 'L4032', NULL, 'a third user cannot void');
SELECT throws_ok($$SELECT * FROM api.void_hold('deadbeef-0000-4000-8000-000000000000', request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4042', NULL, 'voiding an unknown hold is not_found');
SELECT * FROM api.freeze_wallet('a11ce000-0000-4000-8000-000000000001') \g /dev/null
INSERT INTO res SELECT 'void', * FROM api.void_hold((SELECT id FROM h2),
    idempotency_key => '40000000-0000-4000-8000-000000000003',
    request_user_id => 'b0b00000-0000-4000-8000-000000000002');
SELECT * FROM api.unfreeze_wallet('a11ce000-0000-4000-8000-000000000001') \g /dev/null
SELECT is((SELECT (status, body ->> 'status', body ->> 'captured_amount') FROM res WHERE name = 'void'),
          (200, 'voided'::text, '0.00000000'::text), 'the receiver voids the hold, even with the sender frozen');
SELECT is(pg_temp.bal('a11ce000-0000-4000-8000-000000000001'),
          '{"balance": "80.00000000", "available": "79.00000000", "held": "1.00000000"}'::jsonb,
          'voiding releases all it reserved');
SELECT is((SELECT count(*)::int FROM ledger.events WHERE aggregate_id = (SELECT id FROM h2) AND event_type = 'HoldVoided'),
          1, 'the void is an event of the hold');
SELECT is((SELECT count(*)::int FROM ledger.audit_log WHERE action = 'hold.void' AND resource_id = (SELECT id::text FROM h2)),
          1, 'and has its audit row');
SELECT is((SELECT (s.body::jsonb, s.replayed) FROM api.void_hold((SELECT id FROM h2),
              idempotency_key => '40000000-0000-4000-8000-000000000003',
              request_user_id => 'b0b00000-0000-4000-8000-000000000002') s),
          (SELECT (body, true) FROM res WHERE name = 'void'), 'a repeated void replays its answer');
SELECT throws_ok($$SELECT * FROM api.void_hold((SELECT id FROM h2),
                   idempotency_key => '40000000-0000-4000-8000-000000000003',
                   request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4091', NULL, 'the void''s key for another acting user is idempotency_conflict');
SELECT throws_ok($$SELECT * FROM api.void_hold((SELECT id FROM h2), request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4095', NULL, 'a voided hold cannot be voided again');
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h2), request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4095', NULL, 'nor captured');

-- ---------------------------------------------------------------- expiry
INSERT INTO res SELECT 'h3', * FROM api.create_hold('a11ce000-0000-4000-8000-000000000001',
    'ca201000-0000-4000-8000-000000000003', 9, expires_in_seconds => 1,
    request_user_id => 'a11ce000-0000-4000-8000-000000000001');
CREATE TEMP TABLE h3 AS SELECT (body ->> 'hold_id')::uuid AS id FROM res WHERE name = 'h3';
SELECT is(api.get_hold((SELECT id FROM h3)) ->> 'status', 'pending', 'a new short hold is pending');
-- The clock, driven: the hold's second has passed.
UPDATE ledger.holds SET expires_at = now() - interval '1 second' WHERE id = (SELECT id FROM h3);
SELECT is(api.get_hold((SELECT id FROM h3)) ->> 'status', 'expired', 'past expires_at it reads as expired');
SELECT throws_ok($$SELECT * FROM api.capture_hold((SELECT id FROM h3), request_user_id => 'ca201000-0000-4000-8000-000000000003')$$,
                 'L4095', NULL, 'an expired hold cannot be captured');
SELECT throws_ok($$SELECT * FROM api.void_hold((SELECT id FROM h3), request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4095', NULL, 'nor voided');
SELECT is(pg_temp.bal('a11ce000-0000-4000-8000-000000000001') ->> 'held', '10.00000000',
          'until maintenance runs, it still reserves');
SELECT is(api.verify_projections() -> 'held_mismatches', '[]'::jsonb, 'and verify counts it as pending');
SELECT lives_ok($$SELECT * FROM api.delete_user('ca201000-0000-4000-8000-000000000003')$$,
                'a hold past expires_at, not yet released, no longer keeps its receiver from being deleted');
SELECT throws_ok(format('SELECT api.expire_holds(10, %L)', (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'a write key may not expire holds');
SET LOCAL ROLE atp_app;
SELECT is(api.run_maintenance(correlation_id => 'corr-expire') -> 'holds_expired', '1'::jsonb,
          'maintenance expires the hold');
RESET ROLE;
SELECT is(pg_temp.bal('a11ce000-0000-4000-8000-000000000001'),
          '{"balance": "80.00000000", "available": "79.00000000", "held": "1.00000000"}'::jsonb,
          'and releases what it reserved');
SELECT is(api.get_hold((SELECT id FROM h3))::jsonb - 'hold_id' - 'expires_at' - 'created_at' - 'settled_at',
          '{"status": "expired", "from_user_id": "a11ce000-0000-4000-8000-000000000001",
            "to_user_id": "ca201000-0000-4000-8000-000000000003", "amount": "9.00000000",
            "captured_amount": "0.00000000", "memo": null, "transfer_id": null, "version": 2}'::jsonb,
          'the hold is expired, settled once');
SELECT results_eq($$SELECT event_type, correlation_id FROM ledger.events WHERE aggregate_id = (SELECT id FROM h3) AND version = 2$$,
                  $$VALUES ('HoldExpired'::text, 'corr-expire'::text)$$, 'the expiry is an event of the hold');
SELECT is((SELECT count(*)::int FROM ledger.audit_log WHERE action = 'hold.expire'), 1, 'with its audit row');
SELECT is(api.expire_holds(), 0::bigint, 'a second run finds nothing to expire');
SELECT throws_ok('SELECT api.expire_holds(-1)', 'L4001', 'max_holds must not be negative (NULL: no limit)',
                 'a negative max_holds is invalid_request');
SELECT is(api.verify_projections() ->> 'ok', 'true', 'released after its receiver was deleted, the books verify');
SELECT throws_ok($$SELECT * FROM api.delete_user('a11ce000-0000-4000-8000-000000000001')$$,
                 'L4096', NULL, 'the sender of a pending hold cannot be deleted (before its balance counts)');

-- ---------------------------------------------------------------- get_hold
SELECT throws_ok($$SELECT api.get_hold('deadbeef-0000-4000-8000-000000000000')$$, 'L4042', NULL,
                 'an unknown hold is not_found');
SELECT is(api.get_hold((SELECT id FROM h))::jsonb, (SELECT body FROM res WHERE name = 'cap'),
          'get_hold answers a captured hold as the capture did');

-- ---------------------------------------------------------------- verify and rebuild held
SELECT is(api.verify_projections() ->> 'ok', 'true', 'the books verify with holds');
UPDATE ledger.balances SET held = held + 5
 WHERE account_id = (SELECT id FROM ledger.accounts WHERE user_id = 'a11ce000-0000-4000-8000-000000000001');
SELECT is((SELECT (v ->> 'ok', v -> 'held_mismatches' -> 0 ->> 'held', v -> 'held_mismatches' -> 0 ->> 'pending_holds')
             FROM api.verify_projections() v),
          ('false'::text, '6.00000000'::text, '1.00000000'::text), 'verify finds held that differs from the pending holds');
SELECT is(api.rebuild_projections() -> 'changed' -> 0 ->> 'held', '1.00000000', 'rebuild puts held back');
SELECT is(api.verify_projections() ->> 'ok', 'true', 'and the books verify again');

SELECT * FROM finish();
ROLLBACK;
