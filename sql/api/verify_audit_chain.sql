CREATE OR REPLACE FUNCTION api.verify_audit_chain(
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
    -- Written without a backslash, as every literal here: with standard_conforming_strings off
    -- in a session, '\x00...' would be read as an escape.
    _genesis constant bytea := decode(repeat('00', 32), 'hex');
    _problems jsonb := '[]'::jsonb;
    _prev_hash bytea := _genesis;
    _prev_tx xid8 := '0';
    _prev_id bigint := 0;
    _expected_no bigint := 1;
    _seal ledger.audit_seals;
    _check record;
    _rows bigint;
    _sealed bigint := 0;
BEGIN
    PERFORM ledger.authorize(verify_audit_chain.api_key_hash, 'read', verify_audit_chain.request_user_id,
                             verify_audit_chain.correlation_id, verify_audit_chain.client_addr);
    -- Each row against its own hash: finds a changed row, sealed or not.
    SELECT _problems || COALESCE(jsonb_agg(jsonb_build_object('audit_id', a.id, 'problem', 'row does not match its hash')), '[]')
      INTO _problems
      FROM ledger.audit_log a
     WHERE a.row_hash IS DISTINCT FROM ledger.audit_row_hash(a);
    SELECT count(*) INTO _rows FROM ledger.audit_log;

    -- Each seal against the rows it covers and the seal before it: finds rows inserted,
    -- removed or re-hashed after sealing, and a seal that was changed or removed.
    FOR _seal IN SELECT * FROM ledger.audit_seals ORDER BY seal_no LOOP
        IF _seal.seal_no <> _expected_no OR _seal.previous_hash <> _prev_hash THEN
            _problems := _problems || jsonb_build_object('seal_no', _seal.seal_no,
                'problem', 'seal does not follow the previous seal');
        END IF;
        SELECT count(*) AS n,
               sha256(_seal.previous_hash || COALESCE(string_agg(row_hash, ''::bytea ORDER BY tx_id, id), ''::bytea)) AS h
          INTO _check
          FROM ledger.audit_log
         WHERE (tx_id, id) > (_prev_tx, _prev_id) AND (tx_id, id) <= (_seal.last_tx_id, _seal.last_id);
        IF _check.n <> _seal.row_count OR _check.h <> _seal.seal_hash THEN
            _problems := _problems || jsonb_build_object('seal_no', _seal.seal_no,
                'problem', format('rows covered by the seal changed: %s rows now, %s when sealed', _check.n, _seal.row_count));
        END IF;
        _sealed := _sealed + _check.n;
        _prev_hash := _seal.seal_hash;
        _prev_tx := _seal.last_tx_id;
        _prev_id := _seal.last_id;
        _expected_no := _seal.seal_no + 1;
    END LOOP;

    -- Rows no seal can ever cover: ordered before the first possible row, or claiming a
    -- transaction that had not ended when this statement's snapshot was taken, other than this
    -- one (a row it sees was written by a transaction that ended before, or by this one). Not
    -- compared with this transaction's own id: one assigned earlier in it (a seal, a write) is
    -- older than the rows others committed since.
    SELECT _problems || COALESCE(jsonb_agg(jsonb_build_object('audit_id', a.id,
               'problem', 'row has a transaction id no seal can cover')), '[]')
      INTO _problems
      FROM ledger.audit_log a
     WHERE (a.tx_id, a.id) <= ('0'::xid8, 0)
        OR (a.tx_id >= pg_snapshot_xmax(pg_current_snapshot())
            AND a.tx_id IS DISTINCT FROM pg_current_xact_id_if_assigned());

    -- Every journal against the audit row of the request that posted it: the same amount, from
    -- and to the same users, and no journal without its row or row without its journal. Events,
    -- journal lines and balances rewritten to agree with each other pass api.verify_projections;
    -- they cannot agree with the audit rows unless those change too, which the hashes and seals
    -- above show (and a rewrite of the whole chain, a copy of head_hash kept outside).
    WITH legs AS (
        SELECT a.id AS audit_id, a.action, leg
          FROM ledger.audit_log a
         CROSS JOIN LATERAL jsonb_array_elements(CASE a.action
                                                     WHEN 'transfer_batch' THEN a.after_state -> 'transfers'
                                                     WHEN 'mint_batch' THEN a.after_state -> 'mints'
                                                     ELSE jsonb_build_array(a.after_state) END) AS leg
         WHERE a.action IN ('transfer', 'mint', 'burn', 'refund', 'transfer_batch', 'mint_batch', 'hold.capture')
    ), fields AS (
        SELECT l.audit_id,
               l.leg ->> CASE WHEN l.action IN ('mint', 'mint_batch') THEN 'mint_id'
                              WHEN l.action = 'burn' THEN 'burn_id'
                              WHEN l.action = 'refund' THEN 'refund_id'
                              ELSE 'transfer_id' END AS journal_id,
               l.leg ->> CASE WHEN l.action = 'hold.capture' THEN 'captured_amount' ELSE 'amount' END AS amount,
               l.leg ->> 'from_user_id' AS debit_user,  -- none for a mint: the issuer's account
               l.leg ->> 'to_user_id' AS credit_user    -- none for a burn
          FROM legs l
    ), stated AS (
        -- A value that is not what its writer wrote (a row forged by hand) counts as missing: it is
        -- reported, where a failing cast would stop the verification.
        SELECT f.audit_id,
               CASE WHEN f.journal_id ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' THEN f.journal_id::uuid END
                   AS journal_id,
               CASE WHEN f.amount ~ '^[0-9]{1,13}([.][0-9]{1,8})?$' THEN f.amount::numeric END AS amount,
               CASE WHEN f.debit_user ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' THEN f.debit_user::uuid END
                   AS debit_user,
               CASE WHEN f.credit_user ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' THEN f.credit_user::uuid END
                   AS credit_user
          FROM fields f
    ), posted AS (
        -- Every journal the ledger writes is one debit and one credit line of one amount, on
        -- accounts that exist: lines added to a journal, or on no account, are reported.
        SELECT e.journal_id,
               count(*) = 2 AND count(*) FILTER (WHERE e.side = 'debit') = 1 AND min(e.amount) = max(e.amount)
                   AND count(ac.id) = 2 AS well_formed,
               min(e.amount) AS amount,
               (array_agg(ac.user_id) FILTER (WHERE e.side = 'debit'))[1] AS debit_user,
               (array_agg(ac.user_id) FILTER (WHERE e.side = 'credit'))[1] AS credit_user
          FROM ledger.ledger_entries e
          LEFT JOIN ledger.accounts ac ON ac.id = e.account_id
         GROUP BY e.journal_id
    )
    SELECT _problems || COALESCE(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'journal_id', COALESCE(p.journal_id, s.journal_id), 'audit_id', s.audit_id,
               'problem', CASE WHEN s.audit_id IS NULL THEN 'journal has no audit row'
                               WHEN p.journal_id IS NULL THEN 'audit row names a journal that is not there'
                               WHEN NOT p.well_formed
                                   THEN 'journal is not one debit and one credit line of one amount on existing accounts'
                               ELSE 'journal differs from its audit row (amount or users)' END))
               ORDER BY COALESCE(p.journal_id, s.journal_id), s.audit_id), '[]')
      INTO _problems
      FROM posted p
      FULL JOIN stated s ON s.journal_id = p.journal_id
     WHERE s.journal_id IS NULL OR p.journal_id IS NULL OR NOT p.well_formed
        OR p.amount IS DISTINCT FROM s.amount
        OR (s.debit_user IS NOT NULL AND p.debit_user IS DISTINCT FROM s.debit_user)
        OR (s.credit_user IS NOT NULL AND p.credit_user IS DISTINCT FROM s.credit_user);

    -- Every hold against the audit row of the last request that wrote it (create, capture, void,
    -- expiry: each states the hold as it left it): holds are rows that change, and the owner
    -- could otherwise inflate a pending hold, with the held balance to match, and capture it.
    WITH last_written AS (
        SELECT DISTINCT ON (a.resource_id) a.resource_id, a.id AS audit_id,
               jsonb_build_object('status', a.after_state -> 'status',
                                  'from_user_id', a.after_state -> 'from_user_id',
                                  'to_user_id', a.after_state -> 'to_user_id',
                                  'amount', a.after_state -> 'amount',
                                  'captured_amount', a.after_state -> 'captured_amount',
                                  'expires_at', a.after_state -> 'expires_at',
                                  'transfer_id', a.after_state -> 'transfer_id',
                                  'version', a.after_state -> 'version') AS stated
          FROM ledger.audit_log a
         WHERE a.resource_type = 'hold'
         ORDER BY a.resource_id, a.id DESC
    )
    SELECT _problems || COALESCE(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'hold_id', COALESCE(h.id::text, w.resource_id), 'audit_id', w.audit_id,
               'problem', CASE WHEN w.audit_id IS NULL THEN 'hold has no audit row'
                               WHEN h.id IS NULL THEN 'audit row names a hold that is not there'
                               ELSE 'hold differs from the audit row of its last change' END))
               ORDER BY COALESCE(h.id::text, w.resource_id)), '[]')
      INTO _problems
      FROM ledger.holds h
      FULL JOIN last_written w ON w.resource_id = h.id::text
     WHERE w.audit_id IS NULL OR h.id IS NULL
        OR w.stated IS DISTINCT FROM jsonb_build_object(
               'status', h.status, 'from_user_id', h.from_user_id, 'to_user_id', h.to_user_id,
               'amount', h.amount::numeric(21, 8)::text,
               'captured_amount', h.captured_amount::numeric(21, 8)::text,
               'expires_at', ledger.rfc3339(h.expires_at), 'transfer_id', h.transfer_id, 'version', h.version);

    RETURN jsonb_build_object(
        'ok', jsonb_array_length(_problems) = 0,
        'rows', _rows,
        'sealed_rows', _sealed,
        'unsealed_rows', _rows - _sealed,
        'seals', _expected_no - 1,
        'head_hash', encode(_prev_hash, 'hex'),
        'problems', _problems);
END
$$;

REVOKE ALL ON FUNCTION api.verify_audit_chain(text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.verify_audit_chain(text, uuid, text, inet) TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.verify_audit_chain(text, uuid, text, inet) IS
'Verifies the audit log: every row against its own hash, every seal against the rows it covers and the seal
before it, every journal against the audit row of the request that posted it (one debit and one credit line, amount,
users), and every hold against the audit row of its last change. ok is false, with the problems listed, if any row was
changed, inserted or removed, or a journal or hold disagrees with its row. head_hash is the
newest seal''s hash: keep a copy outside the database to detect a rewrite of the whole chain. Needs read.
Example: SELECT api.verify_audit_chain();';
