CREATE OR REPLACE FUNCTION api.rebuild_projections(
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _ctx ledger.request_context;
    _suspects uuid[];
    _changed jsonb;
BEGIN
    _ctx := ledger.authorize(rebuild_projections.api_key_hash, 'admin', rebuild_projections.request_user_id,
                             rebuild_projections.correlation_id, rebuild_projections.client_addr);
    -- First, with no lock, the accounts whose projection differs from their replay (or whose
    -- held differs from their pending holds), balances, events and holds read in one snapshot:
    -- in it every committed write moved an account's events and its balances row together, so
    -- only a projection that is wrong differs. This is the long part (a replay of every event:
    -- 22 s for 5 million), and writers go on meanwhile.
    SELECT COALESCE(array_agg(r.account_id), '{}')
      INTO _suspects
      FROM ledger.replay_accounts() r
      LEFT JOIN ledger.balances b ON b.account_id = r.account_id
     WHERE (b.balance, b.is_frozen, b.is_closed, b.version, b.normal_side, b.held)
           IS DISTINCT FROM (r.balance, r.is_frozen, r.is_closed, r.version, r.normal_side,
                             ledger.pending_held(r.account_id));
    IF cardinality(_suspects) = 0 THEN
        RETURN jsonb_build_object('changed_accounts', 0, 'changed', '[]'::jsonb);
    END IF;
    -- Then, with writers waiting, those accounts alone are replayed again (what was written to
    -- them since is in the replay now) and corrected: the writers wait for a few accounts'
    -- replays, not for all of them. Settlements of holds also lock the balances rows, so held
    -- is read here as it stays until the commit.
    LOCK TABLE ledger.balances IN EXCLUSIVE MODE;
    WITH replay AS (
        SELECT r.*, (SELECT e.id FROM ledger.events e
                      WHERE e.aggregate_type = 'account' AND e.aggregate_id = r.account_id
                        AND e.version = r.version) AS last_event_id,
                    (SELECT e.created_at FROM ledger.events e
                      WHERE e.aggregate_type = 'account' AND e.aggregate_id = r.account_id
                        AND e.version = r.version) AS last_at
          FROM ledger.replay_accounts() r
         WHERE r.account_id = ANY (_suspects)
    ), fixed AS (
        INSERT INTO ledger.balances AS b (account_id, normal_side, balance, held, is_frozen, is_closed, version,
                                          last_event_id, updated_at)
        SELECT r.account_id, r.normal_side, r.balance, ledger.pending_held(r.account_id), r.is_frozen, r.is_closed,
               r.version, r.last_event_id, r.last_at
          FROM replay r
        ON CONFLICT (account_id) DO UPDATE
           SET normal_side = EXCLUDED.normal_side, balance = EXCLUDED.balance, held = EXCLUDED.held,
               is_frozen = EXCLUDED.is_frozen, is_closed = EXCLUDED.is_closed, version = EXCLUDED.version,
               last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at
         WHERE (b.balance, b.held, b.is_frozen, b.is_closed, b.version, b.normal_side)
               IS DISTINCT FROM (EXCLUDED.balance, EXCLUDED.held, EXCLUDED.is_frozen, EXCLUDED.is_closed,
                                 EXCLUDED.version, EXCLUDED.normal_side)
        RETURNING b.account_id, b.balance, b.held
    )
    SELECT COALESCE(jsonb_agg(jsonb_build_object('account_id', account_id, 'balance', balance::text,
                                                 'held', held::text)), '[]')
      INTO _changed FROM fixed;
    IF jsonb_array_length(_changed) > 0 THEN
        PERFORM ledger.write_audit(_ctx, 'projections.rebuild', 'balances', NULL, NULL,
                                   jsonb_build_object('changed', _changed));
    END IF;
    RETURN jsonb_build_object('changed_accounts', jsonb_array_length(_changed), 'changed', _changed);
END
$$;

REVOKE ALL ON FUNCTION api.rebuild_projections(text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.rebuild_projections(text, uuid, text, inet) TO atp_dba;
COMMENT ON FUNCTION api.rebuild_projections(text, uuid, text, inet) IS
'Recomputes every balance from the events, and what each reserves (held) from its pending holds, and corrects the
projection where it differs. Writers go on while the events are replayed, and wait only while the accounts found
wrong are replayed again and corrected.
Returns the accounts it changed. For DBAs only (atp_dba; not callable by the application role).
Example: SELECT api.rebuild_projections();';
