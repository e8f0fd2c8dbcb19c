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
    _window timestamptz := date_trunc('minute', now());
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

    -- Sliding-window limit over per-backend counters: no two backends share a row, so no
    -- request waits for another's commit.
    INSERT INTO ledger.rate_limit_buckets AS b (api_key_id, window_start, backend_pid, request_count)
    VALUES (_key.id, _window, pg_backend_pid(), 1)
    ON CONFLICT (api_key_id, window_start, backend_pid)
    DO UPDATE SET request_count = b.request_count + 1
    RETURNING request_count INTO _current;
    -- This backend's own row was just counted; add every other backend's.
    SELECT _current + COALESCE(sum(request_count) FILTER (WHERE window_start = _window), 0),
           COALESCE(sum(request_count) FILTER (WHERE window_start < _window), 0)
      INTO _current, _previous
      FROM ledger.rate_limit_buckets
     WHERE api_key_id = _key.id AND window_start >= _window - interval '1 minute'
       AND NOT (window_start = _window AND backend_pid = pg_backend_pid());
    _elapsed := extract(epoch FROM now() - _window) / 60.0;
    IF _previous * (1.0 - _elapsed) + _current > _key.rate_limit_per_minute THEN
        RAISE EXCEPTION USING ERRCODE = 'L4291',
            MESSAGE = format('rate limit of %s requests per minute exceeded', _key.rate_limit_per_minute),
            DETAIL = json_build_object('retry_after', greatest(1, ceil(60 - _elapsed * 60)))::text;
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
