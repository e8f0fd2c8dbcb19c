-- The invariants that hold no matter who calls, each attacked by hand (as the table owner,
-- who has far more power than any caller) and shown to hold:
--   5. the sum of wallets equals minted minus burned      6. one execution per idempotency key
--   3. the projection equals the replay (verify, rebuild)    versions move by exactly one
--   2. no balance below 0 or above 10^12                  1. every journal balances
BEGIN;
SELECT plan(55);
SELECT tap_share();

SELECT set_config('tap.a', '0190aaaa-0000-7000-8000-00000000000a', true) IS NOT NULL AS _,
       set_config('tap.b', '0190aaaa-0000-7000-8000-00000000000b', true) IS NOT NULL AS _,
       set_config('tap.c', '0190aaaa-0000-7000-8000-00000000000c', true) IS NOT NULL AS _,
       set_config('tap.d', '0190aaaa-0000-7000-8000-00000000000d', true) IS NOT NULL AS _;
SELECT c.status = 201 AS _ FROM unnest(ARRAY['a', 'b', 'c', 'd']) AS u
 CROSS JOIN LATERAL api.create_user(current_setting('tap.' || u)::uuid, 'inv_' || u, 'inv_' || u || '@example.com') AS c;
SELECT set_config('tap.wa', ledger.wallet_of(current_setting('tap.a')::uuid)::text, true) IS NOT NULL AS _,
       set_config('tap.wb', ledger.wallet_of(current_setting('tap.b')::uuid)::text, true) IS NOT NULL AS _,
       set_config('tap.wd', ledger.wallet_of(current_setting('tap.d')::uuid)::text, true) IS NOT NULL AS _;

CREATE FUNCTION pg_temp.bal(account uuid) RETURNS numeric LANGUAGE sql AS
$$ SELECT balance FROM ledger.balances WHERE account_id = account $$;
CREATE FUNCTION pg_temp.wallet_bal(person text) RETURNS numeric LANGUAGE sql AS
$$ SELECT pg_temp.bal(ledger.wallet_of(current_setting('tap.' || person)::uuid)) $$;
CREATE FUNCTION pg_temp.next_version(account uuid) RETURNS bigint LANGUAGE sql AS
$$ SELECT version + 1 FROM ledger.balances WHERE account_id = account $$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pg_temp TO atp_owner;

-- ---------------------------------------------------------------------------------------
-- 5. The sum of all wallets equals everything minted minus everything burned. A series of
-- api calls (as a DBA), and the totals computed here from the inputs alone.
--   minted: 1000.5 + 250.25 + 0.00000001                   = 1250.75000001
--   burned: 200 + 0.00000002                               =  200.00000002
--   a: 1000.5 - 100.125 - 200                              =  700.375
--   b: 250.25 + 100.125 - 50.00000001                      =  300.37499999
--   c: 0.00000001 + 50.00000001 - 0.00000002               =   50
--   wallets: 700.375 + 300.37499999 + 50                   = 1050.74999999 = minted - burned
-- ---------------------------------------------------------------------------------------
SELECT status = 201 AS _ FROM api.mint(current_setting('tap.a')::uuid, 1000.5, 'grant');
SELECT status = 201 AS _ FROM api.mint(current_setting('tap.b')::uuid, 250.25, 'grant');
SELECT status = 201 AS _ FROM api.mint(current_setting('tap.c')::uuid, 0.00000001, 'dust');
SELECT status = 201 AS _ FROM api.transfer(current_setting('tap.a')::uuid, current_setting('tap.b')::uuid, 100.125,
                                           request_user_id => current_setting('tap.a')::uuid);
SELECT status = 201 AS _ FROM api.transfer(current_setting('tap.b')::uuid, current_setting('tap.c')::uuid, 50.00000001,
                                           request_user_id => current_setting('tap.b')::uuid);
SELECT status = 201 AS _ FROM api.burn(current_setting('tap.a')::uuid, 200, 'reversal');
SELECT status = 201 AS _ FROM api.burn(current_setting('tap.c')::uuid, 0.00000002, 'dust');
-- Refusals change nothing.
SELECT throws_ok($$SELECT * FROM api.transfer(current_setting('tap.a')::uuid, current_setting('tap.c')::uuid, 1000000,
                                              request_user_id => current_setting('tap.a')::uuid)$$,
                 'L4002', NULL, 'a transfer of more than the sender holds is refused');
SELECT throws_ok($$SELECT * FROM api.burn(current_setting('tap.b')::uuid, 300.375)$$,
                 'L4002', NULL, 'a burn of more than the wallet holds is refused');

SELECT is(pg_temp.wallet_bal('a'), 700.375, 'wallet a holds what its inputs say');
SELECT is(pg_temp.wallet_bal('b'), 300.37499999, 'wallet b holds what its inputs say');
SELECT is(pg_temp.wallet_bal('c'), 50.00000000, 'wallet c holds what its inputs say');
SELECT is((SELECT sum(b.balance) FROM ledger.balances b JOIN ledger.accounts a ON a.id = b.account_id
            WHERE a.account_type = 'user_wallet'),
          1250.75000001 - 200.00000002,
          'the sum of all wallets equals minted minus burned (1050.74999999)');
SELECT is(pg_temp.bal('00000000-0000-0000-0000-000000000101'), 1050.74999999,
          'mint_source (ATP issued) equals minted minus burned');
SELECT is((SELECT sum(amount) FROM ledger.ledger_entries WHERE kind = 'mint' AND side = 'credit'), 1250.75000001,
          'the journal records exactly what was minted');
SELECT is((SELECT sum(amount) FROM ledger.ledger_entries WHERE kind = 'burn' AND side = 'debit'), 200.00000002,
          'the journal records exactly what was burned');
SELECT is(api.verify_projections() -> 'supply',
          jsonb_build_object('minted', '1250.75000001', 'burned', '200.00000002',
                             'held', '1050.74999999', 'in_wallets', '1050.74999999'),
          'api.verify_projections reports the same supply');
SELECT is(api.verify_projections() ->> 'ok', 'true', 'and every check of api.verify_projections holds');

-- ---------------------------------------------------------------------------------------
-- 6. One execution per idempotency key (here a DBA's: scoped to the database role).
-- ---------------------------------------------------------------------------------------
SELECT set_config('tap.k', '0190aaaa-0000-7000-8000-0000000000e1', true) IS NOT NULL AS _;
CREATE TEMP TABLE idem AS
SELECT 1 AS n, * FROM api.mint(current_setting('tap.a')::uuid, 7, 'once', idempotency_key => current_setting('tap.k')::uuid);
INSERT INTO idem
SELECT 2, * FROM api.mint(current_setting('tap.a')::uuid, 7, 'once', idempotency_key => current_setting('tap.k')::uuid);
SELECT is((SELECT replayed FROM idem WHERE n = 1), false, 'the first call with the key executes');
SELECT is((SELECT replayed FROM idem WHERE n = 2), true, 'the second call with the key is a replay');
SELECT is((SELECT body::text FROM idem WHERE n = 2), (SELECT body::text FROM idem WHERE n = 1),
          'the replay returns the first response, as the same text');
SELECT is((SELECT count(*)::int FROM ledger.events WHERE data ->> 'journal_id' = (SELECT body ->> 'mint_id' FROM idem WHERE n = 1)),
          2, 'one set of events (one debit, one credit) for the key');
SELECT is((SELECT count(*)::int FROM ledger.events WHERE data ->> 'memo' = 'once'),
          2, 'and no other event of that request');
SELECT is(pg_temp.wallet_bal('a'), 707.375, 'the money moved once');
SELECT throws_ok($$SELECT * FROM api.mint(current_setting('tap.a')::uuid, 8, 'once',
                                          idempotency_key => current_setting('tap.k')::uuid)$$,
                 'L4091', NULL, 'the same key with a different amount is a conflict');
SELECT throws_ok($$SELECT * FROM api.burn(current_setting('tap.a')::uuid, 7, 'once',
                                          idempotency_key => current_setting('tap.k')::uuid)$$,
                 'L4091', NULL, 'the same key for another operation is a conflict');
SELECT is(pg_temp.wallet_bal('a'), 707.375, 'conflicts change nothing');

-- ---------------------------------------------------------------------------------------
-- 3. The projection equals the replay: corrupted by hand, found, rebuilt.
-- ---------------------------------------------------------------------------------------
SELECT is(api.verify_projections() ->> 'ok', 'true', 'before the corruption the books verify');
SET LOCAL ROLE atp_owner;
UPDATE ledger.balances SET balance = balance + 1 WHERE account_id = current_setting('tap.wa')::uuid;
UPDATE ledger.balances SET is_frozen = true WHERE account_id = current_setting('tap.wb')::uuid;
RESET ROLE;
SELECT is(api.verify_projections() ->> 'ok', 'false', 'a corrupted balance fails api.verify_projections');
SELECT is(ARRAY(SELECT m ->> 'account_id' FROM jsonb_array_elements(api.verify_projections() -> 'projection_mismatches') m
                 ORDER BY 1),
          ARRAY(SELECT unnest(ARRAY[current_setting('tap.wa'), current_setting('tap.wb')]) ORDER BY 1),
          'api.verify_projections names exactly the two corrupted accounts');
SELECT is((SELECT (m -> 'replayed' ->> 'balance')::numeric FROM jsonb_array_elements(api.verify_projections() -> 'projection_mismatches') m
            WHERE m ->> 'account_id' = current_setting('tap.wa')),
          707.375, 'and shows the replayed balance of the corrupted wallet');
SELECT is((api.rebuild_projections() ->> 'changed_accounts')::int, 2, 'api.rebuild_projections fixes two accounts');
SELECT is(api.verify_projections() ->> 'ok', 'true', 'after the rebuild the books verify');
SELECT is(pg_temp.wallet_bal('a'), 707.375, 'the rebuilt balance is the replayed one');
SELECT ok(NOT (SELECT is_frozen FROM ledger.balances WHERE account_id = current_setting('tap.wb')::uuid),
          'the rebuilt frozen flag is the replayed one');
SELECT is((SELECT count(*)::int FROM ledger.audit_log WHERE action = 'projections.rebuild'), 1,
          'the rebuild left an audit row');

-- ---------------------------------------------------------------------------------------
-- Versions: the api functions advance an aggregate by exactly one under its row lock (by
-- construction; no trigger). An event written around them by the owner is found by
-- api.verify_projections, and the attack is then rolled back.
-- ---------------------------------------------------------------------------------------
SELECT is(api.verify_projections() -> 'version_gaps', '[]'::jsonb, 'the api functions left no version gap');
SAVEPOINT attack;
SET LOCAL ROLE atp_owner;
INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor)
VALUES ('account', current_setting('tap.wa')::uuid, pg_temp.next_version(current_setting('tap.wa')::uuid) + 1,
        'AccountFrozen', '{}', 'test');
RESET ROLE;
SELECT is(ARRAY(SELECT g ->> 'account_id' FROM jsonb_array_elements(api.verify_projections() -> 'version_gaps') g),
          ARRAY[current_setting('tap.wa')], 'an account event that skips a version is found');
SELECT is(ARRAY(SELECT m ->> 'account_id' FROM jsonb_array_elements(api.verify_projections() -> 'projection_mismatches') m),
          ARRAY[current_setting('tap.wa')], 'and so is the projection that it did not move');
ROLLBACK TO SAVEPOINT attack;
SET LOCAL ROLE atp_owner;
INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor)
VALUES ('account', current_setting('tap.wa')::uuid, pg_temp.next_version(current_setting('tap.wa')::uuid) - 1,
        'AccountFrozen', '{}', 'test');
RESET ROLE;
SELECT is(ARRAY(SELECT g ->> 'account_id' FROM jsonb_array_elements(api.verify_projections() -> 'version_gaps') g),
          ARRAY[current_setting('tap.wa')], 'an account event that repeats the current version is found');
SELECT is(api.verify_projections() ->> 'ok', 'false', 'and the books do not verify');
ROLLBACK TO SAVEPOINT attack;
SELECT is(api.verify_projections() ->> 'ok', 'true', 'without the attacks the books verify again');
-- No CHECK guards a balances row's version or normal side (their writers set them by
-- construction): the owner writing around the functions is found all the same.
SAVEPOINT attack;
SET LOCAL ROLE atp_owner;
UPDATE ledger.balances SET version = 0 WHERE account_id = current_setting('tap.wa')::uuid;
RESET ROLE;
SELECT is(ARRAY(SELECT m ->> 'account_id' FROM jsonb_array_elements(api.verify_projections() -> 'projection_mismatches') m),
          ARRAY[current_setting('tap.wa')], 'a balances version set to 0 by the owner is found');
ROLLBACK TO SAVEPOINT attack;
SET LOCAL ROLE atp_owner;
UPDATE ledger.balances SET normal_side = 'debit' WHERE account_id = current_setting('tap.wa')::uuid;
RESET ROLE;
SELECT is(ARRAY(SELECT m -> 'projected' ->> 'normal_side' FROM jsonb_array_elements(api.verify_projections() -> 'projection_mismatches') m),
          ARRAY['debit'], 'a wallet whose normal side the owner turned to debit is found');
ROLLBACK TO SAVEPOINT attack;
-- The tables are the owner's alone: neither the app nor a DBA can write an event at all.
SET LOCAL ROLE atp_app;
SELECT throws_ok($$INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor)
                   VALUES ('account', current_setting('tap.wa')::uuid, 1, 'AccountFrozen', '{}', 'test')$$,
                 '42501', NULL, 'the app role cannot write an event around the functions');
RESET ROLE;
SET LOCAL ROLE atp_dba;
SELECT throws_ok($$INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor)
                   VALUES ('account', current_setting('tap.wa')::uuid, 1, 'AccountFrozen', '{}', 'test')$$,
                 '42501', NULL, 'a DBA cannot write an event around the functions');
RESET ROLE;

-- ---------------------------------------------------------------------------------------
-- 2. No balance below 0 or above 10^12, even written by hand.
-- ---------------------------------------------------------------------------------------
SET LOCAL ROLE atp_owner;
SELECT throws_ok($$UPDATE ledger.balances SET balance = -1 WHERE account_id = current_setting('tap.wd')::uuid$$,
                 '23514', NULL, 'a balance of -1 violates the CHECK');
SELECT throws_ok($$UPDATE ledger.balances SET balance = -0.00000001 WHERE account_id = current_setting('tap.wd')::uuid$$,
                 '23514', NULL, 'a balance of -0.00000001 violates the CHECK');
SELECT throws_ok($$UPDATE ledger.balances SET balance = 1000000000000.00000001 WHERE account_id = current_setting('tap.wd')::uuid$$,
                 '23514', NULL, 'a balance of 10^12 + 0.00000001 violates the CHECK');
SELECT lives_ok($$UPDATE ledger.balances SET balance = 1000000000000 WHERE account_id = current_setting('tap.wd')::uuid$$,
                'a balance of exactly 10^12 fits');
SELECT throws_ok($$UPDATE ledger.balances SET held = balance + 1 WHERE account_id = current_setting('tap.wd')::uuid$$,
                 '23514', NULL, 'no account can reserve more than it holds');
-- Only the issuer's count (debit-normal) may pass 10^12. A wallet whose normal side the owner flips
-- to pass the CHECK is found by the verifier, which compares the side with the account's type.
SAVEPOINT flipped;
UPDATE ledger.balances SET normal_side = 'debit', balance = 2000000000000
 WHERE account_id = current_setting('tap.wd')::uuid;
RESET ROLE;
SELECT is((api.verify_projections() -> 'ok')::boolean, false,
          'a wallet flipped to debit-normal to hold 2 * 10^12 is found by api.verify_projections');
SELECT ok(api.verify_projections() -> 'projection_mismatches' @> jsonb_build_array(jsonb_build_object('account_id', current_setting('tap.wd'))),
          'which names that wallet');
ROLLBACK TO SAVEPOINT flipped;
SET LOCAL ROLE atp_owner;
UPDATE ledger.balances SET balance = 0 WHERE account_id = current_setting('tap.wd')::uuid;
RESET ROLE;
-- A hand-written, balanced pair of events that would overdraw wallet a: the table takes them
-- from the owner, the projection does not move, and the verifier names both accounts.
SAVEPOINT attack;
SET LOCAL ROLE atp_owner;
INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor)
VALUES ('account', current_setting('tap.wa')::uuid, pg_temp.next_version(current_setting('tap.wa')::uuid),
        'AccountDebited', jsonb_build_object('journal_id', '0190aaaa-0000-7000-8000-0000000000f0', 'amount', '707.37500001',
                                             'kind', 'transfer_out'), 'test'),
       ('account', current_setting('tap.wd')::uuid, pg_temp.next_version(current_setting('tap.wd')::uuid),
        'AccountCredited', jsonb_build_object('journal_id', '0190aaaa-0000-7000-8000-0000000000f0', 'amount', '707.37500001',
                                              'kind', 'transfer_in'), 'test');
RESET ROLE;
SELECT is(ARRAY(SELECT m ->> 'account_id' FROM jsonb_array_elements(api.verify_projections() -> 'projection_mismatches') m
                 ORDER BY 1),
          ARRAY(SELECT unnest(ARRAY[current_setting('tap.wa'), current_setting('tap.wd')]) ORDER BY 1),
          'events written by hand that would overdraw are found by api.verify_projections');
SELECT is((SELECT (m -> 'replayed' ->> 'balance')::numeric FROM jsonb_array_elements(api.verify_projections() -> 'projection_mismatches') m
            WHERE m ->> 'account_id' = current_setting('tap.wa')),
          -0.00000001, 'which shows the negative replayed balance');
ROLLBACK TO SAVEPOINT attack;
SELECT throws_ok($$SELECT * FROM api.mint(current_setting('tap.a')::uuid, 1000000000000)$$,
                 'L4004', NULL, 'api.mint refuses to take a wallet above 10^12');
SELECT is(pg_temp.wallet_bal('a'), 707.375, 'the refused calls changed nothing');

-- ---------------------------------------------------------------------------------------
-- 1. Every journal balances: the functions write both lines of a journal from one amount, in
-- one statement (by construction); lines written by hand are found by the verifier.
-- ---------------------------------------------------------------------------------------
SELECT is(ARRAY(SELECT journal_id::text FROM ledger.ledger_entries GROUP BY journal_id
                HAVING sum(amount) FILTER (WHERE side = 'debit') IS DISTINCT FROM sum(amount) FILTER (WHERE side = 'credit')),
          '{}'::text[], 'every journal the api wrote balances');
SAVEPOINT attack;
SET LOCAL ROLE atp_owner;
INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after, kind, created_at)
VALUES ('0190aaaa-0000-7000-8000-0000000000f6', 0, current_setting('tap.wa')::uuid, 'credit', 5, 712.375, 'mint', now()),
       ('0190aaaa-0000-7000-8000-0000000000f2', 0, '00000000-0000-0000-0000-000000000101', 'debit', 5, 1, 'mint', now()),
       ('0190aaaa-0000-7000-8000-0000000000f2', 0, current_setting('tap.wa')::uuid, 'credit', 4.99999999, 1, 'mint', now()),
       ('0190aaaa-0000-7000-8000-0000000000f3', 0, '00000000-0000-0000-0000-000000000101', 'debit', 5, 1, 'mint', now()),
       ('0190aaaa-0000-7000-8000-0000000000f4', 0, current_setting('tap.wa')::uuid, 'credit', 5, 1, 'mint', now());
RESET ROLE;
SELECT is(ARRAY(SELECT j ->> 'journal_id' FROM jsonb_array_elements(api.verify_projections() -> 'unbalanced_journals') j
                 ORDER BY 1),
          ARRAY['0190aaaa-0000-7000-8000-0000000000f2', '0190aaaa-0000-7000-8000-0000000000f3',
                '0190aaaa-0000-7000-8000-0000000000f4', '0190aaaa-0000-7000-8000-0000000000f6'],
          'a lone line, a pair off by 0.00000001 and lines that balance only across two journals are all found');
SELECT is(api.verify_projections() ->> 'ok', 'false', 'and the books do not verify');
ROLLBACK TO SAVEPOINT attack;
SET LOCAL ROLE atp_owner;
INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after, kind, created_at)
VALUES ('0190aaaa-0000-7000-8000-0000000000f5', 0, '00000000-0000-0000-0000-000000000101', 'debit', 5, 1, 'mint', now()),
       ('0190aaaa-0000-7000-8000-0000000000f5', 0, current_setting('tap.wa')::uuid, 'credit', 5, 1, 'mint', now());
RESET ROLE;
SELECT is(api.verify_projections() -> 'unbalanced_journals', '[]'::jsonb, 'a balanced pair written by hand balances');
-- Balanced, but written around the events: the verifier sees the journal no longer matches.
SELECT is(ARRAY(SELECT m ->> 'account_id' FROM jsonb_array_elements(api.verify_projections() -> 'entry_mismatches') m ORDER BY 1),
          ARRAY(SELECT unnest(ARRAY['00000000-0000-0000-0000-000000000101', current_setting('tap.wa')]) ORDER BY 1),
          'journal lines written by hand are reported by api.verify_projections');

SELECT * FROM finish();
ROLLBACK;
