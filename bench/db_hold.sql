-- api.create_hold called directly, like db_transfer.sql: the same pairs, the smallest amount
-- (so that the pending holds of a long run never exhaust a wallet). -D users=N -D key_hash=<hex>.
\set a random(1, :users)
\set b 1 + (:a + random(0, :users - 2)) % :users
SELECT status FROM api.create_hold(from_user_id => md5(CAST(:a AS text))::uuid,
    to_user_id => md5(CAST(:b AS text))::uuid, amount => 0.00000001, memo => 'bench',
    idempotency_key => gen_random_uuid(), api_key_hash => :key_hash,
    request_user_id => md5(CAST(:a AS text))::uuid);
