CREATE OR REPLACE FUNCTION api.get_balance(
    user_id uuid,
    as_of timestamptz DEFAULT NULL,
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL
)
RETURNS json
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _account uuid;
    _username text;
    _snapshot ledger.snapshots;
    _replayed record;
BEGIN
    PERFORM ledger.authorize(get_balance.api_key_hash, 'read', get_balance.request_user_id,
                             get_balance.correlation_id, get_balance.client_addr);
    _account := ledger.wallet_of(get_balance.user_id);
    SELECT username INTO _username FROM ledger.users WHERE id = get_balance.user_id;
    IF get_balance.as_of IS NULL THEN
        RETURN (SELECT json_build_object('user_id', get_balance.user_id, 'username', _username,
                                         'balance', b.balance::numeric(21, 8)::text,
                                         'available', (b.balance - b.held)::numeric(21, 8)::text,
                                         'held', b.held::numeric(21, 8)::text,
                                         'is_frozen', b.is_frozen,
                                         'updated_at', ledger.rfc3339(b.updated_at))
                  FROM ledger.balances b WHERE b.account_id = _account);
    END IF;

    IF get_balance.as_of > clock_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'as_of is in the future';
    END IF;
    -- The newest snapshot at or before the moment, then at most 99 events on top of it.
    SELECT * INTO _snapshot FROM ledger.snapshots
     WHERE account_id = _account AND event_created_at <= get_balance.as_of
     ORDER BY version DESC LIMIT 1;
    SELECT COALESCE(sum(ledger.event_delta(e.event_type, e.data, 'credit')), 0) AS delta,
           count(*) AS events,
           max(e.created_at) AS last_at
      INTO _replayed
      FROM ledger.events e
     WHERE e.aggregate_type = 'account' AND e.aggregate_id = _account
       AND e.version > COALESCE(_snapshot.version, 0)
       AND e.created_at <= get_balance.as_of;
    IF _snapshot.version IS NULL AND _replayed.events = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4041',
            MESSAGE = format('user %s did not exist at %s', get_balance.user_id, ledger.rfc3339(get_balance.as_of));
    END IF;
    RETURN json_build_object(
        'user_id', get_balance.user_id,
        'username', _username,
        'balance', (COALESCE(_snapshot.balance, 0) + _replayed.delta)::numeric(21, 8)::text,
        'as_of', ledger.rfc3339(get_balance.as_of),
        'updated_at', ledger.rfc3339(COALESCE(_replayed.last_at, _snapshot.event_created_at)));
END
$$;

REVOKE ALL ON FUNCTION api.get_balance(uuid, timestamptz, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.get_balance(uuid, timestamptz, text, uuid, text, inet) TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.get_balance(uuid, timestamptz, text, uuid, text, inet) IS
'The balance of a user''s wallet now, with available (the balance less what pending holds reserve) and held; or
the posted balance as_of a past moment (replayed from the newest snapshot before it and the events after that). Needs read. Errors: L4001 invalid_request (as_of in the future), L4041 user_not_found.
Example: SELECT api.get_balance(:alice, as_of => now() - interval ''1 day'');';
