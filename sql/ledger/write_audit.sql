-- One audit row for one state change, stamped with the caller established by ledger.authorize
-- and hashed by the statement that inserts it. (PL/pgSQL rather than SQL: its INSERT plan is
-- cached across calls.)
CREATE OR REPLACE FUNCTION ledger.write_audit(
    ctx ledger.request_context,
    action text,
    resource_type text,
    resource_id text,
    before_state jsonb,
    after_state jsonb
)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO ledger.audit_log (id, tx_id, created_at, actor, api_key_id, request_user_id, correlation_id,
                                  client_addr, action, resource_type, resource_id, before_state, after_state,
                                  row_hash)
    OVERRIDING SYSTEM VALUE
    SELECT r.id, r.tx_id, r.at, ctx.actor, ctx.api_key_id, ctx.request_user_id, ctx.correlation_id,
           ctx.client_addr, write_audit.action, write_audit.resource_type, write_audit.resource_id,
           write_audit.before_state, write_audit.after_state,
           ledger.audit_hash(r.id, r.tx_id, r.at, ctx.actor, ctx.api_key_id, ctx.request_user_id,
                             ctx.correlation_id, ctx.client_addr, write_audit.action, write_audit.resource_type,
                             write_audit.resource_id, write_audit.before_state, write_audit.after_state)
      FROM (SELECT nextval('ledger.audit_log_id_seq') AS id, pg_current_xact_id() AS tx_id,
                   clock_timestamp() AS at) r;
END
$$;
