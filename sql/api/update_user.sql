CREATE OR REPLACE FUNCTION api.update_user(
    user_id uuid,
    username text DEFAULT NULL,
    email text DEFAULT NULL,
    display_name text DEFAULT NULL,
    expected_version bigint DEFAULT NULL,
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
    _before jsonb;
    _changes jsonb;
    _body json;
BEGIN
    _ctx := ledger.authorize(update_user.api_key_hash, 'write', update_user.request_user_id,
                             update_user.correlation_id, update_user.client_addr);
    _hash := COALESCE(update_user.request_hash, ledger.fingerprint('update_user', jsonb_build_object(
        'user_id', update_user.user_id, 'username', update_user.username, 'email', update_user.email,
        'display_name', update_user.display_name, 'expected_version', update_user.expected_version)));
    _stored := ledger.idempotency_lookup(_ctx, update_user.idempotency_key, 'update_user', _hash);
    IF _stored.key IS NOT NULL THEN
        status := _stored.response_status;
        body := _stored.response_body;
        replayed := true;
        RETURN;
    END IF;

    IF update_user.username IS NULL AND update_user.email IS NULL AND update_user.display_name IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001',
            MESSAGE = 'nothing to update: give username, email or display_name';
    END IF;
    IF update_user.expected_version < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001',
            MESSAGE = 'expected_version must be at least 1 (a user starts at version 1)';
    END IF;
    PERFORM ledger.check_user_fields(update_user.username, update_user.email, update_user.display_name);
    SELECT * INTO _user FROM ledger.users
     WHERE id = update_user.user_id AND deleted_at IS NULL AND NOT is_system
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = CASE WHEN update_user.user_id IS NULL THEN 'L4001' ELSE 'L4041' END,
            MESSAGE = CASE WHEN update_user.user_id IS NULL THEN 'user_id is required'
                           ELSE ledger.user_missing(update_user.user_id) END;
    END IF;
    IF update_user.expected_version IS NOT NULL AND update_user.expected_version <> _user.version THEN
        RAISE EXCEPTION USING ERRCODE = 'L4092',
            MESSAGE = format('user %s is at version %s, not %s: read it again and retry',
                             _user.id, _user.version, update_user.expected_version);
    END IF;
    PERFORM ledger.check_user_unique(_user.id, update_user.username, update_user.email);

    _before := ledger.user_json(_user.id)::jsonb;
    -- An empty display_name clears it.
    _changes := jsonb_strip_nulls(jsonb_build_object(
        'username', update_user.username, 'email', update_user.email))
        || CASE WHEN update_user.display_name IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('display_name', NULLIF(update_user.display_name, '')) END;
    BEGIN
        UPDATE ledger.users
           SET username = COALESCE(update_user.username, username),
               email = COALESCE(update_user.email, email),
               display_name = CASE WHEN update_user.display_name IS NULL THEN display_name
                                   ELSE NULLIF(update_user.display_name, '') END,
               updated_at = clock_timestamp(),
               version = version + 1
         WHERE id = _user.id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION USING ERRCODE = 'L4093',
            MESSAGE = 'the username or email was taken by a user created at the same time';
    END;
    INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor,
                               api_key_id, request_user_id, correlation_id)
    VALUES ('user', _user.id, _user.version + 1, 'UserUpdated', _changes,
            _ctx.actor, _ctx.api_key_id, _ctx.request_user_id, _ctx.correlation_id);

    _body := ledger.user_json(_user.id);
    PERFORM ledger.write_audit(_ctx, 'user.update', 'user', _user.id::text, _before, _body::jsonb);
    PERFORM ledger.idempotency_store(_ctx, update_user.idempotency_key, 'update_user', _hash, 200, _body);
    status := 200;
    body := _body;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.update_user(uuid, text, text, text, bigint, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.update_user(uuid, text, text, text, bigint, uuid, text, text, uuid, text, inet)
    TO atp_app, atp_dba;
COMMENT ON FUNCTION api.update_user(uuid, text, text, text, bigint, uuid, text, text, uuid, text, inet) IS
'Changes a user''s username, email or display_name (NULL keeps a field, an empty display_name clears it).
With expected_version, refuses if the user changed meanwhile. Needs write.
Errors: L4001 invalid_request, L4041 user_not_found, L4092 version_conflict, L4093 user_exists, L4091 idempotency_conflict.
Returns (status 200, body, replayed). Example: SELECT * FROM api.update_user(:alice, display_name => ''Alice A.'');';
