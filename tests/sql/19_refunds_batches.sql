-- Refunds and batches: api.refund_transfer, api.transfer_batch, api.mint_batch; every error,
-- the failing leg's index in DETAIL, the lines, events, audit rows and idempotent replays.
BEGIN;
SELECT plan(51);

CREATE TEMP TABLE k (name text PRIMARY KEY, hash text);
INSERT INTO k
SELECT p, encode(sha256(convert_to(t.j ->> 'key', 'UTF8')), 'hex')
  FROM unnest(ARRAY['write', 'admin', 'read']) AS p,
       LATERAL api.create_api_key('rb-' || p, ARRAY[p], 100000, NULL) AS t(j);
CREATE TEMP TABLE res (name text PRIMARY KEY, status integer, body jsonb, replayed boolean);

SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com') \g /dev/null
SELECT * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com') \g /dev/null
SELECT * FROM api.create_user('ca201000-0000-4000-8000-000000000003', 'carol', 'carol@example.com') \g /dev/null
CREATE FUNCTION pg_temp.wallet(u uuid) RETURNS numeric LANGUAGE sql AS $$
    SELECT b.balance FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
     WHERE a.user_id = u AND a.account_type IN ('user_wallet', 'fee_income')
$$;
-- The SQLSTATE and DETAIL of a call that fails.
CREATE FUNCTION pg_temp.failure(call text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE _state text; _detail text;
BEGIN
    EXECUTE call;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _detail = PG_EXCEPTION_DETAIL;
    RETURN _state || ' ' || COALESCE(_detail, '');
END
$$;

-- ---------------------------------------------------------------- batch mint
INSERT INTO res SELECT 'mints', * FROM api.mint_batch(
    '[{"to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "100"},
      {"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": 5}]', 'airdrop',
    idempotency_key => '11111111-1111-4111-8111-111111111111', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'));
SELECT is(status, 201, 'mint_batch answers 201') FROM res WHERE name = 'mints';
SELECT is(body ->> 'amount', '105.00000000', 'mint_batch reports the sum') FROM res WHERE name = 'mints';
SELECT is(jsonb_array_length(body -> 'mints'), 2, 'one mint per leg') FROM res WHERE name = 'mints';
SELECT is(pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'), 5::numeric, 'a leg credits its wallet');
SELECT is((SELECT count(*) FROM ledger.audit_log WHERE resource_id = body ->> 'batch_id'), 1::bigint,
          'one audit row per batch') FROM res WHERE name = 'mints';
SELECT is((SELECT count(*) FROM ledger.events WHERE data ->> 'batch_id' = body ->> 'batch_id'), 4::bigint,
          'two events per leg carry the batch id') FROM res WHERE name = 'mints';
SELECT is((SELECT after_state FROM ledger.audit_log WHERE resource_id = body ->> 'batch_id'),
          body || '{"issued": "105.00000000"}'::jsonb, 'the audit row holds the answer and what is issued')
  FROM res WHERE name = 'mints';
SELECT is((SELECT body::jsonb FROM api.mint_batch(
    '[{"to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "100"},
      {"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": 5}]', 'airdrop',
    idempotency_key => '11111111-1111-4111-8111-111111111111', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'))),
    (SELECT body FROM res WHERE name = 'mints'), 'a replayed batch mint returns the same body');
SELECT throws_ok($$SELECT * FROM api.mint_batch('[{"to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "1"}]',
    idempotency_key => '11111111-1111-4111-8111-111111111111', api_key_hash => (SELECT hash FROM k WHERE name = 'admin'))$$,
    'L4091', NULL, 'the key with another batch is idempotency_conflict');
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 100::numeric, 'the replay moved nothing');
SELECT is(pg_temp.failure($$SELECT api.mint_batch('[{"to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "1"},
    {"to_user_id": "dead0000-0000-4000-8000-000000000000", "amount": "1"}]')$$), 'L4041 {"index" : 1}',
    'an unknown receiver fails the batch mint and names its leg');
SELECT is(pg_temp.failure($$SELECT api.mint_batch('[{"to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "999999999999"}]')$$),
    'L4004 {"index" : 0}', 'a leg above the limit is balance_limit_exceeded');
SELECT is(pg_temp.failure($$SELECT api.mint_batch('[{"to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "1", "memo": "x"}]')$$),
    'L4001 {"index" : 0}', 'a mint leg takes no memo');
SELECT is(pg_temp.failure($$SELECT api.mint_batch('[]')$$), 'L4001 ', 'an empty batch mint is invalid_request');
SELECT is(pg_temp.failure(format($$SELECT api.mint_batch(%L)$$,
    (SELECT jsonb_agg(jsonb_build_object('to_user_id', 'a11ce000-0000-4000-8000-000000000001', 'amount', '1'))
       FROM generate_series(1, 1001)))), 'L4001 ', 'more than 1,000 legs is invalid_request');
SELECT throws_ok($$SELECT * FROM api.mint_batch('[{"to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "1"}]',
    idempotency_key => gen_random_uuid(), api_key_hash => (SELECT hash FROM k WHERE name = 'write'))$$,
    'L4031', NULL, 'a batch mint needs admin');

-- ---------------------------------------------------------------- batch transfer
INSERT INTO res SELECT 'batch', * FROM api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "30", "memo": "item"},
      {"to_user_id": "00000000-0000-0000-0000-000000000002", "amount": "2", "memo": "fee"},
      {"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "8"}]',
    idempotency_key => '22222222-2222-4222-8222-222222222222', api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => 'corr-batch');
SELECT is(status, 201, 'transfer_batch answers 201') FROM res WHERE name = 'batch';
SELECT is(body ->> 'amount', '40.00000000', 'transfer_batch reports the sum') FROM res WHERE name = 'batch';
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 60::numeric, 'the sender pays every leg');
SELECT is(pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'), 43::numeric, 'a receiver of two legs gets both');
SELECT is(pg_temp.wallet('00000000-0000-0000-0000-000000000002'), 2::numeric, 'the fee leg credits SYSTEM_FEE');
SELECT is(api.get_transfer((body -> 'transfers' -> 1 ->> 'transfer_id')::uuid) ->> 'to_user_id',
          '00000000-0000-0000-0000-000000000002', 'each leg is a transfer of its own') FROM res WHERE name = 'batch';
SELECT is((SELECT count(*) FROM ledger.audit_log WHERE resource_id = body ->> 'batch_id' AND correlation_id = 'corr-batch'),
          1::bigint, 'one audit row for the batch') FROM res WHERE name = 'batch';
SELECT is((SELECT after_state FROM ledger.audit_log WHERE resource_id = body ->> 'batch_id'),
          body || '{"from_balance": "60.00000000"}'::jsonb, 'which holds every leg and the sender''s balance')
  FROM res WHERE name = 'batch';
SELECT is((SELECT body::jsonb FROM api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "30", "memo": "item"},
      {"to_user_id": "00000000-0000-0000-0000-000000000002", "amount": "2", "memo": "fee"},
      {"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "8"}]',
    idempotency_key => '22222222-2222-4222-8222-222222222222', api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')), (SELECT body FROM res WHERE name = 'batch'),
    'a replayed batch returns the same body');
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 60::numeric, 'and moves nothing');
SELECT is(pg_temp.failure($$SELECT api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "50"},
      {"to_user_id": "ca201000-0000-4000-8000-000000000003", "amount": "10.00000001"}]',
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$), 'L4002 {"index" : 1}',
    'the leg that overdraws is named');
SELECT is(pg_temp.failure($$SELECT api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "1"}]',
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$), 'L4001 {"index" : 0}',
    'a leg to the sender itself is invalid_request');
SELECT is(pg_temp.failure($$SELECT api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "1.123456789"}]',
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$), 'L4001 {"index" : 0}',
    'an amount with 9 decimals is invalid_request');
SELECT is(pg_temp.failure($$SELECT api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "1"}]',
    request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$), 'L4032 ',
    'the acting user must be the sender');
SELECT throws_ok($$SELECT api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "-1"}]',
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$, 'L4001',
    'transfers[0]: amount must be greater than 0', 'a negative leg is named as such, not as a malformed number');
SELECT throws_ok($$SELECT api.transfer_batch(NULL, '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "1"}]',
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$, 'L4001', 'from_user_id is required',
    'a batch without a sender is incomplete, not unauthorized');
SELECT throws_ok(format($$SELECT api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "0.%s1"}]',
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$, repeat('0', 20000)), 'L4001',
    'transfers[0]: amount has more digits than any amount can have',
    'an amount beyond any numeric input is named, not an overflow');
SELECT is(pg_temp.failure(format($$SELECT api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": " %s1000.%s "}]',
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$, repeat('0', 20000), repeat('0', 20000))),
    'L4002 {"index" : 0}', 'zeros that change nothing may be many (1000 is read, and more than alice has)');
SELECT is(pg_temp.failure($$SELECT api.transfer_batch('dead0000-0000-4000-8000-000000000000',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "1"}]',
    request_user_id => 'dead0000-0000-4000-8000-000000000000')$$), 'L4041 ',
    'an unknown sender is user_not_found');
SELECT api.freeze_wallet('ca201000-0000-4000-8000-000000000003') \g /dev/null
SELECT is(pg_temp.failure($$SELECT api.transfer_batch('a11ce000-0000-4000-8000-000000000001',
    '[{"to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "1"},
      {"to_user_id": "ca201000-0000-4000-8000-000000000003", "amount": "1"}]',
    request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$), 'L4003 {"index" : 1}',
    'a frozen receiver fails the batch');
SELECT api.unfreeze_wallet('ca201000-0000-4000-8000-000000000003') \g /dev/null
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 60::numeric, 'failed batches moved nothing');

-- ---------------------------------------------------------------- refunds
INSERT INTO res SELECT 'refund', * FROM api.refund_transfer(
    (SELECT (body -> 'transfers' -> 0 ->> 'transfer_id')::uuid FROM res WHERE name = 'batch'), 10, 'damaged',
    idempotency_key => '33333333-3333-4333-8333-333333333333', api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'b0b00000-0000-4000-8000-000000000002');
SELECT is(status, 201, 'refund_transfer answers 201') FROM res WHERE name = 'refund';
SELECT is(body - 'refund_id' - 'created_at' - 'transfer_id',
          '{"status": "completed", "from_user_id": "b0b00000-0000-4000-8000-000000000002",
            "to_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "10.00000000", "reason": "damaged"}'::jsonb,
          'a refund goes from the receiver back to the sender') FROM res WHERE name = 'refund';
SELECT results_eq(
    format($$SELECT a.user_id, l.side, l.kind, l.amount, l.refund_of::text FROM ledger.ledger_entries l
               JOIN ledger.accounts a ON a.id = l.account_id WHERE l.journal_id = %L ORDER BY l.side DESC$$,
           (SELECT body ->> 'refund_id' FROM res WHERE name = 'refund')),
    format($$VALUES ('b0b00000-0000-4000-8000-000000000002'::uuid, 'debit', 'refund_out', 10::numeric, %1$L),
                    ('a11ce000-0000-4000-8000-000000000001', 'credit', 'refund_in', 10, %1$L)$$,
           (SELECT body -> 'transfers' -> 0 ->> 'transfer_id' FROM res WHERE name = 'batch')),
    'a refund is one journal of refund_out and refund_in lines linked to the transfer');
SELECT is(api.get_transfer((body ->> 'transfer_id')::uuid) ->> 'refunded_amount', '10.00000000',
          'get_transfer shows refunded_amount') FROM res WHERE name = 'refund';
SELECT is(api.get_history('a11ce000-0000-4000-8000-000000000001', 1) -> 'items' -> 0 ->> 'transfer_id',
          (SELECT body ->> 'transfer_id' FROM res WHERE name = 'refund'), 'the history item names the transfer');
SELECT is((SELECT body::jsonb FROM api.refund_transfer((SELECT (body ->> 'transfer_id')::uuid FROM res WHERE name = 'refund'),
    10, 'damaged', idempotency_key => '33333333-3333-4333-8333-333333333333',
    api_key_hash => (SELECT hash FROM k WHERE name = 'write'), request_user_id => 'b0b00000-0000-4000-8000-000000000002')),
    (SELECT body FROM res WHERE name = 'refund'), 'a replayed refund returns the same body');
SELECT throws_ok(format($$SELECT api.refund_transfer(%L, 20.00000001, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
    (SELECT body ->> 'transfer_id' FROM res WHERE name = 'refund')), 'L4006', NULL,
    'refunds never add up to more than the transfer');
SELECT is((SELECT body ->> 'amount' FROM api.refund_transfer((SELECT (body ->> 'transfer_id')::uuid FROM res WHERE name = 'refund'),
    request_user_id => 'b0b00000-0000-4000-8000-000000000002')), '20.00000000', 'no amount refunds the rest');
SELECT throws_ok(format($$SELECT api.refund_transfer(%L, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
    (SELECT body ->> 'transfer_id' FROM res WHERE name = 'refund')), 'L4006', NULL,
    'a fully refunded transfer cannot be refunded again');
SELECT throws_ok(format($$SELECT api.refund_transfer(%L, 1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
    (SELECT body -> 'transfers' -> 2 ->> 'transfer_id' FROM res WHERE name = 'batch')), 'L4032', NULL,
    'only the receiver may refund');
SELECT throws_ok($$SELECT api.refund_transfer(gen_random_uuid(), request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
    'L4042', NULL, 'an unknown transfer is not_found');
SELECT throws_ok(format($$SELECT api.refund_transfer(%L, 0, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
    (SELECT body -> 'transfers' -> 2 ->> 'transfer_id' FROM res WHERE name = 'batch')), 'L4001', NULL,
    'a zero refund is invalid_request');
SELECT ok((api.verify_projections() ->> 'ok')::boolean, 'the books agree after refunds and batches');
-- A refund line written by hand past the transfer's amount (as the owner could) is found.
INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after, kind, created_at,
                                   refund_of)
SELECT gen_random_uuid(), 0, l.account_id, 'debit', 1, 0, 'refund_out', now(), l.journal_id
  FROM ledger.ledger_entries l
 WHERE l.journal_id = (SELECT (body -> 'transfers' -> 0 ->> 'transfer_id')::uuid FROM res WHERE name = 'batch')
   AND l.side = 'credit';
SELECT is(api.verify_projections() -> 'over_refunded' -> 0 ->> 'refunded', '31.00000000',
          'verify_projections finds a transfer refunded beyond its amount');
SELECT * FROM finish();
ROLLBACK;
