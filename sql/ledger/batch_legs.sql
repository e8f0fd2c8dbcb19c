-- The legs of a batch (a JSON array of objects with to_user_id, amount and, when with_memo,
-- memo), checked for shape: 1 to max_legs of them, no unknown field, an id that is a UUID, an
-- amount (a JSON string or number) that ledger.amount_problem accepts, a memo of at most 500
-- characters, no leg to the sender itself. A bad leg raises invalid_request (L4001) naming it,
-- with DETAIL {"index": n} (0-based), which the HTTP layer copies into the error body. A leg
-- to the fee user (SYSTEM_FEE) of a transfer batch credits the fee_income account.
CREATE OR REPLACE FUNCTION ledger.batch_legs(
    legs jsonb,
    what text,
    max_legs integer,
    with_memo boolean,
    sender uuid DEFAULT NULL
)
RETURNS ledger.batch_leg[]
LANGUAGE plpgsql
IMMUTABLE
AS $$
#variable_conflict use_column
DECLARE
    _leg jsonb;
    _n integer := -1;
    _problem text;
    _id text;
    _amount jsonb;
    _value numeric;
    _text text;
    _sign text;
    _memo jsonb;
    _user uuid;
    _out ledger.batch_leg[] := '{}';
BEGIN
    IF batch_legs.legs IS NULL OR jsonb_typeof(batch_legs.legs) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = format('%s must be an array of legs', batch_legs.what);
    ELSIF jsonb_array_length(batch_legs.legs) NOT BETWEEN 1 AND batch_legs.max_legs THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001',
            MESSAGE = format('%s must hold 1 to %s legs', batch_legs.what, batch_legs.max_legs);
    END IF;
    FOR _leg IN SELECT value FROM jsonb_array_elements(batch_legs.legs) LOOP
        _n := _n + 1;
        _problem := NULL;
        _user := NULL;
        _value := NULL;
        IF jsonb_typeof(_leg) <> 'object' THEN
            _problem := 'must be an object';
        ELSIF (_leg - 'to_user_id' - 'amount' - CASE WHEN batch_legs.with_memo THEN 'memo' ELSE '' END) <> '{}' THEN
            _problem := format('has unknown field(s): %s; allowed: to_user_id, amount%s',
                               (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(
                                   _leg - 'to_user_id' - 'amount'
                                   - CASE WHEN batch_legs.with_memo THEN 'memo' ELSE '' END) k),
                               CASE WHEN batch_legs.with_memo THEN ', memo' ELSE '' END);
        ELSE
            _id := _leg ->> 'to_user_id';
            _amount := _leg -> 'amount';
            _memo := _leg -> 'memo';
            IF _id IS NULL THEN
                _problem := 'to_user_id is required';
            ELSIF jsonb_typeof(_leg -> 'to_user_id') <> 'string'
                  OR _id !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
                _problem := 'to_user_id must be a UUID';
            ELSIF _amount IS NULL OR jsonb_typeof(_amount) = 'null' THEN
                _problem := 'amount is required';
            ELSIF jsonb_typeof(_amount) = 'number' THEN
                _value := _amount::numeric;
            -- (No backslash in these patterns: with standard_conforming_strings off in a session,
            -- '\s' would be read as an escape.)
            ELSIF jsonb_typeof(_amount) = 'string'
                  AND _amount #>> '{}' ~ '^[[:space:]]*-?([0-9]+([.][0-9]*)?|[.][0-9]+)[[:space:]]*$' THEN
                _text := regexp_replace(_amount #>> '{}', '^[[:space:]]+|[[:space:]]+$', '', 'g');
                IF length(_text) > 40 THEN
                    -- Without the zeros that change nothing, which the contract allows in any number:
                    -- numeric input refuses more than 16,383 digits after the point.
                    _sign := CASE WHEN left(_text, 1) = '-' THEN '-' ELSE '' END;
                    _text := ltrim(substr(_text, length(_sign) + 1), '0');
                    IF strpos(_text, '.') > 0 THEN
                        _text := rtrim(rtrim(_text, '0'), '.');
                    END IF;
                    _text := _sign || CASE WHEN _text = '' OR left(_text, 1) = '.' THEN '0' ELSE '' END || _text;
                END IF;
                IF length(_text) > 1000 THEN
                    _problem := 'amount has more digits than any amount can have';
                ELSE
                    _value := _text::numeric;
                END IF;
            ELSE
                _problem := 'amount must be a decimal number such as "100.50"';
            END IF;
            IF _problem IS NULL THEN
                _user := _id::uuid;
                _problem := ledger.amount_problem(_value);
            END IF;
            IF _problem IS NOT NULL THEN
                NULL;
            ELSIF _memo IS NOT NULL AND jsonb_typeof(_memo) NOT IN ('string', 'null') THEN
                _problem := 'memo must be a string';
            ELSIF length(_memo #>> '{}') > 500 THEN
                _problem := 'memo is longer than 500 characters';
            ELSIF _user = batch_legs.sender THEN
                _problem := 'a transfer needs two different users';
            END IF;
        END IF;
        IF _problem IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'L4001',
                MESSAGE = format('%s[%s]: %s', batch_legs.what, _n, _problem),
                DETAIL = json_build_object('index', _n)::text;
        END IF;
        _out := _out || ROW(_n, _user,
                            CASE WHEN batch_legs.sender IS NOT NULL
                                      AND _user = '00000000-0000-0000-0000-000000000002'
                                 THEN 'fee_income' ELSE 'user_wallet' END,
                            _value, _memo #>> '{}')::ledger.batch_leg;
    END LOOP;
    RETURN _out;
END
$$;
