-- Freezes or unfreezes a user's wallet by appending AccountFrozen or AccountUnfrozen.
-- Asking for the state the wallet is already in changes nothing and records nothing. Returns
-- the user's body (ledger.user_json); the audit states take it as jsonb.
CREATE OR REPLACE FUNCTION ledger.set_frozen(
    ctx ledger.request_context,
    user_id uuid,
    frozen boolean,
    reason text
)
RETURNS json
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    _wallet ledger.balances;
    _before jsonb;
    _body json;
BEGIN
    IF length(set_frozen.reason) > 500 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'reason is longer than 500 characters';
    END IF;
    SELECT * INTO _wallet FROM ledger.balances
     WHERE account_id = ledger.wallet_of(set_frozen.user_id)
       FOR UPDATE;
    -- A delete may have committed while this waited for the lock: the wallet is closed then.
    IF NOT FOUND OR _wallet.is_closed THEN
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(set_frozen.user_id);
    END IF;
    _before := ledger.user_json(set_frozen.user_id)::jsonb;
    IF _wallet.is_frozen <> set_frozen.frozen THEN
        PERFORM ledger.append_account_event(ctx, _wallet.account_id,
            CASE WHEN set_frozen.frozen THEN 'AccountFrozen' ELSE 'AccountUnfrozen' END,
            jsonb_build_object('reason', set_frozen.reason), clock_timestamp());
    END IF;
    _body := ledger.user_json(set_frozen.user_id);
    IF _wallet.is_frozen <> set_frozen.frozen THEN
        PERFORM ledger.write_audit(ctx, CASE WHEN set_frozen.frozen THEN 'wallet.freeze' ELSE 'wallet.unfreeze' END,
                                   'user', set_frozen.user_id::text, _before,
                                   _body::jsonb || jsonb_build_object('reason', set_frozen.reason));
    END IF;
    RETURN _body;
END
$$;
