-- Seals the audit rows that can no longer change: those of transactions older than every
-- running one (the commit horizon), in (tx_id, id) order, up to max_rows. A seal's hash is
-- SHA-256 of the previous seal's hash followed by the rows' own hashes, so a row that is
-- changed, inserted or removed later breaks the seal that covers it. Only sealers queue on
-- the lock here; writers never wait for it.
CREATE OR REPLACE FUNCTION ledger.seal_audit(max_rows integer)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _last ledger.audit_seals;
    _horizon xid8;
    _batch record;
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'max_rows must be at least 1';
    END IF;
    -- One sealer at a time, by the lock of ledger.settings' one row, which only the owner can
    -- take (it needs UPDATE; readers of the row do not wait for it): an advisory lock's key is
    -- anyone's to take, and any login role holding it stopped sealing and made every
    -- maintenance run wait.
    PERFORM FROM ledger.settings FOR UPDATE;
    SELECT * INTO _last FROM ledger.audit_seals ORDER BY seal_no DESC LIMIT 1;
    _horizon := pg_snapshot_xmin(pg_current_snapshot());
    WITH batch AS (
        SELECT tx_id, id, row_hash FROM ledger.audit_log
         WHERE (tx_id, id) > (COALESCE(_last.last_tx_id, '0'::xid8), COALESCE(_last.last_id, 0))
           AND tx_id < _horizon
         ORDER BY tx_id, id
         LIMIT max_rows
    )
    SELECT count(*) AS row_count,
           string_agg(row_hash, ''::bytea ORDER BY tx_id, id) AS hashes,
           (array_agg(tx_id ORDER BY tx_id DESC, id DESC))[1] AS last_tx_id,
           (array_agg(id ORDER BY tx_id DESC, id DESC))[1] AS last_id
      INTO _batch
      FROM batch;
    IF _batch.row_count = 0 THEN
        RETURN jsonb_build_object('sealed_rows', 0, 'seal_no', _last.seal_no);
    END IF;
    INSERT INTO ledger.audit_seals (seal_no, last_tx_id, last_id, row_count, previous_hash, seal_hash)
    VALUES (COALESCE(_last.seal_no, 0) + 1, _batch.last_tx_id, _batch.last_id, _batch.row_count,
            COALESCE(_last.seal_hash, decode(repeat('00', 32), 'hex')),
            sha256(COALESCE(_last.seal_hash, decode(repeat('00', 32), 'hex'))
                   || _batch.hashes));
    RETURN jsonb_build_object('sealed_rows', _batch.row_count, 'seal_no', COALESCE(_last.seal_no, 0) + 1);
END
$$;
