-- depends: 0010.issuer-limit
-- How long stored responses are replayed came from financeatp.idempotency_ttl, a setting every
-- session may change for itself: a direct connection as atp_app could set it below zero, and one
-- idempotency key then executed a transfer again at every call. It is the owner's now: the one
-- row of ledger.settings, which only the owner (and a superuser) may change and every function
-- reads. Its first value is the database's setting when one was made with ALTER DATABASE ... SET
-- (the migrating session sees it), at least one second, else 24 hours.
SET LOCAL ROLE atp_owner;

CREATE TABLE ledger.settings (
    one_row boolean PRIMARY KEY DEFAULT true CONSTRAINT settings_one_row CHECK (one_row),
    idempotency_ttl interval NOT NULL DEFAULT interval '24 hours'
        CONSTRAINT settings_idempotency_ttl_positive CHECK (idempotency_ttl >= interval '1 second')
);
COMMENT ON TABLE ledger.settings IS
'The ledger''s settings, one row, changed by the owner only: idempotency_ttl, how long a stored response is replayed.';

INSERT INTO ledger.settings (idempotency_ttl)
VALUES (GREATEST(COALESCE(NULLIF(current_setting('financeatp.idempotency_ttl', true), '')::interval,
                          interval '24 hours'),
                 interval '1 second'));

RESET ROLE;
