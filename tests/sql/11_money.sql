-- Money: mint, burn and transfer with their double-entry lines, events and audit rows; the balance
-- rules (insufficient balance, frozen wallets, the 10^12 limit) and the amount rules.
-- Accounting model (migrations/0002): wallets are credit-normal, mint_source is debit-normal, so a
-- mint debits mint_source and credits the wallet, a burn does the reverse.
BEGIN;
SELECT plan(95);

CREATE TEMP TABLE k (name text PRIMARY KEY, id uuid, key text, hash text);
INSERT INTO k
SELECT p, (t.j ->> 'id')::uuid, t.j ->> 'key', encode(sha256(convert_to(t.j ->> 'key', 'UTF8')), 'hex')
  FROM unnest(ARRAY['write', 'admin']) AS p,
       LATERAL api.create_api_key('money-' || p, ARRAY[p], 100000, NULL) AS t(j);
CREATE TEMP TABLE res (name text PRIMARY KEY, status integer, body jsonb, replayed boolean);

SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com') \g /dev/null
SELECT * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com') \g /dev/null
SELECT * FROM api.create_user('ca201000-0000-4000-8000-000000000003', 'carol', 'carol@example.com') \g /dev/null

-- A balance as a number, by user id (the wallet) or the issuer (mint_source).
CREATE FUNCTION pg_temp.wallet(u uuid) RETURNS numeric LANGUAGE sql AS $$
    SELECT b.balance FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
     WHERE a.user_id = u AND a.account_type = 'user_wallet'
$$;
CREATE FUNCTION pg_temp.issued() RETURNS numeric LANGUAGE sql AS $$
    SELECT balance FROM ledger.balances WHERE account_id = '00000000-0000-0000-0000-000000000101'
$$;

-- ---------------------------------------------------------------- the 10^12 limit, on an empty ledger
SELECT is((SELECT body ->> 'amount' FROM api.mint('ca201000-0000-4000-8000-000000000003', 1000000000000,
                                                 idempotency_key => gen_random_uuid(),
                                                 api_key_hash => (SELECT hash FROM k WHERE name = 'admin'))),
          '1000000000000.00000000', 'minting exactly 1,000,000,000,000 ATP works');
SELECT is(api.get_balance('ca201000-0000-4000-8000-000000000003') ->> 'balance', '1000000000000.00000000',
          'a wallet can hold exactly the limit');
SELECT throws_ok($$SELECT * FROM api.mint('ca201000-0000-4000-8000-000000000003', 0.00000001)$$,
                 'L4004', NULL, 'one unit above the limit is balance_limit_exceeded');
SELECT is((SELECT body ->> 'amount' FROM api.burn('ca201000-0000-4000-8000-000000000003', 1000000000000)),
          '1000000000000.00000000', 'the whole limit can be burned again');
SELECT is(pg_temp.issued(), 0::numeric, 'after burning everything, nothing is issued');

-- ---------------------------------------------------------------- mint
INSERT INTO res SELECT 'mint', * FROM api.mint(
    'a11ce000-0000-4000-8000-000000000001', 100.5, 'welcome grant',
    idempotency_key => gen_random_uuid(), api_key_hash => (SELECT hash FROM k WHERE name = 'admin'),
    request_user_id => 'f0000000-0000-4000-8000-00000000000f', correlation_id => 'corr-mint',
    client_addr => '192.0.2.7');
SELECT is(status, 201, 'mint answers 201') FROM res WHERE name = 'mint';
SELECT is(body - 'mint_id' - 'created_at',
          '{"status": "completed", "to_user_id": "a11ce000-0000-4000-8000-000000000001",
            "amount": "100.50000000", "reason": "welcome grant"}'::jsonb,
          'mint returns the amount with 8 decimals')
  FROM res WHERE name = 'mint';
SELECT matches(body ->> 'created_at', '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$', 'mint created_at is RFC 3339 UTC')
  FROM res WHERE name = 'mint';
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 100.5::numeric, 'mint credits the wallet');
SELECT is(pg_temp.issued(), 100.5::numeric, 'mint grows the issued-ATP account');
SELECT results_eq(
    format($$SELECT a.account_type, l.side, l.amount, l.balance_after, l.kind, l.counterparty_user_id, l.memo,
                    l.created_at = %L::timestamptz
               FROM ledger.ledger_entries l JOIN ledger.accounts a ON a.id = l.account_id
              WHERE l.journal_id = %L ORDER BY l.side$$,
           (SELECT body ->> 'created_at' FROM res WHERE name = 'mint'), (SELECT body ->> 'mint_id' FROM res WHERE name = 'mint')),
    $$VALUES ('user_wallet', 'credit', 100.5::numeric, 100.5::numeric, 'mint', '00000000-0000-0000-0000-000000000001'::uuid,
              'welcome grant', true),
             ('mint_source', 'debit', 100.5, 100.5, 'mint', 'a11ce000-0000-4000-8000-000000000001', 'welcome grant', true)$$,
    'a mint is one journal: debit mint_source, credit the wallet, same amount, at the reported time');
SELECT results_eq(
    format($$SELECT a.account_type, e.event_type, e.data ->> 'amount', e.version, e.actor, e.api_key_id,
                    e.request_user_id, e.correlation_id
               FROM ledger.events e JOIN ledger.accounts a ON a.id = e.aggregate_id
              WHERE e.data ->> 'journal_id' = %L ORDER BY e.id$$,
           (SELECT body ->> 'mint_id' FROM res WHERE name = 'mint')),
    $$SELECT 'mint_source'::text, 'AccountDebited'::text, '100.50000000'::text, 4::bigint, 'postgres'::text,
             (SELECT id FROM k WHERE name = 'admin'), 'f0000000-0000-4000-8000-00000000000f'::uuid, 'corr-mint'::text
      UNION ALL
      SELECT 'user_wallet', 'AccountCredited', '100.50000000', 2, 'postgres',
             (SELECT id FROM k WHERE name = 'admin'), 'f0000000-0000-4000-8000-00000000000f', 'corr-mint'$$,
    'a mint appends AccountDebited and AccountCredited, stamped with the caller');
SELECT results_eq(
    $$SELECT resource_type, resource_id, before_state, after_state, actor, api_key_id, correlation_id, client_addr
        FROM ledger.audit_log WHERE action = 'mint' AND correlation_id = 'corr-mint'$$,
    $$SELECT 'mint'::text, (SELECT body ->> 'mint_id' FROM res WHERE name = 'mint'),
             '{"balance": "0.00000000", "issued": "0.00000000"}'::jsonb,
             (SELECT body FROM res WHERE name = 'mint') || '{"balance": "100.50000000", "issued": "100.50000000"}'::jsonb,
             'postgres'::text, (SELECT id FROM k WHERE name = 'admin'), 'corr-mint'::text, '192.0.2.7'::inet$$,
    'a mint is audited with the balances before and after');

-- ---------------------------------------------------------------- transfer
INSERT INTO res SELECT 'transfer', * FROM api.transfer(
    'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 30.25, 'lunch',
    idempotency_key => gen_random_uuid(), api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
    request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => 'corr-transfer');
SELECT is(status, 201, 'transfer answers 201') FROM res WHERE name = 'transfer';
SELECT is(body - 'transfer_id' - 'created_at',
          '{"status": "completed", "from_user_id": "a11ce000-0000-4000-8000-000000000001",
            "to_user_id": "b0b00000-0000-4000-8000-000000000002", "amount": "30.25000000", "memo": "lunch"}'::jsonb,
          'transfer returns both users, the amount with 8 decimals and the memo')
  FROM res WHERE name = 'transfer';
SELECT results_eq(
    $$SELECT pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'),
             pg_temp.issued()$$,
    $$VALUES (70.25::numeric, 30.25::numeric, 100.5::numeric)$$,
    'a transfer moves the amount from one wallet to the other and issues nothing');
SELECT results_eq(
    format($$SELECT a.user_id, l.side, l.amount, l.balance_after, l.kind, l.counterparty_user_id, l.memo
               FROM ledger.ledger_entries l JOIN ledger.accounts a ON a.id = l.account_id
              WHERE l.journal_id = %L ORDER BY l.side DESC$$,
           (SELECT body ->> 'transfer_id' FROM res WHERE name = 'transfer')),
    $$VALUES ('a11ce000-0000-4000-8000-000000000001'::uuid, 'debit', 30.25::numeric, 70.25::numeric, 'transfer_out',
              'b0b00000-0000-4000-8000-000000000002'::uuid, 'lunch'),
             ('b0b00000-0000-4000-8000-000000000002', 'credit', 30.25, 30.25, 'transfer_in',
              'a11ce000-0000-4000-8000-000000000001', 'lunch')$$,
    'a transfer debits the sender''s wallet and credits the receiver''s, each line naming the other user');
SELECT results_eq(
    $$SELECT event_type, version, request_user_id, api_key_id FROM ledger.events
       WHERE correlation_id = 'corr-transfer' ORDER BY id$$,
    $$SELECT 'AccountDebited'::text, 3::bigint, 'a11ce000-0000-4000-8000-000000000001'::uuid, (SELECT id FROM k WHERE name = 'write')
      UNION ALL SELECT 'AccountCredited', 2, 'a11ce000-0000-4000-8000-000000000001', (SELECT id FROM k WHERE name = 'write')$$,
    'a transfer appends the next version of each wallet, stamped with the acting user and key');
SELECT results_eq(
    $$SELECT before_state, after_state FROM ledger.audit_log WHERE action = 'transfer' AND correlation_id = 'corr-transfer'$$,
    $$SELECT '{"from_balance": "100.50000000", "to_balance": "0.00000000"}'::jsonb,
             (SELECT body FROM res WHERE name = 'transfer')
               || '{"from_balance": "70.25000000", "to_balance": "30.25000000"}'::jsonb$$,
    'a transfer is audited with both balances before and after');

-- The smallest unit and the longest memo. The body as the function returns it (json, whose text the
-- HTTP layer sends): its fields in the order of the contract's Transfer schema, the id first.
CREATE TEMP TABLE smallest AS
SELECT body FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                              0.00000001, repeat('m', 500),
                              request_user_id => 'a11ce000-0000-4000-8000-000000000001');
SELECT is((SELECT body ->> 'amount' FROM smallest),
          '0.00000001', 'one hundred-millionth of an ATP can be sent, with a 500-character memo');
SELECT ok((SELECT body::text LIKE '{"transfer_id"%' FROM smallest),
          'the text of api.transfer''s body starts with {"transfer_id"');
SELECT is((SELECT array_agg(x.key ORDER BY x.n) FROM smallest, json_object_keys(body) WITH ORDINALITY AS x(key, n)),
          ARRAY['transfer_id', 'status', 'from_user_id', 'to_user_id', 'amount', 'memo', 'created_at'],
          'api.transfer''s body holds the fields of a transfer in the contract''s order');
SELECT results_eq(
    $$SELECT pg_temp.wallet('a11ce000-0000-4000-8000-000000000001')::text, pg_temp.wallet('b0b00000-0000-4000-8000-000000000002')::text$$,
    $$VALUES ('70.24999999', '30.25000001')$$,
    'balances are exact to 8 decimals');

-- ---------------------------------------------------------------- burn
INSERT INTO res SELECT 'burn', * FROM api.burn(
    'a11ce000-0000-4000-8000-000000000001', 0.24999999, 'correction',
    idempotency_key => gen_random_uuid(), api_key_hash => (SELECT hash FROM k WHERE name = 'admin'),
    correlation_id => 'corr-burn');
SELECT is(status, 201, 'burn answers 201') FROM res WHERE name = 'burn';
SELECT is(body - 'burn_id' - 'created_at',
          '{"status": "completed", "from_user_id": "a11ce000-0000-4000-8000-000000000001",
            "amount": "0.24999999", "reason": "correction"}'::jsonb,
          'burn returns the amount with 8 decimals')
  FROM res WHERE name = 'burn';
SELECT results_eq(
    format($$SELECT a.account_type, l.side, l.amount, l.balance_after, l.kind, l.counterparty_user_id
               FROM ledger.ledger_entries l JOIN ledger.accounts a ON a.id = l.account_id
              WHERE l.journal_id = %L ORDER BY l.side$$,
           (SELECT body ->> 'burn_id' FROM res WHERE name = 'burn')),
    $$VALUES ('mint_source', 'credit', 0.24999999::numeric, 100.25000001::numeric, 'burn',
              'a11ce000-0000-4000-8000-000000000001'::uuid),
             ('user_wallet', 'debit', 0.24999999, 70, 'burn', '00000000-0000-0000-0000-000000000001')$$,
    'a burn debits the wallet and credits mint_source: both shrink');
SELECT results_eq(
    $$SELECT before_state, after_state - 'burn_id' - 'created_at', api_key_id FROM ledger.audit_log
       WHERE action = 'burn' AND correlation_id = 'corr-burn'$$,
    $$SELECT '{"balance": "70.24999999", "issued": "100.50000000"}'::jsonb,
             '{"status": "completed", "from_user_id": "a11ce000-0000-4000-8000-000000000001", "amount": "0.24999999",
               "reason": "correction", "balance": "70.00000000", "issued": "100.25000001"}'::jsonb,
             (SELECT id FROM k WHERE name = 'admin')$$,
    'a burn is audited with the balances before and after');
SELECT is((SELECT sum(b.balance) FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
            WHERE a.account_type = 'user_wallet'),
          pg_temp.issued(), 'all wallets together hold exactly what was minted minus what was burned');
SELECT is((SELECT count(*)::int FROM (
              SELECT journal_id FROM ledger.ledger_entries GROUP BY journal_id
              HAVING count(*) <> 2 OR sum(amount) FILTER (WHERE side = 'debit') <> sum(amount) FILTER (WHERE side = 'credit')) j),
          0, 'every journal is two lines with equal debit and credit');

-- ---------------------------------------------------------------- insufficient balance
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                                              70.00000001, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4002', NULL, 'sending one unit more than the balance is insufficient_balance');
SELECT throws_ok($$SELECT * FROM api.transfer('ca201000-0000-4000-8000-000000000003', 'b0b00000-0000-4000-8000-000000000002',
                                              1, request_user_id => 'ca201000-0000-4000-8000-000000000003')$$,
                 'L4002', NULL, 'an empty wallet cannot send');
SELECT throws_ok($$SELECT * FROM api.burn('a11ce000-0000-4000-8000-000000000001', 70.00000001)$$,
                 'L4002', NULL, 'burning more than the balance is insufficient_balance');
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 70::numeric, 'refused requests moved nothing');

-- ---------------------------------------------------------------- amount rules
SELECT throws_ok(format($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001',
                                                     'b0b00000-0000-4000-8000-000000000002', %s,
                                                     request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$, a),
                 'L4001', NULL, 'transfer refuses amount ' || a)
  FROM unnest(ARRAY['0', '-1', '''NaN''::numeric', '''Infinity''::numeric', '1.000000001',
                    '1000000000000.00000001', 'NULL']) AS a;
SELECT throws_ok(format($$SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', %s)$$, a),
                 'L4001', NULL, 'mint refuses amount ' || a)
  FROM unnest(ARRAY['0', '-5', '0.000000001', 'NULL']) AS a;
SELECT throws_ok(format($$SELECT * FROM api.burn('a11ce000-0000-4000-8000-000000000001', %s)$$, a),
                 'L4001', NULL, 'burn refuses amount ' || a)
  FROM unnest(ARRAY['0', '1.123456789', 'NULL']) AS a;

-- ---------------------------------------------------------------- other request rules
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'a11ce000-0000-4000-8000-000000000001',
                                              1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4001', NULL, 'a transfer to oneself is refused');
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                                              1, repeat('m', 501), request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4001', NULL, 'a memo over 500 characters is refused');
SELECT throws_ok($$SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 1, repeat('r', 501))$$,
                 'L4001', NULL, 'a mint reason over 500 characters is refused');
SELECT throws_ok($$SELECT * FROM api.burn('a11ce000-0000-4000-8000-000000000001', 1, repeat('r', 501))$$,
                 'L4001', NULL, 'a burn reason over 500 characters is refused');
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                                              1, idempotency_key => gen_random_uuid(),
                                              api_key_hash => (SELECT hash FROM k WHERE name = 'write'),
                                              request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4032', NULL, 'the acting user must be the sender');
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                                              1, idempotency_key => gen_random_uuid(),
                                              api_key_hash => (SELECT hash FROM k WHERE name = 'write'))$$,
                 'L4032', NULL, 'a transfer without an acting user is refused');
SELECT throws_ok($$SELECT * FROM api.transfer('deadbeef-0000-4000-8000-000000000000', 'b0b00000-0000-4000-8000-000000000002',
                                              1, request_user_id => 'deadbeef-0000-4000-8000-000000000000')$$,
                 'L4041', NULL, 'an unknown sender is user_not_found');
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'deadbeef-0000-4000-8000-000000000000',
                                              1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4041', NULL, 'an unknown receiver is user_not_found');
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', '00000000-0000-0000-0000-000000000002',
                                              1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4041', NULL, 'a system user cannot receive a transfer');
SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', NULL,
                                              1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4001', NULL, 'to_user_id is required');
SELECT throws_ok($$SELECT * FROM api.mint('deadbeef-0000-4000-8000-000000000000', 1)$$,
                 'L4041', NULL, 'mint to an unknown user is user_not_found');
SELECT throws_ok($$SELECT * FROM api.mint('00000000-0000-0000-0000-000000000002', 1)$$,
                 'L4041', NULL, 'mint to a system user is user_not_found');
SELECT throws_ok($$SELECT * FROM api.mint(NULL, 1)$$, 'L4001', NULL, 'to_user_id is required for a mint');
SELECT throws_ok($$SELECT * FROM api.burn('deadbeef-0000-4000-8000-000000000000', 1)$$,
                 'L4041', NULL, 'burn from an unknown user is user_not_found');
SELECT throws_ok($$SELECT * FROM api.burn(NULL, 1)$$, 'L4001', NULL, 'from_user_id is required for a burn');

-- ---------------------------------------------------------------- frozen wallets
INSERT INTO res SELECT 'freeze', * FROM api.freeze_wallet(
    'b0b00000-0000-4000-8000-000000000002', 'ticket 42', idempotency_key => gen_random_uuid(),
    api_key_hash => (SELECT hash FROM k WHERE name = 'admin'), correlation_id => 'corr-freeze');
SELECT is(status, 200, 'freeze_wallet answers 200') FROM res WHERE name = 'freeze';
SELECT is(body - 'updated_at', api.get_user('b0b00000-0000-4000-8000-000000000002')::jsonb - 'updated_at',
          'freeze_wallet returns the user') FROM res WHERE name = 'freeze';
SELECT is(body -> 'is_frozen', 'true'::jsonb, 'the user shows a frozen wallet') FROM res WHERE name = 'freeze';
SELECT results_eq(
    $$SELECT event_type, data, api_key_id FROM ledger.events WHERE correlation_id = 'corr-freeze'$$,
    $$SELECT 'AccountFrozen'::text, '{"reason": "ticket 42"}'::jsonb, (SELECT id FROM k WHERE name = 'admin')$$,
    'freezing appends AccountFrozen with the reason');
SELECT results_eq(
    $$SELECT action, resource_id, before_state -> 'is_frozen', after_state -> 'is_frozen', after_state ->> 'reason'
        FROM ledger.audit_log WHERE correlation_id = 'corr-freeze'$$,
    $$VALUES ('wallet.freeze', 'b0b00000-0000-4000-8000-000000000002', 'false'::jsonb, 'true'::jsonb, 'ticket 42')$$,
    'freezing is audited');
SELECT is((SELECT body::jsonb -> 'is_frozen' FROM api.freeze_wallet('b0b00000-0000-4000-8000-000000000002', 'again',
                                                                    correlation_id => 'corr-freeze-again')),
          'true'::jsonb, 'freezing a frozen wallet succeeds');
SELECT is((SELECT count(*)::int FROM ledger.events WHERE correlation_id = 'corr-freeze-again')
          + (SELECT count(*)::int FROM ledger.audit_log WHERE correlation_id = 'corr-freeze-again'),
          0, 'freezing a frozen wallet records nothing');

SELECT throws_ok($$SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002',
                                              1, request_user_id => 'a11ce000-0000-4000-8000-000000000001')$$,
                 'L4003', NULL, 'a frozen wallet cannot receive');
SELECT throws_ok($$SELECT * FROM api.transfer('b0b00000-0000-4000-8000-000000000002', 'a11ce000-0000-4000-8000-000000000001',
                                              1, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                 'L4003', NULL, 'a frozen wallet cannot send');
SELECT throws_ok($$SELECT * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 1)$$,
                 'L4003', NULL, 'nothing can be minted into a frozen wallet');
SELECT throws_ok($$SELECT * FROM api.burn('b0b00000-0000-4000-8000-000000000002', 1)$$,
                 'L4003', NULL, 'nothing can be burned from a frozen wallet');
SELECT throws_like($$SELECT * FROM api.transfer('b0b00000-0000-4000-8000-000000000002', 'dead0000-0000-4000-8000-00000000beef',
                                                1, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                   '%dead0000-0000-4000-8000-00000000beef not found%',
                   'a frozen sender and an unknown receiver: not found wins over frozen');
SELECT throws_ok($$SELECT * FROM api.transfer('dead0000-0000-4000-8000-00000000beef', 'b0b00000-0000-4000-8000-000000000002',
                                              1, request_user_id => 'dead0000-0000-4000-8000-00000000beef')$$,
                 'L4041', NULL, 'an unknown sender and a frozen receiver: not found wins over frozen');
SELECT is(pg_temp.wallet('b0b00000-0000-4000-8000-000000000002'), 30.25000001::numeric,
          'the frozen wallet kept its balance');

INSERT INTO res SELECT 'unfreeze', * FROM api.unfreeze_wallet(
    'b0b00000-0000-4000-8000-000000000002', 'resolved', idempotency_key => gen_random_uuid(),
    api_key_hash => (SELECT hash FROM k WHERE name = 'admin'), correlation_id => 'corr-unfreeze');
SELECT is(status, 200, 'unfreeze_wallet answers 200') FROM res WHERE name = 'unfreeze';
SELECT is(body -> 'is_frozen', 'false'::jsonb, 'the wallet is no longer frozen') FROM res WHERE name = 'unfreeze';
SELECT results_eq(
    $$SELECT e.event_type, e.data, a.action FROM ledger.events e
        JOIN ledger.audit_log a ON a.correlation_id = e.correlation_id
       WHERE e.correlation_id = 'corr-unfreeze'$$,
    $$VALUES ('AccountUnfrozen', '{"reason": "resolved"}'::jsonb, 'wallet.unfreeze')$$,
    'unfreezing appends AccountUnfrozen and is audited');
SELECT is((SELECT body::jsonb -> 'is_frozen' FROM api.unfreeze_wallet('b0b00000-0000-4000-8000-000000000002',
                                                                      correlation_id => 'corr-unfreeze-again')),
          'false'::jsonb, 'unfreezing a wallet that is not frozen succeeds');
SELECT is((SELECT count(*)::int FROM ledger.events WHERE correlation_id = 'corr-unfreeze-again')
          + (SELECT count(*)::int FROM ledger.audit_log WHERE correlation_id = 'corr-unfreeze-again'),
          0, 'unfreezing an unfrozen wallet records nothing');
SELECT lives_ok($$SELECT * FROM api.transfer('b0b00000-0000-4000-8000-000000000002', 'a11ce000-0000-4000-8000-000000000001',
                                             0.25000001, request_user_id => 'b0b00000-0000-4000-8000-000000000002')$$,
                'an unfrozen wallet can send again');
SELECT is(pg_temp.wallet('a11ce000-0000-4000-8000-000000000001'), 70.25000001::numeric, 'and the money arrived');

SELECT throws_ok($$SELECT * FROM api.freeze_wallet('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4041', NULL, 'freezing an unknown user is user_not_found');
SELECT throws_ok($$SELECT * FROM api.freeze_wallet('00000000-0000-0000-0000-000000000001')$$,
                 'L4041', NULL, 'a system account cannot be frozen through the api');
SELECT throws_ok($$SELECT * FROM api.freeze_wallet(NULL)$$, 'L4001', NULL, 'freeze_wallet needs a user_id');
SELECT throws_ok($$SELECT * FROM api.freeze_wallet('a11ce000-0000-4000-8000-000000000001', repeat('r', 501))$$,
                 'L4001', NULL, 'a freeze reason over 500 characters is refused');
SELECT throws_ok($$SELECT * FROM api.unfreeze_wallet('deadbeef-0000-4000-8000-000000000000')$$,
                 'L4041', NULL, 'unfreezing an unknown user is user_not_found');
SELECT throws_ok($$SELECT * FROM api.unfreeze_wallet(NULL)$$, 'L4001', NULL, 'unfreeze_wallet needs a user_id');
SELECT throws_ok($$SELECT * FROM api.unfreeze_wallet('a11ce000-0000-4000-8000-000000000001', repeat('r', 501))$$,
                 'L4001', NULL, 'an unfreeze reason over 500 characters is refused');

SELECT is(api.verify_projections() -> 'ok', 'true'::jsonb, 'after all of it the books verify');

-- ---------------------------------------------------------------- what can be issued in all
-- mint_source is bounded by its type only (numeric(21,8): below 10^13), so that every total of
-- balances fits it too: the limit is a wallet's, so nine full wallets can be minted, a tenth cannot.
SELECT u.* FROM generate_series(0, 9) i,
       LATERAL api.create_user(('f0110000-0000-4000-8000-00000000000' || i)::uuid, 'full' || i,
                               'full' || i || '@example.com') u \g /dev/null
SELECT is((SELECT status FROM api.mint_batch(
              (SELECT jsonb_agg(jsonb_build_object('to_user_id', 'f0110000-0000-4000-8000-00000000000' || i,
                                                   'amount', '1000000000000'))
                 FROM generate_series(0, 8) i), 'nine full wallets')),
          201, 'nine full wallets can be minted in one batch');
SELECT throws_ok($$SELECT * FROM api.mint('f0110000-0000-4000-8000-000000000009', 1000000000000)$$, 'L4004',
                 'this would take the total issued above its limit of 9999999999999.99999999 ATP',
                 'a tenth would take the total issued beyond its type: balance_limit_exceeded, saying so');
SELECT throws_ok($$SELECT * FROM api.mint_batch('[{"to_user_id": "f0110000-0000-4000-8000-000000000009",
                                                   "amount": "1000000000000"}]')$$, 'L4004',
                 'mints[0]: this would take the total issued above its limit of 9999999999999.99999999 ATP',
                 'so would a batch leg, named by its index');
SELECT is(api.verify_projections() -> 'ok', 'true'::jsonb, 'the books verify with nine full wallets');

SELECT * FROM finish();
ROLLBACK;
