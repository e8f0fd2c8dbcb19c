CREATE OR REPLACE FUNCTION api.list_events(
    after text DEFAULT NULL,
    "limit" integer DEFAULT 100,
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
    _after_tx xid8 := '0';
    _after_id bigint := 0;
    _horizon xid8;
    _events json;
    _next text;
BEGIN
    PERFORM ledger.authorize(list_events.api_key_hash, 'admin', list_events.request_user_id,
                             list_events.correlation_id, list_events.client_addr);
    IF list_events."limit" IS NULL OR list_events."limit" NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'limit must be between 1 and 1000';
    END IF;
    IF list_events.after IS NOT NULL THEN
        IF list_events.after !~ '^[0-9]{1,19}-[0-9]{1,18}$' THEN
            RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'after is not a valid cursor: pass next_cursor back unchanged';
        END IF;
        _after_tx := split_part(list_events.after, '-', 1)::xid8;
        _after_id := split_part(list_events.after, '-', 2)::bigint;
    END IF;
    -- Only transactions older than every running one are final: none of them can still
    -- add an event, so a page below this horizon never changes and nothing is skipped.
    _horizon := pg_snapshot_xmin(pg_current_snapshot());

    WITH page AS (
        SELECT e.* FROM ledger.events e
         WHERE (e.tx_id, e.id) > (_after_tx, _after_id) AND e.tx_id < _horizon
         ORDER BY e.tx_id, e.id
         LIMIT list_events."limit"
    )
    -- Each event in the order of the contract's EventPage item; data is the event's own jsonb.
    SELECT COALESCE(json_agg(json_build_object(
               'id', p.id,
               'cursor', p.tx_id::text || '-' || p.id::text,
               'aggregate_type', p.aggregate_type,
               'aggregate_id', p.aggregate_id,
               'version', p.version,
               'event_type', p.event_type,
               'data', p.data,
               'actor', p.actor,
               'api_key_id', p.api_key_id,
               'request_user_id', p.request_user_id,
               'correlation_id', p.correlation_id,
               'created_at', ledger.rfc3339(p.created_at)) ORDER BY p.tx_id, p.id), '[]'::json),
           (array_agg(p.tx_id::text || '-' || p.id::text ORDER BY p.tx_id DESC, p.id DESC))[1]
      INTO _events, _next
      FROM page p;
    RETURN json_build_object('events', _events, 'next_cursor', COALESCE(_next, list_events.after, '0-0'));
END
$$;

REVOKE ALL ON FUNCTION api.list_events(text, integer, text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.list_events(text, integer, text, uuid, text, inet) TO atp_app, atp_dba;
COMMENT ON FUNCTION api.list_events(text, integer, text, uuid, text, inet) IS
'The global event feed in commit-safe order: events of finished transactions only, ordered by transaction and id.
A reader that passes next_cursor back as "after" sees every committed event exactly once, even when a transaction
with lower event ids commits later (it is held back until it finishes). Needs admin.
Errors: L4001 invalid_request. Example: SELECT api.list_events(after => ''0-0'', "limit" => 10);';
