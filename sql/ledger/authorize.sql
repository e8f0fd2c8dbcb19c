-- Establishes who is calling and whether they may: an API key (by its SHA-256) with the
-- permission (read, write, admin, or maintenance, which only admin keys hold), within its
-- per-minute rate limit; or, without a key, a database role that is a member of atp_dba
-- (anything), atp_auditor (read) or atp_app (maintenance). Every api function starts here.
CREATE OR REPLACE FUNCTION ledger.authorize(
    api_key_hash text,
    permission text,
    request_user_id uuid,
    correlation_id text,
    client_addr inet
)
RETURNS ledger.request_context
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    _ctx ledger.request_context;
    _key ledger.api_keys;
    _minute bigint;
    _bucket regclass;
    _value bigint;
    _elapsed double precision;
    _current bigint;
    _previous bigint;
BEGIN
    -- SET ROLE changes the caller without changing session_user; both count.
    _ctx.actor := COALESCE(NULLIF(current_setting('role'), 'none'), session_user);
    _ctx.request_user_id := authorize.request_user_id;
    _ctx.client_addr := authorize.client_addr;
    IF length(authorize.correlation_id) > 128 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001',
            MESSAGE = 'correlation id is longer than 128 characters';
    END IF;
    _ctx.correlation_id := authorize.correlation_id;

    IF authorize.api_key_hash IS NULL THEN
        IF pg_has_role(_ctx.actor, 'atp_dba', 'MEMBER')
           OR (authorize.permission = 'read' AND pg_has_role(_ctx.actor, 'atp_auditor', 'MEMBER'))
           -- The service's scheduler runs the maintenance jobs, which take no caller input.
           OR (authorize.permission = 'maintenance' AND pg_has_role(_ctx.actor, 'atp_app', 'MEMBER')) THEN
            _ctx.scope := 'role:' || _ctx.actor;
            RETURN _ctx;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'L4011',
            MESSAGE = format('an API key is required (database role %s may not call without one)', _ctx.actor);
    END IF;

    SELECT * INTO _key FROM ledger.api_keys WHERE key_hash = lower(authorize.api_key_hash);
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'L4011', MESSAGE = 'the API key is not valid';
    ELSIF NOT _key.is_active THEN
        RAISE EXCEPTION USING ERRCODE = 'L4011', MESSAGE = 'the API key has been revoked';
    ELSIF _key.expires_at <= now() THEN
        RAISE EXCEPTION USING ERRCODE = 'L4011', MESSAGE = 'the API key has expired';
    END IF;
    IF NOT ('admin' = ANY (_key.permissions) OR authorize.permission = ANY (_key.permissions)) THEN
        RAISE EXCEPTION USING ERRCODE = 'L4031',
            MESSAGE = format('the API key %s lacks the %s permission', _key.name, authorize.permission);
    END IF;

    -- Sliding-window limit. Each key has two UNLOGGED sequences, for even and odd minutes,
    -- holding minute * 10^9 + requests. nextval is not transactional: a request that fails
    -- later still counts, and no request waits for another's commit.
    _minute := floor(extract(epoch FROM now()) / 60)::bigint;
    _bucket := CASE WHEN _minute % 2 = 0 THEN _key.bucket_even ELSE _key.bucket_odd END;
    _value := nextval(_bucket);
    IF _value / 1000000000 < _minute THEN
        -- First request of this minute: the bucket still holds a minute two or more ago.
        -- Racing first requests may each restart it, which loses at most a few counts.
        _value := setval(_bucket, _minute * 1000000000 + 1);
    END IF;
    _current := _value % 1000000000;
    _previous := pg_sequence_last_value(CASE WHEN _minute % 2 = 0 THEN _key.bucket_odd ELSE _key.bucket_even END);
    _previous := CASE WHEN _previous / 1000000000 = _minute - 1 THEN _previous % 1000000000 ELSE 0 END;
    _elapsed := extract(epoch FROM now()) / 60.0 - _minute;
    IF _previous * (1.0 - _elapsed) + _current > _key.rate_limit_per_minute THEN
        RAISE EXCEPTION USING ERRCODE = 'L4291',
            MESSAGE = format('rate limit of %s requests per minute exceeded', _key.rate_limit_per_minute),
            DETAIL = json_build_object('retry_after', ledger.retry_after(_key.rate_limit_per_minute, _current,
                                                                         _previous, _elapsed))::text;
    END IF;

    -- last_used_at moves at most once a minute, and never waits for a lock to do so.
    IF _key.last_used_at IS NULL OR _key.last_used_at < now() - interval '1 minute' THEN
        UPDATE ledger.api_keys SET last_used_at = now()
         WHERE id = (SELECT id FROM ledger.api_keys WHERE id = _key.id FOR UPDATE SKIP LOCKED);
    END IF;

    _ctx.api_key_id := _key.id;
    _ctx.scope := _key.id::text;
    RETURN _ctx;
END
$$;
