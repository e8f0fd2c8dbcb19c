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
    _w record;
    _snapshot ledger.snapshots;
    _next bigint;
    _replayed record;
BEGIN
    -- One statement: who is calling and the user's open wallet (ledger.read_wallet).
    SELECT * INTO _w
      FROM ledger.read_wallet(get_balance.api_key_hash, get_balance.correlation_id, get_balance.user_id);
    IF _w.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_w.refusal, _w.actor, _w.key_name, 'read', _w.rate_limit, _w.current_count,
                              _w.previous_count, _w.elapsed);
    END IF;
    IF _w.api_key_id IS NOT NULL AND _w.stale_last_used THEN
        PERFORM ledger.touch_api_key(_w.api_key_id);
    END IF;
    IF get_balance.user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'user_id is required';
    ELSIF _w.account_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(get_balance.user_id);
    END IF;
    IF get_balance.as_of IS NULL THEN
        RETURN json_build_object('user_id', get_balance.user_id, 'username', _w.username,
                                 'balance', _w.balance::numeric(21, 8)::text,
                                 'available', (_w.balance - _w.held)::numeric(21, 8)::text,
                                 'held', _w.held::numeric(21, 8)::text,
                                 'is_frozen', _w.is_frozen,
                                 'updated_at', ledger.rfc3339(_w.updated_at));
    END IF;

    IF get_balance.as_of > clock_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'as_of is in the future';
    END IF;
    -- The newest snapshot at or before the moment, then the events on top of it up to the next
    -- snapshot (99 at most): an account's event times rise with its versions, so none from the
    -- next snapshot's version on is at or before the moment. Without that bound, the index scan
    -- went through every later event of the account and the time filter threw them away (3 s for
    -- a moment 100,000 events back).
    SELECT * INTO _snapshot FROM ledger.snapshots
     WHERE account_id = _w.account_id AND event_created_at <= get_balance.as_of
     ORDER BY version DESC LIMIT 1;
    SELECT s.version INTO _next FROM ledger.snapshots s
     WHERE s.account_id = _w.account_id AND s.version > COALESCE(_snapshot.version, 0)
     ORDER BY s.version LIMIT 1;
    SELECT COALESCE(sum(ledger.event_delta(e.event_type, e.data, 'credit')), 0) AS delta,
           count(*) AS events,
           max(e.created_at) AS last_at
      INTO _replayed
      FROM ledger.events e
     WHERE e.aggregate_type = 'account' AND e.aggregate_id = _w.account_id
       AND e.version > COALESCE(_snapshot.version, 0)
       AND e.version < COALESCE(_next, 9223372036854775807)
       AND e.created_at <= get_balance.as_of;
    IF _snapshot.version IS NULL AND _replayed.events = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4041',
            MESSAGE = format('user %s did not exist at %s', get_balance.user_id,
                             COALESCE(ledger.rfc3339(get_balance.as_of), get_balance.as_of::text));
    END IF;
    RETURN json_build_object(
        'user_id', get_balance.user_id,
        'username', _w.username,
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
