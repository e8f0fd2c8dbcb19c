-- The large store: :transfers transfers of 1.00000000 ATP between random pairs of the
-- :users bench users (user i is md5(i)::uuid), appended in bulk as the superuser, with
-- exactly the rows api.transfer writes (ledger.post_journal):
-- per transfer an AccountDebited and an AccountCredited event (versions contiguous per
-- account), a debit and a credit journal line (balance_after), a snapshot at every 100th
-- version, and the balances' balance/version/last_event_id/updated_at moved to the last
-- event. Times lie between the newest existing event and now, so times and versions agree.
-- Not written: audit rows and idempotency keys of these transfers (they are in no path that
-- api.transfer or api.get_history reads). bench.py then runs api.verify_projections().
-- psql variables: users, transfers, api_key_id.
\set ON_ERROR_STOP on
\timing on
SET work_mem = '1GB';
SET maintenance_work_mem = '1GB';
BEGIN;
-- No trigger fires on INSERT; the balances are written once per account below.

CREATE TEMP TABLE seed_wallets ON COMMIT DROP AS
SELECT i, u.id AS user_id, a.id AS account_id, b.version AS version0, b.balance AS balance0,
       b.is_frozen, b.is_closed
  FROM generate_series(1, :users) i
  JOIN ledger.users u ON u.id = md5(i::text)::uuid
  JOIN ledger.accounts a ON a.user_id = u.id AND a.account_type = 'user_wallet'
  JOIN ledger.balances b ON b.account_id = a.id;
CREATE UNIQUE INDEX ON seed_wallets (i);
SELECT count(*) = :users AS all_wallets_found FROM seed_wallets \gset
\if :all_wallets_found
\else
    \echo 'seed_large.sql: not every bench user has a wallet'
    SELECT 1 / 0;
\endif

-- After every existing event, up to now: event times and versions agree per account.
SELECT max(created_at) AS t0, clock_timestamp() AS t1 FROM ledger.events \gset
-- Blocks of ids reserved from the two sequences (nobody else writes during the seed).
SELECT setval('ledger.event_id_seq', nextval('ledger.event_id_seq') + 2 * :transfers - 1)
       - 2 * :transfers + 1 AS event0 \gset
SELECT setval('ledger.ledger_entry_id_seq', nextval('ledger.ledger_entry_id_seq') + 2 * :transfers - 1)
       - 2 * :transfers + 1 AS entry0 \gset

-- One row per transfer: random payer, a different random payee, a time-ordered journal id.
CREATE TEMP TABLE seed_transfers ON COMMIT DROP AS
SELECT x.t, ledger.uuid_v7() AS journal_id,
       f.account_id AS from_account, f.user_id AS from_user,
       r.account_id AS to_account, r.user_id AS to_user,
       :'t0'::timestamptz + (:'t1'::timestamptz - :'t0'::timestamptz) * (x.t::float8 / (:transfers + 1))
           AS created_at
  FROM (SELECT t, 1 + floor(random() * :users)::int AS a, floor(random() * (:users - 1))::int AS r
          FROM generate_series(1, :transfers) t) x
  JOIN seed_wallets f ON f.i = x.a
  JOIN seed_wallets r ON r.i = 1 + (x.a + x.r) % :users;

-- Two legs per transfer (0: debit of the payer, 1: credit of the payee), with the version and
-- the running balance of each account (wallets are credit-normal: a debit takes 1 away).
CREATE TEMP TABLE seed_legs ON COMMIT DROP AS
SELECT :event0 + 2 * (s.t - 1) + s.leg AS event_id,
       :entry0 + 2 * (s.t - 1) + s.leg AS entry_id,
       s.t, s.leg, s.journal_id, s.account_id, s.counterparty, s.from_user, s.created_at,
       w.version0 + row_number() OVER per_account AS version,
       w.balance0 + sum(CASE s.leg WHEN 0 THEN -1 ELSE 1 END) OVER per_account AS balance_after,
       w.is_frozen, w.is_closed
  FROM (SELECT t, 0 AS leg, journal_id, from_account AS account_id, to_user AS counterparty,
               from_user, created_at
          FROM seed_transfers
        UNION ALL
        SELECT t, 1, journal_id, to_account, from_user, from_user, created_at
          FROM seed_transfers) s
  JOIN seed_wallets w ON w.account_id = s.account_id
WINDOW per_account AS (PARTITION BY s.account_id ORDER BY s.t ROWS UNBOUNDED PRECEDING);

SELECT count(*) = 0 AS never_negative FROM seed_legs WHERE balance_after < 0 \gset
\if :never_negative
\else
    \echo 'seed_large.sql: a balance would go below zero: mint more per user'
    SELECT 1 / 0;
\endif

INSERT INTO ledger.events (id, aggregate_type, aggregate_id, version, event_type, data, actor,
                           api_key_id, request_user_id, correlation_id, created_at)
SELECT l.event_id, 'account', l.account_id, l.version,
       CASE l.leg WHEN 0 THEN 'AccountDebited' ELSE 'AccountCredited' END,
       jsonb_build_object('journal_id', l.journal_id, 'amount', '1.00000000',
                          'kind', CASE l.leg WHEN 0 THEN 'transfer_out' ELSE 'transfer_in' END,
                          'counterparty_user_id', l.counterparty, 'memo', 'bench'),
       'atp_app', :'api_key_id', l.from_user, 'bench-seed-' || l.t, l.created_at
  FROM seed_legs l
 ORDER BY l.event_id;

INSERT INTO ledger.ledger_entries (id, journal_id, event_id, account_id, side, amount, balance_after,
                                   kind, counterparty_user_id, memo, created_at)
SELECT l.entry_id, l.journal_id, l.event_id, l.account_id,
       CASE l.leg WHEN 0 THEN 'debit' ELSE 'credit' END, 1, l.balance_after,
       CASE l.leg WHEN 0 THEN 'transfer_out' ELSE 'transfer_in' END, l.counterparty, 'bench', l.created_at
  FROM seed_legs l
 ORDER BY l.entry_id;

INSERT INTO ledger.snapshots (account_id, version, balance, is_frozen, is_closed, event_created_at)
SELECT l.account_id, l.version, l.balance_after, l.is_frozen, l.is_closed, l.created_at
  FROM seed_legs l
 WHERE l.version % 100 = 0;

UPDATE ledger.balances b
   SET balance = last.balance_after, version = last.version, last_event_id = last.event_id,
       updated_at = last.created_at
  FROM (SELECT DISTINCT ON (account_id) account_id, balance_after, version, event_id, created_at
          FROM seed_legs
         ORDER BY account_id, version DESC) last
 WHERE b.account_id = last.account_id;
COMMIT;
