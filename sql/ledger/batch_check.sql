-- The checks of a batch under its locks, in leg order: the paying account (debit_user's
-- debit_type) exists and is not frozen; then, leg by leg, the receiver exists and is not frozen,
-- the paying account still covers the legs so far (its available balance, or for the issuer
-- the bound of what can be issued, below 10^13) and the receiver stays within the 10^12 limit.
-- The first problem raises its error, naming the leg (DETAIL {"index": n}) when a leg caused it;
-- nothing is returned otherwise.
CREATE OR REPLACE FUNCTION ledger.batch_check(
    what text,
    legs ledger.batch_leg[],
    locked ledger.locked_account[],
    debit_user uuid,
    debit_type text
)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    _p record;
BEGIN
    SELECT * INTO _p FROM (
        SELECT -1 AS n,
               CASE WHEN d.account_id IS NULL THEN 'L4041' WHEN d.is_frozen THEN 'L4003' END AS code,
               batch_check.debit_user AS user_id, NULL::numeric AS available, NULL::numeric AS needed,
               false AS issuer
          FROM (SELECT 1) one
          LEFT JOIN unnest(batch_check.locked) d
            ON d.user_id = batch_check.debit_user AND d.account_type = batch_check.debit_type
        UNION ALL
        SELECT x.n,
               CASE WHEN x.account_id IS NULL THEN 'L4041'
                    WHEN x.is_frozen THEN 'L4003'
                    WHEN x.debit_after < x.debit_held THEN 'L4002'
                    WHEN x.credit_after > 1000000000000 THEN 'L4004'
                    WHEN x.debit_after > 9999999999999.99999999 THEN 'L4004'  -- the issuer's count
               END,
               x.user_id, x.debit_balance - x.debit_held, x.needed, x.credit_after <= 1000000000000 AS issuer
          FROM (
            SELECT l.n, l.user_id, r.account_id, r.is_frozen, d.held AS debit_held, d.balance AS debit_balance,
                   sum(l.amount) OVER (ORDER BY l.n) AS needed,
                   d.balance + CASE WHEN d.normal_side = 'debit' THEN 1 ELSE -1 END
                               * sum(l.amount) OVER (ORDER BY l.n) AS debit_after,
                   r.balance + CASE WHEN r.normal_side = 'credit' THEN 1 ELSE -1 END
                               * sum(l.amount) OVER (PARTITION BY l.user_id, l.account_type ORDER BY l.n)
                       AS credit_after
              FROM unnest(batch_check.legs) l
              LEFT JOIN unnest(batch_check.locked) r
                ON r.user_id = l.user_id AND r.account_type = l.account_type
              LEFT JOIN unnest(batch_check.locked) d
                ON d.user_id = batch_check.debit_user AND d.account_type = batch_check.debit_type
          ) x
    ) p
     WHERE p.code IS NOT NULL
     ORDER BY p.n
     LIMIT 1;
    IF _p.code IS NULL THEN
        RETURN;
    ELSIF _p.n < 0 THEN
        IF _p.code = 'L4041' THEN
            RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(_p.user_id);
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'L4003', MESSAGE = format('the wallet of user %s is frozen', _p.user_id);
    END IF;
    RAISE EXCEPTION USING ERRCODE = _p.code, DETAIL = json_build_object('index', _p.n)::text,
        MESSAGE = format('%s[%s]: ', batch_check.what, _p.n) || CASE _p.code
            WHEN 'L4041' THEN ledger.user_missing(_p.user_id)
            WHEN 'L4003' THEN format('the wallet of user %s is frozen', _p.user_id)
            WHEN 'L4002' THEN format('insufficient balance: user %s has %s ATP available, %s ATP needed by the '
                                     'legs up to this one', batch_check.debit_user, _p.available::numeric(21, 8),
                                     _p.needed::numeric(21, 8))
            ELSE CASE WHEN _p.issuer THEN 'this would take the total issued above its limit of '
                                          '9999999999999.99999999 ATP'
                      ELSE 'this would take a balance above the limit of 1000000000000 ATP' END END;
END
$$;
