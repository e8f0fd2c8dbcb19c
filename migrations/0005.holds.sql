-- depends: 0004.write-path
-- Holds: two-phase transfers. A pending hold reserves its amount on the sender's wallet
-- (balances.held, added in 0004); capturing moves part or all of it as a transfer and releases
-- the rest, voiding or expiring releases all. The row is written by ledger.post_journal in the
-- statement that moves the projection, like every other write. No foreign keys: their checks
-- are triggers, and the api functions read both users under their wallets' row locks.
SET LOCAL ROLE atp_owner;

CREATE TABLE ledger.holds (
    id uuid PRIMARY KEY,
    from_user_id uuid NOT NULL,
    to_user_id uuid NOT NULL,
    from_account_id uuid NOT NULL,
    to_account_id uuid NOT NULL,
    amount numeric(21, 8) NOT NULL,
    captured_amount numeric(21, 8) NOT NULL DEFAULT 0,
    status text NOT NULL DEFAULT 'pending',
    memo text,
    expires_at timestamptz NOT NULL,
    transfer_id uuid,
    created_at timestamptz NOT NULL,
    settled_at timestamptz,
    version bigint NOT NULL DEFAULT 1,
    CONSTRAINT holds_amount CHECK (amount > 0 AND amount <= 1000000000000),
    CONSTRAINT holds_captured_within_amount CHECK (captured_amount >= 0 AND captured_amount <= amount),
    CONSTRAINT holds_status CHECK (status IN ('pending', 'captured', 'voided', 'expired')),
    -- Settled exactly once: only a captured hold has a transfer, only a pending one no settle time.
    CONSTRAINT holds_transfer_iff_captured CHECK ((status = 'captured') = (transfer_id IS NOT NULL)),
    CONSTRAINT holds_settled_iff_not_pending CHECK ((status = 'pending') = (settled_at IS NULL)),
    CONSTRAINT holds_two_users CHECK (from_user_id <> to_user_id),
    CONSTRAINT holds_version_positive CHECK (version > 0)
);
-- What maintenance releases, oldest first; also who has pending holds (delete_user, verify).
CREATE INDEX holds_pending_expiry ON ledger.holds (expires_at) WHERE status = 'pending';
-- A history item of a captured hold's transfer names the hold.
CREATE INDEX holds_transfer ON ledger.holds (transfer_id) WHERE transfer_id IS NOT NULL;

-- A hold's events (created, captured, voided, expired) form its own stream.
ALTER TABLE ledger.events DROP CONSTRAINT events_aggregate_type;
ALTER TABLE ledger.events
    ADD CONSTRAINT events_aggregate_type CHECK (aggregate_type IN ('account', 'user', 'hold'));

RESET ROLE;
