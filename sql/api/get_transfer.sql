CREATE OR REPLACE FUNCTION api.get_transfer(
    transfer_id uuid,
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
    _body json;
BEGIN
    PERFORM ledger.authorize(get_transfer.api_key_hash, 'read', get_transfer.request_user_id,
                             get_transfer.correlation_id, get_transfer.client_addr);
    SELECT json_build_object(
               'transfer_id', e.journal_id,
               'status', 'completed',
               'from_user_id', a.user_id,
               'to_user_id', e.counterparty_user_id,
               'amount', e.amount::numeric(21, 8)::text,
               'memo', e.memo,
               'created_at', ledger.rfc3339(e.created_at),
               'refunded_amount', (SELECT COALESCE(sum(r.amount), 0)
                                     FROM ledger.ledger_entries r
                                    WHERE r.refund_of = e.journal_id AND r.side = 'debit')::numeric(21, 8)::text)
      INTO _body
      FROM ledger.ledger_entries e
      JOIN ledger.accounts a ON a.id = e.account_id
     WHERE e.journal_id = get_transfer.transfer_id AND e.kind = 'transfer_out';
    IF _body IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = CASE WHEN get_transfer.transfer_id IS NULL THEN 'L4001' ELSE 'L4042' END,
            MESSAGE = CASE WHEN get_transfer.transfer_id IS NULL THEN 'transfer_id is required'
                           ELSE format('transfer %s not found', get_transfer.transfer_id) END;
    END IF;
    RETURN _body;
END
$$;

REVOKE ALL ON FUNCTION api.get_transfer(uuid, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.get_transfer(uuid, text, uuid, text, inet) TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.get_transfer(uuid, text, uuid, text, inet) IS
'One transfer by its transfer_id, with refunded_amount (what its refunds gave back so far). Needs read. Errors: L4001 invalid_request (no transfer_id), L4042
not_found.
Example: SELECT api.get_transfer(:''transfer_id'');';
