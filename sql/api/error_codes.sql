CREATE OR REPLACE FUNCTION api.error_codes()
RETURNS TABLE (sqlstate text, http_status integer, error text, meaning text)
LANGUAGE sql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    -- The class is L; the next three digits are the HTTP status, the last tells errors of one status apart.
    VALUES
        ('L4001', 400, 'invalid_request', 'The request is malformed or a value breaks a rule.'),
        ('L4002', 400, 'insufficient_balance', 'The paying wallet holds less than the amount.'),
        ('L4003', 400, 'account_frozen', 'A wallet of the transaction is frozen.'),
        ('L4004', 400, 'balance_limit_exceeded', 'A balance would exceed 1,000,000,000,000 ATP (or the total issued its bound, 9,999,999,999,999.99999999).'),
        ('L4006', 400, 'refund_exceeds_transfer', 'The refunds of a transfer would add up to more than the transfer.'),
        ('L4011', 401, 'invalid_api_key', 'The API key is missing, unknown, revoked or expired.'),
        ('L4031', 403, 'permission_denied', 'The API key lacks the permission this call needs.'),
        ('L4032', 403, 'unauthorized_transfer',
         'The acting user (X-Request-User-Id) may not move this money: a transfer, hold or batch is made by its '
         'sender, a refund by the transfer''s receiver, a capture or void by the hold''s sender or receiver.'),
        ('L4033', 403, 'append_only', 'Events, journal lines and audit rows cannot be changed or removed.'),
        ('L4041', 404, 'user_not_found', 'No live user has this id.'),
        ('L4042', 404, 'not_found', 'The transfer, hold or API key does not exist.'),
        ('L4091', 409, 'idempotency_conflict', 'The idempotency key was used for a different request.'),
        ('L4092', 409, 'version_conflict', 'The record changed meanwhile; read it again and retry.'),
        ('L4093', 409, 'user_exists', 'The user id, username or email is taken (a deleted user''s id is never used again).'),
        ('L4094', 409, 'balance_not_zero', 'A user with a balance cannot be deleted.'),
        ('L4095', 409, 'hold_not_pending', 'The hold was captured, voided or has expired.'),
        ('L4096', 409, 'pending_holds', 'A user with pending holds cannot be deleted.'),
        ('L4291', 429, 'rate_limit_exceeded', 'Too many requests this minute; DETAIL holds retry_after seconds.')
$$;

REVOKE ALL ON FUNCTION api.error_codes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.error_codes() TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.error_codes() IS
'Every SQLSTATE the api raises, with its HTTP status and error code. Example: SELECT * FROM api.error_codes();';
