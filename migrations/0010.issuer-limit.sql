-- depends: 0009.write-path-constraints
-- The 10^12 limit is a limit of what one account holds (a wallet, fee income, the reserve: the
-- credit-normal accounts). It also capped mint_source, the debit-normal count of what has been
-- issued and not burned, so that all wallets together could hold no more than one full wallet:
-- once 10^12 ATP were out, minting to anyone failed as if that wallet were full. The count is
-- now bounded by its type only, numeric(21,8): below 10^13, so that every total of balances
-- (api.verify_projections' supply) still fits the ledger's amount type. api.mint and
-- api.mint_batch check the same bound first and say which limit a mint would cross.
-- balances.normal_side is written once from the account's type and api.verify_projections
-- compares the two, so the CHECK can rely on it.
SET LOCAL ROLE atp_owner;

ALTER TABLE ledger.balances
    DROP CONSTRAINT balances_within_limits,
    ADD CONSTRAINT balances_within_limits
        CHECK (balance >= 0 AND (balance <= 1000000000000 OR normal_side = 'debit'));

RESET ROLE;
