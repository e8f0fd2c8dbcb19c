-- depends: 0006.refunds-and-batches
-- The CHECK constraints of events and journal lines that their writers guarantee by
-- construction go: every statement that inserts into a table with CHECKs reads and prepares
-- them again, and measured on api.transfer these six cost 15-20% of its throughput. What they
-- said still holds: only ledger.post_transfer, ledger.post_journal and the user and account
-- functions write these tables (nobody else may), they write only sides debit/credit, positive
-- amounts from ledger.amount_problem-checked input, balances within balances' own CHECK (which
-- stays), known kinds and versions n+1; api.verify_projections recomputes balances, versions
-- and journals from these rows and names any that were written otherwise.
SET LOCAL ROLE atp_owner;

ALTER TABLE ledger.events
    DROP CONSTRAINT events_aggregate_type,
    DROP CONSTRAINT events_version_positive;
ALTER TABLE ledger.ledger_entries
    DROP CONSTRAINT ledger_entries_side,
    DROP CONSTRAINT ledger_entries_amount,
    DROP CONSTRAINT ledger_entries_balance_after,
    DROP CONSTRAINT ledger_entries_kind;

RESET ROLE;
