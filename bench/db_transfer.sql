-- api.transfer called directly (the database layer alone), as the application's login role,
-- with the bench API key's hash and a fresh idempotency key. User i is md5(i)::uuid.
-- -D users=N -D key_hash=<sha256 hex of the key>.
\set a random(1, :users)
\set b 1 + (:a + random(0, :users - 2)) % :users
SELECT status FROM api.transfer(from_user_id => md5(CAST(:a AS text))::uuid,
    to_user_id => md5(CAST(:b AS text))::uuid, amount => 1.00000000, memo => 'bench',
    idempotency_key => gen_random_uuid(), api_key_hash => :key_hash,
    request_user_id => md5(CAST(:a AS text))::uuid);
