-- How much one account event moves its account's balance: the amount, positive on the
-- account's normal side, negative on the other; 0 for events that move no money.
CREATE OR REPLACE FUNCTION ledger.event_delta(event_type text, data jsonb, normal_side text)
RETURNS numeric
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN event_type = 'AccountDebited' AND normal_side = 'debit' THEN (data ->> 'amount')::numeric
        WHEN event_type = 'AccountDebited' THEN -(data ->> 'amount')::numeric
        WHEN event_type = 'AccountCredited' AND normal_side = 'credit' THEN (data ->> 'amount')::numeric
        WHEN event_type = 'AccountCredited' THEN -(data ->> 'amount')::numeric
        ELSE 0
    END
$$;
