-- What is wrong with an amount of ATP, or NULL if nothing is: it must be more than 0, at most
-- 10^12, with at most 8 decimal places. A plain SQL expression, inlined into the caller, which
-- raises L4001 with the text.
CREATE OR REPLACE FUNCTION ledger.amount_problem(amount numeric)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT CASE
        WHEN amount IS NULL THEN 'amount is required'
        WHEN amount = 'NaN'::numeric THEN 'amount must be a number'
        WHEN amount <= 0 THEN 'amount must be greater than 0'
        WHEN amount > 1000000000000 THEN 'amount must be at most 1000000000000'
        WHEN amount <> round(amount, 8) THEN 'amount has more than 8 decimal places'
    END
$$;
