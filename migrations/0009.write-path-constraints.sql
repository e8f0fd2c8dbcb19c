-- depends: 0008.json-bodies
-- Three CHECK constraints that their writers guarantee by construction go, as 0007's did: every
-- UPDATE of balances and every INSERT into audit_log reads and prepares its table's CHECKs
-- again, and measured on api.transfer these three cost 2.5% of its PostgreSQL CPU
-- (bench/README.md, "Sixth pass"). What they said still holds:
-- - balances.normal_side is written once, by the function that opens the account, from the
--   account type's side, and never updated; api.verify_projections compares it with the type.
-- - balances.version is the account's last event version, which starts at 1 and grows by one;
--   api.verify_projections recomputes it from the events.
-- - audit_log.id is GENERATED ALWAYS AS IDENTITY, which starts at 1 and only grows; a row the
--   owner forges at or below (tx 0, id 0) lies outside every seal, and api.verify_audit_chain
--   reports it.
-- The CHECKs that guard money stay: 0 <= balance <= 10^12 and 0 <= held <= balance.
SET LOCAL ROLE atp_owner;

ALTER TABLE ledger.balances
    DROP CONSTRAINT balances_normal_side_check,
    DROP CONSTRAINT balances_version_positive;
ALTER TABLE ledger.audit_log
    DROP CONSTRAINT audit_log_id_check;

RESET ROLE;
