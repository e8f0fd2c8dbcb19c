-- Raises the error for a refusal of ledger.caller. Called only when the call is refused, so
-- the write path stays one PL/pgSQL level when it goes through.
CREATE OR REPLACE FUNCTION ledger.refuse(
    refusal text,
    actor text,
    key_name text,
    permission text,
    rate_limit integer,
    current_count bigint,
    previous_count bigint,
    elapsed double precision
)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    CASE refuse.refusal
    WHEN 'correlation_id_too_long' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'correlation id is longer than 128 characters';
    WHEN 'key_required' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4011',
            MESSAGE = format('an API key is required (database role %s may not call without one)', refuse.actor);
    WHEN 'unknown_key' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4011', MESSAGE = 'the API key is not valid';
    WHEN 'revoked' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4011', MESSAGE = 'the API key has been revoked';
    WHEN 'expired' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4011', MESSAGE = 'the API key has expired';
    WHEN 'permission' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4031',
            MESSAGE = format('the API key %s lacks the %s permission%s', refuse.key_name, refuse.permission,
                             CASE WHEN refuse.permission = 'maintenance' THEN ' (admin keys hold it)' ELSE '' END);
    WHEN 'idempotency_key_required' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001',
            MESSAGE = 'an idempotency key is required for requests made with an API key';
    WHEN 'rate_limited' THEN
        RAISE EXCEPTION USING ERRCODE = 'L4291',
            MESSAGE = format('rate limit of %s requests per minute exceeded', refuse.rate_limit),
            DETAIL = json_build_object('retry_after', ledger.retry_after(refuse.rate_limit, refuse.current_count,
                                                                         refuse.previous_count, refuse.elapsed))::text;
    ELSE
        RAISE EXCEPTION 'unknown refusal %', refuse.refusal;
    END CASE;
END
$$;
