-- Reads: get_balance (now and as_of, with snapshots), get_history (order, kinds, balance_after,
-- cursor pagination) and get_transfer. (list_events needs committed transactions: 16_event_feed.sql.)
BEGIN;
SELECT plan(59);

CREATE TEMP TABLE k (name text PRIMARY KEY, id uuid, key text, hash text);
INSERT INTO k
SELECT 'read', (t.j ->> 'id')::uuid, t.j ->> 'key', encode(sha256(convert_to(t.j ->> 'key', 'UTF8')), 'hex')
  FROM api.create_api_key('reads', ARRAY['read'], 100000, NULL) AS t(j);
CREATE TEMP TABLE res (name text PRIMARY KEY, status integer, body jsonb, replayed boolean);
-- Moments between movements, with the balance alice (or dave) had then.
CREATE TEMP TABLE cp (who text, n integer, ts timestamptz, balance numeric, PRIMARY KEY (who, n));

SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com') \g /dev/null
INSERT INTO cp VALUES ('alice', 1, clock_timestamp(), 0);
SELECT * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com') \g /dev/null
INSERT INTO res SELECT 'mint', * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 100, 'grant');
INSERT INTO cp VALUES ('alice', 2, clock_timestamp(), 100);
INSERT INTO res SELECT 'out', * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                                                  30, 'dinner', request_user_id => 'a11ce000-0000-4000-8000-000000000001');
INSERT INTO cp VALUES ('alice', 3, clock_timestamp(), 70);
INSERT INTO res SELECT 'in', * FROM api.transfer('b0b00000-0000-4000-8000-000000000002', 'a11ce000-0000-4000-8000-000000000001',
                                                 5, 'back', request_user_id => 'b0b00000-0000-4000-8000-000000000002');
INSERT INTO cp VALUES ('alice', 4, clock_timestamp(), 75);
INSERT INTO res SELECT 'burn', * FROM api.burn('a11ce000-0000-4000-8000-000000000001', 10, 'tidy');
INSERT INTO cp VALUES ('alice', 5, clock_timestamp(), 65);

-- ---------------------------------------------------------------- get_balance now
SELECT is(api.get_balance('a11ce000-0000-4000-8000-000000000001', api_key_hash => (SELECT hash FROM k WHERE name = 'read'))::jsonb
              - 'updated_at',
          '{"user_id": "a11ce000-0000-4000-8000-000000000001", "username": "alice", "balance": "65.00000000",
            "available": "65.00000000", "held": "0.00000000", "is_frozen": false}'::jsonb,
          'get_balance shows the current balance with 8 decimals, available and held');
SELECT is(api.get_balance('a11ce000-0000-4000-8000-000000000001') ->> 'updated_at',
          (SELECT body ->> 'created_at' FROM res WHERE name = 'burn'),
          'updated_at is the time of the last movement, RFC 3339 UTC');
SELECT throws_ok($$SELECT api.get_balance('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4041', NULL, 'get_balance of an unknown user is user_not_found');
SELECT throws_ok($$SELECT api.get_balance('00000000-0000-0000-0000-000000000001')$$,
                 'L4041', NULL, 'system accounts have no balance to show');
SELECT throws_ok($$SELECT api.get_balance(NULL)$$, 'L4001', NULL, 'get_balance needs a user_id');

-- ---------------------------------------------------------------- get_balance as_of
SELECT results_eq(
    $$SELECT n, api.get_balance('a11ce000-0000-4000-8000-000000000001', as_of => ts) ->> 'balance' FROM cp
       WHERE who = 'alice' ORDER BY n$$,
    $$SELECT n, balance::numeric(21, 8)::text FROM cp WHERE who = 'alice' ORDER BY n$$,
    'as_of gives the balance at each moment between movements');
SELECT is(api.get_balance('a11ce000-0000-4000-8000-000000000001', as_of => (SELECT ts FROM cp WHERE who = 'alice' AND n = 3))::jsonb
              - 'user_id' - 'username',
          jsonb_build_object('balance', '70.00000000',
                             'as_of', ledger.rfc3339((SELECT ts FROM cp WHERE who = 'alice' AND n = 3)),
                             'updated_at', (SELECT body ->> 'created_at' FROM res WHERE name = 'out')),
          'as_of echoes the moment and names the last movement before it');
SELECT is(api.get_balance('a11ce000-0000-4000-8000-000000000001',
                          as_of => (SELECT ts FROM cp WHERE who = 'alice' AND n = 5))
              ->> 'balance',
          api.get_balance('a11ce000-0000-4000-8000-000000000001') ->> 'balance',
          'as_of after the last movement equals the balance now');
SELECT throws_ok($$SELECT api.get_balance('a11ce000-0000-4000-8000-000000000001', as_of => now())$$,
                 'L4041', NULL, 'as_of before the user existed is user_not_found');
SELECT throws_ok($$SELECT api.get_balance('a11ce000-0000-4000-8000-000000000001', as_of => clock_timestamp() + interval '1 hour')$$,
                 'L4001', NULL, 'as_of in the future is refused');
SELECT throws_ok($$SELECT api.get_balance('deadbeef-0000-4000-8000-000000000000', as_of => now())$$,
                 'L4041', NULL, 'as_of of an unknown user is user_not_found');
SELECT throws_ok($$SELECT api.get_balance('a11ce000-0000-4000-8000-000000000001', as_of => '-infinity')$$,
                 'L4041', 'user a11ce000-0000-4000-8000-000000000001 did not exist at -infinity',
                 'a moment with no RFC 3339 form (from psql) is named as it was given');

-- ---------------------------------------------------------------- snapshots: dave gets 205 mints of 1, 2, ..., 205 ATP
SELECT * FROM api.create_user('da7e0000-0000-4000-8000-000000000004', 'dave', 'dave@example.com') \g /dev/null
INSERT INTO cp VALUES ('dave', 0, clock_timestamp(), 0);
DO $$
BEGIN
    FOR i IN 1..205 LOOP
        PERFORM api.mint('da7e0000-0000-4000-8000-000000000004', i);
        INSERT INTO cp VALUES ('dave', i, clock_timestamp(), i * (i + 1) / 2);
    END LOOP;
END
$$;
CREATE TEMP TABLE dave_wallet AS SELECT id FROM ledger.accounts WHERE user_id = 'da7e0000-0000-4000-8000-000000000004';

SELECT results_eq(
    $$SELECT s.version, s.balance, s.event_created_at = e.created_at
        FROM ledger.snapshots s JOIN ledger.events e ON e.aggregate_id = s.account_id AND e.version = s.version
       WHERE s.account_id = (SELECT id FROM dave_wallet) ORDER BY s.version$$,
    $$VALUES (100::bigint, 4950::numeric, true), (200, 19900, true)$$,
    'a wallet leaves a snapshot at versions 100 and 200, holding the balance of that version');
SELECT is((SELECT count(*)::int FROM cp
            WHERE who = 'dave'
              AND api.get_balance('da7e0000-0000-4000-8000-000000000004', as_of => ts) ->> 'balance'
                  IS DISTINCT FROM balance::numeric(21, 8)::text),
          0, 'as_of agrees with the balance at each of 206 moments, before, between and after the snapshots');
-- A changed snapshot changes the answers it serves, and only those: proof that as_of starts from it.
UPDATE ledger.snapshots SET balance = balance + 1000 WHERE account_id = (SELECT id FROM dave_wallet) AND version = 100;
SELECT results_eq(
    $$SELECT n, (api.get_balance('da7e0000-0000-4000-8000-000000000004', as_of => ts) ->> 'balance')::numeric - balance
        FROM cp WHERE who = 'dave' AND n IN (98, 99, 150, 198, 199, 205) ORDER BY n$$,
    $$VALUES (98, 0::numeric), (99, 1000), (150, 1000), (198, 1000), (199, 0), (205, 0)$$,
    'as_of between versions 100 and 199 replays from the version-100 snapshot, later ones from version 200');
SELECT is(jsonb_array_length(api.verify_projections() -> 'snapshot_mismatches'), 1, 'verify_projections finds the changed snapshot');
UPDATE ledger.snapshots SET balance = balance - 1000 WHERE account_id = (SELECT id FROM dave_wallet) AND version = 100;
-- And it stops before the next snapshot: no event from there on is read, even one whose time says it should be
-- (version 150 moved back in time, which no writer can do), so a moment far back in a long history costs 99 events at
-- most, where the time filter alone had the scan go through every later event.
CREATE TEMP TABLE moved AS SELECT created_at FROM ledger.events
 WHERE aggregate_id = (SELECT id FROM dave_wallet) AND version = 150;
SET LOCAL session_replication_role = replica;  -- past the trigger that refuses changes to events
UPDATE ledger.events SET created_at = (SELECT ts FROM cp WHERE who = 'dave' AND n = 50)
 WHERE aggregate_id = (SELECT id FROM dave_wallet) AND version = 150;
SELECT is(api.get_balance('da7e0000-0000-4000-8000-000000000004',
                          as_of => (SELECT ts FROM cp WHERE who = 'dave' AND n = 60)) ->> 'balance',
          '1830.00000000', 'as_of before version 100 reads no event of version 100 or later');
UPDATE ledger.events SET created_at = (SELECT created_at FROM moved)
 WHERE aggregate_id = (SELECT id FROM dave_wallet) AND version = 150;
SET LOCAL session_replication_role = origin;

-- ---------------------------------------------------------------- get_history
CREATE TEMP TABLE h AS
SELECT n::int, i FROM jsonb_array_elements(api.get_history('a11ce000-0000-4000-8000-000000000001',
                                                           api_key_hash => (SELECT hash FROM k WHERE name = 'read'))::jsonb
                                           -> 'items') WITH ORDINALITY AS x(i, n);
SELECT results_eq(
    $$SELECT i ->> 'kind', i ->> 'amount', i ->> 'counterparty', i ->> 'memo', i ->> 'balance_after' FROM h ORDER BY n$$,
    $$VALUES ('burn', '10.00000000', '00000000-0000-0000-0000-000000000001', 'tidy', '65.00000000'),
             ('transfer_in', '5.00000000', 'b0b00000-0000-4000-8000-000000000002', 'back', '75.00000000'),
             ('transfer_out', '30.00000000', 'b0b00000-0000-4000-8000-000000000002', 'dinner', '70.00000000'),
             ('mint', '100.00000000', '00000000-0000-0000-0000-000000000001', 'grant', '100.00000000')$$,
    'history is newest first: kind, amount, counterparty, memo and balance after each movement');
SELECT results_eq(
    $$SELECT i ->> 'id', i ->> 'created_at' FROM h ORDER BY n$$,
    $$SELECT body ->> 'burn_id', body ->> 'created_at' FROM res WHERE name = 'burn'
      UNION ALL SELECT body ->> 'transfer_id', body ->> 'created_at' FROM res WHERE name = 'in'
      UNION ALL SELECT body ->> 'transfer_id', body ->> 'created_at' FROM res WHERE name = 'out'
      UNION ALL SELECT body ->> 'mint_id', body ->> 'created_at' FROM res WHERE name = 'mint'$$,
    'each item carries the id and time of its mint, transfer or burn');
SELECT is(api.get_history('a11ce000-0000-4000-8000-000000000001')::jsonb - 'items',
          '{"user_id": "a11ce000-0000-4000-8000-000000000001", "next_cursor": null}'::jsonb,
          'when everything fits on one page there is no next_cursor');
SELECT is(api.get_history('a11ce000-0000-4000-8000-000000000001', "limit" => 4)::jsonb -> 'next_cursor', 'null'::jsonb,
          'a page that ends exactly at the last item has no next_cursor');
SELECT is(jsonb_array_length(api.get_history('a11ce000-0000-4000-8000-000000000001', "limit" => 3)::jsonb -> 'items'), 3,
          'limit caps the page');
SELECT is(api.get_history('a11ce000-0000-4000-8000-000000000001',
                          cursor => api.get_history('a11ce000-0000-4000-8000-000000000001', "limit" => 3) ->> 'next_cursor')::jsonb
              -> 'items',
          jsonb_build_array((SELECT i FROM h WHERE n = 4)),
          'the next page holds the rest');
SELECT is(api.get_history('b0b00000-0000-4000-8000-000000000002', "limit" => 1,
                          cursor => api.get_history('b0b00000-0000-4000-8000-000000000002', "limit" => 1) ->> 'next_cursor')::jsonb,
          jsonb_build_object('user_id', 'b0b00000-0000-4000-8000-000000000002', 'next_cursor', NULL,
                             'items', jsonb_build_array(jsonb_build_object(
                                 'id', (SELECT body ->> 'transfer_id' FROM res WHERE name = 'out'),
                                 'kind', 'transfer_in', 'amount', '30.00000000',
                                 'counterparty', 'a11ce000-0000-4000-8000-000000000001', 'memo', 'dinner',
                                 'balance_after', '30.00000000',
                                 'created_at', (SELECT body ->> 'created_at' FROM res WHERE name = 'out')))),
          'the receiver sees the same transfer as transfer_in');

-- Page through dave's 205 movements, 50 at a time.
CREATE FUNCTION pg_temp.all_pages(u uuid, page_size integer)
RETURNS TABLE (n bigint, page integer, item jsonb) LANGUAGE plpgsql AS $$
DECLARE
    _cursor text;
    _page jsonb;
    _pages integer := 0;
BEGIN
    LOOP
        _page := api.get_history(u, page_size, _cursor);
        _pages := _pages + 1;
        RETURN QUERY SELECT x.o, _pages, x.i FROM jsonb_array_elements(_page -> 'items') WITH ORDINALITY AS x(i, o);
        _cursor := _page ->> 'next_cursor';
        EXIT WHEN _cursor IS NULL OR _pages > 100;
    END LOOP;
END
$$;
CREATE TEMP TABLE pages AS
SELECT row_number() OVER (ORDER BY page, n) AS pos, page, item FROM pg_temp.all_pages('da7e0000-0000-4000-8000-000000000004', 50);
SELECT results_eq($$SELECT page, count(*) FROM pages GROUP BY page ORDER BY page$$,
                  $$VALUES (1, 50::bigint), (2, 50), (3, 50), (4, 50), (5, 5)$$,
                  'following next_cursor gives pages of 50, 50, 50, 50 and 5');
SELECT set_eq($$SELECT item ->> 'id' FROM pages$$,
              $$SELECT journal_id::text FROM ledger.ledger_entries WHERE account_id = (SELECT id FROM dave_wallet)$$,
              'the pages hold every movement of the wallet');
SELECT is((SELECT count(DISTINCT item ->> 'id')::int FROM pages), 205, 'and each one exactly once');
SELECT is((SELECT count(*)::int FROM pages
            WHERE item ->> 'amount' <> (206 - pos)::numeric(21, 8)::text
               OR item ->> 'balance_after' <> ((206 - pos) * (207 - pos) / 2)::numeric(21, 8)::text),
          0, 'in newest-first order, each with the balance after it');
-- On a large store the plan cache keeps get_history's generic plan (bench/README.md, third
-- pass); the first calls of a session plan it for their values. Both must page alike.
SET plan_cache_mode = force_generic_plan;
CREATE TEMP TABLE pages_generic AS
SELECT row_number() OVER (ORDER BY page, n) AS pos, page, item FROM pg_temp.all_pages('da7e0000-0000-4000-8000-000000000004', 50);
RESET plan_cache_mode;
SELECT results_eq($$SELECT pos, page, item FROM pages_generic ORDER BY pos$$,
                  $$SELECT pos, page, item FROM pages ORDER BY pos$$,
                  'with generic plans, following next_cursor gives the same pages');

SELECT is(api.get_history('b0b00000-0000-4000-8000-000000000002', "limit" => 200) ->> 'next_cursor', NULL,
          'limit 200 is allowed');
SELECT throws_ok(format('SELECT api.get_history(%L, "limit" => %s)', 'a11ce000-0000-4000-8000-000000000001', l),
                 'L4001', NULL, 'get_history refuses limit ' || l)
  FROM unnest(ARRAY['0', '201', '-1', 'NULL']) AS l;
SELECT throws_ok(format('SELECT api.get_history(%L, cursor => %L)', 'a11ce000-0000-4000-8000-000000000001', c),
                 'L4001', NULL, 'get_history refuses cursor ' || quote_literal(c))
  FROM unnest(ARRAY['abc', '-5', '1.5', '', '1234567890123456789']) AS c;
SELECT throws_ok($$SELECT api.get_history('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4041', NULL, 'get_history of an unknown user is user_not_found');
SELECT * FROM api.create_user('e0000000-0000-4000-8000-000000000005', 'erin', 'erin@example.com') \g /dev/null
SELECT is(api.get_history('e0000000-0000-4000-8000-000000000005')::jsonb,
          '{"user_id": "e0000000-0000-4000-8000-000000000005", "items": [], "next_cursor": null}'::jsonb,
          'a new user has an empty history');

-- The caller and the wallet are read by one statement (api.get_balance, api.get_history): the
-- refusal still comes before any answer about the user, and a deleted user has no wallet.
SELECT throws_ok($$SELECT api.get_history(NULL)$$, 'L4001', NULL, 'get_history needs a user_id');
SELECT throws_ok(format('SELECT api.%s(%L, api_key_hash => %L)', f, u, repeat('0', 64)),
                 'L4011', NULL, f || ' with an unknown key is refused before the user is looked up')
  FROM unnest(ARRAY['get_balance', 'get_history']) AS f,
       unnest(ARRAY['a11ce000-0000-4000-8000-000000000001', 'deadbeef-0000-4000-8000-000000000000']) AS u;
SELECT * FROM api.create_user('f0000000-0000-4000-8000-000000000006', 'frank', 'frank@example.com') \g /dev/null
SELECT * FROM api.delete_user('f0000000-0000-4000-8000-000000000006') \g /dev/null
SELECT throws_ok(format('SELECT api.%s(%L)', f, 'f0000000-0000-4000-8000-000000000006'),
                 'L4041', NULL, f || ' of a deleted user is user_not_found')
  FROM unnest(ARRAY['get_balance', 'get_history']) AS f;

-- ---------------------------------------------------------------- get_transfer
SELECT is(api.get_transfer((SELECT (body ->> 'transfer_id')::uuid FROM res WHERE name = 'out'),
                           api_key_hash => (SELECT hash FROM k WHERE name = 'read'))::jsonb,
          (SELECT body || '{"refunded_amount": "0.00000000"}' FROM res WHERE name = 'out'),
          'get_transfer returns the transfer as the transfer call did, with refunded_amount');
SELECT throws_ok($$SELECT api.get_transfer('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4042', NULL, 'an unknown transfer is not_found');
SELECT throws_ok(format('SELECT api.get_transfer(%L)', (SELECT body ->> 'mint_id' FROM res WHERE name = 'mint')),
                 'L4042', NULL, 'a mint is not a transfer');

-- A NULL id (possible from psql, never over HTTP) is a missing argument, not "user  not found".
SELECT throws_ok(format('SELECT * FROM api.%s', c), 'L4001', m, 'NULL id: ' || c)
  FROM (VALUES ('get_user(NULL)', 'user_id is required'),
               ('update_user(NULL, display_name => ''x'')', 'user_id is required'),
               ('delete_user(NULL)', 'user_id is required'),
               ('get_hold(NULL)', 'hold_id is required'),
               ('capture_hold(NULL, request_user_id => gen_random_uuid())', 'hold_id is required'),
               ('void_hold(NULL, request_user_id => gen_random_uuid())', 'hold_id is required'),
               ('get_transfer(NULL)', 'transfer_id is required'),
               ('refund_transfer(NULL, request_user_id => gen_random_uuid())', 'transfer_id is required')) AS t(c, m);

SELECT * FROM finish();
ROLLBACK;
