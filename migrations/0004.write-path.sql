-- depends: 0003.system-accounts
-- The write path without triggers: each writing function moves the projection, hashes its
-- audit row and writes both journal lines from one amount in the statement that appends the
-- events. The triggers that did this are dropped; the verifiers (api.verify_projections,
-- api.verify_audit_chain) recompute all three. The append-only triggers stay: they fire on
-- UPDATE, DELETE and TRUNCATE only.
SET LOCAL ROLE atp_owner;

DROP TRIGGER IF EXISTS events_project ON ledger.events;
DROP TRIGGER IF EXISTS audit_log_hash ON ledger.audit_log;
DROP TRIGGER IF EXISTS ledger_entries_balanced ON ledger.ledger_entries;
DROP FUNCTION IF EXISTS ledger.project_event();
DROP FUNCTION IF EXISTS ledger.hash_audit_row();
DROP FUNCTION IF EXISTS ledger.check_journal_balance();

-- What pending holds of the account reserve: the available balance is balance - held.
-- No account can reserve more than it holds.
ALTER TABLE ledger.balances
    ADD COLUMN held numeric(21, 8) NOT NULL DEFAULT 0,
    ADD CONSTRAINT balances_held_within_balance CHECK (held >= 0 AND held <= balance);

-- One leg of a posting: a journal of two lines, debit one account and credit another by the
-- same amount (so every journal balances by construction). data is merged into both events.
CREATE TYPE ledger.posting_leg AS (
    journal_id uuid,
    debit_account uuid,
    credit_account uuid,
    amount numeric,
    debit_kind text,
    credit_kind text,
    debit_user uuid,
    credit_user uuid,
    memo text,
    data jsonb
);

-- An account of a posting as read under its row lock: its lines start from this balance and
-- version; held_delta changes what it reserves.
CREATE TYPE ledger.account_state AS (
    account_id uuid,
    normal_side text,
    balance numeric,
    version bigint,
    held_delta numeric
);

-- An event of a posting that moves no money (e.g. a hold's), appended with the lines' events.
CREATE TYPE ledger.extra_event AS (
    aggregate_type text,
    aggregate_id uuid,
    version bigint,
    event_type text,
    data jsonb
);

RESET ROLE;
