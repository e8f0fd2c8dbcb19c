CREATE OR REPLACE FUNCTION api.delete_user(
    user_id uuid,
    idempotency_key uuid DEFAULT NULL,
    request_hash text DEFAULT NULL,
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL,
    OUT status integer,
    OUT body json,
    OUT replayed boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _ctx ledger.request_context;
    _hash text;
    _stored ledger.idempotency_keys;
    _user ledger.users;
    _wallet ledger.balances;
    _before jsonb;
    _at timestamptz;
    _body json;
BEGIN
    _ctx := ledger.authorize(delete_user.api_key_hash, 'write', delete_user.request_user_id,
                             delete_user.correlation_id, delete_user.client_addr);
    _hash := COALESCE(delete_user.request_hash,
                      ledger.fingerprint('delete_user', jsonb_build_object('user_id', delete_user.user_id)));
    _stored := ledger.idempotency_lookup(_ctx, delete_user.idempotency_key, 'delete_user', _hash);
    IF _stored.key IS NOT NULL THEN
        status := _stored.response_status;
        body := _stored.response_body;
        replayed := true;
        RETURN;
    END IF;

    SELECT * INTO _user FROM ledger.users
     WHERE id = delete_user.user_id AND deleted_at IS NULL AND NOT is_system
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = CASE WHEN delete_user.user_id IS NULL THEN 'L4001' ELSE 'L4041' END,
            MESSAGE = CASE WHEN delete_user.user_id IS NULL THEN 'user_id is required'
                           ELSE ledger.user_missing(delete_user.user_id) END;
    END IF;
    -- The wallet's row lock keeps money from arriving between the check and the close.
    SELECT b.* INTO _wallet FROM ledger.balances b
      JOIN ledger.accounts a ON a.id = b.account_id
     WHERE a.user_id = _user.id AND a.account_type = 'user_wallet'
       FOR UPDATE OF b;
    -- Under the wallet's lock: a hold being created, which locks both wallets, has committed. A
    -- hold past expires_at that maintenance has not released yet can be neither captured nor
    -- voided: it does not count (its sender's reserve is still in the balance checked below).
    IF EXISTS (SELECT FROM ledger.holds h
                WHERE h.status = 'pending' AND h.expires_at > now()
                  AND (h.from_user_id = _user.id OR h.to_user_id = _user.id)) THEN
        RAISE EXCEPTION USING ERRCODE = 'L4096',
            MESSAGE = format('user %s has pending holds: capture or void them first', _user.id);
    ELSIF _wallet.balance <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4094',
            MESSAGE = format('user %s still holds %s ATP: a user can be deleted only with a zero balance',
                             _user.id, _wallet.balance::numeric(21, 8));
    END IF;

    _before := ledger.user_json(_user.id)::jsonb;
    _at := clock_timestamp();
    UPDATE ledger.users SET deleted_at = _at, updated_at = _at, version = version + 1 WHERE id = _user.id;
    INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor,
                               api_key_id, request_user_id, correlation_id, created_at)
    VALUES ('user', _user.id, _user.version + 1, 'UserDeleted', '{}'::jsonb,
            _ctx.actor, _ctx.api_key_id, _ctx.request_user_id, _ctx.correlation_id, _at);
    PERFORM ledger.append_account_event(_ctx, _wallet.account_id, 'AccountClosed', '{}'::jsonb, _at);

    _body := json_build_object('user_id', _user.id, 'status', 'deleted', 'deleted_at', ledger.rfc3339(_at));
    PERFORM ledger.write_audit(_ctx, 'user.delete', 'user', _user.id::text, _before, _body::jsonb);
    PERFORM ledger.idempotency_store(_ctx, delete_user.idempotency_key, 'delete_user', _hash, 200, _body);
    status := 200;
    body := _body;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.delete_user(uuid, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.delete_user(uuid, uuid, text, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.delete_user(uuid, uuid, text, text, uuid, text, inet) IS
'Deletes a user logically: history stays, the wallet closes, username and email become free again.
Refused while the balance is not zero or the user has pending holds (as sender or receiver) not yet past expires_at.
Needs write.
Errors: L4001 invalid_request, L4041 user_not_found, L4094 balance_not_zero, L4096 pending_holds, L4091 idempotency_conflict.
Returns (status 200, body, replayed). Example: SELECT * FROM api.delete_user(:alice);';
