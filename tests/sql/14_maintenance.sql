-- Maintenance: cleanup_rate_limits, expire_idempotency_keys, ensure_partitions, seal_audit,
-- run_maintenance, verify_projections, rebuild_projections, verify_audit_chain and error_codes.
--
-- Sealing only takes audit rows of finished transactions, so a few requests are committed first
-- (this database is a fresh copy made for this file alone); everything after BEGIN is rolled back.
SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com') \g /dev/null
SELECT * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com') \g /dev/null
SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 50, 'seed') \g /dev/null
SELECT * FROM api.transfer('a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 10,
                           request_user_id => 'a11ce000-0000-4000-8000-000000000001') \g /dev/null
SELECT api.create_api_key('maintenance-admin', ARRAY['admin'], 100000, NULL) ->> 'key' AS admin_key \gset
SELECT api.create_api_key('maintenance-write', ARRAY['write'], 100000, NULL) ->> 'key' AS write_key \gset

BEGIN;
SELECT plan(62);
SELECT tap_share();

CREATE TEMP TABLE k (name text PRIMARY KEY, hash text);
INSERT INTO k VALUES ('admin', encode(sha256(convert_to(:'admin_key', 'UTF8')), 'hex')),
                     ('write', encode(sha256(convert_to(:'write_key', 'UTF8')), 'hex'));
CREATE TEMP TABLE committed_audit AS SELECT count(*) AS n FROM ledger.audit_log;
SELECT tap_share();
-- The SQLSTATE of the error a statement raises (NULL if it raises none).
CREATE FUNCTION pg_temp.sqlstate_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
-- The name of this month's partition plus n months.
CREATE FUNCTION pg_temp.part(parent text, n integer) RETURNS text LANGUAGE sql AS $$
    SELECT parent || '_' || to_char(date_trunc('month', now()) + make_interval(months => n), 'YYYY_MM')
$$;

-- ---------------------------------------------------------------- cleanup_rate_limits
-- A live key keeps its two buckets; a revoked and an expired key lose theirs.
CREATE TEMP TABLE doomed AS
SELECT (api.create_api_key('revoked', ARRAY['read'], 10, NULL) ->> 'id')::uuid AS id
UNION ALL
SELECT (api.create_api_key('expiring', ARRAY['read'], 10, now() + interval '1 hour') ->> 'id')::uuid;
SELECT api.revoke_api_key(k.id) FROM ledger.api_keys k WHERE k.name = 'revoked' \g /dev/null
UPDATE ledger.api_keys SET expires_at = now() - interval '1 second' WHERE name = 'expiring';
CREATE TEMP TABLE doomed_buckets AS
SELECT bucket_even::text AS even, bucket_odd::text AS odd FROM ledger.api_keys WHERE id IN (SELECT id FROM doomed);
SELECT is(api.cleanup_rate_limits(), 2::bigint, 'cleanup_rate_limits cleans up the revoked and the expired key');
SELECT is((SELECT count(*)::int FROM doomed_buckets WHERE to_regclass(even) IS NULL AND to_regclass(odd) IS NULL), 2,
          'and drops their bucket sequences');
SELECT is((SELECT count(*)::int FROM ledger.api_keys WHERE bucket_even IS NOT NULL AND bucket_odd IS NOT NULL
              AND name LIKE 'maintenance-%'), 2, 'live keys keep their buckets');
SELECT is(api.cleanup_rate_limits(), 0::bigint, 'a second run finds nothing to clean up');
SELECT is(api.cleanup_rate_limits((SELECT hash FROM k WHERE name = 'admin')), 0::bigint, 'an admin key may run it');
SELECT throws_ok(format('SELECT api.cleanup_rate_limits(%L)', (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'a write key may not');

-- ---------------------------------------------------------------- expire_idempotency_keys
SELECT * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 1, idempotency_key => '1d000000-0000-4000-8000-000000000001')
\g /dev/null
SELECT * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 2, idempotency_key => '1d000000-0000-4000-8000-000000000002')
\g /dev/null
UPDATE ledger.idempotency_keys SET expires_at = now() WHERE key = '1d000000-0000-4000-8000-000000000001';
SELECT is(api.expire_idempotency_keys(correlation_id => 'corr-expire'), 1::bigint,
          'expire_idempotency_keys deletes the responses past their expiry');
SELECT results_eq($$SELECT key FROM ledger.idempotency_keys$$, $$VALUES ('1d000000-0000-4000-8000-000000000002'::uuid)$$,
                  'and keeps the others');
SELECT results_eq(
    $$SELECT actor, resource_type, after_state FROM ledger.audit_log WHERE correlation_id = 'corr-expire'$$,
    $$VALUES ('postgres', 'idempotency_keys', '{"deleted": 1}'::jsonb)$$,
    'the expiry is audited with how many it deleted');
SELECT is(api.expire_idempotency_keys(correlation_id => 'corr-expire-again'), 0::bigint, 'a second run deletes nothing');
SELECT is((SELECT count(*)::int FROM ledger.audit_log WHERE correlation_id = 'corr-expire-again'), 0,
          'and an empty run is not audited');
SELECT throws_ok(format('SELECT api.expire_idempotency_keys(%L)', (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'a write key may not expire idempotency keys');

-- ---------------------------------------------------------------- the books: verify and rebuild
SELECT is(api.verify_projections() - 'accounts' - 'trial_balance' - 'supply',
          '{"ok": true, "projection_mismatches": [], "version_gaps": [], "entry_mismatches": [],
            "snapshot_mismatches": [], "unbalanced_journals": [], "held_mismatches": [], "line_event_mismatches": [],
            "over_refunded": []}'::jsonb,
          'verify_projections finds nothing wrong');
SELECT results_eq(
    $$SELECT (s ->> 'minted')::numeric, (s ->> 'burned')::numeric, (s ->> 'held')::numeric, (s ->> 'in_wallets')::numeric
        FROM (SELECT api.verify_projections() -> 'supply' AS s) v$$,
    $$VALUES (53::numeric, 0::numeric, 53::numeric, 53::numeric)$$,
    'verify_projections reports minted, burned, held and in wallets');
SELECT is(api.rebuild_projections(), '{"changed_accounts": 0, "changed": []}'::jsonb,
          'rebuild_projections changes nothing when the projection is right');
UPDATE ledger.balances SET balance = balance + 1
 WHERE account_id = (SELECT id FROM ledger.accounts WHERE user_id = 'a11ce000-0000-4000-8000-000000000001');
SELECT results_eq(
    $$SELECT v -> 'ok', jsonb_array_length(v -> 'projection_mismatches'), v -> 'projection_mismatches' -> 0 -> 'projected' -> 'balance',
             v -> 'projection_mismatches' -> 0 -> 'replayed' -> 'balance'
        FROM api.verify_projections() v$$,
    $$VALUES ('false'::jsonb, 1, '41.00000000'::jsonb, '40.00000000'::jsonb)$$,
    'verify_projections finds a balance that differs from the replay of its events');
SELECT is(api.rebuild_projections(correlation_id => 'corr-rebuild'),
          jsonb_build_object('changed_accounts', 1, 'changed', jsonb_build_array(jsonb_build_object(
              'account_id', (SELECT id FROM ledger.accounts WHERE user_id = 'a11ce000-0000-4000-8000-000000000001'),
              'balance', '40.00000000', 'held', '0.00000000'))),
          'rebuild_projections puts the replayed balance back');
SELECT is((SELECT action FROM ledger.audit_log WHERE correlation_id = 'corr-rebuild'), 'projections.rebuild',
          'a rebuild that changed something is audited');
SELECT is(api.verify_projections() -> 'ok', 'true'::jsonb, 'after the rebuild the books verify');
SELECT throws_ok(format('SELECT api.rebuild_projections(%L)', (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'rebuilding needs admin');
-- User ids are chosen by the client, account ids by the ledger; the mint_source account id is public
-- (migrations/0003, the event feed). A user with that id (if the ledger accepts one) whose version
-- catches up with mint_source's must not confuse the books.
DO $$
BEGIN
    PERFORM api.create_user('00000000-0000-0000-0000-000000000101', 'mallory', 'mallory@example.com');
    WHILE (SELECT version FROM ledger.users WHERE id = '00000000-0000-0000-0000-000000000101')
          < (SELECT version FROM ledger.balances WHERE account_id = '00000000-0000-0000-0000-000000000101') LOOP
        PERFORM api.update_user('00000000-0000-0000-0000-000000000101', display_name => 'Mallory');
    END LOOP;
EXCEPTION WHEN SQLSTATE 'L4093' THEN
    NULL;  -- refusing such an id is a fine answer too
END
$$;
SELECT lives_ok($$SELECT api.rebuild_projections()$$,
                'rebuild_projections still works when a user id equals an account id');
SELECT is(api.verify_projections() -> 'ok', 'true'::jsonb, 'and verify_projections still finds the books right');

-- ---------------------------------------------------------------- ensure_partitions
SELECT is(api.ensure_partitions(3), '{"created": [], "skipped_default_has_rows": []}'::jsonb,
          'migrate already made the partitions three months ahead');
SELECT is((SELECT count(*)::int FROM ledger.audit_log WHERE action = 'partitions.create'), 0,
          'a run that creates nothing is not audited');
SELECT is(api.ensure_partitions(5, correlation_id => 'corr-partitions'),
          jsonb_build_object('created', jsonb_build_array(pg_temp.part('events', 4), pg_temp.part('events', 5),
                                                          pg_temp.part('ledger_entries', 4), pg_temp.part('ledger_entries', 5)),
                             'skipped_default_has_rows', '[]'::jsonb),
          'ensure_partitions(5) creates the months 4 and 5 ahead of events and ledger_entries');
SELECT is(ARRAY(SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'ledger.events'::regclass
                   AND inhrelid::regclass::text LIKE 'ledger.events_2%' ORDER BY 1),
          ARRAY(SELECT 'ledger.' || pg_temp.part('events', n) FROM generate_series(0, 5) n),
          'events has one partition per month from this month to five months ahead');
SELECT results_eq(
    $$SELECT after_state, actor FROM ledger.audit_log WHERE correlation_id = 'corr-partitions'$$,
    $$SELECT jsonb_build_object('created', jsonb_build_array(pg_temp.part('events', 4), pg_temp.part('events', 5),
                                                             pg_temp.part('ledger_entries', 4), pg_temp.part('ledger_entries', 5)),
                                'skipped_default_has_rows', '[]'::jsonb), 'postgres'::text$$,
    'creating partitions is audited');
SELECT has_trigger('ledger', pg_temp.part('ledger_entries', 5), 'partition_no_truncate',
                   'a new partition gets the TRUNCATE guard');
SELECT is(has_table_privilege('atp_owner', 'ledger.' || pg_temp.part('events', 5), 'INSERT'), false,
          'the owner cannot write into a new partition directly');
SELECT throws_ok(format('TRUNCATE ledger.%I', pg_temp.part('events', 5)), 'L4033', NULL,
                 'a partition cannot be truncated, even by a superuser');
-- A month whose rows already sit in the default partition is reported, not created.
INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after, kind, created_at)
SELECT 'feedface-0000-4000-8000-000000000001', 0, 'feedface-0000-4000-8000-000000000002', side, 1, 1, kind,
       date_trunc('month', now()) + interval '7 months 3 days'
  FROM (VALUES ('debit', 'transfer_out'), ('credit', 'transfer_in')) AS l(side, kind);
SELECT is(api.ensure_partitions(7) -> 'skipped_default_has_rows', jsonb_build_array(pg_temp.part('ledger_entries', 7)),
          'a month with rows in the default partition is skipped and reported');
SELECT ok(to_regclass('ledger.' || pg_temp.part('events', 7)) IS NOT NULL
          AND to_regclass('ledger.' || pg_temp.part('ledger_entries', 7)) IS NULL
          AND to_regclass('ledger.' || pg_temp.part('ledger_entries', 6)) IS NOT NULL,
          'the other partitions of that run are created');
-- Those two lines belong to no request: verify_audit_chain would report them below. Gone again.
SET session_replication_role = replica;
DELETE FROM ledger.ledger_entries WHERE journal_id = 'feedface-0000-4000-8000-000000000001';
RESET session_replication_role;
SELECT throws_ok(format('SELECT api.ensure_partitions(%s)', m), 'L4001', NULL, 'ensure_partitions refuses months_ahead ' || m)
  FROM unnest(ARRAY['-1', '121', 'NULL']) AS m;
SELECT throws_ok(format('SELECT api.ensure_partitions(3, %L)', (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'a write key may not create partitions');

-- ---------------------------------------------------------------- seal_audit and verify_audit_chain
SELECT * FROM api.create_user('ca201000-0000-4000-8000-000000000003', 'carol', 'carol@example.com') \g /dev/null
SELECT is(api.seal_audit(2), '{"sealed_rows": 2, "last_seal_no": 1}'::jsonb, 'seal_audit(2) seals two rows into seal 1');
SELECT results_eq(
    $$SELECT row_count, previous_hash, seal_hash FROM ledger.audit_seals WHERE seal_no = 1$$,
    $$SELECT 2::bigint, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea,
             sha256('\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
                    || (SELECT string_agg(row_hash, ''::bytea ORDER BY tx_id, id)
                          FROM (SELECT tx_id, id, row_hash FROM ledger.audit_log ORDER BY tx_id, id LIMIT 2) f))$$,
    'the first seal hashes the zero hash followed by the two oldest rows'' hashes');
SELECT is(api.seal_audit(correlation_id => 'corr-seal'),
          jsonb_build_object('sealed_rows', (SELECT n FROM committed_audit) - 2, 'last_seal_no', 2),
          'seal_audit seals every other row of a finished transaction');
SELECT results_eq(
    $$SELECT s2.previous_hash = s1.seal_hash, s2.row_count, s2.last_id FROM ledger.audit_seals s1, ledger.audit_seals s2
       WHERE s1.seal_no = 1 AND s2.seal_no = 2$$,
    $$SELECT true, (SELECT n FROM committed_audit) - 2,
             (SELECT id FROM ledger.audit_log WHERE tx_id <> pg_current_xact_id() ORDER BY tx_id DESC, id DESC LIMIT 1)$$,
    'seal 2 chains to seal 1 and ends at the newest committed row');
SELECT is(api.seal_audit(), '{"sealed_rows": 0, "last_seal_no": 2}'::jsonb,
          'rows of transactions still running (this one) are not sealed');
SELECT is(api.verify_audit_chain() - 'head_hash',
          jsonb_build_object('ok', true, 'rows', (SELECT count(*) FROM ledger.audit_log),
                             'sealed_rows', (SELECT n FROM committed_audit),
                             'unsealed_rows', (SELECT count(*) FROM ledger.audit_log) - (SELECT n FROM committed_audit),
                             'seals', 2, 'problems', '[]'::jsonb),
          'verify_audit_chain accepts the chain and counts sealed and unsealed rows');
SELECT is(api.verify_audit_chain() ->> 'head_hash', (SELECT encode(seal_hash, 'hex') FROM ledger.audit_seals WHERE seal_no = 2),
          'head_hash is the newest seal''s hash');
SELECT throws_ok(format('SELECT api.seal_audit(%s)', m), 'L4001', NULL, 'seal_audit refuses max_rows ' || m)
  FROM unnest(ARRAY['0', 'NULL']) AS m;
SELECT throws_ok(format('SELECT api.seal_audit(10, %L)', (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'a write key may not seal');

-- ---------------------------------------------------------------- run_maintenance
SELECT api.revoke_api_key((api.create_api_key('short-lived', ARRAY['read'], 10, NULL) ->> 'id')::uuid) \g /dev/null
UPDATE ledger.idempotency_keys SET expires_at = now() WHERE key = '1d000000-0000-4000-8000-000000000002';
SET LOCAL ROLE atp_app;
CREATE TEMP TABLE run AS SELECT api.run_maintenance(correlation_id => 'corr-run') AS j;
RESET ROLE;
SELECT is(j, '{"rate_limit_keys_cleaned": 1, "idempotency_keys_expired": 1, "holds_expired": 0, "more": false,
               "partitions": {"created": [], "skipped_default_has_rows": []},
               "audit": {"sealed_rows": 0, "last_seal_no": 2}}'::jsonb,
          'run_maintenance runs every job once and reports each (the service runs it as atp_app, without a key)')
  FROM run;
SELECT results_eq($$SELECT action, actor FROM ledger.audit_log WHERE correlation_id = 'corr-run'$$,
                  $$VALUES ('rate_limits.cleanup', 'atp_app'), ('idempotency_keys.expire', 'atp_app')$$,
                  'its changes are audited under the role that ran it');
SELECT is(api.run_maintenance((SELECT hash FROM k WHERE name = 'admin')) -> 'rate_limit_keys_cleaned', '0'::jsonb,
          'an admin key may run it');
SELECT throws_ok(format('SELECT api.run_maintenance(%L)', (SELECT hash FROM k WHERE name = 'write')),
                 'L4031', NULL, 'a write key may not');

-- ---------------------------------------------------------------- error_codes
SELECT is(ARRAY(SELECT sqlstate FROM api.error_codes() WHERE sqlstate !~ '^L[1-5]\d\d[1-9]$'), '{}'::text[],
          'every code is L, an HTTP status, and a digit from 1 to 9');
SELECT is(ARRAY(SELECT sqlstate FROM api.error_codes() WHERE substr(sqlstate, 2, 3)::int <> http_status), '{}'::text[],
          'the digits of every code are its HTTP status');
SELECT is((SELECT count(DISTINCT sqlstate) = count(*) AND count(DISTINCT error) = count(*) FROM api.error_codes()), true,
          'codes and error names are unique');
SELECT set_eq(
    $$SELECT error, http_status FROM api.error_codes()
       WHERE error IN ('invalid_request', 'insufficient_balance', 'account_frozen', 'invalid_api_key', 'permission_denied',
                       'unauthorized_transfer', 'user_not_found', 'idempotency_conflict', 'version_conflict',
                       'rate_limit_exceeded')$$,
    $$VALUES ('invalid_request', 400), ('insufficient_balance', 400), ('account_frozen', 400), ('invalid_api_key', 401),
             ('permission_denied', 403), ('unauthorized_transfer', 403), ('user_not_found', 404),
             ('idempotency_conflict', 409), ('version_conflict', 409), ('rate_limit_exceeded', 429)$$,
    'the errors of the contract have the contract''s statuses');
SELECT set_eq(
    -- ERRCODE = 'L....', or ERRCODE = CASE ... THEN 'L....' ELSE 'L....' END
    $$SELECT DISTINCT m[1] FROM pg_proc p,
            regexp_matches(p.prosrc, '(?:ERRCODE\s*=|THEN|ELSE)\s*''(L\d{4})''', 'g') AS m
       WHERE p.pronamespace IN ('api'::regnamespace, 'ledger'::regnamespace)$$,
    $$SELECT sqlstate FROM api.error_codes()$$,
    'error_codes lists exactly the codes that the api and ledger functions raise');
SELECT is((SELECT count(*)::int FROM api.error_codes() WHERE meaning IS NULL OR meaning = ''), 0, 'every code is explained');
SET LOCAL ROLE atp_app;
SELECT lives_ok($$SELECT * FROM api.error_codes()$$, 'atp_app may list the codes');
RESET ROLE;

-- ---------------------------------------------------------------- the guards behind it all
SELECT throws_ok($$UPDATE ledger.events SET actor = 'x' WHERE id = (SELECT min(id) FROM ledger.events)$$,
                 'L4033', NULL, 'events cannot be changed, even by a superuser');
SELECT throws_ok($$DELETE FROM ledger.audit_log WHERE id = (SELECT min(id) FROM ledger.audit_log)$$,
                 'L4033', NULL, 'audit rows cannot be removed');
SAVEPOINT unbalanced;
INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after, kind, created_at)
VALUES ('feedface-0000-4000-8000-000000000003', 0, 'feedface-0000-4000-8000-000000000002', 'debit', 1, 1, 'mint', now()),
       ('feedface-0000-4000-8000-000000000003', 0, 'feedface-0000-4000-8000-000000000002', 'credit', 2, 2, 'mint', now());
SELECT is(api.verify_projections() -> 'unbalanced_journals' -> 0 ->> 'journal_id', 'feedface-0000-4000-8000-000000000003',
          'journal lines that do not balance, written by a superuser, are found');
ROLLBACK TO SAVEPOINT unbalanced;

-- A changed audit row is found, with the triggers that forbid it switched off by a superuser.
ALTER TABLE ledger.audit_log DISABLE TRIGGER audit_log_append_only;
UPDATE ledger.audit_log SET actor = 'someone else' WHERE id = (SELECT min(id) FROM ledger.audit_log);
SELECT is(api.verify_audit_chain() -> 'ok', 'false'::jsonb, 'verify_audit_chain finds a changed row');
UPDATE ledger.audit_log a SET row_hash = ledger.audit_row_hash(a) WHERE id = (SELECT min(id) FROM ledger.audit_log);
SELECT is(api.verify_audit_chain() -> 'problems',
          jsonb_build_array(jsonb_build_object('seal_no', 1, 'problem',
                                               'rows covered by the seal changed: 2 rows now, 2 when sealed')),
          'a changed row whose hash was recomputed breaks its seal');

SELECT * FROM finish();
ROLLBACK;
