-- list_events: the global event feed. It shows only events of finished transactions, so a few
-- requests are committed first (this database is a fresh copy made for this file alone); everything
-- after BEGIN is rolled back.
SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com') \g /dev/null
SELECT * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com') \g /dev/null
SELECT api.create_api_key('feed-admin', ARRAY['admin'], 100000, NULL) ->> 'key' AS admin_key \gset
SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 50, 'seed', idempotency_key => gen_random_uuid(),
                       api_key_hash => encode(sha256(convert_to(:'admin_key', 'UTF8')), 'hex'),
                       correlation_id => 'corr-feed-mint') \g /dev/null
SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 10,
                           request_user_id => 'a11ce000-0000-4000-8000-000000000001') \g /dev/null
SELECT * FROM api.freeze_wallet('b0b00000-0000-4000-8000-000000000002') \g /dev/null

BEGIN;
SELECT plan(24);

CREATE TEMP TABLE k (name text PRIMARY KEY, hash text);
INSERT INTO k VALUES ('admin', encode(sha256(convert_to(:'admin_key', 'UTF8')), 'hex'));
-- Everything committed so far, in commit-safe feed order.
CREATE TEMP TABLE committed AS
SELECT row_number() OVER (ORDER BY tx_id, id) AS pos, id, tx_id FROM ledger.events;

CREATE TEMP TABLE feed AS
SELECT api.list_events("limit" => 1000, api_key_hash => (SELECT hash FROM k WHERE name = 'admin'))::jsonb AS j;
SELECT is((SELECT count(*)::int FROM committed), 12,
          'setup: 3 system accounts, 2 users with their wallets, a mint, a transfer and a freeze are committed');
SELECT results_eq($$SELECT (e ->> 'id')::bigint FROM feed, jsonb_array_elements(j -> 'events') e$$,
                  $$SELECT id FROM committed ORDER BY pos$$,
                  'list_events returns every committed event in transaction order');
SELECT is(j -> 'events' -> 0,
          jsonb_build_object('id', (SELECT id FROM committed WHERE pos = 1),
                             'cursor', (SELECT tx_id::text || '-' || id::text FROM committed WHERE pos = 1),
                             'aggregate_type', 'account', 'aggregate_id', '00000000-0000-0000-0000-000000000101',
                             'version', 1, 'event_type', 'AccountOpened',
                             'data', '{"user_id": "00000000-0000-0000-0000-000000000001", "account_type": "mint_source"}'::jsonb,
                             'actor', 'migration', 'api_key_id', NULL, 'request_user_id', NULL, 'correlation_id', NULL,
                             'created_at', (SELECT ledger.rfc3339(created_at) FROM ledger.events
                                             WHERE id = (SELECT id FROM committed WHERE pos = 1))),
          'an event shows its aggregate, version, type, data, who made it and when (RFC 3339 UTC)')
  FROM feed;
SELECT results_eq(
    $$SELECT e ->> 'event_type', e -> 'data' ->> 'amount', e ->> 'actor', e ->> 'correlation_id',
             e ->> 'api_key_id' = (SELECT id::text FROM ledger.api_keys WHERE name = 'feed-admin')
        FROM feed, jsonb_array_elements(j -> 'events') e WHERE e ->> 'correlation_id' = 'corr-feed-mint'$$,
    $$VALUES ('AccountDebited', '50.00000000', 'postgres', 'corr-feed-mint', true),
             ('AccountCredited', '50.00000000', 'postgres', 'corr-feed-mint', true)$$,
    'a mint shows as its two events, with the key and correlation id of the request');
SELECT is(j ->> 'next_cursor', j -> 'events' -> -1 ->> 'cursor', 'next_cursor is the cursor of the last event') FROM feed;
SELECT is(api.list_events(after => (SELECT j ->> 'next_cursor' FROM feed))::jsonb,
          jsonb_build_object('events', '[]'::jsonb, 'next_cursor', (SELECT j ->> 'next_cursor' FROM feed)),
          'after the last event the feed is empty and the cursor stays where it is');
SELECT is(api.list_events("limit" => 1000)::jsonb, (SELECT j FROM feed), 'a DBA reads the same feed without a key');

-- Follow next_cursor five at a time.
CREATE FUNCTION pg_temp.follow(page_size integer)
RETURNS TABLE (page integer, n bigint, event jsonb) LANGUAGE plpgsql AS $$
DECLARE
    _after text;
    _page jsonb;
    _pages integer := 0;
BEGIN
    LOOP
        _page := api.list_events(_after, page_size);
        _pages := _pages + 1;
        RETURN QUERY SELECT _pages, x.o, x.e FROM jsonb_array_elements(_page -> 'events') WITH ORDINALITY AS x(e, o);
        EXIT WHEN jsonb_array_length(_page -> 'events') = 0 OR _pages > 100;
        _after := _page ->> 'next_cursor';
    END LOOP;
END
$$;
CREATE TEMP TABLE followed AS SELECT * FROM pg_temp.follow(5);
SELECT results_eq($$SELECT page, count(*) FROM followed GROUP BY page ORDER BY page$$,
                  $$VALUES (1, 5::bigint), (2, 5), (3, 2)$$,
                  'pages of 5 hold 5, 5 and 2 events, then an empty page');
SELECT results_eq($$SELECT (event ->> 'id')::bigint FROM followed ORDER BY page, n$$,
                  $$SELECT id FROM committed ORDER BY pos$$,
                  'following next_cursor sees every committed event exactly once, in order');

-- Events of a transaction that has not finished are held back: here, this one.
SELECT * FROM api.create_user('ca201000-0000-4000-8000-000000000003', 'carol', 'carol@example.com') \g /dev/null
SELECT is(api.list_events(after => (SELECT j ->> 'next_cursor' FROM feed))::jsonb -> 'events', '[]'::jsonb,
          'events of a transaction still running are not in the feed yet');
SELECT is(jsonb_array_length(api.list_events("limit" => 1000)::jsonb -> 'events'), 12, 'nor in a read from the start');

SELECT is(jsonb_array_length(api.list_events("limit" => 1)::jsonb -> 'events'), 1, 'limit 1 is allowed');
SELECT throws_ok(format('SELECT api.list_events("limit" => %s)', l), 'L4001', NULL, 'list_events refuses limit ' || l)
  FROM unnest(ARRAY['0', '1001', '-1', 'NULL']) AS l;
SELECT throws_ok(format('SELECT api.list_events(after => %L)', c), 'L4001', NULL, 'list_events refuses cursor ' || quote_literal(c))
  FROM unnest(ARRAY['x', '12', '1-2-3', '-1-2', '', '1-', '12345678901234567890-1']) AS c;
SELECT is(api.list_events(after => '0-0', "limit" => 1) -> 'events' -> 0 ->> 'id', (SELECT id::text FROM committed WHERE pos = 1),
          'the cursor 0-0 is the start of the feed');

SELECT * FROM finish();
ROLLBACK;
