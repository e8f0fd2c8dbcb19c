-- depends: 0002.ledger-tables
-- The three system users and their accounts, each opened by an AccountOpened event so that
-- the projection equals the replay from the first day.
SET LOCAL ROLE atp_owner;

INSERT INTO ledger.users (id, username, email, display_name, is_system) VALUES
    ('00000000-0000-0000-0000-000000000001', 'SYSTEM_MINT', 'mint@system.internal', 'ATP Issuer', true),
    ('00000000-0000-0000-0000-000000000002', 'SYSTEM_FEE', 'fee@system.internal', 'Fee Income', true),
    ('00000000-0000-0000-0000-000000000003', 'SYSTEM_RESERVE', 'reserve@system.internal', 'System Reserve', true);

INSERT INTO ledger.accounts (id, user_id, is_system, account_type) VALUES
    ('00000000-0000-0000-0000-000000000101', '00000000-0000-0000-0000-000000000001', true, 'mint_source'),
    ('00000000-0000-0000-0000-000000000102', '00000000-0000-0000-0000-000000000002', true, 'fee_income'),
    ('00000000-0000-0000-0000-000000000103', '00000000-0000-0000-0000-000000000003', true, 'system_reserve');

WITH opened AS (
    INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor)
    SELECT 'account', a.id, 1, 'AccountOpened',
           jsonb_build_object('user_id', a.user_id, 'account_type', a.account_type),
           'migration'
    FROM ledger.accounts a
    RETURNING id, aggregate_id, created_at
)
INSERT INTO ledger.balances (account_id, normal_side, balance, is_frozen, version, last_event_id, updated_at)
SELECT o.aggregate_id, t.normal_side, 0, false, 1, o.id, o.created_at
  FROM opened o
  JOIN ledger.accounts a ON a.id = o.aggregate_id
  JOIN ledger.account_types t ON t.code = a.account_type;

RESET ROLE;
