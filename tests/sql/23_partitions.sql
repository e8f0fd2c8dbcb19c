-- Partitions: events and journal lines are partitioned by month. This month and three ahead
-- exist after migrate, DEFAULT partitions catch anything else, api.ensure_partitions adds
-- months idempotently, and every partition carries the append-only triggers and privileges.
BEGIN;
SELECT plan(41);
SELECT tap_share();

CREATE FUNCTION pg_temp.month_name(parent text, months_ahead int) RETURNS text LANGUAGE sql AS
$$ SELECT format('ledger.%s_%s', parent, to_char(date_trunc('month', now()) + make_interval(months => months_ahead), 'YYYY_MM')) $$;
CREATE FUNCTION pg_temp.partition_of(child text) RETURNS text LANGUAGE sql AS
$$ SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = to_regclass(child) $$;
CREATE FUNCTION pg_temp.bound(child text) RETURNS text LANGUAGE sql AS
$$ SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = to_regclass(child) $$;
CREATE FUNCTION pg_temp.month_bound(months_ahead int) RETURNS text LANGUAGE sql AS
$$ SELECT format('FOR VALUES FROM (%L) TO (%L)',
                 (date_trunc('month', now()) + make_interval(months => months_ahead))::date::timestamptz,
                 (date_trunc('month', now()) + make_interval(months => months_ahead + 1))::date::timestamptz) $$;

-- ---------------------------------------------------------------------------------------
-- After migrate: this month and the next three, plus DEFAULT, for both tables.
-- ---------------------------------------------------------------------------------------
SELECT is(pg_temp.partition_of(pg_temp.month_name(parent, m)), 'ledger.' || parent,
          format('%s exists as a partition of ledger.%s', pg_temp.month_name(parent, m), parent))
  FROM unnest(ARRAY['events', 'ledger_entries']) AS parent CROSS JOIN generate_series(0, 3) AS m
 ORDER BY parent, m;
SELECT is(pg_temp.bound(pg_temp.month_name(parent, m)), pg_temp.month_bound(m),
          format('%s covers exactly its month', pg_temp.month_name(parent, m)))
  FROM unnest(ARRAY['events', 'ledger_entries']) AS parent CROSS JOIN generate_series(0, 1) AS m
 ORDER BY parent, m;
SELECT is(pg_temp.bound(format('ledger.%s_default', parent)), 'DEFAULT',
          format('ledger.%s_default is the DEFAULT partition', parent))
  FROM unnest(ARRAY['events', 'ledger_entries']) AS parent ORDER BY parent;

-- ---------------------------------------------------------------------------------------
-- Rows land where they belong: today's in this month's partition, one dated five years
-- ahead in the DEFAULT partition.
-- ---------------------------------------------------------------------------------------
SELECT set_config('tap.u', '0190aaaa-0000-7000-8000-000000000023', true) IS NOT NULL AS _;
SELECT status = 201 AS _ FROM api.create_user(current_setting('tap.u')::uuid, 'part_u', 'part_u@example.com');
SELECT set_config('tap.mint', body ->> 'mint_id', true) IS NOT NULL AS _
  FROM api.mint(current_setting('tap.u')::uuid, 10, 'seed');
SELECT set_config('tap.w', ledger.wallet_of(current_setting('tap.u')::uuid)::text, true) IS NOT NULL AS _;
SELECT is(ARRAY(SELECT DISTINCT tableoid::regclass::text FROM ledger.events
                 WHERE data ->> 'journal_id' = current_setting('tap.mint')),
          ARRAY[pg_temp.month_name('events', 0)], 'the events of a mint land in this month''s partition');
SELECT is(ARRAY(SELECT DISTINCT tableoid::regclass::text FROM ledger.ledger_entries
                 WHERE journal_id = current_setting('tap.mint')::uuid),
          ARRAY[pg_temp.month_name('ledger_entries', 0)], 'its journal lines land in this month''s partition');

SET LOCAL ROLE atp_owner;
INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor, created_at)
SELECT 'account', account_id, version + 1, 'AccountFrozen', '{"reason": "future"}', 'test', now() + interval '5 years'
  FROM ledger.balances WHERE account_id = current_setting('tap.w')::uuid;
INSERT INTO ledger.ledger_entries (journal_id, event_id, account_id, side, amount, balance_after, kind, created_at)
VALUES ('0190aaaa-0000-7000-8000-0000000000f5', 0, '00000000-0000-0000-0000-000000000101', 'debit', 1, 1, 'mint',
        now() + interval '5 years'),
       ('0190aaaa-0000-7000-8000-0000000000f5', 0, current_setting('tap.w')::uuid, 'credit', 1, 1, 'mint',
        now() + interval '5 years');
RESET ROLE;
SELECT is((SELECT tableoid::regclass::text FROM ledger.events WHERE data ->> 'reason' = 'future'),
          'ledger.events_default', 'an event dated five years ahead lands in ledger.events_default');
SELECT is(ARRAY(SELECT DISTINCT tableoid::regclass::text FROM ledger.ledger_entries
                 WHERE journal_id = '0190aaaa-0000-7000-8000-0000000000f5'),
          ARRAY['ledger.ledger_entries_default'], 'journal lines dated five years ahead land in ledger.ledger_entries_default');

-- ---------------------------------------------------------------------------------------
-- api.ensure_partitions(6): three more months of each, then nothing more.
-- ---------------------------------------------------------------------------------------
SELECT set_config('tap.before', (SELECT count(*) FROM pg_inherits
                                  WHERE inhparent IN ('ledger.events'::regclass, 'ledger.ledger_entries'::regclass))::text,
                  true) IS NOT NULL AS _;
SELECT set_config('tap.first', api.ensure_partitions(6)::text, true) IS NOT NULL AS _;
SELECT is(ARRAY(SELECT jsonb_array_elements_text(current_setting('tap.first')::jsonb -> 'created') ORDER BY 1),
          ARRAY(SELECT substr(pg_temp.month_name(parent, m), 8)
                  FROM unnest(ARRAY['events', 'ledger_entries']) AS parent
                 CROSS JOIN generate_series(4, 6) AS m ORDER BY 1),
          'api.ensure_partitions(6) creates months 4 to 6 ahead of both tables');
SELECT is(pg_temp.partition_of(pg_temp.month_name(parent, 6)), 'ledger.' || parent,
          format('%s now exists', pg_temp.month_name(parent, 6)))
  FROM unnest(ARRAY['events', 'ledger_entries']) AS parent ORDER BY parent;
SELECT is(pg_temp.bound(pg_temp.month_name('events', 6)), pg_temp.month_bound(6),
          'the new partition covers exactly its month');
SELECT is(api.ensure_partitions(6) -> 'created', '[]'::jsonb, 'a second api.ensure_partitions(6) creates nothing');
SELECT is((SELECT count(*) FROM pg_inherits
            WHERE inhparent IN ('ledger.events'::regclass, 'ledger.ledger_entries'::regclass)),
          current_setting('tap.before')::bigint + 6, 'exactly six partitions were added in all');
SELECT is(ARRAY(SELECT after_state -> 'created' FROM ledger.audit_log WHERE action = 'partitions.create'),
          ARRAY[current_setting('tap.first')::jsonb -> 'created'],
          'one audit row records the partitions created (none for the idempotent rerun)');
SELECT is(pg_get_userbyid(relowner)::text, 'atp_owner', format('%s is owned by atp_owner', oid::regclass))
  FROM pg_class WHERE oid = to_regclass(pg_temp.month_name('events', 6));
SELECT ok(has_table_privilege('atp_auditor', pg_temp.month_name('ledger_entries', 6), 'SELECT')
          AND NOT has_table_privilege('atp_app', pg_temp.month_name('ledger_entries', 6), 'SELECT'),
          'a new partition is readable by atp_auditor and not by atp_app');

-- A month whose rows already sit in DEFAULT is reported, not created (and nothing fails).
SET LOCAL ROLE atp_owner;
INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor, created_at)
SELECT 'account', account_id, version + 1, 'AccountUnfrozen', '{"reason": "month 7"}', 'test',
       date_trunc('month', now()) + interval '7 months 14 days'
  FROM ledger.balances WHERE account_id = current_setting('tap.w')::uuid;
RESET ROLE;
SELECT is((SELECT tableoid::regclass::text FROM ledger.events WHERE data ->> 'reason' = 'month 7'),
          'ledger.events_default', 'an event seven months ahead lands in DEFAULT before its month exists');
SELECT is(api.ensure_partitions(7),
          jsonb_build_object('created', jsonb_build_array(substr(pg_temp.month_name('ledger_entries', 7), 8)),
                             'skipped_default_has_rows', jsonb_build_array(substr(pg_temp.month_name('events', 7), 8))),
          'api.ensure_partitions(7) creates the empty month and reports the one with rows in DEFAULT');
SELECT is(to_regclass(pg_temp.month_name('events', 7)), NULL, 'the month with rows in DEFAULT was not created');

SELECT throws_ok('SELECT api.ensure_partitions(-1)', 'L4001', NULL, 'months_ahead below 0 is refused');
SELECT throws_ok('SELECT api.ensure_partitions(121)', 'L4001', NULL, 'months_ahead above 120 is refused');
SELECT throws_ok('SELECT api.ensure_partitions(NULL)', 'L4001', NULL, 'months_ahead NULL is refused');

-- ---------------------------------------------------------------------------------------
-- Every partition, old and new, carries the guards (statement triggers are not inherited).
-- ---------------------------------------------------------------------------------------
CREATE TEMP VIEW partitions AS
SELECT inhrelid AS oid, inhrelid::regclass::text AS name
  FROM pg_inherits WHERE inhparent IN ('ledger.events'::regclass, 'ledger.ledger_entries'::regclass);
SELECT cmp_ok((SELECT count(*)::int FROM partitions), '>=', 17, 'sanity: the loops below see every partition');
SELECT is(ARRAY(SELECT name FROM partitions p WHERE NOT EXISTS (
                    SELECT FROM pg_trigger t
                     WHERE t.tgrelid = p.oid AND t.tgname = 'partition_no_truncate'
                       AND t.tgfoid = 'ledger.forbid_change()'::regprocedure
                       AND t.tgenabled = 'O'
                       AND t.tgtype::int & 32 <> 0   -- TRUNCATE
                       AND t.tgtype::int & 2 <> 0)   -- BEFORE
                ORDER BY 1),
          '{}'::text[], 'every partition has an enabled BEFORE TRUNCATE trigger calling ledger.forbid_change');
SELECT is(ARRAY(SELECT name FROM partitions p WHERE NOT EXISTS (
                    SELECT FROM pg_trigger t
                     WHERE t.tgrelid = p.oid AND t.tgfoid = 'ledger.forbid_change()'::regprocedure
                       AND t.tgenabled = 'O'
                       AND t.tgtype::int & 1 <> 0    -- ROW
                       AND t.tgtype::int & 2 <> 0    -- BEFORE
                       AND t.tgtype::int & 8 <> 0    -- DELETE
                       AND t.tgtype::int & 16 <> 0)  -- UPDATE
                ORDER BY 1),
          '{}'::text[], 'every partition has an enabled BEFORE UPDATE OR DELETE row trigger calling ledger.forbid_change');
SELECT is(ARRAY(SELECT format('%s %s', name, priv) FROM partitions
                 CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS priv
                 WHERE has_table_privilege('atp_owner', oid, priv) ORDER BY 1),
          '{}'::text[], 'atp_owner holds no INSERT, UPDATE, DELETE or TRUNCATE on any partition');
SELECT is(ARRAY(SELECT t.tgname::text FROM pg_trigger t
                 WHERE t.tgrelid IN ('ledger.events'::regclass, 'ledger.ledger_entries'::regclass)
                   AND t.tgtype::int & 32 <> 0 AND t.tgenabled = 'O' ORDER BY 1),
          ARRAY['events_no_truncate', 'ledger_entries_no_truncate'], 'both parents have their TRUNCATE trigger');
SET LOCAL ROLE atp_owner;
SELECT throws_ok(format('TRUNCATE %s', pg_temp.month_name('events', 6)), '42501', NULL,
                 'atp_owner cannot TRUNCATE a partition api.ensure_partitions created');
RESET ROLE;
GRANT TRUNCATE ON ALL TABLES IN SCHEMA ledger TO atp_owner;
SET LOCAL ROLE atp_owner;
SELECT throws_ok(format('TRUNCATE %s', pg_temp.month_name('ledger_entries', 6)), 'L4033', NULL,
                 'with TRUNCATE granted back, the trigger of a new partition still refuses');
SELECT throws_ok(format('TRUNCATE %s', pg_temp.month_name('ledger_entries', 7)), 'L4033', NULL,
                 'and so does the trigger of the partition made by the second run');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
