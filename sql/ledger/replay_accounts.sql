-- Every account's state replayed from its events alone: what the projection must equal.
CREATE OR REPLACE FUNCTION ledger.replay_accounts()
RETURNS TABLE (account_id uuid, normal_side text, balance numeric, is_frozen boolean, is_closed boolean,
               version bigint, event_count bigint)
LANGUAGE sql
STABLE
AS $$
    SELECT e.aggregate_id,
           t.normal_side,
           sum(ledger.event_delta(e.event_type, e.data, t.normal_side)),
           COALESCE((array_agg(e.event_type ORDER BY e.version DESC)
                     FILTER (WHERE e.event_type IN ('AccountFrozen', 'AccountUnfrozen')))[1] = 'AccountFrozen', false),
           bool_or(e.event_type = 'AccountClosed'),
           max(e.version),
           count(*)
      FROM ledger.events e
      JOIN ledger.accounts a ON a.id = e.aggregate_id
      JOIN ledger.account_types t ON t.code = a.account_type
     WHERE e.aggregate_type = 'account'
     GROUP BY e.aggregate_id, t.normal_side
$$;
