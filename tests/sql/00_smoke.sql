BEGIN;
SELECT plan(2);
SELECT has_schema('api');
SELECT is((SELECT count(*)::int FROM ledger.users WHERE is_system), 3, 'three system users are seeded');
SELECT * FROM finish();
ROLLBACK;
