-- The request context of a call that is not on the write path (reads, users, keys,
-- maintenance): ledger.caller's verdict, raised as an error when refused. idempotency keys of
-- these calls are claimed by ledger.idempotency_lookup.
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
    _c record;
    _ctx ledger.request_context;
BEGIN
    SELECT * INTO _c FROM ledger.caller(authorize.api_key_hash, authorize.permission, NULL, authorize.correlation_id);
    IF _c.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_c.refusal, _c.actor, _c.key_name, authorize.permission, _c.rate_limit,
                              _c.current_count, _c.previous_count, _c.elapsed);
    END IF;
    IF _c.api_key_id IS NOT NULL AND _c.stale_last_used THEN
        PERFORM ledger.touch_api_key(_c.api_key_id);
    END IF;
    _ctx.actor := _c.actor;
    _ctx.api_key_id := _c.api_key_id;
    _ctx.request_user_id := authorize.request_user_id;
    _ctx.correlation_id := authorize.correlation_id;
    _ctx.client_addr := authorize.client_addr;
    _ctx.scope := _c.scope;
    RETURN _ctx;
END
$$;
