-- The machine's limit for a transfer: lock two rows in id order, update two balances,
-- insert two entries (bench_accounts and bench_entries, made by bench.py). -D users=N.
\set a random(1, :users)
\set b 1 + (:a + random(0, :users - 2)) % :users
BEGIN;
SELECT id FROM bench_accounts WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;
UPDATE bench_accounts SET balance = balance - 1 WHERE id = :a;
UPDATE bench_accounts SET balance = balance + 1 WHERE id = :b;
INSERT INTO bench_entries (account, amount) VALUES (:a, -1), (:b, 1);
COMMIT;
