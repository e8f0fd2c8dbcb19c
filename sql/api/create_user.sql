CREATE OR REPLACE FUNCTION api.create_user(
    user_id uuid,
    username text,
    email text,
    display_name text DEFAULT NULL,
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
    _account uuid := ledger.uuid_v7();
    _body json;
    _at timestamptz;
    _taken ledger.users;
BEGIN
    _ctx := ledger.authorize(create_user.api_key_hash, 'write', create_user.request_user_id,
                             create_user.correlation_id, create_user.client_addr);
    _hash := COALESCE(create_user.request_hash, ledger.fingerprint('create_user', jsonb_build_object(
        'user_id', create_user.user_id, 'username', create_user.username,
        'email', create_user.email, 'display_name', create_user.display_name)));
    _stored := ledger.idempotency_lookup(_ctx, create_user.idempotency_key, 'create_user', _hash);
    IF _stored.key IS NOT NULL THEN
        status := _stored.response_status;
        body := _stored.response_body;
        replayed := true;
        RETURN;
    END IF;

    IF create_user.user_id IS NULL OR create_user.username IS NULL OR create_user.email IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'user_id, username and email are required';
    END IF;
    PERFORM ledger.check_user_fields(create_user.username, create_user.email, create_user.display_name);
    SELECT * INTO _taken FROM ledger.users WHERE id = create_user.user_id;
    IF FOUND THEN
        -- A deleted user's id stays with its history, and the system users' ids are reserved:
        -- neither is ever given to a new user.
        RAISE EXCEPTION USING ERRCODE = 'L4093', MESSAGE = CASE
            WHEN _taken.is_system THEN format('user id %s is reserved for the ledger''s own accounts',
                                              create_user.user_id)
            WHEN _taken.deleted_at IS NOT NULL THEN format(
                'user id %s belonged to a user who was deleted, and is never used again', create_user.user_id)
            ELSE format('user %s already exists', create_user.user_id) END;
    END IF;
    PERFORM ledger.check_user_unique(create_user.user_id, create_user.username, create_user.email);

    _at := clock_timestamp();
    BEGIN
        -- One moment for the user, its first events and its wallet: as_of answers at created_at.
        INSERT INTO ledger.users (id, username, email, display_name, version, created_at, updated_at)
        VALUES (create_user.user_id, create_user.username, create_user.email,
                NULLIF(create_user.display_name, ''), 1, _at, _at);
    EXCEPTION WHEN unique_violation THEN
        -- Lost a race with a concurrent create of the same id, username or email.
        RAISE EXCEPTION USING ERRCODE = 'L4093',
            MESSAGE = 'a user with this id, username or email was created at the same time';
    END;
    INSERT INTO ledger.accounts (id, user_id, is_system, account_type)
    VALUES (_account, create_user.user_id, false, 'user_wallet');
    -- The user's and the wallet's first events, and the wallet's projection at version 1.
    WITH appended AS (
        INSERT INTO ledger.events (aggregate_type, aggregate_id, version, event_type, data, actor,
                                   api_key_id, request_user_id, correlation_id, created_at)
        VALUES ('user', create_user.user_id, 1, 'UserCreated',
                jsonb_build_object('username', create_user.username, 'email', create_user.email,
                                   'display_name', NULLIF(create_user.display_name, '')),
                _ctx.actor, _ctx.api_key_id, _ctx.request_user_id, _ctx.correlation_id, _at),
               ('account', _account, 1, 'AccountOpened',
                jsonb_build_object('user_id', create_user.user_id, 'account_type', 'user_wallet'),
                _ctx.actor, _ctx.api_key_id, _ctx.request_user_id, _ctx.correlation_id, _at)
        RETURNING id, aggregate_type
    )
    INSERT INTO ledger.balances (account_id, normal_side, balance, is_frozen, is_closed, version, last_event_id,
                                 updated_at)
    SELECT _account, 'credit', 0, false, false, 1, a.id, _at
      FROM appended a
     WHERE a.aggregate_type = 'account';

    _body := ledger.user_json(create_user.user_id);
    PERFORM ledger.write_audit(_ctx, 'user.create', 'user', create_user.user_id::text, NULL, _body::jsonb);
    PERFORM ledger.idempotency_store(_ctx, create_user.idempotency_key, 'create_user', _hash, 201, _body);
    status := 201;
    body := _body;
    replayed := false;
END
$$;

REVOKE ALL ON FUNCTION api.create_user(uuid, text, text, text, uuid, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_user(uuid, text, text, text, uuid, text, text, uuid, text, inet)
    TO atp_app, atp_dba;
COMMENT ON FUNCTION api.create_user(uuid, text, text, text, uuid, text, text, uuid, text, inet) IS
'Creates a user with its wallet (balance 0) and their first events. Needs write.
Errors: L4001 invalid_request, L4093 user_exists (id, username or email taken), L4091 idempotency_conflict.
Returns (status 201, body, replayed). Example: SELECT * FROM api.create_user(gen_random_uuid(), ''alice'', ''alice@example.com'', ''Alice'');';
