-- depends: 0005.holds
-- Refunds and batches. A refund is a journal of its own (receiver -> sender) whose lines name
-- the transfer they give back (refund_of), so that what a transfer has had refunded is one
-- indexed sum, read under the lock of the receiver's wallet that every refund of it takes.
SET LOCAL ROLE atp_owner;

ALTER TABLE ledger.ledger_entries DROP CONSTRAINT ledger_entries_kind;
ALTER TABLE ledger.ledger_entries ADD CONSTRAINT ledger_entries_kind
    CHECK (kind IN ('mint', 'burn', 'transfer_in', 'transfer_out', 'refund_in', 'refund_out'));

-- NULL except on a refund's two lines. The index holds only those.
ALTER TABLE ledger.ledger_entries ADD COLUMN refund_of uuid;
CREATE INDEX ledger_entries_refund_of ON ledger.ledger_entries (refund_of) WHERE refund_of IS NOT NULL;

-- One leg of a batch as the caller gave it, checked for shape (n: its 0-based index).
CREATE TYPE ledger.batch_leg AS (
    n integer,
    user_id uuid,
    account_type text,
    amount numeric,
    memo text
);

-- An account of a batch as read under its row lock (ledger.lock_accounts).
CREATE TYPE ledger.locked_account AS (
    account_id uuid,
    user_id uuid,
    account_type text,
    normal_side text,
    balance numeric,
    held numeric,
    is_frozen boolean,
    version bigint
);

RESET ROLE;
