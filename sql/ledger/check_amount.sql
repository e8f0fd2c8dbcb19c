-- An amount of ATP: more than 0, at most 10^12, at most 8 decimal places.
CREATE OR REPLACE FUNCTION ledger.check_amount(amount numeric)
RETURNS numeric
LANGUAGE plpgsql
IMMUTABLE
AS $$
BEGIN
    IF amount IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'amount is required';
    ELSIF amount = 'NaN'::numeric THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'amount must be a number';
    ELSIF amount <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'amount must be greater than 0';
    ELSIF amount > 1000000000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'amount must be at most 1000000000000';
    ELSIF amount <> round(amount, 8) THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'amount has more than 8 decimal places';
    END IF;
    RETURN amount;
END
$$;
