CREATE OR REPLACE FUNCTION api.get_history(
    user_id uuid,
    "limit" integer DEFAULT 50,
    cursor text DEFAULT NULL,
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
    _account uuid;
    _before bigint;
    _items json;
    _next text;
BEGIN
    -- One statement: who is calling and the user's open wallet (ledger.read_wallet).
    -- The errors keep their order: refusal, limit, cursor, user.
    SELECT * INTO _w
      FROM ledger.read_wallet(get_history.api_key_hash, get_history.correlation_id, get_history.user_id);
    IF _w.refusal IS NOT NULL THEN
        PERFORM ledger.refuse(_w.refusal, _w.actor, _w.key_name, 'read', _w.rate_limit, _w.current_count,
                              _w.previous_count, _w.elapsed);
    END IF;
    IF _w.api_key_id IS NOT NULL AND _w.stale_last_used THEN
        PERFORM ledger.touch_api_key(_w.api_key_id);
    END IF;
    IF get_history."limit" IS NULL OR get_history."limit" NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'limit must be between 1 and 200';
    END IF;
    IF get_history.cursor IS NOT NULL THEN
        IF get_history.cursor !~ '^[0-9]{1,18}$' THEN
            RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'cursor is not valid: pass next_cursor back unchanged';
        END IF;
        _before := get_history.cursor::bigint;
    END IF;
    IF get_history.user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'user_id is required';
    ELSIF _w.account_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'L4041', MESSAGE = ledger.user_missing(get_history.user_id);
    END IF;
    _account := _w.account_id;

    WITH page AS (
        SELECT e.id, e.journal_id, e.refund_of, e.kind, e.amount, e.counterparty_user_id, e.memo, e.balance_after, e.created_at
          FROM ledger.ledger_entries e
         WHERE e.account_id = _account AND e.id < COALESCE(_before, 9223372036854775807)
         ORDER BY e.id DESC
         LIMIT get_history."limit" + 1
    ), numbered AS (
        SELECT page.*, row_number() OVER (ORDER BY page.id DESC) AS n FROM page
    )
    -- Each item in the order of the contract's History item; its optional fields come last and
    -- only when they apply: a captured hold's transfer names the hold, a refund names the
    -- transfer it gives back. Every value is text or null, so one text[] of keys and values
    -- carries them, optional pairs appended.
    SELECT COALESCE(json_agg(json_build_object(VARIADIC ARRAY[
               'id', n.journal_id::text,
               'kind', n.kind,
               'amount', n.amount::numeric(21, 8)::text,
               'counterparty', n.counterparty_user_id::text,
               'memo', n.memo,
               'balance_after', n.balance_after::numeric(21, 8)::text,
               'created_at', ledger.rfc3339(n.created_at)]
               || CASE WHEN n.kind IN ('transfer_in', 'transfer_out')
                       THEN (SELECT ARRAY['hold_id', h.id::text] FROM ledger.holds h
                              WHERE h.transfer_id = n.journal_id) END
               || CASE WHEN n.refund_of IS NOT NULL THEN ARRAY['transfer_id', n.refund_of::text] END)
               ORDER BY n.id DESC)
               FILTER (WHERE n.n <= get_history."limit"), '[]'::json),
           CASE WHEN count(*) > get_history."limit"
                THEN (min(n.id) FILTER (WHERE n.n <= get_history."limit"))::text END
      INTO _items, _next
      FROM numbered n;
    RETURN json_build_object('user_id', get_history.user_id, 'items', _items, 'next_cursor', _next);
END
$$;

REVOKE ALL ON FUNCTION api.get_history(uuid, integer, text, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.get_history(uuid, integer, text, text, uuid, text, inet) TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.get_history(uuid, integer, text, text, uuid, text, inet) IS
'A user''s money movements, newest first, with the balance after each (kind: mint, burn, transfer_in,
transfer_out, refund_in, refund_out; a captured hold''s transfer adds hold_id, a refund''s item adds transfer_id, the transfer it gives back). Pages of "limit" (1 to 200); pass next_cursor back as cursor for the next page (null at the end).
Needs read. Errors: L4001 invalid_request, L4041 user_not_found.
Example: SELECT api.get_history(:alice, "limit" => 20);';
