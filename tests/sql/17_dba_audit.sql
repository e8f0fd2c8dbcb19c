-- A DBA at a psql prompt: a login role that is a member of atp_dba calls every api function without
-- an API key, and every change is audited (and every event stamped) under that person's own role.
BEGIN;
SELECT plan(23);

CREATE ROLE atp_test_dba_person NOLOGIN IN ROLE atp_dba;
CREATE TEMP TABLE ids (name text PRIMARY KEY, id uuid);
SELECT tap_share();

SET LOCAL ROLE atp_test_dba_person;
SELECT * FROM api.create_user('a11ce000-0000-4000-8000-000000000001', 'alice', 'alice@example.com',
                              idempotency_key => '1d000000-0000-4000-8000-000000000001',
                              correlation_id => 'dba-01-create_user') \g /dev/null
SELECT * FROM api.create_user('b0b00000-0000-4000-8000-000000000002', 'bob', 'bob@example.com') \g /dev/null
SELECT * FROM api.update_user('a11ce000-0000-4000-8000-000000000001', display_name => 'Alice',
                              correlation_id => 'dba-02-update_user') \g /dev/null
SELECT * FROM api.mint('a11ce000-0000-4000-8000-000000000001', 10, correlation_id => 'dba-03-mint') \g /dev/null
INSERT INTO ids SELECT 'transfer', (body ->> 'transfer_id')::uuid FROM api.transfer(
    'a11ce000-0000-4000-8000-000000000001', 'b0b00000-0000-4000-8000-000000000002', 4,
    request_user_id => 'a11ce000-0000-4000-8000-000000000001', correlation_id => 'dba-04-transfer');
SELECT * FROM api.burn('a11ce000-0000-4000-8000-000000000001', 6, correlation_id => 'dba-05-burn') \g /dev/null
SELECT * FROM api.freeze_wallet('b0b00000-0000-4000-8000-000000000002', correlation_id => 'dba-06-freeze_wallet') \g /dev/null
SELECT * FROM api.unfreeze_wallet('b0b00000-0000-4000-8000-000000000002', correlation_id => 'dba-07-unfreeze_wallet') \g /dev/null
SELECT * FROM api.delete_user('a11ce000-0000-4000-8000-000000000001', correlation_id => 'dba-08-delete_user') \g /dev/null
INSERT INTO ids SELECT 'key', (api.create_api_key('made by a DBA', ARRAY['read'], 10, NULL,
                                                  correlation_id => 'dba-09-create_api_key') ->> 'id')::uuid;
SELECT api.revoke_api_key((SELECT id FROM ids WHERE name = 'key'), correlation_id => 'dba-10-revoke_api_key') \g /dev/null
SELECT api.ensure_partitions(5, correlation_id => 'dba-11-ensure_partitions') \g /dev/null
RESET ROLE;
SELECT results_eq($$SELECT scope, key FROM ledger.idempotency_keys$$,
                  $$VALUES ('role:atp_test_dba_person', '1d000000-0000-4000-8000-000000000001'::uuid)$$,
                  'a DBA''s idempotency key is scoped to the DBA''s role');
UPDATE ledger.idempotency_keys SET expires_at = now() WHERE key = '1d000000-0000-4000-8000-000000000001';
UPDATE ledger.balances SET balance = balance + 1
 WHERE account_id = (SELECT id FROM ledger.accounts WHERE user_id = 'b0b00000-0000-4000-8000-000000000002');
SET LOCAL ROLE atp_test_dba_person;
SELECT api.expire_idempotency_keys(correlation_id => 'dba-12-expire_idempotency_keys') \g /dev/null
SELECT api.rebuild_projections(correlation_id => 'dba-13-rebuild_projections') \g /dev/null

-- The functions that change nothing work for the DBA without a key too.
SELECT is(api.get_user('b0b00000-0000-4000-8000-000000000002') ->> 'balance', '4.00000000', 'a DBA may call get_user without a key');
SELECT is(api.get_balance('b0b00000-0000-4000-8000-000000000002') ->> 'balance', '4.00000000', 'a DBA may call get_balance without a key');
SELECT is(api.get_history('b0b00000-0000-4000-8000-000000000002') -> 'items' -> 0 ->> 'kind', 'transfer_in', 'a DBA may call get_history without a key');
SELECT is(api.get_transfer((SELECT id FROM ids WHERE name = 'transfer')) ->> 'amount', '4.00000000', 'a DBA may call get_transfer without a key');
SELECT is(api.list_events("limit" => 3) -> 'events' -> 0 ->> 'actor', 'migration', 'a DBA may call list_events without a key');
SELECT is(api.verify_projections() -> 'ok', 'true'::jsonb, 'a DBA may call verify_projections without a key (the books verify after the rebuild)');
SELECT is(api.verify_audit_chain() -> 'ok', 'true'::jsonb, 'a DBA may call verify_audit_chain without a key');
SELECT is(api.seal_audit() -> 'sealed_rows', '0'::jsonb, 'a DBA may call seal_audit without a key (nothing finished to seal here)');
SELECT is(api.cleanup_rate_limits(correlation_id => 'dba-14-cleanup_rate_limits'), 1::bigint,
          'a DBA may call cleanup_rate_limits without a key (the revoked key''s buckets go)');
SELECT is(api.run_maintenance() -> 'idempotency_keys_expired', '0'::jsonb, 'a DBA may call run_maintenance without a key');
SELECT is(api.describe_api_key(encode(sha256('no such key'::bytea), 'hex')), NULL, 'a DBA may call describe_api_key without a key');
SELECT lives_ok($$SELECT * FROM api.error_codes()$$, 'a DBA may call error_codes without a key');
SELECT throws_ok($$SELECT api.authenticate(NULL)$$, 'L4011', NULL,
                 'authenticate checks API keys only: a keyless call has nothing to authenticate');
RESET ROLE;

-- ---------------------------------------------------------------- what was recorded
SELECT results_eq(
    $$SELECT correlation_id, action, actor, api_key_id FROM ledger.audit_log WHERE correlation_id LIKE 'dba-%'
       ORDER BY correlation_id$$,
    $$VALUES ('dba-01-create_user', 'user.create', 'atp_test_dba_person', NULL::uuid),
             ('dba-02-update_user', 'user.update', 'atp_test_dba_person', NULL),
             ('dba-03-mint', 'mint', 'atp_test_dba_person', NULL),
             ('dba-04-transfer', 'transfer', 'atp_test_dba_person', NULL),
             ('dba-05-burn', 'burn', 'atp_test_dba_person', NULL),
             ('dba-06-freeze_wallet', 'wallet.freeze', 'atp_test_dba_person', NULL),
             ('dba-07-unfreeze_wallet', 'wallet.unfreeze', 'atp_test_dba_person', NULL),
             ('dba-08-delete_user', 'user.delete', 'atp_test_dba_person', NULL),
             ('dba-09-create_api_key', 'api_key.create', 'atp_test_dba_person', NULL),
             ('dba-10-revoke_api_key', 'api_key.revoke', 'atp_test_dba_person', NULL),
             ('dba-11-ensure_partitions', 'partitions.create', 'atp_test_dba_person', NULL),
             ('dba-12-expire_idempotency_keys', 'idempotency_keys.expire', 'atp_test_dba_person', NULL),
             ('dba-13-rebuild_projections', 'projections.rebuild', 'atp_test_dba_person', NULL),
             ('dba-14-cleanup_rate_limits', 'rate_limits.cleanup', 'atp_test_dba_person', NULL)$$,
    'every change a DBA makes without a key is audited once, under the DBA''s own role');
SELECT is((SELECT count(*)::int FROM ledger.audit_log WHERE actor <> 'atp_test_dba_person'), 0,
          'nothing was audited under another name');
SELECT is((SELECT count(*)::int FROM ledger.audit_log), 15, 'the fourteen above and bob''s creation are all the audit rows');
SELECT results_eq(
    $$SELECT correlation_id, string_agg(event_type, ',' ORDER BY id) FROM ledger.events
       WHERE correlation_id LIKE 'dba-%' AND actor = 'atp_test_dba_person' GROUP BY correlation_id ORDER BY 1$$,
    $$VALUES ('dba-01-create_user', 'UserCreated,AccountOpened'), ('dba-02-update_user', 'UserUpdated'),
             ('dba-03-mint', 'AccountDebited,AccountCredited'), ('dba-04-transfer', 'AccountDebited,AccountCredited'),
             ('dba-05-burn', 'AccountDebited,AccountCredited'), ('dba-06-freeze_wallet', 'AccountFrozen'),
             ('dba-07-unfreeze_wallet', 'AccountUnfrozen'), ('dba-08-delete_user', 'UserDeleted,AccountClosed')$$,
    'and their events carry the DBA''s role as actor');
SELECT is((SELECT count(*)::int FROM ledger.events WHERE actor NOT IN ('migration', 'atp_test_dba_person')), 0,
          'no event names another actor');
SELECT is((SELECT created_by FROM ledger.api_keys WHERE id = (SELECT id FROM ids WHERE name = 'key')),
          'atp_test_dba_person', 'a key made by a DBA names the DBA as its creator');
SELECT is((SELECT request_user_id FROM ledger.audit_log WHERE correlation_id = 'dba-04-transfer'),
          'a11ce000-0000-4000-8000-000000000001'::uuid, 'a DBA''s transfer records the acting user it named');
SELECT is((SELECT after_state FROM ledger.audit_log WHERE correlation_id = 'dba-12-expire_idempotency_keys'),
          '{"deleted": 1}'::jsonb, 'the DBA''s own stored response was the one expired');

-- A database role that is not a DBA gets nothing without a key.
SET LOCAL ROLE atp_app;
SELECT throws_ok($$SELECT * FROM api.mint('b0b00000-0000-4000-8000-000000000002', 1)$$,
                 'L4011', NULL, 'a role outside atp_dba must bring a key');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
